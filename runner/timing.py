"""Timing harness: warm-up, synchronisation or device events, repetitions, median and spread.

Follows the pattern of DeepEP's ``bench()`` (deepseek-ai/DeepEP
``deep_ep/utils/testing.py``): synchronise, warm up, time every iteration on
its own (CUDA events on a GPU, ``time.perf_counter`` around a synchronous call
on the CPU), flush the cache before each iteration so a kernel does not profit
from its previous run's data (the GPU's L2; on the CPU the last-level cache, as
a real multi-layer model streams each layer's weights from DRAM), drop the
first timed sample, and report seconds. Conversion to GB/s or microseconds happens only when printing.

Stage regions (:class:`RegionTimer`) use :class:`moesim.ops.OpKind`, the enum
the simulator's operations use, so a measured stage joins its prediction
without string matching.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from moesim.calib.store import better, measured_slow
from moesim.ops import OpKind

#: bytes written to evict the L2 cache between GPU iterations (larger than any current L2: H100 50 MB, B200 126 MB)
L2_FLUSH_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Timing:
    """Summary of repeated timings of one callable, seconds."""

    median_s: float
    min_s: float
    max_s: float
    p10_s: float
    p90_s: float
    num_samples: int
    samples_s: tuple[float, ...] = field(repr=False)

    @property
    def spread_frac(self) -> float:
        """(p90 - p10) / median: relative spread of the samples."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s > 0 else 0.0


