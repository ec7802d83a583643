"""Invariants and hand checks of the step model (moesim/step)."""

from __future__ import annotations

import math

import pytest

from moesim.catalog import load_model
from moesim.flops import forward_flops_per_token
from moesim.scenario import load_scenario, scenario_from_dict
from moesim.step.estimate import estimate, estimate_resolved
from moesim.errors import InputError


def _serve(**over):
    raw = {
        "name": "t", "model": "mixtral-8x7b", "hardware": "h100-sxm", "num_gpus": 8,
        "layout": {"tp": 1, "ep": 8},
        "workload": {"kind": "serve", "batch_size": 32, "prompt_tokens": 1024, "output_tokens": 128},
    }
    for k, v in over.items():
        if isinstance(v, dict):
            raw[k] = {**raw.get(k, {}), **v}
        else:
            raw[k] = v
    return scenario_from_dict(raw, "test")


def _train(**over):
    raw = {
        "name": "t", "model": "mixtral-8x7b", "hardware": "h100-sxm", "num_gpus": 16,
        "layout": {"tp": 2, "ep": 8},
        "workload": {"kind": "train", "seq_len": 4096, "global_batch_size": 64, "micro_batch_size": 1},
    }
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return scenario_from_dict(raw, "test")


def test_every_bundled_scenario_estimates():
    from moesim.scenario import bundled_scenarios

    for name in bundled_scenarios():
        est = estimate(name)
        assert est.tokens_per_s > 0 and math.isfinite(est.tokens_per_s), name
        assert 0 < est.mfu_frac < 1, name
        assert est.memory_per_gpu_bytes > 0, name


def test_ep1_has_no_all_to_all():
    est = estimate(_serve(layout={"tp": 1, "ep": 1}, num_gpus=1, hardware="h200"))
    assert not [o for o in est.ops if o.group == "ep"]
    assert all(o.time_s > 0 for o in est.ops if o.kind == "experts")
    with_ep = estimate(_serve(layout={"tp": 1, "ep": 8}, num_gpus=8, hardware="h200"))
    assert all(o.time_s > 0.0 for o in with_ep.ops if o.group == "ep")


def test_ep_inside_one_node_beats_nothing_but_costs_all_to_all_time():
    est = estimate(_serve())
    assert est.time_by_stage_s["dispatch"] > 0


@pytest.mark.parametrize("make", [_serve, _train])
def test_more_skew_never_speeds_up_a_step(make):
    times = []
    for dist in ("uniform", "zipf:0.5", "zipf:1.0", "zipf:1.5"):
        est = estimate(make(routing={"distribution": dist}))
        times.append(est.step_s if est.step_s is not None else est.tpot_s)
    assert all(b >= a * (1 - 1e-9) for a, b in zip(times, times[1:])), times


def test_doubling_batch_never_lowers_memory():
    for b in (1, 4, 16, 64):
        m1 = estimate(_serve(workload={"batch_size": b})).memory_per_gpu_bytes
        m2 = estimate(_serve(workload={"batch_size": 2 * b})).memory_per_gpu_bytes
        assert m2 >= m1
    for gb in (16, 32):
        m1 = estimate(_train(workload={"micro_batch_size": 1, "global_batch_size": gb})).memory_per_gpu_bytes
        m2 = estimate(_train(workload={"micro_batch_size": 2, "global_batch_size": gb})).memory_per_gpu_bytes
        assert m2 > m1



