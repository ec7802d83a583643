"""Closed forms for uniform token-choice routing (the cross-check of the Monte Carlo).

Symbols: E experts, k experts per token, R ranks with ``m = E / R`` experts each,
T tokens per step, C capacity per expert.

With uniform routing a token's k distinct experts are a uniform k-subset, so the
number that land on one rank is hypergeometric(E, m, k); summed over T
independent tokens the rank load ``L_r`` has::

    mean  mu      = T k m / E
    var   sigma^2 = T k (m/E) (1 - m/E) (E - k) / (E - 1)

(the binomial ``Binomial(T k, 1/R)`` of "k independent choices per token" has the
same mean and a variance larger by ``(E - 1)/(E - k)``). The step waits for the
max-loaded rank; treating ranks as independent (they are slightly negatively
correlated, which makes this conservative),
``P(max_r L_r <= x) = F(x)^R`` and its q-quantile is::

    normal:    x_q = mu + sigma * Phi^{-1}(q^(1/R))
    binomial:  smallest x with F_B(x)^R >= q, F_B a binomial with the same mean and variance

and ``E[max] = sum_{x >= 0} (1 - F_B(x)^R)``. Each expert's count is exactly
``Binomial(T, k/E)``, so the expected dropped slots with capacity C are
``E * E[(c - C)^+]``. References: the hypergeometric/binomial facts are standard;
the max-of-ranks view of MoE step time is FasterMoE's (He et al., PPoPP 2022).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["UniformClosedForm", "uniform_closed_form", "binomial_pmf"]

_lgamma = np.vectorize(math.lgamma, otypes=[float])


class UniformClosedForm(BaseModel):
    """Closed-form per-rank load for uniform top-k routing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank_mean_tokens: float = Field(description="Mean routed tokens per rank per step, tokens.")
    rank_std_tokens: float = Field(description="Standard deviation of a rank's tokens per step, tokens.")
    expected_max_tokens: float = Field(description="E[max over ranks], tokens (independent-ranks binomial).")
    p50_max_tokens: float = Field(description="Median of the max-loaded rank's tokens, tokens (binomial).")
    p99_max_tokens: float = Field(description="99th percentile of the max-loaded rank's tokens, tokens (binomial).")
    p99_max_tokens_normal: float = Field(description="99th percentile of the max, normal approximation, tokens.")
    expected_dropped_frac: float | None = Field(
        None, description="Expected dropped slots / routed slots with the capacity, fraction (None = dropless)."
    )


def binomial_pmf(n: float, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Support and pmf of a binomial with (possibly non-integer) n, restricted to mean ± 14 sd."""
    mu = n * p
    sd = math.sqrt(max(n * p * (1 - p), 0.0))
    lo = max(0, int(math.floor(mu - 14 * sd)) - 1)
    hi = min(int(math.floor(n)), int(math.ceil(mu + 14 * sd)) + 1)
    x = np.arange(lo, hi + 1, dtype=float)
    if p <= 0:
        return np.array([0.0]), np.array([1.0])
    if p >= 1:
        return np.array([float(n)]), np.array([1.0])
    logpmf = _lgamma(n + 1) - _lgamma(x + 1) - _lgamma(n - x + 1) + x * math.log(p) + (n - x) * math.log1p(-p)
    pmf = np.exp(logpmf - logpmf.max())
    return x, pmf / pmf.sum()


def _max_quantile(x: np.ndarray, cdf_max: np.ndarray, q: float) -> float:
    return float(x[min(int(np.searchsorted(cdf_max, q - 1e-12)), x.size - 1)])


def uniform_closed_form(
    *, num_experts: int, top_k: int, num_ranks: int, num_tokens: int, capacity_tokens: int | None = None
) -> UniformClosedForm:
    """The formulas of the module docstring (``num_experts`` divisible by ``num_ranks``)."""
    e, k, r, t = num_experts, top_k, num_ranks, num_tokens
    m = e // r
    mu = t * k * m / e
    var = t * k * (m / e) * (1 - m / e) * ((e - k) / (e - 1) if e > 1 else 0.0)
    sd = math.sqrt(var)
    if var <= 0:
        med = p99 = ex = mu
        p99n = mu
    else:
        pb = 1.0 - var / mu  # binomial with matched mean and variance
        nb = mu / pb
        x, pmf = binomial_pmf(nb, pb)
        cdf_max = np.cumsum(pmf) ** r
        ex = float(x[0] + np.sum(1.0 - cdf_max[:-1]))
        med = _max_quantile(x, cdf_max, 0.5)
        p99 = _max_quantile(x, cdf_max, 0.99)
        p99n = mu + sd * NormalDist().inv_cdf(0.99 ** (1.0 / r))
    drop = None
    if capacity_tokens is not None:
        x, pmf = binomial_pmf(t, k / e)
        over = float(np.sum(np.clip(x - capacity_tokens, 0, None) * pmf))
        drop = e * over / (t * k) if t * k else 0.0
    return UniformClosedForm(
        rank_mean_tokens=mu,
        rank_std_tokens=sd,
        expected_max_tokens=ex,
        p50_max_tokens=med,
        p99_max_tokens=p99,
        p99_max_tokens_normal=p99n,
        expected_dropped_frac=drop,
    )
