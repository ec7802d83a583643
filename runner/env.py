"""The environment a measurement was taken in: device, driver, library versions, threads."""

from __future__ import annotations

import os
import platform
import subprocess
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


def load_warning(env: dict[str, Any]) -> str | None:
    """A warning when other work was keeping the CPUs busy as the run started (timings get noisy)."""
    la, cpus = env.get("load_average_1min"), env.get("num_cpus") or 1
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
