"""Routers and the routing probabilities they induce.

Symbols: E experts, k experts per token (top-k), T tokens, p the per-slot expert
probabilities of a routing distribution (:mod:`moesim.load.distributions`).

**Per-token scores.** A token's router logits are modelled as ``log p_e + g_e``
with ``g_e`` i.i.d. standard Gumbel noise. This is the one i.i.d. noise model in
which the top-1 choice is expert ``e`` with probability exactly ``p_e``; top-k
is then sequential sampling without replacement proportional to ``p``
(Plackett-Luce; the Gumbel top-k trick, Kool, van Hoof, Welling, ICML 2019,
arXiv 1903.06059). Softmax and sigmoid scoring are monotone in the logits, so
they select the same experts; scoring changes the combine weights, not the load.

**Inclusion probabilities** ``pi_e = P(e in a token's top-k)`` (sum k) follow from
the exponential-race form of Plackett-Luce: expert j "arrives" at
``X_j ~ Exp(p_j)`` and a token takes the first k arrivals, so::

    P(a set S of experts is hit) = ∫_0^∞ p_S e^{-p_S t} P(N_{-S}(t) <= k-1) dt

where ``p_S = sum_{j in S} p_j`` and ``N_{-S}(t)`` (arrivals outside S by time t)
is Poisson-binomial with success probabilities ``1 - exp(-p_j t)``. With
``S = {e}`` this is ``pi_e``; with S = the experts of one rank it is the chance
that a token sends a copy to that rank (:mod:`moesim.load.traffic`). The
integral is evaluated by the trapezoid rule on a log-spaced grid of t (exact to
~1e-10 for smooth integrands); the Poisson-binomial of the complement of each
set comes from truncated generating-function products, leave-one-out over a
binary tree. Uniform ``p`` uses the closed forms ``pi = k/E`` and
``P(hit S) = 1 - C(E-|S|, k) / C(E, k)``.

**Routers** (a discriminated union on ``kind``):

* ``top_k``: token-choice top-k (GShard, arXiv 2006.16668), softmax or sigmoid scoring.
* ``switch``: top-1 (Switch Transformer, arXiv 2101.03961).
* ``group_limited``: the token first picks ``topk_groups`` of ``num_groups``
  contiguous expert groups by group score, then its top-k inside them
  (DeepSeek-V3 node-limited routing, arXiv 2412.19437 section 2.1.2: group score
  = sum of the top k/topk_groups affinities; DeepSeek-V2's device-limited
  routing uses the max). No closed form: its inclusion probabilities come from a
  seeded per-token simulation (cached).
* ``threshold``: every expert whose score clears a threshold; under the Gumbel
  model expert e is taken independently with ``q_e = 1 - exp(-lam p_e)`` and
  ``lam`` is set so that ``sum q_e`` equals the mean experts per token. A token
  may take none.
* ``expert_choice``: each expert takes its top-C tokens (Zhou et al., arXiv
  2202.09368), ``C = ceil(capacity_factor * T * k / E)``: balanced by construction;
  tokens get a variable number of experts, some none.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import InputError

__all__ = [
    "TopK",
    "Switch",
    "GroupLimited",
    "Threshold",
    "ExpertChoice",
    "Router",
    "ROUTER_KINDS",
    "sample_topk",
    "sample_group_limited",
    "inclusion_probs",
    "set_hit_probs",
    "group_limited_inclusion",
    "threshold_inclusion",
    "is_uniform",
]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TopK(_Spec):
    """Token-choice top-k: each token takes its k highest-scoring experts."""

    kind: Literal["top_k"] = "top_k"
    scoring: Literal["softmax", "sigmoid"] = Field("softmax", description="Score function (no unit); does not change which experts win.")


class Switch(_Spec):
    """Switch routing: top-1 with softmax scoring (top_k must be 1)."""

    kind: Literal["switch"] = "switch"


class GroupLimited(_Spec):
    """Group- (node-) limited top-k: experts split into contiguous groups; a token uses at most ``topk_groups`` groups."""

    kind: Literal["group_limited"] = "group_limited"
    num_groups: int = Field(ge=1, description="Contiguous expert groups, count (DeepSeek-V3: 8, one per node).")
    topk_groups: int = Field(ge=1, description="Groups a token may use, count (DeepSeek-V3: 4).")
    group_score: Literal["top_sum", "max"] = Field(
        "top_sum", description="Group score: sum of the top k/topk_groups scores (V3) or the max (V2)."
    )
    scoring: Literal["softmax", "sigmoid"] = Field("sigmoid", description="Score function (V3: sigmoid).")

    @model_validator(mode="after")
    def _groups(self) -> "GroupLimited":
        if self.topk_groups > self.num_groups:
            raise ValueError(f"topk_groups ({self.topk_groups}) cannot exceed num_groups ({self.num_groups})")
        return self


class Threshold(_Spec):
    """Threshold routing: every expert whose score clears a threshold (variable experts per token)."""

    kind: Literal["threshold"] = "threshold"
    mean_experts_per_token: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Mean routed experts per token, count; None = top_k."
    )


class ExpertChoice(_Spec):
    """Expert-choice routing: each expert takes its top-C tokens; C from the capacity factor."""

    kind: Literal["expert_choice"] = "expert_choice"


Router = Annotated[Union[TopK, Switch, GroupLimited, Threshold, ExpertChoice], Field(discriminator="kind")]
ROUTER_KINDS = ("top_k", "switch", "group_limited", "threshold", "expert_choice")


# ------------------------------------------------------------------ sampling per token

def _check_probs(probs: np.ndarray, top_k: int) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise InputError(f"probs must be a non-empty 1-D array, got shape {p.shape}", field="probs")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise InputError("probs must be finite, >= 0 and not all zero", field="probs")
    if not 1 <= top_k <= p.size:
        raise InputError(f"top_k ({top_k}) must be between 1 and the number of experts ({p.size})", field="top_k")
    return p / p.sum()


def _gumbel_keys(p: np.ndarray, num_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Per-token keys ``log p_e + Gumbel``; zero-probability experts rank below every positive one."""
    g = rng.gumbel(size=(num_tokens, p.size))
    with np.errstate(divide="ignore"):
        logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), -1e6)
    return logp + g


