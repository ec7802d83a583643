"""Hardware profiles: accelerator, node, scale-out fabric, efficiency and price.

Hand-written profiles are TOML under ``hardware_profiles/``. Every datasheet
number is written as ``{ value = "...", source = "..." }`` with its unit in the
value; the loader converts units once and keeps the sources in
:attr:`HardwareProfile.sources`, keyed by dotted field path. Calibrated profiles
(written by ``moesim calibrate``) are JSON in base units with the same shape.

Bandwidths are **per accelerator (or per NIC), per direction**; a vendor's
bidirectional figure is halved and the original quoted in the source note.
Peak FLOP/s are **dense** (never the 2:4-sparsity figure).
"""

from __future__ import annotations

import bisect
import math
import os
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from . import limits as L
from .data import hardware_dir
from .errors import InputError, from_validation_error
from .filecache import parsed, signature
from .io import is_plain_name, name_suffix, read_bytes, stat_if_present
from .units import parse_quantity


def _q(kind: str):
    return BeforeValidator(lambda v: parse_quantity(v, kind))


FlopsPerS = Annotated[float, _q("flops_per_s"), Field(gt=0)]
BytesPerS = Annotated[float, _q("bytes_per_s"), Field(gt=0)]
Bytes = Annotated[float, _q("bytes"), Field(gt=0)]
Seconds = Annotated[float, _q("s"), Field(ge=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def model_copy(self, *, update=None, deep: bool = False):  # noqa: ANN001, ANN201
        """pydantic's copy, less the cached derived values (the fingerprint, the curves' tables) when ``update``
        changes fields: they would describe the original."""
        copied = super().model_copy(update=update, deep=deep)
        if update:
            fields = type(copied).model_fields
            for name in [k for k in copied.__dict__ if k not in fields]:
                del copied.__dict__[name]
        return copied


class Curve(_Frozen):
    """An efficiency curve: achievable fraction of a peak as a function of operation size.

    ``points`` are ``[size, frac]`` pairs with strictly increasing size > 0 and
    0 < frac <= 1. Between points the fraction is interpolated linearly in
    log(size); outside it is held at the end values.
    """

    points: list[tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0, le=1)]]] = Field(min_length=1)

    @model_validator(mode="after")
    def _increasing(self) -> "Curve":
        xs = [p[0] for p in self.points]
        if any(b <= a for a, b in zip(xs, xs[1:])):
            raise ValueError(f"curve sizes must be strictly increasing, got {xs}")
        return self

    @cached_property
    def _log_xy(self) -> tuple[list[float], list[float]]:
        return [math.log(p[0]) for p in self.points], [p[1] for p in self.points]

    def __call__(self, size: float | np.ndarray) -> float | np.ndarray:
        xs, ys = self._log_xy
        if isinstance(size, (int, float)):  # scalar fast path (the step model's hot loop)
            s = math.log(max(float(size), 1e-30))
            if s <= xs[0]:
                return ys[0]
            if s >= xs[-1]:
                return ys[-1]
            i = bisect.bisect_right(xs, s)
            t = (s - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
        s_arr = np.log(np.maximum(np.asarray(size, dtype=float), 1e-30))
        xa, ya = self._log_xy_arrays
        out = np.interp(s_arr, xa, ya)
        return float(out) if np.ndim(out) == 0 else out

    @cached_property
    def _log_xy_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """:attr:`_log_xy` as float arrays (what ``np.interp`` would convert the lists to on every call)."""
        xs, ys = self._log_xy
        return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)

    @classmethod
    def constant(cls, frac: float) -> "Curve":
        return cls(points=[(1.0, frac)])


