"""The operations of one transformer layer on one rank: the one builder every cost in moesim uses.

The step model (training, prefill, decode; scalar and vectorised), the
calibration fit and ``moesim validate`` all build a layer's operations here, so
a formula changed here changes every number moesim prints, and the validation
figures measure the model that ``estimate`` and ``plan`` run. A single-device
layer as the runner measures it is this builder called with EP = TP = 1, the
measured rows per expert and the runner's eager kernel plan.

No hardware enters here: an :class:`Op` has FLOPs, bytes (weights apart from
activations), communication bytes and group, kernel count, compute kind and,
for a GEMM, its shape. :mod:`moesim.timing` times it on a profile.

Symbols: ``T`` tokens entering the MoE layer on the rank (``n_src``), ``D``
model width, ``F`` expert width on the rank (``F / etp``), ``m`` matrices per
expert FFN (3 gated, 2 plain), ``E`` routed experts, ``K`` top-k, ``A = T K``
assignments routed by the rank, ``B`` rows the rank's experts compute (the
straggler's ``copies``), ``n_e`` rows of expert ``e``, ``b`` bytes per
activation element, ``w`` bytes per weight element, ``c`` bytes of one
dispatched token copy.

Kernel plans (:data:`KernelPlan`): the same work, issued as different kernels.

* ``fused``: what training frameworks and inference engines run (Megatron-Core
  grouped GEMM with fused permute, vLLM / SGLang fused MoE): router GEMM plus one
  fused score / top-k kernel; permute is one gather of ``A`` copies; gate and up
  projections are one GEMM of width ``2F`` (``w13``); the activation is one fused
  kernel (read ``2F``, write ``F`` per row); unpermute and the weighted sum are
  one kernel.
* ``grouped``, ``padded``, ``loop``: the reference runner's eager PyTorch
  implementations (:mod:`moesim.runner.layers`), each op one PyTorch call;
  their kernel counts are the calls the runner makes (see the per-plan notes in
  :func:`moe_ffn_ops`).

GEMMs: a group of ``n_e`` rows against a ``[K_in, N]`` weight costs
``2 n_e K_in N`` FLOPs and moves ``(n_e K_in + n_e N) b`` activation bytes and
``K_in N w`` weight bytes. Efficiency is read at the GEMM's own shape (rows per
group ``M``, inner ``K_in``; see :mod:`moesim.timing`), never at the sum of
several GEMMs. The backward of a GEMM is two GEMMs at their own shapes
(:func:`backward_ops`): dgrad ``dX[M, K_in] = dY[M, N] W^T`` (inner ``N``) and
wgrad ``dW[K_in, N] += X^T dY`` (``K_in`` rows, inner ``M``), which accumulates
into the fp32 (or bf16) main gradient: ``2 K_in N g`` bytes read and written.

Left out: dropout, bias adds fused into GEMMs, the exact fusion of one
framework beyond the two plans, and the sort of token indices in the fused
plan (engines compute positions with a histogram and a prefix sum, folded into
the permute's kernel).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from .dtypes import bytes_per_element
from .ops import OpKind

ComputeKind = Literal["matmul", "grouped_matmul", "batched_matmul", "attention", "elementwise", "comm"]
Group = Literal["", "tp", "ep", "etp", "dp", "edp", "pp"]
KernelPlan = Literal["fused", "grouped", "padded", "loop"]
KERNEL_PLANS: tuple[str, ...] = ("fused", "grouped", "padded", "loop")

INDEX_BYTES = 8  # int64 indices
#: Arithmetic cost of SiLU, x * sigmoid(x), in fp32 FLOP-equivalents per element (a vectorised exp and a
#: division; about 40 instructions per element in a vectorised implementation). On GPUs the activation is
#: memory-bound and this term never binds; on CPUs the calibration's ``swiglu`` benchmark reports how well it
#: holds (fit residual family ``activation``).
SILU_FLOPS_PER_ELEMENT = 40.0


@dataclass(frozen=True)
class GemmShape:
    """Shape of the GEMMs in one operation: ``groups`` GEMMs of ``[m, k] @ [k, n]``.

    ``m`` (rows per group) may be a numpy array (one value per candidate).
    ``call_groups`` is the number of groups in one kernel call (a grouped or
    batched kernel's whole set, of which this operation may be the part with
    ``m`` rows; 1 for a plain GEMM per group): the shape tables are read at it.
    """

    m: Any
    n: float
    k: float
    groups: Any = 1.0
    call_groups: Any = 1.0

    @property
    def flops_per_gemm(self) -> Any:
        return 2.0 * self.m * self.n * self.k


@dataclass(frozen=True)
class Op:
    """One operation on one rank (a set of kernels of one stage)."""

    kind: OpKind
    name: str = ""
    flops: Any = 0.0
    bytes_moved: Any = 0.0  #: activation (and other non-weight) bytes read + written
    weight_bytes: Any = 0.0  #: weight bytes read (streamed from device memory: see moesim.timing)
    comm_bytes: Any = 0.0
    group: Group = ""
    compute_kind: ComputeKind = "matmul"
    num_kernels: Any = 1
    gemm: GemmShape | None = None
    collective: str = ""  # all_to_all / all_reduce / reduce_scatter / all_gather / sendrecv
    num_collectives: int = 0  # separate collective calls (the runner's all-to-all: counts, then rows)
    dtype: str | None = None  # compute dtype when it differs from the layer's (attention core, SiLU: see callers)
    #: an operation whose backward is not its forward scaled (quantisation of the output gradient): its backward
    #: activation bytes and kernels (see :meth:`backward`)
    backward_bytes_moved: Any = None
    backward_kernels: Any = None
    #: work of the backward pass over the forward's when it is not the caller's dgrad + wgrad factor (the fused
    #: attention core recomputes ``Q K^T``: 5 GEMMs against the forward's 2, so 2.5)
    backward_factor: float | None = None
    #: fused attention core: mean keys attended per query (where its kernel efficiency is read, moesim.timing)
    keys_per_query: Any = None
    head_dim: float = 128.0  #: fused attention core: the head dimension its kernel runs at
    is_backward: bool = False  #: this is the backward pass of the operation (attention reads its backward curve)
    #: a forward operation that selective recomputation runs again inside the backward pass: it runs there as it
    #: is, not as its backward (moesim.step.estimate)
    recomputed: bool = False
    #: streams the operation's kernels are spread over (Transformer Engine's per-expert GEMMs: 4): their fixed
    #: costs overlap, so the operation pays ``max(1, num_kernels / streams)`` of them (moesim.timing)
    streams: int = 1

    @property
    def total_bytes(self) -> Any:
        return self.bytes_moved + self.weight_bytes

    def backward(self, factor: float) -> "Op":
        """The operation's share of the backward pass: :meth:`scaled` by ``factor`` or by the operation's own
        ``backward_factor``, or, for an operation that states its own backward (``backward_bytes_moved``), that.
        A GEMM's backward is :func:`backward_ops`."""
        if self.backward_bytes_moved is None:
            return self.scaled(self.backward_factor if self.backward_factor is not None else factor).replaced(
                is_backward=True)
        return self.replaced(is_backward=True, flops=0.0, bytes_moved=self.backward_bytes_moved, weight_bytes=0.0,
                             num_kernels=self.backward_kernels if self.backward_kernels is not None
                             else self.num_kernels)

    def replaced(self, **fields: Any) -> "Op":
        """The same operation with ``fields`` changed (dataclasses.replace without re-running __init__: a
        search's hot path)."""
        new = object.__new__(type(self))
        d = new.__dict__
        d.update(self.__dict__)
        d.update(fields)
        return new

    def scaled(self, factor: float) -> "Op":
        """The same operation with ``factor`` times the work at the same GEMM shape."""
        return self.replaced(flops=self.flops * factor, bytes_moved=self.bytes_moved * factor,
                             weight_bytes=self.weight_bytes * factor)


