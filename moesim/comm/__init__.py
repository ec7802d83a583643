"""Communication over NVLink and InfiniBand: topology graph, routing, collectives.

topology.py     the cluster as a networkx graph (accelerators, scale-up switches, NICs, leaves, spines)
placement.py    where a communication group's ranks sit (GroupSpec)
routing.py      link loads of a traffic pattern, the bottleneck link, latency (vectorised and reference routers)
collectives.py  all-reduce / reduce-scatter / all-gather / all-to-all / send-recv as traffic; cached per group
results.py      typed results (CollectiveTime, AllToAllTime)
api.py          the public functions (moesim.all_to_all, moesim.all_reduce, and the step model's entry points)
"""