class GemmTable(_Frozen):
    """Fraction of a dtype's dense peak reached by GEMMs of one kind, over their shape.

    ``rows`` are rows per group ``M`` (tokens per expert), ``inner`` the inner
    (reduction) dimension ``K``, both strictly increasing; ``frac[i][j]`` is the
    fraction at ``(rows[i], inner[j])``. Between grid points the fraction is
    interpolated bilinearly in ``(log M, log K)``; outside it is held at the
    edge. The output width ``N`` does not enter: a GEMM's work and its weight
    traffic both scale with ``N``, and the kernel tiles over ``N`` in parallel,
    so at fixed ``M`` and ``K`` its efficiency is flat in ``N`` (the
    calibration's residuals say how flat on the measured device).

    ``groups`` is the number of groups in one call of a grouped or batched
    kernel the table was measured at: the call's fixed costs (its first
    weights and rows from memory, the kernel's setup) are shared by its groups,
    so at the same ``(M, K)`` the fraction changes with the group count.
    Several tables of one kind and dtype at different counts are interpolated
    linearly in ``log groups`` and held outside them; a table without
    ``groups`` holds for every count.
    """

    kind: Literal["matmul", "grouped_matmul", "batched_matmul"] = Field(
        description="GEMM kind the table is for: plain, jagged grouped (grouped_mm) or padded batched (bmm).")
    dtype: str = Field(description="Compute dtype the fractions are of (fp32, bf16, ...).")
    rows: list[Annotated[float, Field(gt=0)]] = Field(min_length=1, description="Rows per group M, count.")
    inner: list[Annotated[float, Field(gt=0)]] = Field(min_length=1, description="Inner dimension K, count.")
    frac: list[list[Annotated[float, Field(gt=0, le=1)]]] = Field(description="frac[i][j] at (rows[i], inner[j]).")
    groups: float | None = Field(
        None, gt=0,
        description="Groups per kernel call the table was measured at (grouped and batched kinds); None: every "
        "group count.")

    @model_validator(mode="after")
    def _grid(self) -> "GemmTable":
        for name, xs in (("rows", self.rows), ("inner", self.inner)):
            if any(b <= a for a, b in zip(xs, xs[1:])):
                raise ValueError(f"gemm table {name} must be strictly increasing, got {xs}")
        if len(self.frac) != len(self.rows) or any(len(r) != len(self.inner) for r in self.frac):
            raise ValueError(f"gemm table frac must be {len(self.rows)} rows of {len(self.inner)} values")
        return self

    @cached_property
    def _log(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.log(self.rows), np.log(self.inner), np.asarray(self.frac, dtype=float)

    def __call__(self, m: float | np.ndarray, k: float | np.ndarray) -> float | np.ndarray:
        lm, lk, f = self._log
        scalar = isinstance(m, (int, float)) and isinstance(k, (int, float))
        xm = np.log(np.maximum(np.asarray(m, dtype=float), 1e-30))
        xk = np.log(np.maximum(np.asarray(k, dtype=float), 1e-30))

        def axis(grid: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if len(grid) == 1:
                z = np.zeros(np.shape(x), dtype=int)
                return z, z, np.zeros(np.shape(x))
            x = np.clip(x, grid[0], grid[-1])
            hi = np.clip(np.searchsorted(grid, x, side="right"), 1, len(grid) - 1)
            lo = hi - 1
            t = (x - grid[lo]) / (grid[hi] - grid[lo])
            return lo, hi, t

        i0, i1, tm = axis(lm, xm)
        j0, j1, tk = axis(lk, xk)
        out = ((1 - tm) * ((1 - tk) * f[i0, j0] + tk * f[i0, j1]) + tm * ((1 - tk) * f[i1, j0] + tk * f[i1, j1]))
        return float(out) if scalar or np.ndim(out) == 0 else out


class Accelerator(_Frozen):
    """One accelerator (GPU) or, for the local-CPU profile, one CPU socket set."""

    name: str = Field(description="Marketing name, e.g. 'NVIDIA H100 SXM5 80GB'.")
    kind: Literal["gpu", "cpu"] = Field("gpu", description="Device kind.")
    peak_flops_per_s: dict[str, FlopsPerS] = Field(
        description="Dense peak FLOP/s per compute dtype (bf16, fp16, fp8, fp4, tf32, fp32). No 2:4 sparsity."
    )
    memory_bytes: Bytes = Field(description="Device memory capacity, bytes.")
    memory_bandwidth_bytes_per_s: BytesPerS = Field(description="Peak device memory bandwidth, bytes/s.")

    @model_validator(mode="after")
    def _dtypes(self) -> "Accelerator":
        allowed = {"fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4"}
        bad = set(self.peak_flops_per_s) - allowed
        if bad:
            raise ValueError(f"unknown dtype(s) {sorted(bad)} in peak_flops_per_s; allowed: {sorted(allowed)}")
        if "bf16" not in self.peak_flops_per_s and "fp32" not in self.peak_flops_per_s:
            raise ValueError("peak_flops_per_s needs at least bf16 or fp32")
        return self

    def peak_for(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``, falling back to the nearest wider format.

        Falls back fp4 -> fp8 -> bf16 and fp16 -> bf16 -> fp32 when the device has no
        faster path for the narrower format.
        """
        return self.peak_flops_per_s[self.peak_dtype_for(dtype)]

    def peak_dtype_for(self, dtype: str) -> str:
        """The format whose peak :meth:`peak_for` uses for ``dtype`` (``dtype`` itself when the device has it)."""
        peaks = self.peak_flops_per_s
        for d in _PEAK_FALLBACK.get(dtype) or (dtype, "bf16", "fp32"):
            if d in peaks:
                return d
        raise KeyError(dtype)


#: the formats :meth:`Accelerator.peak_for` falls back to, narrowest first
_PEAK_FALLBACK = {
    "fp4": ("fp4", "fp8", "bf16", "fp32"),
    "fp8": ("fp8", "bf16", "fp32"),
    "int8": ("int8", "fp8", "bf16", "fp32"),
    "fp16": ("fp16", "bf16", "fp32"),
    "bf16": ("bf16", "fp16", "fp32"),
    "tf32": ("tf32", "fp32"),
    "fp32": ("fp32", "tf32", "bf16"),
}


class Node(_Frozen):
    """A node (server) and its scale-up domain."""

    accelerators_per_node: L.count(L.NODE_SIZE) = Field(description="Accelerators in one node (or one NVL72 rack).")
    scale_up: Literal["nvswitch", "nvlink_domain", "infinity_fabric", "pcie", "none"] = Field(
        description="Scale-up interconnect: NVSwitch 8-GPU nodes, a multi-node NVLink domain (GB200 NVL72), "
        "AMD Infinity Fabric full mesh, PCIe only, or none (one device)."
    )
    scale_up_domain_size: L.count(L.NODE_SIZE) = Field(description="Accelerators reachable over scale-up links (8, 72, ...).")
    scale_up_bandwidth_per_accelerator_bytes_per_s: BytesPerS | None = Field(
        None, description="Scale-up bandwidth per accelerator, per direction, bytes/s."
    )
    scale_up_latency_s: Seconds = Field(0.0, description="One-way small-message latency over scale-up, seconds.")
    nvls_sharp: bool = Field(False, description="NVLink SHARP (in-switch reductions) is available.")

    @model_validator(mode="after")
    def _scale_up(self) -> "Node":
        if self.scale_up != "none" and self.scale_up_bandwidth_per_accelerator_bytes_per_s is None:
            raise ValueError(f"scale_up = {self.scale_up!r} needs scale_up_bandwidth_per_accelerator_bytes_per_s")
        return self


class ScaleOut(_Frozen):
    """The network between nodes."""

    fabric: Literal["infiniband", "roce", "ethernet", "none"] = Field(description="Scale-out fabric kind.")
    nics_per_node: L.count(L.NICS) = Field(0, description="Scale-out NICs per node (compute fabric only).")
    bandwidth_per_nic_bytes_per_s: BytesPerS | None = Field(None, description="Per NIC, per direction, bytes/s.")
    latency_s: Seconds = Field(0.0, description="One-way small-message latency across the fabric, seconds.")
    rail_optimized: bool = Field(False, description="NIC i of every node connects to leaf switch (rail) i.")
    oversubscription_ratio: L.number(L.OVERSUBSCRIPTION) = Field(1.0, description="Leaf downlink:uplink bandwidth ratio (1 = non-blocking).")
    leaf_switch_ports: L.count(L.SWITCH_PORTS) = Field(64, description="Ports per leaf switch (NDR Quantum-2: 64).")
    max_nodes: L.count(L.NODES) | None = Field(None, description="Largest cluster the fabric is described for, in nodes.")

    @model_validator(mode="after")
    def _nics(self) -> "ScaleOut":
        if self.fabric != "none" and (self.nics_per_node < 1 or self.bandwidth_per_nic_bytes_per_s is None):
            raise ValueError(f"fabric = {self.fabric!r} needs nics_per_node >= 1 and bandwidth_per_nic_bytes_per_s")
        return self


class AttentionEfficiency(_Frozen):
    """Fraction of the BF16 dense peak that a fused attention kernel (QK^T, softmax, AV in one kernel) reaches
    at one head dimension, over the mean number of keys each query attends (the key-block loop length).

    ``forward_frac`` is read from causal forward runs (mean keys per query ``S / 2`` at sequence length ``S``),
    ``backward_frac`` from backward runs at their own mean keys per query; FLOPs are counted as the useful work
    (the masked half of a causal score matrix excluded; the backward's recomputed ``Q K^T`` counted, 2.5x the
    forward). See docs/step-model.md ("Attention kernel efficiency").
    """

    source: str = Field(description="The kernel benchmark the curves are read from.")
    head_dim: int = Field(gt=0, le=4096, description="Head dimension of the benchmark the curves are read from.")
    forward_frac: Curve = Field(description="Forward pass: fraction of the BF16 peak vs mean keys per query.")
    backward_frac: Curve = Field(description="Backward pass: fraction of the BF16 peak vs mean keys per query.")


class Efficiency(_Frozen):
    """Achievable fractions of the peaks and fixed overheads (defaults until calibrated)."""

    source: str = Field(description="Where these values come from (documented default or a calibration).")
    matmul_frac: Curve = Field(description="Fraction of dense peak FLOP/s vs matmul FLOPs.")
    grouped_matmul_frac: Curve | None = Field(None, description="Same for grouped (per-expert) matmul; matmul_frac if absent.")
    memory_frac: Curve = Field(description="Fraction of peak memory bandwidth vs bytes moved.")
    scale_up_frac: float = Field(gt=0, le=1, description="Achievable fraction of scale-up bandwidth for large messages.")
    scale_out_frac: float = Field(gt=0, le=1, description="Achievable fraction of NIC bandwidth for large messages.")
    kernel_overhead_s: Seconds = Field(description="Fixed cost per kernel launch, seconds.")
    collective_overhead_s: Seconds = Field(0.0, description="Fixed software cost per collective call, seconds.")
    gemm_tables: list[GemmTable] = Field(
        default_factory=list,
        description="Shape-aware GEMM efficiency (rows per group x inner dimension) per kind and dtype, and for "
        "grouped kinds per measured group count; where a kind / dtype has no table, matmul_frac / "
        "grouped_matmul_frac over one GEMM's FLOPs apply.",
    )
    elementwise_compute_frac: float = Field(
        1.0, gt=0, le=1,
        description="Fraction of the dtype's dense peak that arithmetic inside elementwise kernels reaches (the "
        "SiLU's exp and division): vector units without FMA pairing and transcendental sequences run below the GEMM "
        "peak; fitted from the calibration's swiglu benchmark, 1 (never binding on GPUs) by default.",
    )
    attention: list[AttentionEfficiency] = Field(
        default_factory=list,
        description="Fused attention kernel efficiency over keys per query, one entry per benchmarked head "
        "dimension (strictly increasing; interpolated linearly in log(head dim) between them, held outside); when "
        "empty the attention core is timed as a GEMM of its FLOPs on matmul_frac.",
    )
    fp8_block_scaled_frac: float = Field(
        1.0, gt=0, le=1, allow_inf_nan=False,
        description="Throughput of an FP8 GEMM with a scale per block of K (DeepSeek-V3's 1 x 128 / 128 x 128 tiles, "
        "workload fp8_scaling 'block') as a share of the same GEMM with one scale per tensor. Below 1 where the "
        "tensor cores do not apply block scales (Hopper: the kernel rescales every 128-element partial sum on the "
        "CUDA cores); 1 where they do (Blackwell's block-scaled MMA) or where no figure is published.",
    )
    host_issue_s: Seconds | None = Field(
        None,
        description="Host time to issue one kernel from an eager framework on an asynchronous device, seconds; a "
        "pass takes max(device time, kernels x host_issue_s) unless it runs as a captured graph. None: the host is "
        "the device (a CPU), its cost is in kernel_overhead_s.",
    )

    @model_validator(mode="after")
    def _attention_head_dims(self) -> "Efficiency":
        dims = [a.head_dim for a in self.attention]
        if any(b <= a for a, b in zip(dims, dims[1:])):
            raise ValueError(f"attention head_dim values must be strictly increasing, got {dims}")
        return self

    def attention_frac(self, head_dim: float, keys: Any, backward: bool) -> Any:
        """The fused attention kernel's fraction of the BF16 peak at ``keys`` keys per query (scalar or array)
        for ``head_dim``: the curves of the nearest benchmarked head dimensions, linear in log(head dim)."""
        tables = self.attention
        pick = (lambda a: a.backward_frac(keys)) if backward else (lambda a: a.forward_frac(keys))
        if head_dim <= tables[0].head_dim:
            return pick(tables[0])
        if head_dim >= tables[-1].head_dim:
            return pick(tables[-1])
        i = next(j for j, a in enumerate(tables) if a.head_dim >= head_dim)
        lo, hi = tables[i - 1], tables[i]
        t = (math.log(head_dim) - math.log(lo.head_dim)) / (math.log(hi.head_dim) - math.log(lo.head_dim))
        return pick(lo) + t * (pick(hi) - pick(lo))

    @property
    def grouped(self) -> Curve:
        return self.grouped_matmul_frac or self.matmul_frac

    @cached_property
    def streaming_memory_frac(self) -> float:
        """Fraction of peak bandwidth for data streamed from device memory: the memory curve's large-size end."""
        return float(self.memory_frac.points[-1][1])

    @model_validator(mode="after")
    def _gemm_table_groups(self) -> "Efficiency":
        for key, ts in self._tables.items():
            counts = [t.groups for t in ts]
            if len(ts) > 1 and (None in counts or len(set(counts)) < len(counts)):
                raise ValueError(f"gemm_tables: {len(ts)} tables of kind {key[0]!r} and dtype {key[1]!r} need "
                                 f"distinct group counts (groups, each > 0, all set), got {counts}")
        return self

    @cached_property
    def _tables(self) -> dict[tuple[str, str], tuple[GemmTable, ...]]:
        by: dict[tuple[str, str], list[GemmTable]] = {}
        for t in self.gemm_tables:
            by.setdefault((t.kind, t.dtype), []).append(t)
        return {k: tuple(sorted(v, key=lambda t: t.groups or 0.0)) for k, v in by.items()}

    def gemm_table(self, kind: str, dtype: str) -> tuple[GemmTable, ...]:
        """The shape tables for ``kind`` and ``dtype`` (one per measured group count, fewest first): batched
        falls back to grouped, both to the plain table; empty when there is none."""
        t = self._tables
        if not t:
            return ()
        found = t.get((kind, dtype))
        if found is None and kind == "batched_matmul":
            found = t.get(("grouped_matmul", dtype))
        if found is None and kind != "matmul":
            found = t.get(("matmul", dtype))
        return found or ()

    def gemm_frac(self, kind: str, dtype: str, m: Any, k: Any, groups: Any = 1.0) -> Any:
        """``eta_f`` of ``kind`` GEMMs of ``m`` rows per group and inner ``k`` in calls of ``groups`` groups
        (scalars or arrays) from the shape tables (see :class:`GemmTable`); None when there is no table."""
        tables = self.gemm_table(kind, dtype)
        if not tables:
            return None
        if len(tables) == 1:
            return tables[0](m, k)
        counts = np.log([t.groups for t in tables])  # type: ignore[arg-type]
        x = np.clip(np.log(np.maximum(np.asarray(groups, dtype=float), 1e-30)), counts[0], counts[-1])
        hi = np.clip(np.searchsorted(counts, x, side="right"), 1, len(tables) - 1)
        if np.ndim(hi) == 0:
            i = int(hi)
            t = float((x - counts[i - 1]) / (counts[i] - counts[i - 1]))
            lo_f, hi_f = tables[i - 1](m, k), tables[i](m, k)
            out = lo_f + t * (hi_f - lo_f)
            return float(out) if np.ndim(out) == 0 else out
        vals = np.stack([np.broadcast_to(np.asarray(tb(m, k), dtype=float), np.shape(x)) for tb in tables])
        t = (x - counts[hi - 1]) / (counts[hi] - counts[hi - 1])
        lo_f = np.take_along_axis(vals, (hi - 1)[None], 0)[0]
        hi_f = np.take_along_axis(vals, hi[None], 0)[0]
        return lo_f + t * (hi_f - lo_f)


class Price(_Frozen):
    usd_per_accelerator_hour: L.number(L.PRICE_PER_GPU_HOUR) = Field(description="Price per accelerator-hour, USD.")


class Calibration(_Frozen):
    """Provenance of a calibrated profile."""

    base_profile: str = Field(description="Profile whose datasheet numbers were kept.")
    device_name: str
    date_utc: str
    library_versions: dict[str, str] = Field(default_factory=dict)
    host: dict[str, Any] = Field(default_factory=dict)
    measurements_file: str
    measurements_sha256: str
    num_measurements: int = Field(ge=0)
    fit_residuals: dict[str, float] = Field(default_factory=dict, description="Median |rel. error| per fitted family.")


class HardwareProfile(_Frozen):
    """A system: accelerator + node + scale-out fabric + efficiency (+ price)."""

    name: str = Field(description="Short name used on the command line, e.g. 'h100-sxm'.")
    description: str = Field("", description="One line about the system.")
    accelerator: Accelerator
    node: Node
    scale_out: ScaleOut
    efficiency: Efficiency
    price: Price | None = None
    sources: dict[str, str] = Field(default_factory=dict, description="Source of each datasheet number, by field path.")
    calibration: Calibration | None = None

    @model_validator(mode="after")
    def _domain(self) -> "HardwareProfile":
        n = self.node
        if n.scale_up_domain_size % n.accelerators_per_node and n.accelerators_per_node % n.scale_up_domain_size:
            raise ValueError(
                f"node.scale_up_domain_size ({n.scale_up_domain_size}) and node.accelerators_per_node "
                f"({n.accelerators_per_node}) must divide one another"
            )
        return self

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the whole profile: equal contents, equal key (caches keyed on it hit across loads)."""
        import hashlib

        return hashlib.sha1(self.model_dump_json().encode()).hexdigest()

    @property
    def max_accelerators(self) -> int | None:
        if self.scale_out.fabric == "none":
            return self.node.accelerators_per_node
        if self.scale_out.max_nodes is None:
            return None
        return self.scale_out.max_nodes * self.node.accelerators_per_node


# --------------------------------------------------------------------------- loading

SOURCED_SECTIONS = ("accelerator", "node", "scale_out", "price")


def _strip_sources(obj: Any, path: str, sources: dict[str, str], where: str) -> Any:
    """Replace ``{value, source[, note]}`` tables by their value, recording the source."""
    if isinstance(obj, dict):
        keys = set(obj)
        if "value" in keys and keys <= {"value", "source", "note"}:
            if not isinstance(obj.get("source"), str) or not obj["source"].strip():
                raise InputError("a {value, source} table needs a non-empty source", source=where, field=path)
            sources[path] = obj["source"]
            return obj["value"]
        return {k: _strip_sources(v, f"{path}.{k}" if path else k, sources, where) for k, v in obj.items()}
    return obj


def _unsourced_numbers(obj: Any, path: str, sources: dict[str, str]) -> list[str]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _unsourced_numbers(v, f"{path}.{k}", sources)
    elif isinstance(obj, (int, float, str)) and not isinstance(obj, bool) and path not in sources:
        if isinstance(obj, str) and not any(ch.isdigit() for ch in obj):
            return out
        out.append(path)
    return out


def parse_profile(raw: dict[str, Any], where: str) -> HardwareProfile:
    """Validate a raw profile mapping (from TOML or JSON) read from ``where``."""
    sources = dict(raw.get("sources") or {})
    body = {k: v for k, v in raw.items() if k != "sources"}
    body = _strip_sources(body, "", sources, where)
    if raw.get("calibration") is None:  # hand-written: every datasheet number cites a source
        for section in SOURCED_SECTIONS:
            missing = _unsourced_numbers(body.get(section, {}), section, sources)
            missing = [m for m in missing if not m.endswith(".name")]
            if missing:
                raise InputError(
                    "datasheet number without a source; write it as { value = ..., source = \"...\" }",
                    source=where,
                    field=missing[0],
                )
    body["sources"] = sources
    try:
        return HardwareProfile.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc, where, body, HardwareProfile) from None


def bundled_hardware() -> dict[str, Path]:
    """Names of the shipped profiles and their files (TOML and calibrated JSON)."""
    root = hardware_dir()
    out = {p.stem: p for p in sorted(root.glob("*.toml"))}
    for p in sorted(root.glob("calibrated/*.json")):
        out.setdefault(p.stem, p)
    return out


def bundled_profile_path(name: str) -> Path | None:
    """The file of shipped profile ``name`` (a key of :func:`bundled_hardware`) without listing the folders."""
    p = _bundled_profile_file(name)
    return Path(p) if p is not None else None


def _bundled_profile_file(name: str) -> str | None:
    found = _bundled_profile(name)
    return found[0] if found is not None else None


def _bundled_profile(name: str) -> tuple[str, tuple[int, ...]] | None:
    """(file, its stat signature) of shipped profile ``name``, or None."""
    for p in _profile_candidates(_hardware_dir(), name):
        sig = signature(p)  # None for a name too long for the file system, as os.path.exists says False
        if sig is not None:
            return p, sig
    return None


@lru_cache(maxsize=1024)
def _profile_candidates(root: str, name: str) -> tuple[str, ...]:
    """The files under ``root`` that shipped profile ``name`` may be (a TOML profile, else a calibrated JSON
    one); none for a name that is not one plain file-name stem."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        return ()
    return os.path.join(root, name + ".toml"), os.path.join(root, "calibrated", name + ".json")


@lru_cache(maxsize=1)
def _hardware_dir() -> str:
    return str(hardware_dir())


def read_profile_file(path: Path | str, _sig: Any = None) -> HardwareProfile:
    """The profile a TOML or JSON file describes: parsed, converted and validated once per distinct content of
    the file (:func:`moesim.filecache.parsed`). Calls share the one frozen object of a content:
    ``model_copy(update=...)`` gives a changed copy; its tables are not to be changed in place."""
    if _sig is None:
        return parsed(str(path), read_bytes, _parse_profile_file)
    return parsed(str(path), read_bytes, _parse_profile_file, _sig)


def _parse_profile_file(where: str, data: bytes) -> HardwareProfile:
    from .io import decode_text, parse_json, parse_toml

    text = decode_text(data, where)
    raw = parse_json(text, where) if where.endswith(".json") else parse_toml(text, where)
    if not isinstance(raw, dict):
        raise InputError("expected an object at the top level", source=where)
    profile = parse_profile(raw, where)
    profile.fingerprint  # noqa: B018 - computed once here, for every caller that gets it
    return profile


def load_hardware(name_or_path: str | Path) -> HardwareProfile:
    """Load a shipped profile by name (``moesim hardware list``) or a TOML / JSON file."""
    if not isinstance(name_or_path, (str, Path)):
        raise InputError(f"expected a profile name or path, got {L.short(name_or_path)}", field="hardware")
    L.PATH.check(str(name_or_path), field="hardware")
    # a bare name (most calls) is looked up as Path(name) would be, without building one
    plain = isinstance(name_or_path, str) and is_plain_name(name_or_path)
    p = None if plain else Path(name_or_path)
    try:
        exists = stat_if_present(name_or_path) is not None if plain else p.exists()  # type: ignore[arg-type, union-attr]
    except (OSError, ValueError) as exc:  # a name too long for the file system
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a valid path"
        raise InputError(f"cannot use {L.short(str(name_or_path))} as a profile ({reason})", field="hardware") from None
    suffix = name_suffix(name_or_path) if plain else p.suffix  # type: ignore[arg-type, union-attr]
    if suffix in (".toml", ".json") or exists:
        p = Path(name_or_path)
        if not exists:
            raise InputError("file not found", source=str(p))
        return read_profile_file(p)
    key = str(name_or_path).lower()
    found = _bundled_profile(key)
    if found is None:
        known = bundled_hardware()
        raise InputError(
            f"unknown hardware profile {L.short(str(name_or_path))}; known: {', '.join(known)} (or a path to a .toml/.json file)",
            field="hardware",
        )
    return read_profile_file(*found)