def sample_topk(probs: np.ndarray, num_tokens: int, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """Expert ids, int64 ``[num_tokens, top_k]``, distinct within a row, in decreasing score order.

    Exact Plackett-Luce sampling by the Gumbel top-k trick: row t is the top-k of
    ``log p + g_t``. Used by the runner to force routing and by the tests as the
    exact per-token reference for the count-level approximations.
    """
    p = _check_probs(probs, top_k)
    out = np.empty((num_tokens, top_k), dtype=np.int64)
    chunk = max(1, 2_000_000 // p.size)
    for s in range(0, num_tokens, chunk):
        keys = _gumbel_keys(p, min(chunk, num_tokens - s), rng)
        if top_k < p.size:
            idx = np.argpartition(-keys, top_k - 1, axis=1)[:, :top_k]
        else:
            idx = np.broadcast_to(np.arange(p.size), keys.shape).copy()
        order = np.argsort(-np.take_along_axis(keys, idx, axis=1), axis=1)
        out[s : s + keys.shape[0]] = np.take_along_axis(idx, order, axis=1)
    return out


def sample_group_limited(
    probs: np.ndarray,
    num_tokens: int,
    top_k: int,
    num_groups: int,
    topk_groups: int,
    rng: np.random.Generator,
    group_score: Literal["top_sum", "max"] = "top_sum",
) -> np.ndarray:
    """Expert ids ``[num_tokens, top_k]`` under group-limited routing (see module docstring).

    Scores are ``p_e * exp(g_e)`` (the softmax numerators of the Gumbel logits);
    a group's score is the sum of its top ``max(1, k // topk_groups)`` scores
    (``top_sum``, DeepSeek-V3) or its best score (``max``).
    """
    p = _check_probs(probs, top_k)
    e = p.size
    if e % num_groups:
        raise InputError(f"num_experts ({e}) must be divisible by num_groups ({num_groups})", field="router.num_groups")
    per = e // num_groups
    if top_k > topk_groups * per:
        raise InputError(
            f"top_k ({top_k}) exceeds the {topk_groups * per} experts in topk_groups ({topk_groups}) groups of {per}",
            field="top_k",
        )
    take = max(1, top_k // topk_groups) if group_score == "top_sum" else 1
    take = min(take, per)
    out = np.empty((num_tokens, top_k), dtype=np.int64)
    chunk = max(1, 2_000_000 // e)
    for s in range(0, num_tokens, chunk):
        n = min(chunk, num_tokens - s)
        keys = _gumbel_keys(p, n, rng)
        g = keys.reshape(n, num_groups, per)
        if take == 1:
            gscore = g.max(axis=2)
        else:
            # sum of the top `take` softmax numerators, shifted by the row max for stability
            top = -np.partition(-g, take - 1, axis=2)[:, :, :take]
            m = keys.max(axis=1)[:, None, None]
            gscore = np.log(np.exp(top - m).sum(axis=2))
        if topk_groups < num_groups:
            keep = np.argpartition(-gscore, topk_groups - 1, axis=1)[:, :topk_groups]
            mask = np.ones((n, num_groups), dtype=bool)
            np.put_along_axis(mask, keep, False, axis=1)
            g = np.where(mask[:, :, None], -np.inf, g)
        k2 = g.reshape(n, e)
        idx = np.argpartition(-k2, top_k - 1, axis=1)[:, :top_k] if top_k < e else np.broadcast_to(np.arange(e), k2.shape).copy()
        order = np.argsort(-np.take_along_axis(k2, idx, axis=1), axis=1)
        out[s : s + n] = np.take_along_axis(idx, order, axis=1)
    return out


# ------------------------------------------------------------------ inclusion probabilities

def is_uniform(p: np.ndarray) -> bool:
    return bool(np.all(p == p[0])) or bool(np.ptp(p) <= 1e-15 * p.max())


def _polymul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Product of polynomials (coefficients on the last axis) truncated to the same length."""
    k = a.shape[-1]
    out = a[..., :1] * b
    for i in range(1, k):
        out[..., i:] += a[..., i : i + 1] * b[..., : k - i]
    return out


def _leave_one_out(polys: np.ndarray) -> np.ndarray:
    """For polys ``[..., G, K]`` return, for each g, the product of all the others (truncated)."""
    g, k = polys.shape[-2:]
    size = 1 << max(0, (g - 1).bit_length())
    if size != g:
        pad = np.zeros(polys.shape[:-2] + (size - g, k))
        pad[..., 0] = 1.0
        polys = np.concatenate([polys, pad], axis=-2)
    levels = [polys]
    while levels[-1].shape[-2] > 1:
        lv = levels[-1]
        levels.append(_polymul(lv[..., 0::2, :], lv[..., 1::2, :]))
    excl = np.zeros(polys.shape[:-2] + (1, k))
    excl[..., 0] = 1.0
    for lv in reversed(levels[:-1]):
        left, right = lv[..., 0::2, :], lv[..., 1::2, :]
        ex = np.stack([_polymul(excl, right), _polymul(excl, left)], axis=-2)
        excl = ex.reshape(ex.shape[:-3] + (ex.shape[-3] * 2, k))
    return excl[..., :g, :]


_STEP = 0.25


def _hit_probs_integral(p: np.ndarray, k: int, members: np.ndarray) -> np.ndarray:
    """P(set g is hit by a token's top-k) for sets given as ``members[g, j]`` item ids (-1 = padding).

    The exponential-race integral of the module docstring; ``p`` sums to 1.
    """
    pos = p[p > 0]
    # Written as P(hit S) = 1 - ∫ p_S e^{-p_S t} P(N_{-S}(t) >= k) dt: the integrand vanishes like
    # t^(k+1) at 0 (P(N >= k) <= t^k / k! when sum p = 1), so the grid starts where it is < 1e-16.
    t_lo = (1e-16 * math.factorial(k)) ** (1.0 / k)
    t_hi = 40.0 / pos.min()
    # trapezoid on the real line x = log t: the integrand is analytic in a strip around the axis,
    # so the error falls like exp(-c / h); h = min(0.25, 0.8 / sqrt(k)) gives ~1e-11 or better
    # (checked against enumeration and against sum(pi) = k)
    # P(N >= k) switches from 0 to 1 over a width ~ 1/sqrt(k) in log t: the step shrinks with k
    step = min(_STEP, 0.8 / math.sqrt(k))
    n = int(math.ceil((math.log(t_hi) - math.log(t_lo)) / step)) + 1
    x = np.linspace(math.log(t_lo), math.log(t_hi), n)
    t = np.exp(x)
    w = np.full(n, x[1] - x[0])
    w[0] *= 0.5
    w[-1] *= 0.5
    pm = np.where(members >= 0, p[np.maximum(members, 0)], 0.0)  # [G, J]
    p_set = pm.sum(axis=1)  # [G]
    # item polynomials (1 - q) + q z, truncated to k coefficients (counts 0..k-1)
    q = -np.expm1(-pm[None, :, :] * t[:, None, None])  # [n, G, J]
    poly = np.zeros((n, members.shape[0], k))
    poly[..., 0] = 1.0
    for j in range(members.shape[1]):
        item = np.zeros_like(poly)
        item[..., 0] = 1.0 - q[:, :, j]
        if k > 1:
            item[..., 1] = q[:, :, j]
        poly = _polymul(poly, item)
    loo = _leave_one_out(poly)  # [n, G, k]
    tail = np.clip(1.0 - loo.sum(axis=-1), 0.0, 1.0)  # P(N_{-S}(t) >= k)
    dens = p_set[None, :] * t[:, None] * np.exp(-p_set[None, :] * t[:, None])  # per unit of x
    hit = 1.0 - (w[:, None] * dens * tail).sum(axis=0)
    hit = np.where(p_set > 0, hit, 0.0)  # a set of zero-probability experts is never hit (nnz > k here)
    return np.clip(hit, 0.0, 1.0)


@lru_cache(maxsize=64)
def _inclusion_cached(pbytes: bytes, k: int) -> np.ndarray:
    p = np.frombuffer(pbytes, dtype=float)
    e = p.size
    nnz = int(np.count_nonzero(p))
    if k >= e:
        return np.ones(e)
    if nnz <= k:  # every positive expert is taken; the rest of the slots go to the zero ones uniformly
        pi = np.where(p > 0, 1.0, (k - nnz) / max(e - nnz, 1))
        return pi
    if is_uniform(p):
        return np.full(e, k / e)
    if k == 1:
        return p.copy()
    pi = _hit_probs_integral(p, k, np.arange(e)[:, None])
    return pi


def inclusion_probs(probs: np.ndarray, top_k: int) -> np.ndarray:
    """``pi_e = P(expert e is among a token's top_k)`` under Plackett-Luce top-k; sums to ``top_k``.

    See the module docstring for the integral. ``p_e <= pi_e <= 1``: a token uses
    an expert at most once, so hot experts saturate below ``top_k * p_e`` and the
    slots they cannot take raise the cold experts above it.
    """
    p = _check_probs(probs, top_k)
    out = _inclusion_cached(p.tobytes(), int(top_k)).copy()
    out.setflags(write=True)
    return out


def _miss_uniform(num_experts: int, set_sizes: np.ndarray, k: int) -> np.ndarray:
    """``C(E - m, k) / C(E, k) = prod_{i<k} (E - m - i) / (E - i)`` for each set size m (0 when m > E - k)."""
    m = np.asarray(set_sizes, dtype=float)
    i = np.arange(k, dtype=float)
    ratio = (num_experts - m[..., None] - i) / (num_experts - i)
    return np.where(np.all(ratio > 0, axis=-1), np.prod(np.clip(ratio, 0, None), axis=-1), 0.0)


def set_hit_probs(probs: np.ndarray, top_k: int, set_of_expert: np.ndarray, num_sets: int) -> np.ndarray:
    """P(a token's top-k touches set s), for disjoint sets given by ``set_of_expert[e]`` (-1 = in no set).

    Exact (module docstring): closed form for uniform probabilities, the
    exponential-race integral otherwise.
    """
    p = _check_probs(probs, top_k)
    soe = np.asarray(set_of_expert, dtype=np.int64)
    e = p.size
    sizes = np.bincount(soe[soe >= 0], minlength=num_sets)[:num_sets]
    if top_k >= e:
        return (sizes > 0).astype(float)
    if is_uniform(p):
        return 1.0 - _miss_uniform(e, sizes, top_k)
    nnz = int(np.count_nonzero(p))
    if nnz <= top_k:
        pos = np.bincount(soe[(soe >= 0) & (p > 0)], minlength=num_sets)[:num_sets] > 0
        zeros = np.bincount(soe[(soe >= 0) & (p == 0)], minlength=num_sets)[:num_sets]
        miss_zero = _miss_uniform(e - nnz, zeros, top_k - nnz) if top_k > nnz else np.ones(num_sets)
        return np.where(pos, 1.0, 1.0 - miss_zero)
    return _set_hit_cached(p.tobytes(), int(top_k), soe.tobytes(), int(num_sets)).copy()


@lru_cache(maxsize=64)
def _set_hit_cached(pbytes: bytes, k: int, soebytes: bytes, num_sets: int) -> np.ndarray:
    p = np.frombuffer(pbytes, dtype=float)
    soe = np.frombuffer(soebytes, dtype=np.int64)
    sizes = np.bincount(soe[soe >= 0], minlength=num_sets)[:num_sets]
    width = max(1, int(sizes.max()) if sizes.size else 1)
    members = -np.ones((num_sets, width), dtype=np.int64)
    order = np.argsort(soe, kind="stable")
    order = order[soe[order] >= 0]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    slot = np.arange(order.size) - starts[soe[order]]
    members[soe[order], slot] = order
    # experts in no set still compete for the k slots: add them as singleton sets, then drop them
    free = np.flatnonzero(soe < 0)
    if free.size:
        extra = -np.ones((free.size, width), dtype=np.int64)
        extra[:, 0] = free
        members = np.concatenate([members, extra])
    hit = _hit_probs_integral(p, k, members)[:num_sets]
    return np.where(sizes > 0, hit, 0.0)


@lru_cache(maxsize=32)
def _group_limited_cached(
    pbytes: bytes, k: int, num_groups: int, topk_groups: int, group_score: str, num_tokens: int, seed: int
) -> np.ndarray:
    p = np.frombuffer(pbytes, dtype=float)
    rng = np.random.default_rng(seed)
    idx = sample_group_limited(p, num_tokens, k, num_groups, topk_groups, rng, group_score)  # type: ignore[arg-type]
    counts = np.bincount(idx.ravel(), minlength=p.size).astype(float)
    return counts / num_tokens


def group_limited_inclusion(
    probs: np.ndarray,
    top_k: int,
    router: GroupLimited,
    *,
    num_tokens: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Inclusion probabilities under group-limited routing, from a seeded per-token simulation (cached).

    ``num_tokens`` defaults to 32768, fewer for many experts (tokens x experts
    near 2^24, at least 4096). Standard error of each entry ``sqrt(pi (1 - pi) / num_tokens)``. When
    ``topk_groups == num_groups`` the limit is inactive and the exact
    :func:`inclusion_probs` is returned.
    """
    p = _check_probs(probs, top_k)
    if router.topk_groups >= router.num_groups:
        return inclusion_probs(p, top_k)
    if is_uniform(p):
        return np.full(p.size, top_k / p.size)  # symmetric: every expert alike
    n = int(num_tokens) if num_tokens is not None else int(min(32768, max(4096, (1 << 24) // p.size)))
    return _group_limited_cached(
        p.tobytes(), int(top_k), router.num_groups, router.topk_groups, router.group_score, n, seed
    ).copy()


def threshold_inclusion(probs: np.ndarray, mean_experts: float) -> np.ndarray:
    """``q_e = 1 - exp(-lam p_e)`` with ``lam`` solving ``sum_e q_e = mean_experts`` (bisection on log lam).

    Raises :class:`InputError` when ``mean_experts`` is not below the number of
    experts with positive probability.
    """
    p = np.asarray(probs, dtype=float)
    p = p / p.sum()
    nnz = int(np.count_nonzero(p))
    if not 0 < mean_experts < nnz:
        raise InputError(
            f"mean experts per token ({mean_experts}) must be > 0 and below the {nnz} experts with positive probability",
            field="router.mean_experts_per_token",
        )
    lo, hi = math.log(mean_experts) - 1.0, math.log(mean_experts) + 5.0
    while float(-np.expm1(-math.exp(hi) * p).sum()) < mean_experts:
        hi += 5.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        s = float(-np.expm1(-math.exp(mid) * p).sum())
        if s < mean_experts:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return -np.expm1(-math.exp(0.5 * (lo + hi)) * p)
