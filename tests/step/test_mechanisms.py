"""Mechanisms of real training and serving runs (docs/step-model.md): pipeline schedules, low-precision
quantisation passes, serving iterations with arriving prompts and MTP drafts, and the defaults that match
the frameworks (experts sharded over TP, the engine's memory share)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from moesim.layer import SCALE_BYTES_PER_ELEMENT, GemmShape, Op, low_precision_ops
from moesim.ops import OpKind
from moesim.scenario import Layout, load_scenario, scenario_from_dict
from moesim.step.estimate import _in_flight_microbatches, _train_passes, estimate, estimate_resolved
from moesim.step.memory import layer_activation_bytes
from moesim.step.ops import recompute_units, recomputed_ops
from moesim.step.parallel import Parallel

DSV3_TRAIN = "deepseek-v3-train-h800"
MIXTRAL_SERVE = "mixtral-8x7b-serve-h100"
DSV3_DECODE = "deepseek-v3-decode-h800"


def _train(**layout):
    raw = {"name": "t", "model": "mixtral-8x7b", "hardware": "h100-sxm", "num_gpus": 64,
           "layout": {"tp": 2, "pp": 4, "ep": 8, **layout},
           "workload": {"kind": "train", "seq_len": 4096, "global_batch_size": 256, "compute_dtype": "bf16"}}
    return raw


def _est(raw, **schedule):
    if schedule:
        raw = {**raw, "schedule": schedule}
    return estimate(scenario_from_dict(raw, "test"))


# ----------------------------------------------------------------------------- pipeline schedules


def test_virtual_stages_shrink_the_bubble_by_their_number():
    """32 layers over 4 stages: with v virtual stages the fill and drain carry chunks of 8 / v layers, so the
    bubble term (sum of the other stages) shrinks by v while the steady state (m x slowest stage) stays."""
    base = _est(_train())
    steps = {v: _est(_train(virtual_stages=v)).step_s for v in (1, 2, 4, 8)}
    assert steps[1] == pytest.approx(base.step_s, rel=1e-12)
    b = {v: steps[v] - steps[8] for v in (1, 2, 4)}
    # (sum - max)(1 - 1/8) : (sum - max)(1/2 - 1/8) : (sum - max)(1/4 - 1/8) = 7 : 3 : 1
    assert b[1] / b[4] == pytest.approx(7.0, rel=1e-6)
    assert b[2] / b[4] == pytest.approx(3.0, rel=1e-6)


def test_interleaving_holds_more_activations_on_the_first_stage():
    # Megatron's warm-up: 2 (pp - s - 1) + (v - 1) pp + 1 chunks of 1 / v of the stage
    assert float(_in_flight_microbatches(_sc(pp=4, v=2), 4, 0, 64)) == pytest.approx((6 + 4 + 1) / 2)
    assert float(_in_flight_microbatches(_sc(pp=4, v=1), 4, 0, 64)) == 4
    assert float(_in_flight_microbatches(_sc(pp=4, v=1), 4, 3, 64)) == 1
    assert float(_in_flight_microbatches(_sc(pp=4, v=1, pipeline="dualpipe"), 4, 2, 64)) == 5  # PP + 1
    one = _est(_train())
    four = _est(_train(virtual_stages=4))
    assert four.memory.by_category_bytes["activations"] > one.memory.by_category_bytes["activations"]


def _sc(pp: int, v: int, pipeline: str = "1f1b"):
    raw = _train(pp=pp, virtual_stages=v)
    raw["schedule"] = {"pipeline": pipeline}
    return scenario_from_dict(raw, "test")


def test_dualpipe_has_a_smaller_bubble_and_two_copies_of_the_parameters():
    f1b = _est(_train())
    dual = _est(_train(), pipeline="dualpipe")
    assert dual.step_s < f1b.step_s
    assert dual.time_by_stage_s["pipeline_bubble"] < f1b.time_by_stage_s["pipeline_bubble"]
    # each GPU holds stages j and pp-1-j: the weights of two stages, the optimizer states of one
    w1, w2 = f1b.memory.by_category_bytes, dual.memory.by_category_bytes
    assert w2["weights"] > 1.7 * w1["weights"]
    assert w2["gradients"] > 1.7 * w1["gradients"]
    assert any("DualPipe" in n for n in dual.notes)


@pytest.mark.parametrize("layout,schedule,needle", [
    ({"virtual_stages": 2, "pp": 1}, {}, "layout.pp > 1"),
    ({"virtual_stages": 9}, {}, "virtual_stages <= 8"),
    ({"virtual_stages": 2}, {"pipeline": "dualpipe"}, "virtual_stages = 1"),
    ({"pp": 1}, {"pipeline": "dualpipe"}, "must be even"),
])
def test_impossible_pipeline_schedules_are_refused(layout, schedule, needle):
    raw = _train(**layout)
    if layout.get("pp") == 1:
        raw["num_gpus"] = 16
    with pytest.raises(Exception, match=needle):
        _est(raw, **schedule)


def test_pipeline_schedules_are_training_only():
    with pytest.raises(Exception, match="training pipeline schedule"):
        estimate(load_scenario(MIXTRAL_SERVE, ["layout.virtual_stages=2"]))


# ----------------------------------------------------------------------------- low precision


def _gemm(name: str, m: float, n: float, k: float, groups: float = 1.0, kind=OpKind.EXPERTS) -> Op:
    return Op(kind, name, flops=2 * m * n * k * groups, gemm=GemmShape(m=m, n=n, k=k, groups=groups),
              compute_kind="grouped_matmul" if groups > 1 else "matmul")


def test_fp8_adds_one_quantisation_pass_per_gemm_input_with_its_own_backward():
    ops = [_gemm("router_logits", 4096, 64, 2048, kind=OpKind.ROUTER),
           _gemm("experts_up", 512, 1536, 2048, groups=16), _gemm("experts_down", 512, 2048, 768, groups=16),
           Op(OpKind.LM_HEAD, "lm_head", flops=1.0, gemm=GemmShape(m=4096, n=1000, k=2048))]
    out = low_precision_ops(ops, "fp8", training=True, element_bytes=1.0)
    by = {o.name: o for o in out}
    q = 1.0 + SCALE_BYTES_PER_ELEMENT
    up = by["experts_up_quantize"]
    assert up.bytes_moved == pytest.approx(512 * 16 * 2048 * (2 + 2 * q))  # row- and column-wise copies
    # its backward quantises the output gradient [rows, N] both ways
    assert up.backward(2.0).bytes_moved == pytest.approx(512 * 16 * 1536 * (2 + 2 * q))
    assert up.backward(2.0).flops == 0
    assert by["experts_down_quantize"].bytes_moved == pytest.approx(512 * 16 * 768 * (2 + 2 * q))
    # router and LM head stay in BF16, with no quantisation pass
    assert by["router_logits"].dtype == "bf16" and by["lm_head"].dtype == "bf16"
    assert "router_logits_quantize" not in by and "lm_head_quantize" not in by
    # inference writes one copy; tokens dispatched in FP8 were quantised once before the dispatch (4096 tokens)
    inf = {o.name: o for o in low_precision_ops(ops, "fp8", training=False, element_bytes=1.0,
                                                 dispatched_quantised=True)}
    assert inf["experts_up_quantize"].bytes_moved == pytest.approx(4096 * 2048 * (2 + q))
    assert inf["experts_down_quantize"].bytes_moved == pytest.approx(512 * 16 * 768 * (2 + q))
    # BF16 is untouched
    assert low_precision_ops(ops, "bf16", training=True, element_bytes=2.0) == ops


def test_per_tensor_fp8_scaling_drops_the_block_scales_and_current_scaling_reads_every_input_again():
    ops = [_gemm("experts_up", 512, 1536, 2048, groups=16), _gemm("shared_up", 4096, 1536, 2048)]
    by = {s: {o.name: o for o in low_precision_ops(ops, "fp8", training=True, element_bytes=1.0, fp8_scaling=s)}
          for s in ("block", "delayed", "current")}
    rk, rn = 512 * 16 * 2048, 512 * 16 * 1536
    q = 1.0 + SCALE_BYTES_PER_ELEMENT
    assert by["block"]["experts_up_quantize"].bytes_moved == pytest.approx(rk * (2 + 2 * q))
    # one scale per tensor: the element's byte alone; delayed scaling casts in one kernel as block scaling does
    delayed = by["delayed"]["experts_up_quantize"]
    assert delayed.bytes_moved == pytest.approx(rk * (2 + 2 * 1.0)) and delayed.num_kernels == 1
    assert delayed.backward(2.0).bytes_moved == pytest.approx(rn * (2 + 2 * 1.0))
    # current scaling: an amax kernel reads the input, a scale kernel, then the cast reads it again
    cur = by["current"]["experts_up_quantize"]
    assert cur.bytes_moved == pytest.approx(rk * (2 + 2 + 2 * 1.0)) and cur.num_kernels == 3
    assert cur.backward(2.0).bytes_moved == pytest.approx(rn * (2 + 2 + 2 * 1.0))
    assert cur.backward(2.0).num_kernels == 3
    # a norm-fed input: nothing forward unless the norm must write BF16 and a cast follows (current scaling)
    assert by["block"]["shared_up_quantize"].bytes_moved == 0 and by["block"]["shared_up_quantize"].num_kernels == 0
    shared = by["current"]["shared_up_quantize"]
    assert shared.bytes_moved == pytest.approx(4096 * 2048 * (2 + 2 * 1.0)) and shared.num_kernels == 2
    # FP4 keeps its block scales whatever the FP8 scaling
    fp4 = {o.name: o for o in low_precision_ops(ops, "fp4", training=True, element_bytes=0.5, fp8_scaling="current")}
    assert fp4["experts_up_quantize"].bytes_moved == pytest.approx(rk * (2 + 2 * (0.5 + SCALE_BYTES_PER_ELEMENT)))


def test_current_scaling_slows_an_fp8_step_and_is_refused_without_fp8(run_cli):
    raw = _train()
    raw["workload"] = {**raw["workload"], "compute_dtype": "fp8"}
    steps = {}
    for s in ("block", "delayed", "current"):
        raw["workload"]["fp8_scaling"] = s
        steps[s] = estimate(scenario_from_dict(raw, "test")).step_s
    # an extra read of every input; block scales add 1/32 byte per element and, on Hopper, slower GEMMs (the
    # profile's fp8_block_scaled_frac)
    assert steps["current"] > steps["delayed"] and steps["block"] > steps["delayed"]
    r = run_cli("estimate", "mixtral-8x22b-train-h100", "--set", "workload.fp8_scaling=current")
    assert r.exit_code == 2 and "fp8_scaling 'current' applies to compute_dtype 'fp8'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = run_cli("estimate", "mixtral-8x22b-train-h100", "--set", "workload.fp8_scaling=tensor")
    assert r.exit_code == 2 and "'block', 'delayed' or 'current'" in r.stderr


def test_fp8_training_is_slower_than_its_gemms_alone():
    sc = load_scenario(DSV3_TRAIN)
    est = estimate(sc)
    quant = [o for o in est.ops if o.kind in ("experts", "attention", "dense_ffn", "shared_experts")
             and o.bytes_moved > 0 and o.flops == 0]
    assert quant, "FP8 training has quantisation passes"
    assert all(o.bound in ("memory", "latency") for o in quant)


# ----------------------------------------------------------------------------- main gradients


def _grads(**workload):
    raw = _train()
    raw = {**raw, "workload": {**raw["workload"], **workload}, "schedule": {"overlap_grad_reduce": False}}
    return estimate(scenario_from_dict(raw, "test"))


# ----------------------------------------------------------------------------- recomputation


def _recompute_passes(model: str, recompute: str, **layout):
    raw = {"name": "t", "model": model, "hardware": "h800", "num_gpus": 64,
           "layout": {"tp": 1, "pp": 1, "ep": 8, **layout},
           "workload": {"kind": "train", "seq_len": 4096, "global_batch_size": 256, "compute_dtype": "bf16",
                        "recompute": recompute}}
    sc = scenario_from_dict(raw, "test")
    model_, hw = sc.resolve_model(), sc.resolve_hardware()
    par = Parallel.of(sc, hw.node.accelerators_per_node)
    return sc, model_, par, _train_passes(sc, model_, hw, par, True)


def test_mla_up_projections_run_again_at_their_forward_flops():
    sc, model, par, _ = _recompute_passes("deepseek-v3", "selective", tp=2)
    a = model.attention
    ops = {op.name: op for op in recomputed_ops(model, par, 4096.0, frozenset({"mla_up_proj"}))}
    heads = a.num_heads / 2
    assert ops["attention_q_up"].flops == 2 * 4096 * a.q_lora_rank * heads * (a.qk_nope_head_dim + a.qk_rope_head_dim)
    assert ops["attention_kv_up"].flops == 2 * 4096 * a.kv_lora_rank * heads * (a.qk_nope_head_dim + a.v_head_dim)
    assert ops["attention_latent_norm"].flops == 0 and ops["attention_latent_norm"].bytes_moved > 0
    gqa = load_scenario("mixtral-8x22b-train-h100")
    assert recomputed_ops(gqa.resolve_model(), par, 4096.0, frozenset({"mla_up_proj"})) == []  # GQA keeps q, k, v


@pytest.mark.parametrize("model", ["deepseek-v3", "mixtral-8x7b"])
def test_selective_recomputation_adds_part_of_a_forward_to_the_backward_only(model):
    *_, (fwd_s, bwd_s) = _recompute_passes(model, "selective")
    *_, (fwd_n, bwd_n) = _recompute_passes(model, "none")
    assert fwd_s.moe_s == fwd_n.moe_s
    extra = bwd_s.moe_s - bwd_n.moe_s
    assert 0 < extra < 0.25 * fwd_n.moe_s
    # the recomputed operations are timed in the stage they belong to
    assert bwd_s.by_stage_moe_s["experts"] > bwd_n.by_stage_moe_s["experts"]
    if model == "deepseek-v3":
        assert bwd_s.by_stage_moe_s["attention"] > bwd_n.by_stage_moe_s["attention"]
    else:
        assert bwd_s.by_stage_moe_s["attention"] == bwd_n.by_stage_moe_s["attention"]


def test_selective_recomputation_slows_the_step_and_saves_memory():
    def est(recompute: str):
        raw = _train()
        raw = {**raw, "model": "deepseek-v3", "num_gpus": 256, "layout": {"tp": 2, "pp": 8, "ep": 16},
               "workload": {**raw["workload"], "recompute": recompute}}
        return _est(raw)
    none, sel, full = est("none"), est("selective"), est("full")
    assert none.step_s < sel.step_s < full.step_s
    acts = [e.memory.by_category_bytes["activations"] for e in (none, sel, full)]
    assert acts[0] > acts[1] > acts[2]


def _module_passes(modules):
    over = {"recompute_modules": modules} if modules is not None else {}
    raw = {"name": "t", "model": "deepseek-v3", "hardware": "h800", "num_gpus": 64,
           "layout": {"tp": 2, "pp": 1, "ep": 8, "sequence_parallel": True},
           "workload": {"kind": "train", "seq_len": 4096, "global_batch_size": 256, "compute_dtype": "bf16",
                        "recompute": "selective", **over},
           # the shared experts on the critical path (overlapped with the dispatch they may hide under it)
           "schedule": {"overlap_shared_experts": False}}
    sc = scenario_from_dict(raw, "test")
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    par = Parallel.of(sc, hw.node.accelerators_per_node)
    return sc, model, par, _train_passes(sc, model, hw, par, True)


def test_each_recompute_module_runs_its_own_part_of_the_layer_again():
    *_, (fwd0, bwd0) = _module_passes(["moe_act"])
    base = {"moe": bwd0.moe_s, "dense": bwd0.dense_s}
    def extra(modules):
        *_, (fwd, bwd) = _module_passes(["moe_act"] + modules)
        assert fwd.moe_s == fwd0.moe_s and fwd.dense_s == fwd0.dense_s  # the forward is the same
        return bwd.moe_s - base["moe"], bwd.dense_s - base["dense"]
    moe, dense = extra(["mlp"])  # the dense layers' FFN whole: the three dense layers only
    assert moe == 0 and dense > 0
    moe, dense = extra(["shared_experts"])  # the MoE layers' shared experts only
    assert moe > 0 and dense == 0
    for modules in (["core_attn"], ["layernorm"], ["mla_up_proj"]):  # attention parts: every layer
        moe, dense = extra(modules)
        assert moe > 0 and dense > 0, modules
    # the default is DeepSeek-V3's: the up-projections and every FFN's activation, dense and shared included
    *_, (_, default) = _module_passes(None)
    *_, (_, named) = _module_passes(["mla_up_proj", "moe_act"])
    assert default.moe_s > named.moe_s and default.dense_s > named.dense_s


def test_each_recompute_module_drops_what_it_runs_again_from_memory():
    sc, model, par, _ = _module_passes(["moe_act"])
    n, copies, ab = 4096.0, 40000.0, 2.0
    h, a, moe = model.hidden_size, model.attention, model.moe
    sp = par.tp

    def acts(units, is_moe=True):
        return layer_activation_bytes(model, par, n, "selective", copies, is_moe, ab, frozenset(units))
    heads = a.num_heads * (2 * a.qk_head_dim + a.v_head_dim) / par.tp
    assert acts({"mla_up_proj"}) == pytest.approx(acts(set()) - ab * n * heads, rel=1e-12)
    assert acts({"layernorm"}) == pytest.approx(acts(set()) - ab * n * h / sp, rel=1e-12)
    assert acts({"moe_act"}) == pytest.approx(acts(set()) - ab * copies * moe.expert_ffn_dim / par.etp, rel=1e-12)
    shared = ab * n * model.ffn_matrices * moe.num_shared_experts * moe.shared_expert_ffn_dim / par.tp
    assert acts({"shared_experts"}) == pytest.approx(acts(set()) - shared, rel=1e-12)
    dense_ffn = ab * n * model.ffn_matrices * model.dense_ffn_dim / par.tp
    assert acts({"mlp"}, False) == pytest.approx(acts(set(), False) - dense_ffn, rel=1e-12)
    assert acts({"mlp"}) == acts(set())  # MoE layers have no dense FFN
    assert acts(set()) == layer_activation_bytes(model, par, n, "none", copies, True, ab)


def test_recompute_modules_choose_what_the_step_runs_again_and_keeps():
    def est(**workload):
        raw = _train()
        raw = {**raw, "model": "deepseek-v3", "num_gpus": 256, "layout": {"tp": 2, "pp": 8, "ep": 16},
               "workload": {**raw["workload"], **workload}}
        return _est(raw)
    none = est(recompute="none")
    moe_act = est(recompute="selective", recompute_modules=["moe_act"])
    more = est(recompute="selective", recompute_modules=["moe_act", "mla_up_proj", "core_attn"])
    assert none.step_s < moe_act.step_s < more.step_s
    acts = [e.memory.by_category_bytes["activations"] for e in (none, moe_act, more)]
    assert acts[0] > acts[1] > acts[2]


def test_the_estimate_notes_what_selective_recomputation_runs_again_and_its_time():
    """With nothing overlapped, a one-stage step grows by exactly the recomputed operations' device time."""
    def est(recompute: str, **workload):
        raw = {"name": "t", "model": "mixtral-8x7b", "hardware": "h100-sxm", "num_gpus": 16,
               "layout": {"tp": 1, "pp": 1, "ep": 8},
               "workload": {"kind": "train", "seq_len": 4096, "global_batch_size": 64, "compute_dtype": "bf16",
                            "recompute": recompute, **workload},
               "schedule": {"overlap_shared_experts": False, "overlap_comm_with_compute": False,
                            "overlap_grad_reduce": False, "overlap_param_gather": False}}
        return estimate(scenario_from_dict(raw, "t"))
    none, sel = est("none"), est("selective")
    assert not [x for x in none.notes if "recomputation" in x]
    note = next(x for x in sel.notes if "selective recomputation" in x)
    assert "every FFN activation (the default" in note
    seconds = float(re.search(r"([0-9.e+-]+) s of device time per step per GPU", note).group(1))
    assert seconds == pytest.approx(sel.step_s - none.step_s, rel=2e-3)  # the note prints 3 digits
    named = est("selective", recompute_modules=["moe_act", "core_attn"])
    assert "moe_act, core_attn (workload.recompute_modules)" in next(x for x in named.notes if "recomputation" in x)


