"""Time of one operation on one device: a roofline with shape-aware, calibrated efficiency.

One function, :func:`op_terms`, computes every operation's time, for scalar
sizes and for numpy arrays of sizes alike; :func:`op_time_s` and
:func:`time_op` are views of it. For an operation (:class:`moesim.layer.Op`)
with ``F`` FLOPs, ``B_a`` activation bytes and ``B_w`` weight bytes on a
device with dense peak ``P`` (for the op's dtype) and memory bandwidth ``W``::

    compute_s  = F / (P * eta_f)
    memory_s   = B_a / (W * eta_m(B_a)) + B_w / (W * eta_m(inf))
    time_s     = max(compute_s, memory_s) + n_kernels * t_kernel

``eta_f`` for a GEMM is read at the GEMM's own shape: the profile's 2-D table
over rows per group ``M`` and inner dimension ``K`` (:class:`moesim.hardware.GemmTable`,
fitted by ``moesim calibrate``; for grouped and batched kernels one table per
measured group count, interpolated at the call's groups) when it has one for the op's kind and dtype,
otherwise its curve over one GEMM's FLOPs ``2 M N K`` (for FP8 and FP4 read at
``2 M N K * P_bf16 / P_dtype``: the curves are BF16's, see :func:`curve_size_scale`). Arithmetic in elementwise
kernels (the SiLU) runs at the op dtype's peak times the profile's
``elementwise_compute_frac``. ``eta_m`` is the memory curve
over bytes moved: activations are read where the previous kernel left them (the
curve at their size, cache regime when small), weights are streamed from device
memory (each layer's weights were evicted by the other layers since their last
use), at the curve's large-size end. ``t_kernel`` is the profile's fixed device
cost per kernel; ``n_kernels`` kernels spread over ``s`` streams (an operation's ``streams``: Transformer
Engine's per-expert GEMMs) overlap theirs, ``max(1, n_kernels / s) * t_kernel``.

Host issue (:func:`host_bound_s`): on an asynchronous device (a GPU) the host
issues kernels while earlier ones run, so a pass takes
``max(device_s, n_kernels * t_issue)``; with a captured CUDA graph the issue
cost is that of one graph launch and is left out. On a CPU the host is the
device: the per-kernel cost is in ``t_kernel`` and adds.

Reference: Williams, Waterman, Patterson, "Roofline", CACM 2009. Left out:
overlap of memory and compute inside a kernel beyond the max(), cache reuse of
weights across kernels, power / clock throttling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .hardware import HardwareProfile
from .layer import GEMM_KINDS

if TYPE_CHECKING:  # pragma: no cover
    from .layer import Op

Bound = Literal["compute", "memory", "latency", "communication"]
ComputeKind = Literal["matmul", "grouped_matmul", "batched_matmul", "elementwise"]


@dataclass(frozen=True)
class OpTime:
    """Predicted time of one operation and what bounds it."""

    time_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    bound: Bound


def _scalar(x: Any) -> bool:
    return isinstance(x, (int, float))


#: formats whose FLOPs-curve efficiency is read at the BF16-equivalent size (:func:`curve_size_scale`)
SUB_BF16_FORMATS = ("fp8", "fp4")


def curve_size_scale(profile: HardwareProfile, dtype: str) -> float:
    """Factor on a GEMM's FLOPs before it is looked up on the profile's FLOPs curve: ``P_bf16 / P_dtype``
    for FP8 and FP4, 1 otherwise.

    The curves are BF16 curves. A GEMM of one shape pays the same fixed costs (launch, prologue, the last
    partial wave) in any format while its FLOPs run ``P_dtype / P_bf16`` times faster, so its efficiency
    is a function of ``F / P`` and an FP8 GEMM reaches the plateau at twice the FLOPs of a BF16 one: the
    rule that scales the curves across devices by their peaks (docs/hardware.md), applied across formats.
    1 where the device has no faster path for the format (its peak falls back to BF16's)."""
    if dtype not in SUB_BF16_FORMATS:
        return 1.0
    acc = profile.accelerator
    return acc.peak_for("bf16") / acc.peak_for(dtype)


def gemm_efficiency(profile: HardwareProfile, kind: str, dtype: str, op: "Op") -> Any:
    """``eta_f`` of a (grouped) GEMM operation: the shape table, else the curve over one GEMM's FLOPs
    (read at the BF16-equivalent size, :func:`curve_size_scale`)."""
    eff = profile.efficiency
    g = op.gemm
    if g is not None:
        frac = eff.gemm_frac(kind, dtype, g.m, g.k, g.call_groups)
        if frac is not None:
            return frac
        size = g.flops_per_gemm
    else:
        size = op.flops
    scale = curve_size_scale(profile, dtype)
    if scale != 1.0:
        size = size * scale
    curve = eff.matmul_frac if kind in ("matmul", "attention") else eff.grouped
    if _scalar(size):
        return curve(max(float(size), 1e-30))
    return curve(np.maximum(np.asarray(size, dtype=float), 1e-30))


def op_terms(profile: HardwareProfile, op: "Op", dtype: str, *, fp8_block: bool = False) -> tuple[Any, Any, Any]:
    """(compute_s, memory_s, overhead_s) of ``op`` (scalars, or arrays when the op's sizes are arrays).

    ``fp8_block``: FP8 GEMMs scale their inputs per block (workload ``fp8_scaling = "block"``) and run at the
    profile's ``fp8_block_scaled_frac`` of a per-tensor FP8 GEMM's speed (docs/step-model.md, section 3)."""
    eff = profile.efficiency
    acc = profile.accelerator
    d = op.dtype or dtype
    peak = acc.peak_for(d)
    if fp8_block and d == "fp8" and op.compute_kind in GEMM_KINDS:
        peak = peak * eff.fp8_block_scaled_frac
    flops = op.flops
    if op.compute_kind == "attention" and eff.attention:
        keys = op.keys_per_query
        keys = max(float(keys), 1e-30) if _scalar(keys) else np.maximum(np.asarray(keys, dtype=float), 1e-30)
        compute = flops / (peak * eff.attention_frac(op.head_dim, keys, op.is_backward))
    elif (op.compute_kind in ("matmul", "grouped_matmul", "batched_matmul", "attention")
          and not (_scalar(flops) and flops <= 0)):
        compute = flops / (peak * gemm_efficiency(profile, op.compute_kind, d, op))
    else:
        compute = flops / (peak * eff.elementwise_compute_frac)
    w = acc.memory_bandwidth_bytes_per_s
    act, wts = op.bytes_moved, op.weight_bytes
    if _scalar(act):
        mem_a = act / (w * eff.memory_frac(max(float(act), 1e-30))) if act > 0 else 0.0
    else:
        a = np.asarray(act, dtype=float)
        mem_a = a / (w * eff.memory_frac(np.maximum(a, 1e-30)))
    mem_w = wts / (w * eff.streaming_memory_frac)
    kernels = op.num_kernels
    if op.streams > 1:  # kernels spread over streams overlap their fixed costs: max(1, k / s) of them
        kernels = max(1.0, kernels / op.streams) if _scalar(kernels) else np.maximum(1.0, kernels / op.streams)
    overhead = kernels * eff.kernel_overhead_s
    return compute, mem_a + mem_w, overhead


def op_time_s(profile: HardwareProfile, op: "Op", dtype: str, *, fp8_block: bool = False) -> Any:
    """``time_s`` of ``op`` (scalar or numpy array): ``max(compute, memory) + overhead``."""
    c, m, o = op_terms(profile, op, dtype, fp8_block=fp8_block)
    if _scalar(c) and _scalar(m):
        return max(c, m) + o
    return np.maximum(c, m) + o


def time_op(profile: HardwareProfile, op: "Op", dtype: str, *, fp8_block: bool = False) -> OpTime:
    """:func:`op_time_s` with its terms and bound, for scalar sizes."""
    c, m, o = (float(x) for x in op_terms(profile, op, dtype, fp8_block=fp8_block))
    body = max(c, m)
    bound: Bound = "latency" if o > body else ("compute" if c >= m else "memory")
    return OpTime(time_s=body + o, compute_s=c, memory_s=m, overhead_s=o, bound=bound)


def compute_op_time(profile: HardwareProfile, *, flops: float, bytes_moved: float, dtype: str = "bf16",
                    kind: ComputeKind = "matmul", num_kernels: int = 1, weight_bytes: float = 0.0,
                    gemm: Any = None) -> OpTime:
    """:func:`time_op` of an operation given by its numbers (microbenchmarks, optimizer passes)."""
    from .layer import Op
    from .ops import OpKind

    op = Op(OpKind.EXPERTS, flops=flops, bytes_moved=bytes_moved, weight_bytes=weight_bytes,
            compute_kind=kind, num_kernels=num_kernels, gemm=gemm)
    return time_op(profile, op, dtype)


def host_bound_s(profile: HardwareProfile, device_s: Any, kernels: Any, *, graph: bool) -> Any:
    """A pass bound by the larger of device time and the host's issue time (see module docstring)."""
    t_issue = profile.efficiency.host_issue_s
    if graph or t_issue is None or t_issue <= 0:
        return device_s
    host = kernels * t_issue
    if _scalar(device_s) and _scalar(host):
        return max(device_s, host)
    return np.maximum(device_s, host)
