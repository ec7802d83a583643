"""Where the step model meets the expert-load and communication models.

Kept in one module so the step model's arithmetic does not know how those
models are called, and so their results can be cached across the thousands of
candidates a plan evaluates (the same EP size, tokens and distribution recur).
Caches are keyed by plain tuples; a hardware profile (which holds dicts and so
is not hashable) is keyed by a digest of its contents
(:attr:`moesim.hardware.HardwareProfile.fingerprint`), so a profile loaded again
hits the entries of the first load, and :data:`_PROFILES` holds one profile per
distinct content.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..comm.api import collective_seconds_by_size
from ..comm.api import RoutedAllToAll, route_ep_all_to_all
from ..comm.placement import GroupSpec
from ..hardware import HardwareProfile
from ..load.api import LoadSpec, StragglerLoad, straggler_load
from ..load.distributions import expert_probs, parse_distribution
from ..load.routing import GroupLimited, TopK
from ..load.traffic import dispatch_traffic
from ..model import ModelSpec
from ..scenario import RoutingSpec
from .ops import ExpertRankLoad
from .parallel import Parallel
from .result import LoadSummary

_PROFILES: dict[str, HardwareProfile] = {}


def _hw_key(hw: HardwareProfile) -> str:
    key = hw.fingerprint
    _PROFILES.setdefault(key, hw)
    return key


# ----------------------------------------------------------------------------- expert load


@lru_cache(maxsize=4096)
def _load(num_experts: int, top_k: int, ep: int, num_tokens: int, distribution: str, router_key: tuple,
          capacity_factor: float | None, placement: str, redundant: int, samples: int, seed: int) -> StragglerLoad:
    dist = parse_distribution(distribution, source="routing.distribution")
    if router_key[0] == "group_limited":
        router = GroupLimited(num_groups=router_key[1], topk_groups=router_key[2], scoring=router_key[3])
    else:
        router = TopK(scoring=router_key[1])
    return straggler_load(LoadSpec(num_experts=num_experts, top_k=top_k, ep_size=ep, num_tokens=num_tokens,
                                distribution=dist, router=router, capacity_factor=capacity_factor,
                                placement=placement, num_redundant_experts=redundant, num_samples=samples, seed=seed))


def router_key(model: ModelSpec) -> tuple:
    """The load model's router for this model: group-limited when the model limits groups (DeepSeek-V3)."""
    r = model.moe.router  # type: ignore[union-attr]
    if r.num_groups > 1 and r.topk_groups < r.num_groups:
        return ("group_limited", r.num_groups, r.topk_groups, r.scoring)
    return ("top_k", r.scoring)


@lru_cache(maxsize=65536)
def _rank_load_core(num_experts: int, top_k: int, ep: int, tokens: int, distribution: str, rkey: tuple,
                    capacity_factor: float | None, placement: str, redundant: int, samples: int, seed: int):
    """(mean straggler, p99 straggler, the load result) for one EP group and token count."""
    res = _load(num_experts, top_k, ep, tokens, distribution, rkey, capacity_factor, placement, redundant, samples, seed)
    local = (num_experts + redundant) / ep
    if res.capacity_slots_per_rank is not None:
        copies_mean = copies_p99 = float(res.capacity_slots_per_rank)
    else:
        copies_mean, copies_p99 = res.max_rank_mean_tokens, res.max_rank_p99_tokens
    touched = res.max_rank_expected_distinct
    hottest = max(res.hottest_expected_tokens, 1e-12)
    mean = ExpertRankLoad(copies=copies_mean, experts_touched=touched, local_experts=local,
                          noise_ratio=max(1.0, res.max_rank_mean_tokens / hottest))
    p99 = ExpertRankLoad(copies=copies_p99, experts_touched=min(local, touched), local_experts=local,
                         noise_ratio=max(1.0, res.max_rank_p99_tokens / hottest))
    return mean, p99, res


def _core(rt: RoutingSpec, model: ModelSpec, par: Parallel, n_src: float):
    moe = model.moe
    assert moe is not None
    tokens = max(1, int(round(n_src * par.ep)))
    return _rank_load_core(moe.num_experts, moe.top_k, par.ep, tokens, rt.distribution, router_key(model),
                           rt.capacity_factor, rt.placement, rt.redundant_experts, rt.samples, rt.seed)


def rank_load(rt: RoutingSpec, model: ModelSpec, par: Parallel,
              n_src: float) -> tuple[ExpertRankLoad, ExpertRankLoad, LoadSummary]:
    """(expected straggler, p99 straggler, summary) for ``n_src`` tokens entering each EP rank."""
    mean, p99, res = _core(rt, model, par, n_src)
    summary = LoadSummary(
        distribution=rt.distribution, ep_size=par.ep, tokens_per_rank=n_src,
        copies_mean_per_rank=res.mean_tokens_per_rank, copies_max_rank_mean=res.max_rank_mean_tokens,
        copies_max_rank_p99=res.max_rank_p99_tokens, max_over_mean_ratio=res.max_over_mean_ratio,
        coefficient_of_variation=res.cv_ratio,
        dropped_frac=res.dropped_frac if res.dropped_frac is not None else 0.0,
        experts_touched_per_rank=mean.experts_touched, local_experts=mean.local_experts,
    )
    return mean, p99, summary


