"""Where the step model meets the expert-load and communication models.

Kept in one module so the step model's arithmetic does not know how those
models are called, and so their results can be cached across the thousands of
candidates a plan evaluates (the same EP size, tokens and distribution recur).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..comm.api import collective_time_s as _collective_s
from ..comm.api import time_ep_all_to_all
from ..comm.placement import GroupSpec
from ..hardware import HardwareProfile
from ..load.distributions import expert_probs
from ..load.traffic import dispatch_traffic
from ..load.api import LoadSpec, expert_load
from ..load.distributions import parse_distribution
from ..load.routing import GroupLimited, TopK
from ..model import ModelSpec
from ..scenario import Scenario
from .ops import ExpertRankLoad
from .parallel import Parallel
from .result import LoadSummary


@lru_cache(maxsize=4096)
def _load(num_experts: int, top_k: int, ep: int, num_tokens: int, distribution: str, router_key: tuple,
          capacity_factor: float | None, placement: str, redundant: int, samples: int, seed: int):
    dist = parse_distribution(distribution, source="routing.distribution")
    if router_key[0] == "group_limited":
        router = GroupLimited(num_groups=router_key[1], topk_groups=router_key[2], scoring=router_key[3])
    else:
        router = TopK(scoring=router_key[1])
    return expert_load(LoadSpec(num_experts=num_experts, top_k=top_k, ep_size=ep, num_tokens=num_tokens,
                                distribution=dist, router=router, capacity_factor=capacity_factor,
                                placement=placement, num_redundant_experts=redundant, num_samples=samples, seed=seed))


def router_key(model: ModelSpec, sc: Scenario) -> tuple:
    """The load model's router for this model: group-limited when the model limits groups (DeepSeek-V3)."""
    r = model.moe.router  # type: ignore[union-attr]
    if r.num_groups > 1 and r.topk_groups < r.num_groups:
        return ("group_limited", r.num_groups, r.topk_groups, r.scoring)
    return ("top_k", r.scoring)


def rank_load_array(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel,
                    n_src: np.ndarray) -> ExpertRankLoad:
    """The expected straggler for each of several token counts (fields become arrays)."""
    loads = [rank_load(sc, model, hw, par, float(x))[0] for x in np.asarray(n_src).ravel()]
    return ExpertRankLoad(
        copies=np.array([x.copies for x in loads]),
        experts_touched=np.array([x.experts_touched for x in loads]),
        local_experts=loads[0].local_experts,
        noise_ratio=np.array([x.noise_ratio for x in loads]),
    )


def rank_load(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel,
              n_src: float) -> tuple[ExpertRankLoad, ExpertRankLoad, LoadSummary]:
    """(expected straggler, p99 straggler, summary) for ``n_src`` tokens entering each EP rank."""
    moe = model.moe
    assert moe is not None
    rt = sc.routing
    tokens = max(1, int(round(n_src * par.ep)))
    res = _load(moe.num_experts, moe.top_k, par.ep, tokens, rt.distribution, router_key(model, sc),
                rt.capacity_factor, rt.placement, rt.redundant_experts, rt.samples, rt.seed)
    local = (moe.num_experts + rt.redundant_experts) / par.ep
    if res.capacity is not None:
        copies_mean = copies_p99 = float(res.capacity.slots_per_rank)
        dropped = res.capacity.dropped_frac
    else:
        copies_mean = res.max_rank.mean_tokens
        copies_p99 = res.max_rank.p99_tokens
        dropped = 0.0
    touched = res.decode.max_rank_expected_distinct
    hottest = max(res.max_rank.hottest_expected_tokens, 1e-12)
    mean = ExpertRankLoad(copies=copies_mean, experts_touched=touched, local_experts=local,
                          noise_ratio=max(1.0, res.max_rank.mean_tokens / hottest))
    p99 = ExpertRankLoad(copies=copies_p99, experts_touched=min(local, touched), local_experts=local,
                         noise_ratio=max(1.0, res.max_rank.p99_tokens / hottest))
    summary = LoadSummary(
        distribution=rt.distribution, ep_size=par.ep, tokens_per_rank=n_src,
        copies_mean_per_rank=res.imbalance.mean_tokens_per_rank, copies_max_rank_mean=res.max_rank.mean_tokens,
        copies_max_rank_p99=res.max_rank.p99_tokens, max_over_mean_ratio=res.imbalance.max_over_mean_ratio,
        coefficient_of_variation=res.imbalance.cv_ratio, dropped_frac=dropped, experts_touched_per_rank=touched,
        local_experts=local,
    )
    return mean, p99, summary


# ----------------------------------------------------------------------------- communication


class _Ref:
    """Hash a profile by identity (profiles hold dicts, so they are not hashable); keeps it alive while cached."""

    __slots__ = ("obj",)

    def __init__(self, obj: object):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Ref) and other.obj is self.obj


