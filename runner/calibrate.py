"""Run the calibration microbenchmarks, appending each measurement to a JSONL file as it finishes.

The fit itself is :func:`moesim.calib.fit.fit_profile` (no torch). This module
only measures: it writes the environment header, then one line per
microbenchmark, skipping those already in the file when resuming. Collectives
run last, in one batch of spawned processes.
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
    interrupt (KeyboardInterrupt) loses at most the benchmark in flight.
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
    for b in singles:
        m = run_single(b, dev, target_s)
        append_record(measurements_path, m)
        new.append(m)
        done += 1
        if progress:
            progress(done, total, b.key)
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
