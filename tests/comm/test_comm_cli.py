"""``moesim comm``: output, --json, plots, and one clear line (exit 2) for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from moesim.comm import api


def test_all_reduce_prints_time_bandwidths_and_the_bottleneck(run_cli) -> None:  # noqa: ANN001
    r = run_cli("comm", "all-reduce", "--hardware", "h100-sxm", "--ranks", "16", "--bytes", "1GiB")
    assert r.exit_code == 0, r.stderr
    for word in ("time", "algbw", "busbw", "bottleneck", "GB/s"):
        assert word in r.stdout


def test_json_is_only_json_with_time_s_and_matches_the_api(run_cli) -> None:  # noqa: ANN001
    r = run_cli("comm", "all-reduce", "-H", "h100-sxm", "-n", "8", "-b", "64MB", "--json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    expected = api.all_reduce("h100-sxm", num_ranks=8, size_bytes=64e6)
    assert data["time_s"] == pytest.approx(expected.time_s)
    assert data["size_bytes"] == 64e6
    assert {"algbw_bytes_per_s", "busbw_bytes_per_s", "bottleneck"} <= set(data)


def test_sizes_accept_binary_and_decimal_units(run_cli) -> None:  # noqa: ANN001
    a = json.loads(run_cli("comm", "all-gather", "-H", "h100-sxm", "-n", "8", "-b", "1GiB", "--json").stdout)
    b = json.loads(run_cli("comm", "all-gather", "-H", "h100-sxm", "-n", "8", "-b", "1GB", "--json").stdout)
    assert a["size_bytes"] == 2**30 and b["size_bytes"] == 1e9


def test_expert_parallel_all_to_all_json_has_dispatch_combine_and_total(run_cli) -> None:  # noqa: ANN001
    r = run_cli("comm", "all-to-all", "-H", "h800", "--ranks", "32", "--tokens-per-rank", "4096", "--top-k", "8",
                "--experts", "256", "--hidden", "7168", "--dispatch-dtype", "fp8", "--node-limit", "4", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["dispatch_bytes_per_token"] == 7392 and data["combine_bytes_per_token"] == 14336
    assert data["time_s"] == pytest.approx(data["dispatch"]["time_s"] + data["combine"]["time_s"])
    assert data["algorithm"] == "hierarchical"


def test_all_to_all_in_nccl_tests_mode_and_sendrecv(run_cli) -> None:  # noqa: ANN001
    a = run_cli("comm", "all-to-all", "-H", "h100-sxm", "-n", "16", "--bytes", "1GB", "--json")
    assert json.loads(a.stdout)["algorithm"] == "direct"
    s = run_cli("comm", "sendrecv", "-H", "h100-sxm", "-n", "2", "-b", "1MB")
    assert s.exit_code == 0 and "busbw" in s.stdout


def test_sweep_table_and_json_list(run_cli) -> None:  # noqa: ANN001
    r = run_cli("comm", "reduce-scatter", "-H", "a100-sxm-80gb", "-n", "16", "--sweep", "1KiB:1MiB", "--json")
    data = json.loads(r.stdout)
    assert [d["size_bytes"] for d in data] == [2**k for k in range(10, 21)]
    t = run_cli("comm", "reduce-scatter", "-H", "a100-sxm-80gb", "-n", "16", "--sweep", "1KiB:1MiB")
    assert t.exit_code == 0 and "busbw" in t.stdout


def test_topology_summary(run_cli) -> None:  # noqa: ANN001
    data = json.loads(run_cli("comm", "topology", "-H", "gb200-nvl72", "-n", "144", "--json").stdout)
    assert data["graph_nodes"]["gpu"] == 144 and data["num_rails"] == 4
    assert data["links"]["scale_up"]["capacity_bytes_per_s"] == 900e9


def test_plot_writes_a_png(run_cli, tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("matplotlib")
    out = tmp_path / "ar.png"
    r = run_cli("comm", "all-reduce", "-H", "h100-sxm", "-n", "8", "-b", "256MB", "--plot", str(out))
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out2 = tmp_path / "a2a.png"
    r = run_cli("comm", "all-to-all", "-H", "h100-sxm", "-n", "16", "-t", "256", "-k", "8", "-e", "64",
                "--bytes-per-token", "14KiB", "--plot", str(out2))
    assert r.exit_code == 0 and out2.exists()
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file and a rename


def test_missing_matplotlib_is_one_line_naming_the_extra(run_cli, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    import moesim.cli.render.comm as render

    monkeypatch.setattr(render, "plot_available", lambda: False)
    out = tmp_path / "x.png"
    r = run_cli("comm", "all-reduce", "-H", "h100-sxm", "-n", "8", "-b", "1MB", "--plot", str(out))
    assert r.exit_code == 2
    assert "pip install 'moesim[plot]'" in r.stderr and r.stderr.count("\n") == 1
    assert not out.exists()


BAD = [
    # (args, flag named, words in the message)
    (["all-reduce", "-H", "h100-sxm", "-n", "16384", "-b", "1GB"], "--ranks", "max_nodes"),
    (["all-reduce", "-H", "h800", "-n", "4096", "-b", "1GB"], "--ranks", "256 nodes"),
    (["all-reduce", "-H", "local-cpu", "-n", "2", "-b", "1GB"], "--ranks", "no scale-out fabric"),
    (["all-reduce", "-H", "h100-sxm", "-n", "12", "-b", "1GB"], "--ranks", "whole nodes"),
    (["all-reduce", "-H", "h100-sxm", "-n", "0", "-b", "1GB"], "--ranks", ">= 1"),
    (["all-reduce", "-H", "h100-sxm", "-n", "8", "-b", "0"], "--bytes", "positive"),
    (["all-reduce", "-H", "h100-sxm", "-n", "8", "-b", "-5MB"], "--bytes", "positive"),
    (["all-reduce", "-H", "h100-sxm", "-n", "8", "-b", "5 parsecs"], "--bytes", "unknown unit"),
    (["all-reduce", "-H", "h100-sxm", "-n", "8", "-b", "1GB", "-a", "butterfly"], "--algorithm", "allowed: auto, ring"),
    (["all-reduce", "-H", "a100-sxm-80gb", "-n", "8", "-b", "1GB", "-a", "nvls"], "--algorithm", "nvls_sharp"),
    (["all-gather", "-H", "h100-sxm", "-n", "8", "-b", "1GB", "--ranks-per-node", "9"], "--ranks-per-node", "exceeds"),
    (["all-gather", "-H", "h100-sxm", "-n", "8"], "--bytes", "--sweep"),
    (["all-gather", "-H", "h100-sxm", "-n", "8", "--sweep", "1GB:1KB"], "--sweep", "smaller"),
    (["all-reduce", "-H", "h100-sxm", "-n", "8", "-b", "1GB", "--plot", "x.jpg"], "--plot", ".png"),
    (["all-reduce", "-H", "tpu-v9", "-n", "8", "-b", "1GB"], "hardware", "unknown hardware profile"),
    (["all-to-all", "-H", "h800", "-n", "32", "-t", "4096", "-k", "8", "-e", "256", "--bytes-per-token", "7KB",
      "--node-limit", "5"], "--node-limit", "between 1 and the 4 nodes"),
    (["all-to-all", "-H", "h800", "-n", "32", "-t", "4096", "-k", "8", "-e", "256", "--bytes-per-token", "7KB",
      "-a", "butterfly"], "--algorithm", "allowed: direct, hierarchical"),
    (["all-to-all", "-H", "h800", "-n", "32", "-t", "4096", "-k", "8", "-e", "100", "--bytes-per-token", "7KB"],
     "--experts", "must divide"),
    (["all-to-all", "-H", "h800", "-n", "32", "-t", "4096", "-k", "300", "-e", "256", "--bytes-per-token", "7KB"],
     "--top-k", "between 1 and"),
    (["all-to-all", "-H", "h800", "-n", "32", "-t", "0", "-k", "8", "-e", "256", "--bytes-per-token", "7KB"],
     "--tokens-per-rank", "positive"),
    (["all-to-all", "-H", "h800", "-n", "32", "-t", "64", "-k", "8", "-e", "256", "--bytes-per-token", "0"],
     "--bytes-per-token", "positive"),
    (["all-to-all", "-H", "h800", "-n", "32", "-t", "64", "-k", "8", "-e", "256"], "--bytes-per-token", "--hidden"),
    (["all-to-all", "-H", "h800", "-n", "32", "-k", "8", "-e", "256", "--hidden", "7168"], "--tokens-per-rank", "needs"),
    (["all-to-all", "-H", "h800", "-n", "32", "-t", "64", "-k", "8", "-e", "256", "--hidden", "7168",
      "--distribution", "lognormal"], "--distribution", "unknown distribution"),
    (["all-to-all", "-H", "h800", "-n", "16", "--bytes", "1GB", "-t", "64"], "--tokens-per-rank", "drop"),
]


@pytest.mark.parametrize(("args", "flag", "words"), BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _, _ in BAD])
def test_bad_input_is_one_line_naming_the_flag_and_exits_2(run_cli, args, flag, words) -> None:  # noqa: ANN001
    r = run_cli("comm", *args)
    assert r.exit_code == 2, r.stdout
    assert r.stdout == ""
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert flag in line and words in line, line


def test_bad_input_through_the_installed_entry_point_has_no_traceback() -> None:
    p = subprocess.run([sys.executable, "-m", "moesim.cli.main", "comm", "all-reduce", "-H", "h100-sxm", "-n", "8",
                        "-b", "-1GB"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("error: --bytes:") and "Traceback" not in p.stderr


def test_help_lists_every_subcommand(run_cli) -> None:  # noqa: ANN001
    r = run_cli("comm", "--help")
    for name in ("all-to-all", "all-reduce", "all-gather", "reduce-scatter", "sendrecv", "topology"):
        assert name in r.stdout
