"""The one operation builder: the step model and the runner's layer build the same operations."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.calib.layer_model import layer_ops, predict_layer
from moesim.calib.layer_spec import MoELayerSpec
from moesim.catalog import load_model
from moesim.hardware import load_hardware
from moesim.layer import GemmShape, MoEShape, Op, RowsPerExpert, backward_ops, moe_ffn_ops
from moesim.ops import OpKind
from moesim.step.ops import ExpertRankLoad, moe_ops
from moesim.step.parallel import Parallel
from moesim.timing import op_time_s, time_op

T = 512


def _single_gpu() -> Parallel:
    return Parallel(num_gpus=1, tp=1, pp=1, dp=1, ep=1, etp=1, edp=1, zero_stage=0, sequence_parallel=False,
                    gpus_per_node=8)


@pytest.mark.parametrize("plan", ["grouped", "fused"])
def test_a_layer_built_through_the_step_path_and_the_calibration_path_has_the_same_ops(plan):
    model = load_model("mixtral-8x7b")
    moe = model.moe
    E, K, D, F = moe.num_experts, moe.top_k, model.hidden_size, moe.expert_ffn_dim
    rows = T * K // E
    step = moe_ops(model, _single_gpu(), T, ExpertRankLoad(copies=T * K, experts_touched=E, local_experts=E),
                   bytes_per_copy=2.0 * D, weight_bytes=2.0, plan=plan)
    spec = MoELayerSpec(num_tokens=T, d_model=D, d_expert_ffn=F, num_experts=E, top_k=K, implementation="grouped",
                        dtype="bf16")
    if plan == "grouped":
        calib = layer_ops(spec, [rows] * E)
    else:  # the runner's spec with the engines' kernel plan
        calib = moe_ffn_ops(MoEShape(d_model=D, expert_ffn=F, num_experts=E, top_k=K, num_local_experts=E),
                            tokens=T, rows=RowsPerExpert.exact([rows] * E), plan="fused", act_bytes=2.0,
                            weight_bytes_per_element=2.0)
    assert step == calib
    h100 = load_hardware("h100-sxm")
    assert sum(time_op(h100, o, "bf16").time_s for o in step) == pytest.approx(
        predict_layer(h100, spec, [rows] * E).time_s if plan == "grouped" else
        sum(time_op(h100, o, "bf16").time_s for o in calib))


def test_scalar_and_vector_times_come_from_one_roofline():
    model = load_model("deepseek-v3")
    par = _single_gpu()
    h200 = load_hardware("h200")
    ns = np.array([1.0, 64.0, 4096.0])
    loads = ExpertRankLoad(copies=ns * 8, experts_touched=np.minimum(ns * 8, 256.0), local_experts=256.0)
    vec = moe_ops(model, par, ns, loads, bytes_per_copy=7168.0)
    for i, n in enumerate(ns):
        one = moe_ops(model, par, float(n), ExpertRankLoad(copies=float(n) * 8, experts_touched=min(n * 8, 256.0),
                                                            local_experts=256.0), bytes_per_copy=7168.0)
        for v, s in zip(vec, one):
            assert float(np.asarray(op_time_s(h200, v, "bf16"))[i]) == pytest.approx(op_time_s(h200, s, "bf16"),
                                                                                       rel=1e-12)


def _expert_up(rows_per_expert: float):
    model = load_model("mixtral-8x7b")
    ops = moe_ops(model, _single_gpu(), rows_per_expert, ExpertRankLoad(copies=8.0 * rows_per_expert,
                                                                        experts_touched=8.0, local_experts=8.0),
                  bytes_per_copy=8192.0)
    return next(o for o in ops if o.name == "experts_up")


def test_a_gemm_backward_is_a_dgrad_and_a_wgrad_at_their_own_shapes():
    up = _expert_up(512.0)
    g = up.gemm
    dgrad, wgrad = backward_ops(up, grad_bytes=4.0)
    assert (dgrad.gemm.m, dgrad.gemm.n, dgrad.gemm.k) == (g.m, g.k, g.n)  # dX = dY W^T: inner N
    assert (wgrad.gemm.m, wgrad.gemm.n, wgrad.gemm.k) == (g.k, g.n, g.m)  # dW = X^T dY: inner M
    assert dgrad.gemm.groups == wgrad.gemm.groups == g.groups
    assert dgrad.flops == wgrad.flops == up.flops
    assert dgrad.bytes_moved == wgrad.bytes_moved == up.bytes_moved
    assert dgrad.weight_bytes == up.weight_bytes  # reads W
    # accumulates into the fp32 main gradient: read and write 4 bytes per weight element
    assert wgrad.weight_bytes == 2.0 * 4.0 * g.k * g.n * g.groups
    assert backward_ops(up, grad_bytes=2.0)[1].weight_bytes == 2.0 * 2.0 * g.k * g.n * g.groups
    assert dgrad.is_backward and wgrad.is_backward and not up.is_backward


def test_a_wgrad_of_few_rows_is_bound_by_the_gradient_buffer_while_its_dgrad_computes():
    h100 = load_hardware("h100-sxm")
    up = _expert_up(512.0)  # about 512 FLOP per weight byte forward, 128 per gradient-buffer byte in the wgrad
    fwd = time_op(h100, up, "bf16")
    dgrad, wgrad = (time_op(h100, x, "bf16") for x in backward_ops(up, grad_bytes=4.0))
    assert fwd.bound == dgrad.bound == "compute"
    assert wgrad.bound == "memory"
    # the curve profile reads the efficiency at the FLOPs per GEMM, the same for all three
    assert dgrad.compute_s == pytest.approx(fwd.compute_s, rel=1e-12)
    assert wgrad.compute_s == pytest.approx(fwd.compute_s, rel=1e-12)
    assert wgrad.time_s > dgrad.time_s


def test_operations_other_than_weight_gemms_keep_their_own_backward():
    norm = Op(OpKind.ATTENTION, "norm", bytes_moved=1e6, compute_kind="elementwise", num_kernels=3)
    (b,) = backward_ops(norm, grad_bytes=4.0)
    assert (b.bytes_moved, b.num_kernels, b.is_backward) == (2e6, 3, True)
    # a GEMM of two activations has no weight gradient to accumulate
    act = Op(OpKind.ATTENTION, "scores", flops=1e9, bytes_moved=1e6, gemm=GemmShape(m=64.0, n=128.0, k=64.0))
    assert [x.weight_bytes for x in backward_ops(act, grad_bytes=4.0)] == [0.0, 0.0]


def test_a_decode_sized_layer_streams_its_weights_at_the_dram_end_of_the_memory_curve():
    cpu = load_hardware("local-cpu")
    spec = MoELayerSpec(num_tokens=8, d_model=1024, d_expert_ffn=2816, num_experts=8, top_k=2)
    ops = [o for o in layer_ops(spec, [2] * 8) if o.kind == OpKind.EXPERTS and o.weight_bytes]
    eff = cpu.efficiency
    for o in ops:
        t = time_op(cpu, o, "fp32")
        stream = o.weight_bytes / (cpu.accelerator.memory_bandwidth_bytes_per_s * eff.memory_frac.points[-1][1])
        assert t.memory_s >= stream