#: compute kinds of a GEMM whose backward is a dgrad and a wgrad GEMM (:func:`backward_ops`)
GEMM_KINDS = frozenset({"matmul", "grouped_matmul", "batched_matmul"})


def backward_ops(op: Op, grad_bytes: float) -> tuple[Op, ...]:
    """The operations of ``op``'s backward pass.

    A GEMM ``Y[M, N] = X[M, K] W[K, N]`` (``groups`` of them) becomes its two gradient GEMMs, each with the
    forward's FLOPs at its own shape:

    * dgrad ``dX = dY W^T``: ``M`` rows, inner ``N``; reads ``dY`` and ``W``, writes ``dX`` (the forward's
      activation and weight bytes);
    * wgrad ``dW = X^T dY``: ``K`` rows, inner ``M``; reads ``X`` and ``dY`` (the forward's activation bytes)
      and accumulates into the main gradient, read and written at ``grad_bytes`` per element
      (``2 K N groups grad_bytes``; ``TrainWorkload.grad_dtype``): Megatron-LM accumulates bf16 training's
      gradients in fp32 (``accumulate_allreduce_grads_in_fp32``) unless told to reduce them in bf16, and
      Transformer Engine's wgrad GEMM adds into that buffer in its epilogue (``fuse_wgrad_accumulation``). A GEMM
      of two activations (no weight) writes the second input's gradient instead, at the activation bytes.

    Every other operation is :meth:`Op.backward` with dgrad + wgrad's factor 2 (or its own backward).
    """
    g = op.gemm
    if (g is None or op.compute_kind not in GEMM_KINDS or op.backward_bytes_moved is not None
            or op.backward_factor is not None):
        return (op.backward(2.0),)
    dgrad = op.replaced(is_backward=True, gemm=GemmShape(m=g.m, n=g.k, k=g.n, groups=g.groups,
                                                         call_groups=g.call_groups))
    wgrad_weight_bytes = 2.0 * g.k * g.n * g.groups * grad_bytes if _positive(op.weight_bytes) else 0.0
    wgrad = op.replaced(is_backward=True, weight_bytes=wgrad_weight_bytes,
                        gemm=GemmShape(m=g.k, n=g.n, k=g.m, groups=g.groups, call_groups=g.call_groups))
    return dgrad, wgrad


