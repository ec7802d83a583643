"""The topology graph: what is built for each kind of system, capacities, latencies, caching, bad sizes."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
from comm_helpers import variant

from moesim.comm.topology import LinkKind, build_topology, gpu_nic_fractions, network_spec
from moesim.errors import InputError
from moesim.hardware import load_hardware


def kinds(topo) -> dict[str, int]:  # noqa: ANN001
    out: dict[str, int] = {}
    for n in topo.graph.nodes:
        out[n[0]] = out.get(n[0], 0) + 1
    return out


def test_every_link_has_one_edge_per_direction_and_matches_the_arrays() -> None:
    topo = build_topology(load_hardware("h100-sxm"), 4)
    g = topo.graph
    assert g.number_of_edges() == topo.num_links
    for e, (u, v) in enumerate(topo.edges):
        d = g.edges[u, v]
        assert d["index"] == e
        assert g.has_edge(v, u)
        assert topo.edges[topo.reverse[e]] == (v, u)
        assert d["capacity_bytes_per_s"] == topo.capacity_bytes_per_s[e]


@pytest.mark.parametrize("name", ["h100-sxm", "gb200-nvl72", "mi300x", "a100-sxm-80gb", "local-cpu"])
def test_index_tables_name_their_links_and_every_link_is_in_one_table(name: str) -> None:
    hw = load_hardware(name)
    spec = network_spec(hw)
    nodes = 1 if not spec.nics_per_node else 5
    topo = build_topology(hw, nodes)
    seen = np.zeros(topo.num_links, dtype=int)
    size = topo.node_size

    def check(idx: int, u, v, kind: LinkKind) -> None:  # noqa: ANN001
        assert topo.edges[idx] == (u, v)
        assert topo.link_kind(idx) == kind
        assert topo.reverse[idx] == topo.edges.index((v, u))
        seen[idx] += 1

    for a in range(topo.num_accelerators):
        if topo.up_link[a] >= 0:
            sw = topo.edges[topo.up_link[a]][1]
            assert sw[1] == a // topo.domain_size
            check(topo.up_link[a], ("gpu", a), sw, LinkKind.SCALE_UP)
            check(topo.down_link[a], sw, ("gpu", a), LinkKind.SCALE_UP)
    for node, i, j in zip(*np.nonzero(topo.mesh_link >= 0)):
        check(topo.mesh_link[node, i, j], ("gpu", node * size + i), ("gpu", node * size + j), LinkKind.MESH)
    for node, i, k in zip(*np.nonzero(topo.pcie_up >= 0)):
        nic = ("nic", int(node), int(k))
        check(topo.pcie_up[node, i, k], ("gpu", int(node * size + i)), nic, LinkKind.PCIE)
        check(topo.pcie_down[node, i, k], nic, ("gpu", int(node * size + i)), LinkKind.PCIE)
    for node, k in zip(*np.nonzero(topo.nic_up >= 0)):
        nic, leaf = ("nic", int(node), int(k)), ("leaf", int(topo.nic_leaf[node, k]))
        check(topo.nic_up[node, k], nic, leaf, LinkKind.NIC)
        check(topo.nic_down[node, k], leaf, nic, LinkKind.NIC)
    for leaf, s in zip(*np.nonzero(topo.spine_up >= 0)):
        check(topo.spine_up[leaf, s], ("leaf", int(leaf)), ("spine", int(s)), LinkKind.FABRIC)
        check(topo.spine_down[leaf, s], ("spine", int(s)), ("leaf", int(leaf)), LinkKind.FABRIC)
    assert (seen == 1).all()
    assert np.isinf(topo.capacity_bytes_per_s[topo.kind == list(LinkKind).index(LinkKind.PCIE)]).all()


def test_dgx_h100_cluster_of_128_nodes_is_a_rail_optimized_two_level_fat_tree() -> None:
    topo = build_topology(load_hardware("h100-sxm"), 128)
    assert kinds(topo) == {"gpu": 1024, "nvswitch": 128, "nic": 1024, "leaf": 32, "spine": 32}
    lay = topo.layout
    # 64-port leaves, non-blocking: 32 down, 32 up; one leaf per rail per 32 nodes (a SuperPOD scalable unit)
    assert (lay.leaf_downlinks, lay.leaf_uplinks, lay.num_rails, lay.nodes_per_leaf_group) == (32, 32, 8, 32)
    # NIC k of nodes 0..31 all sit on the same leaf (rail k), different for every k
    assert len(set(topo.nic_leaf[:32, 3].tolist())) == 1
    assert len(set(topo.nic_leaf[0].tolist())) == 8
    assert topo.nic_leaf[32, 3] != topo.nic_leaf[0, 3]
    gpu_link = topo.up_link[0]
    assert topo.capacity_bytes_per_s[gpu_link] == pytest.approx(450e9)
    assert topo.capacity_bytes_per_s[topo.nic_up[0, 0]] == pytest.approx(50e9)


def test_non_rail_fabric_puts_the_nics_of_consecutive_nodes_on_one_leaf() -> None:
    topo = build_topology(variant("h100-sxm", scale_out={"rail_optimized": False}), 8)
    # 32 NIC ports per leaf / 8 NICs per node = 4 whole nodes per leaf
    assert len(set(topo.nic_leaf[:4].ravel().tolist())) == 1
    assert topo.nic_leaf[4, 0] != topo.nic_leaf[0, 0]
    assert topo.num_leaves == 2


def test_oversubscribed_leaf_has_total_uplink_capacity_downlinks_over_ratio() -> None:
    topo = build_topology(variant("h100-sxm", scale_out={"oversubscription_ratio": 2.0}), 64)
    lay = topo.layout
    ups = topo.capacity_bytes_per_s[topo.spine_up[0]]
    assert ups.sum() == pytest.approx(lay.leaf_downlinks * 50e9 / 2.0)
    assert lay.leaf_downlinks + lay.leaf_uplinks == 64


def test_gb200_nvl72_is_one_72_gpu_nvlink_domain_per_rack_with_four_rails() -> None:
    topo = build_topology(load_hardware("gb200-nvl72"), 2)
    assert kinds(topo) == {"gpu": 144, "nvlink_switch": 2, "nic": 144, "leaf": 8, "spine": 32}
    assert topo.layout.num_rails == 4
    # NIC k and k + 4 of one rack share a rail leaf
    assert topo.nic_leaf[0, 1] == topo.nic_leaf[0, 5] != topo.nic_leaf[0, 2]
    assert topo.capacity_bytes_per_s[topo.up_link[71]] == pytest.approx(900e9)


def test_mi300x_is_a_full_mesh_with_one_64_gb_s_link_per_ordered_pair() -> None:
    topo = build_topology(load_hardware("mi300x"), 1)
    assert "nvswitch" not in kinds(topo)
    mesh = topo.mesh_link[0]
    assert (mesh >= 0).sum() == 8 * 7
    assert np.all(np.diag(mesh) == -1)
    assert np.allclose(topo.capacity_bytes_per_s[mesh[mesh >= 0]], 448e9 / 7)


def test_local_cpu_is_one_device_and_refuses_a_second() -> None:
    topo = build_topology(load_hardware("local-cpu"), 1)
    assert topo.num_links == 0 and topo.num_accelerators == 1
    with pytest.raises(InputError, match="no scale-out fabric"):
        build_topology(load_hardware("local-cpu"), 2)


def test_cluster_larger_than_the_profile_describes_is_refused_naming_max_nodes() -> None:
    with pytest.raises(InputError, match="max_nodes") as exc:
        build_topology(load_hardware("h800"), 257)
    assert exc.value.field == "ranks"


@pytest.mark.parametrize(("nics", "gpus", "expected"), [
    (8, 8, np.eye(8)),
    (4, 8, np.repeat(np.eye(4), 2, axis=0)),
    (16, 8, np.kron(np.eye(8), [[0.5, 0.5]])),
])
def test_gpu_nic_shares(nics: int, gpus: int, expected: np.ndarray) -> None:
    a = gpu_nic_fractions(gpus, nics)
    assert np.allclose(a, expected)
    assert np.allclose(a.sum(axis=1), 1.0)


def test_path_latency_is_the_profile_latency_inside_and_across_nodes() -> None:
    p = load_hardware("h100-sxm")
    topo = build_topology(variant("h100-sxm", scale_out={"leaf_switch_ports": 4}), 4)
    g = topo.graph
    su = g.edge_subgraph([(u, v) for u, v, d in g.edges(data=True) if d["kind"] == LinkKind.SCALE_UP.value])
    intra = nx.shortest_path_length(su, ("gpu", 0), ("gpu", 5), weight="latency_s")
    assert intra == pytest.approx(p.node.scale_up_latency_s)
    no_su = g.edge_subgraph([(u, v) for u, v, d in g.edges(data=True) if d["kind"] != LinkKind.SCALE_UP.value])
    cross = nx.shortest_path_length(no_su, ("gpu", 0), ("gpu", 31), weight="latency_s")  # different rail and leaf
    assert cross == pytest.approx(p.scale_out.latency_s)


def test_topologies_are_cached_by_network_numbers() -> None:
    a = build_topology(load_hardware("h100-sxm"), 2)
    b = build_topology(load_hardware("h100-sxm"), 2)  # a different profile object, same numbers
    assert a is b
    c = build_topology(variant("h100-sxm", scale_out={"bandwidth_per_nic_bytes_per_s": 100e9}), 2)
    assert c is not a
    assert network_spec(load_hardware("h100-sxm")) != network_spec(variant("h100-sxm", node={"nvls_sharp": False}))


def test_pcie_links_are_not_a_bottleneck() -> None:
    topo = build_topology(load_hardware("h100-sxm"), 2)
    pcie = topo.kind == list(LinkKind).index(LinkKind.PCIE)
    assert pcie.any()
    assert np.all(np.isinf(topo.capacity_bytes_per_s[pcie]))
    assert np.all(topo.inv_rate_s_per_byte[pcie] == 0.0)
    assert math.isinf(topo.rate_bytes_per_s[pcie][0])


def test_a_domain_spanning_several_nodes_routes_as_one_node_with_their_nics_pooled() -> None:
    from moesim.comm import api

    rack = load_hardware("gb200-nvl72")
    trays = variant("gb200-nvl72", node={"accelerators_per_node": 4},
                    scale_out={"nics_per_node": 4, "max_nodes": 128 * 18})
    a, b = build_topology(rack, 2), build_topology(trays, 2)
    assert (a.node_size, a.nics_per_node, a.num_leaves) == (b.node_size, b.nics_per_node, b.num_leaves) == (72, 72, 8)
    T = np.random.default_rng(1).random((144, 144))
    la = api.route_traffic(rack, T, api.GroupSpec(size=144, ranks_per_node=72))
    lb = api.route_traffic(trays, T, api.GroupSpec(size=144, ranks_per_node=72))
    assert np.allclose(la.load_bytes, lb.load_bytes)


def test_the_network_spec_is_a_leaf_and_one_call_clears_every_cache():
    import subprocess
    import sys

    # placement imports the spec without going through the topology module (no import cycle)
    code = ("import sys, moesim.comm.placement; "
            "assert 'moesim.comm.topology' not in sys.modules and 'moesim.comm.routing' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    from moesim.caches import clear_caches
    from moesim.comm import topology
    from moesim.hardware import load_hardware
    from moesim.step import bridge
    from moesim.step.estimate import estimate

    estimate("mixtral-8x7b-serve-h100")
    topology.build_topology(load_hardware("h100-sxm"), 2)
    assert topology._CACHE and bridge._load.cache_info().currsize
    clear_caches()
    assert not topology._CACHE and bridge._load.cache_info().currsize == 0
