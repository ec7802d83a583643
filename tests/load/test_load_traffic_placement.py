"""Dispatch traffic matrix and expert placement."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from moesim.errors import InputError
from moesim.load.placement import place_experts
from moesim.load.routing import sample_group_limited, sample_topk
from moesim.load.traffic import dispatch_traffic


def simulate(p, k, e2r, ranks, rpn, tokens=100_000, node_limit=None, seed=0):  # noqa: ANN001, ANN201
    rng = np.random.default_rng(seed)
    if node_limit is None:
        idx = sample_topk(p, tokens, k, rng)
    else:
        order = np.argsort(e2r // rpn, kind="stable")
        idx = order[sample_group_limited(p[order], tokens, k, ranks // rpn, node_limit, rng)]
    rk = e2r[idx]
    rows = np.arange(tokens)[:, None]
    hit_r = np.zeros((tokens, ranks), bool)
    hit_r[rows, rk] = True
    hit_n = np.zeros((tokens, ranks // rpn), bool)
    hit_n[rows, rk // rpn] = True
    return np.bincount(rk.ravel(), minlength=ranks) / tokens, hit_r.mean(0), hit_n.mean(0)


def test_uniform_dedup_traffic_is_the_hypergeometric_closed_form() -> None:
    e, k, ranks = 256, 8, 32
    e2r = np.arange(e) // 8
    tm = dispatch_traffic(num_ranks=ranks, tokens_per_rank=1000, top_k=k, probs=np.full(e, 1 / e),
                          expert_to_rank=e2r, bytes_per_token=7168, ranks_per_node=8)
    want = 1000 * 7168 * (1 - comb(e - 8, k) / comb(e, k))
    assert np.allclose(tm.rank_bytes, want)
    want_node = 1000 * 7168 * (1 - comb(e - 64, k) / comb(e, k))
    assert np.allclose(tm.node_bytes, want_node)
    assert tm.rank_bytes.shape == (32, 32) and tm.node_bytes.shape == (32, 4)


def test_one_copy_per_expert_sends_k_copies_per_token() -> None:
    p = np.random.default_rng(0).dirichlet(np.full(64, 0.5))
    tm = dispatch_traffic(num_ranks=8, tokens_per_rank=10, top_k=6, probs=p, expert_to_rank=np.arange(64) % 8,
                          bytes_per_token=2.0, ranks_per_node=4, dedup_per_rank=False)
    assert np.allclose(tm.rank_bytes.sum(axis=1), 10 * 2.0 * 6)


@pytest.mark.parametrize("dist", ["uniform", "skewed"])
def test_traffic_matches_a_per_token_simulation(dist: str) -> None:
    e, k, ranks, rpn = 64, 6, 16, 4
    p = np.full(e, 1 / e) if dist == "uniform" else (lambda q: q / q.sum())(np.arange(1, e + 1) ** -1.0)
    e2r = np.arange(e) % ranks
    copies, hit_r, hit_n = simulate(p, k, e2r, ranks, rpn)
    dedup = dispatch_traffic(num_ranks=ranks, tokens_per_rank=1, top_k=k, probs=p, expert_to_rank=e2r,
                             bytes_per_token=1, ranks_per_node=rpn)
    flat = dispatch_traffic(num_ranks=ranks, tokens_per_rank=1, top_k=k, probs=p, expert_to_rank=e2r,
                            bytes_per_token=1, ranks_per_node=rpn, dedup_per_rank=False)
    tol = 5 * np.sqrt(0.25 / 100_000)
    assert np.allclose(dedup.rank_bytes[3], hit_r, atol=tol)
    assert np.allclose(dedup.node_bytes[3], hit_n, atol=tol)
    assert np.allclose(flat.rank_bytes[3], copies, atol=3 * tol)
    assert np.all(dedup.rank_bytes <= flat.rank_bytes + 1e-12)


def test_node_limited_uniform_is_the_two_stage_closed_form() -> None:
    e, k, ranks, rpn, m = 256, 8, 64, 8, 4
    e2r = np.arange(e) // 4
    tm = dispatch_traffic(num_ranks=ranks, tokens_per_rank=1, top_k=k, probs=np.full(e, 1 / e), expert_to_rank=e2r,
                          bytes_per_token=1, ranks_per_node=rpn, node_limit=m)
    en = e // (ranks // rpn)
    sel = m / (ranks // rpn)
    assert np.allclose(tm.rank_bytes, sel * (1 - comb(m * en - 4, k) / comb(m * en, k)))
    assert np.allclose(tm.node_bytes, sel * (1 - comb((m - 1) * en, k) / comb(m * en, k)))
    # no token reaches more than m nodes: expected nodes per token <= m
    assert tm.node_bytes[0].sum() <= m + 1e-12


def test_node_limited_skewed_traffic_reaches_at_most_the_limit() -> None:
    e, k, ranks, rpn, m = 64, 8, 16, 4, 2
    p = np.random.default_rng(1).dirichlet(np.full(e, 0.5))
    tm = dispatch_traffic(num_ranks=ranks, tokens_per_rank=1, top_k=k, probs=p, expert_to_rank=np.arange(e) % ranks,
                          bytes_per_token=1, ranks_per_node=rpn, node_limit=m)
    assert tm.node_bytes[0].sum() <= m + 1e-12
    unlimited = dispatch_traffic(num_ranks=ranks, tokens_per_rank=1, top_k=k, probs=p, expert_to_rank=np.arange(e) % ranks,
                                 bytes_per_token=1, ranks_per_node=rpn)
    assert tm.inter_node_dedup_bytes < unlimited.inter_node_dedup_bytes


def test_combine_is_the_transpose_and_rows_are_identical() -> None:
    p = np.random.default_rng(2).dirichlet(np.full(32, 1.0))
    tm = dispatch_traffic(num_ranks=8, tokens_per_rank=5, top_k=2, probs=p, expert_to_rank=np.arange(32) // 4,
                          bytes_per_token=3, ranks_per_node=4)
    assert np.allclose(tm.rank_bytes, tm.rank_bytes[0][None, :])
    assert np.allclose(tm.transpose().rank_bytes, tm.rank_bytes.T)
    assert tm.total_bytes == pytest.approx(tm.rank_bytes.sum() - np.trace(tm.rank_bytes))


def test_traffic_scales_to_1024_ranks() -> None:
    tm = dispatch_traffic(num_ranks=1024, tokens_per_rank=4096, top_k=8, probs=np.full(2048, 1 / 2048),
                          expert_to_rank=np.arange(2048) // 2, bytes_per_token=7168, ranks_per_node=8, node_limit=4)
    assert tm.rank_bytes.shape == (1024, 1024) and tm.node_bytes.shape == (1024, 128)


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(num_ranks=6, ranks_per_node=4), "multiple of ranks_per_node"),
        (dict(expert_to_rank=np.arange(8)), "values must lie in 0..3"),
        (dict(top_k=9), "top_k (9) must be between 1 and the number of experts (8)"),
        (dict(node_limit=0), "node_limit must be >= 1"),
    ],
)
def test_traffic_bad_inputs(kw, needle) -> None:  # noqa: ANN001
    base = dict(num_ranks=4, tokens_per_rank=1, top_k=2, probs=np.full(8, 1 / 8), expert_to_rank=np.arange(8) // 2,
                bytes_per_token=1, ranks_per_node=2)
    base.update(kw)
    with pytest.raises(InputError) as info:
        dispatch_traffic(**base)
    assert needle in str(info.value)


# ------------------------------------------------------------------ placement

def test_contiguous_and_round_robin_layouts() -> None:
    w = np.ones(8)
    assert place_experts(w, 4, "contiguous").expert_to_rank.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert place_experts(w, 4, "round_robin").expert_to_rank.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_load_aware_placement_balances_better_than_contiguous() -> None:
    w = np.arange(1, 65, dtype=float) ** -1.0

    def max_load(strategy: str) -> float:
        return float((w @ place_experts(w, 8, strategy).share_matrix()).max())

    assert max_load("load_aware") < max_load("round_robin") < max_load("contiguous")


def test_every_rank_holds_the_same_number_of_experts_and_no_duplicate() -> None:
    w = np.random.default_rng(0).dirichlet(np.full(64, 0.3))
    for strategy in ("contiguous", "round_robin", "load_aware"):
        pl = place_experts(w, 8, strategy, num_redundant=16)
        assert pl.slots_per_rank == (64 + 16) // 8
        assert np.all(pl.experts_per_rank() == (64 + pl.num_redundant_used) // 8)
        assert np.allclose(pl.share_matrix().sum(axis=1), 1.0)
        assert all(len(set(r)) == len(r) for r in pl.expert_ranks)


def test_replicas_go_to_the_hottest_experts() -> None:
    w = np.array([100.0, 1, 1, 1, 1, 1, 1, 1])
    pl = place_experts(w, 4, "load_aware", num_redundant=4)
    assert len(pl.expert_ranks[0]) > 1
    assert pl.num_redundant_used > 0


def test_more_ranks_than_experts_needs_replicas() -> None:
    with pytest.raises(InputError, match="does not divide"):
        place_experts(np.ones(4), 8)
    pl = place_experts(np.ones(4), 8, num_redundant=4)
    assert np.all(pl.experts_per_rank() == 1)


def test_a_placement_that_cannot_hold_the_replicas_is_an_input_error() -> None:
    with pytest.raises(InputError, match="multiple of EP size"):
        place_experts(np.ones(8), 4, num_redundant=3)
    with pytest.raises(InputError, match="unknown placement"):
        place_experts(np.ones(8), 4, "random")  # type: ignore[arg-type]


def test_a_fixed_layout_is_one_placement_for_every_load_and_a_load_aware_one_is_not() -> None:
    skewed = np.arange(1, 17, dtype=float) ** -1.2 * 300.0
    flat = np.full(16, 7.0)
    for strategy in ("contiguous", "round_robin"):
        a, b = place_experts(skewed, 4, strategy), place_experts(flat, 4, strategy)
        assert a.expert_ranks == b.expert_ranks and a.num_redundant_used == b.num_redundant_used == 0
        assert place_experts(flat * 3.0, 4, strategy) is place_experts(flat, 4, strategy)  # one cached entry
        # with a whole rank of replicas to place, the load decides where they go
        assert len(place_experts(skewed, 4, strategy, num_redundant=4).expert_ranks[0]) > 1
    assert place_experts(skewed, 4, "load_aware").expert_ranks != place_experts(skewed[::-1].copy(), 4, "load_aware").expert_ranks
    m = place_experts(skewed, 4).share_matrix()
    assert m is place_experts(skewed, 4).share_matrix() and not m.flags.writeable
    with pytest.raises(ValueError):
        m[0, 0] = 2.0