def test_without_recomputation_activations_do_not_grow_with_the_sequence_at_fixed_tokens():
    """The fused attention kernel keeps a log-sum-exp per query, not the scores: at the same tokens per
    micro-batch, one 8192-token sequence keeps what two of 4096 keep."""
    def acts(seq: int, mbs: int) -> float:
        raw = _train()
        raw = {**raw, "workload": {**raw["workload"], "recompute": "none", "seq_len": seq, "micro_batch_size": mbs}}
        return _est(raw).memory.by_category_bytes["activations"]
    assert acts(8192, 1) == pytest.approx(acts(4096, 2), rel=1e-12)


def test_the_main_gradient_defaults_to_fp32_beside_fp32_masters_and_bf16_without():
    assert _grads().model_dump() == _grads(grad_dtype="fp32").model_dump()
    assert (_grads(master_weights_fp32=False).model_dump()
            == _grads(master_weights_fp32=False, grad_dtype="bf16").model_dump())


def test_bf16_main_gradients_halve_their_memory_and_the_bytes_the_reduction_sends():
    fp32, bf16 = _grads(grad_dtype="fp32"), _grads(grad_dtype="bf16")
    g32, g16 = fp32.memory.by_category_bytes["gradients"], bf16.memory.by_category_bytes["gradients"]
    assert g16 == pytest.approx(g32 / 2, rel=1e-12)
    # the same all-reduces at half the bytes: half the time but for the fixed per-call latency
    t32, t16 = fp32.time_by_stage_s["grad_sync_exposed"], bf16.time_by_stage_s["grad_sync_exposed"]
    assert 0.5 <= t16 / t32 < 0.51
    # Adam reads the gradient once: 28 of the 30 bytes per parameter
    o32, o16 = fp32.time_by_stage_s["optimizer"], bf16.time_by_stage_s["optimizer"]
    assert 28 / 30 - 0.01 < o16 / o32 <= 28 / 30 + 0.01
    assert bf16.step_s < fp32.step_s