def group_spec(par: Parallel, group: str) -> GroupSpec:
    """Place a communication group on nodes (Megatron rank order tp - ep - dp - pp)."""
    gpn = par.gpus_per_node
    size, stride = {
        "tp": (par.tp, 1),
        "etp": (par.etp, 1),
        "ep": (par.ep, par.etp),
        "dp": (par.dp, par.tp),
        "edp": (par.edp, par.ep * par.etp),
        "pp": (2, par.tp * par.dp),
    }[group]
    per_node = max(1, min(size, gpn // stride)) if stride <= gpn else 1
    while size % per_node:
        per_node -= 1
    return GroupSpec(size=size, ranks_per_node=per_node)


def collective_time_s(hw: HardwareProfile, par: Parallel, collective: str, size_bytes, group: str):
    """Time of a collective of ``size_bytes`` (nccl-tests' S) over one of the layout's groups.

    ``size_bytes`` may be a numpy array (one value per candidate); the result then is too.
    """
    if np.ndim(size_bytes) > 0:
        return np.array([collective_time_s(hw, par, collective, float(x), group) for x in np.asarray(size_bytes).ravel()])
    g = group_spec(par, group)
    if g.num_ranks <= 1 or size_bytes <= 0:
        return 0.0
    return _collective_cached(_Ref(hw), collective, float(size_bytes), g)


@lru_cache(maxsize=65536)
def _collective_cached(hw: _Ref, collective: str, size_bytes: float, g: GroupSpec) -> float:
    return _collective_s(hw.obj, collective, size_bytes, g)


def p2p_time_s(hw: HardwareProfile, par: Parallel, size_bytes: float) -> float:
    """One pipeline send/receive of ``size_bytes`` between neighbouring stages."""
    return collective_time_s(hw, par, "sendrecv", size_bytes, "pp")


def grad_sync_time_s(hw: HardwareProfile, par: Parallel, dense_bytes: float, expert_bytes: float) -> float:
    """Gradient reduction: dense gradients all-reduced over DP, expert gradients over EDP (ring; ZeRO's
    reduce-scatter + all-gather moves the same bytes)."""
    return (collective_time_s(hw, par, "all_reduce", dense_bytes, "dp")
            + collective_time_s(hw, par, "all_reduce", expert_bytes, "edp"))


def a2a_times_s(sc: Scenario, model: ModelSpec, hw: HardwareProfile, par: Parallel, n_src: float,
                bytes_per_copy: float, load: ExpertRankLoad) -> tuple[float, float]:
    """(dispatch, combine) seconds of one MoE layer for ``n_src`` tokens per EP rank.

    The expected traffic matrix (routing skew included) has its bytes scaled by
    the load's sampling-noise ratio (realised max-rank load over the hottest
    rank's expected load), so the straggler rank sets the bandwidth term; the
    latency terms are not scaled.
    """
    if np.ndim(n_src) > 0:
        noise = np.broadcast_to(load.noise_ratio, np.shape(n_src))
        pairs = [a2a_times_s(sc, model, hw, par, float(x), bytes_per_copy,
                             ExpertRankLoad(0.0, 0.0, load.local_experts, float(r)))
                 for x, r in zip(np.asarray(n_src).ravel(), noise.ravel())]
        return np.array([d for d, _ in pairs]), np.array([c for _, c in pairs])
    if par.ep <= 1 or n_src <= 0:
        return 0.0, 0.0
    moe = model.moe
    assert moe is not None
    rt = sc.routing
    g = group_spec(par, "ep")
    combine_scale = 2.0 * model.hidden_size / bytes_per_copy
    return _a2a_cached(_Ref(hw), moe.num_experts, moe.top_k, par.ep, g, float(n_src), float(bytes_per_copy),
                       rt.distribution, rt.node_limit, rt.algorithm, combine_scale, round(load.noise_ratio, 6))


@lru_cache(maxsize=16384)
def _a2a_cached(hw: _Ref, num_experts: int, top_k: int, ep: int, g: GroupSpec, n_src: float, bpc: float,
                distribution: str, node_limit: int | None, algorithm: str, combine_scale: float,
                noise: float) -> tuple[float, float]:
    probs = expert_probs(parse_distribution(distribution, source="routing.distribution"), num_experts)
    expert_to_rank = _contiguous(num_experts, ep)
    rpn = int(g.ranks_per_node or ep)
    nodes = ep // rpn
    limit = node_limit if (node_limit is not None and node_limit < nodes) else None
    traffic = dispatch_traffic(num_ranks=ep, tokens_per_rank=n_src, top_k=top_k, probs=probs,
                               expert_to_rank=expert_to_rank, bytes_per_token=bpc, ranks_per_node=rpn,
                               node_limit=limit, dedup_per_rank=algorithm == "hierarchical")
    d = time_ep_all_to_all(hw.obj, traffic, phase="dispatch", algorithm=algorithm, group=g, bytes_scale=noise).time_s
    c = time_ep_all_to_all(hw.obj, traffic, phase="combine", algorithm=algorithm, group=g,
                           bytes_scale=combine_scale * noise).time_s
    return d, c


@lru_cache(maxsize=256)
def _contiguous(num_experts: int, ep: int) -> np.ndarray:
    return np.arange(num_experts) // (num_experts // ep)