def test_one_expert_top1_moe_costs_what_the_dense_ffn_costs(tmp_path):
    head = 'num_layers = 4\nhidden_size = 1024\nvocab_size = 32000\n[attention]\nkind = "gqa"\nnum_heads = 8\nnum_kv_heads = 8\nhead_dim = 128\n'
    (tmp_path / "moe.toml").write_text('name = "moe1"\n' + head + "[moe]\nnum_experts = 1\ntop_k = 1\nexpert_ffn_dim = 4096\n")
    (tmp_path / "dense.toml").write_text('name = "dense"\ndense_ffn_dim = 4096\n' + head + '[moe_layers]\nkind = "explicit"\nlayers = []\n')
    moe, dense = load_model(tmp_path / "moe.toml"), load_model(tmp_path / "dense.toml")
    f_moe = forward_flops_per_token(moe).by_component
    f_dense = forward_flops_per_token(dense).by_component
    assert f_moe["routed_experts"] == f_dense["dense_ffn"]
    base = {"hardware": "h100-sxm", "num_gpus": 1, "workload": {"kind": "serve", "batch_size": 8, "prompt_tokens": 512, "output_tokens": 64}}
    e_moe = estimate(scenario_from_dict({**base, "model": str(tmp_path / "moe.toml")}, "t"))
    e_dense = estimate(scenario_from_dict({**base, "model": str(tmp_path / "dense.toml")}, "t"))
    t_moe = e_moe.time_by_stage_s["experts"]
    t_dense = e_dense.time_by_stage_s["dense_ffn"]
    assert t_moe == pytest.approx(t_dense, rel=0.02)
    assert e_moe.memory.by_category_bytes["weights"] == pytest.approx(e_dense.memory.by_category_bytes["weights"], rel=1e-3)


def test_decode_at_batch_one_reads_only_the_experts_it_touches():
    # a decode-only deployment: no prefill chunks of arriving requests ride along in the iteration
    est = estimate(_serve(workload={"batch_size": 1, "phase": "decode"}, layout={"tp": 1, "ep": 1}, num_gpus=1,
                          hardware="h200"))
    expert_bytes = sum(o.bytes_moved for o in est.ops if o.kind == "experts" and o.layer == "moe")
    m = load_model("mixtral-8x7b")
    from moesim.params import expert_params

    one_expert = expert_params(m) * 2.0
    # one token, top-2: two experts' weights, not eight
    assert expert_bytes == pytest.approx(2 * one_expert, rel=0.01)
    assert est.load.experts_touched_per_rank == pytest.approx(2.0)


def test_training_flops_are_three_times_forward():
    sc = _train()
    est = estimate(sc)
    m = sc.resolve_model()
    fwd = forward_flops_per_token(m, (4096 + 1) / 2).total_flops
    assert est.model_flops_per_token == pytest.approx(3 * fwd)


def test_full_recompute_costs_more_time_and_less_memory():
    sel = estimate(_train(workload={"recompute": "selective"}))
    full = estimate(_train(workload={"recompute": "full"}))
    assert full.step_s > sel.step_s
    assert full.memory.by_category_bytes["activations"] < sel.memory.by_category_bytes["activations"]


def test_pipeline_bubble_shrinks_with_more_microbatches():
    def bubble(gbs):
        est = estimate(_train(num_gpus=16, layout={"tp": 1, "pp": 4, "ep": 4}, workload={"global_batch_size": gbs}))
        return est.time_by_stage_s["pipeline_bubble"] / est.step_s

    assert bubble(64) < bubble(16)


def test_zero_stages_shard_optimizer_then_gradients_then_weights():
    mem = {z: estimate(_train(layout={"zero_stage": z})).memory.by_category_bytes for z in (0, 1, 2, 3)}
    assert mem[1]["optimizer"] < mem[0]["optimizer"]
    assert mem[2]["gradients"] < mem[1]["gradients"]
    assert mem[3]["weights"] < mem[2]["weights"]


def test_impossible_layouts_are_input_errors():
    with pytest.raises(InputError, match="layout.ep"):
        estimate(_serve(layout={"ep": 3}, num_gpus=3))
    with pytest.raises(InputError, match="num_gpus"):
        estimate(_serve(num_gpus=16384, layout={"ep": 8}))
    with pytest.raises(InputError, match="tp"):
        estimate(_serve(layout={"tp": 3, "ep": 1}, num_gpus=3))


def test_set_overrides_and_unknown_fields():
    sc = load_scenario("mixtral-8x7b-serve-h100", ["workload.batch_size=3", "routing.distribution=zipf:1.2"])
    assert sc.workload.batch_size == 3 and sc.routing.distribution == "zipf:1.2"
    with pytest.raises(InputError, match="workload.batchsize"):
        load_scenario("mixtral-8x7b-serve-h100", ["workload.batchsize=3"])


