"""Predicted time and peak memory of one MoE FFN layer, built stage by stage (pure; no torch).

:func:`moe_layer_ops` lists the operations of each stage (:class:`moesim.ops.OpKind`)
with their FLOPs, bytes moved and kernel count, for a given per-expert load;
:func:`predict_layer` times each with :func:`moesim.timing.compute_op_time` on a
(calibrated) profile and adds the all-to-all of expert parallelism. The step
model reuses :func:`moe_layer_ops` for the MoE FFN of a transformer layer.

Symbols: ``T`` tokens per rank, ``D`` model width, ``F`` expert width, ``E``
experts, ``L`` local experts, ``K`` top-k, ``A`` assignments routed by the rank
(``T K``), ``n_e`` rows of expert ``e`` on the rank, ``C`` capacity, ``S``
shared width, ``b`` bytes per element. A SwiGLU expert costs three GEMMs of
``2 n D F`` FLOPs (Shazeer 2020, "GLU Variants Improve Transformer").

Per implementation (matching ``moesim.runner.layers``):

* ``loop``: every expert is its own set of kernels: dispatch scans the ``A``
  assignments once per expert (``E`` compare + nonzero passes) and gathers its
  rows; each non-empty expert runs 3 GEMMs at the efficiency of an ``n_e``-row
  GEMM plus 2 elementwise kernels; combine weights and scatter-adds per expert.
* ``padded`` (GShard / Switch): dispatch builds the position of every
  assignment in its expert (a one-hot cumsum over ``A x E``) and fills an
  ``[E, C, D]`` buffer; the experts compute all ``E C`` rows whatever the load
  (3 batched GEMMs at the efficiency of a ``C``-row GEMM); dropped rows cost
  nothing in combine.
* ``grouped`` (dropless): one sort of ``A`` assignments, one gather, 3 grouped
  GEMMs whose groups run at the efficiency of their own size
  (``flops_for_efficiency`` = one expert's GEMM), one weighted scatter-add.
  Experts with equal loads share an operation, so the list stays short.

Expert parallelism (``ep_size = R``): the dispatch adds an all-to-all of the
per-expert counts and one of the rows (``X`` bytes leave the rank), the
combine the reverse; each costs ``t_coll + X / (W_link * frac_link)``. The
layer takes as long as its slowest rank (the straggler sets the time). When
``R`` CPU ranks share one machine each gets ``compute_share`` of its FLOP/s and
bandwidth.

Left out: overlap of stages, the router's auxiliary losses, activation
checkpointing, backward; sort cost is modelled as ``log2(A)`` passes over the
keys; Python overhead is folded into the per-kernel cost the calibration fits.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..hardware import HardwareProfile
from ..ops import OpKind
from ..timing import ComputeKind, OpTime, compute_op_time
from .layer_spec import MoELayerSpec

INDEX_BYTES = 8  # int64 indices
#: Arithmetic cost of SiLU, x * sigmoid(x), in fp32 FLOP-equivalents per element (a vectorised exp and a
#: division). Set from this project's CPU measurement: torch 2.13's AVX-512 SiLU ran about 4.5e9 elements/s on
#: 2 cores whose fp32 GEMMs peaked at 196 GFLOP/s (~44 FLOP/element); the calibration's ``swiglu`` benchmark
#: reports how well this holds on another machine (fit residual family ``activation``). On GPUs the activation
#: is memory-bound and this term never binds.
SILU_FLOPS_PER_ELEMENT = 40.0


@dataclass(frozen=True)
class LayerOp:
    """One operation of a layer stage: work, traffic and kernel count (no hardware)."""

    kind: OpKind
    name: str
    flops: float
    bytes_moved: float
    num_kernels: int
    compute_kind: ComputeKind = "elementwise"
    flops_for_efficiency: float | None = None
    comm_bytes: float = 0.0
    num_collectives: int = 0
    compute_dtype: str | None = None  # dtype whose peak times the FLOPs (None: the layer's)


@dataclass(frozen=True)
class RankLoad:
    """What one EP rank routes, sends, receives and computes (rows = token-expert pairs)."""

    rank: int
    routed_rows: int
    local_counts: tuple[int, ...]
    sent_remote_rows: int = 0
    received_remote_rows: int = 0

    @property
    def received_rows(self) -> int:
        return int(sum(self.local_counts))


def rank_loads(spec: MoELayerSpec, counts_RE: np.ndarray) -> list[RankLoad]:
    """Per-rank loads from ``counts_RE[r, e]``: rows rank ``r`` routes to global expert ``e``.

    Experts are placed contiguously: rank ``r`` holds ``[r L, (r+1) L)``.
    """
    counts_RE = np.asarray(counts_RE, dtype=np.int64).reshape(spec.ep_size, spec.num_experts)
    R, L = spec.ep_size, spec.num_local_experts
    out = []
    for r in range(R):
        mine = slice(r * L, (r + 1) * L)
        local = counts_RE[:, mine].sum(axis=0)
        sent = int(counts_RE[r].sum() - counts_RE[r, mine].sum())
        recv = int(counts_RE[:, mine].sum() - counts_RE[r, mine].sum())
        out.append(RankLoad(rank=r, routed_rows=int(counts_RE[r].sum()), local_counts=tuple(int(c) for c in local),
                            sent_remote_rows=sent, received_remote_rows=recv))
    return out


def _sort_bytes(n: int) -> float:
    """A comparison sort of ``n`` int64 keys (+ indices) modelled as log2(n) passes."""
    return 2.0 * n * INDEX_BYTES * max(1.0, math.log2(max(n, 2)))


def swiglu_activation_op(kind: OpKind, name: str, num_elements: float, b: int, num_kernels: int) -> LayerOp:
    """``silu(h1) * h3`` over ``num_elements``: SiLU arithmetic at the fp32 rate, 5 element-moves of traffic."""
    return LayerOp(kind=kind, name=name, flops=SILU_FLOPS_PER_ELEMENT * num_elements, bytes_moved=5.0 * num_elements * b,
                   num_kernels=num_kernels, compute_kind="elementwise", compute_dtype="fp32")


def _ffn_ops(kind: OpKind, name: str, rows_by_group: Sequence[int], D: int, Fd: int, b: int, *,
             compute_kind: ComputeKind, kernels_per_group: bool) -> list[LayerOp]:
    """SwiGLU FFN over groups of rows: 3 GEMMs + silu * mul, one GEMM op per distinct group size.

    Per group (``kernels_per_group``, the loop): 3 weight selections, 3 GEMMs,
    silu and mul; otherwise 3 grouped GEMMs and 2 elementwise calls in all.
    """
    ops: list[LayerOp] = []
    sizes = Counter(int(n) for n in rows_by_group if n > 0)
    nonempty = sum(sizes.values())
    if not nonempty:
        return ops
    for n, num in sorted(sizes.items()):
        gemm_flops = 2.0 * n * D * Fd
        # w1 and w3: [n, D] @ [D, F]; w2: [n, F] @ [F, D]
        bytes_moved = num * 3 * (n * D * b + D * Fd * b + n * Fd * b)
        ops.append(LayerOp(kind=kind, name=f"{name}_gemm_n{n}", flops=3 * num * gemm_flops, bytes_moved=bytes_moved,
                           num_kernels=3 * num if kernels_per_group else 3 if not ops else 0,
                           compute_kind=compute_kind, flops_for_efficiency=gemm_flops))
    rows = sum(n * c for n, c in sizes.items())
    ops.append(swiglu_activation_op(kind, f"{name}_act", rows * Fd, b, 5 * nonempty if kernels_per_group else 2))
    return ops


def moe_layer_ops(spec: MoELayerSpec, load: RankLoad | Sequence[int]) -> list[LayerOp]:
    """Operations of one rank's MoE FFN, by stage (see module docstring).

    ``load`` is a :class:`RankLoad`, or for one rank just the rows per expert.
    """
    if not isinstance(load, RankLoad):
        counts = tuple(int(c) for c in load)
        load = RankLoad(rank=0, routed_rows=int(sum(counts)), local_counts=counts)
    T, D, Fd, E, K = spec.num_tokens, spec.d_model, spec.d_expert_ffn, spec.num_experts, spec.top_k
    b = spec.bytes_per_element
    A = load.routed_rows
    B = load.received_rows
    L = len(load.local_counts)
    impl = spec.implementation
    ops: list[LayerOp] = []

    # ROUTER: logits GEMM, then scores / top-k / probs in fp32
    ops.append(LayerOp(OpKind.ROUTER, "router_logits", 2.0 * T * D * E, (T * D + D * E + T * E) * b, 1, "matmul",
                       2.0 * T * D * E))
    if spec.router == "expert_choice":
        ops.append(LayerOp(OpKind.ROUTER, "router_expert_choice", 0.0, T * E * 4 * 4.0 + A * (INDEX_BYTES + 4) * 2, 16))
    else:
        extra = 8 if spec.num_groups > 1 else 0
        ops.append(LayerOp(OpKind.ROUTER, "router_topk", 0.0,
                           T * E * 4 * (3.0 + (2 if spec.num_groups > 1 else 0)) + T * K * (INDEX_BYTES + 4) * 4,
                           18 + extra))

    ep = spec.ep_size > 1
    if ep:
        x_bytes = load.sent_remote_rows * D * b
        ops.append(LayerOp(OpKind.DISPATCH, "dispatch_sort", 0.0, _sort_bytes(A) + A * INDEX_BYTES * 3, 8))
        ops.append(LayerOp(OpKind.DISPATCH, "dispatch_gather", 0.0, 2.0 * A * D * b, 2))
        ops.append(LayerOp(OpKind.DISPATCH, "dispatch_counts_all_to_all", 0.0, 0.0, 0, comm_bytes=0.0,
                           num_collectives=1))
        ops.append(LayerOp(OpKind.DISPATCH, "dispatch_all_to_all", 0.0, 0.0, 2, comm_bytes=x_bytes, num_collectives=1))
        ops.append(LayerOp(OpKind.DISPATCH, "dispatch_permute", 0.0, _sort_bytes(B) + 2.0 * B * D * b, 9))
        per_group = impl == "loop"
        ops += _ffn_ops(OpKind.EXPERTS, "experts", load.local_counts, D, Fd, b,
                        compute_kind="matmul" if per_group else "grouped_matmul", kernels_per_group=per_group)
        ops.append(LayerOp(OpKind.COMBINE, "combine_unpermute", 0.0, 2.0 * B * D * b, 2))
        ops.append(LayerOp(OpKind.COMBINE, "combine_all_to_all", 0.0, 0.0, 1, comm_bytes=x_bytes, num_collectives=1))
        ops.append(LayerOp(OpKind.COMBINE, "combine_scatter_add", 0.0, T * D * b + 6.0 * A * D * b, 5))
    elif impl == "loop":
        ops.append(LayerOp(OpKind.DISPATCH, "dispatch_select", 0.0, L * A * (INDEX_BYTES + 1.0), 3 * L))
        ops.append(LayerOp(OpKind.DISPATCH, "dispatch_gather", 0.0, 2.0 * A * D * b + A * (INDEX_BYTES + b) * 2, 3 * L))
        ops += _ffn_ops(OpKind.EXPERTS, "experts", load.local_counts, D, Fd, b, compute_kind="matmul",
                        kernels_per_group=True)
        nonempty = sum(1 for c in load.local_counts if c)
        ops.append(LayerOp(OpKind.COMBINE, "combine_scatter_add", 0.0, T * D * b + 6.0 * A * D * b, 1 + 3 * nonempty))
    elif impl == "padded":
        C = min(spec.capacity, T) if spec.router == "expert_choice" else spec.capacity
        kept = int(sum(min(c, C) for c in load.local_counts))
        ops.append(LayerOp(OpKind.DISPATCH, "dispatch_positions", 0.0,
                           _sort_bytes(A) + A * E * INDEX_BYTES * 5.0 + A * INDEX_BYTES * 8, 15))
        ops.append(LayerOp(OpKind.DISPATCH, "dispatch_fill", 0.0, E * C * D * b + 2.0 * kept * D * b, 4))
        ops += _ffn_ops(OpKind.EXPERTS, "experts", [C] * E, D, Fd, b, compute_kind="grouped_matmul",
                        kernels_per_group=False)
        ops.append(LayerOp(OpKind.COMBINE, "combine_scatter_add", 0.0, T * D * b + 8.0 * kept * D * b, 6))
    else:  # grouped
        ops.append(LayerOp(OpKind.DISPATCH, "dispatch_sort", 0.0, _sort_bytes(A) + A * INDEX_BYTES * 4, 5))
        ops.append(LayerOp(OpKind.DISPATCH, "dispatch_gather", 0.0, 2.0 * A * D * b, 1))
        ops += _ffn_ops(OpKind.EXPERTS, "experts", load.local_counts, D, Fd, b, compute_kind="grouped_matmul",
                        kernels_per_group=False)
        ops.append(LayerOp(OpKind.COMBINE, "combine_scatter_add", 0.0, T * D * b + 6.0 * A * D * b, 5))

    if spec.shared_ffn_dim:
        S = spec.shared_ffn_dim
        ops += _ffn_ops(OpKind.SHARED_EXPERTS, "shared", [T], D, S, b, compute_kind="matmul", kernels_per_group=True)
        ops.append(LayerOp(OpKind.SHARED_EXPERTS, "shared_add", 0.0, 3.0 * T * D * b, 1))
    return ops


# --------------------------------------------------------------------------- timing on a profile


@dataclass(frozen=True)
class TimedOp:
    op: LayerOp
    time_s: float
    bound: str


@dataclass(frozen=True)
class RankPrediction:
    rank: int
    time_s: float
    by_stage_s: dict[OpKind, float]
    ops: list[TimedOp] = field(repr=False)


@dataclass(frozen=True)
class LayerPrediction:
    """Predicted layer time (the slowest rank's), with its stages and every rank."""

    time_s: float
    by_stage_s: dict[OpKind, float]
    slowest_rank: int
    ranks: list[RankPrediction] = field(repr=False)


def scaled_profile(profile: HardwareProfile, compute_share: float) -> HardwareProfile:
    """``profile`` with peak FLOP/s and memory bandwidth multiplied by ``compute_share`` (ranks sharing a CPU)."""
    if compute_share == 1.0:
        return profile
    acc = profile.accelerator
    new_acc = acc.model_copy(update={
        "peak_flops_per_s": {k: v * compute_share for k, v in acc.peak_flops_per_s.items()},
        "memory_bandwidth_bytes_per_s": acc.memory_bandwidth_bytes_per_s * compute_share,
    })
    return profile.model_copy(update={"accelerator": new_acc})


def collective_time_s(profile: HardwareProfile, comm_bytes: float) -> float:
    """One all-to-all call: ``t_coll + X / (W_link * frac_link)`` (scale-up link of the profile)."""
    eff = profile.efficiency
    t = eff.collective_overhead_s
    if comm_bytes > 0:
        bw = profile.node.scale_up_bandwidth_per_accelerator_bytes_per_s
        if bw is None:
            raise ValueError(f"profile {profile.name!r} has no scale-up bandwidth for the expert-parallel all-to-all")
        t += comm_bytes / (bw * eff.scale_up_frac)
    return t


def time_ops(profile: HardwareProfile, ops: Sequence[LayerOp], dtype: str) -> list[TimedOp]:
    out = []
    for op in ops:
        if op.num_collectives:
            t = op.num_collectives * collective_time_s(profile, op.comm_bytes)
            t += op.num_kernels * profile.efficiency.kernel_overhead_s
            out.append(TimedOp(op, t, "communication"))
            continue
        ot: OpTime = compute_op_time(profile, flops=op.flops, bytes_moved=op.bytes_moved, dtype=op.compute_dtype or dtype,
                                     kind=op.compute_kind, num_kernels=op.num_kernels,
                                     flops_for_efficiency=op.flops_for_efficiency)
        out.append(TimedOp(op, ot.time_s, ot.bound))
    return out


def predict_layer(
    profile: HardwareProfile,
    spec: MoELayerSpec,
    counts_RE: np.ndarray | Sequence[int],
    *,
    compute_share: float = 1.0,
) -> LayerPrediction:
    """Predicted forward time of the layer: per rank, the sum of its timed ops; the layer, the slowest rank.

    ``counts_RE[r, e]`` are the rows rank ``r`` routes to expert ``e`` (a 1-D
    array is taken as one rank's counts).
    """
    counts = np.asarray(counts_RE, dtype=np.int64).reshape(spec.ep_size, spec.num_experts)
    prof = scaled_profile(profile, compute_share)
    ranks = []
    for load in rank_loads(spec, counts):
        timed = time_ops(prof, moe_layer_ops(spec, load), spec.dtype)
        stages: dict[OpKind, float] = {}
        for t in timed:
            stages[t.op.kind] = stages.get(t.op.kind, 0.0) + t.time_s
        ranks.append(RankPrediction(rank=load.rank, time_s=sum(stages.values()), by_stage_s=stages, ops=timed))
    slow = max(ranks, key=lambda r: r.time_s)
    return LayerPrediction(time_s=slow.time_s, by_stage_s=slow.by_stage_s, slowest_rank=slow.rank, ranks=ranks)


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class LayerMemory:
    """Predicted bytes of one rank's layer forward (no autograd)."""

    weight_bytes: float
    activation_peak_bytes: float

    @property
    def peak_bytes(self) -> float:
        return self.weight_bytes + self.activation_peak_bytes


def layer_peak_memory(spec: MoELayerSpec, load: RankLoad | Sequence[int]) -> LayerMemory:
    """Weights plus the largest set of activations alive at once during the forward.

    At the expert stage (the peak) the input ``T D``, the routing tensors and
    the dispatched rows are alive (``B D``; ``E C D`` for the padded buffer;
    EP keeps the received and the permuted copy), plus the SwiGLU temporaries:
    ``h1``, ``h3``, ``silu(h1)`` and their product, four ``rows x F`` tensors at
    the moment of the multiply, where rows is all rows for the grouped and
    padded GEMMs and one expert's rows for the loop (which also holds every
    expert's ``n_e x D`` output until the combine). Counted in the layer's
    dtype; index tensors as int64; the router's scores in fp32. Left out:
    allocator rounding and caching, library workspaces.
    """
    if not isinstance(load, RankLoad):
        counts = tuple(int(c) for c in load)
        load = RankLoad(rank=0, routed_rows=int(sum(counts)), local_counts=counts)
    T, D, Fd, E = spec.num_tokens, spec.d_model, spec.d_expert_ffn, spec.num_experts
    L, b = spec.num_local_experts, spec.bytes_per_element
    S = spec.shared_ffn_dim
    weights = (D * E + 3 * L * D * Fd + 3 * D * S) * b
    A = load.routed_rows
    rows = load.received_rows
    if spec.implementation == "padded" and spec.ep_size == 1:
        C = min(spec.capacity, T) if spec.router == "expert_choice" else spec.capacity
        rows = E * C
    routing = T * E * 4 * 2 + A * (3 * INDEX_BYTES + b)
    x_in = T * D * b
    dispatched = rows * D * b * (2 if spec.ep_size > 1 else 1)
    if spec.implementation == "loop" and spec.ep_size == 1:
        ffn = 4 * max(load.local_counts, default=0) * Fd * b + rows * D * b  # one expert's temporaries + all outputs
    else:
        ffn = 4 * rows * Fd * b
    out = T * D * b
    return LayerMemory(weight_bytes=float(weights), activation_peak_bytes=float(x_in + routing + dispatched + ffn + out))
