"""Single-layer operations, their time on a profile, and peak memory: hand calculations and invariants."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.calib.layer_model import (
    collective_time_s,
    layer_ops,
    layer_peak_memory,
    predict_layer,
    rank_loads,
    scaled_profile,
)
from moesim.layer import SILU_FLOPS_PER_ELEMENT
from moesim.calib.layer_spec import MoELayerSpec
from moesim.hardware import HardwareProfile, load_hardware
from moesim.ops import OpKind

T, D, F, E, K = 512, 256, 384, 8, 2


def _spec(**kw) -> MoELayerSpec:
    return MoELayerSpec(**({"num_tokens": T, "d_model": D, "d_expert_ffn": F, "num_experts": E, "top_k": K} | kw))


def _flops(ops, kind: OpKind) -> float:
    """GEMM FLOPs of a stage (the SiLU's FLOP-equivalents are not matrix work)."""
    return sum(o.flops for o in ops if o.kind == kind and o.compute_kind != "elementwise")


def _cpu_with_link(bw: float = 2e9) -> HardwareProfile:
    raw = load_hardware("local-cpu").model_dump()
    raw["node"]["scale_up_bandwidth_per_accelerator_bytes_per_s"] = bw
    raw["efficiency"]["collective_overhead_s"] = 50e-6
    return HardwareProfile.model_validate(raw)


UNIFORM = [T * K // E] * E


@pytest.mark.parametrize("impl", ["loop", "grouped"])
def test_dropless_expert_flops_are_three_gemms_over_all_assignments(impl):
    ops = layer_ops(_spec(implementation=impl), UNIFORM)
    assert _flops(ops, OpKind.EXPERTS) == pytest.approx(3 * 2 * T * K * D * F)
    assert _flops(ops, OpKind.ROUTER) == pytest.approx(2 * T * D * E)


def test_padded_experts_compute_capacity_rows_whatever_the_load():
    spec = _spec(implementation="padded", capacity_factor=1.5)
    C = spec.capacity
    assert C == int(np.ceil(1.5 * T * K / E))
    skewed = [T * K] + [0] * (E - 1)
    for load in (UNIFORM, skewed):
        assert _flops(layer_ops(spec, load), OpKind.EXPERTS) == pytest.approx(3 * 2 * E * C * D * F)


def test_grouped_gemms_carry_their_own_shape_and_equal_loads_share_an_op():
    ops = [o for o in layer_ops(_spec(), UNIFORM) if o.kind == OpKind.EXPERTS and o.compute_kind != "elementwise"]
    assert [o.name for o in ops] == ["experts_up", "experts_down"]
    assert all(o.compute_kind == "grouped_matmul" for o in ops)
    up, down = ops
    n = T * K // E
    assert (up.gemm.m, up.gemm.k, up.gemm.n, up.gemm.groups) == (n, D, F, 2 * E)  # w1 and w3: two calls
    assert (down.gemm.m, down.gemm.k, down.gemm.n, down.gemm.groups) == (n, F, D, E)
    assert up.weight_bytes == 2 * E * D * F * 4 and down.weight_bytes == E * F * D * 4
    skew = [400, 200, 100, 100, 100, 50, 50, 24]
    ops = [o for o in layer_ops(_spec(), skew) if o.kind == OpKind.EXPERTS and o.name == "experts_down"]
    assert sorted(o.gemm.m for o in ops) == sorted(set(skew))
    assert sum(o.gemm.groups for o in ops) == E


def test_backward_scaling_keeps_the_gemm_shape():
    (up,) = [o for o in layer_ops(_spec(), UNIFORM) if o.name == "experts_up"]
    bwd = up.scaled(2.0)
    assert bwd.flops == 2 * up.flops and bwd.gemm == up.gemm


def test_loop_kernel_count_grows_with_experts_and_grouped_does_not():
    def kernels(impl: str, e: int) -> int:
        spec = _spec(implementation=impl, num_experts=e)
        return sum(o.num_kernels for o in layer_ops(spec, [T * K // e] * e))

    assert kernels("loop", 64) > 6 * kernels("loop", 8) / 2
    assert kernels("grouped", 64) == kernels("grouped", 8)


def test_load_concentrated_on_one_ep_rank_makes_the_layer_slower():
    spec = _spec(ep_size=2)
    even = np.full((2, E), T * K // E)
    hot = np.zeros((2, E), dtype=int)
    hot[:, :4] = T * K // 4  # every token goes to rank 0's experts
    prof = _cpu_with_link()
    assert predict_layer(prof, spec, hot).time_s > 1.5 * predict_layer(prof, spec, even).time_s


def test_one_expert_top1_costs_what_a_dense_ffn_costs():
    moe = layer_ops(_spec(num_experts=1, top_k=1), [T])
    dense = layer_ops(_spec(num_experts=1, top_k=1, num_shared_experts=1), [T])
    assert _flops(moe, OpKind.EXPERTS) == pytest.approx(_flops(dense, OpKind.SHARED_EXPERTS))


def test_swiglu_activation_is_timed_at_the_fp32_rate_with_five_element_moves():
    (act,) = [o for o in layer_ops(_spec(dtype="bf16"), UNIFORM) if o.name == "experts_act"]
    assert act.compute_kind == "elementwise" and act.dtype == "fp32"
    assert act.bytes_moved == 5 * T * K * F * 2
    assert act.flops == pytest.approx(SILU_FLOPS_PER_ELEMENT * T * K * F)


def test_no_all_to_all_without_expert_parallelism():
    for impl in ("loop", "padded", "grouped"):
        ops = layer_ops(_spec(implementation=impl), UNIFORM)
        assert all(o.num_collectives == 0 and o.comm_bytes == 0 for o in ops)


def test_rank_loads_conserve_rows_and_count_remote_traffic():
    spec = _spec(ep_size=2)
    counts = np.array([[10, 20, 30, 40, 1, 2, 3, 4], [5, 5, 5, 5, 6, 6, 6, 6]])
    r0, r1 = rank_loads(spec, counts)
    assert r0.local_counts == (15, 25, 35, 45) and r1.local_counts == (7, 8, 9, 10)
    assert r0.sent_remote_rows == 10 and r1.sent_remote_rows == 20
    assert r0.received_remote_rows == r1.sent_remote_rows and r1.received_remote_rows == r0.sent_remote_rows
    assert sum(r0.local_counts) + sum(r1.local_counts) == counts.sum()


def test_doubling_link_bandwidth_halves_the_bandwidth_term():
    slow, fast = _cpu_with_link(1e9), _cpu_with_link(2e9)
    x = 8e6
    t_slow = collective_time_s(slow, x) - slow.efficiency.collective_overhead_s
    t_fast = collective_time_s(fast, x) - fast.efficiency.collective_overhead_s
    assert t_slow == pytest.approx(2 * t_fast)


def test_expert_parallel_layer_is_set_by_its_slowest_rank():
    spec = _spec(ep_size=2)
    counts = np.array([[100, 100, 100, 100, 10, 10, 10, 10], [100, 100, 100, 100, 10, 10, 10, 10]])
    pred = predict_layer(_cpu_with_link(), spec, counts)
    assert pred.slowest_rank == 0
    assert pred.time_s == pytest.approx(max(r.time_s for r in pred.ranks))
    assert pred.by_stage_s[OpKind.DISPATCH] > 0 and pred.by_stage_s[OpKind.COMBINE] > 0


def test_ranks_sharing_a_cpu_get_a_share_of_its_peaks():
    prof = load_hardware("local-cpu")
    half = scaled_profile(prof, 0.5)
    assert half.accelerator.peak_flops_per_s["fp32"] == pytest.approx(prof.accelerator.peak_flops_per_s["fp32"] / 2)
    assert scaled_profile(prof, 1.0) is prof


def test_stage_times_add_up_to_the_layer_time():
    pred = predict_layer(load_hardware("local-cpu"), _spec(num_shared_experts=1), UNIFORM)
    assert set(pred.by_stage_s) == {OpKind.ROUTER, OpKind.DISPATCH, OpKind.EXPERTS, OpKind.COMBINE,
                                    OpKind.SHARED_EXPERTS}
    assert sum(pred.by_stage_s.values()) == pytest.approx(pred.time_s)


def test_peak_memory_by_hand_for_the_grouped_layer():
    spec = _spec(dtype="bf16")
    mem = layer_peak_memory(spec, UNIFORM)
    b = 2
    A = T * K
    assert mem.weight_bytes == (D * E + 3 * E * D * F) * b
    expected_act = T * D * b + (T * E * 4 * 2 + A * (3 * 8 + b)) + A * D * b + 4 * A * F * b + T * D * b
    assert mem.activation_peak_bytes == expected_act
    assert mem.peak_bytes == mem.weight_bytes + expected_act


def test_loop_peak_memory_holds_one_experts_temporaries():
    skew = [600, 200, 100, 50, 30, 20, 16, 8]
    loop = layer_peak_memory(_spec(implementation="loop"), skew)
    grouped = layer_peak_memory(_spec(), skew)
    A = T * K
    assert grouped.activation_peak_bytes - loop.activation_peak_bytes == pytest.approx(4 * (A - 600) * F * 4 - A * D * 4)


def test_padded_peak_memory_counts_the_capacity_buffer():
    spec = _spec(implementation="padded", capacity_factor=2.0)
    grouped = layer_peak_memory(_spec(), UNIFORM)
    padded = layer_peak_memory(spec, UNIFORM)
    assert padded.activation_peak_bytes - grouped.activation_peak_bytes == pytest.approx(
        (spec.num_experts * spec.capacity - T * K) * (D + 4 * F) * 4)