def _positive(x: Any) -> bool:
    if isinstance(x, (int, float)):
        return x > 0
    import numpy as np

    return bool(np.any(np.asarray(x) > 0))


# --------------------------------------------------------------------------- loads


@dataclass(frozen=True)
class RowsPerExpert:
    """The rows one rank's experts compute, as ``(rows, experts with that many rows)`` pairs.

    Exact (a measured layer: one pair per distinct count) or expected (the step
    model's straggler: ``B`` copies over the ``touched`` experts that get any,
    one pair whose rows may be fractional or a numpy array).
    """

    pairs: tuple[tuple[Any, Any], ...]

    @classmethod
    def exact(cls, counts: Sequence[int]) -> "RowsPerExpert":
        sizes = Counter(int(c) for c in counts if c > 0)
        return cls(tuple(sorted(sizes.items())))

    @classmethod
    def expected(cls, copies: Any, experts_touched: Any) -> "RowsPerExpert":
        touched = _maximum(experts_touched, 1e-12)
        return cls(((copies / touched, experts_touched),))

    @property
    def rows(self) -> Any:
        return sum(r * c for r, c in self.pairs)

    @property
    def experts(self) -> Any:
        return sum(c for _, c in self.pairs)


def _maximum(x: Any, lo: float) -> Any:
    if isinstance(x, (int, float)):
        return max(float(x), lo)
    import numpy as np

    return np.maximum(x, lo)


def sort_bytes(n: float) -> float:
    """A comparison sort of ``n`` int64 keys (+ indices) modelled as ``log2(n)`` passes over them."""
    return 2.0 * n * INDEX_BYTES * max(1.0, math.log2(max(float(n), 2.0)))


# --------------------------------------------------------------------------- the expert FFN


@dataclass(frozen=True)
class MoEShape:
    """What the MoE FFN of one rank needs to know about the model and the layout."""

    d_model: int
    expert_ffn: float  #: F on this rank (expert width / etp)
    num_experts: int
    top_k: int
    num_local_experts: float
    ffn_matrices: int = 3  #: 3 gated (SwiGLU), 2 plain
    num_groups: int = 1  #: expert groups of a group-limited router (1 = off)
    expert_choice: bool = False
    shared_ffn: float = 0.0  #: total shared-expert width on this rank (num_shared * width / tp)
    ep_size: int = 1


