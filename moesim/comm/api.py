"""Public API of the communication model.

For people (names, sizes, validation with one-line errors)::

    import moesim
    moesim.all_reduce("h100-sxm", num_ranks=8, size_bytes=1 << 30).busbw_bytes_per_s
    moesim.all_to_all("h800", num_ranks=32, tokens_per_rank=4096, top_k=8, num_experts=256,
                      bytes_per_token=7392, combine_bytes_per_token=14336, node_limit=4).time_s

For the step model and searches (profiles and groups, cached, cheap when repeated)::

    time_collective(profile, "all_reduce", size_bytes, GroupSpec(size=8, ranks_per_node=8))
    collective_time_s(profile, "all_gather", size_bytes, GroupSpec(size=64, ranks_per_node=1))
    time_ep_all_to_all(profile, traffic, phase="dispatch", algorithm="hierarchical")

Topologies are cached per (network numbers of the profile, number of nodes),
route tables per group, and the link loads of one byte per (group, collective,
algorithm), so a repeated call costs tens of microseconds; an expert-parallel
all-to-all routes its traffic matrix each time (about a millisecond at 1024
ranks). The formulas are in :mod:`moesim.comm.collectives` and
:mod:`moesim.comm.routing`; docs/communication.md has the model and its
comparison with published measurements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import InputError
from ..hardware import HardwareProfile, load_hardware
from . import collectives as _c
from .placement import GroupSpec
from .results import AllToAllTime, CollectiveTime
from .routing import LinkLoads
from .topology import Topology, build_topology, network_spec, nodes_for

if TYPE_CHECKING:  # pragma: no cover
    from ..load.traffic import TrafficMatrix

__all__ = [
    "GroupSpec",
    "CollectiveTime",
    "AllToAllTime",
    "all_to_all",
    "all_reduce",
    "all_gather",
    "reduce_scatter",
    "sendrecv",
    "collective",
    "sweep",
    "ep_traffic",
    "dispatch_bytes_per_token",
    "time_collective",
    "collective_time_s",
    "time_ep_all_to_all",
    "route_traffic",
    "topology",
]

GroupLike = GroupSpec | int | Sequence[int]


def _profile(hardware: str | Path | HardwareProfile) -> HardwareProfile:
    return hardware if isinstance(hardware, HardwareProfile) else load_hardware(hardware)


def _group(group: GroupLike) -> GroupSpec:
    if isinstance(group, GroupSpec):
        return group
    if isinstance(group, (int, np.integer)):
        if group < 1:
            raise InputError(f"a group needs at least 1 rank, got {group}", field="ranks")
        return GroupSpec(size=int(group))
    return GroupSpec(ranks=tuple(int(r) for r in group))


def _positive(value: float, field: str, what: str) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{what} must be a positive number, got {value!r}", field=field)
    return v


def _ranks(num_ranks: int, ranks_per_node: int | None) -> GroupSpec:
    if int(num_ranks) != num_ranks or num_ranks < 1:
        raise InputError(f"number of ranks must be a whole number >= 1, got {num_ranks!r}", field="ranks")
    if ranks_per_node is not None and ranks_per_node < 1:
        raise InputError(f"ranks per node must be >= 1, got {ranks_per_node}", field="ranks_per_node")
    return GroupSpec(size=int(num_ranks), ranks_per_node=ranks_per_node)


# --------------------------------------------------------------------------- step-model entry points


def time_collective(
    profile: HardwareProfile, collective: str, size_bytes: float, group: GroupLike, *, algorithm: str = "auto"
) -> CollectiveTime:
    """Time ``collective`` (all_reduce, reduce_scatter, all_gather, all_to_all, sendrecv) of ``size_bytes``.

    ``group``: a :class:`GroupSpec` (size and ranks per node, or explicit
    accelerator indices), a size (whole nodes), or a list of accelerator
    indices. ``size_bytes`` is ``S`` as nccl-tests defines it; 0 gives a zero
    result. One rank needs no communication and also takes 0 s.
    """
    _c.check_collective(collective, algorithm)
    if size_bytes < 0 or not math.isfinite(size_bytes):
        raise InputError(f"size must be >= 0 bytes, got {size_bytes!r}", field="size_bytes")
    ctx = _c.context(network_spec(profile), _group(group))
    return _c.time_collective(ctx, collective, float(size_bytes), algorithm)


def collective_time_s(
    profile: HardwareProfile, collective: str, size_bytes: float, group: GroupLike, *, algorithm: str = "auto"
) -> float:
    """Seconds of :func:`time_collective` without building the result (for large searches)."""
    _c.check_collective(collective, algorithm)
    ctx = _c.context(network_spec(profile), _group(group))
    return _c.time_s(ctx, collective, float(size_bytes), algorithm)


def collective_seconds_by_size(profile: HardwareProfile, collective: str, group: GroupLike) -> Callable[[float], float]:
    """:func:`collective_time_s` (``algorithm="auto"``) of one group as a function of the size: the group's
    placement, topology, routes and candidate plans are built once, for callers that time many sizes."""
    _c.check_collective(collective, "auto")
    return _c.seconds_by_size(_c.context(network_spec(profile), _group(group)), collective)


def time_ep_all_to_all(
    profile: HardwareProfile,
    traffic: "TrafficMatrix",
    *,
    phase: str = "dispatch",
    algorithm: str = "hierarchical",
    bytes_scale: float = 1.0,
    group: GroupSpec | None = None,
) -> CollectiveTime:
    """Time one expert-parallel dispatch (or combine) whose expected bytes are ``traffic``.

    ``traffic`` is the **dispatch** matrix of :func:`moesim.load.traffic.dispatch_traffic`
    (rank ``i`` on node ``i // traffic.ranks_per_node``); ``phase="combine"``
    sends every flow back the other way. ``bytes_scale`` multiplies every byte
    (e.g. BF16 combine after FP8 dispatch: 14336 / 7392). ``group`` places the
    ranks elsewhere than node 0 onward (it must have the same size).
    """
    _check_phase(phase, bytes_scale)
    _c.check_collective(phase, algorithm)
    ctx = _ep_context(profile, traffic, group)
    loads, steps = _ep_loads(ctx, traffic, algorithm)
    return _ep_result(ctx, traffic, loads, steps, phase=phase, algorithm=algorithm, bytes_scale=bytes_scale)


def _check_phase(phase: str, bytes_scale: float) -> None:
    if phase not in ("dispatch", "combine"):
        raise InputError(f"unknown phase {phase!r}; allowed: dispatch, combine", field="phase")
    if bytes_scale < 0 or not math.isfinite(bytes_scale):
        raise InputError(f"bytes_scale must be >= 0, got {bytes_scale!r}", field="bytes_scale")


def _ep_context(profile: HardwareProfile, traffic: "TrafficMatrix", group: GroupSpec | None):
    """The topology context of an EP all-to-all: ``group``, or the traffic matrix's ranks from node 0 onward."""
    n = int(traffic.rank_bytes.shape[0])
    if group is None:
        group = GroupSpec(size=n, ranks_per_node=min(int(traffic.ranks_per_node), n))
    if group.num_ranks != n:
        raise InputError(f"group has {group.num_ranks} ranks but the traffic matrix {n}", field="group")
    return _c.context(network_spec(profile), group)


@dataclass(frozen=True)
class RoutedAllToAll:
    """An expert-parallel dispatch routed once (:func:`route_ep_all_to_all`): the seconds of it, or of its combine,
    at any byte scale, as :func:`time_ep_all_to_all` gives them, without routing the matrix again."""

    topo: Topology
    num_ranks: int
    bytes_per_rank: float  #: mean bytes a rank sends at scale 1, bytes
    latency_s: float
    busiest: dict[str, tuple[float, int]]  #: per phase: (busy seconds of the bottleneck link at scale 1, its index)

    def time_s(self, phase: str = "dispatch", bytes_scale: float = 1.0) -> float:
        """``time_ep_all_to_all(profile, traffic, phase=phase, bytes_scale=bytes_scale, ...).time_s``."""
        _check_phase(phase, bytes_scale)
        busy, e = self.busiest[phase]
        return _c.time_from_loads_s(self.topo, num_ranks=self.num_ranks, size_bytes=self.bytes_per_rank * bytes_scale,
                                    busy_s=busy, bottleneck=e, latency_s=self.latency_s, scale=bytes_scale)

    def times_s(self, phase: str, bytes_scales: np.ndarray) -> np.ndarray:
        """:meth:`time_s` for every scale of ``bytes_scales`` at once (a numpy array of them).

        The routed loads, the bottleneck and the latency do not depend on the scale (every term of the routing
        is linear in the bytes), so a matrix routed at one scale times the same pattern at any other: a layer
        pass over many token counts routes its all-to-all once (moesim.step.bridge)."""
        s = np.asarray(bytes_scales, dtype=float)
        if np.any(s < 0) or not np.all(np.isfinite(s)):
            raise InputError("bytes_scales must be finite and >= 0", field="bytes_scales")
        _check_phase(phase, 1.0)
        busy, e = self.busiest[phase]
        if not _c._moved(self.num_ranks, self.bytes_per_rank, e):
            return np.zeros(s.shape)
        t = _c._loaded_time_s(self.topo.spec, self.latency_s, busy * s)
        return np.where(self.bytes_per_rank * s > 0, t, 0.0)


def route_ep_all_to_all(
    profile: HardwareProfile,
    traffic: "TrafficMatrix",
    *,
    algorithm: str = "hierarchical",
    group: GroupSpec | None = None,
) -> RoutedAllToAll:
    """Route the dispatch matrix ``traffic`` once for :meth:`RoutedAllToAll.time_s` of both phases at any scale
    (the step model times dispatch and combine under the expected and the p99 load from one routing)."""
    _c.check_collective("dispatch", algorithm)
    n = int(traffic.rank_bytes.shape[0])
    ctx = _ep_context(profile, traffic, group)
    loads, _ = _ep_loads(ctx, traffic, algorithm)
    return RoutedAllToAll(ctx.topo, n, float(traffic.rank_bytes.sum()) / n, loads.latency_s,
                          {"dispatch": loads.busiest(), "combine": loads.reversed().busiest()})


def _ep_loads(ctx: "_c._Context", traffic: "TrafficMatrix", algorithm: str) -> tuple[LinkLoads, int]:
    n = int(traffic.rank_bytes.shape[0])
    if n <= 1:
        return LinkLoads(ctx.topo, np.zeros(ctx.topo.num_links), float(traffic.rank_bytes.sum()), 0.0, 0.0, 0.0), 0
    if algorithm == "hierarchical":
        loads = ctx.routes.hierarchical(traffic.rank_bytes, traffic.node_bytes)
        return loads, (2 if loads.network_bytes > 0 else 1)
    return ctx.routes.direct(traffic.rank_bytes), 1


def _ep_result(ctx, traffic, loads: LinkLoads, steps: int, *, phase: str, algorithm: str,
               bytes_scale: float) -> CollectiveTime:
    n = int(traffic.rank_bytes.shape[0])
    if phase == "combine":
        loads = loads.reversed()
    busy, e = loads.busiest()
    size = float(traffic.rank_bytes.sum()) / n * bytes_scale
    return _c.result_from_loads(
        ctx.topo, collective=phase, algorithm=algorithm, num_ranks=n, num_nodes=ctx.placement.num_nodes,
        size_bytes=size, loads=loads, busy_s=busy, bottleneck=e, latency_s=loads.latency_s, steps=steps,
        scale=bytes_scale,
    )


def route_traffic(profile: HardwareProfile, rank_bytes: np.ndarray, group: GroupLike | None = None) -> LinkLoads:
    """Route an arbitrary rank-to-rank byte matrix directly; the loads of every link."""
    T = np.asarray(rank_bytes, dtype=float)
    if T.ndim != 2 or T.shape[0] != T.shape[1]:
        raise InputError(f"traffic must be a square matrix, got shape {T.shape}", field="rank_bytes")
    if np.any(T < 0) or not np.all(np.isfinite(T)):
        raise InputError("traffic bytes must be finite and >= 0", field="rank_bytes")
    ctx = _c.context(network_spec(profile), _group(group if group is not None else T.shape[0]))
    return ctx.routes.direct(T)


def topology(hardware: str | Path | HardwareProfile, num_ranks: int) -> Topology:
    """The (cached) topology of a cluster of ``num_ranks`` accelerators (whole nodes)."""
    prof = _profile(hardware)
    _ranks(num_ranks, None)
    return build_topology(prof, nodes_for(prof, num_ranks))


# --------------------------------------------------------------------------- for people


def collective(
    hardware: str | Path | HardwareProfile,
    collective: str,
    *,
    num_ranks: int,
    size_bytes: float,
    ranks_per_node: int | None = None,
    algorithm: str = "auto",
) -> CollectiveTime:
    """Time one collective of ``size_bytes`` (> 0) over ``num_ranks`` ranks of ``hardware``."""
    _c.check_collective(collective, algorithm)
    _positive(size_bytes, "size_bytes", "size")
    return time_collective(_profile(hardware), collective, size_bytes, _ranks(num_ranks, ranks_per_node),
                           algorithm=algorithm)


def all_reduce(hardware, *, num_ranks: int, size_bytes: float, ranks_per_node: int | None = None,
               algorithm: str = "auto") -> CollectiveTime:
    """All-reduce of ``size_bytes`` (ring, tree or NVLink SHARP; ``auto`` picks the fastest)."""
    return collective(hardware, "all_reduce", num_ranks=num_ranks, size_bytes=size_bytes,
                      ranks_per_node=ranks_per_node, algorithm=algorithm)


def all_gather(hardware, *, num_ranks: int, size_bytes: float, ranks_per_node: int | None = None,
               algorithm: str = "auto") -> CollectiveTime:
    """All-gather whose gathered array is ``size_bytes`` (nccl-tests' S)."""
    return collective(hardware, "all_gather", num_ranks=num_ranks, size_bytes=size_bytes,
                      ranks_per_node=ranks_per_node, algorithm=algorithm)


def reduce_scatter(hardware, *, num_ranks: int, size_bytes: float, ranks_per_node: int | None = None,
                   algorithm: str = "auto") -> CollectiveTime:
    """Reduce-scatter of an array of ``size_bytes`` (nccl-tests' S)."""
    return collective(hardware, "reduce_scatter", num_ranks=num_ranks, size_bytes=size_bytes,
                      ranks_per_node=ranks_per_node, algorithm=algorithm)


def sendrecv(hardware, *, num_ranks: int = 2, size_bytes: float, ranks_per_node: int | None = None) -> CollectiveTime:
    """Point-to-point: rank i sends ``size_bytes`` to rank i+1 (pipeline stages); 2 ranks by default."""
    return collective(hardware, "sendrecv", num_ranks=num_ranks, size_bytes=size_bytes, ranks_per_node=ranks_per_node)


def sweep(hardware, collective_name: str, *, num_ranks: int, sizes: Sequence[float], ranks_per_node: int | None = None,
          algorithm: str = "auto") -> list[CollectiveTime]:
    """:func:`collective` over several sizes (an nccl-tests style sweep)."""
    prof = _profile(hardware)
    return [collective(prof, collective_name, num_ranks=num_ranks, size_bytes=s, ranks_per_node=ranks_per_node,
                       algorithm=algorithm) for s in sizes]


def dispatch_bytes_per_token(hidden_size: int, dtype: str = "bf16", *, scale_block: int = 128,
                             scale_bytes: int = 4) -> float:
    """Bytes of one token copy: ``hidden_size`` elements, plus one ``scale_bytes`` scale per
    ``scale_block`` elements for fp8 (DeepSeek-V3's 1x128 activation blocks; DeepEP sends them
    with the token). bf16 / fp16: 2 bytes per element, fp32: 4."""
    size = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1}.get(dtype)
    if size is None:
        raise InputError(f"unknown dtype {dtype!r}; allowed: bf16, fp16, fp32, fp8", field="dtype")
    if hidden_size < 1:
        raise InputError(f"hidden size must be >= 1, got {hidden_size}", field="hidden_size")
    extra = -(-hidden_size // scale_block) * scale_bytes if dtype == "fp8" else 0
    return float(hidden_size * size + extra)


def ep_traffic(
    *,
    num_ranks: int,
    tokens_per_rank: float,
    top_k: int,
    num_experts: int,
    bytes_per_token: float,
    ranks_per_node: int,
    node_limit: int | None = None,
    distribution: str = "uniform",
) -> "TrafficMatrix":
    """The expected dispatch traffic of an EP group with experts placed contiguously (rank i holds
    experts ``i*E/n .. (i+1)*E/n - 1``), from :mod:`moesim.load`."""
    from ..load.distributions import expert_probs, parse_distribution
    from ..load.traffic import dispatch_traffic

    n = int(num_ranks)
    if num_experts < 1 or num_experts % n:
        raise InputError(
            f"{n} expert-parallel ranks must divide the {num_experts} experts (each rank holds E/n experts)",
            field="experts",
        )
    if not 1 <= top_k <= num_experts:
        raise InputError(f"top-k must be between 1 and the {num_experts} experts, got {top_k}", field="top_k")
    _positive(tokens_per_rank, "tokens_per_rank", "tokens per rank")
    _positive(bytes_per_token, "bytes_per_token", "bytes per token")
    num_nodes = n // ranks_per_node
    if node_limit is not None and not 1 <= node_limit <= num_nodes:
        raise InputError(
            f"node limit {node_limit} must be between 1 and the {num_nodes} nodes the {n} ranks span",
            field="node_limit",
        )
    dist = parse_distribution(distribution)
    probs = expert_probs(dist, num_experts)
    e2r = np.arange(num_experts) // (num_experts // n)
    return dispatch_traffic(num_ranks=n, tokens_per_rank=tokens_per_rank, top_k=top_k, probs=probs,
                            expert_to_rank=e2r, bytes_per_token=bytes_per_token, ranks_per_node=ranks_per_node,
                            node_limit=node_limit)


def all_to_all(
    hardware: str | Path | HardwareProfile,
    *,
    num_ranks: int,
    tokens_per_rank: float,
    top_k: int,
    num_experts: int,
    bytes_per_token: float,
    combine_bytes_per_token: float | None = None,
    node_limit: int | None = None,
    algorithm: str = "hierarchical",
    distribution: str = "uniform",
    ranks_per_node: int | None = None,
) -> AllToAllTime:
    """Expert-parallel dispatch and combine of one MoE layer (forward).

    ``bytes_per_token`` is one dispatched token copy (hidden size x element
    size, plus scales for fp8: see :func:`dispatch_bytes_per_token`);
    ``combine_bytes_per_token`` defaults to the same. ``node_limit`` is
    group-limited routing (each token reaches at most that many nodes).
    ``algorithm``: ``direct`` (every copy straight to its rank) or
    ``hierarchical`` (once per destination node over the network, then
    forwarded over scale-up, as DeepEP's normal kernels).
    """
    prof = _profile(hardware)
    _c.check_collective("dispatch", algorithm)
    group = _ranks(num_ranks, ranks_per_node)
    spec = network_spec(prof)
    ctx = _c.context(spec, group)
    rpn = ctx.placement.num_ranks // ctx.placement.num_nodes
    _positive(bytes_per_token, "bytes_per_token", "bytes per token")
    combine_b = bytes_per_token if combine_bytes_per_token is None else combine_bytes_per_token
    _positive(combine_b, "combine_bytes_per_token", "combine bytes per token")
    traffic = ep_traffic(num_ranks=num_ranks, tokens_per_rank=tokens_per_rank, top_k=top_k, num_experts=num_experts,
                         bytes_per_token=bytes_per_token, ranks_per_node=rpn, node_limit=node_limit,
                         distribution=distribution)
    loads, steps = _ep_loads(ctx, traffic, algorithm)
    disp = _ep_result(ctx, traffic, loads, steps, phase="dispatch", algorithm=algorithm, bytes_scale=1.0)
    comb = _ep_result(ctx, traffic, loads, steps, phase="combine", algorithm=algorithm,
                      bytes_scale=combine_b / bytes_per_token)
    return AllToAllTime(
        hardware=prof.name,
        algorithm=algorithm,
        num_ranks=int(num_ranks),
        ranks_per_node=rpn,
        num_nodes=ctx.placement.num_nodes,
        tokens_per_rank=float(tokens_per_rank),
        top_k=int(top_k),
        num_experts=int(num_experts),
        node_limit=node_limit,
        distribution=distribution,
        dispatch_bytes_per_token=float(bytes_per_token),
        combine_bytes_per_token=float(combine_b),
        dispatch=disp,
        combine=comb,
        time_s=disp.time_s + comb.time_s,
    )