# ----------------------------------------------------------------------------- data-parallel communication by ZeRO stage


def _zero(z: int, **schedule):
    """Mixtral-8x7B on 64 H100 in one stage (TP2 EP8: DP 32 with 4 ranks per node, EDP 8 with 1), 8 micro-batches."""
    raw = _train(pp=1, zero_stage=z)
    raw = {**raw, "workload": {**raw["workload"], "global_batch_size": 256, "micro_batch_size": 1},
           "schedule": {"overlap_grad_reduce": False, "overlap_param_gather": False, **schedule}}
    return estimate(scenario_from_dict(raw, "test"))


def _dp_seconds(collective: str, bytes_per_param: float, etp: int = 1) -> float:
    """The collective of one GPU's parameters (Mixtral-8x7B, 64 H100, TP2 EP8, one stage), from the communication
    model's public API: dense over DP (32 ranks, 4 per node: the DP group's stride is TP 2), experts over EDP
    (8 / ETP ranks, one per node)."""
    from moesim.comm.api import GroupSpec, collective_time_s
    from moesim.catalog import load_model
    from moesim.hardware import load_hardware
    from moesim.step.memory import stage_params
    from moesim.step.parallel import Parallel

    model, hw = load_model("mixtral-8x7b"), load_hardware("h100-sxm")
    edp = 8 // etp
    par = Parallel(64, 2, 1, 32, 8, etp, edp, 0, True, 8)
    p = stage_params(model, par, list(range(model.num_layers)), True, True)
    return (collective_time_s(hw, collective, p.dense * bytes_per_param, GroupSpec(size=32, ranks_per_node=4))
            + collective_time_s(hw, collective, p.expert * bytes_per_param, GroupSpec(size=edp, ranks_per_node=1)))