#: Compute streams Transformer Engine spreads a grouped linear's per-expert GEMMs over (``multi_stream_cublas_gemm``,
#: ``num_compute_streams = 4`` in transformer_engine/common/util/multi_stream.cpp)
TE_COMPUTE_STREAMS = 4


def ffn_gemm_ops(kind: OpKind, name: str, rows: RowsPerExpert, D: float, F: float, m: int, *, plan: KernelPlan,
                 act_bytes: float, weight_bytes_per_element: float, grouped: bool, batched: bool = False,
                 per_expert: bool = False) -> list[Op]:
    """The GEMMs and activation of an expert (or dense) FFN over groups of rows.

    Gated (``m = 3``): ``up`` = gate and up projections (``K_in = D``, width
    ``2F``; two GEMMs of width ``F`` in the eager plans), ``down`` (``K_in = F``);
    plain (``m = 2``): one up GEMM of width ``F``. Kernels: the fused plan issues
    the up and down GEMMs and the activation as one kernel each for all groups
    (``grouped``) or one set per group; the eager plans one call per GEMM
    (per group for the loop) and 2 (gated) or 1 activation calls.
    Activation traffic per row: fused ``(2F + F) b`` gated / ``2 F b`` plain;
    eager gated ``5 F b`` (``silu`` writes a temporary the multiply reads).

    ``per_expert`` (the fused plan's grouped GEMMs as Transformer Engine's grouped linear runs them in training,
    Megatron-Core's default): each GEMM call is one cuBLAS GEMM per group, round-robin over
    :data:`TE_COMPUTE_STREAMS` streams (``multi_stream_cublas_gemm`` in transformer_engine/common/gemm/
    cublaslt_gemm.cu; its single-kernel grouped paths are opt-in: ``NVTE_USE_CUTLASS_GROUPED_GEMM``,
    Megatron-Core's ``moe_use_grouped_tensor``). Each is a plain GEMM at its group's shape (``matmul``, one
    group per call), a kernel the host issues, and the call pays ``max(1, groups / 4)`` kernels' fixed cost.
    """
    ops: list[Op] = []
    gated = m == 3
    up_width = 2.0 * F if gated else F
    fused = plan == "fused"
    up_calls = 1 if (fused or not gated) else 2
    per_expert = per_expert and fused and grouped and not batched
    ck: ComputeKind = ("batched_matmul" if batched else "grouped_matmul") if grouped and not per_expert else "matmul"
    total_rows = rows.rows
    num_groups_total = rows.experts
    for r, count in rows.pairs:
        first = not ops
        for part, k_in, n_out, calls in (("up", D, up_width, up_calls), ("down", F, D, 1)):
            # grouped: one call per GEMM for all groups; otherwise (and per expert) one per group
            kernels = (calls if first else 0) if grouped and not per_expert else calls * count
            ops.append(Op(
                kind, f"{name}_{part}", flops=2.0 * r * k_in * n_out * count,
                bytes_moved=(r * k_in + r * n_out) * act_bytes * count,
                weight_bytes=k_in * n_out * weight_bytes_per_element * count,
                compute_kind=ck, num_kernels=kernels, streams=TE_COMPUTE_STREAMS if per_expert else 1,
                gemm=GemmShape(m=r, n=n_out / calls, k=k_in, groups=count * calls,
                               call_groups=num_groups_total if grouped and not per_expert else 1.0)))
    if fused:
        act_kernels = 1 if grouped else num_groups_total
    elif grouped:
        act_kernels = 2 if gated else 1
    else:  # eager per group: the weight views of the group, silu and the multiply
        act_kernels = 5 * num_groups_total if gated else 3 * num_groups_total
    ops.append(activation_op(kind, f"{name}_act", total_rows * F, act_bytes, gated=gated, fused=fused,
                             num_kernels=act_kernels))
    return ops


def activation_op(kind: OpKind, name: str, num_elements: Any, act_bytes: float, *, gated: bool = True,
                  fused: bool = False, num_kernels: Any = 1) -> Op:
    """The FFN activation over ``num_elements`` outputs: SiLU arithmetic at the fp32 rate plus its traffic.

    Gated: fused reads ``h1, h3`` and writes the product (3 moves per element); eager
    ``silu(h1)`` writes a temporary the multiply reads (5 moves). Plain: read and write (2).
    """
    moves = (3.0 if fused else 5.0) if gated else 2.0
    return Op(kind, name, flops=SILU_FLOPS_PER_ELEMENT * num_elements, bytes_moved=moves * num_elements * act_bytes,
              compute_kind="elementwise", num_kernels=num_kernels, dtype="fp32")


