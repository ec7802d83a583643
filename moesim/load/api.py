"""Expert load of one MoE layer: per-rank tokens, imbalance, drops, placement, decode reads.

:func:`expert_load` is the entry point (also ``moesim.expert_load``). It is a
pure function of a frozen :class:`LoadSpec` and returns a typed
:class:`ExpertLoad`. The method (docs/load.md has the full derivation):

1. ``p`` from the routing distribution; ``pi`` the probability that a token
   uses each expert under the router (:mod:`moesim.load.routing`).
2. Placement of experts (and redundant replicas) on the R ranks from the
   expected tokens ``T * pi_e`` (:mod:`moesim.load.placement`), giving a share
   matrix ``A[e, r]``.
3. S seeded Monte Carlo samples of per-expert counts ``c[s, e]``
   (:mod:`moesim.load.sampling`); with capacity C the kept tokens are
   ``min(c, C)``. Rank loads ``L = kept @ A``; per-rank mean / p50 / p99 and the
   max over ranks per sample (the straggler that sets the layer's time).
4. Imbalance: ``E[max_r L_r] / mean_r L_r``, the coefficient of variation
   across ranks, and the Switch auxiliary loss ``E * sum_e f_e P_e``.
5. Decode reads: the expected number of distinct experts each rank touches,
   ``sum_e (1 - (1 - pi_e a_er)^T)`` (exact for independent tokens).
6. For uniform top-k without replicas, the closed form of
   :mod:`moesim.load.closed_form` as a cross-check.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import InputError, from_validation_error
from ..model import ModelSpec
from .closed_form import UniformClosedForm, uniform_closed_form
from .distributions import Distribution, LayerDistributions, Uniform, expert_probs, parse_distribution
from .placement import PlacementStrategy, check_layout, place_experts
from .routing import (
    ExpertChoice,
    GroupLimited,
    Router,
    Switch,
    Threshold,
    TopK,
    group_limited_inclusion,
    inclusion_probs,
    is_uniform,
    threshold_inclusion,
)
from .sampling import sample_independent_counts, sample_topk_counts

__all__ = [
    "LoadSpec",
    "ExpertLoad",
    "RankLoad",
    "MaxLoad",
    "Imbalance",
    "CapacityStats",
    "DecodeReads",
    "PlacementSummary",
    "LayerLoads",
    "expert_load",
    "expert_load_layers",
    "load_spec_from_model",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoadSpec(_Model):
    """Inputs of one expert-load evaluation (one MoE layer, one step)."""

    num_experts: int = Field(ge=1, description="Routed experts E, count.")
    top_k: int = Field(ge=1, description="Routed experts per token k, count (the mean for threshold routing).")
    ep_size: int = Field(ge=1, description="Expert-parallel ranks R, count.")
    num_tokens: int = Field(ge=1, description="Tokens entering the layer per step, summed over the EP group, count.")
    distribution: Distribution = Field(default_factory=Uniform, description="Routing distribution (per-slot expert probabilities).")
    router: Router = Field(default_factory=TopK, description="Router kind.")
    capacity_factor: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="Capacity factor, dimensionless: C = ceil(cf * T * k / E) per expert; None = dropless.",
    )
    placement: PlacementStrategy = Field("contiguous", description="Expert placement over ranks.")
    num_redundant_experts: int = Field(0, ge=0, description="Redundant replicas of hot experts (EPLB), count.")
    bytes_per_expert: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Weight bytes of one expert, bytes (replica memory, decode reads)."
    )
    bytes_per_token: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Bytes of one token copy in a dispatch buffer, bytes (padding memory)."
    )
    num_samples: int = Field(256, ge=1, description="Monte Carlo samples (steps), count.")
    seed: int = Field(0, ge=0, description="Seed of the Monte Carlo (numpy PCG64), >= 0.")

    @model_validator(mode="after")
    def _check(self) -> "LoadSpec":
        e, k = self.num_experts, self.top_k
        if k > e:
            raise ValueError(f"top_k ({k}) cannot exceed num_experts ({e})")
        if isinstance(self.router, Switch) and k != 1:
            raise ValueError(f"the switch router routes top-1; top_k is {k}")
        if isinstance(self.router, GroupLimited):
            g, tg = self.router.num_groups, self.router.topk_groups
            if e % g:
                raise ValueError(f"num_experts ({e}) must be divisible by router.num_groups ({g})")
            if k > tg * (e // g):
                raise ValueError(f"top_k ({k}) exceeds the {tg * (e // g)} experts in router.topk_groups ({tg}) groups of {e // g}")
        if isinstance(self.router, Threshold):
            mean = self.router.mean_experts_per_token or k
            if mean >= e:
                raise ValueError(f"mean experts per token ({mean}) must be below num_experts ({e}) for threshold routing")
        return self

    @property
    def tokens_per_rank(self) -> float:
        return self.num_tokens / self.ep_size

    @property
    def routed_slots(self) -> int:
        """T * k: (token, expert) pairs per step for token-choice routers."""
        return self.num_tokens * self.top_k

    @property
    def capacity_tokens(self) -> int | None:
        """Capacity per expert C = ceil(cf * T * k / E), tokens; expert-choice defaults cf to 1."""
        cf = self.capacity_factor
        if cf is None and isinstance(self.router, ExpertChoice):
            cf = 1.0
        if cf is None:
            return None
        return int(math.ceil(cf * self.num_tokens * self.top_k / self.num_experts - 1e-9))


# ------------------------------------------------------------------ results

class RankLoad(_Model):
    """Load of one expert-parallel rank per step."""

    rank: int = Field(description="Rank index.")
    num_experts: int = Field(description="Physical experts (replicas included) on the rank, count.")
    expected_tokens: float = Field(description="Mean tokens processed per step (kept tokens with a capacity), tokens.")
    p50_tokens: float = Field(description="Median tokens per step, tokens.")
    p99_tokens: float = Field(description="99th percentile tokens per step, tokens.")
    max_frac: float = Field(description="Fraction of steps in which this rank is the max-loaded one, fraction.")
    expected_distinct_experts: float = Field(description="Mean distinct experts with at least one token per step, count.")


class MaxLoad(_Model):
    """The max-loaded rank per step (the straggler that sets the layer's time)."""

    mean_tokens: float = Field(description="E[max over ranks], tokens.")
    p50_tokens: float = Field(description="Median of the max, tokens.")
    p99_tokens: float = Field(description="99th percentile of the max, tokens.")
    hottest_rank: int = Field(description="Rank with the highest expected load.")
    hottest_expected_tokens: float = Field(description="Expected tokens of that rank, tokens.")


class Imbalance(_Model):
    """Imbalance across ranks and experts."""

    mean_tokens_per_rank: float = Field(description="Mean over ranks of tokens per step, tokens.")
    max_over_mean_ratio: float = Field(description="E[max_r L_r] / mean_r L_r, ratio (1 = balanced).")
    p99_max_over_mean_ratio: float = Field(description="p99 of max_r L_r / mean, ratio.")
    expected_max_over_mean_ratio: float = Field(description="max_r E[L_r] / mean: the skew alone, without sampling noise, ratio.")
    cv_ratio: float = Field(description="Coefficient of variation across ranks, mean over steps of std_r L_r / mean_r L_r, ratio.")
    expert_cv_ratio: float = Field(description="Coefficient of variation of expected tokens per expert, std_e / mean_e, ratio.")
    max_expert_mean_tokens: float = Field(description="E[max over experts of tokens], tokens (dropless time of one expert).")
    max_expert_p99_tokens: float = Field(description="p99 of the max over experts, tokens.")
    aux_loss: float = Field(description="Switch balance loss E * sum_e f_e P_e, dimensionless (1 = balanced).")


class CapacityStats(_Model):
    """Padded (capacity-factor) execution."""

    capacity_factor: float = Field(description="Capacity factor, dimensionless.")
    capacity_tokens: int = Field(description="Capacity per expert C, tokens.")
    routed_slots: float = Field(description="Mean (token, expert) slots routed per step, count.")
    kept_slots: float = Field(description="Mean slots kept per step, count.")
    dropped_slots: float = Field(description="Mean slots dropped per step (over capacity), count.")
    dropped_frac: float = Field(description="Mean dropped / routed slots, fraction.")
    p99_dropped_frac: float = Field(description="p99 over steps of dropped / routed slots, fraction.")
    padded_slots: float = Field(description="Mean empty capacity slots per step (computed and stored for nothing), count.")
    padded_frac: float = Field(description="Mean padded / all capacity slots, fraction (wasted expert compute).")
    slots_per_rank: float = Field(description="Capacity slots each rank computes per step (max over ranks), count.")
    buffer_bytes_per_rank: float | None = Field(None, description="Dispatch buffer per rank, C * experts * bytes_per_token, bytes.")
    padded_bytes: float | None = Field(None, description="Mean padded slots * bytes_per_token, bytes.")


class DecodeReads(_Model):
    """Distinct experts touched per step: the expert weights actually read (small batches)."""

    expected_distinct_experts: float = Field(description="Expected distinct logical experts touched, count.")
    max_rank_expected_distinct: float = Field(description="Max over ranks of the expected distinct experts, count.")
    p99_max_rank_distinct: float = Field(description="p99 over steps of the max over ranks of distinct experts, count.")
    experts_per_rank: int = Field(description="Physical experts on the fullest rank (a roofline that reads them all), count.")
    max_rank_weight_bytes: float | None = Field(None, description="Expected weight bytes read by the max rank, bytes.")
    total_weight_bytes: float | None = Field(None, description="Expected weight bytes read over all ranks, bytes.")


class PlacementSummary(_Model):
    """Where experts live and what the replicas bought."""

    strategy: str = Field(description="Placement strategy.")
    expert_ranks: list[list[int]] = Field(description="Ranks holding each expert; the first is its home.")
    num_redundant_requested: int = Field(description="Redundant replicas asked for, count.")
    num_redundant_used: int = Field(description="Replicas that carry tokens, count.")
    extra_memory_bytes: float | None = Field(None, description="Weights of the used replicas over all ranks, bytes.")
    extra_memory_bytes_per_rank: float | None = Field(None, description="Replica weights on the fullest rank, bytes.")
    expected_max_tokens: float = Field(description="Max over ranks of expected tokens with this placement, tokens.")
    expected_max_tokens_without_replicas: float | None = Field(
        None, description="The same without replicas (same strategy), tokens; None when E is not divisible by R."
    )


class ExpertLoad(_Model):
    """Result of :func:`expert_load`."""

    spec: LoadSpec = Field(description="The inputs.")
    slot_frac_per_expert: list[float] = Field(description="Per-slot expert probabilities p_e of the distribution, fraction.")
    token_frac_per_expert: list[float] = Field(
        description="P(a token uses expert e): inclusion pi_e (top-k), q_e (threshold), C/T (expert-choice), fraction."
    )
    expected_tokens_per_expert: list[float] = Field(description="Expected tokens per expert per step (before drops), tokens.")
    ranks: list[RankLoad] = Field(description="Per-rank load.")
    max_rank: MaxLoad = Field(description="The max-loaded rank per step.")
    imbalance: Imbalance = Field(description="Imbalance metrics.")
    capacity: CapacityStats | None = Field(None, description="Padded execution; None = dropless.")
    routed_slots: float = Field(description="Mean (token, expert) slots per step, count (T*k for token choice).")
    kept_slots: float = Field(description="Mean slots processed per step, count (= routed when dropless).")
    dropped_slots: float = Field(description="Mean slots dropped per step, count.")
    unrouted_token_frac: float = Field(description="Tokens that get no expert at all (expert-choice, threshold), fraction.")
    decode: DecodeReads = Field(description="Distinct experts touched (weights read).")
    placement: PlacementSummary = Field(description="Placement and replicas.")
    closed_form: UniformClosedForm | None = Field(None, description="Uniform top-k cross-check (no replicas); None otherwise.")
    count_model: str = Field(description="How per-expert counts were sampled.")


class LayerLoads(_Model):
    """Per-layer results when layers route differently (:func:`expert_load_layers`)."""

    layers: list[ExpertLoad] = Field(description="One result per MoE layer.")
    worst_layer: int = Field(description="Layer with the highest E[max over ranks], index.")
    mean_max_over_mean_ratio: float = Field(description="Mean over layers of max_over_mean_ratio, ratio.")


# ------------------------------------------------------------------ evaluation

def _spec(spec: LoadSpec | None, fields: dict[str, Any]) -> LoadSpec:
    if spec is not None and fields:
        spec = spec.model_copy(update=fields)
        fields = spec.model_dump()
        spec = None
    if spec is not None:
        return spec
    if isinstance(fields.get("distribution"), str):
        fields["distribution"] = parse_distribution(fields["distribution"], source="distribution")
    if isinstance(fields.get("router"), str):
        name = fields["router"]
        table = {"top_k": TopK, "topk": TopK, "switch": Switch, "expert_choice": ExpertChoice, "threshold": Threshold}
        if name not in table:
            raise InputError(f"unknown router {name!r}; allowed: top_k, switch, threshold, expert_choice (group_limited needs a GroupLimited(...))", field="router")
        fields["router"] = table[name]()
    try:
        return LoadSpec(**fields)
    except ValidationError as exc:
        raise from_validation_error(exc, None) from None


def _token_frac(spec: LoadSpec, p: np.ndarray) -> tuple[np.ndarray, str]:
    r = spec.router
    k = spec.top_k
    if isinstance(r, ExpertChoice):
        c = spec.capacity_tokens or 0
        return np.full(spec.num_experts, min(c, spec.num_tokens) / spec.num_tokens), "expert_choice_deterministic"
    if isinstance(r, Threshold):
        return threshold_inclusion(p, r.mean_experts_per_token or k), "independent_binomial"
    if isinstance(r, GroupLimited):
        return group_limited_inclusion(p, k, r), "binomial_fixed_sum_group_limited_simulated_inclusion"
    if k == 1:
        return p.copy(), "multinomial"
    return inclusion_probs(p, k), "binomial_fixed_sum"


def _counts(spec: LoadSpec, frac: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = spec.router
    t, s = spec.num_tokens, spec.num_samples
    if isinstance(r, ExpertChoice):
        return np.broadcast_to(np.round(frac * t).astype(np.int64), (s, frac.size))
    if isinstance(r, Threshold):
        return sample_independent_counts(frac, t, s, rng)
    return sample_topk_counts(frac, t, spec.top_k, s, rng)


def _q(a: np.ndarray, q: float | np.ndarray, axis: int = 0) -> np.ndarray:
    return np.quantile(a, q, axis=axis, method="linear")


@dataclass(frozen=True)
class _Draw:
    """The arrays every summary of one evaluation is computed from (steps 1-3 of the module docstring)."""

    spec: LoadSpec
    p: np.ndarray  #: per-slot expert probabilities [E]
    frac: np.ndarray  #: P(a token uses expert e) [E]
    count_model: str
    w: np.ndarray  #: expected tokens per expert [E]
    placement: Any
    a: np.ndarray  #: share matrix [E, R]
    ex: np.ndarray  #: physical experts sorted by rank
    starts: np.ndarray  #: first physical expert of every rank
    counts: np.ndarray  #: sampled tokens per expert [S, E]
    cap: int | None
    loads: np.ndarray  #: tokens per rank [S, R]
    routed: np.ndarray  #: routed slots per sample [S]
    kept_sum: np.ndarray  #: kept slots per sample [S]


class _SampleCache:
    """Sampled per-expert counts by what determines them, least recently used dropped past ``max_bytes``.

    Steps 1 and 3 read the experts, top-k, tokens, distribution, router (and, for expert choice, its
    capacity), samples and seed, and nothing of the EP size, placement or replicas: the counts, drawn
    from their own seeded generator, are the same for every layout of one token count, so a plan
    or sweep over EP sizes draws them once. The entries are shared: the counts array is read-only.
    ``cache_clear`` empties it (:func:`moesim.caches.clear_caches` calls it).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.data: OrderedDict = OrderedDict()

    def cache_clear(self) -> None:
        self.data.clear()
        self.nbytes = 0

    def get(self, spec: LoadSpec) -> tuple[np.ndarray, np.ndarray, str, np.ndarray]:
        r = spec.router
        key = (spec.num_experts, spec.top_k, spec.num_tokens, spec.num_samples, spec.seed,
               type(spec.distribution).__name__, spec.distribution.model_dump_json(),
               type(r).__name__, r.model_dump_json(), spec.capacity_tokens if isinstance(r, ExpertChoice) else None)
        hit = self.data.get(key)
        if hit is not None:
            self.data.move_to_end(key)
            return hit
        p = expert_probs(spec.distribution, spec.num_experts)
        frac, count_model = _token_frac(spec, p)
        counts = _counts(spec, frac, np.random.default_rng(spec.seed))
        counts.flags.writeable = False
        hit = (p, frac, count_model, counts)
        self.data[key] = hit
        self.nbytes += p.nbytes + frac.nbytes + counts.nbytes
        while self.nbytes > self.max_bytes and len(self.data) > 1:
            _, old = self.data.popitem(last=False)
            self.nbytes -= sum(a.nbytes for a in old if isinstance(a, np.ndarray))
        return hit


_SAMPLES = _SampleCache(64 * 2**20)


def _draw(spec: LoadSpec) -> _Draw:
    e, t, R = spec.num_experts, spec.num_tokens, spec.ep_size
    check_layout(e, R, spec.num_redundant_experts)
    p, frac, count_model, counts = _SAMPLES.get(spec)
    w = frac * t  # expected tokens per expert
    placement = place_experts(w, R, spec.placement, spec.num_redundant_experts)
    a = placement.share_matrix()

    # physical experts sorted by rank: rank sums are segment sums (cheaper than kept @ a)
    ex, rk, sh, _ = placement._pairs()
    order = np.argsort(rk, kind="stable")
    ex, rk, sh = ex[order], rk[order], sh[order]
    starts = np.searchsorted(rk, np.arange(R))

    cap = spec.capacity_tokens
    kept = np.minimum(counts, cap) if cap is not None else counts
    loads = np.add.reduceat(kept[:, ex] * sh, starts, axis=1)  # [S, R] = kept @ a
    routed = counts.sum(axis=1).astype(float)
    kept_sum = kept.sum(axis=1).astype(float)
    return _Draw(spec, p, frac, count_model, w, placement, a, ex, starts, counts, cap, loads, routed, kept_sum)


def _max_stats(d: _Draw) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, float]:
    """(per-sample mean over ranks, per-sample max, expected load per rank, mean, p50 and p99 of the max)."""
    mean_r = d.loads.mean(axis=1)  # per sample
    max_r = d.loads.max(axis=1)
    exp_rank = d.loads.mean(axis=0)
    max_p50, max_p99 = _q(max_r, np.array([0.5, 0.99]))
    return mean_r, max_r, exp_rank, float(mean_r.mean()), max_p50, max_p99


def _max_over_mean(max_r: np.ndarray, mean_all: float) -> float:
    return float(np.mean(max_r) / mean_all) if mean_all > 0 else 1.0


def _cv(d: _Draw, mean_r: np.ndarray) -> float:
    safe = np.where(mean_r > 0, mean_r, 1.0)
    return float(np.mean(d.loads.std(axis=1) / safe))


def _distinct_rank(d: _Draw) -> np.ndarray:
    """Expected distinct experts each rank touches per step, [R] (decode reads)."""
    touched_p = 1.0 - np.power(np.clip(1.0 - d.frac[:, None] * d.a, 0.0, 1.0), d.spec.num_tokens)  # [E, R] (replica chosen at random)
    if isinstance(d.spec.router, ExpertChoice):
        touched_p = (d.a > 0) * float(min(d.cap or 0, d.spec.num_tokens) > 0)
    return touched_p.sum(axis=0)


def _slots_per_rank(d: _Draw) -> float:
    assert d.cap is not None
    return float((d.cap * d.a.sum(axis=0)).max())


def _dropped_frac(d: _Draw) -> np.ndarray:
    """Dropped / routed slots per sample."""
    return (d.routed - d.kept_sum) / np.where(d.routed > 0, d.routed, 1.0)


@dataclass(frozen=True)
class StragglerLoad:
    """What a step model reads of :func:`expert_load`: the max-loaded rank and the imbalance summary.

    Every field equals the :class:`ExpertLoad` field of the same meaning (named in its comment) for the
    same spec, to the last bit: both come from one draw and the same functions.
    """

    max_rank_mean_tokens: float  #: max_rank.mean_tokens, tokens
    max_rank_p99_tokens: float  #: max_rank.p99_tokens, tokens
    hottest_expected_tokens: float  #: max_rank.hottest_expected_tokens, tokens
    mean_tokens_per_rank: float  #: imbalance.mean_tokens_per_rank, tokens
    max_over_mean_ratio: float  #: imbalance.max_over_mean_ratio, ratio
    cv_ratio: float  #: imbalance.cv_ratio, ratio
    max_rank_expected_distinct: float  #: decode.max_rank_expected_distinct, count
    capacity_slots_per_rank: float | None  #: capacity.slots_per_rank, count; None = dropless
    dropped_frac: float | None  #: capacity.dropped_frac, fraction; None = dropless


def straggler_load(spec: LoadSpec) -> StragglerLoad:
    """The fields of :func:`expert_load` that set a layer's time (:class:`StragglerLoad`), without the rest
    (per-rank table, placement summary, closed-form cross-check): what a step model evaluates thousands of times."""
    d = _draw(spec)
    mean_r, max_r, exp_rank, mean_all, _, max_p99 = _max_stats(d)
    hot = int(np.argmax(exp_rank))
    capped = d.cap is not None
    return StragglerLoad(
        max_rank_mean_tokens=float(max_r.mean()),
        max_rank_p99_tokens=float(max_p99),
        hottest_expected_tokens=float(exp_rank[hot]),
        mean_tokens_per_rank=mean_all,
        max_over_mean_ratio=_max_over_mean(max_r, mean_all),
        cv_ratio=_cv(d, mean_r),
        max_rank_expected_distinct=float(_distinct_rank(d).max()),
        capacity_slots_per_rank=_slots_per_rank(d) if capped else None,
        dropped_frac=float(np.mean(_dropped_frac(d))) if capped else None,
    )


def expert_load(spec: LoadSpec | None = None, /, **fields: Any) -> ExpertLoad:
    """Evaluate the expert load of one MoE layer for one step (module docstring).

    Give a :class:`LoadSpec` or its fields as keywords (``distribution`` may be a
    string such as ``"zipf:1.2"``, ``router`` a name such as ``"switch"``).
    Raises :class:`InputError` for inconsistent inputs (top-k above the experts,
    EP size not dividing them, capacity factor <= 0, a bad histogram, ...).
    """
    spec = _spec(spec, dict(fields))
    d = _draw(spec)
    e, k, t, R = spec.num_experts, spec.top_k, spec.num_tokens, spec.ep_size
    p, frac, count_model, w, placement, a = d.p, d.frac, d.count_model, d.w, d.placement, d.a
    ex, starts, counts, cap, loads, routed, kept_sum = d.ex, d.starts, d.counts, d.cap, d.loads, d.routed, d.kept_sum

    mean_r, max_r, exp_rank, mean_all, max_p50, max_p99 = _max_stats(d)
    p50_rank, p99_rank = _q(loads, np.array([0.5, 0.99]))
    argmax = np.argmax(loads, axis=1)
    max_frac = np.bincount(argmax, minlength=R) / spec.num_samples

    # decode: distinct experts touched
    distinct_rank = _distinct_rank(d)
    distinct_mc = np.add.reduceat((counts[:, ex] > 0).astype(np.int64), starts, axis=1).max(axis=1)
    per_rank_phys = placement.experts_per_rank()
    bpe = spec.bytes_per_expert

    hot = int(np.argmax(exp_rank))
    expected_loads_det = w @ a if cap is None else np.minimum(w, cap) @ a
    f = frac / frac.sum() if frac.sum() > 0 else frac
    aux = float(e * np.sum(f * p))
    max_e = counts.max(axis=1)
    imbalance = Imbalance(
        mean_tokens_per_rank=mean_all,
        max_over_mean_ratio=_max_over_mean(max_r, mean_all),
        p99_max_over_mean_ratio=float(max_p99 / mean_all) if mean_all > 0 else 1.0,
        expected_max_over_mean_ratio=float(expected_loads_det.max() / expected_loads_det.mean()) if expected_loads_det.mean() > 0 else 1.0,
        cv_ratio=_cv(d, mean_r),
        expert_cv_ratio=float(w.std() / w.mean()) if w.mean() > 0 else 0.0,
        max_expert_mean_tokens=float(max_e.mean()),
        max_expert_p99_tokens=float(_q(max_e.astype(float), 0.99)),
        aux_loss=aux,
    )

    capacity = None
    if cap is not None:
        dropped = routed - kept_sum
        dropped_frac = _dropped_frac(d)
        padded = (cap * e) - kept_sum
        cf = spec.capacity_factor if spec.capacity_factor is not None else 1.0
        slots_rank = _slots_per_rank(d)
        capacity = CapacityStats(
            capacity_factor=cf,
            capacity_tokens=cap,
            routed_slots=float(routed.mean()),
            kept_slots=float(kept_sum.mean()),
            dropped_slots=float(dropped.mean()),
            dropped_frac=float(np.mean(dropped_frac)),
            p99_dropped_frac=float(_q(dropped_frac, 0.99)),
            padded_slots=float(padded.mean()),
            padded_frac=float(padded.mean() / (cap * e)) if cap * e else 0.0,
            slots_per_rank=slots_rank,
            buffer_bytes_per_rank=slots_rank * spec.bytes_per_token if spec.bytes_per_token is not None else None,
            padded_bytes=float(padded.mean()) * spec.bytes_per_token if spec.bytes_per_token is not None else None,
        )

    if isinstance(spec.router, ExpertChoice):
        per_token = frac  # each expert independently takes a token with probability C/T
        unrouted = float(np.prod(1.0 - per_token))
    elif isinstance(spec.router, Threshold):
        unrouted = float(np.prod(1.0 - frac))
    else:
        unrouted = 0.0

    without = None
    if spec.num_redundant_experts and e % R == 0:
        base = place_experts(w, R, spec.placement, 0)
        without = float((w @ base.share_matrix()).max())
    used = placement.num_redundant_used
    rep_rank = placement.replicas_per_rank()
    pl = PlacementSummary(
        strategy=spec.placement,
        expert_ranks=placement.expert_ranks,
        num_redundant_requested=spec.num_redundant_experts,
        num_redundant_used=used,
        extra_memory_bytes=used * bpe if bpe is not None else None,
        extra_memory_bytes_per_rank=float(rep_rank.max()) * bpe if bpe is not None else None,
        expected_max_tokens=float((w @ a).max()),
        expected_max_tokens_without_replicas=without,
    )

    closed = None
    if (
        isinstance(spec.router, (TopK, Switch))
        and is_uniform(p)
        and placement.num_redundant_used == 0
        and e % R == 0
    ):
        closed = uniform_closed_form(num_experts=e, top_k=k, num_ranks=R, num_tokens=t, capacity_tokens=cap)

    decode = DecodeReads(
        expected_distinct_experts=float((1.0 - np.power(np.clip(1.0 - frac, 0.0, 1.0), t)).sum())
        if not isinstance(spec.router, ExpertChoice)
        else float(e * (min(cap or 0, t) > 0)),
        max_rank_expected_distinct=float(distinct_rank.max()),
        p99_max_rank_distinct=float(_q(distinct_mc, 0.99)),
        experts_per_rank=int(per_rank_phys.max()),
        max_rank_weight_bytes=float(distinct_rank.max()) * bpe if bpe is not None else None,
        total_weight_bytes=float(distinct_rank.sum()) * bpe if bpe is not None else None,
    )

    ranks = [
        RankLoad.model_construct(
            rank=i,
            num_experts=int(per_rank_phys[i]),
            expected_tokens=float(exp_rank[i]),
            p50_tokens=float(p50_rank[i]),
            p99_tokens=float(p99_rank[i]),
            max_frac=float(max_frac[i]),
            expected_distinct_experts=float(distinct_rank[i]),
        )
        for i in range(R)
    ]
    return ExpertLoad(
        spec=spec,
        slot_frac_per_expert=p.tolist(),
        token_frac_per_expert=frac.tolist(),
        expected_tokens_per_expert=w.tolist(),
        ranks=ranks,
        max_rank=MaxLoad(
            mean_tokens=float(max_r.mean()),
            p50_tokens=float(max_p50),
            p99_tokens=float(max_p99),
            hottest_rank=hot,
            hottest_expected_tokens=float(exp_rank[hot]),
        ),
        imbalance=imbalance,
        capacity=capacity,
        routed_slots=float(routed.mean()),
        kept_slots=float(kept_sum.mean()),
        dropped_slots=float((routed - kept_sum).mean()),
        unrouted_token_frac=unrouted,
        decode=decode,
        placement=pl,
        closed_form=closed,
        count_model=count_model,
    )


def expert_load_layers(
    spec: LoadSpec, distributions: LayerDistributions, num_layers: int
) -> LayerLoads:
    """:func:`expert_load` for each of ``num_layers`` MoE layers with its own distribution (seed + layer)."""
    if num_layers < 1:
        raise InputError(f"num_layers must be >= 1, got {num_layers}", field="num_layers")
    out = [
        expert_load(spec.model_copy(update={"distribution": distributions.for_layer(i), "seed": spec.seed + i}))
        for i in range(num_layers)
    ]
    worst = int(np.argmax([r.max_rank.mean_tokens for r in out]))
    return LayerLoads(
        layers=out,
        worst_layer=worst,
        mean_max_over_mean_ratio=float(np.mean([r.imbalance.max_over_mean_ratio for r in out])),
    )


def load_spec_from_model(model: ModelSpec, **fields: Any) -> LoadSpec:
    """A :class:`LoadSpec` with experts, top-k, router and bytes per expert taken from ``model``.

    ``fields`` override or complete it (``ep_size`` and ``num_tokens`` are required).
    The router is group-limited when the model limits groups (DeepSeek ``n_group`` /
    ``topk_group``), else top-k with the model's scoring.
    """
    if model.moe is None:
        raise InputError(f"model {model.name!r} is dense (no routed experts)", field="model")
    moe = model.moe
    router: Any
    if moe.router.num_groups > 1 and moe.router.topk_groups < moe.router.num_groups:
        router = GroupLimited(
            num_groups=moe.router.num_groups, topk_groups=moe.router.topk_groups, scoring=moe.router.scoring
        )
    elif moe.top_k == 1 and moe.router.scoring == "softmax":
        router = TopK(scoring="softmax")
    else:
        router = TopK(scoring=moe.router.scoring)
    from ..dtypes import bytes_per_element  # local: keeps this module's import light
    from ..params import expert_params

    dt = model.expert_weight_dtype or model.weight_dtype
    base: dict[str, Any] = {
        "num_experts": moe.num_experts,
        "top_k": moe.top_k,
        "router": router,
        "bytes_per_expert": expert_params(model) * bytes_per_element(dt),
        "bytes_per_token": model.hidden_size * 2.0,
    }
    base.update(fields)
    return _spec(None, base)
