"""Top-k sampling, exact inclusion / set-hit probabilities, and the router variants."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.errors import InputError
from moesim.load.routing import (
    GroupLimited,
    group_limited_inclusion,
    inclusion_probs,
    sample_group_limited,
    sample_topk,
    set_hit_probs,
    threshold_inclusion,
)


def plackett_luce_sets(p: np.ndarray, k: int):
    """Every ordered top-k sequence with its probability (sequential sampling without replacement)."""
    for seq in itertools.permutations(range(p.size), k):
        prob, rest = 1.0, 1.0
        for j in seq:
            prob *= p[j] / rest
            rest -= p[j]
        yield seq, prob


def enumerate_inclusion(p: np.ndarray, k: int) -> np.ndarray:
    pi = np.zeros(p.size)
    for seq, prob in plackett_luce_sets(p, k):
        pi[list(seq)] += prob
    return pi


@pytest.mark.parametrize("e, k, alpha", [(5, 2, 0.3), (6, 3, 1.0), (7, 4, 0.1), (8, 5, 3.0), (6, 5, 0.5)])
def test_inclusion_probs_match_exhaustive_enumeration(e: int, k: int, alpha: float) -> None:
    p = np.random.default_rng(e * 10 + k).dirichlet(np.full(e, alpha))
    assert np.allclose(inclusion_probs(p, k), enumerate_inclusion(p, k), atol=1e-11, rtol=0)


def test_set_hit_probs_match_exhaustive_enumeration() -> None:
    p = np.random.default_rng(3).dirichlet(np.full(8, 0.6))
    sets = np.array([0, 0, 1, 1, 1, 2, -1, 2])  # expert 6 in no set
    want = np.zeros(3)
    for seq, prob in plackett_luce_sets(p, 3):
        hit = {sets[j] for j in seq if sets[j] >= 0}
        for s in hit:
            want[s] += prob
    assert np.allclose(set_hit_probs(p, 3, sets, 3), want, atol=1e-11, rtol=0)


def test_uniform_set_hits_are_hypergeometric() -> None:
    e, k = 64, 6
    sets = np.arange(e) // 8
    want = 1 - comb(e - 8, k) / comb(e, k)
    assert np.allclose(set_hit_probs(np.full(e, 1 / e), k, sets, 8), want)


@settings(max_examples=40, deadline=None)
@given(
    e=st.integers(2, 40),
    data=st.data(),
    alpha=st.floats(0.05, 20.0),
    seed=st.integers(0, 10_000),
)
def test_inclusion_probs_sum_to_k_and_stay_in_unit_interval(e: int, data, alpha: float, seed: int) -> None:  # noqa: ANN001
    k = data.draw(st.integers(1, e))
    p = np.random.default_rng(seed).dirichlet(np.full(e, alpha))
    pi = inclusion_probs(p, k)
    assert pi.sum() == pytest.approx(k, abs=1e-8)
    assert np.all(pi >= -1e-12) and np.all(pi <= 1 + 1e-12)
    # the first choice alone gives pi_e >= p_e; more popular experts are included more often
    assert np.all(pi >= p - 1e-9)
    order = np.argsort(p)
    assert np.all(np.diff(pi[order]) >= -1e-9)


def test_zero_probability_experts_are_used_only_to_fill_k() -> None:
    p = np.array([0.5, 0.5, 0.0, 0.0, 0.0])
    assert np.allclose(inclusion_probs(p, 2), [1, 1, 0, 0, 0])
    assert np.allclose(inclusion_probs(p, 3), [1, 1, 1 / 3, 1 / 3, 1 / 3])
    rows = sample_topk(p, 500, 3, np.random.default_rng(0))
    assert all({0, 1} <= set(r) for r in rows.tolist())


def test_sample_topk_rows_are_distinct_experts_with_the_inclusion_marginals() -> None:
    p = np.arange(1, 33, dtype=float) ** -1.1
    p /= p.sum()
    n = 60_000
    rows = sample_topk(p, n, 4, np.random.default_rng(7))
    assert rows.shape == (n, 4) and rows.dtype == np.int64
    assert np.all(np.sort(rows, axis=1)[:, 1:] != np.sort(rows, axis=1)[:, :-1])
    emp = np.bincount(rows.ravel(), minlength=32) / n
    pi = inclusion_probs(p, 4)
    se = np.sqrt(pi * (1 - pi) / n)
    assert np.all(np.abs(emp - pi) < 5 * se + 1e-12)


def test_sample_topk_is_deterministic_for_a_seed() -> None:
    p = np.full(16, 1 / 16)
    a = sample_topk(p, 100, 2, np.random.default_rng(1))
    b = sample_topk(p, 100, 2, np.random.default_rng(1))
    assert np.array_equal(a, b)


def test_top_k_larger_than_experts_is_an_input_error() -> None:
    with pytest.raises(InputError, match="top_k"):
        inclusion_probs(np.full(4, 0.25), 5)


def test_group_limited_tokens_use_at_most_topk_groups() -> None:
    p = np.random.default_rng(0).dirichlet(np.full(64, 0.5))
    rows = sample_group_limited(p, 5000, 8, 8, 3, np.random.default_rng(1))
    groups_used = np.array([len(set(r)) for r in (rows // 8).tolist()])
    assert groups_used.max() <= 3
    assert np.all(np.sort(rows, axis=1)[:, 1:] != np.sort(rows, axis=1)[:, :-1])


def test_group_limit_concentrates_load_on_popular_groups() -> None:
    # group 0 holds the hot experts: limiting groups makes it hotter than plain top-k
    p = np.ones(32)
    p[:8] = 4.0
    p /= p.sum()
    router = GroupLimited(num_groups=4, topk_groups=1)
    limited = group_limited_inclusion(p, 4, router)
    plain = inclusion_probs(p, 4)
    assert limited[:8].sum() > plain[:8].sum()
    assert limited.sum() == pytest.approx(4.0)


def test_group_limit_inactive_when_all_groups_allowed() -> None:
    p = np.random.default_rng(2).dirichlet(np.full(16, 1.0))
    router = GroupLimited(num_groups=4, topk_groups=4)
    assert np.allclose(group_limited_inclusion(p, 3, router), inclusion_probs(p, 3))


def test_threshold_inclusion_has_the_requested_mean_and_follows_popularity() -> None:
    p = np.arange(1, 65, dtype=float) ** -1.0
    p /= p.sum()
    q = threshold_inclusion(p, 6.0)
    assert q.sum() == pytest.approx(6.0, abs=1e-9)
    assert np.all(np.diff(q) <= 0)
    with pytest.raises(InputError, match="mean experts per token"):
        threshold_inclusion(p, 64.0)