def test_each_zero_stage_sends_what_it_shards_once_per_step_or_per_micro_batch():
    """Without overlap every collective adds in full: ZeRO-0 all-reduces the fp32 gradients once; ZeRO-1
    reduce-scatters them once and all-gathers the bf16 weights once; ZeRO-2 reduce-scatters in each of the
    8 micro-batches; ZeRO-3 also gathers the weights before each forward and each backward."""
    ar, rs, ag = _dp_seconds("all_reduce", 4.0), _dp_seconds("reduce_scatter", 4.0), _dp_seconds("all_gather", 2.0)
    expected = {0: (ar, 0.0), 1: (rs, ag), 2: (8 * rs, ag), 3: (8 * rs, 16 * ag)}
    for z, (red, gat) in expected.items():
        t = _zero(z).time_by_stage_s
        assert t["grad_sync_exposed"] == pytest.approx(red, rel=1e-9), z
        assert t["param_gather_exposed"] == pytest.approx(gat, rel=1e-9), z
    steps = [_zero(z).step_s for z in range(4)]
    assert steps[1] < steps[0] < steps[2] < steps[3]  # fp32 reduce-scatter + bf16 gather: 3/4 of the all-reduce


def test_overlap_hides_the_gathers_under_the_forward_and_the_reductions_under_the_backward():
    for z in (1, 2, 3):
        serial, overlapped = _zero(z), _zero(z, overlap_grad_reduce=True, overlap_param_gather=True)
        assert overlapped.step_s < serial.step_s
        for k in ("grad_sync_exposed", "param_gather_exposed"):
            assert 0.0 <= overlapped.time_by_stage_s[k] < serial.time_by_stage_s[k] or serial.time_by_stage_s[k] == 0
    # the overlap hides as much of a collective as the computation beside it lasts: the backward of the last
    # micro-batch for the reduce-scatter, the first forward for the gather (ZeRO-1)
    serial, ovl = _zero(1).time_by_stage_s, _zero(1, overlap_grad_reduce=True, overlap_param_gather=True)
    hidden_red = serial["grad_sync_exposed"] - ovl.time_by_stage_s["grad_sync_exposed"]
    hidden_gat = serial["param_gather_exposed"] - ovl.time_by_stage_s["param_gather_exposed"]
    assert 0 < hidden_gat < hidden_red  # a forward is shorter than a backward
    # the parameter gather's overlap can be turned off alone
    only_grad = _zero(1, overlap_grad_reduce=True).time_by_stage_s
    assert only_grad["grad_sync_exposed"] == pytest.approx(ovl.time_by_stage_s["grad_sync_exposed"], rel=1e-12)
    assert only_grad["param_gather_exposed"] == pytest.approx(_dp_seconds("all_gather", 2.0), rel=1e-9)
    # ZeRO-3 with the gathers serial and the reduce-scatter overlapped: both gathers of the 8 micro-batches add
    # in full, the reduce-scatter only past each backward
    z3 = _zero(3, overlap_grad_reduce=True).time_by_stage_s
    assert z3["param_gather_exposed"] == pytest.approx(16 * _dp_seconds("all_gather", 2.0), rel=1e-9)
    assert 0.0 <= z3["grad_sync_exposed"] < 8 * _dp_seconds("reduce_scatter", 4.0)


def test_zero3_memory_savings_are_not_free_in_the_planner_s_step():
    """ZeRO-3 holds a 32nd of the dense weights and an 8th of the experts' but sends them three times per
    micro-batch: the step is slower than ZeRO-1's, the memory smaller."""
    z1, z3 = _zero(1, overlap_grad_reduce=True, overlap_param_gather=True), \
        _zero(3, overlap_grad_reduce=True, overlap_param_gather=True)
    assert z3.memory_per_gpu_bytes < z1.memory_per_gpu_bytes
    assert z3.step_s > z1.step_s


