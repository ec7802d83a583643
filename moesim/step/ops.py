"""Operations of one transformer layer on one GPU for the step model (no hardware).

The MoE FFN comes from the shared builder :func:`moesim.layer.moe_ffn_ops` (the
same one ``moesim validate`` checks), called with the expected straggler's load
and the scenario's kernel plan; this module adds attention, the dense FFN,
tensor-parallel all-reduces, the embedding and the LM head.

Symbols: ``n`` tokens per data-parallel rank in this pass, ``h`` hidden size,
``w`` bytes per weight element, ``a`` bytes per activation element (2, bf16).

* attention: ``2 * P_attn / tp * n`` projection FLOPs (one GEMM shape
  ``[n, h] @ [h, P_attn / (tp h)]``, in the compute dtype) plus
  ``2 * H * (d_qk + d_v) * n * L / tp`` core FLOPs for ``L`` keys attended
  (always bf16: FP8 recipes keep the attention core in bf16; one fused kernel timed on the profile's
  attention curves at its keys per query and head dim; sliding-window layers and MLA's absorbed decode
  queries are cores of their own); weights
  ``P_attn * w / tp``; in decode the KV cache read ``b * C * kv_layer_bytes / kv_shard``;
  norm + residual + rotary as separate memory-bound kernels (``a * n * (5h + 4 q)``).
* dense FFN and shared experts: :func:`moesim.layer.ffn_gemm_ops` over ``n`` rows.
* LM head: ``2 * V * h / tp * n`` (vocabulary-parallel), logits written in fp32.
* TP all-reduce of ``a * n * h`` after attention and after the FFN.
* selective recomputation (training backward, :func:`recompute_units`, :func:`recomputed_ops`,
  :func:`picks_for_recompute`): by default MLA's up-projections run again, ``2 n (q_in H d_qk + d_c H
  (d_nope + d_v)) / tp`` FLOPs, with ``q_in`` the query latent's rank (the hidden size without one), and
  the FFN activations are their forward ops again; Megatron-Core's module names choose others.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..flops import attention_score_flops_per_key
from ..layer import GemmShape, KernelPlan, MoEShape, Op, RowsPerExpert, ffn_gemm_ops, moe_ffn_ops
from ..memory import kv_elements_per_token_per_layer
from ..model import MLAAttention, ModelSpec
from ..ops import OpKind
from ..params import attention_params, ffn_params
from .parallel import Parallel

ACT_BYTES = 2.0  # bf16 activations
#: backward work of a fused attention core over its forward: the kernel recomputes S = Q K^T from Q, K and the
#: saved log-sum-exp, then computes dV = P^T dO, dP = dO V^T, dQ = dS K and dK = dS^T Q: five GEMMs of the
#: forward's size against its two (Dao et al., FlashAttention, NeurIPS 2022, Algorithm 4)
ATTENTION_BACKWARD_FACTOR = 2.5

__all__ = ["ACT_BYTES", "ATTENTION_BACKWARD_FACTOR", "ExpertRankLoad", "Op", "attention_ops", "dense_ffn_ops", "dispatch_bytes_per_copy",
           "embedding_op", "lm_head_op", "moe_ops", "picks_for_recompute", "recompute_units", "recomputed_ops"]


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
                  context: float = 0.0, decode_tokens=None, weight_bytes: float = 2.0,
                  kv_bytes: float = 2.0) -> list[Op]:
    """Attention block of one layer for ``n`` tokens attending to ``keys`` keys on average.

    In decode (``decode_batch`` sequences at ``context`` tokens) the KV cache is read once per step;
    ``decode_tokens`` (default ``decode_batch``: one per sequence) of the ``n`` tokens are decode queries,
    each attending ``context`` cached keys. With MLA they run in the absorbed form (:func:`mla_core_ops`).
    """
    h = model.hidden_size
    p_attn = attention_params(model) / par.tp
    mla = isinstance(model.attention, MLAAttention)
    kv_layer = kv_elements_per_token_per_layer(model) * kv_bytes / par.kv_shard(model.attention.num_kv_heads, mla)
    # the projections are the same FLOPs in MLA's expanded and absorbed forms (absorbing W_UK and W_UV moves
    # 2 H d_c (d_nope + d_v) per token from the KV up-projection to the query and output side)
    ops = [
        Op(OpKind.ATTENTION, "attention_proj", flops=2.0 * p_attn * n, bytes_moved=ACT_BYTES * n * 2 * h,
           weight_bytes=p_attn * weight_bytes, num_kernels=3, gemm=GemmShape(m=n, n=p_attn / h, k=h)),
    ]
    if mla and not (_plain(decode_batch) and decode_batch <= 0):
        ops += mla_core_ops(model, par, n, keys, decode_batch=decode_batch, context=context,
                            decode_tokens=decode_batch if decode_tokens is None else decode_tokens,
                            kv_layer_bytes=kv_layer)
    else:
        ops += _core_ops(model, par, n, keys, decode_batch=decode_batch, context=context, kv_layer_bytes=kv_layer)
    q_dim = model.attention.num_heads * model.attention.qk_head_dim / par.tp
    # norm, residual add and rotary embedding: separate memory-bound kernels
    ops.append(Op(OpKind.ATTENTION, "attention_norm_rope", bytes_moved=ACT_BYTES * n * (5 * h + 4 * q_dim),
                  compute_kind="elementwise", num_kernels=3))
    if par.tp > 1:
        ops.append(Op(OpKind.TP_COMM, "attention_tp_all_reduce", comm_bytes=ACT_BYTES * n * h, group="tp",
                      compute_kind="comm", collective="all_reduce"))
    return ops


#: What selective recomputation runs again when the workload names no modules: DeepSeek-V3's (report, arXiv
#: 2412.19437, sections 3.2.3 and 3.3.3): MLA's up-projections and every FFN's activation ("ffn_act", the dense
#: FFN's and the shared experts' beside the routed experts' "moe_act"; not a Megatron-Core module name)
DEFAULT_SELECTIVE = frozenset({"mla_up_proj", "moe_act", "ffn_act"})


def recompute_units(recompute: str, modules=None) -> frozenset[str]:
    """The parts of a layer that run again in the backward (:attr:`moesim.scenario.TrainWorkload.recompute` and
    ``recompute_modules``): none unless ``recompute`` is ``"selective"`` (``"full"`` runs the whole forward
    again, which the step composes itself), then ``modules`` or :data:`DEFAULT_SELECTIVE`."""
    if recompute != "selective":
        return frozenset()
    return DEFAULT_SELECTIVE if modules is None else frozenset(modules)


def recomputed_ops(model: ModelSpec, par: Parallel, n, units: frozenset[str], *,
                   weight_bytes: float = 2.0) -> list[Op]:
    """The forward operations selective recomputation adds to a layer's backward that the layer's own forward
    operations do not state apart (the caller adds those it picks from them, :func:`picks_for_recompute`):

    * ``mla_up_proj``: MLA's query and key/value up-projections from the latents the memory model keeps
      (``moesim.step.memory.layer_activation_bytes``; DeepSeek-V3, section 3.2.3, and Megatron-Core's
      ``mla_up_proj`` module), after the latents' RMSNorms (``2 a n (d_cq + d_c)`` bytes). Grouped-query
      attention keeps its q, k and v, so nothing of it runs again.
    * ``layernorm``: the input and pre-FFN RMSNorms, ``2 x 2 a n h / sp`` bytes (read the input, write the
      output).
    """
    ops: list[Op] = []
    a = model.attention
    if "mla_up_proj" in units and isinstance(a, MLAAttention):
        heads = a.num_heads / par.tp
        q_in = a.q_lora_rank or model.hidden_size
        q_out = heads * a.qk_head_dim
        kv_out = heads * (a.qk_nope_head_dim + a.v_head_dim)
        latents = (a.q_lora_rank or 0) + a.kv_lora_rank
        # the latents' RMSNorms run again too and feed the up-projections (norm-fed GEMM inputs, moesim.layer)
        ops.append(Op(OpKind.ATTENTION, "attention_latent_norm", bytes_moved=2.0 * ACT_BYTES * n * latents,
                      compute_kind="elementwise", num_kernels=2 if a.q_lora_rank else 1))
        ops += [Op(OpKind.ATTENTION, name, flops=2.0 * n * k * width, bytes_moved=ACT_BYTES * n * (k + width),
                   weight_bytes=k * width * weight_bytes, gemm=GemmShape(m=n, n=width, k=k))
                for name, k, width in (("attention_q_up", q_in, q_out), ("attention_kv_up", a.kv_lora_rank, kv_out))]
    if "layernorm" in units:
        sp = par.tp if par.sequence_parallel else 1
        ops.append(Op(OpKind.ATTENTION, "layernorm_recompute", bytes_moved=2.0 * 2.0 * ACT_BYTES * n * model.hidden_size
                      / sp, compute_kind="elementwise", num_kernels=2))
    return ops


def picks_for_recompute(op: Op, units: frozenset[str], *, dense_layer: bool) -> bool:
    """Whether selective recomputation with ``units`` runs ``op``, one of a layer's forward operations, again in
    the backward: the routed experts' activation (``moe_act``), the dense FFN's and the shared experts'
    (``ffn_act``), a dense layer's FFN whole with its TP collective (``mlp``), the shared experts whole
    (``shared_experts``), the attention core (``core_attn``)."""
    if op.name == "experts_act":
        return "moe_act" in units
    if op.kind == OpKind.DENSE_FFN or (dense_layer and op.name == "ffn_tp_all_reduce"):
        return "mlp" in units or (op.name == "dense_ffn_act" and "ffn_act" in units)
    if op.kind == OpKind.SHARED_EXPERTS:
        return "shared_experts" in units or (op.name == "shared_act" and "ffn_act" in units)
    return op.compute_kind == "attention" and "core_attn" in units


def _core(name: str, flops, bytes_moved, kernels, keys_per_query, head_dim: float) -> Op:
    """One fused attention core (QK^T, softmax, AV), in bf16 even when the GEMMs use fp8."""
    return Op(OpKind.ATTENTION, name, flops=flops, bytes_moved=bytes_moved, num_kernels=kernels, dtype="bf16",
              compute_kind="attention", keys_per_query=keys_per_query, backward_factor=ATTENTION_BACKWARD_FACTOR,
              head_dim=float(head_dim))


def _head_dim(model: ModelSpec) -> int:
    """The head dimension an attention kernel is built for: the larger of the query/key and value dims."""
    return max(model.attention.qk_head_dim, model.attention.v_head_dim)


def _core_ops(model: ModelSpec, par: Parallel, n, keys, *, decode_batch, context, kv_layer_bytes) -> list[Op]:
    """The core of every layer: full-attention and sliding-window layers apart (their keys per query, and so
    kernel efficiency, differ), each weighted by its share of the layers (one kernel per layer on average)."""
    n_slide = model.num_sliding_layers
    window = model.attention.sliding_window
    ops = []
    for name, share, k_q, ctx in (
            ("attention_core", (model.num_layers - n_slide) / model.num_layers, keys, context),
            ("attention_core_window", n_slide / model.num_layers,
             _at_most(keys, window), _at_most(context, window))):
        if share > 0:
            kv = (decode_batch * ctx + n) * kv_layer_bytes * share  # decode reads the cache; every token writes
            ops.append(_core(name, attention_score_flops_per_key(model) * k_q * n / par.tp * share, kv, share, k_q,
                             _head_dim(model)))
    return ops


def mla_absorbed_flops_per_key(model: ModelSpec) -> float:
    """Core FLOPs of one decode query per cached key in MLA's absorbed form, one layer: scores against the
    latent and the rope key, ``2 H (d_c + d_r)``, and values in the latent, ``2 H d_c`` (DeepSeek-V2, arXiv
    2405.04434, section 2.1.2: W_UK is absorbed into the query and W_UV into the output projection)."""
    a = model.attention
    assert isinstance(a, MLAAttention)
    return 2.0 * a.num_heads * (a.kv_lora_rank + a.qk_rope_head_dim) + 2.0 * a.num_heads * a.kv_lora_rank


def mla_core_ops(model: ModelSpec, par: Parallel, n, keys, *, decode_batch, context, decode_tokens,
                 kv_layer_bytes) -> list[Op]:
    """MLA's core in an iteration with decode queries: the ``decode_tokens`` queries attend the cached
    latents in the absorbed form (one kernel, as FlashMLA); the iteration's other tokens (prefill chunks riding
    along) attend in the expanded form, as a prefill does (``n keys`` query-key pairs in all). The decode
    kernel's efficiency is read at ``min(context, keys)``: the context in a pure decode iteration, the
    iteration's mean keys per query when prefill chunks ride along (as the other models' single core does;
    the serving simulator states an iteration by its total cached tokens, not per sequence)."""
    a = model.attention
    assert isinstance(a, MLAAttention)
    decode_tokens = decode_tokens * _positive(context)  # no cached keys: no decode queries
    pairs_dec = decode_tokens * context
    pairs_pre = _at_least(n * keys - pairs_dec, 0.0)
    # the n new tokens' latents are written by the two kernels in the share of the pairs each attends
    pre_share = pairs_pre / _at_least(n * keys, 1e-30)
    write = n * kv_layer_bytes
    return [
        _core("attention_core", attention_score_flops_per_key(model) * pairs_pre / par.tp, write * pre_share,
              _positive(pairs_pre), pairs_pre / _at_least(n - decode_tokens, 1.0), _head_dim(model)),
        _core("attention_core_decode", mla_absorbed_flops_per_key(model) * pairs_dec / par.tp,
              decode_batch * context * kv_layer_bytes + write * (1.0 - pre_share), _positive(pairs_dec),
              _at_most(context, keys), a.kv_lora_rank + a.qk_rope_head_dim),
    ]


def _plain(x) -> bool:
    return type(x) in (int, float)


def _at_least(x, lo: float):
    return max(x, lo) if _plain(x) else np.maximum(x, lo)


def _positive(x):
    return (1.0 if x > 0 else 0.0) if _plain(x) else (np.asarray(x) > 0).astype(float)


def _at_most(x, cap):
    """``min(x, cap)`` for numbers or arrays (``cap`` None: no cap)."""
    if cap is None:
        return x
    return min(x, cap) if _plain(x) and _plain(cap) else np.minimum(x, cap)


def moe_shape(model: ModelSpec, par: Parallel) -> MoEShape:
    """The MoE FFN of one rank of this layout, for the shared builder."""
    moe = model.moe
    assert moe is not None
    r = moe.router
    return MoEShape(
        d_model=model.hidden_size, expert_ffn=moe.expert_ffn_dim / par.etp, num_experts=moe.num_experts,
        top_k=moe.top_k, num_local_experts=moe.num_experts / par.ep, ffn_matrices=model.ffn_matrices,
        num_groups=r.num_groups if (r.num_groups > 1 and r.topk_groups < r.num_groups) else 1,
        shared_ffn=moe.num_shared_experts * moe.shared_expert_ffn_dim / par.tp if moe.num_shared_experts else 0.0,
        ep_size=par.ep,
    )


def moe_ops(model: ModelSpec, par: Parallel, n: float, load: ExpertRankLoad, *, bytes_per_copy: float,
            weight_bytes: float = 2.0, expert_weight_bytes: float | None = None,
            plan: KernelPlan = "fused", gather_in_gemm: bool = False, per_expert_gemms: bool = False) -> list[Op]:
    """Router, dispatch, experts, combine and shared experts of one MoE layer (``n`` tokens per DP rank).

    ``per_expert_gemms``: the experts' GEMMs one per local expert (:func:`moesim.layer.ffn_gemm_ops`).

    The expected straggler computes ``copies`` rows spread over the
    ``experts_touched`` experts that get any (:meth:`RowsPerExpert.expected`).
    """
    n_src = par.moe_tokens(n)
    rows = RowsPerExpert.expected(load.copies, load.experts_touched)
    ops = moe_ffn_ops(moe_shape(model, par), tokens=n_src, rows=rows, plan=plan, act_bytes=ACT_BYTES,
                      weight_bytes_per_element=weight_bytes, expert_weight_bytes_per_element=expert_weight_bytes,
                      bytes_per_copy=bytes_per_copy, shared_tokens=n, gather_in_gemm=gather_in_gemm,
                      per_expert_gemms=per_expert_gemms)
    if par.etp > 1:
        ops.append(Op(OpKind.TP_COMM, "experts_etp_all_reduce", comm_bytes=ACT_BYTES * n_src * model.hidden_size,
                      group="etp", compute_kind="comm", collective="all_reduce"))
    elif par.tp > 1:
        ops.append(Op(OpKind.TP_COMM, "ffn_tp_all_reduce", comm_bytes=ACT_BYTES * n * model.hidden_size, group="tp",
                      compute_kind="comm", collective="all_reduce"))
    return ops


def dense_ffn_ops(model: ModelSpec, par: Parallel, n: float, *, weight_bytes: float = 2.0,
                  plan: KernelPlan = "fused") -> list[Op]:
    F = model.dense_ffn_dim / par.tp
    ops = ffn_gemm_ops(OpKind.DENSE_FFN, "dense_ffn", RowsPerExpert(((n, 1.0),)), model.hidden_size, F,
                       model.ffn_matrices, plan=plan, act_bytes=ACT_BYTES, weight_bytes_per_element=weight_bytes,
                       grouped=False)
    if model.ffn_bias:  # biases are read with the weights (fused into the GEMM epilogue)
        extra = (ffn_params(model, model.dense_ffn_dim, True) - ffn_params(model, model.dense_ffn_dim, False)) / par.tp
        ops[0] = replace(ops[0], weight_bytes=ops[0].weight_bytes + extra * weight_bytes)
    if par.tp > 1:
        ops.append(Op(OpKind.TP_COMM, "ffn_tp_all_reduce", comm_bytes=ACT_BYTES * n * model.hidden_size, group="tp",
                      compute_kind="comm", collective="all_reduce"))
    return ops


def embedding_op(model: ModelSpec, n: float) -> Op:
    return Op(OpKind.EMBEDDING, "embedding", bytes_moved=ACT_BYTES * n * model.hidden_size * 2,
              compute_kind="elementwise")


def lm_head_op(model: ModelSpec, par: Parallel, n: float, *, weight_bytes: float = 2.0) -> Op:
    v = model.vocab_size / par.tp
    p = v * model.hidden_size
    return Op(OpKind.LM_HEAD, "lm_head", flops=2.0 * p * n, bytes_moved=ACT_BYTES * n * model.hidden_size + 4.0 * n * v,
              weight_bytes=p * weight_bytes, num_kernels=2, gemm=GemmShape(m=n, n=v, k=model.hidden_size))


def dispatch_bytes_per_copy(model: ModelSpec, dispatch_dtype: str) -> float:
    """Bytes of one dispatched token copy: the communication model's
    :func:`moesim.comm.api.dispatch_bytes_per_token` (``h`` elements, plus one fp32 scale per started block
    of 128 for fp8, DeepSeek-V3 3.3)."""
    from ..comm.api import dispatch_bytes_per_token

    return dispatch_bytes_per_token(model.hidden_size, dispatch_dtype)
