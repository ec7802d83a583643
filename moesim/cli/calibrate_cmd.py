"""``moesim calibrate``: measure this device, fit the profile's efficiencies, write a calibrated profile."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import click

from .. import limits as L
from .common import Bounded, emit_json, json_option, writable

DEFAULT_BASE = {"cpu": "local-cpu", "cuda": "h100-sxm"}


def _default_measurements(out: Path) -> Path:
    return out.with_name(out.stem + ".measurements.jsonl")


def _base_profile(device: str, base: str | None):  # noqa: ANN202
    from ..errors import InputError
    from ..hardware import bundled_hardware, load_hardware

    name = base or DEFAULT_BASE[device]
    if base is None and name not in bundled_hardware():
        name = "h100-sxm"
    try:
        prof = load_hardware(name)
    except InputError as exc:
        raise exc.with_source("--base") from None
    want = "gpu" if device == "cuda" else "cpu"
    if prof.accelerator.kind != want:
        raise InputError(
            f"base profile {prof.name!r} describes a {prof.accelerator.kind.upper()} ({prof.accelerator.name}) but "
            f"--device is {device}; pick a {want.upper()} profile (default: {DEFAULT_BASE[device]})",
            source="--base",
        )
    return prof


class _Interrupted(Exception):
    pass


@click.command("calibrate")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Device to measure.")
@click.option("--quick", is_flag=True, help="A smaller grid (under 3 minutes on a 2-core CPU).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, metavar="PROFILE.json",
              help="Calibrated profile to write (JSON, written atomically at the end).")
@click.option("--base", default=None, metavar="PROFILE",
              help="Profile whose datasheet numbers are kept [default: local-cpu for cpu, h100-sxm for cuda].")
@click.option("--measurements", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE.jsonl",
              help="Measurements file, appended as it goes [default: OUT with .measurements.jsonl].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its measurements file.")
@click.option("--world-size", type=Bounded(L.THREADS, lower=False), default=None,
              help="Processes for the all-to-all / all-reduce benchmarks [default: 2 on cpu, all GPUs on cuda; 1 skips].")
@click.option("--threads", type=Bounded(L.THREADS, lower=False), default=None,
              help="CPU threads for torch [default: torch's default].")
@click.option("--grid", type=click.Choice(["tiny", "quick", "full"]), default=None, hidden=True)
@json_option
def calibrate(device: str, quick: bool, out: Path, base: str | None, measurements: Path | None, resume: bool,
              world_size: int | None, threads: int | None, grid: str | None, as_json: bool) -> None:
    """Run microbenchmarks on this device and fit a calibrated hardware profile.

    Measures GEMMs, grouped GEMMs, memory ops, per-kernel overhead and
    collectives; every measurement is appended to a JSONL file as it finishes
    (Ctrl-C keeps them; --resume continues). The fit writes OUT, a hardware
    profile usable anywhere a profile name is (moesim validate --profile OUT).
    """
    from ..calib.fit import fit_profile
    from ..calib.grid import calibration_grid
    from ..calib.runtime import require_device, require_torch
    from ..calib.store import SLOW_MACHINE_FRAC, fastest_sentinel_s, measured_slow, read_measurements, repair_tail, sha256_file
    from ..errors import InputError
    from ..hardware import load_hardware
    from ..io import atomic_write_text

    require_torch("calibrate")
    if out.suffix.lower() != ".json":
        raise InputError(f"calibrated profiles are JSON; got {out.name!r} (use a .json path)", source="--out")
    if world_size is not None and world_size < 1:
        raise InputError(f"must be >= 1, got {world_size}", source="--world-size")
    if threads is not None and threads < 1:
        raise InputError(f"must be >= 1, got {threads}", source="--threads")
    writable(out, "--out")
    if measurements is not None:
        writable(measurements, "--measurements")
    base_prof = _base_profile(device, base)
    torch = require_device(device, "calibrate")
    if threads is not None:
        torch.set_num_threads(threads)
    meas_path = measurements or _default_measurements(out)
    size = grid or ("quick" if quick else "full")
    if world_size is None:
        world_size = 2 if device == "cpu" else max(1, torch.cuda.device_count())

    from ..runner.calibrate import REMEASURE_PASSES, run_grid
    from ..runner.env import capture_env, cpu_bf16_instructions, cpu_busy_now, load_warning
    from .render import runner as render

    done_keys: set[str] = set()
    write_header = True
    if meas_path.exists():
        if not resume:
            raise InputError(
                "measurements file exists from an earlier run; pass --resume to continue it, or remove it to start over",
                source=str(meas_path),
            )
        from ..io import read_bytes, read_text

        read_bytes(meas_path)  # a regular file of sane size, before the tail is repaired in place
        repair_tail(meas_path)  # a run killed mid-write leaves at most one partial last line
        read_text(meas_path)  # UTF-8 (a partial multi-byte character went with the partial line)
        prev = read_measurements(meas_path)
        if prev.header is not None and prev.header.device != device:
            raise InputError(
                f"measurements were taken with --device {prev.header.device}; resume with the same device",
                source=str(meas_path),
            )
        done_keys = prev.keys
        write_header = prev.header is None
    elif resume and not as_json:
        click.echo(f"note: {meas_path} does not exist yet; starting a new run", err=True)
    meas_path.parent.mkdir(parents=True, exist_ok=True)

    warnings = []
    lw = load_warning({"load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                       "cpu_busy_now": cpu_busy_now(), "num_cpus": os.cpu_count()})
    if lw:
        warnings.append(lw)
        if not as_json:
            click.echo(f"warning: {lw}", err=True)
    the_grid = calibration_grid(device, size, world_size,  # type: ignore[arg-type]
                                cpu_bf16_instructions=device == "cpu" and cpu_bf16_instructions() is True)
    t0 = time.perf_counter()

    def on_term(signum: int, frame: Any) -> None:  # SIGTERM behaves like Ctrl-C
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        with render.progress_bar(f"calibrate {device} ({size})", enabled=not as_json) as update:
            run_grid(the_grid, meas_path, device, done_keys=done_keys, write_header=write_header,
                     target_s=0.05 if size == "tiny" else 0.1, progress=update)
    except KeyboardInterrupt:
        kept = len(read_measurements(meas_path).measurements) if meas_path.exists() else 0
        click.echo(
            f"interrupted: {kept} measurements kept in {meas_path}; {out} was not written. "
            f"Continue with: moesim calibrate --device {device}{' --quick' if quick else ''} --out {out} --resume",
            err=True,
        )
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, old)

    mf = read_measurements(meas_path)
    env = mf.header.env if mf.header else capture_env(device)
    keys = {b.key for b in the_grid}
    used = [m for m in mf.measurements if m.key in keys]
    slow = measured_slow(used)
    if slow:
        sw = (f"{len(slow)} of {len(used)} benchmarks were measured while the machine ran more than "
              f"{SLOW_MACHINE_FRAC:.0%} slow (by the sentinel GEMM around them, up to {REMEASURE_PASSES + 1} "
              f"tries each), first {slow[0].key}; their times are likely high. Calibrate again on a quiet machine, "
              f"pinned to one core (taskset -c 0 ... --threads 1)")
        warnings.append(sw)
        if not as_json:
            click.echo(f"warning: {sw}", err=True)
    try:
        rel = os.path.relpath(meas_path, out.parent)
    except ValueError:
        rel = str(meas_path)
    cal = {
        "base_profile": base_prof.name,
        "device_name": env.get("device_name", "unknown"),
        "date_utc": env.get("date_utc", ""),
        "library_versions": {k.removesuffix("_version"): str(v) for k, v in env.items()
                             if k.endswith("_version") and v is not None},
        "host": {
            "num_threads": env.get("num_threads"), "num_cpus": env.get("num_cpus"), "platform": env.get("platform"),
            "grid": size, "collective_world_size": world_size,
            "peaks": ("measured: each dtype's highest GEMM rate (datasheet "
                      "placeholder replaced)") if device == "cpu" else "datasheet",
            "sentinel": {"fastest_s": fastest_sentinel_s(used), "num_measured_slow": len(slow),
                         "num_measured_again": mf.num_superseded},
        } | ({"driver_version": env.get("driver_version")} if device == "cuda" else {}),
        "measurements_file": rel,
        "measurements_sha256": sha256_file(meas_path),
    }
    result = fit_profile(base_prof, used, name=out.stem, calibration=cal, use_measured_peaks=device == "cpu",
                         device_name=env.get("device_name"))
    text = json.dumps(result.profile.model_dump(mode="json"), indent=2) + "\n"
    atomic_write_text(out, text)
    os.chmod(out, 0o644)  # a profile is meant to be shared; mkstemp creates 0600
    load_hardware(out)  # the written profile must load
    summary = {
        "profile_path": str(out),
        "profile_name": result.profile.name,
        "device": device,
        "device_name": cal["device_name"],
        "measurements_file": str(meas_path),
        "measurements_sha256": cal["measurements_sha256"],
        "num_measurements": len(used),
        "num_measured_again": mf.num_superseded,
        "num_measured_slow": len(slow),
        "grid": size,
        "elapsed_s": time.perf_counter() - t0,
        "peak_flops_per_s": result.peaks_flops_per_s,
        "memory_bandwidth_bytes_per_s": result.memory_bandwidth_bytes_per_s,
        "kernel_overhead_s": result.kernel_overhead_s,
        "links": {k: {"overhead_s": v.overhead_s, "bandwidth_bytes_per_s": v.bandwidth_bytes_per_s}
                  for k, v in result.links.items()},
        "fit_residuals_frac": result.residuals,
        "notes": result.notes,
        "warnings": warnings,
    }
    if as_json:
        emit_json(summary)
    else:
        render.show_calibration(summary)
