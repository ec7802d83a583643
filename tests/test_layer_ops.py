"""The one operation builder: the step model and the runner's layer build the same operations."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.calib.layer_model import layer_ops, predict_layer
from moesim.calib.layer_spec import MoELayerSpec
from moesim.catalog import load_model
from moesim.hardware import load_hardware
from moesim.layer import MoEShape, RowsPerExpert, moe_ffn_ops
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


def test_backward_gemms_read_the_efficiency_of_their_forward_shape():
    h100 = load_hardware("h100-sxm")
    model = load_model("mixtral-8x7b")
    ops = moe_ops(model, _single_gpu(), 64.0, ExpertRankLoad(copies=128.0, experts_touched=8.0, local_experts=8.0),
                  bytes_per_copy=8192.0)
    up = next(o for o in ops if o.name == "experts_up")
    fwd, bwd = time_op(h100, up, "bf16"), time_op(h100, up.scaled(2.0), "bf16")
    # twice the work at the same efficiency: exactly twice the compute term
    assert bwd.compute_s == pytest.approx(2.0 * fwd.compute_s)


def test_a_decode_sized_layer_streams_its_weights_at_the_dram_end_of_the_memory_curve():
    cpu = load_hardware("local-cpu")
    spec = MoELayerSpec(num_tokens=8, d_model=1024, d_expert_ffn=2816, num_experts=8, top_k=2)
    ops = [o for o in layer_ops(spec, [2] * 8) if o.kind == OpKind.EXPERTS and o.weight_bytes]
    eff = cpu.efficiency
    for o in ops:
        t = time_op(cpu, o, "fp32")
        stream = o.weight_bytes / (cpu.accelerator.memory_bandwidth_bytes_per_s * eff.memory_frac.points[-1][1])
        assert t.memory_s >= stream
