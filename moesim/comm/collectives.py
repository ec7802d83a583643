"""Collectives as traffic over the topology: all-reduce, reduce-scatter, all-gather, all-to-all, send/receive.

Every algorithm is written as the bytes each rank sends to each other rank for
an operation of ``S`` bytes (``S`` as nccl-tests defines it, see
:class:`~moesim.comm.results.CollectiveTime`), routed with
:mod:`moesim.comm.routing`. Since those bytes are proportional to ``S``, the
link loads of one byte are computed once per (topology, group, collective,
algorithm) and cached; a call then costs a multiplication. The time is::

    t = t_overhead + steps * alpha + S * max_e(load_e(1 byte) / (capacity_e * efficiency_e))

with ``t_overhead = efficiency.collective_overhead_s`` and ``alpha`` the path
latency of a step (``scale_out.latency_s`` when a step crosses the network,
else ``node.scale_up_latency_s``). A group of ``n`` ranks on ``m`` nodes with
``r`` ranks per node:

* **ring** (NCCL's ring; Patarasuk and Yuan, JPDC 2009). Each rank sends
  ``X = 2(n-1)/n * S`` (all-reduce) or ``(n-1)/n * S`` (reduce-scatter,
  all-gather) to its ring successor in ``2(n-1)`` (or ``n-1``) steps. NCCL runs
  one ring per NIC so that every NIC carries one ring's boundary crossing: here
  each rank sends ``X / r`` to the rank with its own local index on the next
  node (rail-aligned) and spreads ``X (r-1)/r`` evenly over the other ranks of
  its node (on a full mesh this is the set of rings that uses every link;
  on a switch it loads each GPU link as one ring would). On one node each rank
  spreads ``X`` over its ``r - 1`` peers.
* **tree** (NCCL's double binary tree, Sanders, Speck and Träff, Parallel
  Computing 2009), all-reduce only. Inside each node a chain (each rank sends
  ``2 S / r`` to every peer, the chain's reduce and broadcast traffic spread
  evenly); between nodes two binary trees (heap order and its mirror), each
  carrying half of the data on every rail: a child sends ``S / 2r`` to its
  parent (reduce) and receives ``S / 2r`` (broadcast) per tree and rail. Every
  node sends about ``2 S`` in total, like a ring, except on two nodes where it
  sends ``S`` (why NCCL prefers trees there). Latency ``2 (depth * alpha_net +
  (r - 1) alpha_up)``. On one node the tree is a chain.
* **nvls** (NVLink SHARP, all-reduce inside one NVSwitch domain when the
  profile sets ``node.nvls_sharp``): the switch reduces (``multimem.ld_reduce``)
  and multicasts (``multimem.st``). Each GPU's link to the switch carries
  ``S`` of reads plus ``S/n`` of its reduced share up, and ``S/n + S`` down:
  ``t_bw = S (1 + 1/n) / (B eta)``, two latency steps. nccl-tests still uses
  the factor ``2(n-1)/n`` for its busbw, so busbw can exceed the link rate.
* **direct / hierarchical all-to-all**: every rank sends ``S / n`` to every rank
  (itself included, local); hierarchical sends one copy per destination node
  over the network and forwards it inside the node (see
  :meth:`~moesim.comm.routing.GroupRoutes.hierarchical`). One latency step
  (two for hierarchical).
* **sendrecv**: rank ``i`` sends ``S`` to rank ``i + 1`` (pipeline stages), one step.

``algorithm="auto"`` picks the fastest available for the size, as NCCL's tuner
would: ring, tree or nvls for all-reduce, ring otherwise, direct all-to-all.

Left out: NCCL protocols (LL / LL128 / Simple) and their per-size bandwidth
factors, channel and SM limits, NVLS across nodes (NVLSTree) and in-network
reductions in InfiniBand switches (SHARP / CollNet), PXN forwarding of
cross-rail traffic, congestion and ECMP hash collisions, and concurrent groups
contending for the same links (each group is timed alone).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError
from .placement import GroupSpec, Placement, resolve
from .results import BottleneckLink, CollectiveTime
from .routing import GroupRoutes, LinkLoads, group_routes
from .topology import NetworkSpec, Topology, build_topology

COLLECTIVES = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all", "sendrecv")

ALGORITHMS: dict[str, tuple[str, ...]] = {
    "all_reduce": ("auto", "ring", "tree", "nvls"),
    "reduce_scatter": ("auto", "ring"),
    "all_gather": ("auto", "ring"),
    "all_to_all": ("auto", "direct", "hierarchical"),
    "sendrecv": ("auto", "direct"),
    "dispatch": ("direct", "hierarchical"),
    "combine": ("direct", "hierarchical"),
}


def busbw_factor(collective: str, n: int) -> float:
    """nccl-tests' bus bandwidth factor (doc/PERFORMANCE.md) for ``n`` ranks."""
    if n <= 1:
        return 0.0 if collective not in ("sendrecv",) else 1.0
    if collective == "all_reduce":
        return 2.0 * (n - 1) / n
    if collective in ("reduce_scatter", "all_gather", "all_to_all", "dispatch", "combine"):
        return (n - 1) / n
    if collective in ("sendrecv", "broadcast", "reduce"):
        return 1.0
    raise KeyError(collective)


