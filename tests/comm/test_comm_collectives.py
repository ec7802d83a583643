"""Collectives: hand-calculated times, nccl-tests bandwidth formulas, algorithm choice, caching, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from comm_helpers import variant

import moesim
from moesim.comm import api
from moesim.comm.collectives import busbw_factor, tree_parents
from moesim.comm.placement import GroupSpec
from moesim.errors import InputError
from moesim.hardware import load_hardware

GiB = 2**30
H100 = dict(nvl=450e9 * 0.80, nic=50e9 * 0.85, a_up=3e-6, a_net=5e-6, ovh=10e-6)  # h100-sxm.toml


@pytest.mark.parametrize(("collective", "n", "factor"), [
    ("all_reduce", 8, 2 * 7 / 8), ("all_reduce", 2, 1.0), ("reduce_scatter", 8, 7 / 8), ("all_gather", 16, 15 / 16),
    ("all_to_all", 64, 63 / 64), ("sendrecv", 2, 1.0),
])
def test_busbw_factors_are_the_nccl_tests_ones(collective: str, n: int, factor: float) -> None:
    assert busbw_factor(collective, n) == pytest.approx(factor)


@pytest.mark.parametrize("collective", ["all_reduce", "reduce_scatter", "all_gather", "all_to_all", "sendrecv"])
@pytest.mark.parametrize("n", [2, 8, 16, 64])
def test_algbw_is_size_over_time_and_busbw_applies_the_factor(collective: str, n: int) -> None:
    r = api.collective("h100-sxm", collective, num_ranks=n, size_bytes=256e6)
    assert r.algbw_bytes_per_s == pytest.approx(r.size_bytes / r.time_s)
    assert r.busbw_bytes_per_s == pytest.approx(r.algbw_bytes_per_s * busbw_factor(collective, n))
    assert r.time_s == pytest.approx(r.overhead_s + r.latency_s + r.bandwidth_s)


def test_ring_all_reduce_on_one_node_by_hand() -> None:
    S, n = 4 * GiB, 8
    r = moesim.all_reduce("h100-sxm", num_ranks=n, size_bytes=S, algorithm="ring")
    # each GPU sends 2(n-1)/n * S through its 450 GB/s NVLink port at 80 %
    assert r.bandwidth_s == pytest.approx(2 * (n - 1) / n * S / H100["nvl"])
    assert r.latency_s == pytest.approx(2 * (n - 1) * H100["a_up"])
    assert r.overhead_s == pytest.approx(H100["ovh"])
    assert r.busbw_bytes_per_s == pytest.approx(H100["nvl"], rel=0.01)  # large S: busbw -> link rate
    assert r.bottleneck.kind == "scale_up"


def test_ring_all_reduce_across_nodes_is_bound_by_one_nic_per_gpu_by_hand() -> None:
    S, n = 4 * GiB, 64  # 8 nodes x 8
    r = moesim.all_reduce("h100-sxm", num_ranks=n, size_bytes=S, algorithm="ring")
    # 8 rings, one per NIC: every NIC carries one ring's crossing, 2(n-1)/n * S / 8
    assert r.bandwidth_s == pytest.approx(2 * (n - 1) / n * S / 8 / H100["nic"])
    assert r.bottleneck.kind == "nic"
    assert r.latency_s == pytest.approx(2 * (n - 1) * H100["a_net"])


def test_nvls_all_reduce_by_hand() -> None:
    S, n = GiB, 8
    r = moesim.all_reduce("h100-sxm", num_ranks=n, size_bytes=S, algorithm="nvls")
    assert r.bandwidth_s == pytest.approx(S * (1 + 1 / n) / H100["nvl"])
    assert r.latency_s == pytest.approx(2 * H100["a_up"])


def test_nvls_is_refused_where_the_switch_cannot_reduce() -> None:
    with pytest.raises(InputError, match="nvls_sharp"):
        moesim.all_reduce("a100-sxm-80gb", num_ranks=8, size_bytes=GiB, algorithm="nvls")
    with pytest.raises(InputError, match="one NVSwitch domain"):
        moesim.all_reduce("h100-sxm", num_ranks=16, size_bytes=GiB, algorithm="nvls")


def test_two_node_tree_sends_half_what_a_ring_sends_over_the_network() -> None:
    S = GiB
    tree = moesim.all_reduce("h100-sxm", num_ranks=16, size_bytes=S, algorithm="tree")
    ring = moesim.all_reduce("h100-sxm", num_ranks=16, size_bytes=S, algorithm="ring")
    assert tree.network_bytes == pytest.approx(2 * S)  # each node sends S (half per tree)
    assert ring.network_bytes == pytest.approx(2 * (2 * 15 / 16) * S)  # each node sends 2(n-1)/n S


def test_double_binary_tree_mirrors_the_heap_so_inner_nodes_differ() -> None:
    p1, p2 = tree_parents(8)
    assert p1.tolist() == [-1, 0, 0, 1, 1, 2, 2, 3]
    assert p2.tolist() == [4, 5, 5, 6, 6, 7, 7, -1]
    inner1 = {int(p) for p in p1 if p >= 0}
    inner2 = {int(p) for p in p2 if p >= 0}
    assert inner1.isdisjoint(inner2)


@pytest.mark.parametrize(("hw", "n", "size"), [("h100-sxm", 8, 8.0), ("h100-sxm", 8, GiB), ("h100-sxm", 32, 64e6),
                                                ("a100-sxm-80gb", 32, GiB), ("mi300x", 8, GiB)])
def test_auto_picks_the_fastest_algorithm(hw: str, n: int, size: float) -> None:
    auto = moesim.all_reduce(hw, num_ranks=n, size_bytes=size)
    times = []
    for alg in ("ring", "tree", "nvls"):
        try:
            times.append(moesim.all_reduce(hw, num_ranks=n, size_bytes=size, algorithm=alg).time_s)
        except InputError:
            pass
    assert auto.time_s == pytest.approx(min(times))


def test_sendrecv_between_nodes_is_one_nic_and_inside_a_node_one_nvlink_port() -> None:
    S = GiB
    across = api.time_collective(load_hardware("h100-sxm"), "sendrecv", S, GroupSpec(ranks=(0, 8)))
    inside = api.time_collective(load_hardware("h100-sxm"), "sendrecv", S, GroupSpec(ranks=(0, 1)))
    assert across.bandwidth_s == pytest.approx(S / H100["nic"])
    assert across.latency_s == pytest.approx(H100["a_net"])
    assert inside.bandwidth_s == pytest.approx(S / H100["nvl"])


def test_uniform_all_to_all_on_two_nodes_by_hand() -> None:
    S, n = GiB, 16
    r = api.collective("h100-sxm", "all_to_all", num_ranks=n, size_bytes=S)
    # half of each rank's buffer crosses the network through its own NIC
    assert r.bandwidth_s == pytest.approx(S / 2 / H100["nic"])
    # nccl-tests: on 2 nodes busbw ~ 2 x per-GPU network bandwidth x (n-1)/n
    assert r.busbw_bytes_per_s == pytest.approx(2 * H100["nic"] * 15 / 16, rel=0.01)


def test_one_rank_or_zero_bytes_take_no_time() -> None:
    p = load_hardware("h100-sxm")
    for group, size in ((1, GiB), (8, 0.0)):
        r = api.time_collective(p, "all_reduce", size, group)
        assert r.time_s == 0.0 and r.bottleneck is None and r.network_bytes == 0.0
    assert api.collective_time_s(p, "all_gather", GiB, 1) == 0.0
    one = api.time_ep_all_to_all(p, api.ep_traffic(num_ranks=1, tokens_per_rank=10, top_k=2, num_experts=4,
                                                   bytes_per_token=10.0, ranks_per_node=1))
    assert one.time_s == 0.0 and one.scale_up_bytes == 0.0


def test_fast_seconds_equal_the_full_result_and_repeats_hit_the_caches() -> None:
    p = load_hardware("h100-sxm")
    g = GroupSpec(size=64, ranks_per_node=1)
    full = api.time_collective(p, "all_reduce", 1e8, g)
    assert api.collective_time_s(p, "all_reduce", 1e8, g) == pytest.approx(full.time_s)
    from moesim.comm import collectives

    n_plans = len(collectives._PLANS)
    for size in (1e3, 1e6, 1e9):
        api.collective_time_s(p, "all_reduce", size, g)
    assert len(collectives._PLANS) == n_plans  # same group and collective: no new plan


def test_one_rank_per_node_data_parallel_group_gets_one_nic() -> None:
    r = api.time_collective(load_hardware("h100-sxm"), "all_reduce", GiB, GroupSpec(size=64, ranks_per_node=1),
                            algorithm="ring")
    assert r.bandwidth_s == pytest.approx(2 * 63 / 64 * GiB / H100["nic"])


def test_gb200_keeps_72_ranks_on_nvlink_and_8_gpu_nodes_do_not() -> None:
    kw = dict(num_ranks=64, tokens_per_rank=4096, top_k=8, num_experts=256, bytes_per_token=7168.0)
    nvl72 = moesim.all_to_all("gb200-nvl72", ranks_per_node=64, **kw)
    b200 = moesim.all_to_all("b200", **kw)
    assert nvl72.dispatch.network_bytes == 0.0 and nvl72.dispatch.bottleneck.kind == "scale_up"
    assert b200.dispatch.bottleneck.kind == "nic"
    assert nvl72.time_s < b200.time_s / 5


def test_oversubscription_slows_cross_rail_traffic_but_not_rail_aligned_hierarchical() -> None:
    # 16-port leaves at 3:1 -> 12 NIC ports, 4 uplinks: the 12 nodes of each rail share one leaf
    fat = variant("h100-sxm", scale_out={"leaf_switch_ports": 16})
    thin = variant("h100-sxm", scale_out={"leaf_switch_ports": 16, "oversubscription_ratio": 3.0})
    tr = api.ep_traffic(num_ranks=96, tokens_per_rank=2048, top_k=8, num_experts=192, bytes_per_token=7168.0,
                        ranks_per_node=8)
    d_fat, d_thin = (api.time_ep_all_to_all(p, tr, algorithm="direct") for p in (fat, thin))
    assert d_thin.time_s > 1.5 * d_fat.time_s and d_thin.bottleneck.kind == "fabric"
    h_fat, h_thin = (api.time_ep_all_to_all(p, tr, algorithm="hierarchical") for p in (fat, thin))
    assert h_thin.time_s == pytest.approx(h_fat.time_s) and h_thin.bottleneck.kind == "nic"


@pytest.mark.parametrize("hw", ["h100-sxm", "h800", "gb200-nvl72"])
@pytest.mark.parametrize("algorithm", ["direct", "hierarchical"])
@pytest.mark.parametrize(("ranks", "per_node", "limit", "dist"), [
    (1, 1, None, "uniform"), (8, 8, None, "uniform"), (16, 8, None, "zipf:1.1"), (64, 8, 4, "uniform"),
    (32, 4, None, "dirichlet:0.5"),
])
def test_routed_all_to_all_times_equal_the_full_results_to_the_bit(hw: str, algorithm: str, ranks: int,
                                                                    per_node: int, limit: int | None,
                                                                    dist: str) -> None:
    p = load_hardware(hw)
    tr = api.ep_traffic(num_ranks=ranks, tokens_per_rank=1536, top_k=8, num_experts=256, bytes_per_token=7168.0,
                        ranks_per_node=per_node, node_limit=limit, distribution=dist)
    g = GroupSpec(size=ranks, ranks_per_node=per_node)
    routed = api.route_ep_all_to_all(p, tr, algorithm=algorithm, group=g)
    for phase in ("dispatch", "combine"):
        for scale in (0.0, 1.0, 1.0371, 2.0):
            full = api.time_ep_all_to_all(p, tr, phase=phase, algorithm=algorithm, bytes_scale=scale, group=g)
            assert routed.time_s(phase, scale) == full.time_s
    with pytest.raises(InputError):
        routed.time_s("gather")


@pytest.mark.parametrize("algorithm", ["direct", "hierarchical"])
@pytest.mark.parametrize(("ranks", "per_node", "limit", "dist"), [
    (8, 8, None, "uniform"), (16, 8, None, "zipf:1.1"), (64, 8, 4, "uniform"), (32, 4, None, "dirichlet:0.5"),
])
def test_one_routing_times_every_token_count(algorithm: str, ranks: int, per_node: int, limit: int | None,
                                             dist: str) -> None:
    """The routing is linear in the bytes: a matrix routed for one token per rank and scaled times the dispatch
    of any token count as routing that count's own matrix does (the layer pass over many counts relies on it)."""
    p = load_hardware("h800")
    g = GroupSpec(size=ranks, ranks_per_node=per_node)

    def routed(tokens: float):
        tr = api.ep_traffic(num_ranks=ranks, tokens_per_rank=tokens, top_k=8, num_experts=256,
                            bytes_per_token=7168.0, ranks_per_node=per_node, node_limit=limit, distribution=dist)
        return api.route_ep_all_to_all(p, tr, algorithm=algorithm, group=g)

    unit = routed(1.0)
    counts = np.array([0.0, 1.0, 3.0, 64.0, 1536.0, 40960.5])
    for phase in ("dispatch", "combine"):
        many = unit.times_s(phase, counts * 1.25)
        for i, n in enumerate(counts):
            assert many[i] == unit.time_s(phase, n * 1.25)
            own = routed(n).time_s(phase, 1.25) if n > 0 else 0.0
            assert many[i] == pytest.approx(own, rel=1e-12, abs=0.0)
    with pytest.raises(InputError):
        unit.times_s("dispatch", np.array([1.0, -1.0]))
    with pytest.raises(InputError):
        unit.times_s("gather", counts)