def moe_ffn_ops(s: MoEShape, *, tokens: Any, rows: RowsPerExpert, plan: KernelPlan, act_bytes: float,
                weight_bytes_per_element: float, expert_weight_bytes_per_element: float | None = None,
                bytes_per_copy: float | None = None, sent_rows: Any = None, capacity: int | None = None,
                shared_tokens: Any = None, routed_rows: Any = None, gather_in_gemm: bool = False,
                per_expert_gemms: bool = False) -> list[Op]:
    """Router, permute, dispatch, experts, combine, unpermute and shared experts of one rank's MoE FFN.

    ``tokens`` (``T``) enter the layer on the rank, ``rows`` are what its experts
    compute; ``bytes_per_copy`` (``c``, default ``D b``) is one dispatched copy;
    ``sent_rows`` copies leave the rank in the all-to-all (default all ``A``:
    the step model's comm model prices the real traffic matrix, the runner's
    single link the rows that leave). ``capacity`` (``C``) is the padded plan's
    slots per expert; ``routed_rows`` the assignments ``A`` when they are not
    ``T K`` (expert choice).

    Per plan (the eager ones follow the runner's calls one to one):

    * router: logits GEMM ``2 T D E``; scores / top-k / probs over ``T E`` fp32
      (3 passes, 5 with group-limited routing) plus ``T K`` indices and weights
      (4 passes); fused: 1 kernel; eager: 18 calls (+8 group-limited).
    * permute (dispatch, local): fused ``2 A c``, 1 kernel; with ``gather_in_gemm`` (an inference engine's
      fused MoE at EP 1: vLLM's and SGLang's Triton kernel loads each copy's token row through the sorted
      token ids inside the up GEMM) no gather pass, only the alignment kernel that sorts the ``A`` ids
      (int32 in and out, ``8 A`` bytes); grouped: sort of ``A``
      keys + gather ``2 A D b`` (5 + 1 calls); loop: ``E`` compare/nonzero passes
      over ``A`` + gather (``3 E`` + ``3 E`` calls); padded: GShard positions (a
      one-hot cumsum over ``A E``) and the ``E C D`` buffer fill; EP adds the
      received rows' permute (sort of ``B`` + ``2 B D b``).
    * all-to-all: dispatch ``sent_rows c`` and combine ``sent_rows D b`` over the
      EP group (the eager EP runner also exchanges the per-expert counts).
    * experts: :func:`ffn_gemm_ops` (padded: ``E C`` rows whatever the load).
    * unpermute + weighted sum (combine, local): ``T D b + 6 A D b`` (fused:
      ``(2 A + T) D b``, 1 kernel).
    * shared experts: a dense FFN of width ``S`` over the ``shared_tokens``
      (default ``T``) plus their add.
    """
    D, F, E, K, m = s.d_model, s.expert_ffn, s.num_experts, s.top_k, s.ffn_matrices
    T = tokens
    b = act_bytes
    ew = expert_weight_bytes_per_element if expert_weight_bytes_per_element is not None else weight_bytes_per_element
    c = bytes_per_copy if bytes_per_copy is not None else D * b
    A = T * K if routed_rows is None else routed_rows
    B = rows.rows
    ep = s.ep_size > 1
    fused = plan == "fused"
    C = capacity or 0  # slots per expert of the padded plan
    kept = _kept(rows, C) if plan == "padded" else 0.0  # rows that fit their expert's slots
    grouped_limit = s.num_groups > 1
    ops: list[Op] = [
        Op(OpKind.ROUTER, "router_logits", flops=2.0 * T * D * E, bytes_moved=(T * D * b + T * E * b),
           weight_bytes=D * E * weight_bytes_per_element, compute_kind="matmul", num_kernels=1,
           gemm=GemmShape(m=T, n=E, k=D)),
    ]
    if s.expert_choice:
        ops.append(Op(OpKind.ROUTER, "router_expert_choice", bytes_moved=T * E * 4 * 4.0 + A * (INDEX_BYTES + 4) * 2,
                      compute_kind="elementwise", num_kernels=1 if fused else 16))
    else:
        ops.append(Op(OpKind.ROUTER, "router_topk",
                      bytes_moved=T * E * 4 * (3.0 + (2 if grouped_limit else 0)) + T * K * (INDEX_BYTES + 4) * 4,
                      compute_kind="elementwise", num_kernels=1 if fused else 18 + (8 if grouped_limit else 0)))

    sent = A if sent_rows is None else sent_rows
    if fused and gather_in_gemm and not ep:
        ops.append(Op(OpKind.DISPATCH, "permute_align", bytes_moved=8.0 * A, compute_kind="elementwise",
                      num_kernels=1))
    elif fused:
        ops.append(Op(OpKind.DISPATCH, "permute", bytes_moved=2.0 * c * A, compute_kind="elementwise", num_kernels=1))
    elif ep:
        ops.append(Op(OpKind.DISPATCH, "permute_sort", bytes_moved=sort_bytes(A) + A * INDEX_BYTES * 3,
                      compute_kind="elementwise", num_kernels=8))
        ops.append(Op(OpKind.DISPATCH, "permute", bytes_moved=2.0 * A * D * b, compute_kind="elementwise", num_kernels=2))
    elif plan == "loop":
        ops.append(Op(OpKind.DISPATCH, "permute_select", bytes_moved=E * A * (INDEX_BYTES + 1.0),
                      compute_kind="elementwise", num_kernels=3 * E))
        ops.append(Op(OpKind.DISPATCH, "permute", bytes_moved=2.0 * A * D * b + A * (INDEX_BYTES + b) * 2,
                      compute_kind="elementwise", num_kernels=3 * E))
    elif plan == "padded":
        ops.append(Op(OpKind.DISPATCH, "permute_positions",
                      bytes_moved=sort_bytes(A) + A * E * INDEX_BYTES * 5.0 + A * INDEX_BYTES * 8,
                      compute_kind="elementwise", num_kernels=15))
        ops.append(Op(OpKind.DISPATCH, "permute", bytes_moved=E * C * D * b + 2.0 * kept * D * b,
                      compute_kind="elementwise", num_kernels=4))
    else:  # grouped
        ops.append(Op(OpKind.DISPATCH, "permute_sort", bytes_moved=sort_bytes(A) + A * INDEX_BYTES * 4,
                      compute_kind="elementwise", num_kernels=5))
        ops.append(Op(OpKind.DISPATCH, "permute", bytes_moved=2.0 * A * D * b, compute_kind="elementwise", num_kernels=1))
    if ep:
        eager_counts = 0 if fused else 1
        ops.append(Op(OpKind.DISPATCH, "dispatch_all_to_all", comm_bytes=c * sent, group="ep", compute_kind="comm",
                      collective="all_to_all", num_kernels=0 if fused else 2, num_collectives=1 + eager_counts))
        if not fused:
            ops.append(Op(OpKind.DISPATCH, "permute_received", bytes_moved=sort_bytes(B) + 2.0 * B * D * b,
                          compute_kind="elementwise", num_kernels=9))

    batched = False
    if plan == "padded" and not ep:
        expert_rows = RowsPerExpert(((float(C), float(E)),)) if C else RowsPerExpert(())
        grouped = batched = True  # torch.bmm over the [E, C, D] buffer
    else:
        expert_rows = rows
        grouped = plan != "loop"
    ops += ffn_gemm_ops(OpKind.EXPERTS, "experts", expert_rows, D, F, m, plan=plan, act_bytes=b,
                        weight_bytes_per_element=ew, grouped=grouped, batched=batched, per_expert=per_expert_gemms)

    if ep:
        if not fused:
            ops.append(Op(OpKind.COMBINE, "unpermute_received", bytes_moved=2.0 * B * D * b, compute_kind="elementwise",
                          num_kernels=2))
        ops.append(Op(OpKind.COMBINE, "combine_all_to_all", comm_bytes=D * b * sent, group="ep", compute_kind="comm",
                      collective="all_to_all", num_kernels=0 if fused else 1, num_collectives=1))
    if fused:
        ops.append(Op(OpKind.COMBINE, "unpermute", bytes_moved=b * D * (2 * A + T), compute_kind="elementwise",
                      num_kernels=1))
    elif plan == "padded" and not ep:
        ops.append(Op(OpKind.COMBINE, "unpermute", bytes_moved=T * D * b + 8.0 * kept * D * b,
                      compute_kind="elementwise", num_kernels=6))
    elif plan == "loop" and not ep:
        ops.append(Op(OpKind.COMBINE, "unpermute", bytes_moved=T * D * b + 6.0 * A * D * b, compute_kind="elementwise",
                      num_kernels=1 + 3 * rows.experts))
    else:
        ops.append(Op(OpKind.COMBINE, "unpermute", bytes_moved=T * D * b + 6.0 * A * D * b, compute_kind="elementwise",
                      num_kernels=5))

    if s.shared_ffn:
        n_sh = T if shared_tokens is None else shared_tokens
        ops += ffn_gemm_ops(OpKind.SHARED_EXPERTS, "shared", RowsPerExpert(((n_sh, 1.0),)), D, s.shared_ffn, m,
                            plan=plan, act_bytes=b, weight_bytes_per_element=weight_bytes_per_element, grouped=False)
        if not fused:
            ops.append(Op(OpKind.SHARED_EXPERTS, "shared_add", bytes_moved=3.0 * n_sh * D * b,
                          compute_kind="elementwise", num_kernels=1))
    return ops


