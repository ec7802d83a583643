"""The cluster as a directed graph: accelerators, scale-up switches, NICs, fabric switches.

:func:`build_topology` turns a hardware profile and a number of nodes into a
:class:`Topology`: a ``networkx.DiGraph`` (built on first use of ``Topology.graph``)
with one edge per link **and per direction**, each carrying ``capacity_bytes_per_s``, ``latency_s``,
``efficiency_frac`` and ``kind``, plus flat numpy arrays of the same links
(index ``e`` in every array is edge ``Topology.edges[e]``) that the routers in
:mod:`moesim.comm.routing` use so that no networkx call sits in a hot path.

What is built
-------------

* **Accelerators** ``("gpu", a)``, numbered node-major: accelerator ``a`` is
  local index ``a % P`` of node ``a // P`` (``P`` accelerators per node).
* **Scale-up domain** (one per node):

  - ``nvswitch`` (8-GPU HGX/DGX nodes), ``nvlink_domain`` (GB200 NVL72 rack) and
    ``pcie``: one logical switch ``("nvswitch"|"nvlink_switch"|"pcie_switch", d)``
    standing for all switch chips of the domain; GPU -> switch and switch -> GPU
    links of ``node.scale_up_bandwidth_per_accelerator_bytes_per_s`` each.
    (The four NVSwitch chips of a DGX H100 and the 18 NVLink switch chips of an
    NVL72 rack are folded into one non-blocking crossbar; the per-GPU link is
    the constraint either way.)
  - ``infinity_fabric`` (MI300X): a full mesh, one GPU -> GPU link per ordered
    pair with ``aggregate / (D - 1)`` bytes/s (``D`` = domain size), i.e. 64 GB/s
    per direction for MI300X's seven 64 GB/s xGMI links.
  - ``none``: no scale-up links.

  When ``scale_up_domain_size`` is a multiple of ``accelerators_per_node`` the
  domain is taken as the routing node (its NICs pooled), which is how the
  shipped ``gb200-nvl72`` profile already describes a rack.
* **NICs** ``("nic", node, k)``, ``scale_out.nics_per_node`` per node, joined to
  accelerators by PCIe links (``kind = "pcie"``, infinite capacity: not
  modelled). With as many NICs as accelerators, GPU ``i`` owns NIC ``i``; with
  fewer, GPU ``i`` shares NIC ``floor(i * N / P)``; with more, GPU ``i`` spreads
  evenly over the NICs ``k`` with ``floor(k * P / N) == i``.
* **Leaf switches** ``("leaf", l)`` and **spines** ``("spine", s)`` of a
  two-level fat tree. A leaf of ``p = leaf_switch_ports`` ports and
  oversubscription ``o`` has ``D = floor(p o / (1 + o))`` NIC-facing ports and
  ``U = p - D`` uplinks; every leaf has one uplink of ``D * rate / (o * U)`` to
  each of ``U`` spines (so total uplink capacity is ``D * rate / o``).
  Rail-optimized fabrics put NIC ``k`` of every node on rail ``k mod R``; the
  ``D`` ports of a leaf take the NICs of one rail from consecutive nodes
  (a DGX SuperPOD scalable unit: 32 nodes, 8 rail leaves). ``R`` is the number
  of NICs per node when they fit on one leaf, else 4 for an NVLink-domain rack
  (4 GPUs and NICs per GB200 compute tray), else the largest divisor of the NIC
  count that fits. A non-rail fabric fills leaves with the NICs of consecutive
  nodes (``R = 1``). A single leaf needs no spine.

Latency lives on the links so a path's latency is their sum: GPU -> switch and
switch -> GPU carry half of ``node.scale_up_latency_s`` each (a mesh link all of
it), NIC -> leaf and leaf -> NIC half of ``scale_out.latency_s`` each, PCIe and
leaf <-> spine links nothing, so any inter-node path costs ``scale_out.latency_s``
and any scale-up path ``node.scale_up_latency_s``.

Left out: a third fat-tree level (a logical spine stands for the spine and core
blocks of larger fabrics; with ECMP and no oversubscription above the leaves this
changes no link load), separate network planes that never meet (DeepSeek's
multi-plane fabric; here rails meet at the spines), PCIe and host bandwidth,
per-hop switch latency, NVLink SHARP engines as graph nodes (see
:mod:`moesim.comm.collectives`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..hardware import HardwareProfile
from .spec import NetworkSpec, check_cluster, network_spec, nodes_for

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx

__all__ = ["KIND_CODES", "KINDS_BY_CODE", "LinkKind", "NetworkSpec", "Topology", "build_topology", "check_cluster",
           "clear_cache", "network_spec", "nodes_for"]


class LinkKind(str, Enum):
    """What a link is; the kinds share one achievable fraction of their capacity."""

    SCALE_UP = "scale_up"  # GPU <-> NVSwitch / NVLink switch / PCIe switch
    MESH = "mesh"  # GPU -> GPU (Infinity Fabric / xGMI full mesh)
    PCIE = "pcie"  # GPU <-> NIC (not modelled: infinite capacity)
    NIC = "nic"  # NIC <-> leaf switch
    FABRIC = "fabric"  # leaf <-> spine

    def __str__(self) -> str:
        return self.value


KIND_CODES = {k: i for i, k in enumerate(LinkKind)}
KINDS_BY_CODE = list(LinkKind)


@dataclass(frozen=True)
class FabricLayout:
    """How NICs map onto leaf switches (derived from the profile; see module docstring)."""

    leaf_downlinks: int  # D: NIC-facing ports per leaf
    leaf_uplinks: int  # U: uplinks per leaf (= number of spines when there are >= 2 leaves)
    num_rails: int  # R
    nodes_per_leaf_group: int  # nodes whose NICs share the same set of leaves
    leaf_slots: int  # C: leaves per group of nodes
    nic_leaf_slot: tuple[int, ...]  # h(k): leaf slot of NIC k within its node's group


def fabric_layout(spec: NetworkSpec, node_size: int, nics: int) -> FabricLayout:
    """Leaf / rail layout for routing nodes of ``node_size`` accelerators and ``nics`` NICs."""
    p, o = spec.leaf_switch_ports, spec.oversubscription_ratio
    down = min(max(1, int(math.floor(p * o / (1.0 + o) + 1e-9))), p - 1)
    up = p - down
    if not spec.rail_optimized:
        rails = 1
    elif nics <= down:
        rails = nics
    elif spec.scale_up == "nvlink_domain" and nics % 4 == 0:
        rails = 4
    else:
        rails = max(d for d in range(1, nics + 1) if nics % d == 0 and nics // d <= down) if nics > 0 else 1
    per_rail = max(1, nics // rails) if nics else 1
    if per_rail <= down:
        leaves_per_rail, npl = 1, max(1, down // per_rail)
    else:
        leaves_per_rail, npl = -(-per_rail // down), 1
    slots = tuple((k % rails) * leaves_per_rail + (k // rails) // down for k in range(nics))
    return FabricLayout(
        leaf_downlinks=down,
        leaf_uplinks=up,
        num_rails=rails,
        nodes_per_leaf_group=npl,
        leaf_slots=rails * leaves_per_rail,
        nic_leaf_slot=slots,
    )


def gpu_nic_fractions(node_size: int, nics: int) -> np.ndarray:
    """``A[i, k]``: share of accelerator ``i``'s network traffic that uses NIC ``k`` (rows sum to 1)."""
    a = np.zeros((node_size, max(nics, 0)))
    if nics == 0:
        return a
    if nics >= node_size:
        for k in range(nics):
            a[(k * node_size) // nics, k] = 1.0
    else:
        for i in range(node_size):
            a[i, (i * nics) // node_size] = 1.0
    return a / a.sum(axis=1, keepdims=True)


@dataclass(frozen=True, eq=False)
class Topology:
    """A built cluster: the graph plus flat link arrays and index tables.

    Link ``e`` is ``edges[e] = (u, v)``; ``capacity_bytes_per_s[e]`` per direction
    (``inf`` for PCIe), ``efficiency_frac[e]`` the achievable fraction for large
    messages, ``rate_bytes_per_s[e]`` their product, ``latency_s[e]``, ``kind[e]``
    a :class:`LinkKind` code and ``reverse[e]`` the link in the other direction.
    Index tables (``-1`` where a link does not exist) are documented inline.
    """

    spec: NetworkSpec
    num_nodes: int  # routing nodes (scale-up domains when a domain spans nodes)
    node_size: int  # accelerators per routing node
    domain_size: int  # accelerators per scale-up domain (<= node_size)
    nics_per_node: int  # NICs per routing node
    edges: list[tuple[Any, Any]] = field(repr=False)
    kind: np.ndarray = field(repr=False)
    capacity_bytes_per_s: np.ndarray = field(repr=False)
    efficiency_frac: np.ndarray = field(repr=False)
    rate_bytes_per_s: np.ndarray = field(repr=False)
    inv_rate_s_per_byte: np.ndarray = field(repr=False)  # 1 / rate (0 where capacity is infinite)
    latency_s: np.ndarray = field(repr=False)
    reverse: np.ndarray = field(repr=False)
    up_link: np.ndarray = field(repr=False)  # [A] GPU -> scale-up switch
    down_link: np.ndarray = field(repr=False)  # [A] scale-up switch -> GPU
    mesh_link: np.ndarray = field(repr=False)  # [nodes, P, P] GPU i -> GPU j of a mesh node
    pcie_up: np.ndarray = field(repr=False)  # [nodes, P, N] GPU i -> NIC k
    pcie_down: np.ndarray = field(repr=False)  # [nodes, P, N] NIC k -> GPU i
    nic_up: np.ndarray = field(repr=False)  # [nodes, N] NIC -> leaf
    nic_down: np.ndarray = field(repr=False)  # [nodes, N] leaf -> NIC
    nic_leaf: np.ndarray = field(repr=False)  # [nodes, N] leaf index of each NIC
    spine_up: np.ndarray = field(repr=False)  # [leaves, spines] leaf -> spine
    spine_down: np.ndarray = field(repr=False)  # [leaves, spines] spine -> leaf
    gpu_nic_frac: np.ndarray = field(repr=False)  # [P, N] see gpu_nic_fractions
    layout: FabricLayout | None = None
    num_leaves: int = 0
    num_spines: int = 0

    @cached_property
    def graph(self) -> "nx.DiGraph":
        """The cluster as a ``networkx.DiGraph``: the same links as the arrays, one edge per link and direction
        carrying its ``index``, ``kind``, ``capacity_bytes_per_s``, ``efficiency_frac`` and ``latency_s``.

        Built on first use (the routers read the arrays; an estimate never needs networkx).
        """
        import networkx as nx

        graph = nx.DiGraph(profile=self.spec.profile_name, num_nodes=self.num_nodes)
        for a in range(self.num_accelerators):
            graph.add_node(("gpu", a), kind="gpu", node=a // self.node_size, local=a % self.node_size)
        graph.add_edges_from(
            (u, v, {
                "index": i,
                "kind": KINDS_BY_CODE[int(self.kind[i])].value,
                "capacity_bytes_per_s": float(self.capacity_bytes_per_s[i]),
                "efficiency_frac": float(self.efficiency_frac[i]),
                "latency_s": float(self.latency_s[i]),
            })
            for i, (u, v) in enumerate(self.edges)
        )
        for n in graph.nodes:
            graph.nodes[n].setdefault("kind", n[0])
        return graph

    # ------------------------------------------------------------------ helpers
    @property
    def num_accelerators(self) -> int:
        return self.num_nodes * self.node_size

    @property
    def num_links(self) -> int:
        return len(self.edges)

    @property
    def has_switch(self) -> bool:
        return self.spec.scale_up in ("nvswitch", "nvlink_domain", "pcie")

    @property
    def has_mesh(self) -> bool:
        return self.spec.scale_up == "infinity_fabric"

    @property
    def has_network(self) -> bool:
        return self.nics_per_node > 0

    def link_name(self, e: int) -> str:
        """Human name of link ``e``, e.g. ``'gpu 3 -> nvswitch 0'``."""
        u, v = self.edges[e]
        return f"{_node_name(u)} -> {_node_name(v)}"

    def link_kind(self, e: int) -> LinkKind:
        return KINDS_BY_CODE[int(self.kind[e])]


def _node_name(n: Any) -> str:
    if n[0] == "nic":
        return f"nic {n[1]}.{n[2]}"
    return f"{n[0]} {n[1]}"


# ------------------------------------------------------------------------- building

_CACHE: "OrderedDict[tuple[NetworkSpec, int], Topology]" = OrderedDict()
_CACHE_SIZE = 32


def build_topology(profile: HardwareProfile | NetworkSpec, num_nodes: int, *, cache: bool = True) -> Topology:
    """Build (or fetch from the cache) the topology of ``num_nodes`` routing nodes of ``profile``.

    Raises :class:`InputError` when the cluster does not fit the profile
    (``scale_out.max_nodes``, or more than one node without a fabric).
    The cache holds the most recent 32 (profile numbers, size) pairs.
    """
    spec = profile if isinstance(profile, NetworkSpec) else network_spec(profile)
    key = (spec, int(num_nodes))
    if cache and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    check_cluster(spec, int(num_nodes))
    topo = _build(spec, int(num_nodes))
    if cache:
        _CACHE[key] = topo
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return topo


def clear_cache() -> None:
    """Forget every cached topology (:func:`moesim.caches.clear_caches` clears every cache of moesim)."""
    _CACHE.clear()


def _build(spec: NetworkSpec, num_nodes: int) -> Topology:
    apn, dom = spec.accelerators_per_node, spec.scale_up_domain_size
    if spec.scale_up == "none":
        dom = 1
    node_size = max(apn, dom)
    nics = spec.nics_per_node * (node_size // apn)
    if dom < node_size and nics == 0:
        raise InputError(
            f"{spec.profile_name}: scale-up domains of {dom} inside nodes of {node_size} but no scale-out fabric "
            "to join them",
            field="scale_out.fabric",
        )
    num_acc = num_nodes * node_size

    # Links are added in blocks that share kind, capacity, efficiency and latency; most blocks are pairs, each
    # link followed by its reverse (link i of a pair block pairs with i ^ 1 counted from the block's start).
    names: list[tuple[Any, Any]] = []
    attrs: list[tuple[Any, Any, Any, Any, int]] = []  # (kind code, capacity, efficiency, latency, links) per block
    reverse_parts: list[np.ndarray] = []

    def add_pairs(pairs: list[tuple[Any, Any]], kind: Any, cap: Any, eff: Any, lat: Any) -> np.ndarray:
        """Links ``u -> v`` and ``v -> u`` for each pair, in that order; the index of each ``u -> v``.
        ``kind`` (a code), ``cap``, ``eff`` and ``lat`` are one value for the block or one per pair."""
        first = len(names)
        for u, v in pairs:
            names.append((u, v))
            names.append((v, u))
        count = 2 * len(pairs)
        attrs.append(tuple(np.repeat(x, 2) if np.ndim(x) else x for x in (kind, cap, eff, lat)) + (count,))
        reverse_parts.append(first + (np.arange(count, dtype=np.int64) ^ 1))
        return first + 2 * np.arange(len(pairs), dtype=np.int64)

    up_link = np.full(num_acc, -1, dtype=np.int64)
    down_link = np.full(num_acc, -1, dtype=np.int64)
    mesh_link = np.full((num_nodes, node_size, node_size), -1, dtype=np.int64)
    su_bw, su_lat, su_eff = spec.scale_up_bytes_per_s, spec.scale_up_latency_s, spec.scale_up_frac

    switch_name = {"nvswitch": "nvswitch", "nvlink_domain": "nvlink_switch", "pcie": "pcie_switch"}.get(spec.scale_up)
    if switch_name is not None and dom > 1:
        up_link[:] = add_pairs([(("gpu", a), (switch_name, a // dom)) for a in range(num_acc)],
                               KIND_CODES[LinkKind.SCALE_UP], su_bw, su_eff, su_lat / 2)
        down_link[:] = up_link + 1
    elif spec.scale_up == "infinity_fabric" and dom > 1:
        # one link per ordered pair of GPUs in a domain, in (node, i, j) order
        ii, jj = np.nonzero((np.arange(node_size)[:, None] // dom == np.arange(node_size)[None, :] // dom)
                            & ~np.eye(node_size, dtype=bool))
        first = len(names)
        for node in range(num_nodes):
            base = node * node_size
            names.extend((("gpu", base + i), ("gpu", base + j)) for i, j in zip(ii.tolist(), jj.tolist()))
        count = num_nodes * ii.size
        attrs.append((KIND_CODES[LinkKind.MESH], su_bw / (dom - 1), su_eff, su_lat, count))
        mesh_link[:, ii, jj] = (first + np.arange(count, dtype=np.int64)).reshape(num_nodes, ii.size)
        reverse_parts.append(mesh_link[:, jj, ii].ravel())

    frac = gpu_nic_fractions(node_size, nics)
    pcie_up = np.full((num_nodes, node_size, nics), -1, dtype=np.int64)
    pcie_down = np.full((num_nodes, node_size, nics), -1, dtype=np.int64)
    nic_up = np.full((num_nodes, nics), -1, dtype=np.int64)
    nic_down = np.full((num_nodes, nics), -1, dtype=np.int64)
    nic_leaf = np.full((num_nodes, nics), -1, dtype=np.int64)
    layout = None
    num_leaves = num_spines = 0
    spine_up = np.full((0, 0), -1, dtype=np.int64)
    spine_down = np.full((0, 0), -1, dtype=np.int64)
    if nics:
        layout = fabric_layout(spec, node_size, nics)
        groups = -(-num_nodes // layout.nodes_per_leaf_group)
        num_leaves = groups * layout.leaf_slots
        # every leaf slot is used by some NIC of every node, so leaf = group * C + slot
        nic_leaf[:] = ((np.arange(num_nodes) // layout.nodes_per_leaf_group)[:, None] * layout.leaf_slots
                       + np.asarray(layout.nic_leaf_slot[:nics], dtype=np.int64)[None, :])
        bw, lat, eff = spec.nic_bytes_per_s, spec.scale_out_latency_s, spec.scale_out_frac
        gpus_of_nic = [np.nonzero(frac[:, k])[0].tolist() for k in range(nics)]  # the same on every node
        # per node, for each NIC k: a PCIe pair per GPU of the NIC, then the NIC's pair to its leaf
        tmpl = [(i, k) for k in range(nics) for i in gpus_of_nic[k] + [-1]]  # i = -1: the NIC -> leaf pair
        is_nic = np.array([i < 0 for i, _ in tmpl])
        leaf_of = nic_leaf.tolist()
        pairs = [((("gpu", node * node_size + i), ("nic", node, k)) if i >= 0 else
                  (("nic", node, k), ("leaf", leaf_of[node][k]))) for node in range(num_nodes) for i, k in tmpl]
        tile = np.tile(is_nic, num_nodes)
        up = add_pairs(pairs, np.where(tile, KIND_CODES[LinkKind.NIC], KIND_CODES[LinkKind.PCIE]),
                       np.where(tile, bw, math.inf), np.where(tile, eff, 1.0), np.where(tile, lat / 2, 0.0))
        up = up.reshape(num_nodes, len(tmpl))
        gi = np.array([i for i, _ in tmpl])
        gk = np.array([k for _, k in tmpl])
        pc = ~is_nic
        pcie_up[:, gi[pc], gk[pc]] = up[:, pc]
        pcie_down[:, gi[pc], gk[pc]] = up[:, pc] + 1
        nic_up[:, gk[is_nic]] = up[:, is_nic]
        nic_down[:, gk[is_nic]] = up[:, is_nic] + 1
        if num_leaves > 1:
            num_spines = layout.leaf_uplinks
            link_bw = layout.leaf_downlinks * bw / (spec.oversubscription_ratio * num_spines)
            up = add_pairs([(("leaf", leaf), ("spine", s)) for leaf in range(num_leaves) for s in range(num_spines)],
                           KIND_CODES[LinkKind.FABRIC], link_bw, eff, 0.0)
            spine_up = up.reshape(num_leaves, num_spines)
            spine_down = spine_up + 1

    def column(j: int, dtype) -> np.ndarray:
        return np.concatenate([np.broadcast_to(np.asarray(a[j], dtype=dtype), (a[4],)) for a in attrs]) if attrs \
            else np.zeros(0, dtype=dtype)

    kinds, cap, eff_arr, lats = column(0, np.int8), column(1, float), column(2, float), column(3, float)
    reverse = np.concatenate(reverse_parts) if reverse_parts else np.zeros(0, dtype=np.int64)

    return Topology(
        spec=spec,
        num_nodes=num_nodes,
        node_size=node_size,
        domain_size=dom,
        nics_per_node=nics,
        edges=names,
        kind=kinds,
        capacity_bytes_per_s=cap,
        efficiency_frac=eff_arr,
        rate_bytes_per_s=cap * eff_arr,
        inv_rate_s_per_byte=np.where(np.isinf(cap), 0.0, 1.0 / np.where(np.isinf(cap), 1.0, cap * eff_arr)),
        latency_s=lats,
        reverse=reverse,
        up_link=up_link,
        down_link=down_link,
        mesh_link=mesh_link,
        pcie_up=pcie_up,
        pcie_down=pcie_down,
        nic_up=nic_up,
        nic_down=nic_down,
        nic_leaf=nic_leaf,
        spine_up=spine_up,
        spine_down=spine_down,
        gpu_nic_frac=frac,
        layout=layout,
        num_leaves=num_leaves,
        num_spines=num_spines,
    )