def test_an_overlapped_collective_hides_only_where_the_all_to_all_leaves_the_shared_nics_free(monkeypatch):
    """At ETP 2 the EP 8 group spans two nodes (EP ranks are ETP apart), as DP 32 and EDP 4 do: both send
    through the NICs, so ZeRO-1's reduce-scatter hides only in the last backward less its all-to-all time, and
    the gather in the first forward less its own. At ETP 1 the all-to-all stays on NVLink and shares nothing."""
    from moesim.step import bridge
    from moesim.step.estimate import layer_pass
    from moesim.step.parallel import Parallel

    def run(etp: int, z: int):
        raw = _train(pp=1, zero_stage=z, etp=etp)
        raw = {**raw, "workload": {**raw["workload"], "global_batch_size": 256, "micro_batch_size": 1},
               "schedule": {"overlap_grad_reduce": True, "overlap_param_gather": True}}
        sc = scenario_from_dict(raw, "test")
        return sc, estimate(sc)

    sc, e = run(2, 1)
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    par = Parallel.of(sc, hw.node.accelerators_per_node)
    kw = dict(n=4096, keys=4097 / 2, weight_dtype="bf16", kv_dtype="bf16", compute_dtype="bf16", training=True)
    fwd = layer_pass(sc, model, hw, par, **kw)
    bwd = layer_pass(sc, model, hw, par, backward=True, grad_bytes=4.0, recompute=recompute_units(sc.workload.recompute), **kw)
    assert fwd.a2a_s > 0 and bwd.a2a_s == pytest.approx(fwd.a2a_s, rel=1e-12)  # the transfers run again as they are
    rs, ag = _dp_seconds("reduce_scatter", 4.0, etp=2), _dp_seconds("all_gather", 2.0, etp=2)
    L = model.num_layers
    free_b = L * (bwd.moe_s - bwd.a2a_s) + bwd.embedding_s + bwd.lm_head_s
    free_f = L * (fwd.moe_s - fwd.a2a_s) + fwd.embedding_s + fwd.lm_head_s
    t = e.time_by_stage_s
    assert t["grad_sync_exposed"] == pytest.approx(max(0.0, rs - free_b), rel=1e-9)
    assert t["param_gather_exposed"] == pytest.approx(max(0.0, ag - free_f), rel=1e-9)
    assert t["grad_sync_exposed"] > 0 and t["param_gather_exposed"] > 0  # the setup exposes both
    # without the all-to-all's share of the NICs the whole pass would hide them
    assert rs < free_b + L * bwd.a2a_s
    # at ETP 1 the all-to-all stays in the node while DP crosses it: different links, nothing shared
    assert bridge.leaves_node(par, "ep") and not bridge.leaves_node(
        Parallel.of(run(1, 1)[0], hw.node.accelerators_per_node), "ep")
    # the estimate says so where it applies
    assert any("cross the NICs" in n for n in e.notes) and not any("cross the NICs" in n for n in run(1, 1)[1].notes)
    # were the all-to-all on other links, the whole passes would hide the collectives: ZeRO-1's both, and
    # ZeRO-3's gathers and reduce-scatters of every micro-batch lose less
    z3 = run(2, 3)[1]
    monkeypatch.setattr(bridge, "shares_links_with_ep", lambda q: False)
    apart1, apart3 = run(2, 1)[1], run(2, 3)[1]
    assert apart1.time_by_stage_s["grad_sync_exposed"] == 0.0 == apart1.time_by_stage_s["param_gather_exposed"]
    assert apart1.step_s < e.step_s and apart3.step_s < z3.step_s


def test_inside_one_node_the_all_to_all_and_the_collectives_share_nvlink(monkeypatch):
    """Mixtral-8x7B on one 8-GPU node at EP 4, DP 8, EDP 2, ZeRO-3, 1024-token micro-batches: the all-to-all and
    the data-parallel collectives are all NVLink-bound, so the collectives hide only where the all-to-all leaves
    NVLink free, as across the NICs."""
    from moesim.step import bridge

    def run():
        raw = {**_train(tp=1, pp=1, ep=4, zero_stage=3), "num_gpus": 8}
        raw = {**raw, "workload": {**raw["workload"], "seq_len": 1024, "global_batch_size": 64, "micro_batch_size": 1},
               "schedule": {"overlap_grad_reduce": True, "overlap_param_gather": True}}
        return estimate(scenario_from_dict(raw, "test"))

    shared = run()
    assert any("stay on the node's NVLink" in n for n in shared.notes)
    monkeypatch.setattr(bridge, "shares_links_with_ep", lambda par: False)
    apart = run()
    assert not any("NVLink:" in n or "NICs:" in n for n in apart.notes)
    t, u = shared.time_by_stage_s, apart.time_by_stage_s
    assert t["param_gather_exposed"] + t["grad_sync_exposed"] > u["param_gather_exposed"] + u["grad_sync_exposed"]
    assert shared.step_s > apart.step_s


def test_overlap_param_gather_is_a_boolean_field():
    raw = _train()
    with pytest.raises(Exception) as exc:
        scenario_from_dict({**raw, "schedule": {"overlap_param_gather": "sometimes"}}, "test")
    assert "overlap_param_gather" in str(exc.value)


# ----------------------------------------------------------------------------- serving iterations


def test_decode_iterations_carry_the_prompts_of_arriving_requests():
    both = estimate(MIXTRAL_SERVE)
    dec = estimate(MIXTRAL_SERVE, ["workload.phase=decode"])
    assert both.tpot_s > dec.tpot_s
    assert any("prompt tokens of arriving requests" in n for n in both.notes)


def test_without_chunked_prefill_the_throughput_is_decode_plus_whole_prefills():
    """dp b O / ((b / pb) TTFT + O TPOT_decode): every request's prefill paid on the same GPUs."""
    ov = ["serving.chunked_prefill=false", "workload.prefill_batch_size=4"]
    est = estimate(MIXTRAL_SERVE, ov)
    dec = estimate(MIXTRAL_SERVE, ov + ["workload.phase=decode"])
    sc = load_scenario(MIXTRAL_SERVE)
    w = sc.workload
    expect = sc.dp * w.batch_size * w.output_tokens / (w.batch_size / 4 * est.ttft_s + w.output_tokens * dec.tpot_s)
    assert est.tokens_per_s == pytest.approx(expect, rel=1e-9)


def test_ep_coupled_replicas_wait_for_the_one_that_prefills():
    """Attention DP8 + EP8 without chunked prefill: each iteration pays the prefills of the replica that prefills
    most, floor(l) + 1 - (1 - frac(l))^8 with l = b E / (O pb) per replica, not l."""
    from moesim.step.estimate import slowest_of_coupled

    trt = "scenarios/validation-e2e/deepseek-v3-serve-h200-trtllm-maxthroughput.toml"
    est = estimate(trt)
    dec = estimate(trt, ["workload.phase=decode"])
    sc = load_scenario(trt)
    w = sc.workload
    events = w.batch_size / w.output_tokens  # one prefill per finished sequence, pb = 1
    assert events == pytest.approx(0.0625)
    stall = est.tpot_s - dec.tpot_s
    assert stall == pytest.approx((1 - (1 - events) ** 8) * est.ttft_s, rel=1e-9)
    assert any("8 attention-DP replicas" in n for n in est.notes)
    # one replica per EP group (TP8 attention, experts EP8 inside it): no coupling, the plain share
    assert slowest_of_coupled(0.0625, 1) == 0.0625
    assert slowest_of_coupled(1.5, 4) == pytest.approx(1 + 1 - 0.5 ** 4)
    assert slowest_of_coupled(2.0, 8) == pytest.approx(2.0)
    assert list(slowest_of_coupled(np.array([0.25, 1.0]), 2)) == pytest.approx([1 - 0.75 ** 2, 1.0])


@pytest.mark.parametrize("layout,want", [({"tp": 1, "ep": 8}, 8), ({"tp": 8, "ep": 8, "etp": 1}, 1),
                                         ({"tp": 2, "ep": 8, "etp": 1}, 4), ({"tp": 1, "ep": 1}, 1)])
