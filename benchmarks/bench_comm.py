"""Speed of the communication model (prints figures; not a test).

    .venv/bin/python benchmarks/bench_comm.py [--ranks 1024] [--repeat 50]

Measures, on a rail-optimized H100 cluster (h100-sxm: 8 GPUs and 8 NDR NICs per node):

* building the topology (networkx graph + link arrays) for the cluster, uncached;
* one expert-parallel all-to-all estimate for the cluster after the topology and
  route tables are built: routing a given dispatch TrafficMatrix (hierarchical
  and direct), and the whole ``moesim.all_to_all`` call (traffic matrix from
  moesim.load, dispatch and combine);
* a cached collective time (what the step model calls in a search).

Reports the median and the 10th / 90th percentiles of wall time per call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import moesim
from moesim.comm import api
from moesim.comm.placement import GroupSpec
from moesim.comm.topology import build_topology, clear_cache, nodes_for
from moesim.hardware import load_hardware


def timed(fn: Callable[[], object], repeat: int, warmup: int = 2) -> tuple[float, float, float]:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    q = statistics.quantiles(ts, n=10) if len(ts) >= 2 else [ts[0]] * 9
    return statistics.median(ts), q[0], q[-1]


def show(label: str, stats: tuple[float, float, float]) -> None:
    med, p10, p90 = stats
    print(f"{label:<74} median {med * 1e3:8.3f} ms   (p10 {p10 * 1e3:.3f}, p90 {p90 * 1e3:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    n, rep = args.ranks, args.repeat
    prof = load_hardware("h100-sxm")
    nodes = nodes_for(prof, n)
    print(f"h100-sxm, {n} ranks = {nodes} nodes x 8, rail-optimized NDR fat tree; {rep} repeats")

    show("topology build (uncached)", timed(lambda: build_topology(prof, nodes, cache=False), max(5, rep // 5), 1))
    topo = build_topology(prof, nodes)
    print(f"  graph: {topo.graph.number_of_nodes()} nodes, {topo.num_links} directed links, "
          f"{topo.num_leaves} leaves, {topo.num_spines} spines")

    experts = 2 * n
    kw = dict(num_ranks=n, tokens_per_rank=4096, top_k=8, num_experts=experts, bytes_per_token=7392.0)
    tr = api.ep_traffic(ranks_per_node=8, **kw)
    group = GroupSpec(size=n, ranks_per_node=8)
    api.time_ep_all_to_all(prof, tr, group=group)  # build route tables once
    show("EP all-to-all estimate, hierarchical dispatch (given traffic)",
         timed(lambda: api.time_ep_all_to_all(prof, tr, algorithm="hierarchical", group=group), rep))
    show("EP all-to-all estimate, direct dispatch (given traffic)",
         timed(lambda: api.time_ep_all_to_all(prof, tr, algorithm="direct", group=group), rep))
    show(f"moesim.all_to_all (traffic from moesim.load, dispatch+combine, E={experts})",
         timed(lambda: moesim.all_to_all(prof, **kw), rep))
    show(f"moesim.all_to_all, zipf:1.2 routing, 4-node limit",
         timed(lambda: moesim.all_to_all(prof, node_limit=4, distribution="zipf:1.2", **kw), max(5, rep // 5)))

    g = GroupSpec(size=n, ranks_per_node=1)
    api.collective_time_s(prof, "all_reduce", 1e9, g)
    show(f"collective_time_s all_reduce, {n}-rank DP group (cached plans)",
         timed(lambda: api.collective_time_s(prof, "all_reduce", 1e9, g), rep * 20))
    show("time_collective all_gather, 8-rank TP group (cached plans)",
         timed(lambda: api.time_collective(prof, "all_gather", 1e8, GroupSpec(size=8)), rep * 20))
    clear_cache()
    from moesim.comm import collectives

    collectives.clear_plan_cache()
    show(f"first all_reduce on a {n}-rank group (topology + routes + plans built)",
         timed(lambda: (clear_cache(), collectives.clear_plan_cache(),
                        api.collective_time_s(prof, "all_reduce", 1e9, group)), 3, 0))


if __name__ == "__main__":
    main()
