"""One owner for every cache in moesim: :func:`clear_caches` forgets them all.

The caches are pure (content-keyed, bounded) and never change a result; clearing
them is for benchmarks that time cold paths and for tests.
"""

from __future__ import annotations

import sys


def clear_caches() -> None:
    """Forget every cached topology, route table, collective plan, load result and step-model bridge entry.

    Modules that were never imported hold no cache and are skipped (importing them here would cost time).
    """
    mods = sys.modules
    if "moesim.comm.topology" in mods:
        mods["moesim.comm.topology"].clear_cache()
    if "moesim.comm.routing" in mods:
        mods["moesim.comm.routing"].clear_route_cache()
    if "moesim.comm.collectives" in mods:
        mods["moesim.comm.collectives"].clear_plan_cache()
    for name in ("moesim.comm.placement", "moesim.load.api", "moesim.load.routing", "moesim.load.placement", "moesim.load.traffic",
                 "moesim.step.bridge", "moesim.step.parallel", "moesim.step.estimate", "moesim.step.memory", "moesim.filecache",
                 "moesim.scenario", "moesim.limits"):
        mod = mods.get(name)
        if mod is None:
            continue
        for value in list(vars(mod).values()):
            if isinstance(value, type):  # a cache class, not a cache
                continue
            if callable(getattr(value, "cache_clear", None)) and getattr(value, "__module__", name) == name:
                value.cache_clear()
