"""Routing: the vectorised routers agree with the networkx graph walk; invariants of the link loads."""

from __future__ import annotations

import numpy as np
import pytest
from comm_helpers import assert_conserved, variant
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.comm import api
from moesim.comm.placement import GroupSpec, resolve
from moesim.comm.routing import group_routes, route_flows, route_reference
from moesim.comm.topology import KIND_CODES, LinkKind, build_topology, network_spec
from moesim.hardware import load_hardware

FAST = settings(max_examples=20, deadline=None)

# (profile, changes to scale_out / node, ranks, ranks per node): small leaves force spines and several leaf groups
LAYOUTS = [
    ("h100-sxm", {}, {}, 32, 8),
    ("h100-sxm", {"leaf_switch_ports": 4}, {}, 32, 8),
    ("h100-sxm", {"leaf_switch_ports": 4, "rail_optimized": False}, {}, 24, 4),
    ("h100-sxm", {"leaf_switch_ports": 6, "oversubscription_ratio": 2.0}, {}, 16, 2),
    ("h100-sxm", {"nics_per_node": 4, "leaf_switch_ports": 4}, {}, 32, 8),  # two GPUs share a NIC
    ("h100-sxm", {"nics_per_node": 16, "leaf_switch_ports": 8}, {}, 24, 8),  # two NICs per GPU
    ("mi300x", {"leaf_switch_ports": 6}, {}, 16, 8),  # xGMI full mesh
    ("gb200-nvl72", {}, {}, 8, 4),  # 72-GPU NVLink domain per rack
    ("a100-sxm-80gb", {"leaf_switch_ports": 4}, {"scale_up_domain_size": 4}, 16, 8),  # two NVLink islands per node
]


def setup(name, so, nd, n, rpn):  # noqa: ANN001, ANN201
    p = variant(name, scale_out=so or None, node=nd or None)
    spec = network_spec(p)
    pl = resolve(GroupSpec(size=n, ranks_per_node=rpn), spec)
    topo = build_topology(spec, pl.nodes_needed)
    return p, pl, topo, group_routes(topo, pl)


@pytest.mark.parametrize(("name", "so", "nd", "n", "rpn"), LAYOUTS)
def test_vectorised_direct_router_matches_the_networkx_graph_walk(name, so, nd, n, rpn) -> None:  # noqa: ANN001
    _, pl, topo, routes = setup(name, so, nd, n, rpn)
    T = np.random.default_rng(n).random((n, n)) * 1e6
    fast = routes.direct(T)
    src, dst = np.nonzero(T)
    ref = route_reference(topo, pl.accelerators[src], pl.accelerators[dst], T[src, dst])
    flows = route_flows(topo, pl.accelerators[src], pl.accelerators[dst], T[src, dst])
    assert np.allclose(fast.load_bytes, ref.load_bytes, rtol=1e-9, atol=1e-3)
    assert np.allclose(flows.load_bytes, ref.load_bytes, rtol=1e-9, atol=1e-3)
    assert fast.network_bytes == pytest.approx(ref.network_bytes)
    assert fast.scale_up_bytes == pytest.approx(ref.scale_up_bytes)
    assert fast.busiest()[1] == ref.busiest()[1]


@pytest.mark.parametrize(("name", "so", "nd", "n", "rpn"), LAYOUTS[:2] + LAYOUTS[5:8])
def test_hierarchical_router_matches_its_flows_network_then_forward(name, so, nd, n, rpn) -> None:  # noqa: ANN001
    _, pl, topo, routes = setup(name, so, nd, n, rpn)
    m = n // rpn
    rng = np.random.default_rng(7)
    T, NB = rng.random((n, n)), rng.random((n, m))
    node, slot = np.arange(n) // rpn, np.arange(n) % rpn
    src, dst, b = [], [], []
    for s in range(n):
        for N in range(m):
            if N != node[s]:  # one copy per destination node, to the GPU with the same local index
                src.append(s), dst.append(N * rpn + slot[s]), b.append(NB[s, N])
        for t in range(n):  # then forwarded inside the destination node (or sent directly inside the own node)
            src.append(node[t] * rpn + slot[s] if node[t] != node[s] else s), dst.append(t), b.append(T[s, t])
    ref = routes.flows(np.array(src), np.array(dst), np.array(b))
    fast = routes.hierarchical(T, NB)
    assert np.allclose(fast.load_bytes, ref.load_bytes, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("name", "so", "nd", "n", "rpn"), [LAYOUTS[1], LAYOUTS[6], ("h100-sxm", {}, {}, 64, 8)])
def test_uniform_closed_forms_equal_routing_the_dense_matrix(name, so, nd, n, rpn) -> None:  # noqa: ANN001
    _, _, _, routes = setup(name, so, nd, n, rpn)
    m = n // rpn
    assert np.allclose(routes.uniform(3.0).load_bytes, routes.direct(np.full((n, n), 3.0)).load_bytes)
    dense = routes.hierarchical(np.full((n, n), 3.0), np.full((n, m), 3.0 * rpn))
    assert np.allclose(routes.hierarchical_uniform(3.0).load_bytes, dense.load_bytes)


