"""FP8 and FP4 GEMMs on the BF16 FLOPs curves: read at ``F * P_bf16 / P_dtype`` (docs/step-model.md section 3,
"FP8 and FP4 on the FLOPs curve"); shape tables and other formats are read as they are."""

from __future__ import annotations

import pytest

from moesim.hardware import load_hardware
from moesim.layer import GemmShape, Op, OpKind
from moesim.timing import curve_size_scale, op_terms


def _gemm(m: float, n: float, k: float, groups: float = 1.0) -> Op:
    kind = "grouped_matmul" if groups > 1 else "matmul"
    return Op(OpKind.EXPERTS, "g", flops=2.0 * m * n * k * groups, bytes_moved=0.0, weight_bytes=0.0,
              compute_kind=kind, gemm=GemmShape(m=m, n=n, k=k, groups=groups, call_groups=groups))


@pytest.mark.parametrize("name, dtype, expected", [
    ("h100-sxm", "fp8", 0.5), ("b200", "fp8", 0.5), ("b200", "fp4", 0.25), ("h100-sxm", "fp4", 0.5),
    ("h100-sxm", "bf16", 1.0), ("h100-sxm", "fp16", 1.0), ("a100-sxm-80gb", "fp8", 1.0), ("local-cpu", "fp8", 1.0),
])
def test_the_scale_is_the_bf16_peak_over_the_formats_peak(name, dtype, expected):
    hw = load_hardware(name)
    acc = hw.accelerator
    assert curve_size_scale(hw, dtype) == pytest.approx(acc.peak_for("bf16") / acc.peak_for(dtype))
    assert curve_size_scale(hw, dtype) == pytest.approx(expected, rel=1e-3)  # datasheet peaks, rounded


@pytest.mark.parametrize("groups", [1.0, 8.0])
def test_an_fp8_gemm_is_read_on_the_curve_at_its_bf16_equivalent_flops(groups):
    hw = load_hardware("h100-sxm")
    eff, acc = hw.efficiency, hw.accelerator
    curve = eff.matmul_frac if groups == 1 else eff.grouped
    op = _gemm(256.0, 2048.0, 1024.0, groups)
    f = op.gemm.flops_per_gemm
    compute_fp8 = op_terms(hw, op, "fp8")[0]
    compute_bf16 = op_terms(hw, op, "bf16")[0]
    assert compute_fp8 == pytest.approx(op.flops / (acc.peak_for("fp8") * curve(f * acc.peak_for("bf16") / acc.peak_for("fp8"))))
    assert compute_bf16 == pytest.approx(op.flops / (acc.peak_for("bf16") * curve(f)))


def test_a_small_fp8_gemm_gains_less_than_the_peak_ratio_and_a_large_one_the_whole_ratio():
    hw = load_hardware("h100-sxm")
    small, large = _gemm(64.0, 1024.0, 1024.0), _gemm(16384.0, 16384.0, 16384.0)
    ratio = lambda op: op_terms(hw, op, "bf16")[0] / op_terms(hw, op, "fp8")[0]  # noqa: E731
    assert 1.0 < ratio(small) < 1.9  # below the plateau: fixed costs are the same in both formats
    peaks = hw.accelerator.peak_for("fp8") / hw.accelerator.peak_for("bf16")
    assert ratio(large) == pytest.approx(peaks, rel=1e-9)  # on the plateau: the peak ratio


def test_arrays_of_rows_are_scaled_like_scalars():
    import numpy as np

    hw = load_hardware("b200")
    rows = np.array([32.0, 512.0, 8192.0])
    arr = op_terms(hw, _gemm(rows, 4096.0, 2048.0, 16.0), "fp4")[0]
    one = [op_terms(hw, _gemm(float(r), 4096.0, 2048.0, 16.0), "fp4")[0] for r in rows]
    assert np.allclose(arr, one)
