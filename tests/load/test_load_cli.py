"""``moesim load``: table, --json, --plot, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BASE = ("load", "--experts", "64", "--top-k", "8", "--ep", "8", "--tokens", "4096", "--samples", "64")


def test_table_shows_every_rank_the_imbalance_and_dropless_time(run_cli) -> None:  # noqa: ANN001
    r = run_cli(*BASE, "-d", "zipf:1.2")
    assert r.exit_code == 0, r.stderr
    assert "Tokens per rank per step" in r.stdout
    for rank in range(8):
        assert f"│ {rank:>4} │" in r.stdout
    assert "max/mean" in r.stdout and "Dropless" in r.stdout and "█" in r.stdout


def test_capacity_factor_reports_drops_and_padding(run_cli) -> None:  # noqa: ANN001
    r = run_cli(*BASE, "--capacity-factor", "1.0", "-d", "zipf:1.0")
    assert r.exit_code == 0, r.stderr
    assert "Capacity factor 1" in r.stdout and "dropped" in r.stdout and "padding" in r.stdout


def test_uniform_run_prints_the_closed_form_cross_check(run_cli) -> None:  # noqa: ANN001
    r = run_cli(*BASE)
    assert "Closed form" in r.stdout


def test_json_is_only_json_with_units_in_the_names(run_cli) -> None:  # noqa: ANN001
    r = run_cli(*BASE, "-d", "dirichlet:0.5", "--capacity-factor", "1.5", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert len(data["ranks"]) == 8
    assert {"expected_tokens", "p50_tokens", "p99_tokens"} <= set(data["ranks"][0])
    assert data["imbalance"]["max_over_mean_ratio"] >= 1.0
    assert 0 <= data["capacity"]["dropped_frac"] <= 1
    assert data["kept_slots"] + data["dropped_slots"] == pytest.approx(data["routed_slots"])


def test_model_flag_takes_experts_top_k_and_router(run_cli) -> None:  # noqa: ANN001
    r = run_cli("load", "--model", "deepseek-v3", "--ep", "32", "--tokens", "2048", "--samples", "32", "--json")
    assert r.exit_code == 0, r.stderr
    spec = json.loads(r.stdout)["spec"]
    assert (spec["num_experts"], spec["top_k"], spec["router"]["kind"]) == (256, 8, "group_limited")


def test_per_layer_histogram_file_reports_every_layer(run_cli, tmp_path: Path) -> None:  # noqa: ANN001
    f = tmp_path / "layers.json"
    f.write_text(json.dumps([[1] * 16, [9] + [1] * 15]))
    r = run_cli("load", "--experts", "16", "--top-k", "2", "--ep", "4", "--tokens", "512", "-d", f"hist:{f}")
    assert r.exit_code == 0, r.stderr
    assert "Per layer" in r.stdout and "worst layer 1" in r.stdout


def test_plot_writes_a_png(run_cli, tmp_path: Path) -> None:  # noqa: ANN001
    pytest.importorskip("matplotlib")
    out = tmp_path / "load.png"
    r = run_cli(*BASE, "-d", "zipf:1.0", "--plot", str(out))
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["load.png"]  # no temporary file left


def test_plot_without_matplotlib_is_one_line_naming_the_extra(run_cli, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import moesim.cli.render.load as render

    monkeypatch.setattr(render, "plot_available", lambda: False)
    out = tmp_path / "load.png"
    r = run_cli(*BASE, "--plot", str(out))
    assert r.exit_code == 2
    assert "pip install 'moesim[plot]'" in r.stderr
    assert r.stdout == "" and not out.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--experts", "8", "--top-k", "9"), "--top-k: top_k: top-k 9 is outside 1..8"),
        (("--experts", "64", "--top-k", "8", "--ep", "6"), "--ep: ep_size: EP size 6 does not divide the 64 experts; allowed: 1, 2, 4"),
        (("--experts", "64", "--top-k", "8", "--capacity-factor", "0"), "--capacity-factor: capacity_factor: Input should be greater than 0"),
        (("--experts", "64", "--top-k", "8", "--capacity-factor", "-2"), "--capacity-factor"),
        (("--experts", "4", "--top-k", "1", "-d", "hist:1,-1,2,2"), "--distribution: distribution.counts: histogram entry 1 is -1.0"),
        (("--experts", "4", "--top-k", "1", "-d", "hist:1,nan,2,2"), "histogram entry 1 is nan"),
        (("--experts", "4", "--top-k", "1", "-d", "hist:1,2,3"), "--distribution: distribution.counts: histogram has 3 entries but the model has 4 experts"),
        (("--experts", "64", "--top-k", "8", "-d", "lognormal:1"), "--distribution: distribution: unknown distribution 'lognormal:1'; allowed: uniform"),
        (("--experts", "64", "--top-k", "8", "--redundant-experts", "3"), "--redundant-experts: num_redundant_experts: num_experts + redundant"),
        (("--experts", "64", "--top-k", "2", "--router", "switch"), "--top-k: top_k: --router switch routes top-1"),
        (("--model", "no-such-model", "--ep", "8"), "--model: model: unknown model 'no-such-model'"),
        (("--experts", "64",), "give --model NAME_OR_PATH, or both --experts and --top-k"),
        (("--experts", "64", "--top-k", "8", "--router", "group_limited"), "group_limited needs --groups and --topk-groups"),
        (("--experts", "64", "--top-k", "8", "--router", "group_limited", "--groups", "8", "--topk-groups", "9"),
         "topk_groups (9) cannot exceed num_groups (8)"),
        (("--experts", "64", "--top-k", "8", "--plot", "out.svg"), "--plot: plot file must end in .png"),
        (("--experts", "64", "--top-k", "8", "--seed", "-1"), "--seed: seed: Input should be greater than or equal to 0"),
        (("--experts", "64", "--top-k", "8", "-d", "zipf:1:-3"), "--distribution: distribution.seed: Input should be greater"),
        (("--experts", "64", "--top-k", "8", "--tokens", "0"), "--tokens: num_tokens: Input should be greater than or equal to 1"),
        (("--experts", "64", "--top-k", "8", "--samples", "0"), "--samples: num_samples"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_cli, args, needle) -> None:  # noqa: ANN001
    r = run_cli("load", *args)
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr


def test_histogram_file_with_the_wrong_length_names_the_file(run_cli, tmp_path: Path) -> None:  # noqa: ANN001
    f = tmp_path / "hist.csv"
    f.write_text("5\n1\n1\n")
    r = run_cli("load", "--experts", "4", "--top-k", "1", "--ep", "2", "-d", f"hist:{f}")
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: {f}: distribution.counts: histogram has 3 entries but the model has 4 experts; give one count per expert"


def test_console_entry_point_exits_2_without_traceback() -> None:
    p = subprocess.run([sys.executable, "-m", "moesim.cli.main", "load", "--experts", "8", "--top-k", "2", "--ep", "3"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "EP size 3 does not divide the 8 experts" in p.stderr
