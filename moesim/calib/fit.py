"""Fit a hardware profile's efficiency parameters to microbenchmark measurements (no torch).

The profile's time model is the roofline of :mod:`moesim.timing`::

    t = max(F / (P * eta_f(F)), B / (W * eta_m(B))) + n_kernels * t_kernel

and for an all-to-all of ``X`` bytes leaving a rank::

    t = t_coll + X / (W_link * frac_link)

The fit inverts it, family by family, in this order:

1. ``t_kernel`` = median time of the tiny-op benchmarks (``overhead:*``).
2. Peaks (only when ``use_measured_peaks``, the CPU case where the datasheet
   number is a placeholder): ``P[dtype]`` = the highest FLOP/s any GEMM of that
   dtype reached, ``W`` = the highest bytes/s any memory op reached; the
   efficiency curves are then fractions of these measured maxima. On GPUs the
   datasheet peaks stay and the curves are fractions of them.
3. ``eta_m``: for every memory op, ``B / (W * (t - t_kernel))``; medians over
   factor-of-two bins of ``B`` become the curve's points.
4. ``eta_f``: for every GEMM ``F / (P[dtype] * (t - t_kernel))``. The shape
   tables (:class:`moesim.hardware.GemmTable`, one per kind -- plain ``mm``,
   jagged ``grouped_mm``, padded ``bmm`` --, dtype and, for the grouped kinds,
   measured group count) take the median over the measured ``N`` at each
   (rows per group ``M``, inner ``K``) of the grid;
   ``matmul_frac`` / ``grouped_matmul_frac`` (over one GEMM's FLOPs, medians
   over half-octave bins, reference dtype) stay as the fallback for dtypes and
   kinds without a table. Each dtype's peak is its highest measured rate.
5. Collectives: weighted least squares of ``t = t_coll + X / W_link`` over the
   all-to-all sizes (weights ``1/t``, so small and large messages count
   alike); all-reduce is fitted the same way (ring: ``X = 2 S (R-1)/R``) and
   reported, but the profile's link numbers come from the all-to-all that MoE
   layers use.

6. Elementwise arithmetic: ``elementwise_compute_frac`` from the SwiGLU
   activation benchmark (``swiglu``) where its time exceeds its memory term
   (family ``activation`` in the residuals).
7. Host issue (GPUs): ``host_issue_s`` = host seconds per kernel of a chain of
   tiny kernels issued without synchronising (``overhead:issue``); on a CPU the
   host is the device and this cost is in ``t_kernel``.

Residuals: every measurement is predicted back with the fitted profile and
the median ``|predicted / measured - 1|`` is reported per family.

Left out: efficiency changes with ``N`` at fixed ``M`` and ``K`` (the residuals
show them), cache effects beyond what the size bins capture, and thermal or
frequency drift during the run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..hardware import Calibration, Curve, HardwareProfile
from ..layer import GemmShape, Op, activation_op
from ..ops import OpKind
from ..timing import time_op
from .records import (
    BYTES_PER_ELEMENT,
    CollectiveBench,
    GroupedMatmulBench,
    MatmulBench,
    Measurement,
    MemoryBench,
    OverheadBench,
)

MIN_FRAC = 1e-4
#: measurements shorter than this many kernel overheads do not set peaks
PEAK_MIN_OVERHEADS = 5.0


@dataclass(frozen=True)
class FitPoint:
    """One measurement and what the fitted profile predicts for it, seconds."""

    key: str
    family: str
    measured_s: float
    predicted_s: float

    @property
    def rel_error(self) -> float:
        return self.predicted_s / self.measured_s - 1.0


@dataclass(frozen=True)
class LinkFit:
    """``t = overhead_s + cross_bytes / bandwidth_bytes_per_s`` fitted to one collective."""

    overhead_s: float
    bandwidth_bytes_per_s: float
    num_points: int

    def time_s(self, cross_bytes: float) -> float:
        return self.overhead_s + cross_bytes / self.bandwidth_bytes_per_s


@dataclass(frozen=True)
class FitResult:
    """The calibrated profile, the per-family residuals and every point behind them."""

    profile: HardwareProfile
    residuals: dict[str, float]
    points: list[FitPoint]
    kernel_overhead_s: float
    peaks_flops_per_s: dict[str, float]
    memory_bandwidth_bytes_per_s: float
    links: dict[str, LinkFit] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- pieces (each testable alone)


GEMM_BIN_RATIO = 2.0 ** 0.5
MEMORY_BIN_RATIO = 2.0


def binned_curve(sizes: list[float], fracs: list[float], bin_ratio: float = 2.0) -> list[tuple[float, float]] | None:
    """Curve points from (size, fraction) samples: medians over bins of ``bin_ratio`` in size.

    A point sits at the geometric mean size of its bin; fractions are clipped
    to ``[MIN_FRAC, 1]``. Returns None when there are no samples.
    """
    if not sizes:
        return None
    bins: dict[int, list[tuple[float, float]]] = defaultdict(list)
    step = math.log(bin_ratio)
    for s, f in zip(sizes, fracs):
        if s > 0 and math.isfinite(f):
            bins[int(math.floor(math.log(s) / step + 1e-9))].append((s, f))
    pts = []
    for b in sorted(bins):
        ss, ff = zip(*bins[b])
        x = float(math.exp(np.mean(np.log(ss))))
        y = float(min(1.0, max(MIN_FRAC, float(np.median(ff)))))
        pts.append((x, y))
    return pts or None


def fit_link(cross_bytes: list[float], times_s: list[float]) -> LinkFit | None:
    """Weighted least squares of ``t = a + x / W`` with weights ``1/t`` (relative error); a, 1/W >= 0."""
    if len(cross_bytes) < 2:
        return None
    x = np.asarray(cross_bytes, dtype=float)
    t = np.asarray(times_s, dtype=float)
    A = np.stack([1.0 / t, x / t], axis=1)
    (a, inv_w), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    if inv_w <= 0:  # bandwidth not resolved: take the largest message alone
        inv_w = max((t[-1] - max(a, 0.0)) / x[-1], 1e-15)
    if a < 0:  # refit the slope through the origin
        a = 0.0
        inv_w = float(np.sum(x / t) / np.sum((x / t) ** 2))
    return LinkFit(overhead_s=float(a), bandwidth_bytes_per_s=float(1.0 / inv_w), num_points=len(x))


def reference_dtype(gemms: list[Measurement]) -> str | None:
    """The dtype with the most GEMM measurements (ties: fp32, bf16, fp16 in that order)."""
    counts: dict[str, int] = defaultdict(int)
    for m in gemms:
        counts[m.bench.dtype] += 1  # type: ignore[union-attr]
    if not counts:
        return None
    order = {"fp32": 0, "bf16": 1, "fp16": 2}
    return max(counts, key=lambda d: (counts[d], -order.get(d, 9)))


def _busy_s(m: Measurement, t_kernel: float, kernels: int = 1) -> float:
    """Measured time minus fixed overheads, never below 10 % of the measurement."""
    return max(m.median_s - kernels * t_kernel, 0.1 * m.median_s)


def _median_rel(points: list[FitPoint]) -> float:
    return float(np.median([abs(p.rel_error) for p in points])) if points else float("nan")


def gemm_kind(b: MatmulBench | GroupedMatmulBench) -> str:
    """The compute kind a GEMM benchmark measures: plain, jagged grouped or padded batched."""
    if isinstance(b, MatmulBench):
        return "matmul"
    return "batched_matmul" if b.op == "bmm" else "grouped_matmul"


def bench_op(b: MatmulBench | GroupedMatmulBench) -> Op:
    """A GEMM benchmark as the operation the layer builder would make of it (weights apart)."""
    e = BYTES_PER_ELEMENT[b.dtype]
    if isinstance(b, MatmulBench):
        g, m = 1, b.m
    else:
        g, m = b.num_groups, b.m_per_group
    return Op(OpKind.EXPERTS, b.key, flops=b.flops, bytes_moved=float(g * (m * b.k + m * b.n) * e),
              weight_bytes=float(g * b.k * b.n * e), compute_kind=gemm_kind(b),  # type: ignore[arg-type]
              gemm=GemmShape(m=float(m), n=float(b.n), k=float(b.k), groups=float(g), call_groups=float(g)))


def gemm_tables(gemms: list[Measurement], t_kernel: float, peak: Any) -> list[dict[str, Any]]:
    """Shape tables (rows per group x inner dimension) per GEMM kind, dtype and, for grouped and batched
    kernels, group count per call; see the module docstring.

    The tables of one kind and dtype share the measured rows and inner dimensions. A cell the grid did not
    measure at a group count takes the same cell at the nearest group count (in log) that measured it, else
    the nearest measured cell of its own table (in log K within the row, else the nearest row).
    """
    cells: dict[tuple[str, str], dict[float | None, dict[tuple[int, int], list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for m in gemms:
        b = m.bench
        rows = b.m if isinstance(b, MatmulBench) else b.m_per_group  # type: ignore[union-attr]
        groups = None if isinstance(b, MatmulBench) else float(b.num_groups)  # type: ignore[union-attr]
        frac = b.flops / (peak(b.dtype) * _busy_s(m, t_kernel))
        cells[(gemm_kind(b), b.dtype)][groups][(rows, b.k)].append(frac)  # type: ignore[union-attr, arg-type]
    out = []
    for (kind, dtype), by_groups in sorted(cells.items()):
        ms = sorted({mk[0] for grid in by_groups.values() for mk in grid})
        ks = sorted({mk[1] for grid in by_groups.values() for mk in grid})
        for groups, grid in sorted(by_groups.items(), key=lambda kv: kv[0] or 0.0):
            others = sorted((g for g in by_groups if g != groups), key=lambda g: abs(math.log((g or 1.0) / (groups or 1.0))))
            table = []
            for mi in ms:
                row = []
                for kj in ks:
                    vals = grid.get((mi, kj)) or next((by_groups[g][(mi, kj)] for g in others if (mi, kj) in by_groups[g]), None)
                    if vals is None:
                        near = min(grid, key=lambda c: (abs(math.log(c[0] / mi)), abs(math.log(c[1] / kj))))
                        vals = grid[near]
                    row.append(float(min(1.0, max(MIN_FRAC, float(np.median(vals))))))
                table.append(row)
            entry: dict[str, Any] = {"kind": kind, "dtype": dtype, "rows": [float(x) for x in ms],
                                     "inner": [float(x) for x in ks], "frac": table}
            if groups is not None:
                entry["groups"] = groups
            out.append(entry)
    return out


def elementwise_frac(mems: list[Measurement], t_kernel: float, peak_fp32: float, bandwidth: float,
                     memory_frac: Curve) -> float | None:
    """``elementwise_compute_frac`` from the ``swiglu`` benchmarks: for each, the SiLU's FLOP-equivalents over
    ``P_fp32 * (t - t_kernel)`` where that busy time exceeds the memory term (arithmetic-bound sizes); the
    median, clipped to ``(0, 1]``. None when no size is arithmetic-bound (the default 1 stays)."""
    from ..layer import SILU_FLOPS_PER_ELEMENT

    fracs = []
    for m in mems:
        b = m.bench
        if not (isinstance(b, MemoryBench) and b.op == "swiglu"):
            continue
        busy = _busy_s(m, t_kernel, 2)
        mem_s = b.bytes_moved / (bandwidth * float(memory_frac(b.bytes_moved)))
        if busy > 1.2 * mem_s:
            fracs.append(SILU_FLOPS_PER_ELEMENT * b.num_elements / (peak_fp32 * busy))
    if not fracs:
        return None
    return float(min(1.0, max(MIN_FRAC, float(np.median(fracs)))))


# --------------------------------------------------------------------------- the fit


def fit_profile(
    base: HardwareProfile,
    measurements: list[Measurement],
    *,
    name: str,
    calibration: dict[str, Any],
    use_measured_peaks: bool,
    device_name: str | None = None,
) -> FitResult:
    """Fit ``base``'s efficiency (and, with ``use_measured_peaks``, its peaks) to ``measurements``.

    ``calibration`` holds the provenance fields of :class:`moesim.hardware.Calibration`
    other than ``fit_residuals`` and ``num_measurements`` (filled in here).
    Families with no measurement keep the base profile's values (noted).
    """
    notes: list[str] = []
    by_kind: dict[str, list[Measurement]] = defaultdict(list)
    for m in measurements:
        by_kind[m.bench.kind].append(m)
    eff = base.efficiency
    acc = base.accelerator
    sources = dict(base.sources)
    stamp = f"moesim calibrate on {device_name or 'this device'}, {calibration.get('date_utc', '')}".rstrip(", ")

    # 1. per-kernel overhead
    tiny = [m for m in by_kind["overhead"] if getattr(m.bench, "op", "") != "issue"]
    if tiny:
        t_kernel = float(np.median([m.median_s for m in tiny]))
    else:
        t_kernel = eff.kernel_overhead_s
        notes.append("no overhead measurements: kernel_overhead_s kept from the base profile")

    # 2. peaks
    gemms = [m for m in measurements if isinstance(m.bench, (MatmulBench, GroupedMatmulBench))]
    # the SwiGLU activation is arithmetic as well as traffic: it checks the layer model, it does not set the curve
    mems = [m for m in by_kind["memory"] if isinstance(m.bench, MemoryBench) and m.bench.op != "swiglu"]
    peaks = dict(acc.peak_flops_per_s)
    bandwidth = acc.memory_bandwidth_bytes_per_s
    if use_measured_peaks:
        best: dict[str, float] = {}
        for m in gemms:
            if m.median_s >= PEAK_MIN_OVERHEADS * t_kernel:
                rate = m.bench.flops / _busy_s(m, t_kernel)
                best[m.bench.dtype] = max(best.get(m.bench.dtype, 0.0), rate)
        for dt, rate in best.items():
            peaks[dt] = rate
            sources[f"accelerator.peak_flops_per_s.{dt}"] = (
                f"measured: highest {dt} GEMM rate over the calibration grid ({stamp}); the datasheet "
                "placeholder is replaced and efficiency curves are fractions of this maximum"
            )
        rates = [m.bench.bytes_moved / _busy_s(m, t_kernel) for m in mems if m.median_s >= PEAK_MIN_OVERHEADS * t_kernel]
        if rates:
            bandwidth = max(rates)
            sources["accelerator.memory_bandwidth_bytes_per_s"] = (
                f"measured: highest memory-op rate over the calibration grid ({stamp}); cache-resident sizes "
                "can exceed DRAM bandwidth, and memory_frac falls below 1 for DRAM-sized buffers"
            )

    def peak(dtype: str) -> float:
        return peaks.get(dtype) or acc.model_copy(update={"peak_flops_per_s": peaks}).peak_for(dtype)

    # 3. memory curve
    mem_pts = binned_curve(
        [m.bench.bytes_moved for m in mems], [m.bench.bytes_moved / (bandwidth * _busy_s(m, t_kernel)) for m in mems]
    )
    if mem_pts is None:
        notes.append("no memory measurements: memory_frac kept from the base profile")
    # 4. GEMM curves
    mms = [m for m in gemms if isinstance(m.bench, MatmulBench)]
    grs = [m for m in gemms if isinstance(m.bench, GroupedMatmulBench)]
    ref = reference_dtype(gemms)
    if use_measured_peaks and ref is not None:  # the curves' shape comes from one dtype; the others get a level
        mms_c = [m for m in mms if m.bench.dtype == ref] or mms
        grs_c = [m for m in grs if m.bench.dtype == ref] or grs
    else:
        mms_c, grs_c = mms, grs
    mm_pts = binned_curve([m.bench.flops for m in mms_c],
                          [m.bench.flops / (peak(m.bench.dtype) * _busy_s(m, t_kernel)) for m in mms_c], GEMM_BIN_RATIO)
    gr_pts = binned_curve([m.bench.flops_per_group for m in grs_c],  # type: ignore[union-attr]
                          [m.bench.flops / (peak(m.bench.dtype) * _busy_s(m, t_kernel)) for m in grs_c], GEMM_BIN_RATIO)
    if mm_pts is None:
        notes.append("no matmul measurements: matmul_frac kept from the base profile")
    if gr_pts is None:
        notes.append("no grouped-matmul measurements: grouped_matmul_frac kept from the base profile")

    tables = gemm_tables(gemms, t_kernel, peak)

    # 4b. arithmetic of elementwise kernels: the SiLU benchmark's time beyond its memory traffic
    act_frac = elementwise_frac(by_kind["memory"], t_kernel, peak("fp32"), bandwidth,
                                Curve(points=mem_pts) if mem_pts else eff.memory_frac)

    # 6. host issue cost on an asynchronous device
    host_issue = eff.host_issue_s
    issue = [m for m in by_kind["overhead"] if getattr(m.bench, "op", "") == "issue"]
    if acc.kind == "gpu" and issue:
        host_issue = float(np.median([m.median_s for m in issue]))
    elif acc.kind == "cpu":
        host_issue = None

    # 5. collectives
    links: dict[str, LinkFit] = {}
    for op in ("all_to_all", "all_reduce"):
        ms = sorted((m for m in by_kind["collective"] if isinstance(m.bench, CollectiveBench) and m.bench.op == op),
                    key=lambda m: m.bench.cross_bytes)  # type: ignore[union-attr]
        lf = fit_link([m.bench.cross_bytes for m in ms], [m.median_s for m in ms])  # type: ignore[union-attr]
        if lf is not None:
            links[op] = lf

    # assemble
    eff_update: dict[str, Any] = {
        "source": f"calibrated: {stamp}; measurements {calibration.get('measurements_file', '')}",
        "kernel_overhead_s": t_kernel,
    }
    if mem_pts:
        eff_update["memory_frac"] = {"points": mem_pts}
    if mm_pts:
        eff_update["matmul_frac"] = {"points": mm_pts}
    if gr_pts:
        eff_update["grouped_matmul_frac"] = {"points": gr_pts}
    if tables:
        eff_update["gemm_tables"] = tables
    if act_frac is not None:
        eff_update["elementwise_compute_frac"] = act_frac
    eff_update["host_issue_s"] = host_issue
    node = base.node.model_dump()
    if "all_to_all" in links:
        lf = links["all_to_all"]
        eff_update["collective_overhead_s"] = lf.overhead_s
        link_bw = node.get("scale_up_bandwidth_per_accelerator_bytes_per_s")
        if base.node.scale_up == "none" or not link_bw:
            node["scale_up_bandwidth_per_accelerator_bytes_per_s"] = lf.bandwidth_bytes_per_s
            eff_update["scale_up_frac"] = 1.0
            sources["node.scale_up_bandwidth_per_accelerator_bytes_per_s"] = (
                f"measured: all-to-all between processes on this host ({stamp}); fitted t = "
                f"{lf.overhead_s:.3g} s + bytes / {lf.bandwidth_bytes_per_s:.3g} B/s"
            )
        else:
            eff_update["scale_up_frac"] = float(min(1.0, max(MIN_FRAC, lf.bandwidth_bytes_per_s / link_bw)))
    else:
        notes.append("no collective measurements: scale_up_frac and collective_overhead_s kept from the base profile")

    raw = base.model_dump()
    raw["name"] = name
    raw["description"] = f"{base.description or base.name}, calibrated on {device_name or 'this device'}"
    raw["accelerator"] = acc.model_dump() | {"peak_flops_per_s": peaks, "memory_bandwidth_bytes_per_s": bandwidth}
    if device_name:
        raw["accelerator"]["name"] = device_name
    raw["node"] = node
    raw["efficiency"] = eff.model_dump() | eff_update
    raw["sources"] = sources
    raw["calibration"] = None
    profile = HardwareProfile.model_validate(raw)

    points = predict_points(profile, measurements, links)
    fams: dict[str, list[FitPoint]] = defaultdict(list)
    for p in points:
        fams[p.family].append(p)
    residuals = {f: _median_rel(ps) for f, ps in sorted(fams.items())}
    cal = Calibration.model_validate(
        dict(calibration) | {"num_measurements": len(measurements), "fit_residuals": residuals}
    )
    profile = HardwareProfile.model_validate(profile.model_dump() | {"calibration": cal.model_dump()})
    return FitResult(
        profile=profile, residuals=residuals, points=points, kernel_overhead_s=t_kernel, peaks_flops_per_s=peaks,
        memory_bandwidth_bytes_per_s=bandwidth, links=links, notes=notes,
    )


def predict_points(profile: HardwareProfile, measurements: list[Measurement],
                   links: dict[str, LinkFit] | None = None) -> list[FitPoint]:
    """Predict every measurement with ``profile`` (and the fitted collective lines)."""
    out = []
    links = links or {}
    for m in measurements:
        b = m.bench
        fam: str
        if isinstance(b, (MatmulBench, GroupedMatmulBench)):
            fam = b.kind
            t = time_op(profile, bench_op(b), b.dtype).time_s
        elif isinstance(b, MemoryBench) and b.op == "swiglu":
            fam = "activation"
            op = activation_op(OpKind.EXPERTS, "swiglu", b.num_elements, BYTES_PER_ELEMENT[b.dtype], num_kernels=2)
            t = time_op(profile, op, b.dtype).time_s
        elif isinstance(b, MemoryBench):
            fam = "memory"
            op = Op(OpKind.EXPERTS, "memory", bytes_moved=b.bytes_moved, compute_kind="elementwise")
            t = time_op(profile, op, b.dtype).time_s
        elif isinstance(b, OverheadBench):
            fam = "overhead"
            t = profile.efficiency.kernel_overhead_s
            if b.op == "issue":
                fam = "host_issue"
                t = profile.efficiency.host_issue_s or profile.efficiency.kernel_overhead_s
        elif isinstance(b, CollectiveBench):
            fam = b.op
            lf = links.get(b.op)
            if lf is None:
                continue
            t = lf.time_s(b.cross_bytes)
        else:  # pragma: no cover - union is exhaustive
            continue
        out.append(FitPoint(key=m.key, family=fam, measured_s=m.median_s, predicted_s=t))
    return out