def test_replicas_coupled_by_one_ep_group(layout, want):
    from moesim.step.parallel import Parallel

    raw = {"name": "t", "model": "deepseek-v3", "hardware": "h200", "num_gpus": 8, "layout": layout,
           "workload": {"kind": "serve", "batch_size": 8, "prompt_tokens": 256, "output_tokens": 64}}
    sc = scenario_from_dict(raw, "test")
    assert Parallel.of(sc, 8).coupled_replicas == want


def test_mtp_drafts_raise_decode_throughput_by_the_accepted_tokens():
    base = estimate(DSV3_DECODE)
    mtp = estimate(DSV3_DECODE, ["workload.mtp_draft_tokens=1", "workload.mtp_acceptance_rate=0.85"])
    none = estimate(DSV3_DECODE, ["workload.mtp_draft_tokens=1", "workload.mtp_acceptance_rate=0"])
    # nothing accepted: the iteration got longer (2 tokens verified, one draft pass) for the same one token
    assert none.tpot_s > base.tpot_s
    # 1.85 tokens per iteration, the iteration costs less than 1.85 plain ones (decode is memory-bound)
    assert base.tpot_s / 1.85 < mtp.tpot_s < base.tpot_s
    assert mtp.tokens_per_s == pytest.approx(none.tokens_per_s * 1.85, rel=1e-9)


@pytest.mark.parametrize("overrides,needle", [
    (["workload.mtp_draft_tokens=1"], "mtp_acceptance_rate"),
    (["workload.mtp_draft_tokens=1", "workload.mtp_acceptance_rate=1.5"], "mtp_acceptance_rate"),
    (["workload.mtp_draft_tokens=9", "workload.mtp_acceptance_rate=0.8"], "mtp_draft_tokens"),
    (["workload.memory_utilization_frac=0"], "memory_utilization_frac"),
    (["workload.memory_utilization_frac=1.2"], "memory_utilization_frac"),
    (["layout.virtual_stages=0"], "virtual_stages"),
    (["schedule.pipeline=zb1p"], "schedule.pipeline"),
])
def test_bad_new_fields_exit_2_with_one_line_naming_the_field(run_cli, overrides, needle):
    _exits_2_with_one_line(run_cli, DSV3_DECODE, overrides, needle)


@pytest.mark.parametrize("overrides,needle", [
    (["workload.grad_dtype=fp16"], "workload.grad_dtype"),
    (["workload.grad_dtype=fp8"], "'fp32' or 'bf16'"),
    (['workload.recompute_modules=["moe"]'], "'core_attn', 'layernorm', 'mla_up_proj', 'moe_act', 'mlp' or"),
    (['workload.recompute_modules=[]'], "recompute_modules is empty"),
    (['workload.recompute_modules=["moe_act","moe_act"]'], "lists 'moe_act' more than once"),
    (['workload.recompute_modules=["moe_act"]', "workload.recompute=full"], "applies to recompute 'selective'"),
])
def test_bad_training_fields_exit_2_with_one_line_naming_the_field(run_cli, overrides, needle):
    _exits_2_with_one_line(run_cli, DSV3_TRAIN, overrides, needle)


def _exits_2_with_one_line(run_cli, scenario: str, overrides: list[str], needle: str) -> None:
    args = ["estimate", scenario]
    for o in overrides:
        args += ["--set", o]
    r = run_cli(*args)
    assert r.exit_code == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_mtp_needs_a_model_with_mtp_modules(run_cli):
    r = run_cli("estimate", MIXTRAL_SERVE, "--set", "workload.mtp_draft_tokens=1",
                "--set", "workload.mtp_acceptance_rate=0.8")
    assert r.exit_code == 2
    assert "multi-token-prediction" in r.stderr and "workload.mtp_draft_tokens" in r.stderr


# ----------------------------------------------------------------------------- defaults


def test_experts_are_sharded_over_tp_when_there_is_no_expert_parallelism():
    assert Layout(tp=4).etp == 4
    assert Layout(tp=4, ep=2).etp == 1
    assert Layout(tp=4, etp=1).etp == 1  # stated: kept
    raw = {"name": "dbrx", "model": "dbrx", "hardware": "h100-sxm", "num_gpus": 4, "layout": {"tp": 4},
           "workload": {"kind": "serve", "batch_size": 8, "prompt_tokens": 2048, "output_tokens": 256}}
    sc = scenario_from_dict(raw, "t")
    est = estimate_resolved(sc, sc.resolve_model(), sc.resolve_hardware())
    # DBRX (132 B) in BF16 on 4x H100: 66 GB of weights per GPU with the experts split four ways
    assert est.fits and est.layout["etp"] == 4
    assert any("etp = tp" in n for n in est.notes)


def test_serving_workspace_is_the_engines_unused_share_of_the_device():
    est = estimate(MIXTRAL_SERVE)
    cap = est.memory.capacity_bytes
    assert est.memory.by_category_bytes["workspace"] == pytest.approx(0.1 * cap)
    b200 = estimate(MIXTRAL_SERVE, ["hardware=b200"])
    assert b200.memory.by_category_bytes["workspace"] == pytest.approx(0.1 * b200.memory.capacity_bytes)
    half = estimate(MIXTRAL_SERVE, ["workload.memory_utilization_frac=0.5"])
    assert half.max_batch_size < est.max_batch_size
    fixed = estimate(MIXTRAL_SERVE, ["workspace_bytes=2.5e9"])
    assert fixed.memory.by_category_bytes["workspace"] == 2.5e9
    train = estimate(DSV3_TRAIN)
    assert train.memory.by_category_bytes["workspace"] == 2.5e9
    assert np.isfinite(est.tokens_per_s)


def test_the_vectorised_serving_curve_pays_the_coupled_prefills_too():
    from moesim.step.estimate import serve_curve

    trt = "scenarios/validation-e2e/deepseek-v3-serve-h200-trtllm-maxthroughput.toml"
    sc = load_scenario(trt)
    curve = serve_curve(sc, sc.resolve_model(), sc.resolve_hardware(), [64, 128])
    for i, b in enumerate((64, 128)):
        one = estimate(trt, [f"workload.batch_size={b}"])
        assert float(curve["tpot_s"][i]) == pytest.approx(one.tpot_s, rel=1e-9)


# ----------------------------------------------------------------------------- prefix cache


def test_a_cached_prefix_is_not_prefilled_but_attended_to():
    """c of P prompt tokens cached: TTFT is the layer pass of P - c tokens at c + (P - c + 1) / 2 keys each, the
    decode iterations carry (P - c) E / O arriving prompt tokens, and the KV cache still holds whole prompts."""
    from moesim.step.estimate import Parallel, _stage_layers, layer_pass, serve_pass_dtypes

    c = 768
    sc = load_scenario(MIXTRAL_SERVE, [f"workload.cached_prompt_tokens={c}"])
    m, hw = sc.resolve_model(), sc.resolve_hardware()
    w = sc.workload
    q = w.prompt_tokens - c
    est = estimate_resolved(sc, m, hw)
    par = Parallel.of(sc, hw.node.accelerators_per_node)
    p = layer_pass(sc, m, hw, par, n=q, keys=c + (q + 1) / 2, lm_tokens=1, detail=True,
                   **serve_pass_dtypes(m, w))
    counts = _stage_layers(m, par)
    n_moe, n_dense = sum(x[0] for x in counts), sum(x[1] for x in counts)
    assert par.pp == 1 and est.ttft_s == pytest.approx(
        n_moe * p.moe_s + n_dense * p.dense_s + p.embedding_s + p.lm_head_s, rel=1e-12)
    plain = estimate(MIXTRAL_SERVE)
    assert est.ttft_s < plain.ttft_s and est.tpot_s < plain.tpot_s
    assert est.memory.by_category_bytes["kv_cache"] == plain.memory.by_category_bytes["kv_cache"]
    chunk = w.batch_size * q / w.output_tokens
    assert any(f"{chunk:.4g} prompt tokens of arriving requests" in n for n in est.notes)
    assert any(n.startswith(f"prefix cache: {c:,} of {w.prompt_tokens:,}") for n in est.notes)


