"""Time of one operation on one device: a roofline with calibrated efficiency.

For an operation with ``F`` FLOPs and ``B`` bytes moved on a device with dense
peak ``P`` (for the operation's dtype) and memory bandwidth ``W``::

    compute_s  = F / (P * eta_f(F))
    memory_s   = B / (W * eta_m(B))
    time_s     = max(compute_s, memory_s) + n_kernels * t_kernel

``eta_f`` and ``eta_m`` are the profile's efficiency curves (fractions of the
peak as a function of operation size; see :class:`moesim.hardware.Curve`), and
``t_kernel`` its fixed per-kernel overhead. The ``bound`` is whichever of the
three terms is largest. Reference: Williams, Waterman, Patterson, "Roofline",
CACM 2009. Left out: overlap of memory and compute inside a kernel beyond the
max(), cache reuse across kernels, power/clock throttling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .hardware import HardwareProfile

Bound = Literal["compute", "memory", "latency", "communication"]
ComputeKind = Literal["matmul", "grouped_matmul", "elementwise"]


@dataclass(frozen=True)
class OpTime:
    """Predicted time of one operation and what bounds it."""

    time_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    bound: Bound


def compute_op_time(
    profile: HardwareProfile,
    *,
    flops: float,
    bytes_moved: float,
    dtype: str = "bf16",
    kind: ComputeKind = "matmul",
    num_kernels: int = 1,
    flops_for_efficiency: float | None = None,
) -> OpTime:
    """Roofline time of an operation (see module docstring).

    ``flops_for_efficiency`` lets grouped operations look up the efficiency of one
    group's size rather than the total (a grouped GEMM of many small experts runs
    at small-GEMM efficiency).
    """
    eff = profile.efficiency
    peak = profile.accelerator.peak_for(dtype)
    size = flops if flops_for_efficiency is None else flops_for_efficiency
    if kind == "elementwise" or flops <= 0:
        compute_s = 0.0 if flops <= 0 else flops / peak
    else:
        curve = eff.grouped if kind == "grouped_matmul" else eff.matmul_frac
        compute_s = flops / (peak * curve(size))
    memory_s = 0.0
    if bytes_moved > 0:
        memory_s = bytes_moved / (profile.accelerator.memory_bandwidth_bytes_per_s * eff.memory_frac(bytes_moved))
    overhead_s = num_kernels * eff.kernel_overhead_s
    body = max(compute_s, memory_s)
    if overhead_s > body:
        bound: Bound = "latency"
    else:
        bound = "compute" if compute_s >= memory_s else "memory"
    return OpTime(time_s=body + overhead_s, compute_s=compute_s, memory_s=memory_s, overhead_s=overhead_s, bound=bound)


def compute_time_array(
    profile: HardwareProfile,
    flops: np.ndarray,
    bytes_moved: np.ndarray,
    dtype: str = "bf16",
    kind: ComputeKind = "matmul",
    num_kernels: float = 1.0,
) -> np.ndarray:
    """Vectorised :func:`compute_op_time`, returning ``time_s`` only (for large searches)."""
    eff = profile.efficiency
    flops = np.asarray(flops, dtype=float)
    bytes_moved = np.asarray(bytes_moved, dtype=float)
    peak = profile.accelerator.peak_for(dtype)
    curve = eff.grouped if kind == "grouped_matmul" else eff.matmul_frac
    with np.errstate(divide="ignore", invalid="ignore"):
        compute = np.where(flops > 0, flops / (peak * (curve(flops) if kind != "elementwise" else 1.0)), 0.0)
        memory = np.where(
            bytes_moved > 0,
            bytes_moved / (profile.accelerator.memory_bandwidth_bytes_per_s * eff.memory_frac(bytes_moved)),
            0.0,
        )
    return np.maximum(compute, memory) + num_kernels * eff.kernel_overhead_s


def op_time_s(
    profile: HardwareProfile,
    flops: float | np.ndarray,
    bytes_moved: float | np.ndarray,
    dtype: str = "bf16",
    kind: ComputeKind = "matmul",
    num_kernels: int = 1,
    flops_for_efficiency: float | np.ndarray | None = None,
) -> float | np.ndarray:
    """``time_s`` of :func:`compute_op_time` for scalars or numpy arrays of sizes (no bound, no record).

    Zero FLOPs or bytes give a zero term (``0 / x``), so no masking is needed.
    """
    eff = profile.efficiency
    peak = profile.accelerator.peak_for(dtype)
    flops = np.asarray(flops, dtype=float)
    if kind == "elementwise":
        compute = flops / peak
    else:
        curve = eff.grouped if kind == "grouped_matmul" else eff.matmul_frac
        size = flops if flops_for_efficiency is None else np.asarray(flops_for_efficiency, dtype=float)
        compute = flops / (peak * curve(np.maximum(size, 1e-30)))
    b = np.asarray(bytes_moved, dtype=float)
    memory = b / (profile.accelerator.memory_bandwidth_bytes_per_s * eff.memory_frac(np.maximum(b, 1e-30)))
    return np.maximum(compute, memory) + num_kernels * eff.kernel_overhead_s
