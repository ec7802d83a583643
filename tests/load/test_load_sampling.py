"""Count-level Monte Carlo against exact references: binomial quantiles, per-token simulation, closed form."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.load.closed_form import binomial_pmf, uniform_closed_form
from moesim.load.routing import inclusion_probs
from moesim.load.sampling import NORMAL_MIN_VAR, binomials, per_token_counts, sample_topk_counts


@pytest.mark.parametrize("n, p", [(16384, 0.0019), (2000, 0.05), (200, 0.5), (16384, 0.93)])
def test_cornish_fisher_binomials_match_exact_quantiles_within_one_token(n: int, p: float) -> None:
    assert n * p * (1 - p) >= NORMAL_MIN_VAR  # this test is about the normal path
    draws = binomials(n, np.array([p]), 200_000, np.random.default_rng(0))[:, 0]
    x, pmf = binomial_pmf(n, p)
    cdf = np.cumsum(pmf)
    for q in (0.001, 0.01, 0.5, 0.99, 0.999):
        exact = x[np.searchsorted(cdf, q)]
        assert abs(np.quantile(draws, q) - exact) <= 1.0, q


def test_topk_counts_conserve_slots_and_never_exceed_the_tokens() -> None:
    p = np.arange(1, 65, dtype=float) ** -2.0  # expert 0 is in nearly every token's top-8
    p /= p.sum()
    pi = inclusion_probs(p, 8)
    c = sample_topk_counts(pi, 300, 8, 500, np.random.default_rng(1))
    assert np.all(c.sum(axis=1) == 300 * 8)
    assert c.min() >= 0 and c.max() <= 300


def test_topk_counts_have_binomial_marginals() -> None:
    pi = inclusion_probs(np.random.default_rng(4).dirichlet(np.full(32, 0.7)), 4)
    t = 500
    c = sample_topk_counts(pi, t, 4, 20_000, np.random.default_rng(2))
    assert np.allclose(c.mean(axis=0), t * pi, atol=0.5)
    var = t * pi * (1 - pi)
    assert np.allclose(c.var(axis=0), var, rtol=0.08, atol=0.5)


def test_count_sampler_agrees_with_exact_per_token_simulation_on_the_max_loaded_rank() -> None:
    # exact reference: every token draws its own Plackett-Luce top-k (slow, so a small layer)
    e, k, ranks, t = 64, 8, 8, 1024
    p = np.arange(1, e + 1, dtype=float) ** -1.0
    p /= p.sum()
    exact = per_token_counts(p, t, k, 300, np.random.default_rng(0))
    approx = sample_topk_counts(inclusion_probs(p, k), t, k, 4000, np.random.default_rng(1))

    def per_rank(c: np.ndarray) -> np.ndarray:
        return c.reshape(c.shape[0], ranks, e // ranks).sum(axis=2)

    le, la = per_rank(exact), per_rank(approx)
    assert np.allclose(la.mean(axis=0), le.mean(axis=0), rtol=0.01)
    assert np.allclose(la.std(axis=0), le.std(axis=0), rtol=0.15)
    me, ma = le.max(axis=1), la.max(axis=1)
    assert ma.mean() == pytest.approx(me.mean(), rel=0.005)
    assert np.quantile(ma, 0.99) == pytest.approx(np.quantile(me, 0.99), rel=0.01)


def test_uniform_closed_form_variance_is_hypergeometric_per_token() -> None:
    cf = uniform_closed_form(num_experts=64, top_k=8, num_ranks=8, num_tokens=1000)
    assert cf.rank_mean_tokens == pytest.approx(1000 * 8 / 8)
    assert cf.rank_std_tokens**2 == pytest.approx(1000 * 8 * (1 / 8) * (7 / 8) * 56 / 63)


def test_one_rank_has_no_imbalance_in_closed_form() -> None:
    cf = uniform_closed_form(num_experts=8, top_k=2, num_ranks=1, num_tokens=100)
    assert cf.rank_std_tokens == 0
    assert cf.p99_max_tokens == cf.expected_max_tokens == 200
