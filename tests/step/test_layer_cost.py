"""One MoE layer's forward + backward per micro-batch (``moesim.step.estimate.moe_layer_cost_s``): the per-layer
cost the training step is composed of, and the figure a kernel trace of one layer is compared with
(``moe_layer_fwd_bwd_s`` in the published comparisons)."""

from __future__ import annotations

import pytest

import moesim
from moesim.errors import InputError
from moesim.published import FIGURES
from moesim.step.estimate import layer_pass, moe_layer_cost_s
from moesim.step.ops import recompute_units
from moesim.step.parallel import Parallel

SCENARIO = "deepseek-v3-train-h800"


def _passes(sc):
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    w = sc.workload
    par = Parallel.of(sc, hw.node.accelerators_per_node)
    kw = dict(n=w.micro_batch_size * w.seq_len, keys=(w.seq_len + 1) / 2, weight_dtype="bf16", kv_dtype="bf16",
              compute_dtype=w.compute_dtype, training=True, fp8_scaling=w.fp8_scaling)
    fwd = layer_pass(sc, model, hw, par, **kw)
    bwd = layer_pass(sc, model, hw, par, backward=True, grad_bytes=w.grad_bytes_per_element,
                     recompute=recompute_units(w.recompute, w.recompute_modules), **kw)
    return fwd, bwd


def test_the_layer_cost_is_its_forward_and_backward_pass_and_full_recompute_adds_the_forward_again():
    sc = moesim.load_scenario(SCENARIO, ["workload.recompute=selective"])
    fwd, bwd = _passes(sc)
    assert fwd.moe_s > 0 and bwd.moe_s > fwd.moe_s  # the backward runs dgrad and wgrad
    assert moe_layer_cost_s(sc) == pytest.approx(fwd.moe_s + bwd.moe_s, rel=1e-12)
    none = moesim.load_scenario(SCENARIO, ["workload.recompute=none"])
    fwd_none, bwd_none = _passes(none)
    assert fwd_none.moe_s == fwd.moe_s  # recomputation is a matter of the backward
    assert moe_layer_cost_s(none) == pytest.approx(fwd.moe_s + bwd_none.moe_s, rel=1e-12)
    # selective recomputation runs MLA's up-projections and the activations again: part of a forward, not all
    assert 0 < bwd.moe_s - bwd_none.moe_s < 0.25 * fwd.moe_s
    full = moesim.load_scenario(SCENARIO, ["workload.recompute=full"])
    fwd_full, bwd_full = _passes(full)
    assert bwd_full.moe_s == bwd_none.moe_s  # the whole forward again instead, added once
    assert moe_layer_cost_s(full) == pytest.approx(2 * fwd.moe_s + bwd_none.moe_s, rel=1e-12)


def test_the_layer_cost_grows_with_the_micro_batch_and_bounds_the_step_from_below():
    one = moesim.load_scenario(SCENARIO, ["workload.micro_batch_size=1"])
    two = moesim.load_scenario(SCENARIO, ["workload.micro_batch_size=2"])
    assert moe_layer_cost_s(two) > 1.5 * moe_layer_cost_s(one)
    est = moesim.estimate(one)
    model = one.resolve_model()
    w = one.workload
    micro_batches = w.global_batch_size // (est.layout["dp"] * w.micro_batch_size)
    # every micro-batch passes every MoE layer of its pipeline stage: the step is at least that much
    layers_per_stage = model.num_moe_layers / est.layout["pp"]
    assert est.step_s > micro_batches * layers_per_stage * moe_layer_cost_s(one)


def test_the_published_figure_reads_the_same_cost():
    sc = moesim.load_scenario(SCENARIO)
    assert FIGURES["moe_layer_fwd_bwd_s"](moesim.estimate(sc), sc) == moe_layer_cost_s(sc)


def test_a_serving_scenario_has_no_training_layer_cost():
    sc = moesim.load_scenario("mixtral-8x7b-serve-h100")
    with pytest.raises(InputError, match="training scenario") as info:
        moe_layer_cost_s(sc)
    assert info.value.field == "workload.kind"
    with pytest.raises(ValueError, match="needs a training scenario"):
        FIGURES["moe_layer_fwd_bwd_s"](moesim.estimate(sc), sc)