@pytest.mark.parametrize(("name", "so", "nd", "n", "rpn"), LAYOUTS)
def test_bytes_are_conserved_across_the_graph(name, so, nd, n, rpn) -> None:  # noqa: ANN001
    _, pl, topo, routes = setup(name, so, nd, n, rpn)
    T = np.random.default_rng(3).random((n, n))
    loads = routes.direct(T)
    off = T - np.diag(np.diag(T))
    assert_conserved(loads, off.sum(axis=1), off.sum(axis=0), pl.accelerators)
    # everything that leaves a GPU is either scale-up or network traffic
    assert loads.scale_up_bytes + loads.network_bytes == pytest.approx(off.sum())
    assert loads.local_bytes == pytest.approx(np.trace(T))
    if rpn > 1 and pl.num_nodes > 1 and topo.domain_size == topo.node_size:
        assert_conserved(routes.hierarchical(T, np.random.default_rng(4).random((n, n // rpn))))


def test_traffic_to_self_stays_local() -> None:
    _, _, _, routes = setup("h100-sxm", {}, {}, 16, 8)
    loads = routes.direct(np.diag(np.arange(1.0, 17.0)))
    assert not loads.load_bytes.any()
    assert loads.local_bytes == pytest.approx(136.0)
    assert loads.busiest() == (0.0, -1)


NETWORK = [KIND_CODES[LinkKind.NIC], KIND_CODES[LinkKind.FABRIC], KIND_CODES[LinkKind.PCIE]]


@FAST
@given(name=st.sampled_from(["h100-sxm", "a100-sxm-80gb", "mi300x", "gb200-nvl72", "b200"]),
       n=st.integers(2, 8), seed=st.integers(0, 1000))
def test_ranks_inside_one_node_never_touch_the_network(name: str, n: int, seed: int) -> None:
    p = load_hardware(name)
    T = np.random.default_rng(seed).random((n, n))
    loads = api.route_traffic(p, T)
    assert not loads.load_bytes[np.isin(loads.topology.kind, NETWORK)].any()
    assert loads.network_bytes == 0.0
    assert loads.latency_s == p.node.scale_up_latency_s


def test_combine_is_dispatch_with_every_flow_reversed() -> None:
    _, _, _, routes = setup("h100-sxm", {"leaf_switch_ports": 4}, {}, 32, 8)
    T = np.random.default_rng(5).random((32, 32))
    assert np.allclose(routes.direct(T).reversed().load_bytes, routes.direct(T.T).load_bytes)


def test_explicit_rank_list_in_any_order_routes_like_the_same_ranks_in_order() -> None:
    p = variant("h100-sxm", scale_out={"leaf_switch_ports": 4})
    spec = network_spec(p)
    ranks = [0, 1, 8, 9, 16, 17]
    perm = [4, 0, 5, 2, 1, 3]
    T = np.random.default_rng(9).random((6, 6))
    a = api.route_traffic(p, T, GroupSpec(ranks=tuple(ranks)))
    shuffled = [ranks[i] for i in perm]
    b = api.route_traffic(p, T[np.ix_(perm, perm)], GroupSpec(ranks=tuple(shuffled)))
    assert np.allclose(a.load_bytes, b.load_bytes)
    irregular = (0, 1, 8, 17, 18)  # not the same local indices on every node: falls back to flows
    pl = resolve(GroupSpec(ranks=irregular), spec)
    assert not pl.regular
    U = np.random.default_rng(2).random((5, 5))
    c = api.route_traffic(p, U, GroupSpec(ranks=irregular))
    topo = build_topology(spec, pl.nodes_needed)
    s, d = np.nonzero(U)
    ref = route_reference(topo, np.array(irregular)[s], np.array(irregular)[d], U[s, d])
    assert np.allclose(c.load_bytes, ref.load_bytes)


@pytest.mark.parametrize(("where", "scale_out", "node"), [
    ("nic", {"bandwidth_per_nic_bytes_per_s": 100e9}, None),
    ("scale_up", None, {"scale_up_bandwidth_per_accelerator_bytes_per_s": 900e9}),
])
def test_doubling_the_bottleneck_links_bandwidth_halves_the_bandwidth_term(where, scale_out, node) -> None:  # noqa: ANN001
    base = load_hardware("h100-sxm")
    fast = variant("h100-sxm", scale_out=scale_out, node=node)
    n = 16 if where == "nic" else 8
    kw = dict(num_ranks=n, size_bytes=2**30)
    a, b = api.collective(base, "all_to_all", **kw), api.collective(fast, "all_to_all", **kw)
    assert a.bottleneck.kind == where
    assert b.bandwidth_s == pytest.approx(a.bandwidth_s / 2, rel=1e-12)
    assert b.latency_s == a.latency_s and b.overhead_s == a.overhead_s


@pytest.mark.parametrize("distribution", ["uniform", "zipf:1.1:3"])
def test_node_limited_routing_never_adds_inter_node_bytes(distribution: str) -> None:
    p = load_hardware("h800")
    kw = dict(num_ranks=64, tokens_per_rank=512, top_k=8, num_experts=256, bytes_per_token=7392.0, ranks_per_node=8,
              distribution=distribution)
    prev = None
    for limit in (8, 6, 4, 2, 1):
        tr = api.ep_traffic(node_limit=limit, **kw)
        net = {alg: api.time_ep_all_to_all(p, tr, algorithm=alg).network_bytes for alg in ("direct", "hierarchical")}
        assert net["hierarchical"] <= net["direct"] * (1 + 1e-9)
        if prev is not None:
            assert net["hierarchical"] <= prev * (1 + 1e-9) + 1e-6
        prev = net["hierarchical"]


def test_hierarchical_dispatch_sends_each_token_once_per_destination_node() -> None:
    p = load_hardware("h800")
    tr = api.ep_traffic(num_ranks=32, tokens_per_rank=1024, top_k=8, num_experts=256, bytes_per_token=100.0,
                        ranks_per_node=8, node_limit=4)
    h = api.time_ep_all_to_all(p, tr, algorithm="hierarchical")
    d = api.time_ep_all_to_all(p, tr, algorithm="direct")
    assert h.network_bytes == pytest.approx(tr.inter_node_dedup_bytes)
    assert d.network_bytes == pytest.approx(tr.inter_node_bytes)
    assert h.network_bytes < d.network_bytes
