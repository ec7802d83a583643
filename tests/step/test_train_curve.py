"""The vectorised training candidates (train_curve, what plan times) equal the scalar estimate."""

from __future__ import annotations

import random

import pytest
from make_golden import REPO

from moesim.errors import InputError
from moesim.plan.search import cluster_sizes, layouts
from moesim.scenario import load_scenario
from moesim.step.estimate import estimate_resolved, train_curve


def _candidates(model, hw, max_gpus: int) -> list:
    return [(g, lay, mbs) for g in cluster_sizes(hw, max_gpus) for lay in layouts(model, hw, g, True)
            for mbs in (1, 2, 4)]


@pytest.mark.parametrize("name,max_gpus", [("deepseek-v3-train-h800", 256), ("mixtral-8x22b-train-h100", 128),
                                            ("qwen3-235b-train-h100-megatron-bridge", 64)])
def test_vectorised_training_figures_equal_the_scalar_estimate(name, max_gpus) -> None:
    bundled = REPO / "scenarios" / f"{name}.toml"
    sc = load_scenario(bundled if bundled.exists() else REPO / "scenarios" / "validation-e2e" / f"{name}.toml")
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    cands = _candidates(model, hw, max_gpus)
    cur = train_curve(sc, model, hw, cands)
    rng = random.Random(13)
    valid = [i for i in range(len(cands)) if cur["valid"][i]]
    sample = rng.sample(valid, min(20, len(valid)))
    invalid = [i for i in range(len(cands)) if not cur["valid"][i]]
    sample += rng.sample(invalid, min(5, len(invalid)))
    assert valid
    for i in sample:
        g, lay, mbs = cands[i]
        w = sc.workload
        cand = sc.model_copy(update={"num_gpus": g, "layout": lay,
                                     "workload": w.model_copy(update={"micro_batch_size": mbs})})
        if w.global_batch_size % ((g // (lay.tp * lay.pp)) * mbs):
            assert not cur["valid"][i]
            continue
        try:
            est = estimate_resolved(cand, model, hw)
        except InputError:
            assert not cur["valid"][i], cands[i]
            continue
        assert cur["valid"][i], cands[i]
        for field in ("step_s", "tokens_per_s", "memory_per_gpu_bytes", "mfu_frac"):
            assert cur[field][i] == pytest.approx(getattr(est, field), rel=1e-9), (field, cands[i])
        assert bool(cur["fits"][i]) == est.fits


def test_one_candidate_is_the_same_as_many() -> None:
    sc = load_scenario("mixtral-8x22b-train-h100")
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    cands = _candidates(model, hw, 64)
    many = train_curve(sc, model, hw, cands)
    for i in range(0, len(cands), max(1, len(cands) // 7)):
        one = train_curve(sc, model, hw, [cands[i]])
        for field, values in one.items():
            assert values[0] == many[field][i] or (values[0] != values[0] and many[field][i] != many[field][i])


@pytest.mark.parametrize("overrides,virtual_stages", [(["schedule.pipeline=dualpipe", "workload.recompute=full"], 1),
                                                      ([], 2),
                                                      (['workload.recompute_modules=["core_attn", "layernorm"]'], 1)])
def test_micro_batch_sizes_sharing_a_step_composition_equal_the_scalar_estimate(overrides, virtual_stages) -> None:
    """Layouts of different micro-batch sizes with the same stage split are composed in one call (the passes'
    times taken per layout): every valid candidate of a small space equals its scalar estimate."""
    sc = load_scenario("mixtral-8x22b-train-h100", overrides)
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    cands = [(g, lay.model_copy(update={"virtual_stages": virtual_stages}), mbs)
             for g, lay, mbs in _candidates(model, hw, 32) if lay.pp > 1]
    cur = train_curve(sc, model, hw, cands)
    checked = set()
    for i, (g, lay, mbs) in enumerate(cands):
        if not cur["valid"][i]:
            continue
        w = sc.workload
        cand = sc.model_copy(update={"num_gpus": g, "layout": lay,
                                     "workload": w.model_copy(update={"micro_batch_size": mbs})})
        est = estimate_resolved(cand, model, hw)
        for field in ("step_s", "tokens_per_s", "memory_per_gpu_bytes", "mfu_frac"):
            assert cur[field][i] == pytest.approx(getattr(est, field), rel=1e-9), (field, cands[i])
        checked.add(mbs)
    assert checked == {1, 2, 4}
