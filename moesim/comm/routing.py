"""Route traffic over a :class:`~moesim.comm.topology.Topology`: link loads, bottleneck, latency.

Routing rule (every router here implements the same one):

* traffic from a rank to itself is local and touches no link;
* between two accelerators of one scale-up domain it takes the scale-up path
  (GPU -> switch -> GPU, or the direct mesh link);
* otherwise it leaves through the source GPU's NIC(s) and enters through the
  destination GPU's NIC(s), spread by the fixed GPU -> NIC shares of the
  topology; between two NICs on different leaves it is spread evenly over all
  spines (equal-cost multipath, as a fluid: no hash collisions).

The load on every link is the sum of the bytes routed over it. The bandwidth
term of a collective is that of its bottleneck link::

    t_bw = max_e  load_e / (capacity_e * efficiency_e)

Three routers give the same loads (``tests/comm`` checks it):

* :meth:`GroupRoutes.direct` / :meth:`GroupRoutes.uniform` /
  :meth:`GroupRoutes.hierarchical`: vectorised over a group whose ranks use the
  same local indices on every node. They never look at rank pairs one by one:
  they need the row and column sums of the traffic matrix, its node-diagonal
  blocks and its sums by (leaf group, local index) of source and destination,
  i.e. two passes over the matrix, then small ``einsum`` products. This is
  what makes a 1024-rank all-to-all cost about a millisecond.
* :func:`route_flows`: any list of (source, destination, bytes) flows,
  accumulated with ``numpy.bincount`` over link indices (sparse collectives,
  irregular groups).
* :func:`route_reference`: walks the networkx graph (``all_shortest_paths`` in
  the scale-up and in the fabric subgraph) flow by flow; slow, for tests.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .placement import Placement
from .topology import KIND_CODES, LinkKind, Topology


@dataclass(frozen=True, eq=False)
class LinkLoads:
    """Bytes carried by every link of a topology for one routed traffic pattern.

    ``load_bytes[e]`` is the load of ``topology.edges[e]`` in bytes;
    ``local_bytes`` stayed on their rank, ``scale_up_bytes`` were injected into
    scale-up links (counted once per transfer), ``network_bytes`` into NICs;
    ``latency_s`` is the one-message latency of the slowest path class used
    (seconds).
    """

    topology: Topology
    load_bytes: np.ndarray
    local_bytes: float
    scale_up_bytes: float
    network_bytes: float
    latency_s: float

    def busiest(self) -> tuple[float, int]:
        """``(t_bw, e)``: the bottleneck link's busy time in seconds and its index (-1 if no load)."""
        busy = self.load_bytes * self.topology.inv_rate_s_per_byte
        if busy.size == 0:
            return 0.0, -1
        e = int(np.argmax(busy))
        return (float(busy[e]), e) if busy[e] > 0 else (0.0, -1)

    def scaled(self, factor: float) -> "LinkLoads":
        """The same pattern with every byte multiplied by ``factor`` (latency unchanged)."""
        return LinkLoads(
            self.topology,
            self.load_bytes * factor,
            self.local_bytes * factor,
            self.scale_up_bytes * factor,
            self.network_bytes * factor,
            self.latency_s,
        )

    def reversed(self) -> "LinkLoads":
        """Every flow in the opposite direction (combine after dispatch): load of (u, v) moves to (v, u)."""
        return LinkLoads(
            self.topology,
            self.load_bytes[self.topology.reverse],
            self.local_bytes,
            self.scale_up_bytes,
            self.network_bytes,
            self.latency_s,
        )

    def per_link(self) -> dict[tuple, float]:
        """``{(u, v): bytes}`` for every loaded link (for tests and reports)."""
        nz = np.nonzero(self.load_bytes)[0]
        return {self.topology.edges[e]: float(self.load_bytes[e]) for e in nz}

    def top_links(self, k: int = 5) -> list[tuple[int, float, float]]:
        """The ``k`` busiest links as ``(index, load_bytes, busy_s)``, busiest first."""
        busy = self.load_bytes * self.topology.inv_rate_s_per_byte
        idx = np.argsort(-busy, kind="stable")[:k]
        return [(int(e), float(self.load_bytes[e]), float(busy[e])) for e in idx if busy[e] > 0]


