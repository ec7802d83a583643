"""Operations of one transformer layer on one GPU: FLOPs, bytes moved, communication (no hardware).

Symbols: ``n`` tokens per data-parallel rank in this pass, ``h`` hidden size,
``F`` expert width, ``m`` matrices per FFN (3 gated, 2 plain), ``E`` routed
experts, ``k`` top-k, ``w`` bytes per weight element, ``a`` bytes per
activation element (2, bf16).

Forward, per GPU:

* attention: ``2 * P_attn / tp * n`` projection FLOPs (in the compute dtype)
  plus ``2 * H * (d_qk + d_v) * n * L / tp`` core FLOPs for ``L`` keys attended
  (always bf16: FP8 recipes keep the attention core in bf16);
  bytes: weights ``P_attn * w / tp``, activations in and out, and in decode the
  KV cache read ``b * C * kv_layer_bytes / kv_shard``.
* router: ``2 * h * E * n_src`` with ``n_src`` tokens on the EP rank, plus
  the score / top-k kernels over ``4 * E`` fp32 bytes per token.
* elementwise kernels are separate memory-bound operations that add to the
  GEMMs' time: norm + residual + rotary (``a * n * (5h + 4 q)``), permute before
  dispatch and unpermute + weighted sum after combine (``2 * b_copy`` per copy),
  the gated activation between the expert GEMMs (``a * m * F`` per copy).
* dispatch / combine: all-to-all over the EP group, ``bytes_per_copy`` per
  token copy (see :mod:`moesim.load.traffic`); combine returns bf16.
* experts: ``2 * m * h * (F / etp) * c`` for the ``c`` token copies that the
  most loaded EP rank computes (padded slots with a capacity factor); the
  grouped GEMM runs at the efficiency of one expert's share
  ``flops / local_experts``; bytes: weights of the experts actually touched
  plus activations.
* shared experts and dense FFN: ``2 * P / tp * n``.
* LM head: ``2 * V * h / tp * n`` (vocabulary-parallel).

Left out: dropout, bias adds fused into GEMMs, the exact kernel fusion of a
given framework (fewer elementwise passes than counted here), and the sort of
token indices.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ..dtypes import bytes_per_element
from ..flops import attention_score_flops
from ..memory import kv_elements_per_token_per_layer
from ..model import MLAAttention, ModelSpec
from ..ops import OpKind
from ..params import attention_params, expert_params, ffn_params, shared_expert_params
from .parallel import Parallel

ACT_BYTES = 2.0  # bf16 activations

Group = Literal["", "tp", "ep", "etp", "dp", "edp", "pp"]
ComputeKind = Literal["matmul", "grouped_matmul", "elementwise", "comm"]


@dataclass(frozen=True)
class Op:
    """One operation on one GPU."""

    kind: OpKind
    flops: float = 0.0
    bytes_moved: float = 0.0
    comm_bytes: float = 0.0
    group: Group = ""
    compute_kind: ComputeKind = "matmul"
    num_kernels: int = 1
    flops_for_efficiency: float | None = None
    collective: str = ""  # all_to_all / all_reduce / reduce_scatter / all_gather / sendrecv
    dtype: str | None = None  # compute dtype when it differs from the workload's (attention core: bf16)

    def scaled(self, factor: float) -> "Op":
        """The same operation with ``factor`` times the work (backward passes)."""
        return replace(
            self,
            flops=self.flops * factor,
            bytes_moved=self.bytes_moved * factor,
            flops_for_efficiency=None if self.flops_for_efficiency is None else self.flops_for_efficiency * factor,
        )


@dataclass(frozen=True)
class ExpertRankLoad:
    """What the expert-load model says about the EP rank that sets the pace.

    ``copies`` token copies computed by the rank (max over ranks; padded slots
    with a capacity factor), ``experts_touched`` distinct local experts that got
    at least one token (weights actually read), ``local_experts`` experts held.
    """

    copies: float
    experts_touched: float
    local_experts: float
    noise_ratio: float = 1.0  #: realised max-rank load over the hottest rank's expected load (sampling noise)


def attention_ops(model: ModelSpec, par: Parallel, n: float, keys: float, *, decode_batch: float = 0.0,
                  context: float = 0.0, weight_bytes: float = 2.0, kv_bytes: float = 2.0) -> list[Op]:
    """Attention block of one layer for ``n`` tokens attending to ``keys`` keys on average.

    In decode (``decode_batch`` sequences at ``context`` tokens) the KV cache is read once per step.
    """
    h = model.hidden_size
    p_attn = attention_params(model) / par.tp
    proj_flops = 2.0 * p_attn * n
    score_flops = attention_score_flops(model, keys) / model.num_layers * n / par.tp
    mla = isinstance(model.attention, MLAAttention)
    kv_layer = kv_elements_per_token_per_layer(model) * kv_bytes / par.kv_shard(model.attention.num_kv_heads, mla)
    kv_read = decode_batch * context * kv_layer
    kv_write = n * kv_layer
    q_dim = model.attention.num_heads * model.attention.qk_head_dim / par.tp
    ops = [
        Op(OpKind.ATTENTION, flops=proj_flops, bytes_moved=p_attn * weight_bytes, num_kernels=3),
        # the attention core (QK^T, softmax, AV) runs in bf16 even when the GEMMs use fp8
        Op(OpKind.ATTENTION, flops=score_flops, bytes_moved=kv_read + kv_write, num_kernels=1, dtype="bf16"),
        # norm, residual add and rotary embedding: separate memory-bound kernels
        Op(OpKind.ATTENTION, bytes_moved=ACT_BYTES * n * (5 * h + 4 * q_dim), compute_kind="elementwise", num_kernels=3),
    ]
    if par.tp > 1:
        ops.append(Op(OpKind.TP_COMM, comm_bytes=ACT_BYTES * n * h, group="tp", compute_kind="comm",
                      collective="all_reduce"))
    return ops


def moe_ops(model: ModelSpec, par: Parallel, n: float, load: ExpertRankLoad, *, bytes_per_copy: float,
            weight_bytes: float = 2.0, expert_weight_bytes: float | None = None) -> list[Op]:
    """Router, dispatch, experts, combine and shared experts of one MoE layer (``n`` tokens per DP rank)."""
    moe = model.moe
    assert moe is not None
    h = model.hidden_size
    ew = expert_weight_bytes if expert_weight_bytes is not None else weight_bytes
    n_src = par.moe_tokens(n)
    F_local = moe.expert_ffn_dim / par.etp
    m = model.ffn_matrices
    expert_flops = 2.0 * m * h * F_local * load.copies
    per_expert = expert_flops / max(load.local_experts, 1.0)
    expert_w = expert_params(model) / par.etp * ew
    copies_in = n_src * moe.top_k
    ops = [
        Op(OpKind.ROUTER, flops=2.0 * h * moe.num_experts * n_src,
           bytes_moved=h * moe.num_experts * weight_bytes + ACT_BYTES * n_src * h, num_kernels=1),
        # scores, top-k, normalisation (fp32 logits read and written)
        Op(OpKind.ROUTER, bytes_moved=4.0 * 3 * n_src * moe.num_experts, compute_kind="elementwise", num_kernels=2),
        # permute: gather each token copy into expert order before sending
        Op(OpKind.DISPATCH, bytes_moved=2.0 * bytes_per_copy * copies_in, compute_kind="elementwise", num_kernels=2),
        Op(OpKind.DISPATCH, comm_bytes=bytes_per_copy * copies_in, group="ep", compute_kind="comm",
           collective="all_to_all"),
        Op(OpKind.EXPERTS, flops=expert_flops, bytes_moved=load.experts_touched * expert_w,
           compute_kind="grouped_matmul", num_kernels=2, flops_for_efficiency=per_expert),
        # activation function (gated: read 2F, write F per copy) between the two grouped GEMMs
        Op(OpKind.EXPERTS, bytes_moved=ACT_BYTES * load.copies * (m * F_local), compute_kind="elementwise"),
        Op(OpKind.COMBINE, comm_bytes=ACT_BYTES * h * copies_in, group="ep", compute_kind="comm",
           collective="all_to_all"),
        # unpermute and the weighted sum of the k expert outputs
        Op(OpKind.COMBINE, bytes_moved=ACT_BYTES * h * (2 * copies_in + n_src), compute_kind="elementwise", num_kernels=2),
    ]
    if moe.num_shared_experts:
        p_sh = shared_expert_params(model) / par.tp
        F_sh = moe.num_shared_experts * moe.shared_expert_ffn_dim / par.tp
        ops.append(Op(OpKind.SHARED_EXPERTS, flops=2.0 * p_sh * n, bytes_moved=p_sh * weight_bytes, num_kernels=2))
        ops.append(Op(OpKind.SHARED_EXPERTS, bytes_moved=ACT_BYTES * n * m * F_sh, compute_kind="elementwise"))
    if par.etp > 1:
        ops.append(Op(OpKind.TP_COMM, comm_bytes=ACT_BYTES * n_src * h, group="etp", compute_kind="comm",
                      collective="all_reduce"))
    elif par.tp > 1:
        ops.append(Op(OpKind.TP_COMM, comm_bytes=ACT_BYTES * n * h, group="tp", compute_kind="comm",
                      collective="all_reduce"))
    return ops


def dense_ffn_ops(model: ModelSpec, par: Parallel, n: float, *, weight_bytes: float = 2.0) -> list[Op]:
    p = ffn_params(model, model.dense_ffn_dim, model.ffn_bias) / par.tp
    F = model.dense_ffn_dim / par.tp
    ops = [Op(OpKind.DENSE_FFN, flops=2.0 * p * n, bytes_moved=p * weight_bytes, num_kernels=2),
           Op(OpKind.DENSE_FFN, bytes_moved=ACT_BYTES * n * (model.ffn_matrices * F), compute_kind="elementwise")]
    if par.tp > 1:
        ops.append(Op(OpKind.TP_COMM, comm_bytes=ACT_BYTES * n * model.hidden_size, group="tp", compute_kind="comm",
                      collective="all_reduce"))
    return ops


def embedding_op(model: ModelSpec, n: float) -> Op:
    return Op(OpKind.EMBEDDING, bytes_moved=ACT_BYTES * n * model.hidden_size * 2, compute_kind="elementwise")


def lm_head_op(model: ModelSpec, par: Parallel, n: float, *, weight_bytes: float = 2.0) -> Op:
    p = model.vocab_size * model.hidden_size / par.tp
    return Op(OpKind.LM_HEAD, flops=2.0 * p * n, bytes_moved=p * weight_bytes + 4.0 * n * model.vocab_size / par.tp,
              num_kernels=2)


def dispatch_bytes_per_copy(model: ModelSpec, dispatch_dtype: str) -> float:
    """Bytes of one dispatched token copy: ``h`` elements, plus one fp32 scale per 128 for fp8 (DeepSeek-V3 3.3)."""
    h = model.hidden_size
    b = h * bytes_per_element(dispatch_dtype)
    if dispatch_dtype == "fp8":
        b += 4.0 * h / 128.0
    return b