def test_a_prefill_deployment_counts_cache_hits_as_served_and_computed_tokens_as_flops():
    from moesim.flops import forward_flops_per_token

    c = 640
    ov = ["workload.phase=prefill", f"workload.cached_prompt_tokens={c}"]
    sc = load_scenario(MIXTRAL_SERVE, ov)
    w = sc.workload
    est = estimate(MIXTRAL_SERVE, ov)
    assert est.tokens_per_s == pytest.approx(sc.dp * w.batch_size * w.prompt_tokens / est.ttft_s, rel=1e-12)
    m = sc.resolve_model()
    q = w.prompt_tokens - c
    per_computed = forward_flops_per_token(m, c + (q + 1) / 2).total_flops
    assert est.model_flops_per_token == pytest.approx(per_computed * q / w.prompt_tokens, rel=1e-12)
    plain = estimate(MIXTRAL_SERVE, ["workload.phase=prefill"])
    assert est.tokens_per_s > plain.tokens_per_s


@pytest.mark.parametrize("overrides,needle", [
    (["workload.cached_prompt_tokens=-1"], "cached_prompt_tokens"),
    (["workload.cached_prompt_tokens=4096"], "must be less than prompt_tokens"),
    (["workload.phase=decode", "workload.cached_prompt_tokens=8"], "applies to prefill"),
])
def test_bad_cached_prefixes_exit_2_with_one_line(run_cli, overrides, needle):
    _exits_2_with_one_line(run_cli, MIXTRAL_SERVE, overrides, needle)


def test_a_host_step_binds_a_small_decode_batch_and_its_note_says_how(run_cli):
    plain = estimate(MIXTRAL_SERVE, ["workload.batch_size=1"])
    slow = estimate(MIXTRAL_SERVE, ["workload.batch_size=1", "serving.host_step_s=0.05"])
    assert plain.tpot_s < 0.05 and slow.tpot_s == pytest.approx(0.05, rel=1e-12)  # overlapped: the host binds
    added = estimate(MIXTRAL_SERVE, ["workload.batch_size=1", "serving.host_step_s=0.05", "serving.overlap_host_step=false"])
    assert added.tpot_s == pytest.approx(plain.tpot_s + 0.05, rel=1e-12)
    assert any("host step 50 ms per decode iteration" in n and "added to the device time" in n for n in added.notes)
    assert not any("host step" in n for n in plain.notes)


@pytest.mark.parametrize("scenario,overrides,needle", [
    (MIXTRAL_SERVE, ["serving.host_step_s=-0.001"], "serving.host_step_s"),
    (MIXTRAL_SERVE, ["serving.host_step_s=2"], "serving.host_step_s"),
    (MIXTRAL_SERVE, ["serving.host_step_per_token_s=0.01"], "serving.host_step_per_token_s"),
    (DSV3_TRAIN, ["serving.host_step_s=0.004"], "applies to serving engines"),
])
def test_bad_host_steps_exit_2_with_one_line(run_cli, scenario, overrides, needle):
    _exits_2_with_one_line(run_cli, scenario, overrides, needle)


def _fp8_gemm(kind: str = "grouped_matmul") -> Op:
    g = GemmShape(m=4096, n=4096, k=7168, groups=8)
    return Op(OpKind.EXPERTS, name="experts_up", flops=2.0 * 8 * 4096 * 4096 * 7168, bytes_moved=0.0,
              compute_kind=kind, gemm=g)


def test_block_scaled_fp8_gemms_run_at_the_profiles_share_of_per_tensor_speed():
    from moesim.hardware import load_hardware
    from moesim.timing import op_terms

    h100, b200 = load_hardware("h100-sxm"), load_hardware("b200")
    frac = h100.efficiency.fp8_block_scaled_frac
    assert frac == pytest.approx(1.75 / 2)  # cuBLAS 12.9's block-scaled FP8 over BF16 on Hopper, against the peaks' 2x
    assert b200.efficiency.fp8_block_scaled_frac == 1.0  # Blackwell's tensor cores apply the block scales
    for kind in ("matmul", "grouped_matmul"):
        op = _fp8_gemm(kind)
        tensor = op_terms(h100, op, "fp8")[0]
        assert op_terms(h100, op, "fp8", fp8_block=True)[0] == pytest.approx(tensor / frac)
        assert op_terms(b200, op, "fp8", fp8_block=True)[0] == op_terms(b200, op, "fp8")[0]
        # BF16 GEMMs (the router, the LM head) and FP4 experts are not FP8 block-scaled GEMMs
        for dt in ("bf16", "fp4"):
            assert op_terms(h100, op.replaced(dtype=dt), "fp8", fp8_block=True) == op_terms(h100, op.replaced(dtype=dt), "fp8")
    # a quantisation pass (elementwise) is not slowed
    cast = Op(OpKind.EXPERTS, name="q", flops=1e9, bytes_moved=1e9, compute_kind="elementwise")
    assert op_terms(h100, cast, "fp8", fp8_block=True) == op_terms(h100, cast, "fp8")


def test_serving_fp8_scaling_sets_the_gemm_speed_and_the_casts():
    base = "deepseek-v3-prefill-h800"
    est = {s: estimate(load_scenario(base, [f"workload.fp8_scaling={s}"])) for s in ("block", "static", "dynamic")}
    ttft = {s: e.ttft_s for s, e in est.items()}
    # block scales on Hopper: slower GEMMs and 1/32 byte of scales; dynamic per-tensor scales: an amax read per cast
    assert ttft["block"] > ttft["static"] and ttft["dynamic"] > ttft["static"]
    # on Blackwell the block-scaled GEMMs run at the per-tensor speed: only the scale bytes differ
    b = {s: estimate(load_scenario(base, ["hardware=b200", f"workload.fp8_scaling={s}"])).ttft_s
         for s in ("block", "static")}
    assert 1.0 < b["block"] / b["static"] < 1.01
    # on Hopper the compute-bound expert GEMMs take 1 / fp8_block_scaled_frac as long (their casts change little)
    experts = est["block"].time_by_stage_s["experts"] / est["static"].time_by_stage_s["experts"]
    assert 1.05 < experts <= 1 / 0.875 + 1e-9


def test_serving_fp8_scaling_is_refused_without_fp8(run_cli):
    r = run_cli("estimate", MIXTRAL_SERVE, "--set", "workload.fp8_scaling=static")
    assert r.exit_code == 2 and "fp8_scaling 'static' applies to FP8 GEMMs" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = run_cli("estimate", MIXTRAL_SERVE, "--set", "workload.fp8_scaling=delayed")
    assert r.exit_code == 2 and "'block', 'static' or 'dynamic'" in r.stderr
    # the experts alone in FP8 are FP8 GEMMs
    assert run_cli("estimate", MIXTRAL_SERVE, "--set", "workload.expert_compute_dtype=fp8",
                   "--set", "workload.fp8_scaling=static").exit_code == 0


