"""The pipeline's stage split: the slowest stage for 1F1B, the busiest GPU's pair of stages for DualPipe."""

from __future__ import annotations

import itertools
import random

import pytest

import moesim
from moesim.step import estimate as E
from moesim.step.parallel import Parallel, _balanced, _balanced_pairs

DUALPIPE = "scenarios/validation-e2e/deepseek-v3-pretrain-h800.toml"


def _stage_costs(costs, ends, first_extra, last_extra):
    starts = [0] + list(ends[:-1])
    c = [sum(costs[a:b]) for a, b in zip(starts, ends)]
    c[0] += first_extra
    c[-1] += last_extra
    return c


def _key(c):
    pp = len(c)
    return max(c[j] + c[pp - 1 - j] for j in range(pp // 2 + pp % 2)), max(c)


def _cases(seed, count):
    rng = random.Random(seed)
    for _ in range(count):
        L, pp = rng.randint(3, 12), rng.choice([2, 3, 4, 5, 6, 8])
        if pp <= L:
            yield (tuple(rng.uniform(0.5, 1.5) for _ in range(L)), pp, rng.choice([0.0, 0.7]),
                   rng.choice([0.0, 1.5, 4.0]))


@pytest.mark.parametrize("case", list(_cases(11, 120)))
def test_the_pair_split_is_the_best_contiguous_split_by_pair_then_stage(case):
    costs, pp, fe, le = case
    L = len(costs)
    got = _balanced_pairs(costs, pp, fe, le)
    assert [r.start for r in got] == [0] + [r.stop for r in got[:-1]] and got[-1].stop == L
    assert all(len(r) >= 1 for r in got)
    k = _key(_stage_costs(costs, [r.stop for r in got], fe, le))
    keys = [_key(_stage_costs(costs, list(cut) + [L], fe, le)) for cut in itertools.combinations(range(1, L), pp - 1)]
    best_pair = min(p for p, _ in keys)
    assert k[0] <= best_pair * (1 + 1e-3)  # the binary search's tolerance
    # and the slowest stage no slower than any split whose largest pair is as small
    assert k[1] <= min(st for p, st in keys if p <= k[0] * (1 + 1e-9)) * (1 + 1e-3)


def test_dualpipe_balances_each_gpus_pair_where_the_slowest_stage_split_leaves_slack():
    # the LM head's stage is the slowest whatever the split; its partner, the embedding's stage, may then take a
    # layer that the minimax split of single stages gives it and that lands on the pair
    costs, pp, fe, le = (1.0,) * 9, 4, 0.0, 2.5
    single = _balanced(costs, pp, fe, le)
    pairs = _balanced_pairs(costs, pp, fe, le)
    k_single = _key(_stage_costs(costs, [r.stop for r in single], fe, le))
    k_pairs = _key(_stage_costs(costs, [r.stop for r in pairs], fe, le))
    assert k_pairs[0] < k_single[0]
    assert [len(r) for r in pairs] == [2, 3, 3, 1]


def test_the_dualpipe_scenario_splits_by_pairs_and_1f1b_by_stages():
    # per-tensor FP8 GEMMs (delayed scaling) run at the full FP8 speed: the layers are cheap against the LM head's
    # stage, and the split for single stages then gives the embedding's stage a fifth layer
    over = ["workload.fp8_scaling=delayed"]
    sc = moesim.load_scenario(DUALPIPE, over)
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    par = Parallel.of(sc, hw.node.accelerators_per_node)
    fwd, bwd = E._train_passes(sc, model, hw, par, detail=True)
    dual = E._train_stages(sc, model, par, fwd, bwd)
    plain = E._train_stages(moesim.load_scenario(DUALPIPE, over + ["schedule.pipeline=1f1b"]), model, par, fwd, bwd)
    assert dual != plain
    assert sum(len(s) for s in dual) == model.num_layers

    def worst_pair(stages):
        t = [len(s) for s in stages]
        return max(t[j] + t[-1 - j] for j in range(len(t) // 2))

    # 4 layers on every stage but the last, which carries the LM heads and the MTP module beside its one layer
    assert [len(s) for s in dual] == [4] * 15 + [1]
    assert worst_pair(dual) <= worst_pair(plain)
