"""``moesim.published``: the comparisons file is validated on load, the summaries are the stated statistics,
and the bundled comparisons ship with the package."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from moesim.errors import InputError
from moesim.published import FIGURES, GroupSummary, fmt_value, load_comparisons, run_published, summarise

REPO = Path(__file__).resolve().parents[1]
E2E = REPO / "scenarios" / "validation-e2e"

ROW = dict(key="k", data_key="mixtral-8x7b-min-gpu-memory-bf16", scenario=str(E2E / "mixtral-8x7b-bf16-1xh100.toml"),
           what="w", unit="tok/s", group="serving", figure="tokens_per_s_per_gpu", published=1000.0, source="s")


def _file(tmp_path: Path, *rows: dict, head: str | None = None) -> Path:
    p = tmp_path / "c.toml"
    text = f"published_data = {json.dumps(str(E2E / 'published.toml'))}\n" if head is None else head
    for r in rows:
        text += "\n[[comparison]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in r.items())
    p.write_text(text)
    return p


def test_the_bundled_comparisons_load_with_every_figure_known():
    cset = load_comparisons()
    assert len(cset.comparisons) >= 26
    assert {c.figure for c in cset.comparisons} <= set(FIGURES)
    assert cset.data_path == E2E / "published.toml"


@pytest.mark.parametrize("row, field, needle", [
    (dict(ROW, group="memory", published=True), "", "group 'memory' goes with figure 'fits'"),
    (dict(ROW, figure="fits", published=True), "", "group 'memory' goes with figure 'fits'"),
    (dict(ROW, group="memory", figure="fits"), "", "a memory row's published value must be true or false"),
    (dict(ROW, published=True), "", "a numeric row's published value must be a number"),
    (dict(ROW, published=-3.0), "", "published must be a finite number > 0"),
    (dict(ROW, group="memory", figure="fits", published=True, tolerance=0.1), "", "tolerance applies to numeric rows"),
    (dict(ROW, tolerance=0), ".tolerance", "greater than 0"),
])
def test_inconsistent_rows_are_refused_naming_the_row(tmp_path, row, field, needle):
    p = _file(tmp_path, row)
    with pytest.raises(InputError) as exc:
        load_comparisons(p)
    assert str(exc.value).startswith(f"{p}: comparison[0] (k){field}: ") and needle in str(exc.value)


def test_duplicate_keys_and_unknown_top_level_keys_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"comparison\[1\] \(k\)\.key: duplicate key 'k'"):
        load_comparisons(_file(tmp_path, ROW, ROW))
    with pytest.raises(InputError, match="colour: unknown top-level key"):
        load_comparisons(_file(tmp_path, ROW, head='colour = "red"\n'))
    with pytest.raises(InputError, match=r"comparison: no \[\[comparison\]\] tables found"):
        load_comparisons(_file(tmp_path, head=f"published_data = {json.dumps(str(E2E / 'published.toml'))}\n"))
    with pytest.raises(InputError, match="published_data: published-data file .*none.toml"):
        load_comparisons(_file(tmp_path, ROW, head='published_data = "none.toml"\n'))


@pytest.fixture(scope="module")
def one_row(tmp_path_factory) -> Path:
    """A comparisons file of one serving row (Mixtral-8x7B on one H100)."""
    return _file(tmp_path_factory.mktemp("one"), ROW)


def test_summary_is_the_median_the_linear_p90_and_the_counts_within_25_and_50_percent(one_row):
    base = run_published(one_row).rows[0]
    errs = [0.1, -0.2, 0.3, -0.6, 1.0]
    rows = [replace(base, error_frac=e) for e in errs] + [replace(base, error_frac=None, failure="x")]
    s = summarise(rows, "serving")
    # |e| sorted: 0.1 0.2 0.3 0.6 1.0; median 0.3; p90 at rank 0.9 x 4 = 3.6: 0.6 + 0.6 x (1.0 - 0.6) = 0.84
    assert s == GroupSummary(group="serving", num_rows=6, num_failed=1, median_abs_error_frac=pytest.approx(0.3),
                             p90_abs_error_frac=pytest.approx(0.84), num_within_25pct=2, num_within_50pct=3)


def test_the_dominant_stage_is_the_largest_share_of_time_by_stage(one_row):
    from moesim.published import estimate_comparison

    cset = load_comparisons(one_row)
    est, _ = estimate_comparison(cset, cset.comparisons[0])
    row = run_published(cset).rows[0]
    stages = est.time_by_stage_s
    assert row.dominant_stage == max(stages, key=stages.get)
    assert row.dominant_stage_frac == pytest.approx(max(stages.values()) / sum(stages.values()))


def test_the_wheel_ships_every_file_of_validation_e2e():
    with (REPO / "pyproject.toml").open("rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["moesim.scenarios"]
    for name in ("comparisons.toml", "published.toml", *(p.name for p in E2E.glob("*.toml"))):
        rel = f"validation-e2e/{name}"
        assert any(fnmatch.fnmatch(rel, pat) and pat.count("/") == rel.count("/") for pat in patterns), rel


@pytest.mark.parametrize("value,unit,want", [(999.6, "tok/s", "1,000 tok/s"), (999.4, "tok/s", "999 tok/s"),
                                             (1296.8, "tok/s", "1,297 tok/s"), (0.0242, "s", "0.0242 s")])
def test_values_that_round_to_a_thousand_print_with_a_separator_not_an_exponent(value, unit, want):
    assert fmt_value(value, unit) == want
