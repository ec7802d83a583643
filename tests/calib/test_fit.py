"""The fit recovers known efficiencies from synthetic measurements (no torch)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.calib.fit import bench_op, binned_curve, fit_link, fit_profile, predict_points
from moesim.calib.records import (
    CollectiveBench,
    GroupedMatmulBench,
    MatmulBench,
    Measurement,
    MemoryBench,
    OverheadBench,
)
from moesim.hardware import Curve, HardwareProfile, load_hardware
from moesim.layer import Op
from moesim.ops import OpKind
from moesim.timing import time_op

PROV = dict(base_profile="local-cpu", device_name="Test CPU", date_utc="2025-01-01T00:00:00Z",
            measurements_file="m.jsonl", measurements_sha256="0" * 64)


def _m(bench, t: float) -> Measurement:
    return Measurement(bench=bench, median_s=t, p10_s=t * 0.98, p90_s=t * 1.02, num_samples=5)


def _truth() -> HardwareProfile:
    """A ground-truth CPU: 100 GFLOP/s fp32, 400 bf16, 50 GB/s, 2 us per kernel, known curves."""
    base = load_hardware("local-cpu")
    raw = base.model_dump()
    raw["accelerator"]["peak_flops_per_s"] = {"fp32": 100e9, "bf16": 400e9}
    raw["accelerator"]["memory_bandwidth_bytes_per_s"] = 50e9
    raw["efficiency"] |= {
        "matmul_frac": {"points": [(1e6, 0.2), (1e8, 0.6), (1e10, 1.0)]},
        "grouped_matmul_frac": {"points": [(1e6, 0.1), (1e8, 0.5), (1e10, 0.9)]},
        "memory_frac": {"points": [(1e4, 0.3), (1e6, 1.0), (1e8, 0.4)]},
        "kernel_overhead_s": 2e-6,
        # fp32 GEMMs follow a shape table: efficiency rises with rows M and with the inner dimension K
        "gemm_tables": [{"kind": "matmul", "dtype": "fp32", "rows": [4, 64, 1024], "inner": [256, 1024],
                         "frac": [[0.05, 0.1], [0.3, 0.5], [0.8, 1.0]]}],
    }
    return HardwareProfile.model_validate(raw)


def _synthetic(truth: HardwareProfile) -> list[Measurement]:
    out = [_m(OverheadBench(op=o), 2e-6) for o in ("add", "mm", "topk")]
    for dt in ("fp32", "bf16"):
        for m in (4, 16, 64, 256, 1024, 4096):
            for k, n in ((256, 512), (1024, 2048)):
                b = MatmulBench(dtype=dt, m=m, k=k, n=n)
                out.append(_m(b, time_op(truth, bench_op(b), dt).time_s))
        for g, m in ((4, 16), (16, 64), (8, 1024)):
            b = GroupedMatmulBench(dtype=dt, num_groups=g, m_per_group=m, k=512, n=1024)
            out.append(_m(b, time_op(truth, bench_op(b), dt).time_s))
    for p in range(10, 27):
        b = MemoryBench(op="copy", dtype="fp32", num_elements=1 << p)
        op = Op(OpKind.EXPERTS, bytes_moved=b.bytes_moved, compute_kind="elementwise")
        out.append(_m(b, time_op(truth, op, "fp32").time_s))
    for s in (1 << 10, 1 << 14, 1 << 18, 1 << 22):
        b = CollectiveBench(op="all_to_all", world_size=2, message_bytes=s)
        out.append(_m(b, 100e-6 + b.cross_bytes / 2e9))
    return out


def test_fit_recovers_the_profile_that_generated_the_measurements():
    truth = _truth()
    res = fit_profile(load_hardware("local-cpu"), _synthetic(truth), name="fitted", calibration=PROV,
                      use_measured_peaks=True, device_name="Test CPU")
    assert res.kernel_overhead_s == pytest.approx(2e-6)
    # the fastest GEMM ran at the curve's top (1.0 x peak): measured peaks equal the true ones
    assert res.peaks_flops_per_s["fp32"] == pytest.approx(100e9, rel=0.02)
    assert res.peaks_flops_per_s["bf16"] == pytest.approx(400e9, rel=0.02)
    assert res.memory_bandwidth_bytes_per_s == pytest.approx(50e9, rel=0.02)
    for fam in ("matmul", "grouped_matmul", "memory", "overhead", "all_to_all"):
        assert res.residuals[fam] < 0.03, (fam, res.residuals)
    lf = res.links["all_to_all"]
    assert lf.overhead_s == pytest.approx(100e-6, rel=0.01)
    assert lf.bandwidth_bytes_per_s == pytest.approx(2e9, rel=0.01)
    eff = res.profile.efficiency
    (table,) = eff.gemm_table("matmul", "fp32")
    assert table.rows == [4, 16, 64, 256, 1024, 4096] and table.inner == [256, 1024] and table.groups is None
    for m in (4, 64, 1024):
        for k in (256, 1024):
            assert table(m, k) == pytest.approx(truth.efficiency.gemm_frac("matmul", "fp32", m, k), rel=0.02)
    # bf16 had no table in the truth: its fitted table reproduces the FLOPs curve at the measured shapes
    assert eff.gemm_frac("matmul", "bf16", 64, 1024) == pytest.approx(
        truth.efficiency.matmul_frac(2 * 64 * 1024 * 2048), rel=0.05)
    # grouped kernels: one table per measured group count
    assert sorted(t.groups for t in eff.gemm_table("grouped_matmul", "fp32")) == [4.0, 8.0, 16.0]


def test_calibrated_profile_carries_provenance_and_round_trips_through_json(tmp_path):
    res = fit_profile(load_hardware("local-cpu"), _synthetic(_truth()), name="fitted", calibration=PROV,
                      use_measured_peaks=True, device_name="Test CPU")
    cal = res.profile.calibration
    assert cal is not None and cal.device_name == "Test CPU" and cal.measurements_sha256 == "0" * 64
    assert cal.num_measurements == len(_synthetic(_truth()))
    assert set(cal.fit_residuals) >= {"matmul", "memory"}
    assert "measured" in res.profile.sources["accelerator.peak_flops_per_s.fp32"]
    p = tmp_path / "fitted.json"
    p.write_text(json.dumps(res.profile.model_dump(mode="json")))
    again = load_hardware(p)
    assert again == res.profile


def test_gpu_fit_keeps_datasheet_peaks_and_expresses_link_as_a_fraction():
    base = load_hardware("h100-sxm")
    ms = [_m(MatmulBench(dtype="bf16", m=4096, k=4096, n=4096), 2 * 4096**3 / 700e12),
          _m(CollectiveBench(op="all_to_all", world_size=8, message_bytes=1 << 20), 20e-6 + (7 / 8) * (1 << 20) / 360e9),
          _m(CollectiveBench(op="all_to_all", world_size=8, message_bytes=1 << 28), 20e-6 + (7 / 8) * (1 << 28) / 360e9)]
    res = fit_profile(base, ms, name="h100-cal", calibration=PROV | {"base_profile": "h100-sxm"},
                      use_measured_peaks=False)
    assert res.profile.accelerator.peak_flops_per_s == base.accelerator.peak_flops_per_s
    assert res.profile.efficiency.scale_up_frac == pytest.approx(360e9 / 450e9, rel=0.01)
    assert res.profile.efficiency.collective_overhead_s == pytest.approx(20e-6, rel=0.05)


def test_families_without_measurements_keep_base_values_and_say_so():
    base = load_hardware("local-cpu")
    res = fit_profile(base, [_m(OverheadBench(op="add"), 3e-6)], name="x", calibration=PROV, use_measured_peaks=True)
    assert res.profile.efficiency.matmul_frac == base.efficiency.matmul_frac
    assert res.profile.efficiency.memory_frac == base.efficiency.memory_frac
    assert any("matmul" in n for n in res.notes) and any("collective" in n for n in res.notes)


def test_binned_curve_takes_medians_per_factor_of_two_bin_and_clips_to_one():
    pts = binned_curve([100, 110, 120, 1000, 1000], [0.2, 0.4, 0.3, 1.5, 1.7])
    assert len(pts) == 2
    assert pts[0][1] == pytest.approx(0.3)
    assert pts[1] == (pytest.approx(1000.0), 1.0)
    Curve(points=pts)  # valid curve


def test_fit_link_recovers_latency_and_bandwidth_and_never_goes_negative():
    x = np.array([1e3, 1e5, 1e7])
    lf = fit_link(list(x), list(5e-6 + x / 1e10))
    assert lf.overhead_s == pytest.approx(5e-6, rel=1e-3)
    assert lf.bandwidth_bytes_per_s == pytest.approx(1e10, rel=1e-3)
    pure = fit_link([1e6, 2e6], [1e-3 * 0.9, 2e-3 * 1.1])  # would fit a negative intercept
    assert pure.overhead_s >= 0 and pure.bandwidth_bytes_per_s > 0
    assert fit_link([1e6], [1e-3]) is None


def test_predict_points_reproduces_a_measurement_made_by_the_same_profile():
    truth = _truth()
    b = MatmulBench(dtype="fp32", m=128, k=512, n=512)
    t = time_op(truth, bench_op(b), "fp32").time_s
    (pt,) = predict_points(truth, [_m(b, t)])
    assert pt.family == "matmul" and pt.rel_error == pytest.approx(0.0, abs=1e-12)


def _grouped_tables(fracs_by_groups: dict[float, list[list[float]]]) -> HardwareProfile:
    raw = load_hardware("local-cpu").model_dump()
    raw["efficiency"]["gemm_tables"] = [
        {"kind": "grouped_matmul", "dtype": "fp32", "rows": [16, 256], "inner": [128, 2048], "frac": f, "groups": g}
        for g, f in fracs_by_groups.items()]
    return HardwareProfile.model_validate(raw)


def test_grouped_tables_are_read_at_the_calls_group_count_linear_in_log_groups_and_held_outside():
    prof = _grouped_tables({32.0: [[0.4, 0.6], [0.8, 0.9]], 4.0: [[0.2, 0.4], [0.6, 0.9]]})
    eff = prof.efficiency
    assert [t.groups for t in eff.gemm_table("grouped_matmul", "fp32")] == [4.0, 32.0]  # sorted
    frac = lambda g: eff.gemm_frac("grouped_matmul", "fp32", 16, 128, g)  # noqa: E731
    assert frac(4) == pytest.approx(0.2) and frac(32) == pytest.approx(0.4)
    assert frac(8) == pytest.approx(0.2 + (np.log(2) / np.log(8)) * 0.2)  # a third of the way in log groups
    assert frac(1) == pytest.approx(0.2) and frac(128) == pytest.approx(0.4)  # held at the measured counts
    # arrays of groups (a search's candidates) and of rows give the scalar values element by element
    gs = np.array([2.0, 8.0, 64.0])
    assert np.allclose(eff.gemm_frac("grouped_matmul", "fp32", 16, 128, gs), [frac(2), frac(8), frac(64)])
    ms = np.array([16.0, 64.0, 256.0])
    got = eff.gemm_frac("grouped_matmul", "fp32", ms, 2048, gs)
    want = [eff.gemm_frac("grouped_matmul", "fp32", float(m), 2048, float(g)) for m, g in zip(ms, gs)]
    assert np.allclose(got, want)
    # batched falls back to the grouped tables; a plain GEMM kind with no table has none
    assert eff.gemm_frac("batched_matmul", "fp32", 16, 128, 32) == pytest.approx(0.4)
    assert eff.gemm_frac("grouped_matmul", "bf16", 16, 128, 32) is None


def test_an_expert_gemm_is_timed_at_the_group_count_of_its_call():
    from moesim.layer import RowsPerExpert, ffn_gemm_ops

    prof = _grouped_tables({4.0: [[0.2, 0.2], [0.2, 0.2]], 32.0: [[0.8, 0.8], [0.8, 0.8]]})
    rows = RowsPerExpert.exact([16] * 30 + [17] * 2)  # 32 experts in two row classes
    ops = ffn_gemm_ops(OpKind.EXPERTS, "experts", rows, 512, 256, 3, plan="fused", act_bytes=4,
                       weight_bytes_per_element=4, grouped=True)
    gemms = [op for op in ops if op.gemm is not None]
    assert {op.gemm.call_groups for op in gemms} == {32}  # the call's groups, not the row class's
    for op in gemms:
        assert time_op(prof, op, "fp32").compute_s == pytest.approx(op.flops / (prof.accelerator.peak_flops_per_s["fp32"] * 0.8))
    loop = ffn_gemm_ops(OpKind.EXPERTS, "experts", rows, 512, 256, 3, plan="eager", act_bytes=4,
                        weight_bytes_per_element=4, grouped=False)
    assert {op.gemm.call_groups for op in loop if op.gemm is not None} == {1.0}


def test_tables_of_one_kind_need_distinct_group_counts():
    t = {"kind": "grouped_matmul", "dtype": "fp32", "rows": [16], "inner": [128], "frac": [[0.5]]}
    for tables in ([t | {"groups": 4.0}, t | {"groups": 4.0}], [t, t | {"groups": 4.0}]):
        raw = load_hardware("local-cpu").model_dump()
        raw["efficiency"]["gemm_tables"] = tables
        with pytest.raises(ValueError, match="distinct group counts"):
            HardwareProfile.model_validate(raw)
    raw = load_hardware("local-cpu").model_dump()
    raw["efficiency"]["gemm_tables"] = [t]  # one table without a count holds for every count
    assert HardwareProfile.model_validate(raw).efficiency.gemm_frac("grouped_matmul", "fp32", 16, 128, 64) == 0.5


def test_the_fit_keeps_group_counts_apart_and_fills_a_missing_cell_from_the_nearest_count():
    truth = _grouped_tables({4.0: [[0.2, 0.4], [0.6, 0.9]], 32.0: [[0.4, 0.6], [0.8, 0.95]]})
    ms = []
    for g in (4, 32):
        for m in (16, 256):
            for k in (128, 2048):
                if g == 32 and m == 256 and k == 2048:
                    continue  # not measured: the grid's row cap
                b = GroupedMatmulBench(dtype="fp32", op="grouped_mm", num_groups=g, m_per_group=m, k=k, n=512)
                ms.append(_m(b, time_op(truth, bench_op(b), "fp32").time_s))
    ms.append(_m(MatmulBench(dtype="fp32", m=4096, k=2048, n=2048), 2 * 4096 * 2048 * 2048 / truth.accelerator.peak_flops_per_s["fp32"]))
    res = fit_profile(load_hardware("local-cpu"), ms, name="fitted", calibration=PROV, use_measured_peaks=False)
    eff = res.profile.efficiency
    t4, t32 = eff.gemm_table("grouped_matmul", "fp32")
    assert (t4.groups, t32.groups) == (4.0, 32.0)
    assert t4.rows == t32.rows == [16.0, 256.0] and t4.inner == t32.inner == [128.0, 2048.0]
    assert t4.frac[0][0] == pytest.approx(0.2, rel=1e-6) and t32.frac[0][0] == pytest.approx(0.4, rel=1e-6)
    assert t32.frac[1][1] == pytest.approx(t4.frac[1][1]) == pytest.approx(0.9, rel=1e-6)  # filled from 4 groups