def _latency(topo: Topology, scale_up: float, network: float, total: float) -> float:
    eps = 1e-12 * max(total, 1.0)
    if network > eps:
        return topo.spec.scale_out_latency_s
    if scale_up > eps:
        return topo.spec.scale_up_latency_s
    return 0.0


def _group_slices(keys: np.ndarray) -> list[tuple[int, int]]:
    """Runs of equal values in the non-decreasing array ``keys`` as (start, end) pairs."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], keys.size]
    return list(zip(starts.tolist(), ends.tolist()))


class GroupRoutes:
    """Route tables of one group on one topology (built once, cached by :func:`group_routes`)."""

    def __init__(self, topo: Topology, placement: Placement):
        self.topo = topo
        self.placement = placement
        self.n = placement.num_ranks
        if not placement.regular:
            return
        slots = placement.slots
        assert slots is not None
        nodes = placement.nodes
        m, r = nodes.size, slots.size
        self.m, self.r = m, r
        eye = np.eye(r, dtype=bool)
        dom_of_slot = slots // topo.domain_size
        self.same_dom = (dom_of_slot[:, None] == dom_of_slot[None, :]) & ~eye
        self.off_net = self.same_dom | eye  # pairs inside a node that never touch the network
        acc = nodes[:, None] * topo.node_size + slots[None, :]
        self.up_ids = self.down_ids = self.mesh_ids = None
        if topo.has_switch and topo.domain_size > 1:
            self.up_ids = topo.up_link[acc]
            self.down_ids = topo.down_link[acc]
        if topo.has_mesh and topo.domain_size > 1:
            mesh = topo.mesh_link[nodes][:, slots][:, :, slots]
            self.mesh_ids = mesh
            self.mesh_valid = mesh >= 0
        self.network = topo.has_network and (m > 1 or not self.same_dom[~eye].all())
        if not topo.has_network:
            if m > 1 or not self.same_dom[~eye].all():
                raise InputError(f"{topo.spec.profile_name} has no network between these ranks", field="ranks")
            return
        frac = topo.gpu_nic_frac[slots]  # [r, N]
        used = np.flatnonzero(frac.sum(axis=0) > 0)
        self.nic_frac = frac[:, used]
        self.nic_up_ids = topo.nic_up[nodes][:, used]
        self.nic_down_ids = topo.nic_down[nodes][:, used]
        pu = topo.pcie_up[nodes][:, slots][:, :, used]
        self.pcie_valid = pu >= 0
        self.pcie_up_ids = pu[self.pcie_valid]
        self.pcie_down_ids = topo.pcie_down[nodes][:, slots][:, :, used][self.pcie_valid]
        layout = topo.layout
        assert layout is not None
        lg = nodes // layout.nodes_per_leaf_group
        self.bounds = _group_slices(lg)
        self.starts = np.array([s for s, _ in self.bounds])
        self.group_ids = lg[self.starts]
        self.G = len(self.bounds)
        self.group_counts = np.array([e - s for s, e in self.bounds], dtype=float)
        C = layout.leaf_slots
        slot_of_nic = np.array(layout.nic_leaf_slot)[used]
        H = np.zeros((used.size, C))
        H[np.arange(used.size), slot_of_nic] = 1.0
        self.leaf_frac = self.nic_frac @ H  # [r, C]
        self.C = C
        self.leaf_ids = self.group_ids[:, None] * C + np.arange(C)[None, :]  # [G, C]
        self.S = topo.num_spines
        if self.S:
            self.spine_up_ids = topo.spine_up[self.leaf_ids]  # [G, C, S]
            self.spine_down_ids = topo.spine_down[self.leaf_ids]

    # ----------------------------------------------------------------- emitting loads
    def _emit(
        self,
        up: np.ndarray | None,
        down: np.ndarray | None,
        intra: np.ndarray,
        net_out: np.ndarray,
        net_in: np.ndarray,
        leaf_ll: np.ndarray | None,
        local_bytes: float,
        latency_s: float | None = None,
    ) -> LinkLoads:
        topo = self.topo
        loads = np.zeros(topo.num_links)
        scale_up = 0.0
        if self.up_ids is not None and up is not None and down is not None:
            loads[self.up_ids] = up
            loads[self.down_ids] = down
            scale_up = float(up.sum())
        elif self.mesh_ids is not None:
            loads[self.mesh_ids[self.mesh_valid]] = intra[self.mesh_valid]
            scale_up = float(intra[self.mesh_valid].sum())
        network = 0.0
        if self.network:
            loads[self.nic_up_ids] = net_out @ self.nic_frac
            loads[self.nic_down_ids] = net_in @ self.nic_frac
            loads[self.pcie_up_ids] = (net_out[:, :, None] * self.nic_frac[None])[self.pcie_valid]
            loads[self.pcie_down_ids] = (net_in[:, :, None] * self.nic_frac[None])[self.pcie_valid]
            network = float(net_out.sum())
            if self.S and leaf_ll is not None:
                L = self.G * self.C
                flat = leaf_ll.reshape(L, L)
                d = np.diagonal(flat)
                out = (flat.sum(axis=1) - d).reshape(self.G, self.C) / self.S
                inn = (flat.sum(axis=0) - d).reshape(self.G, self.C) / self.S
                loads[self.spine_up_ids] = np.broadcast_to(out[:, :, None], self.spine_up_ids.shape)
                loads[self.spine_down_ids] = np.broadcast_to(inn[:, :, None], self.spine_down_ids.shape)
        total = local_bytes + scale_up + network
        lat = _latency(topo, scale_up, network, total) if latency_s is None else latency_s
        return LinkLoads(topo, loads, float(local_bytes), scale_up, network, lat)

    def _finish_direct(self, row, col, blocks, tg) -> LinkLoads:
        """Loads from the aggregates of a direct pattern.

        ``row``/``col`` [m, r]: bytes sent / received per rank (local included);
        ``blocks`` [m, r, r]: same-node pairs; ``tg`` [G, r, G, r]: bytes summed by
        (leaf group, slot) of source and destination, everything included.
        """
        r = self.r
        ar = np.arange(r)
        local = blocks[:, ar, ar]
        intra = blocks * self.same_dom
        up = intra.sum(axis=2)
        down = intra.sum(axis=1)
        net_out = np.maximum(row - local - up, 0.0)
        net_in = np.maximum(col - local - down, 0.0)
        ll = None
        if self.network and self.S and tg is not None:
            keep = blocks * self.off_net
            per_group = np.stack([keep[s:e].sum(axis=0) for s, e in self.bounds])
            tg = tg.copy()
            gi = np.arange(self.G)
            tg[gi, :, gi, :] -= per_group
            ll = np.einsum("jc,gjhk,kd->gchd", self.leaf_frac, tg, self.leaf_frac, optimize=True)
        return self._emit(up, down, intra, net_out, net_in, ll, float(local.sum()))

    # ----------------------------------------------------------------- routers
    def direct(self, rank_bytes: np.ndarray) -> LinkLoads:
        """Route ``rank_bytes[s, t]`` (bytes from group rank s to t) directly (see module docstring)."""
        T = np.asarray(rank_bytes, dtype=float)
        if T.shape != (self.n, self.n):
            raise ValueError(f"traffic matrix shape {T.shape} does not match a group of {self.n} ranks")
        if not self.placement.regular:
            src, dst = np.nonzero(T)
            return route_flows(self.topo, self.placement.accelerators[src], self.placement.accelerators[dst], T[src, dst])
        if self.placement.order is not None:
            o = self.placement.order
            T = T[np.ix_(o, o)]
        m, r = self.m, self.r
        T4 = T.reshape(m, r, m, r)
        ii = np.arange(m)
        blocks = T4[ii, :, ii, :]
        row = T.sum(axis=1).reshape(m, r)
        tg = None
        if self.network and self.S:
            t2 = np.stack([T4[s:e].sum(axis=0) for s, e in self.bounds])  # [G, r, m, r]
            col = t2.sum(axis=(0, 1))
            tg = np.add.reduceat(t2, self.starts, axis=2)
        else:
            col = T.sum(axis=0).reshape(m, r)
        return self._finish_direct(row, col, blocks, tg)

    def uniform(self, bytes_per_pair: float) -> LinkLoads:
        """Route the pattern where every rank sends ``bytes_per_pair`` to every rank (itself included)."""
        c = float(bytes_per_pair)
        if not self.placement.regular:
            return self.direct(np.full((self.n, self.n), c))
        m, r, n = self.m, self.r, self.n
        row = np.full((m, r), c * n)
        blocks = np.full((m, r, r), c)
        tg = None
        if self.network and self.S:
            cnt = self.group_counts
            tg = c * np.broadcast_to((cnt[:, None] * cnt[None, :])[:, None, :, None], (self.G, r, self.G, r)).copy()
        return self._finish_direct(row, row.copy(), blocks, tg)

    def hierarchical(self, rank_bytes: np.ndarray, node_bytes: np.ndarray) -> LinkLoads:
        """Route an expert-parallel dispatch the way DeepEP's normal kernels do.

        Each token goes over the network once per destination node, from its
        source GPU to the GPU with the same local index on that node
        (``node_bytes[s, N]``), and is then forwarded over the scale-up links to
        every destination GPU of that node (``rank_bytes[s, t]``). Traffic
        inside the source node goes over scale-up directly. So on node N the
        scale-up link from local j to local k carries
        ``sum_i rank_bytes[(i, j), (N, k)]`` over all source nodes i.
        """
        self._check_hier()
        T = np.asarray(rank_bytes, dtype=float)
        NB = np.asarray(node_bytes, dtype=float)
        m, r = self.m, self.r
        if T.shape != (self.n, self.n) or NB.shape != (self.n, m):
            raise ValueError(f"traffic shapes {T.shape}, {NB.shape} do not match {self.n} ranks on {m} nodes")
        T4 = T.reshape(m, r, m, r)
        F = T4.sum(axis=0).transpose(1, 0, 2)  # [N, j, k]: all sources with local j -> (N, k)
        ar = np.arange(r)
        ii = np.arange(m)
        local = float(T4[ii, :, ii, :][:, ar, ar].sum())
        nb3 = NB.reshape(m, r, m)
        self_node = nb3[ii, :, ii]  # [m, r]
        net_out = np.maximum(nb3.sum(axis=2) - self_node, 0.0)
        net_in = np.maximum(nb3.sum(axis=0).T - self_node, 0.0)
        llh = None
        if self.network and self.S:
            g1 = np.stack([nb3[s:e].sum(axis=0) for s, e in self.bounds])  # [G, r, m]
            llh = np.add.reduceat(g1, self.starts, axis=2)  # [G, r, G]
            self_g = np.stack([self_node[s:e].sum(axis=0) for s, e in self.bounds])  # [G, r]
            gi = np.arange(self.G)
            llh[gi, :, gi] -= self_g
        return self._finish_hier(F, local, net_out, net_in, llh)

    def hierarchical_uniform(self, bytes_per_pair: float) -> LinkLoads:
        """:meth:`hierarchical` for every rank sending ``bytes_per_pair`` to every rank (no duplicates)."""
        self._check_hier()
        c = float(bytes_per_pair)
        m, r = self.m, self.r
        F = np.full((m, r, r), m * c)
        net = np.full((m, r), (m - 1) * r * c)
        llh = None
        if self.network and self.S:
            cnt = self.group_counts
            llh = np.broadcast_to((cnt[:, None] * cnt[None, :] * r * c)[:, None, :], (self.G, r, self.G)).copy()
            gi = np.arange(self.G)
            llh[gi, :, gi] -= (cnt * r * c)[:, None]
        return self._finish_hier(F, self.n * c, net, net.copy(), llh)

    def _check_hier(self) -> None:
        topo = self.topo
        if not self.placement.regular or self.placement.order is not None:
            raise InputError(
                "hierarchical all-to-all needs a group with the same ranks on every node, in node-major order",
                field="algorithm",
            )
        if topo.domain_size != topo.node_size:
            raise InputError(
                f"hierarchical all-to-all forwards inside a node over scale-up, but {topo.spec.profile_name} has "
                f"scale-up domains of {topo.domain_size} in nodes of {topo.node_size}; use algorithm 'direct'",
                field="algorithm",
            )

    def _finish_hier(self, F, local, net_out, net_in, llh) -> LinkLoads:
        """Loads of a hierarchical pattern: ``F[N, j, k]`` scale-up bytes inside node N from local j to k,
        ``net_out``/``net_in`` [m, r] network bytes per rank, ``llh[g, j, h]`` network bytes on rail j
        from leaf group g to h (same local index on both ends)."""
        m, r = self.m, self.r
        intra = F * ~np.eye(r, dtype=bool)
        up = intra.sum(axis=2)
        down = intra.sum(axis=1)
        ll = None
        if llh is not None:
            ll = np.einsum("jc,jd,gjh->gchd", self.leaf_frac, self.leaf_frac, llh, optimize=True)
        network = float(net_out.sum())
        scale_up = float(up.sum())
        total = local + scale_up + network
        eps = 1e-12 * max(total, 1.0)
        spec = self.topo.spec
        lat = (spec.scale_out_latency_s + spec.scale_up_latency_s) if network > eps else (
            spec.scale_up_latency_s if scale_up > eps else 0.0
        )
        if not self.network:
            net_out = net_in = np.zeros((m, r))
        return self._emit(up, down, intra, net_out, net_in, ll, local, latency_s=lat)

    def flows(self, src: np.ndarray, dst: np.ndarray, nbytes: np.ndarray) -> LinkLoads:
        """Route flows between group ranks ``src[i] -> dst[i]`` of ``nbytes[i]`` bytes."""
        acc = self.placement.accelerators
        return route_flows(self.topo, acc[np.asarray(src)], acc[np.asarray(dst)], np.asarray(nbytes, dtype=float))


_ROUTES: "OrderedDict[tuple, GroupRoutes]" = OrderedDict()
_ROUTES_SIZE = 256


def group_routes(topo: Topology, placement: Placement) -> GroupRoutes:
    """The (cached) route tables of ``placement`` on ``topo``."""
    key = (topo.spec, topo.num_nodes, placement.key)
    hit = _ROUTES.get(key)
    if hit is not None:
        _ROUTES.move_to_end(key)
        return hit
    routes = GroupRoutes(topo, placement)
    _ROUTES[key] = routes
    while len(_ROUTES) > _ROUTES_SIZE:
        _ROUTES.popitem(last=False)
    return routes


def clear_route_cache() -> None:
    _ROUTES.clear()


# ----------------------------------------------------------------------------- flows


def _nic_options(topo: Topology) -> tuple[np.ndarray, np.ndarray]:
    frac = topo.gpu_nic_frac
    q = max(1, int((frac > 0).sum(axis=1).max()))
    opts = np.zeros((topo.node_size, q), dtype=np.int64)
    fr = np.zeros((topo.node_size, q))
    for i in range(topo.node_size):
        ks = np.flatnonzero(frac[i])
        opts[i, : ks.size] = ks
        fr[i, : ks.size] = frac[i, ks]
    return opts, fr


def route_flows(topo: Topology, src_acc: np.ndarray, dst_acc: np.ndarray, nbytes: np.ndarray) -> LinkLoads:
    """Route flows between accelerators (global indices) by the rule in the module docstring."""
    a_s = np.asarray(src_acc, dtype=np.int64)
    a_t = np.asarray(dst_acc, dtype=np.int64)
    b = np.asarray(nbytes, dtype=float)
    P, dom = topo.node_size, topo.domain_size
    ns, ls = np.divmod(a_s, P)
    nt, lt = np.divmod(a_t, P)
    local = a_s == a_t
    same = (ns == nt) & (ls // dom == lt // dom) & ~local
    net = ~local & ~same
    ids: list[np.ndarray] = []
    ws: list[np.ndarray] = []
    if same.any():
        if topo.has_switch:
            ids += [topo.up_link[a_s[same]], topo.down_link[a_t[same]]]
            ws += [b[same], b[same]]
        elif topo.has_mesh:
            ids.append(topo.mesh_link[ns[same], ls[same], lt[same]])
            ws.append(b[same])
        else:  # pragma: no cover - domains of one accelerator have no "same" pairs
            raise AssertionError("scale-up traffic without scale-up links")
    if net.any():
        if not topo.has_network:
            raise InputError(f"{topo.spec.profile_name} has no network between these ranks", field="ranks")
        opts, fr = _nic_options(topo)
        s_n, s_l, t_n, t_l, bb = ns[net], ls[net], nt[net], lt[net], b[net]
        Q = opts.shape[1]
        leaf_out = np.zeros(topo.num_leaves)
        leaf_in = np.zeros(topo.num_leaves)
        for q in range(Q):
            ks, fs = opts[s_l, q], fr[s_l, q]
            kt, ft = opts[t_l, q], fr[t_l, q]
            ms, mt = fs > 0, ft > 0
            ids += [topo.pcie_up[s_n[ms], s_l[ms], ks[ms]], topo.nic_up[s_n[ms], ks[ms]]]
            ws += [bb[ms] * fs[ms]] * 2
            ids += [topo.pcie_down[t_n[mt], t_l[mt], kt[mt]], topo.nic_down[t_n[mt], kt[mt]]]
            ws += [bb[mt] * ft[mt]] * 2
        if topo.num_spines:
            for qs in range(Q):
                ks, fs = opts[s_l, qs], fr[s_l, qs]
                for qt in range(Q):
                    kt, ft = opts[t_l, qt], fr[t_l, qt]
                    w = bb * fs * ft
                    l_s = topo.nic_leaf[s_n, ks]
                    l_t = topo.nic_leaf[t_n, kt]
                    cross = (l_s != l_t) & (w > 0)
                    leaf_out += np.bincount(l_s[cross], w[cross], minlength=topo.num_leaves)
                    leaf_in += np.bincount(l_t[cross], w[cross], minlength=topo.num_leaves)
            S = topo.num_spines
            ids += [topo.spine_up.ravel(), topo.spine_down.ravel()]
            ws += [np.repeat(leaf_out / S, S), np.repeat(leaf_in / S, S)]
    E = topo.num_links
    loads = np.bincount(np.concatenate(ids), np.concatenate(ws), minlength=E) if ids else np.zeros(E)
    lb, sb, nb = float(b[local].sum()), float(b[same].sum()), float(b[net].sum())
    return LinkLoads(topo, loads, lb, sb, nb, _latency(topo, sb, nb, lb + sb + nb))


# ----------------------------------------------------------------------------- reference


def route_reference(topo: Topology, src_acc, dst_acc, nbytes) -> LinkLoads:
    """Route flows by walking the networkx graph (slow; the check on the vectorised routers).

    Same-domain flows take every shortest path of the scale-up subgraph, split
    evenly; other flows split over the source GPU's PCIe edges to NICs and the
    destination's, then over every shortest path of the fabric subgraph
    (NICs, leaves, spines) between the two NICs, evenly.
    """
    import networkx as nx

    g = topo.graph
    su_kinds = {LinkKind.SCALE_UP.value, LinkKind.MESH.value}
    net_kinds = {LinkKind.NIC.value, LinkKind.FABRIC.value}
    su = g.edge_subgraph([(u, v) for u, v, d in g.edges(data=True) if d["kind"] in su_kinds])
    fab = g.edge_subgraph([(u, v) for u, v, d in g.edges(data=True) if d["kind"] in net_kinds])
    loads = np.zeros(topo.num_links)
    lb = sb = nb = 0.0
    P, dom = topo.node_size, topo.domain_size

    def add_path(path, w):
        for u, v in zip(path, path[1:]):
            loads[g.edges[u, v]["index"]] += w

    for a, t, w in zip(np.asarray(src_acc).tolist(), np.asarray(dst_acc).tolist(), np.asarray(nbytes).tolist()):
        if w == 0:
            continue
        if a == t:
            lb += w
            continue
        if a // P == t // P and (a % P) // dom == (t % P) // dom:
            paths = list(nx.all_shortest_paths(su, ("gpu", a), ("gpu", t)))
            for p in paths:
                add_path(p, w / len(paths))
            sb += w
            continue
        nb += w
        src_nics = [(v, d["index"]) for v, d in g[("gpu", a)].items() if d["kind"] == LinkKind.PCIE.value]
        dst_nics = [(u, g.edges[u, ("gpu", t)]["index"]) for u in g.predecessors(("gpu", t)) if u[0] == "nic"]
        fs = w / len(src_nics)
        for _, e in src_nics:
            loads[e] += fs
        for _, e in dst_nics:
            loads[e] += w / len(dst_nics)
        for ns_, _ in src_nics:
            for nt_, _ in dst_nics:
                ww = w / (len(src_nics) * len(dst_nics))
                paths = list(nx.all_shortest_paths(fab, ns_, nt_))
                for p in paths:
                    add_path(p, ww / len(paths))
    return LinkLoads(topo, loads, lb, sb, nb, _latency(topo, sb, nb, lb + sb + nb))


__all__ = [
    "LinkLoads",
    "GroupRoutes",
    "group_routes",
    "route_flows",
    "route_reference",
    "clear_route_cache",
    "KIND_CODES",
]