def test_model_not_fitting_is_reported_not_raised():
    est = estimate(_serve(num_gpus=1, layout={"tp": 1, "ep": 1}, model="deepseek-v3"))
    assert est.fits is False
    assert est.memory.total_bytes > est.memory.capacity_bytes


def test_doubling_link_bandwidth_never_slows_a_step(tmp_path):
    from moesim.hardware import load_hardware
    from moesim.scenario import Scenario

    sc = _serve(num_gpus=16, layout={"tp": 1, "ep": 16}, model="qwen3-30b-a3b")
    base = estimate(sc)
    hw = load_hardware("h100-sxm")
    fast = hw.model_copy(update={"scale_out": hw.scale_out.model_copy(
        update={"bandwidth_per_nic_bytes_per_s": 2 * hw.scale_out.bandwidth_per_nic_bytes_per_s})})
    est = estimate_resolved(sc, sc.resolve_model(), fast)
    assert est.tpot_s <= base.tpot_s
    assert est.time_by_stage_s["dispatch"] < base.time_by_stage_s["dispatch"]


def test_redundant_experts_cost_memory():
    base = estimate(_serve(model="qwen3-30b-a3b", layout={"tp": 1, "ep": 8}))
    more = estimate(_serve(model="qwen3-30b-a3b", layout={"tp": 1, "ep": 8}, routing={"redundant_experts": 16}))
    from moesim.params import expert_params

    m = load_model("qwen3-30b-a3b")
    per_gpu = 16 / 8 * m.num_moe_layers * expert_params(m) * 2.0  # bf16
    assert more.memory.by_category_bytes["weights"] - base.memory.by_category_bytes["weights"] == pytest.approx(per_gpu)


@pytest.mark.parametrize("name", ["deepseek-v3-train-h800", "mixtral-8x22b-train-h100"])
def test_fast_training_figures_match_the_full_estimate(name):
    from moesim.step.estimate import train_figures

    sc = load_scenario(name)
    m, hw = sc.resolve_model(), sc.resolve_hardware()
    full, fast = estimate_resolved(sc, m, hw), train_figures(sc, m, hw)
    assert fast.step_s == pytest.approx(full.step_s, rel=1e-12)
    assert fast.memory_per_gpu_bytes == pytest.approx(full.memory_per_gpu_bytes, rel=1e-12)
    assert fast.fits == full.fits and fast.tokens_per_s == pytest.approx(full.tokens_per_s, rel=1e-12)


def test_serve_curve_matches_the_full_estimate_at_every_batch():
    _curve_matches_the_estimate(load_scenario("qwen3-235b-serve-gb200"), [1, 7, 64, 300])


def _curve_matches_the_estimate(sc, batches: list[int]) -> None:
    import numpy as np

    from moesim.step.estimate import serve_curve

    m, hw = sc.resolve_model(), sc.resolve_hardware()
    cur = serve_curve(sc, m, hw, np.array(batches))
    for i, b in enumerate(batches):
        s = sc.model_copy(update={"workload": sc.workload.model_copy(update={"batch_size": b})})
        est = estimate_resolved(s, m, hw)
        assert cur["tpot_s"][i] == pytest.approx(est.tpot_s, rel=1e-9)
        assert cur["ttft_s"][i] == pytest.approx(est.ttft_s, rel=1e-9)
        assert cur["memory_per_gpu_bytes"][i] == pytest.approx(est.memory_per_gpu_bytes, rel=1e-9)
        if sc.layout.ep > 1:
            assert est.time_by_stage_s["dispatch"] > 0


@pytest.mark.parametrize(("gpus", "tp", "ep", "routing"), [
    (16, 1, 16, []), (32, 2, 32, ["routing.algorithm=hierarchical"]), (64, 1, 64, ["routing.distribution=zipf:1.1"]),
    (128, 4, 32, ["routing.algorithm=hierarchical", "routing.distribution=dirichlet:0.5"]),
])
def test_serve_curve_routes_the_all_to_all_once_and_matches_the_estimate(gpus, tp, ep, routing):
    """Multi-node expert parallelism: the curve times every batch's dispatch and combine from one routing at one
    token per rank (moesim.step.bridge.a2a_times_s); the full estimate routes each batch's own matrix."""
    sc = load_scenario("deepseek-v3-decode-h800", [f"num_gpus={gpus}", f"layout.tp={tp}", f"layout.ep={ep}",
                                                  "layout.etp=1", "layout.pp=1", "workload.phase=both", *routing])
    _curve_matches_the_estimate(sc, [1, 6, 64, 512])


