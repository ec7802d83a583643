"""The step model against published end-to-end figures (training throughput, serving throughput, memory).

The comparisons (scenario, figure, published value, source, tolerance, notes) are data:
``scenarios/validation-e2e/comparisons.toml`` (its header documents the format), with the published
numbers, quotes and sources in ``published.toml`` beside it; :mod:`moesim.published` runs them and
docs/published-comparisons.md shows the table (``moesim validate --published``).

Each numeric row is pinned by its ``tolerance``: the error the model had when it was pinned, rounded up
to the next 5 points, plus a 5-point margin; its ``notes`` say what the model leaves out that explains
the error. A change to the model, a profile or a scenario that moves a prediction further from the
published figure than that fails here; a change that brings it closer passes, and the tolerance
should then be tightened (and the docs table regenerated). Each memory row must agree.

Error = predicted / published - 1. Settings come from the publications; no setting was chosen to
bring a prediction closer (the scenario headers list every assumption).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from moesim.catalog import load_model
from moesim.params import count_params
from moesim.published import estimate_comparison, load_comparisons, markdown, run_published

REPO = Path(__file__).resolve().parents[2]
CSET = load_comparisons()
SCENARIOS = CSET.folder
BY_KEY = {c.key: c for c in CSET.comparisons}
NUMERIC = [c.key for c in CSET.comparisons if not c.is_memory]
MEMORY = [c.key for c in CSET.comparisons if c.is_memory]


@pytest.fixture(scope="module")
def report():
    return run_published(CSET)


# ----------------------------------------------------------------------------- the rows


@pytest.mark.parametrize("key", NUMERIC)
def test_prediction_is_within_the_rows_pinned_tolerance(report, key):
    r = report.row(key)
    assert r.failure is None, f"{r.what}: could not be estimated: {r.failure}"
    err, tol = r.error_frac, r.tolerance
    assert tol is not None, f"{key}: a numeric comparison needs a tolerance in {CSET.path.name}"
    assert abs(err) <= tol, (f"{r.what}: predicted {err:+.1%} from published {r.published} {r.unit} "
                             f"(tolerance ±{tol:.0%}). Notes: {r.notes}")


@pytest.mark.parametrize("key", MEMORY)
def test_memory_check_agrees_with_the_publication(report, key):
    r = report.row(key)
    assert r.failure is None, f"{r.what}: could not be estimated: {r.failure}"
    need = f"{r.memory_per_gpu_bytes / 1e9:.1f} GB of {r.memory_capacity_bytes / 1e9:.0f} GB"
    agrees = r.agrees
    assert agrees, f"{r.what}: model says fits={r.predicted} ({need}), published fits={r.published} ({r.notes})"


def test_mlperf_scenarios_run_the_largest_batch_the_model_says_fits():
    # The MLPerf scenario files fix batch_size to moesim's own max_batch_size (Offline runs the largest
    # batch that fits). If the memory model moves, update the files and the docs table.
    for key in ("mixtral-mlperf-h100", "mixtral-mlperf-h200"):
        est, sc = estimate_comparison(CSET, BY_KEY[key])
        assert est.max_batch_size == sc.workload.batch_size, (key, est.max_batch_size, sc.workload.batch_size)


# ----------------------------------------------------------------------------- bookkeeping


def test_every_numeric_comparison_has_a_tolerance_and_notes_and_every_memory_row_its_published_claim():
    for c in CSET.comparisons:
        assert c.notes.strip(), f"{c.key}: notes should say what explains the error (or what was published)"
        if not c.is_memory:
            assert c.tolerance is not None, f"{c.key}: no tolerance"


def test_published_values_are_those_of_the_data_file():
    for c in CSET.comparisons:
        assert c.data_key in CSET.data, c.data_key
        if not c.is_memory and not c.published_note:
            assert c.published == CSET.data[c.data_key]["value"], c.key


def test_the_production_prefill_caches_the_published_share_of_every_prompt():
    # DeepSeek day 6: 73.7k input tokens/s per node including cache hits; 342B of 608B input tokens hit the
    # on-disk KV cache (same document). The row compares the published value as it stands, with the same
    # share of every prompt cached in its scenario.
    from moesim.scenario import load_scenario

    c = BY_KEY["dsv3-prod-prefill"]
    assert CSET.data[c.data_key]["value"] == 73700.0 == c.published
    w = load_scenario(str(REPO / "scenarios" / "validation-e2e" / c.scenario)).workload
    assert w.cached_prompt_tokens / w.prompt_tokens == pytest.approx(342.0 / 608.0, rel=1e-12)
    assert "342" in c.published_note and "608" in c.published_note


def test_every_validation_scenario_is_compared_and_cites_its_source():
    used = {c.scenario for c in CSET.comparisons}
    not_scenarios = {CSET.path.name, CSET.data_path.name, "qwen2-57b-a14b.toml"}  # the two data files, a model
    for p in sorted(SCENARIOS.glob("*.toml")):
        if p.name in not_scenarios:
            continue
        assert p.name in used, f"{p.name} is not used by any comparison"
        head = p.read_text().splitlines()[0]
        assert head.startswith("# Published"), f"{p.name}: first line should cite the published figure"


def test_qwen2_57b_model_file_matches_its_published_size():
    # Qwen2 technical report (arXiv 2407.10671), Table 1 and the model name: 57B total, 14B activated
    # (rounded to whole billions, hence 3%).
    counts = count_params(load_model(SCENARIOS / "qwen2-57b-a14b.toml"))
    assert counts.total == pytest.approx(57e9, rel=0.03)
    assert counts.active == pytest.approx(14e9, rel=0.03)


def test_the_doc_script_prints_every_row_as_markdown(report):
    out = subprocess.run([sys.executable, str(REPO / "tests" / "step" / "published_e2e.py")],
                         capture_output=True, text=True, check=True, cwd="/").stdout
    assert out == markdown(report) + "\n"
    for c in CSET.comparisons:
        assert c.what in out
    assert out.count("\n| ") >= len(CSET.comparisons)
