"""Request streams and traces: distributions, seeding, the trace format and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import InputError
from moesim.serving.stream import generate, parse_arrivals, parse_length
from moesim.serving.trace import read_trace

SAMPLE = "scenarios/traces/sample.csv"


@pytest.mark.parametrize("text,kind", [("512", "fixed"), ("fixed:512", "fixed"), ("uniform:10,20", "uniform"),
                                       ("lognormal:800,0.7", "lognormal"), ("hist:128=1,1024=3", "hist")])
def test_length_forms_parse(text, kind):
    assert parse_length(text, "--x").kind == kind


@pytest.mark.parametrize("text,match", [
    ("uniform:20,10", "LO <= HI"), ("fixed:0", "greater than or equal to 1"), ("fixed:2.5", "whole number"),
    ("lognormal:800,-1", "greater than or equal to 0"), ("lognormal:-5,1", "greater than 0"),
    ("hist:10=0,20=0", "not all be zero"), ("hist:10", "VALUE=WEIGHT"), ("hist:10=-1", ">= 0"),
    ("gauss:3", "unknown length distribution"), ("uniform:1", "LO,HI"),
])
def test_impossible_length_parameters_are_refused(text, match):
    with pytest.raises(InputError, match=match) as e:
        parse_length(text, "--prompt-tokens")
    assert "\n" not in str(e.value) and str(e.value).startswith("--prompt-tokens")


@pytest.mark.parametrize("text,match", [("gamma:0", "greater than 0"), ("gamma", "unknown arrival"),
                                        ("weibull:2", "unknown arrival")])
def test_bad_arrival_processes_are_refused(text, match):
    with pytest.raises(InputError, match=match):
        parse_arrivals(text, "--arrival")


def test_generated_stream_is_seeded_and_has_the_asked_moments():
    a = generate(10.0, 20_000, prompt_tokens="uniform:100,300", output_tokens="hist:10=1,30=1", seed=1)
    b = generate(10.0, 20_000, prompt_tokens="uniform:100,300", output_tokens="hist:10=1,30=1", seed=1)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert a.arrival_s[0] == 0.0 and np.all(np.diff(a.arrival_s) >= 0)
    assert np.mean(np.diff(a.arrival_s)) == pytest.approx(0.1, rel=0.03)
    assert a.prompt_tokens.min() >= 100 and a.prompt_tokens.max() <= 300
    assert np.mean(a.prompt_tokens) == pytest.approx(200, rel=0.02)
    assert set(np.unique(a.output_tokens)) == {10, 30}


def test_gamma_arrivals_have_the_asked_coefficient_of_variation():
    s = generate(5.0, 40_000, arrivals="gamma:3", seed=2)
    gaps = np.diff(s.arrival_s)
    assert np.mean(gaps) == pytest.approx(0.2, rel=0.05)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(3.0, rel=0.08)


def test_retiming_keeps_the_requests():
    s = generate(10.0, 100, prompt_tokens="lognormal:500,1", seed=3)
    t = s.at_rate(40.0)
    np.testing.assert_array_equal(s.prompt_tokens, t.prompt_tokens)
    np.testing.assert_allclose(t.arrival_s, s.arrival_s / 4)


def test_lognormal_lengths_are_clipped_to_the_context():
    s = generate(1.0, 5000, prompt_tokens="lognormal:3000,2", output_tokens="fixed:100", seed=4, max_context=4096)
    assert (s.prompt_tokens + s.output_tokens).max() <= 4096
    assert s.prompt_tokens.min() >= 1


def test_sample_trace_loads():
    s = read_trace(SAMPLE)
    assert len(s) == 200
    assert s.arrival_s[0] == 0.0 and np.all(np.diff(s.arrival_s) >= 0)
    assert s.prompt_tokens.min() >= 1 and s.output_tokens.min() >= 1


def test_jsonl_trace_loads_and_unsorted_rows_are_sorted(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"arrival_s": 2.0, "prompt_tokens": 10, "output_tokens": 5}\n\n'
                 '{"arrival_s": 1.0, "prompt_tokens": 20, "output_tokens": 6, "id": "x"}\n')
    s = read_trace(p)
    assert list(s.prompt_tokens) == [20, 10]
    assert list(s.arrival_s) == [0.0, 1.0]
    assert list(s.lines) == [3, 1]


@pytest.mark.parametrize("text,match", [
    ("", "empty trace"),
    ("arrival_s,prompt_tokens,output_tokens\n", "empty trace: no requests"),
    ("arrival_s,prompt,output_tokens\n0,1,1\n", "lacks column"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,abc,5\n", "line 3: prompt_tokens: expected a number"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10,5\n-1,10,5\n", "line 3: arrival_s: expected seconds >= 0"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10,0\n", "line 2: output_tokens: expected a whole number"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10.5,3\n", "line 2: prompt_tokens"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10\n", "line 2: row has 2 column"),
    ("arrival_s,prompt_tokens,output_tokens\nnan,10,3\n", "line 2: arrival_s: expected a finite number"),
])
def test_malformed_traces_name_line_and_column(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(InputError, match=match) as e:
        read_trace(p)
    assert str(p) in str(e.value)


def test_trace_of_an_unknown_format_is_refused(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("x")
    with pytest.raises(InputError, match=r"\.csv or \.jsonl"):
        read_trace(p)
