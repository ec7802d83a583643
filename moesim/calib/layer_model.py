"""Predicted time and peak memory of one MoE FFN layer as the reference runner executes it (pure; no torch).

There is no layer formula here: :func:`layer_ops` calls the shared builder
:func:`moesim.layer.moe_ffn_ops` (the one the step model runs) with EP and TP
of the case, the measured rows per expert and the runner's implementation as
the kernel plan, and :func:`predict_layer` times each operation with the one
roofline of :mod:`moesim.timing`. What ``moesim validate`` checks is therefore
the model that ``moesim estimate`` and ``moesim plan`` run, with the runner's
eager kernels instead of a fused engine's.

Symbols: ``T`` tokens per rank, ``D`` model width, ``E`` experts, ``K``
top-k, ``n_e`` rows of expert ``e`` on the rank.

Expert parallelism (``ep_size = R``): the runner exchanges per-expert counts,
then the rows (``X`` bytes leave the rank), and the reverse in the combine;
each call costs ``t_coll`` and the bytes cross the host's one link at the
fitted ``W_link * frac_link`` (the calibrated local link is the whole
topology of a single host). The layer takes as long as its slowest rank. When
``R`` CPU ranks share one machine each gets ``compute_share`` of its FLOP/s and
bandwidth; when they time-share fewer CPUs than they have threads, the
layer is bound by their total work over the ranks that can run at once.

Left out: overlap of stages (the runner is sequential), the router's auxiliary
losses, activation checkpointing, backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..hardware import HardwareProfile
from ..layer import INDEX_BYTES, MoEShape, Op, RowsPerExpert, moe_ffn_ops, num_kernels
from ..ops import OpKind
from ..timing import host_bound_s, time_op
from .layer_spec import MoELayerSpec

__all__ = ["INDEX_BYTES", "LayerMemory", "LayerPrediction", "RankLoad", "RankPrediction", "TimedOp",
           "collective_time_s", "layer_ops", "layer_peak_memory", "predict_layer", "rank_loads", "scaled_profile"]


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


def layer_shape(spec: MoELayerSpec) -> MoEShape:
    """The case's layer for the shared builder (SwiGLU experts, the case's router and EP size)."""
    return MoEShape(d_model=spec.d_model, expert_ffn=spec.d_expert_ffn, num_experts=spec.num_experts,
                    top_k=spec.top_k, num_local_experts=spec.num_local_experts, ffn_matrices=3,
                    num_groups=spec.num_groups, expert_choice=spec.router == "expert_choice",
                    shared_ffn=float(spec.shared_ffn_dim), ep_size=spec.ep_size)


def layer_ops(spec: MoELayerSpec, load: RankLoad | Sequence[int]) -> list[Op]:
    """Operations of one rank's MoE FFN as the runner issues them (the shared builder, eager plan).

    ``load`` is a :class:`RankLoad`, or for one rank just the rows per expert.
    """
    if not isinstance(load, RankLoad):
        counts = tuple(int(c) for c in load)
        load = RankLoad(rank=0, routed_rows=int(sum(counts)), local_counts=counts)
    b = spec.bytes_per_element
    capacity = None
    if spec.implementation == "padded":
        capacity = min(spec.capacity, spec.num_tokens) if spec.router == "expert_choice" else spec.capacity
    tokens = spec.num_tokens
    # expert choice routes E * C assignments whatever K is: the builder's A = T K becomes the routed rows
    return moe_ffn_ops(layer_shape(spec), tokens=tokens, rows=RowsPerExpert.exact(load.local_counts),
                       plan=spec.implementation, act_bytes=b, weight_bytes_per_element=b,
                       sent_rows=load.sent_remote_rows, capacity=capacity, routed_rows=load.routed_rows)


# --------------------------------------------------------------------------- timing on a profile


@dataclass(frozen=True)
class TimedOp:
    op: Op
    time_s: float
    bound: str


@dataclass(frozen=True)
class RankPrediction:
    rank: int
    time_s: float
    by_stage_s: dict[OpKind, float]
    ops: list[TimedOp] = field(repr=False)

    @property
    def by_op_s(self) -> dict[str, float]:
        """Seconds per named operation (router_topk, permute, experts_up, experts_act, ...)."""
        out: dict[str, float] = {}
        for t in self.ops:
            out[t.op.name] = out.get(t.op.name, 0.0) + t.time_s
        return out


@dataclass(frozen=True)
class LayerPrediction:
    """Predicted layer time (the slowest rank's), with its stages and every rank."""

    time_s: float
    by_stage_s: dict[OpKind, float]
    slowest_rank: int
    ranks: list[RankPrediction] = field(repr=False)

    @property
    def by_op_s(self) -> dict[str, float]:
        return self.ranks[self.slowest_rank].by_op_s


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


def collective_time_s(profile: HardwareProfile, comm_bytes: float, num_calls: int = 1) -> float:
    """All-to-all calls over the host's link: ``calls * t_coll + X / (W_link * frac_link)``."""
    eff = profile.efficiency
    t = num_calls * eff.collective_overhead_s
    if comm_bytes > 0:
        bw = profile.node.scale_up_bandwidth_per_accelerator_bytes_per_s
        if bw is None:
            raise ValueError(f"profile {profile.name!r} has no scale-up bandwidth for the expert-parallel all-to-all")
        t += comm_bytes / (bw * eff.scale_up_frac)
    return t


def time_ops(profile: HardwareProfile, ops: Sequence[Op], dtype: str) -> list[TimedOp]:
    out = []
    for op in ops:
        if op.compute_kind == "comm":
            t = collective_time_s(profile, float(op.comm_bytes), op.num_collectives)
            t += op.num_kernels * profile.efficiency.kernel_overhead_s
            out.append(TimedOp(op, t, "communication"))
            continue
        ot = time_op(profile, op, dtype)
        out.append(TimedOp(op, ot.time_s, ot.bound))
    return out


def predict_layer(
    profile: HardwareProfile,
    spec: MoELayerSpec,
    counts_RE: np.ndarray | Sequence[int],
    *,
    compute_share: float = 1.0,
    concurrent_ranks: float | None = None,
) -> LayerPrediction:
    """Predicted forward time of the layer: per rank, the sum of its timed ops (bound by the host's issue
    time on an asynchronous device); the layer, the slowest rank.

    ``counts_RE[r, e]`` are the rows rank ``r`` routes to expert ``e`` (a 1-D
    array is taken as one rank's counts). ``concurrent_ranks`` (CPU ranks
    time-sharing fewer CPUs than they have threads): only that many ranks run
    at once and an idle rank's CPU goes to the others, so the layer takes
    ``max(slowest rank, sum of the ranks' times / concurrent_ranks)``.
    """
    counts = np.asarray(counts_RE, dtype=np.int64).reshape(spec.ep_size, spec.num_experts)
    prof = scaled_profile(profile, compute_share)
    ranks = []
    for load in rank_loads(spec, counts):
        ops = layer_ops(spec, load)
        timed = time_ops(prof, ops, spec.dtype)
        stages: dict[OpKind, float] = {}
        for t in timed:
            stages[t.op.kind] = stages.get(t.op.kind, 0.0) + t.time_s
        device = sum(stages.values())
        total = float(host_bound_s(prof, device, num_kernels(ops), graph=False))
        ranks.append(RankPrediction(rank=load.rank, time_s=total, by_stage_s=stages, ops=timed))
    slow = max(ranks, key=lambda r: r.time_s)
    total = slow.time_s
    if concurrent_ranks is not None and concurrent_ranks < len(ranks):
        total = max(total, sum(r.time_s for r in ranks) / concurrent_ranks)
    scale = total / slow.time_s if slow.time_s > 0 else 1.0
    stages = {k: v * scale for k, v in slow.by_stage_s.items()}
    return LayerPrediction(time_s=total, by_stage_s=stages, slowest_rank=slow.rank, ranks=ranks)


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
