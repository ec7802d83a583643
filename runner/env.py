"""The environment a measurement was taken in: device, driver, library versions, threads."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

import moesim


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux) or ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def nvidia_driver() -> str | None:
    """The NVIDIA driver version from ``nvidia-smi`` (None when it is not there)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def capture_env(device: torch.device | str) -> dict[str, Any]:
    """Device name, driver, versions and threads, as plain JSON values."""
    device = torch.device(device)
    env: dict[str, Any] = {
        "device_name": device_name(device),
        "device_kind": "gpu" if device.type == "cuda" else "cpu",
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "moesim_version": moesim.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "num_threads": torch.get_num_threads(),
        "num_cpus": os.cpu_count(),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_average_1min": load_average(),
        "cpu_busy_now": cpu_busy_now(),
        "allocator": tune_allocator(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {
            "cuda_version": torch.version.cuda,
            "driver_version": nvidia_driver(),
            "num_devices": torch.cuda.device_count(),
            "memory_bytes": int(props.total_memory),
            "multiprocessors": int(props.multi_processor_count),
            "nccl_version": ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None,
        }
    else:
        env |= {
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "mkl": bool(torch.backends.mkl.is_available()),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16_instructions": cpu_bf16_instructions(),
        }
    return env


def cpu_bf16_instructions() -> bool | None:
    """Whether the CPU has bf16 dot-product instructions (AVX-512 BF16 or AMX-BF16); None where unknown.

    Without them torch runs bf16 GEMMs through a conversion path far slower than fp32, whose rate also
    falls with the GEMM's width (see docs/calibration.md).
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_warning(env: dict[str, Any], dtypes: set[str]) -> str | None:
    """A warning for bf16 / fp16 layers on a CPU without bf16 instructions."""
    if env.get("device_kind") == "cpu" and env.get("cpu_bf16_instructions") is False and dtypes & {"bf16", "fp16"}:
        return ("this CPU has no bf16 instructions (AVX-512 BF16 / AMX): torch runs bf16 GEMMs through a slow "
                "conversion path whose rate falls with the GEMM's width, which the shape tables describe only near "
                "the calibrated widths; expect large errors on bf16 cases")
    return None


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def _proc_stat_cpu() -> tuple[int, int, int] | None:
    """(busy, steal, total) jiffies of all CPUs from /proc/stat's ``cpu`` line; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    v = [int(x) for x in fields[1:]]
    v += [0] * (8 - len(v))
    # user nice system idle iowait irq softirq steal (guest time is already counted in user)
    idle = v[3] + v[4]
    total = sum(v[:8])
    return total - idle, v[7], total


def cpu_busy_now(window_s: float = 0.25) -> dict[str, float] | None:
    """CPUs busy with other work right now, sampled over ``window_s`` while this process sleeps.

    ``busy_cpus``: busy share of all CPUs times their count (0 .. num_cpus; this process adds nothing while it
    sleeps); ``steal_frac``: share of the CPUs' time the hypervisor gave to other guests. None where
    /proc/stat is missing (not Linux). Unlike the 1-minute load average it does not remember a process that
    just ended (a calibration right before a validation).
    """
    a = _proc_stat_cpu()
    if a is None:
        return None
    time.sleep(window_s)
    b = _proc_stat_cpu()
    if b is None or b[2] <= a[2]:
        return None
    dt = b[2] - a[2]
    cpus = os.cpu_count() or 1
    return {"busy_cpus": cpus * (b[0] - a[0]) / dt, "steal_frac": (b[1] - a[1]) / dt}


def load_warning(env: dict[str, Any]) -> str | None:
    """A warning when other work keeps the CPUs busy as the run starts (timings get noisy): by a short sample of
    /proc/stat where there is one (``cpu_busy_now``), else by the 1-minute load average."""
    cpus = env.get("num_cpus") or 1
    now = env.get("cpu_busy_now")
    if now is not None:
        busy, steal = float(now["busy_cpus"]), float(now["steal_frac"])
        if busy > 0.25 * cpus or steal > 0.1:
            return (f"the machine is busy ({busy:.2f} of {cpus} CPUs busy with other work right now, "
                    f"{steal:.0%} of CPU time stolen by the hypervisor): other processes compete for the cores and "
                    "timings will be noisy")
        return None
    la = env.get("load_average_1min")
    if la is not None and la > 0.5 * cpus:
        return (f"the machine is busy (1-minute load average {la:.2f} on {cpus} CPUs): other processes compete "
                "for the cores and timings will be noisy")
    return None


_ALLOCATOR_STATE: dict[str, str] = {}


def tune_allocator() -> str:
    """Stop glibc from returning large blocks to the OS between tensor allocations (Linux/glibc only).

    glibc serves blocks above its mmap threshold (dynamic, at most 32 MiB) with
    fresh ``mmap`` pages and trims the heap top on free, so a forward that
    allocates large activations pays a page fault per 4 KiB page on every call
    (measured here: a 64 MB elementwise op at ~10 GB/s instead of ~70 GB/s).
    Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` makes freed memory
    reusable, as deployments get from jemalloc or tcmalloc. Applied the same way
    during calibration and validation; set ``MOESIM_RUNNER_DEFAULT_MALLOC=1`` to
    keep glibc's defaults. Returns a description recorded in the environment.
    """
    if _ALLOCATOR_STATE:
        return _ALLOCATOR_STATE["allocator"]
    desc = "default"
    if os.environ.get("MOESIM_RUNNER_DEFAULT_MALLOC") != "1" and platform.system() == "Linux":
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3
            ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1
            if ok:
                desc = "glibc mallopt: mmap threshold 1 GiB, trim threshold 2 GiB"
        except (OSError, AttributeError):
            pass
    _ALLOCATOR_STATE["allocator"] = desc
    return desc