def check_collective(collective: str, algorithm: str, *, source: str | None = None) -> None:
    """:class:`InputError` naming the allowed values when ``collective`` / ``algorithm`` is unknown."""
    if collective not in ALGORITHMS:
        raise InputError(
            f"unknown collective {collective!r}; allowed: {', '.join(COLLECTIVES)}", source=source, field="collective"
        )
    if algorithm not in ALGORITHMS[collective]:
        raise InputError(
            f"unknown algorithm {algorithm!r} for {collective}; allowed: {', '.join(ALGORITHMS[collective])}",
            source=source,
            field="algorithm",
        )


# ------------------------------------------------------------------------- plans


@dataclass(frozen=True, eq=False)
class Plan:
    """Link loads of one byte of ``S`` for a (group, collective, algorithm), plus its latency."""

    algorithm: str
    loads: LinkLoads  # for S = 1 byte
    busy_per_byte_s: float  # max_e load_e / rate_e
    bottleneck: int  # link index, -1 if nothing moves
    steps: int
    latency_s: float  # steps x alpha (without the fixed overhead)


_PLANS: "OrderedDict[tuple, Plan]" = OrderedDict()
_PLANS_SIZE = 4096


def clear_plan_cache() -> None:
    _PLANS.clear()


def _positions(routes: GroupRoutes) -> np.ndarray:
    """Group rank at node-major position q (regular placements)."""
    order = routes.placement.order
    return order if order is not None else np.arange(routes.n)