# --------------------------------------------------------------------------- low-precision GEMMs

#: Bytes of block scales per quantised element: one 8-bit scale per 32 elements (MXFP8, NVFP4 per 16 is
#: close) or one fp32 scale per 128 (DeepSeek-V3's 1 x 128 tiles) are both 1/32 byte per element.
SCALE_BYTES_PER_ELEMENT = 1.0 / 32.0
#: GEMM inputs that are the output of a norm: the quantisation is fused into the norm kernel (Transformer
#: Engine's LayerNormLinear / LayerNormMLP), so the forward pays no separate pass for them. MLA's up-projections
#: read the latents' RMSNorm outputs (timed on their own only where selective recomputation runs them again).
NORM_FED_GEMMS = frozenset({"dense_ffn_up", "shared_up", "router_logits", "attention_q_up", "attention_kv_up"})
#: GEMMs that low-precision recipes keep in BF16: the router (Megatron-Core's router is not a Transformer
#: Engine module; DeepSeek-V3 keeps "the gating module" in higher precision, section 3.3.1) and the output
#: layer (the same for Megatron's output_layer; inference engines leave lm_head unquantised).
BF16_GEMMS = frozenset({"router_logits", "lm_head"})


def low_precision_ops(ops: Sequence[Op], dtype: str, *, training: bool, element_bytes: float,
                      act_bytes: float = 2.0, dispatched_quantised: bool = False,
                      expert_dtype: str | None = None, fp8_scaling: str = "block") -> list[Op]:
    """``ops`` as an FP8 / FP4 recipe runs them: the router and LM head in BF16, and a quantisation pass
    before every low-precision GEMM whose input is not already quantised.

    For a GEMM of ``R`` rows (all groups), inner ``K`` and width ``N``, with ``q = element_bytes + 1/32``
    (element and scale bytes):

    * forward: the input is read in BF16 and written quantised, ``R K (a + o q)`` bytes, with ``o = 2`` in
      training (row-wise for the forward GEMM and column-wise for the weight gradient, as Hopper's FP8 GEMMs
      and MXFP8's per-direction block scales need) and ``o = 1`` in inference; nothing for norm-fed inputs
      (:data:`NORM_FED_GEMMS`; the attention projections pay one pass, their output projection's input,
      the QKV input being norm-fed), and for the experts' up projection ``T D (a + o q)`` over the ``T`` tokens
      before the dispatch when tokens are dispatched quantised (DeepSeek-V3 section 3.3.3);
    * backward: the output gradient is quantised both ways, ``R N (a + 2 q)``.

    ``R`` is rows per group times groups, as the ``fused`` plan's GEMMs state them. One kernel per pass.

    ``fp8_scaling`` (:attr:`moesim.scenario.TrainWorkload.fp8_scaling`; serving's static and dynamic scales come
    as ``"delayed"`` and ``"current"``, :func:`moesim.step.estimate.serve_pass_dtypes`) for FP8 GEMMs:
    ``"block"`` as above;
    ``"delayed"`` and ``"current"`` keep one scale per tensor, so ``q = element_bytes``. ``"current"`` computes the
    scale from the tensor being cast (Transformer Engine's ``Float8CurrentScalingQuantizer``: an amax kernel, a
    scale kernel, then the cast): each pass reads its input once more, ``+ R K a`` forward and ``+ R N a`` backward,
    in two more kernels; a norm-fed input is written by the norm in BF16 with its amax and then cast,
    ``R K (a + o q)`` in two kernels. Left out: the amax all-reduce over the TP group of column-parallel inputs
    under sequence parallelism, and the per-step cast of the weights (once per step, not per micro-batch).

    ``expert_dtype`` (when set and not ``dtype``): the routed experts' GEMMs run in it (an FP4 MoE checkpoint
    with FP8 elsewhere), with their quantisation passes at its element bytes.
    """
    if expert_dtype == dtype:
        expert_dtype = None
    if dtype not in ("fp8", "fp4") and expert_dtype is None:
        return list(ops)
    low = dtype in ("fp8", "fp4")
    outs = 2.0 if training else 1.0
    tokens = next((op.gemm.m for op in ops if op.name == "router_logits" and op.gemm is not None), None)
    out: list[Op] = []
    for op in ops:
        base = op.name
        if base in BF16_GEMMS and low:
            out.append(replace(op, dtype="bf16"))
            continue
        g = op.gemm
        gemm = g is not None and op.compute_kind in ("matmul", "grouped_matmul", "batched_matmul")
        d = dtype
        if expert_dtype is not None and gemm and op.kind == OpKind.EXPERTS and op.dtype is None:
            d = expert_dtype
            op = replace(op, dtype=d)
        elif op.dtype is not None:
            gemm = False
        out.append(op)
        if not gemm or d not in ("fp8", "fp4"):
            continue
        per_tensor = d == "fp8" and fp8_scaling in ("delayed", "current")
        current = d == "fp8" and fp8_scaling == "current"
        q = (element_bytes if d == dtype else bytes_per_element(d)) + (0.0 if per_tensor else SCALE_BYTES_PER_ELEMENT)
        amax = act_bytes if current else 0.0  # the amax kernel's read of the input, before the cast reads it again
        extra = 2 if current else 0  # the amax and scale kernels
        rows = g.m * g.groups
        if base in NORM_FED_GEMMS:
            fwd = rows * g.k * (act_bytes + outs * q) if current else 0.0
            kernels = 2 if current else 0
        elif base == "experts_up" and dispatched_quantised and tokens is not None:
            fwd, kernels = tokens * g.k * (amax + act_bytes + outs * q), 1 + extra
        else:
            fwd, kernels = rows * g.k * (amax + act_bytes + outs * q), 1 + extra
        bwd = rows * g.n * (amax + act_bytes + 2.0 * q)
        # GEMMs issued one per group (Transformer Engine's grouped linear): the input of each is quantised on its
        # own too (split_quantize, one quantiser per group: its kernels per group, on the current stream)
        per = g.groups if op.streams > 1 else 1  # the fused plan: one call per GEMM, so a group per GEMM
        before_dispatch = base == "experts_up" and dispatched_quantised and tokens is not None  # one pass, all tokens
        out.append(Op(op.kind, f"{base}_quantize", bytes_moved=fwd, compute_kind="elementwise",
                      num_kernels=kernels * (1 if before_dispatch else per), backward_bytes_moved=bwd,
                      backward_kernels=(1 + extra) * per))
    return out


def _kept(rows: RowsPerExpert, capacity: int) -> Any:
    """Rows kept by a capacity of ``capacity`` slots per expert (the rest are dropped)."""
    if all(isinstance(r, (int, float)) for r, _ in rows.pairs):
        return sum(min(r, capacity) * c for r, c in rows.pairs)
    import numpy as np

    return sum(np.minimum(r, capacity) * c for r, c in rows.pairs)


def num_kernels(ops: Sequence[Op]) -> Any:
    """Kernels the host issues for ``ops`` (collectives count their calls)."""
    return sum(op.num_kernels + op.num_collectives for op in ops)