def test_a_profile_loaded_again_hits_the_caches_of_the_first_load():
    from moesim.hardware import load_hardware
    from moesim.step import bridge

    assert load_hardware("h800") is load_hardware("h800")  # one frozen object per content, shared
    a, b = load_hardware("h800"), load_hardware("h800").model_copy()  # another object of the same content
    assert a is not b and a.fingerprint == b.fingerprint
    before = len(bridge._PROFILES)
    bridge._hw_key(a)
    bridge._hw_key(b)
    assert len(bridge._PROFILES) <= before + 1


def test_a_layer_pass_over_token_arrays_is_kept_by_value_and_read_only():
    """Searches meet the same token arrays under many layouts (DP and PP do not change a layer pass): the pass
    is computed once per distinct array, and what is kept cannot be changed by a caller."""
    import numpy as np

    from moesim.step.estimate import Parallel, layer_pass, serve_pass_dtypes

    sc = load_scenario("deepseek-v3-decode-h800")
    m, hw = sc.resolve_model(), sc.resolve_hardware()
    par = Parallel.of(sc, hw.node.accelerators_per_node)
    kw = dict(keys=2048.0, detail=False, **serve_pass_dtypes(m, sc.workload))
    a = layer_pass(sc, m, hw, par, n=np.array([1.0, 8.0, 64.0]), **kw)
    b = layer_pass(sc, m, hw, par, n=np.array([1.0, 8.0, 64.0]), **kw)
    c = layer_pass(sc, m, hw, par, n=np.array([1.0, 8.0, 65.0]), **kw)
    assert a is b and c is not a
    assert a.moe_s[:2].tolist() == c.moe_s[:2].tolist() and a.moe_s[2] < c.moe_s[2]
    with pytest.raises(ValueError):
        a.moe_s[0] = 0.0


@pytest.mark.parametrize("override", [
    "workload.grad_dtype=bf16", "workload.master_weights_fp32=false", "workspace_bytes=1e10",
    "routing.dispatch_dtype=bf16", 'workload.recompute_modules=["moe_act"]', "workload.recompute=full",
    "workload.compute_dtype=bf16", "schedule.pipeline=dualpipe",
])
def test_the_shared_training_memory_table_is_keyed_on_everything_it_reads(override):
    """Estimates of one scenario share its memory table; a scenario that differs in any field the table reads
    gets its own (the memory of a fresh computation, not the first one's)."""
    from moesim.caches import clear_caches

    base = load_scenario("deepseek-v3-train-h800")
    estimate(base)  # the base's table is now shared
    warm = estimate(load_scenario("deepseek-v3-train-h800", [override]))
    clear_caches()
    cold = estimate(load_scenario("deepseek-v3-train-h800", [override]))
    assert warm.memory.by_category_bytes == cold.memory.by_category_bytes
    assert warm.memory.by_category_bytes != estimate(base).memory.by_category_bytes


def test_shared_memory_results_cannot_be_changed_through_an_estimate():
    """The memory of repeated estimates is computed once (moesim.step.estimate.serve_memory,
    train_memory_table); each estimate gets its own dict, and the shared training table is read-only."""
    import numpy as np

    from moesim.step import estimate as E

    for name in ("mixtral-8x7b-serve-h100", "deepseek-v3-train-h800"):
        sc = load_scenario(name)
        first = estimate(sc)
        expected = dict(first.memory.by_category_bytes)
        first.memory.by_category_bytes["weights"] = 0.0
        assert estimate(sc).memory.by_category_bytes == expected
    tables = [v for v in E._MEMORY_TABLES.data.values()]
    assert tables and all(not a.flags.writeable for t in tables for a in t.values())
    with pytest.raises(ValueError):
        tables[0]["weights"][0] = np.float64(0.0)
