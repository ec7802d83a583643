"""Timing harness statistics, stage regions and the microbenchmarks' records."""

from __future__ import annotations

import pytest
import torch

from moesim.calib.grid import calibration_grid
from moesim.calib.records import GroupedMatmulBench, MatmulBench, Measurement, MemoryBench, OverheadBench
from moesim.calib.store import read_measurements
from moesim.runner import calibrate as calibrate_mod
from moesim.ops import OpKind
from moesim.runner.env import capture_env
from moesim.runner.microbench import run_single
from moesim.runner.timing import RegionTimer, bench, summarise


def test_summarise_reports_median_and_interpolated_percentiles():
    t = summarise([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (t.median_s, t.min_s, t.max_s) == (3.0, 1.0, 5.0)
    assert t.p10_s == pytest.approx(1.4)
    assert t.p90_s == pytest.approx(4.6)
    assert t.spread_frac == pytest.approx((4.6 - 1.4) / 3.0)


def test_bench_drops_the_first_timed_sample():
    calls = []
    t = bench(lambda: calls.append(1), "cpu", warmup=2, min_reps=5, max_reps=5, target_s=0.0)
    assert len(calls) == 2 + 6  # warm-up, then max_reps + 1 timed of which the first is dropped
    assert t.num_samples == 5


def test_region_timer_accumulates_per_operation_kind():
    rt = RegionTimer("cpu")
    for _ in range(2):
        with rt.region(OpKind.ROUTER):
            torch.ones(10).sum()
    with rt.region(OpKind.EXPERTS):
        pass
    totals = rt.totals_s()
    assert set(totals) == {OpKind.ROUTER, OpKind.EXPERTS}
    assert all(v >= 0 for v in totals.values())
    rt.reset()
    assert rt.totals_s() == {}


@pytest.mark.parametrize("b", [
    MatmulBench(dtype="fp32", m=8, k=64, n=32),
    MatmulBench(dtype="bf16", m=8, k=64, n=32),
    GroupedMatmulBench(dtype="fp32", num_groups=3, m_per_group=4, k=32, n=16),
    GroupedMatmulBench(dtype="fp32", op="bmm", num_groups=3, m_per_group=4, k=32, n=16),
    MemoryBench(op="copy", dtype="fp32", num_elements=4096),
    MemoryBench(op="elementwise", dtype="fp32", num_elements=4096),
    MemoryBench(op="gather", dtype="fp32", num_elements=4096, row_elements=64),
    MemoryBench(op="scatter_add", dtype="fp32", num_elements=4096, row_elements=64),
    OverheadBench(op="topk"),
], ids=lambda b: b.key)
def test_each_microbenchmark_returns_a_positive_measurement(b):
    m = run_single(b, torch.device("cpu"), target_s=0.005)
    assert isinstance(m, Measurement) and m.bench == b
    assert 0 < m.p10_s <= m.median_s <= m.p90_s
    assert m.detail


def test_every_grid_benchmark_kind_has_a_runner():
    kinds = {b.kind for size in ("tiny", "quick", "full") for b in calibration_grid("cpu", size)}
    assert kinds == {"matmul", "grouped_matmul", "memory", "overhead", "collective"}


def test_environment_names_device_versions_and_threads():
    env = capture_env("cpu")
    assert env["device_kind"] == "cpu" and env["device_name"]
    assert env["torch_version"] == torch.__version__
    assert env["num_threads"] == torch.get_num_threads()


def test_a_benchmark_measured_while_the_sentinel_ran_slow_is_measured_again_after_the_grid(tmp_path, monkeypatch):
    grid = [OverheadBench(op="add"), OverheadBench(op="index"), OverheadBench(op="softmax")]
    slow_key = grid[1].key
    slow = {"now": False}
    calls: list[str] = []
    real_run_single = calibrate_mod.run_single

    def run_single(b, dev, target_s):  # the machine turns twice as slow during the first run of one benchmark
        calls.append(b.key)
        slow["now"] = b.key == slow_key and calls.count(b.key) == 1
        return real_run_single(b, dev, target_s)

    def sentinel(self):  # the sentinel after that run sees it; the machine is fast again after
        t = 2e-4 if slow["now"] else 1e-4
        slow["now"] = False
        return t

    monkeypatch.setattr(calibrate_mod, "run_single", run_single)
    monkeypatch.setattr(calibrate_mod.Sentinel, "__call__", sentinel)
    path = tmp_path / "m.jsonl"
    new = calibrate_mod.run_grid(grid, path, "cpu", target_s=0.0)
    assert calls == [b.key for b in grid] + [slow_key]
    assert [m.key for m in new] == [b.key for b in grid]
    assert {m.key: m.sentinel_s for m in new}[slow_key] == 1e-4
    mf = read_measurements(path)
    assert mf.num_superseded == 1 and all(m.sentinel_s == 1e-4 for m in mf.measurements)


def test_a_machine_slow_through_every_retry_keeps_the_fastest_record_and_stops_after_the_passes(tmp_path, monkeypatch):
    assert calibrate_mod.REMEASURE_PASSES == 2
    grid = [OverheadBench(op="add"), OverheadBench(op="index")]
    # warm-up x3; add before/after; index before/after; index again x2 (still slow); the slower of before/after counts
    seq = iter([1e-4] * 3 + [1e-4, 1e-4] + [3e-4, 3e-4] + [2.5e-4, 2.5e-4] + [1e-4, 2.8e-4])
    monkeypatch.setattr(calibrate_mod.Sentinel, "__call__", lambda self: next(seq))
    path = tmp_path / "m.jsonl"
    new = calibrate_mod.run_grid(grid, path, "cpu", target_s=0.0)
    assert next(seq, None) is None  # no third pass
    kept = {m.key: m.sentinel_s for m in new}
    assert kept == {grid[0].key: 1e-4, grid[1].key: 2.5e-4}
    mf = read_measurements(path)
    assert mf.num_superseded == 2
    assert {m.key: m.sentinel_s for m in mf.measurements} == kept
