"""``moesim validate --published``: the table, --json, --plot, --markdown, and bad input (one line, exit 2)."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.published import doc_table, load_comparisons, run_published, summary_lines

REPO = Path(__file__).resolve().parents[2]
E2E = REPO / "scenarios" / "validation-e2e"
DOC = REPO / "docs" / "published-comparisons.md"

HAS_MATPLOTLIB = __import__("importlib").util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def report():
    return run_published()


def _one_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, res
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def _row(**over) -> str:
    """One [[comparison]] table pointing at a bundled scenario by absolute path."""
    fields = dict(key="mixtral-1xh100", data_key="mixtral-8x7b-min-gpu-memory-bf16",
                  scenario=str(E2E / "mixtral-8x7b-bf16-1xh100.toml"), what="Mixtral-8x7B BF16 on 1x H100",
                  unit="tok/s", group="serving", figure="tokens_per_s_per_gpu", published=1000.0, source="test")
    fields.update(over)
    body = []
    for k, v in fields.items():
        if v is None:
            continue
        body.append(f"{k} = {json.dumps(v)}")
    return "[[comparison]]\n" + "\n".join(body) + "\n"


def _write(tmp_path: Path, *rows: str, head: str | None = None) -> Path:
    p = tmp_path / "comparisons.toml"
    head = f"published_data = {json.dumps(str(E2E / 'published.toml'))}\n\n" if head is None else head
    p.write_text(head + "\n".join(rows))
    return p


# ----------------------------------------------------------------------------- output


def test_default_output_is_a_table_of_every_row_then_the_summary_per_group(run_cli, report):
    res = run_cli("validate", "--published")
    assert res.exit_code == 0, res.stderr
    assert "The step model against published figures" in res.stdout and "Memory checks" in res.stdout
    for r in report.rows:
        assert f"│ {r.number:>2} │" in res.stdout, r.key
    for line in summary_lines(report):
        assert line in res.stdout
    assert "training:" in res.stdout and "serving:" in res.stdout and "all numeric:" in res.stdout
    assert "linear percentile" in res.stdout


def test_json_has_every_row_with_its_error_and_the_group_summaries(run_cli):
    res = run_cli("validate", "--published", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    cset = load_comparisons()
    assert [r["key"] for r in out["rows"]] == (
        [c.key for c in cset.comparisons if not c.is_memory] + [c.key for c in cset.comparisons if c.is_memory])
    assert set(out["summaries"]) == {"training", "serving", "all"}
    assert out["percentile_method"] == "linear"
    for r in out["rows"]:
        for field in ("published", "predicted", "group", "dominant_stage", "source", "error_frac", "failure"):
            assert field in r, (r["key"], field)
        assert r["failure"] is None, r
        if r["group"] == "memory":
            assert isinstance(r["published"], bool) and r["agrees"] == (r["predicted"] == r["published"])
        else:
            assert r["error_frac"] == pytest.approx(r["predicted"] / r["published"] - 1.0, rel=1e-12)
            assert r["dominant_stage"] and 0 < r["dominant_stage_frac"] <= 1
    numeric = [r for r in out["rows"] if r["group"] != "memory"]
    s = out["summaries"]["all"]
    errs = [abs(r["error_frac"]) for r in numeric]
    assert s["num_rows"] == len(numeric) and s["median_abs_error_frac"] == pytest.approx(statistics.median(errs))
    assert s["num_within_50pct"] == sum(e <= 0.5 for e in errs)
    mem = [r for r in out["rows"] if r["group"] == "memory"]
    assert out["memory"] == {"num_rows": len(mem), "num_failed": 0, "num_agree": sum(r["agrees"] for r in mem)}


def test_markdown_is_the_table_section_of_the_doc(run_cli):
    res = run_cli("validate", "--published", "--markdown")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip("\n") == doc_table(DOC.read_text()), (
        "docs/published-comparisons.md is out of date: python tests/step/published_e2e.py --write")


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="needs matplotlib")
def test_plot_writes_a_png(run_cli, tmp_path):
    path = tmp_path / "sub" / "published.png"
    res = run_cli("validate", "--published", "--plot", str(path))
    assert res.exit_code == 0, res.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {path}" in res.stderr
    assert [p.name for p in path.parent.iterdir()] == ["published.png"]  # no temporary file left


def test_plot_without_matplotlib_is_refused_before_any_work(run_cli, tmp_path, monkeypatch):
    from moesim.cli.render import published as render

    monkeypatch.setattr(render, "plot_available", lambda: False)
    line = _one_line(run_cli("validate", "--published", "--plot", str(tmp_path / "p.png")))
    assert "--plot" in line and "pip install 'moesim[plot]'" in line
    assert not list(tmp_path.iterdir())


def test_another_comparisons_file_with_paths_relative_to_its_folder(run_cli, tmp_path):
    for name in ("mixtral-8x7b-bf16-1xh100.toml", "published.toml"):
        (tmp_path / name).write_text((E2E / name).read_text())
    p = tmp_path / "comparisons.toml"
    p.write_text(_row(scenario="mixtral-8x7b-bf16-1xh100.toml")
                 + _row(key="fits", group="memory", figure="fits", published=False, unit="",
                        scenario="mixtral-8x7b-bf16-1xh100.toml"))
    res = run_cli("validate", "--published", "--comparisons", str(p), "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert [r["key"] for r in out["rows"]] == ["mixtral-1xh100", "fits"]
    assert out["rows"][1]["agrees"] is True and out["summaries"]["serving"]["num_rows"] == 1
    assert out["summaries"]["training"] == {"group": "training", "num_rows": 0, "num_failed": 0,
                                            "median_abs_error_frac": None, "p90_abs_error_frac": None,
                                            "num_within_25pct": 0, "num_within_50pct": 0}


def test_a_row_that_cannot_be_estimated_is_reported_not_a_crash(run_cli, tmp_path):
    p = _write(tmp_path, _row(), _row(key="broken", overrides=["layout.ep=7"]))
    res = run_cli("validate", "--published", "--comparisons", str(p), "--json")
    assert res.exit_code == 0, res.stderr
    rows = {r["key"]: r for r in json.loads(res.stdout)["rows"]}
    assert rows["mixtral-1xh100"]["failure"] is None and math.isfinite(rows["mixtral-1xh100"]["predicted"])
    assert rows["broken"]["predicted"] is None and "layout.ep" in rows["broken"]["failure"]
    table = run_cli("validate", "--published", "--comparisons", str(p))
    assert table.exit_code == 0 and "1 failed" in table.stdout
    md = run_cli("validate", "--published", "--comparisons", str(p), "--markdown")
    assert md.exit_code == 0 and "| error: " in md.stdout


def test_verbose_lets_a_failing_row_raise_with_its_traceback(run_cli, tmp_path):
    from moesim.errors import InputError

    p = _write(tmp_path, _row(key="broken", overrides=["layout.ep=7"]))
    with pytest.raises(InputError, match="layout.ep"):
        run_cli("-v", "validate", "--published", "--comparisons", str(p))


def test_published_runs_without_torch(tmp_path):
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named torch (test stub)')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "fake") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "moesim.cli.main", "validate", "--published", "--json"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["rows"]) == len(load_comparisons().comparisons)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, needle", [
    (["--profile", "x"], "--published does not take --profile"),
    (["--device", "cpu"], "--published does not take --device"),
    (["--cases", "c.toml", "--threads", "2"], "--published does not take --cases, --threads"),
    (["--out", "d"], "--published does not take --out"),
    (["--markdown", "--json"], "--markdown and --json cannot be combined"),
    (["--plot", "p.jpg"], "--plot: plot file must end in .png"),
])
def test_published_refuses_layer_case_options_and_conflicting_flags(run_cli, tmp_path, args, needle):
    line = _one_line(run_cli("validate", "--published", *args))
    assert needle in line


@pytest.mark.parametrize("args, needle", [
    (["--markdown"], "--markdown needs --published"),
    (["--comparisons", "c.toml"], "--comparisons needs --published"),
    ([], "Missing option '--profile'"),
])
def test_published_options_need_published_and_layer_cases_need_a_profile(run_cli, args, needle):
    line = _one_line(run_cli("validate", *args))
    assert needle in line


@pytest.mark.parametrize("over, field, needle", [
    (dict(figure="gpu_hours"), "figure", "unknown figure 'gpu_hours'; allowed: gpu_hours_per_trillion_tokens"),
    (dict(scenario="nope.toml"), "scenario", "no scenario file 'nope.toml'"),
    (dict(data_key="no-such-table"), "data_key", "no table 'no-such-table' in published.toml"),
    (dict(group="train"), "group", "'training', 'serving' or 'memory'"),
    (dict(units="x"), "units", "unknown field; allowed: key, data_key, scenario"),
    (dict(source=None), "source", "required field is missing"),
    (dict(published="lots"), "published", "must be a number"),
    (dict(overrides=["layout.ep"]), "overrides", "expected FIELD=VALUE"),
])
def test_a_bad_comparisons_file_is_one_line_naming_the_file_the_key_and_the_field(run_cli, tmp_path, over, field,
                                                                                  needle):
    p = _write(tmp_path, _row(**over))
    line = _one_line(run_cli("validate", "--published", "--comparisons", str(p)))
    assert str(p) in line and f"comparison[0] (mixtral-1xh100).{field}" in line and needle in line, line


def test_a_missing_comparisons_file_is_one_line(run_cli, tmp_path):
    line = _one_line(run_cli("validate", "--published", "--comparisons", str(tmp_path / "none.toml")))
    assert "none.toml" in line and "not found" in line