def test_setting_recompute_to_none_or_full_drops_the_module_list_the_file_names():
    """A scenario that lists its selective modules can be asked for 'none' or 'full' with --set, as plan
    --recompute does; the modules the file named mean nothing there. A list given with the override is kept
    (and refused with 'full', as in a file)."""
    listed = load_scenario("deepseek-v3-train-h800", ['workload.recompute_modules=["moe_act"]'])
    assert listed.workload.recompute_modules == ["moe_act"]
    base = listed.model_dump(mode="python")
    from moesim.scenario import apply_overrides, drop_unused_recompute_modules

    for setting in ("none", "full"):
        raw = apply_overrides(base, [(["workload", "recompute"], setting)])
        assert "recompute_modules" not in raw["workload"]
        sc = scenario_from_dict(raw, "test")
        assert sc.workload.recompute == setting and sc.workload.recompute_modules is None
        plain = load_scenario("deepseek-v3-train-h800", [f"workload.recompute={setting}"])
        assert estimate(sc).step_s == estimate(plain).step_s
    kept = apply_overrides(base, [(["workload", "recompute"], "selective")])
    assert kept["workload"]["recompute_modules"] == ["moe_act"]
    both = apply_overrides(base, [(["workload", "recompute"], "full"), (["workload", "recompute_modules"], ["mlp"])])
    assert both["workload"]["recompute_modules"] == ["mlp"]
    # another override leaves the list alone
    other = drop_unused_recompute_modules({"workload": {"recompute": "full", "recompute_modules": ["mlp"]}},
                                          [["workload", "seq_len"]])
    assert other["workload"]["recompute_modules"] == ["mlp"]


# ----------------------------------------------------------------------------- Transformer Engine's per-expert GEMMs


def _expert_ops(per_expert: bool, fp8_scaling: str | None = None, training: bool = True):
    from moesim.layer import MoEShape, RowsPerExpert, moe_ffn_ops

    shape = MoEShape(d_model=2048, expert_ffn=768, num_experts=128, top_k=8, num_local_experts=16, ep_size=8)
    rows = RowsPerExpert(((2048.0, 16.0),))  # 16 local experts of 2048 rows
    ops = moe_ffn_ops(shape, tokens=4096.0, rows=rows, plan="fused", act_bytes=2.0, weight_bytes_per_element=2.0,
                      per_expert_gemms=per_expert)
    if fp8_scaling is not None:
        ops = low_precision_ops(ops, "fp8", training=training, element_bytes=1.0, fp8_scaling=fp8_scaling)
    return {op.name: op for op in ops}


def test_per_expert_gemms_issue_one_cublas_gemm_per_local_expert_over_four_streams():
    """Transformer Engine's grouped linear: each of the up and down GEMM calls is one plain GEMM per local expert
    (16 kernels, on 4 streams), the same FLOPs and bytes as the one grouped kernel; the device pays
    max(1, 16 / 4) = 4 kernels' fixed cost per call, the host issues all 16."""
    from moesim.hardware import load_hardware
    from moesim.timing import op_terms

    one, per = _expert_ops(False), _expert_ops(True)
    hw = load_hardware("h100-sxm")
    t_k = hw.efficiency.kernel_overhead_s
    for name in ("experts_up", "experts_down"):
        a, b = one[name], per[name]
        assert (a.num_kernels, a.streams, a.compute_kind) == (1, 1, "grouped_matmul")
        assert (b.num_kernels, b.streams, b.compute_kind) == (16, 4, "matmul")
        assert (b.flops, b.bytes_moved, b.weight_bytes) == (a.flops, a.bytes_moved, a.weight_bytes)
        assert b.gemm.groups == 16 and b.gemm.call_groups == 1.0
        assert op_terms(hw, b, "bf16")[2] == pytest.approx(4 * t_k)
        assert op_terms(hw, a, "bf16")[2] == pytest.approx(t_k)
    assert per["experts_act"].num_kernels == one["experts_act"].num_kernels == 1  # one activation kernel
    # fewer experts than streams still pay one kernel's fixed cost
    few = dataclasses.replace(per["experts_up"], num_kernels=2)
    assert op_terms(hw, few, "bf16")[2] == pytest.approx(t_k)


@pytest.mark.parametrize("scaling,kernels_per_expert", [("current", 3), ("block", 1), ("delayed", 1)])
def test_per_expert_gemms_quantise_each_experts_input_on_its_own(scaling, kernels_per_expert):
    """split_quantize gives every expert its own quantiser: per-tensor current scaling runs its amax, scale and
    cast kernels per expert (3 x 16), a block-scaled or delayed-scaling cast one per expert, forward and
    backward; the bytes are those of the one pass over all rows."""
    one, per = _expert_ops(False, scaling), _expert_ops(True, scaling)
    for name in ("experts_up_quantize", "experts_down_quantize"):
        a, b = one[name], per[name]
        assert a.num_kernels == kernels_per_expert and b.num_kernels == 16 * kernels_per_expert
        assert b.backward_kernels == 16 * a.backward_kernels
        assert (b.bytes_moved, b.backward_bytes_moved) == (a.bytes_moved, a.backward_bytes_moved)


def test_training_runs_the_experts_per_local_expert_and_serving_as_one_grouped_kernel():
    """schedule.grouped_gemm 'auto': Megatron-Core's per-expert loop in training, the engines' grouped kernel in
    serving; 'grouped' makes a training step faster (fewer kernels, fewer fixed costs), 'per_expert' a serving
    iteration slower, and Mixtral at EP 8 (one local expert) does not change."""
    qwen = "scenarios/validation-e2e/qwen3-30b-train-h100-megatron-bridge.toml"
    auto = estimate(load_scenario(qwen))
    grouped = estimate(load_scenario(qwen, ["schedule.grouped_gemm=grouped"]))
    assert estimate(load_scenario(qwen, ["schedule.grouped_gemm=per_expert"])).step_s == auto.step_s
    assert grouped.step_s < auto.step_s
    note = "the routed experts' GEMMs run one per local expert (16 per GPU, on 4 streams, each expert's input quantised"
    assert any(x.startswith(note) for x in auto.notes)
    assert not any("one per local expert" in x for x in grouped.notes)
    serve = estimate(load_scenario(MIXTRAL_SERVE))  # all 8 experts on every GPU (TP 8 = ETP 8)
    assert estimate(load_scenario(MIXTRAL_SERVE, ["schedule.grouped_gemm=grouped"])).tpot_s == serve.tpot_s
    assert estimate(load_scenario(MIXTRAL_SERVE, ["schedule.grouped_gemm=per_expert"])).tpot_s > serve.tpot_s
    one_expert = "scenarios/validation-e2e/mixtral-8x22b-train-h100-folding.toml"
    assert (estimate(load_scenario(one_expert)).step_s
            == estimate(load_scenario(one_expert, ["schedule.grouped_gemm=grouped"])).step_s)


def test_a_bad_grouped_gemm_setting_exits_2_with_one_line(run_cli):
    _exits_2_with_one_line(run_cli, DSV3_TRAIN, ["schedule.grouped_gemm=loop"], "schedule.grouped_gemm")