def _ring(routes: GroupRoutes, per_rank: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pl = routes.placement
    n = routes.n
    if not pl.regular:
        q = np.lexsort((pl.accelerators % pl.node_size, pl.accelerators // pl.node_size))
        return q, np.roll(q, -1), np.full(n, per_rank)
    m, r = routes.m, routes.r
    pos = _positions(routes).reshape(m, r)
    src, dst, b = [], [], []
    if m == 1:
        j, k = np.nonzero(~np.eye(r, dtype=bool))
        return pos[0, j], pos[0, k], np.full(j.size, per_rank / (r - 1))
    if r > 1:
        i, j, k = np.nonzero(np.broadcast_to(~np.eye(r, dtype=bool), (m, r, r)))
        src.append(pos[i, j])
        dst.append(pos[i, k])
        b.append(np.full(i.size, per_rank / r))
    i, j = np.divmod(np.arange(m * r), r)
    src.append(pos[i, j])
    dst.append(pos[(i + 1) % m, j])
    b.append(np.full(i.size, per_rank / r))
    return np.concatenate(src), np.concatenate(dst), np.concatenate(b)


def tree_parents(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Parents of nodes ``0..m-1`` in the two binary trees (``-1`` at the roots).

    Tree 1 is a heap (parent of i is (i-1)//2, root 0); tree 2 is its mirror
    (node i plays node m-1-i), so most inner nodes of one are leaves of the other.
    """
    i = np.arange(m)
    p1 = np.where(i > 0, (i - 1) // 2, -1)
    mirror = m - 1 - i
    p2 = np.where(mirror > 0, m - 1 - (mirror - 1) // 2, -1)
    return p1, p2


def _tree(routes: GroupRoutes) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Flows of a 1-byte all-reduce over the double binary tree; also (depth, chain length)."""
    m, r = routes.m, routes.r
    pos = _positions(routes).reshape(m, r)
    if m == 1:
        j = np.arange(r - 1)
        src = np.concatenate([pos[0, j + 1], pos[0, j]])
        dst = np.concatenate([pos[0, j], pos[0, j + 1]])
        return src, dst, np.ones(src.size), 0, r - 1
    src, dst, b = [], [], []
    if r > 1:
        i, j, k = np.nonzero(np.broadcast_to(~np.eye(r, dtype=bool), (m, r, r)))
        src.append(pos[i, j])
        dst.append(pos[i, k])
        b.append(np.full(i.size, 2.0 / r))
    for parents in tree_parents(m):
        child = np.flatnonzero(parents >= 0)
        for c in range(r):
            up_s, up_d = pos[child, c], pos[parents[child], c]
            src += [up_s, up_d]
            dst += [up_d, up_s]
            b += [np.full(child.size, 1.0 / (2 * r))] * 2
    depth = int(math.floor(math.log2(m)))
    return np.concatenate(src), np.concatenate(dst), np.concatenate(b), depth, r - 1


def nvls_available(topo: Topology, routes: GroupRoutes) -> bool:
    """NVLink SHARP applies: the profile has it and the whole group sits in one switch domain."""
    pl = routes.placement
    if not (topo.spec.nvls_sharp and topo.has_switch and topo.domain_size > 1 and pl.num_ranks > 1):
        return False
    dom = pl.accelerators // topo.domain_size
    return bool(np.all(dom == dom[0]))


def _nvls(topo: Topology, routes: GroupRoutes) -> LinkLoads:
    acc = routes.placement.accelerators
    n = acc.size
    loads = np.zeros(topo.num_links)
    per = 1.0 + 1.0 / n
    loads[topo.up_link[acc]] = per
    loads[topo.down_link[acc]] = per
    return LinkLoads(topo, loads, 0.0, n * per, 0.0, topo.spec.scale_up_latency_s)


def _make_plan(topo: Topology, routes: GroupRoutes, collective: str, algorithm: str) -> Plan:
    n = routes.n
    spec = topo.spec
    a_up, a_net = spec.scale_up_latency_s, spec.scale_out_latency_s
    if collective in ("all_reduce", "reduce_scatter", "all_gather") and algorithm == "ring":
        x = (2.0 if collective == "all_reduce" else 1.0) * (n - 1) / n
        loads = routes.flows(*_ring(routes, x))
        steps = (2 if collective == "all_reduce" else 1) * (n - 1)
        lat = steps * loads.latency_s
    elif collective == "all_reduce" and algorithm == "tree":
        if not routes.placement.regular:
            raise InputError("the tree algorithm needs a group with the same ranks on every node; use ring",
                             field="algorithm")
        s, d, b, depth, chain = _tree(routes)
        loads = routes.flows(s, d, b)
        steps = 2 * (depth + chain)
        lat = 2 * (depth * a_net + chain * a_up)
    elif collective == "all_reduce" and algorithm == "nvls":
        if not nvls_available(topo, routes):
            raise InputError(
                f"nvls needs node.nvls_sharp = true ({spec.profile_name}: {str(spec.nvls_sharp).lower()}) and a group "
                "inside one NVSwitch domain; use ring or tree",
                field="algorithm",
            )
        loads = _nvls(topo, routes)
        steps = 2
        lat = 2 * a_up
    elif collective == "all_to_all":
        if algorithm == "hierarchical":
            loads = routes.hierarchical_uniform(1.0 / n)
            steps = 2 if loads.network_bytes > 0 else 1
        else:
            loads = routes.uniform(1.0 / n)
            steps = 1
        lat = loads.latency_s
    elif collective == "sendrecv":
        q = _positions(routes) if routes.placement.regular else np.arange(n)
        loads = routes.flows(q[:-1], q[1:], np.ones(n - 1))
        steps = 1
        lat = loads.latency_s
    else:  # pragma: no cover - check_collective guards this
        raise InputError(f"no algorithm {algorithm!r} for {collective}", field="algorithm")
    busy, e = loads.busiest()
    return Plan(algorithm, loads, busy, e, steps, lat)


def plan(topo: Topology, routes: GroupRoutes, collective: str, algorithm: str) -> Plan:
    """The cached :class:`Plan` of ``collective`` with a concrete ``algorithm`` on ``routes``."""
    key = (topo.spec, topo.num_nodes, routes.placement.key, collective, algorithm)
    hit = _PLANS.get(key)
    if hit is not None:
        return hit
    p = _make_plan(topo, routes, collective, algorithm)
    _PLANS[key] = p
    while len(_PLANS) > _PLANS_SIZE:
        _PLANS.popitem(last=False)
    return p


def candidates(topo: Topology, routes: GroupRoutes, collective: str) -> tuple[str, ...]:
    """Algorithms ``auto`` chooses among for this group."""
    if collective == "all_reduce":
        algos = ["ring"]
        if routes.placement.regular and (routes.m > 1 or routes.r > 2):
            algos.append("tree")
        if nvls_available(topo, routes):
            algos.append("nvls")
        return tuple(algos)
    if collective == "all_to_all":
        return ("direct",)
    if collective == "sendrecv":
        return ("direct",)
    return ("ring",)


# ------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class _Context:
    spec: NetworkSpec
    topo: Topology
    routes: GroupRoutes
    placement: Placement


def context(spec: NetworkSpec, group: GroupSpec | int, *, source: str | None = None) -> _Context:
    pl = resolve(group, spec, source=source)
    topo = build_topology(spec, pl.nodes_needed)
    return _Context(spec, topo, group_routes(topo, pl), pl)


def _pick(plans: list[Plan], size_bytes: float) -> Plan:
    """The candidate plan of least time at ``size_bytes`` (NCCL's tuner: the first of equal ones)."""
    best = None
    best_t = math.inf
    for p in plans:
        t = size_bytes * p.busy_per_byte_s + p.latency_s
        if t < best_t - 1e-18:
            best, best_t = p, t
    assert best is not None
    return best


def _plans(ctx: _Context, collective: str) -> list[Plan]:
    """The plan of every algorithm NCCL's tuner considers for ``collective`` on this group."""
    return [plan(ctx.topo, ctx.routes, collective, a) for a in candidates(ctx.topo, ctx.routes, collective)]


def _choose(ctx: _Context, collective: str, algorithm: str, size_bytes: float) -> Plan:
    if algorithm != "auto":
        return plan(ctx.topo, ctx.routes, collective, algorithm)
    return _pick(_plans(ctx, collective), size_bytes)


def _seconds(ctx: _Context, p: Plan, size_bytes: float) -> float:
    if p.bottleneck < 0:
        return 0.0
    return ctx.spec.collective_overhead_s + p.latency_s + size_bytes * p.busy_per_byte_s


def time_s(ctx: _Context, collective: str, size_bytes: float, algorithm: str = "auto") -> float:
    """Only the predicted seconds (the fast path for searches)."""
    if ctx.placement.num_ranks <= 1 or size_bytes <= 0:
        return 0.0
    return _seconds(ctx, _choose(ctx, collective, algorithm, size_bytes), size_bytes)


def seconds_by_size(ctx: _Context, collective: str) -> Callable[[float], float]:
    """``time_s(ctx, collective, size)`` with NCCL's algorithm choice (``auto``) as a function of the size alone:
    the candidate plans of the group are built once, and each call picks among them by the same rule."""
    plans = _plans(ctx, collective)
    single = ctx.placement.num_ranks <= 1

    def seconds(size_bytes: float) -> float:
        if single or size_bytes <= 0:
            return 0.0
        return _seconds(ctx, _pick(plans, size_bytes), size_bytes)

    return seconds


def _moved(num_ranks: int, size_bytes: float, bottleneck: int) -> bool:
    return bottleneck >= 0 and num_ranks > 1 and size_bytes > 0


def _loaded_time_s(spec: NetworkSpec, latency_s: float, bandwidth_s: float) -> float:
    """Time of a collective whose busiest link is busy ``bandwidth_s``: overhead + latency + bandwidth term."""
    return spec.collective_overhead_s + latency_s + bandwidth_s


def time_from_loads_s(topo: Topology, *, num_ranks: int, size_bytes: float, busy_s: float, bottleneck: int,
                      latency_s: float, scale: float = 1.0) -> float:
    """``result_from_loads(...).time_s`` without building the result."""
    if not _moved(num_ranks, size_bytes, bottleneck):
        return 0.0
    return _loaded_time_s(topo.spec, latency_s, busy_s * scale)


def result_from_loads(
    topo: Topology,
    *,
    collective: str,
    algorithm: str,
    num_ranks: int,
    num_nodes: int,
    size_bytes: float,
    loads: LinkLoads,
    busy_s: float,
    bottleneck: int,
    latency_s: float,
    steps: int,
    scale: float = 1.0,
) -> CollectiveTime:
    """Assemble a :class:`CollectiveTime` (``loads`` scaled by ``scale`` bytes per unit)."""
    spec = topo.spec
    factor = busbw_factor(collective, num_ranks)
    moved = _moved(num_ranks, size_bytes, bottleneck)
    if not moved:
        return CollectiveTime(
            collective=collective, algorithm=algorithm, hardware=spec.profile_name, num_ranks=num_ranks,
            num_nodes=num_nodes, size_bytes=size_bytes, time_s=0.0, bandwidth_s=0.0, latency_s=0.0, overhead_s=0.0,
            num_steps=0, algbw_bytes_per_s=math.inf, busbw_bytes_per_s=math.inf, busbw_factor=factor,
            bottleneck=None, local_bytes=loads.local_bytes * scale, scale_up_bytes=loads.scale_up_bytes * scale,
            network_bytes=loads.network_bytes * scale,
        )
    bw = busy_s * scale
    ovh = spec.collective_overhead_s
    t = _loaded_time_s(spec, latency_s, bw)
    e = bottleneck
    load = float(loads.load_bytes[e]) * scale
    cap = float(topo.capacity_bytes_per_s[e])
    rate = float(topo.rate_bytes_per_s[e])
    algbw = size_bytes / t
    return CollectiveTime(
        collective=collective,
        algorithm=algorithm,
        hardware=spec.profile_name,
        num_ranks=num_ranks,
        num_nodes=num_nodes,
        size_bytes=size_bytes,
        time_s=t,
        bandwidth_s=bw,
        latency_s=latency_s,
        overhead_s=ovh,
        num_steps=steps,
        algbw_bytes_per_s=algbw,
        busbw_bytes_per_s=algbw * factor,
        busbw_factor=factor,
        bottleneck=BottleneckLink(
            link=topo.link_name(e),
            kind=topo.link_kind(e).value,
            load_bytes=load,
            capacity_bytes_per_s=cap,
            achievable_bytes_per_s=rate,
            busy_s=load / rate,
            utilization_frac=load / (cap * t),
        ),
        local_bytes=loads.local_bytes * scale,
        scale_up_bytes=loads.scale_up_bytes * scale,
        network_bytes=loads.network_bytes * scale,
    )


def time_collective(ctx: _Context, collective: str, size_bytes: float, algorithm: str = "auto") -> CollectiveTime:
    """Predicted :class:`CollectiveTime` of ``collective`` of ``size_bytes`` on the group of ``ctx``."""
    n = ctx.placement.num_ranks
    if n <= 1 or size_bytes <= 0:
        empty = LinkLoads(ctx.topo, np.zeros(ctx.topo.num_links), 0.0, 0.0, 0.0, 0.0)
        return result_from_loads(
            ctx.topo, collective=collective, algorithm=algorithm if algorithm != "auto" else "none", num_ranks=n,
            num_nodes=ctx.placement.num_nodes, size_bytes=size_bytes, loads=empty, busy_s=0.0, bottleneck=-1,
            latency_s=0.0, steps=0,
        )
    p = _choose(ctx, collective, algorithm, size_bytes)
    return result_from_loads(
        ctx.topo, collective=collective, algorithm=p.algorithm, num_ranks=n, num_nodes=ctx.placement.num_nodes,
        size_bytes=size_bytes, loads=p.loads, busy_s=p.busy_per_byte_s, bottleneck=p.bottleneck,
        latency_s=p.latency_s, steps=p.steps, scale=size_bytes,
    )
