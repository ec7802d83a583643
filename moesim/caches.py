"""One owner for every cache in moesim: :func:`clear_caches` forgets them all.

The caches are pure (content-keyed, bounded) and never change a result; clearing
them is for benchmarks that time cold paths and for tests.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager


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


@contextmanager
def collection_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for a search (``plan``, ``sweep``); restore it after.

    A search allocates hundreds of thousands of small objects and keeps many of them in the caches above
    (operations, passes, collective plans). The collector runs a pass each time allocations outnumber
    deallocations by 700 (``gc.get_threshold``) and, every hundred passes or so, a full one that walks
    every tracked object, the growing caches included. What a search keeps forms no reference cycles and
    reference counting frees the rest, so those passes find next to nothing (317 objects in cycles after the
    DeepSeek-V3 training plan over 2048 H800 + H100, exception tracebacks of layouts that cannot run; they
    wait for the collector's next pass after the search): pausing them changes no result, only the time
    (benchmarks/bench_plan.py). Nested pauses restore the state they found.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