def summarise(samples_s: list[float]) -> Timing:
    """Median, min, max and 10th/90th percentiles of ``samples_s``."""
    if not samples_s:
        raise ValueError("no samples")
    xs = sorted(samples_s)
    n = len(xs)

    def q(p: float) -> float:
        if n == 1:
            return xs[0]
        pos = p * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return Timing(
        median_s=statistics.median(xs), min_s=xs[0], max_s=xs[-1], p10_s=q(0.1), p90_s=q(0.9),
        num_samples=n, samples_s=tuple(samples_s),
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def last_level_cache_bytes() -> int:
    """Size of the CPU's last-level cache from sysfs (Linux), else 32 MiB."""
    import glob

    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return best or 32 * 2**20


class CacheFlusher:
    """Writes a buffer larger than the cache so the next kernel starts cold.

    GPU: 256 MB, larger than any current L2 (H100 50 MB, B200 126 MB), as DeepEP's
    ``bench()`` does. CPU: twice the last-level cache, so weights that a real
    multi-layer model would stream from DRAM are not served from cache by the
    previous repetition.
    """

    def __init__(self, device: torch.device):
        n = L2_FLUSH_BYTES if device.type == "cuda" else min(2 * last_level_cache_bytes(), 512 * 2**20)
        self.buf = torch.empty(n // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buf.zero_()


def bench(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    *,
    warmup: int = 2,
    min_reps: int = 5,
    max_reps: int = 100,
    target_s: float = 0.2,
    flush_cache: bool = True,
) -> Timing:
    """Time ``fn`` (seconds): warm up, then repeat until ``target_s`` of samples or ``max_reps``.

    Each iteration is timed alone: on CUDA with a pair of events recorded on
    the current stream after an L2 flush; on the CPU with ``perf_counter``
    around the (synchronous) call, after a last-level-cache flush. The flush
    is outside the timed region; ``flush_cache=False`` keeps caches warm (tiny
    ops, memory benchmarks). The first timed sample is dropped.
    """
    device = torch.device(device)
    flush = CacheFlusher(device) if flush_cache else (lambda: None)
    synchronize(device)
    for _ in range(max(warmup, 0)):
        fn()
    synchronize(device)
    samples: list[float] = []
    spent = 0.0
    reps = 0
    if device.type == "cuda":
        while reps < max_reps + 1 and (reps < min_reps + 1 or spent < target_s):
            flush()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) * 1e-3  # elapsed_time is in milliseconds
            samples.append(dt)
            spent += dt
            reps += 1
    else:
        while reps < max_reps + 1 and (reps < min_reps + 1 or spent < target_s):
            flush()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            samples.append(dt)
            spent += dt
            reps += 1
    return summarise(samples[1:] if len(samples) > 1 else samples)


def bench_stable(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    *,
    max_tries: int = 3,
    spread_limit: float = 0.25,
    min_median_s: float = 200e-6,
    **kw: object,
) -> tuple[Timing, int]:
    """:func:`bench`, repeated while the samples are unstable; returns the steadiest run and the tries used.

    A run is unstable when its relative spread ``(p90 - p10) / median``
    exceeds ``spread_limit`` (another process took the cores for part of it,
    say). Runs shorter than ``min_median_s`` are not retried: their spread is
    dominated by timer and scheduler granularity. Like pyperf's instability
    warning, this guards the median against bursts of outside load; it cannot
    see a slowdown that lasts the whole run.
    """
    best: Timing | None = None
    tries = 0
    while tries < max_tries:
        t = bench(fn, device, **kw)  # type: ignore[arg-type]
        tries += 1
        if best is None or t.spread_frac < best.spread_frac:
            best = t
        if t.spread_frac <= spread_limit or t.median_s < min_median_s:
            break
    assert best is not None
    return best, tries


# --------------------------------------------------------------------------- stage regions


class NullTimer:
    """A timer that records nothing (the default for layer forwards)."""

    @contextlib.contextmanager
    def region(self, kind: OpKind) -> Iterator[None]:
        yield


class RegionTimer:
    """Accumulates the time of named stages (``OpKind``) over one or more forwards.

    On CUDA each region records a pair of events; the durations are read once
    at :meth:`totals_s`, so timing does not add synchronisations inside the
    forward. On the CPU a region is ``perf_counter`` around synchronous work.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._cpu: dict[OpKind, float] = defaultdict(float)
        self._events: list[tuple[OpKind, object, object]] = []

    @contextlib.contextmanager
    def region(self, kind: OpKind) -> Iterator[None]:
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((kind, start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._cpu[kind] += time.perf_counter() - t0

    def totals_s(self) -> dict[OpKind, float]:
        """Total seconds per stage since creation (or the last :meth:`reset`)."""
        out = dict(self._cpu)
        if self._events:
            synchronize(self.device)
            for kind, start, end in self._events:
                out[kind] = out.get(kind, 0.0) + start.elapsed_time(end) * 1e-3  # type: ignore[attr-defined]
        return out

    def reset(self) -> None:
        self._cpu.clear()
        self._events.clear()


class Sentinel:
    """Seconds of a fixed fp32 GEMM, ``[128, 256] @ [256, 256]`` (16.8 MFLOP; 384 KB of operands stay in the L2
    cache of a CPU core), the fastest of 5 calls: the speed of the core at this moment. On a GPU it is a few
    microseconds of launch and sees mostly the host."""

    def __init__(self, device: torch.device):
        self.device = device
        self.a_MK = torch.randn(128, 256, device=device)
        self.w_KN = torch.randn(256, 256, device=device)
        self.out_MN = torch.empty(128, 256, device=device)

    def __call__(self) -> float:
        return bench(lambda: torch.mm(self.a_MK, self.w_KN, out=self.out_MN), self.device, warmup=1, min_reps=5,
                     max_reps=5, target_s=0.0, flush_cache=False).min_s


#: passes over the measurements taken while the machine ran slow, after the first pass
REMEASURE_PASSES = 2

T = TypeVar("T")
R = TypeVar("R")


def measure_guarded(
    items: Sequence[T], run: Callable[[T], R], device: torch.device, *,
    before: Callable[[int, tuple[int, int] | None], None] | None = None,
    after: Callable[[int, R, tuple[int, int] | None], None] | None = None,
) -> tuple[list[R], set[int]]:
    """``run(item)`` for every item with the :class:`Sentinel` timed right before and right after it (the slower
    of the two is the record's ``sentinel_s``; ``run`` returns a pydantic record with that field). Then, up to
    ``REMEASURE_PASSES`` times, the items whose sentinel ran more than ``1 + SLOW_MACHINE_FRAC`` times the
    fastest kept one are measured again, and the record whose sentinel ran fastest is kept
    (:func:`moesim.calib.store.better`).

    ``before(i, again)`` is called before each run of item ``i`` and ``after(i, record, again)`` after it;
    ``again`` is None in the first pass, else (position, count) among the items of that pass.
    Returns the kept record of every item, in order, and the indices of the items measured again.
    """
    if not items:
        return [], set()
    sentinel = Sentinel(device)
    for _ in range(3):
        sentinel()  # first calls pay for allocation and kernel selection

    def once(i: int, again: tuple[int, int] | None) -> R:
        if before:
            before(i, again)
        t0 = sentinel()
        rec = run(items[i])
        rec = rec.model_copy(update={"sentinel_s": max(t0, sentinel())})  # type: ignore[attr-defined]
        if after:
            after(i, rec, again)
        return rec

    kept = [once(i, None) for i in range(len(items))]
    measured_again: set[int] = set()
    for _ in range(REMEASURE_PASSES):
        slow_ids = {id(r) for r in measured_slow(kept)}  # type: ignore[type-var]
        slow = [i for i, r in enumerate(kept) if id(r) in slow_ids]
        if not slow:
            break
        for j, i in enumerate(slow):
            rec = once(i, (j, len(slow)))
            measured_again.add(i)
            if better(rec, kept[i]):  # type: ignore[arg-type]
                kept[i] = rec
    return kept, measured_again
