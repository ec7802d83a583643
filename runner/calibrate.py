"""Run the calibration microbenchmarks, appending each measurement to a JSONL file as it finishes.

The fit itself is :func:`moesim.calib.fit.fit_profile` (no torch). This module
only measures: it writes the environment header, then one line per
microbenchmark, skipping those already in the file when resuming. Collectives
run last, in one batch of spawned processes.

A shared machine has slow periods of seconds to minutes (another tenant on the
SMT sibling, hypervisor steal) that a benchmark's own spread cannot show when
they cover the whole benchmark. The :class:`Sentinel`, a fixed cache-resident
GEMM, is timed right before and right after each single-process benchmark;
after the grid, every benchmark whose sentinel took more than
``1 + moesim.calib.store.SLOW_MACHINE_FRAC`` times the fastest sentinel of the run is measured
again (up to ``REMEASURE_PASSES`` times, appended; the reader keeps the record
whose sentinel ran fastest). The sentinel sees the core's speed, not the DRAM
bandwidth other tenants take.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from moesim.calib.grid import AnyBench
from moesim.calib.records import CollectiveBench, EnvHeader, Measurement
from moesim.calib.store import append_record

from .env import capture_env, tune_allocator
from .microbench import run_collectives, run_single
from .timing import REMEASURE_PASSES, Sentinel, measure_guarded

__all__ = ["REMEASURE_PASSES", "Sentinel", "run_grid"]

#: called after each benchmark with (done, total, key)
Progress = Callable[[int, int, str], None]


def run_grid(
    grid: list[AnyBench],
    measurements_path: Path,
    device: str,
    *,
    done_keys: set[str] | None = None,
    write_header: bool = True,
    target_s: float = 0.1,
    progress: Progress | None = None,
) -> list[Measurement]:
    """Measure every benchmark in ``grid`` whose key is not in ``done_keys``; returns the new measurements.

    Each measurement is appended (and fsynced) before the next starts, so an
    interrupt (KeyboardInterrupt) loses at most the benchmark in flight. Single-process
    benchmarks measured while the sentinel ran slow are measured again after the grid
    (module docstring); the list returned holds the record kept for each key.
    """
    tune_allocator()
    done_keys = set(done_keys or ())
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    if write_header:
        append_record(measurements_path, EnvHeader(device=device, env=capture_env(dev)))  # type: ignore[arg-type]
    todo = [b for b in grid if b.key not in done_keys]
    singles = [b for b in todo if not isinstance(b, CollectiveBench)]
    colls = [b for b in todo if isinstance(b, CollectiveBench)]
    total = len(grid)
    done = total - len(todo)
    new: list[Measurement] = []
    if progress:
        progress(done, total, "")

    def before(i: int, again: tuple[int, int] | None) -> None:
        if progress and again is not None:
            progress(done, total, f"again, machine was slow ({again[0] + 1}/{again[1]}): {singles[i].key}")

    def after(i: int, m: Measurement, again: tuple[int, int] | None) -> None:
        nonlocal done
        append_record(measurements_path, m)
        if again is None:
            done += 1
            if progress:
                progress(done, total, singles[i].key)

    kept, _ = measure_guarded(singles, lambda b: run_single(b, dev, target_s), dev, before=before, after=after)
    new.extend(kept)
    if colls:
        by_world: dict[int, list[CollectiveBench]] = {}
        for b in colls:
            by_world.setdefault(b.world_size, []).append(b)
        for world, batch in by_world.items():
            if progress:
                progress(done, total, f"collectives over {world} processes")
            for m in run_collectives(batch, device, target_s):
                append_record(measurements_path, m)
                new.append(m)
                done += 1
            if progress:
                progress(done, total, f"collectives over {world} processes")
    return new
