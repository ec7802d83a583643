"""``moesim simulate``: JSON contract, CSV per request, plots, and one-line errors with nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

SAMPLE = str(Path(__file__).resolve().parents[2] / "scenarios" / "traces" / "sample.csv")
UNIT = re.compile(r"(_s|_bytes|_frac|_ratio|_usd|_tokens|_gpus)(_per_[a-z_]+)?$|(^|_)num_|^usd_|_bytes_per_|^(p50|p90|p99|mean|max)_s$")


def _keys(obj, out):
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.add(k)
            _keys(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _keys(v, out)
    return out


def assert_one_line_error(r, *needles):
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and "Traceback" not in line
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"


def test_json_is_the_only_output_and_numbers_carry_units(run_cli):
    r = run_cli("simulate", "--rate", "10", "--requests", "200", "--json", "--max-ttft-s", "1")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["num_requests"] == 200 and data["ttft"]["p99_s"] > 0
    assert data["goodput_requests_per_s"] > 0 and data["saturation_requests_per_s"] > 0
    numeric = set()

    def walk(o, key=None):
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, k)
        elif isinstance(o, list):
            for v in o:
                walk(v, key)
        elif isinstance(o, (int, float)) and not isinstance(o, bool) and key is not None:
            numeric.add(key)

    walk(data)
    allowed_plain = {"layout", "tp", "pp", "dp", "ep", "etp"}
    bad = sorted(k for k in numeric if not UNIT.search(k) and k not in allowed_plain)
    assert not bad, bad


def test_csv_has_one_row_per_request(run_cli, tmp_path):
    out = tmp_path / "req.csv"
    r = run_cli("simulate", "--rate", "5", "--requests", "120", "--csv", str(out), "--no-saturation")
    assert r.exit_code == 0, r.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 121 and lines[0].startswith("request,arrival_s,prompt_tokens,output_tokens")
    assert "TTFT" in r.stdout


def test_rate_sweep_prints_a_row_per_rate_and_plots(run_cli, tmp_path):
    png = tmp_path / "sweep.png"
    r = run_cli("simulate", "--rate", "5,20,40", "--requests", "200", "--plot", str(png))
    assert r.exit_code == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.stdout.count("ms") > 6 and "saturation" in r.stdout


def test_timeline_plot_of_one_rate(run_cli, tmp_path):
    png = tmp_path / "tl.png"
    r = run_cli("simulate", "--trace", SAMPLE, "--plot", str(png), "--no-saturation")
    assert r.exit_code == 0, r.stderr
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("args,needles", [
    (["--rate", "0"], ["--rate", "> 0"]),
    (["--rate", "-5"], ["--rate", "> 0"]),
    (["--rate", "abc"], ["--rate", "expected requests/s"]),
    ([], ["--rate", "or --trace"]),
    (["--rate", "1", "--prompt-tokens", "uniform:50,10"], ["--prompt-tokens", "LO <= HI"]),
    (["--rate", "1", "--prompt-tokens", "lognormal:100,-1"], ["--prompt-tokens", "sigma"]),
    (["--rate", "1", "--prompt-tokens", "40000"], ["--prompt-tokens", "32,768-token context"]),
    (["--rate", "1", "--arrival", "gamma:-1"], ["--arrival"]),
    (["--rate", "1", "--trace", SAMPLE], ["either --rate or --trace"]),
    (["--rate", "1", "--set", "serving.max_num_seqs=0"], ["serving.max_num_seqs"]),
    (["--rate", "1", "--set", "serving.max_num_batched_tokens=16"], ["max_num_batched_tokens", "at least"]),
    (["--rate", "1", "--set", "serving.decode.num_gpus=8"], ["serving.prefill and serving.decode go together"]),
    (["--rate", "1", "--max-tpot-s", "-1"], ["--max-tpot-s"]),
])
def test_bad_input_is_one_line_and_exit_2(run_cli, tmp_path, args, needles):
    out = tmp_path / "never.csv"
    r = run_cli("simulate", *args, "--requests", "20", "--csv", str(out))
    assert_one_line_error(r, *needles)
    assert not out.exists()


@pytest.mark.parametrize("text,needles", [
    ("", ["empty trace"]),
    ("arrival_s,prompt_tokens,output_tokens\n", ["empty trace"]),
    ("arrival_s,prompt_tokens,output_tokens\n0,10,5\n0.5,ten,5\n", ["line 3", "prompt_tokens"]),
    ("arrival_s,prompt_tokens,output_tokens\n0,30000,5000\n", ["line 2", "context"]),
])
def test_bad_traces_are_one_line_naming_the_file(run_cli, tmp_path, text, needles):
    p = tmp_path / "trace.csv"
    p.write_text(text)
    out = tmp_path / "never.csv"
    r = run_cli("simulate", "--trace", str(p), "--csv", str(out))
    assert_one_line_error(r, str(p), *needles)
    assert not out.exists()


def test_help_is_short(run_cli):
    r = run_cli("simulate", "--help")
    assert r.exit_code == 0 and "--rate" in r.stdout and "--trace" in r.stdout