def max_rank_copies(rt: RoutingSpec, model: ModelSpec, par: Parallel, n_src: float) -> float:
    """Token copies the expected straggler computes (padded slots with a capacity factor)."""
    return float(_core(rt, model, par, n_src)[0].copies)


def rank_load_array(rt: RoutingSpec, model: ModelSpec, par: Parallel, n_src: np.ndarray) -> ExpertRankLoad:
    """The expected straggler for each of several token counts (fields become arrays)."""
    loads = [_core(rt, model, par, float(x))[0] for x in np.asarray(n_src).ravel()]
    return ExpertRankLoad(
        copies=np.array([x.copies for x in loads]),
        experts_touched=np.array([x.experts_touched for x in loads]),
        local_experts=loads[0].local_experts,
        noise_ratio=np.array([x.noise_ratio for x in loads]),
    )


# ----------------------------------------------------------------------------- communication


@lru_cache(maxsize=4096)
def _group(par: Parallel, group: str) -> tuple[int, int]:
    """(size, ranks per node) of one of the layout's groups (Megatron rank order tp - ep - dp - pp)."""
    gpn = par.gpus_per_node
    # only the fields of the group asked for are read: a layer pass sees a layout without dp / pp (Parallel.layer_view)
    if group == "tp":
        size, stride = par.tp, 1
    elif group == "etp":
        size, stride = par.etp, 1
    elif group == "ep":
        size, stride = par.ep, par.etp
    elif group == "dp":
        size, stride = par.dp, par.tp
    elif group == "edp":
        size, stride = par.edp, par.ep * par.etp
    elif group == "pp":
        size, stride = 2, par.tp * par.dp
    else:
        raise KeyError(group)
    per_node = max(1, min(size, gpn // stride)) if stride <= gpn else 1
    while size % per_node:
        per_node -= 1
    return size, per_node


def group_spec(par: Parallel, group: str) -> GroupSpec:
    """Place a communication group on nodes (Megatron rank order tp - ep - dp - pp)."""
    size, per_node = _group(par, group)
    return GroupSpec(size=size, ranks_per_node=per_node)


@lru_cache(maxsize=4096)
def _collective_by_size(hw: str, collective: str, size: int, per_node: int):
    """One group's collective as a function of its size (its plans built once: moesim.comm.api)."""
    return collective_seconds_by_size(_PROFILES[hw], collective, GroupSpec(size=size, ranks_per_node=per_node))


@lru_cache(maxsize=262144)
def _collective_cached(hw: str, collective: str, size_bytes: float, size: int, per_node: int) -> float:
    return _collective_by_size(hw, collective, size, per_node)(size_bytes)


def collective_time_s(hw: HardwareProfile, par: Parallel, collective: str, size_bytes, group: str):
    """Time of a collective of ``size_bytes`` (nccl-tests' S) over one of the layout's groups.

    ``size_bytes`` may be a numpy array (one value per candidate); the result then is too.
    """
    size, per_node = _group(par, group)
    if type(size_bytes) is float or type(size_bytes) is int:  # a plain number (the scalar estimate, most calls)
        if size <= 1 or size_bytes <= 0:
            return 0.0
        return _collective_cached(_hw_key(hw), collective, float(size_bytes), size, per_node)
    if size <= 1:
        return np.zeros(np.shape(size_bytes)) if np.ndim(size_bytes) else 0.0
    key = _hw_key(hw)
    if np.ndim(size_bytes) > 0:
        return np.array([_collective_cached(key, collective, float(x), size, per_node) if x > 0 else 0.0
                         for x in np.asarray(size_bytes).ravel()])
    if size_bytes <= 0:
        return 0.0
    return _collective_cached(key, collective, float(size_bytes), size, per_node)


def p2p_time_s(hw: HardwareProfile, par: Parallel, size_bytes):
    """One pipeline send/receive of ``size_bytes`` between neighbouring stages."""
    return collective_time_s(hw, par, "sendrecv", size_bytes, "pp")


def leaves_node(par: Parallel, group: str) -> bool:
    """Whether the layout's ``group`` (see :func:`_group`) spans more than one node, so that its traffic goes
    through the NICs."""
    size, per_node = _group(par, group)
    return size > per_node


def shares_links_with_ep(par: Parallel) -> bool:
    """Whether the EP all-to-all and the data-parallel collectives are bound by the same links: the NICs when the
    EP group and the DP or EDP group span nodes, the node's NVLink when all three stay in it. Mixed placements
    (one in the node, the other across) are bound by different links."""
    ep_out = leaves_node(par, "ep")
    dp_out, edp_out = leaves_node(par, "dp"), leaves_node(par, "edp")
    return (dp_out or edp_out) if ep_out else not (dp_out or edp_out)


def dp_collective_s(hw: HardwareProfile, par: Parallel, collective: str, dense_bytes, expert_bytes):
    """One data-parallel collective of a GPU's parameters (or their gradients): the dense share over DP, the
    expert share over EDP, one after the other (all_reduce, reduce_scatter or all_gather; sizes as nccl-tests'
    S, the unsharded buffer)."""
    return (collective_time_s(hw, par, collective, dense_bytes, "dp")
            + collective_time_s(hw, par, collective, expert_bytes, "edp"))


def a2a_times_s(rt: RoutingSpec, model: ModelSpec, hw: HardwareProfile, par: Parallel, n_src,
                bytes_per_copy: float, load: ExpertRankLoad):
    """(dispatch, combine) seconds of one MoE layer for ``n_src`` tokens per EP rank.

    The expected traffic matrix (routing skew included) has its bytes scaled by
    the load's sampling-noise ratio (realised max-rank load over the hottest
    rank's expected load), so the straggler rank sets the bandwidth term; the
    latency terms are not scaled. ``n_src`` may be an array (with ``load``'s
    fields arrays of the same shape).
    """
    if par.ep <= 1:
        return (np.zeros(np.shape(n_src)), np.zeros(np.shape(n_src))) if np.ndim(n_src) else (0.0, 0.0)
    moe = model.moe
    assert moe is not None
    size, per_node = _group(par, "ep")
    combine_scale = 2.0 * model.hidden_size / bytes_per_copy
    key = (_hw_key(hw), moe.num_experts, moe.top_k, size, per_node, float(bytes_per_copy), rt.distribution,
           rt.node_limit, rt.algorithm, combine_scale)
    if np.ndim(n_src) > 0:
        # one routing at one token per rank, scaled to every count (RoutedAllToAll.times_s): equal to the
        # scalar path's per-count routing up to rounding
        x = np.asarray(n_src, dtype=float)
        noise = np.round(np.broadcast_to(np.asarray(load.noise_ratio, dtype=float), x.shape), 6)
        unit = _a2a_routed(*key[:-1], 1.0)
        s = np.where(x > 0, x, 0.0) * noise
        return unit.times_s("dispatch", s), unit.times_s("combine", combine_scale * s)
    if n_src <= 0:
        return 0.0, 0.0
    return _a2a_cached(*key, float(n_src), round(float(load.noise_ratio), 6))


@lru_cache(maxsize=65536)
def _a2a_cached(hw: str, num_experts: int, top_k: int, ep: int, per_node: int, bpc: float, distribution: str,
                node_limit: int | None, algorithm: str, combine_scale: float, n_src: float,
                noise: float) -> tuple[float, float]:
    routed = _a2a_routed(hw, num_experts, top_k, ep, per_node, bpc, distribution, node_limit, algorithm, n_src)
    return routed.time_s("dispatch", noise), routed.time_s("combine", combine_scale * noise)


@lru_cache(maxsize=16384)
def _a2a_routed(hw: str, num_experts: int, top_k: int, ep: int, per_node: int, bpc: float, distribution: str,
                node_limit: int | None, algorithm: str, n_src: float) -> RoutedAllToAll:
    """The expected dispatch traffic of ``n_src`` tokens per rank, routed once for both phases and every
    sampling-noise scale (the expected and the p99 straggler)."""
    probs = expert_probs(parse_distribution(distribution, source="routing.distribution"), num_experts)
    expert_to_rank = _contiguous(num_experts, ep)
    nodes = ep // per_node
    limit = node_limit if (node_limit is not None and node_limit < nodes) else None
    if limit is not None and len(set(np.bincount(expert_to_rank // per_node, minlength=nodes).tolist())) > 1:
        limit = None  # experts not spread evenly over nodes (more ranks than experts): the limit is not modelled
    traffic = dispatch_traffic(num_ranks=ep, tokens_per_rank=n_src, top_k=top_k, probs=probs,
                               expert_to_rank=expert_to_rank, bytes_per_token=bpc, ranks_per_node=per_node,
                               node_limit=limit, dedup_per_rank=algorithm == "hierarchical")
    return route_ep_all_to_all(_PROFILES[hw], traffic, algorithm=algorithm, group=GroupSpec(size=ep, ranks_per_node=per_node))


@lru_cache(maxsize=256)
def _contiguous(num_experts: int, ep: int) -> np.ndarray:
    """Home rank of each expert, in contiguous blocks (spread over all ranks when there are more ranks than
    experts, the extra slots holding redundant replicas)."""
    return (np.arange(num_experts) * ep) // num_experts
