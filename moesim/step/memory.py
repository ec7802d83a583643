"""Memory per GPU for a training step or an inference deployment.

Per GPU, for the pipeline stage that needs the most:

* weights: non-expert parameters of the stage / tp, routed-expert parameters
  / (ep * etp); ZeRO-3 / FSDP further divides them by dp (experts by edp).
* gradients (training): same count x 4 bytes (fp32 main grads, Megatron's
  default with mixed precision) or 2 without fp32 masters; ZeRO-2+ shards them.
* optimizer (training): Adam with fp32 master weights, m and v: 12 bytes per
  parameter (4 without masters: bf16 m and v); ZeRO-1+ shards them.
* activations (training), per layer per micro-batch of ``n`` tokens, ``a``
  bytes per element (2, or 1 for FP8 training): attention
  ``a*n*(2h + qkv + out)`` (qkv = q, k, v widths for GQA; for MLA the latents,
  plus the per-head q, k, v without recomputation; the fused attention kernel keeps
  its fp32 log-sum-exp, ``4*H*n``, not the ``5*H*s*n`` bytes of scores and masks
  Korthikanti et al. 2022 count for an unfused one); dense FFN
  ``a*n*(h + (m-1)*F)`` (``m*F`` without recomputation of the activation
  function), MoE ``a*c*(2h + (m-1)*F/etp)`` for ``c`` routed copies on the most
  loaded rank (top-k copies of each token, or the padded capacity) plus router
  logits ``4*n*E``; ``h``-sized terms are divided by tp with sequence
  parallelism, the others by tp. ``recompute = "full"`` keeps only each layer's input ``a*n*h`` plus one
  layer's working set. 1F1B keeps ``min(pp, micro-batches)`` micro-batches in
  flight on the first stage.
* dispatch buffers: the receive buffers of dispatch and combine for the
  most-loaded rank's copies.
* KV cache (inference): ``batch x context x kv bytes per token per layer x
  layers of the stage / kv_shard`` (sliding windows applied).
* workspace: the scenario's stated allowance (CUDA context, cuBLAS/NCCL buffers).

Reference: Korthikanti et al., "Reducing Activation Recomputation in Large
Transformer Models", arXiv 2205.05198 (activation bytes per layer);
Rajbhandari et al., "ZeRO", arXiv 1910.02054 (16 bytes/param for mixed-precision
Adam). Left out: allocator fragmentation, temporary buffers of fused kernels,
pipeline send/recv buffers, CUDA graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..dtypes import bytes_per_element
from ..model import MLAAttention, ModelSpec
from ..params import attention_params, expert_params, ffn_params, norm_params, router_params, shared_expert_params
from .memo import by_model
from .ops import recompute_units
from .parallel import Parallel

ACT = 2.0
#: Bytes per element of the weights a training GPU holds (bf16 copies beside the optimizer's masters): the
#: weight memory and the all-gather of the updated weights under ZeRO (docs/step-model.md, section 6)
TRAIN_WEIGHT_BYTES = 2.0


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU by category, for the stage that needs the most."""

    by_category_bytes: dict[str, float]
    capacity_bytes: float
    stage: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> float:
        return sum(self.by_category_bytes.values())

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.capacity_bytes

    @property
    def headroom_bytes(self) -> float:
        return self.capacity_bytes - self.total_bytes


@dataclass(frozen=True)
class StageParams:
    """Parameters held by one GPU of a pipeline stage, before ZeRO-3 sharding."""

    dense: float
    expert: float


def stage_params(model: ModelSpec, par: Parallel, layers: list[int], first: bool, last: bool,
                 redundant_experts: int = 0) -> StageParams:
    """Parameters one GPU of a stage holds; ``redundant_experts`` extra replicas (EPLB) are spread over the EP ranks.

    Reads TP, EP, ETP and whether there is one stage of the layout (memoised on those and the model's content).
    """
    return _stage_params(model, par.tp, par.ep, par.etp, par.pp == 1, tuple(layers), bool(first), bool(last),
                         redundant_experts)


@by_model(8192)
def _stage_params(model: ModelSpec, tp: int, ep: int, etp: int, one_stage: bool, layers: tuple[int, ...],
                  first: bool, last: bool, redundant_experts: int) -> StageParams:
    moe_idx = set(model.moe_layer_indices)
    n_moe = sum(1 for i in layers if i in moe_idx)
    n_dense = len(layers) - n_moe
    dense = len(layers) * (attention_params(model) + 2 * norm_params(model)) / tp
    expert = 0.0
    if n_moe:
        dense += n_moe * (router_params(model) + shared_expert_params(model) / tp)
        slots = model.moe.num_experts + redundant_experts  # type: ignore[union-attr]
        expert = n_moe * slots * expert_params(model) / (ep * etp)
    if n_dense:
        dense += n_dense * ffn_params(model, model.dense_ffn_dim, model.ffn_bias) / tp
    V, h = model.vocab_size, model.hidden_size
    if first:
        dense += V * h / tp
    if last:
        dense += (0 if model.tie_embeddings and one_stage else V * h) / tp + norm_params(model)
    return StageParams(dense=dense, expert=expert)


def param_state_bytes(p: StageParams, par: Parallel, *, master_weights_fp32: bool,
                      grad_bytes: float) -> dict[str, float]:
    """Weights, gradients and optimizer states of one GPU holding ``p`` (mixed-precision Adam).

    bf16 weights (``2`` bytes), gradients (``grad_bytes``: ``TrainWorkload.grad_bytes_per_element``, 4 for fp32
    main gradients or 2 for bf16), Adam moments and
    master weights (``12`` with fp32 masters, else ``4``); ZeRO stage ``z`` shards
    optimizer states (z >= 1), gradients (z >= 2) and weights (z >= 3) over the
    data-parallel group: dense parameters over DP, expert parameters over the
    expert-data-parallel group EDP (Rajbhandari et al., ZeRO, SC20).
    """
    z = par.zero_stage

    def shard(level: int) -> tuple[float, float]:
        if isinstance(z, np.ndarray):  # one value per layout (moesim.step.estimate.train_curve)
            return np.where(z >= level, par.dp, 1), np.where(z >= level, par.edp, 1)
        return (par.dp, par.edp) if z >= level else (1, 1)

    d3, e3 = shard(3)
    d2, e2 = shard(2)
    d1, e1 = shard(1)
    ob = 12.0 if master_weights_fp32 else 4.0
    return {"weights": TRAIN_WEIGHT_BYTES * (p.dense / d3 + p.expert / e3), "gradients": grad_bytes * (p.dense / d2 + p.expert / e2),
            "optimizer": ob * (p.dense / d1 + p.expert / e1)}


def layer_activation_bytes(model: ModelSpec, par: Parallel, n: float, recompute: str,
                           moe_copies: float, is_moe: bool, act_bytes: float = ACT,
                           units: frozenset[str] | None = None) -> float:
    """Activation bytes one layer keeps for backward, ``n`` tokens per DP rank (see module docstring).

    ``act_bytes`` is the element size of cached linear-layer inputs: 2 (bf16), or 1
    for FP8 training, which caches them in FP8 (DeepSeek-V3 report, section 3.3.3).
    ``units`` are the parts selective recomputation runs again (:func:`moesim.step.ops.recompute_units`;
    default: those of ``recompute`` with no modules named): each is not kept.
    """
    h = model.hidden_size
    a = model.attention
    sp = par.tp if par.sequence_parallel else 1
    if recompute == "full":
        return ACT * n * h / sp
    if units is None:
        units = recompute_units(recompute)
    if isinstance(a, MLAAttention):
        # recomputing the up-projections keeps only the compressed latents (DeepSeek-V3 section 3.2.3);
        # otherwise the per-head q, k, v are kept too
        lat = (a.q_lora_rank or 0) + a.kv_lora_rank + a.qk_rope_head_dim
        heads = a.num_heads * (2 * a.qk_head_dim + a.v_head_dim) / par.tp
        qkv = lat + (0.0 if "mla_up_proj" in units else heads)
        out = a.num_heads * a.v_head_dim / par.tp
    else:
        qkv = (a.q_dim + 2 * a.kv_dim) / par.tp
        out = a.q_dim / par.tp
    # the layer's input and its norm's output (the norm runs again under "layernorm"); the fused attention
    # kernel the step model times keeps the softmax's fp32 log-sum-exp per head and query
    norms = 1.0 if "layernorm" in units else 2.0
    attn = act_bytes * n * (norms * h / sp + qkv + out) + 4.0 * a.num_heads * n / par.tp
    m = model.ffn_matrices
    # a gated FFN keeps its input, the gate/up outputs and the activation's output, unless that runs again
    inter_experts = m - 1 if "moe_act" in units else m
    inter = m - 1 if "ffn_act" in units else m
    if is_moe:
        moe = model.moe
        assert moe is not None
        F = moe.expert_ffn_dim / par.etp
        ffn = act_bytes * moe_copies * (2 * h + inter_experts * F) + 4.0 * par.moe_tokens(n) * moe.num_experts
        if moe.num_shared_experts and "shared_experts" not in units:  # recomputed whole, it keeps nothing
            ffn += act_bytes * n * inter * moe.num_shared_experts * moe.shared_expert_ffn_dim / par.tp
    elif "mlp" in units:  # recomputed whole: only its input is kept
        ffn = act_bytes * n * h / sp
    else:
        ffn = act_bytes * n * (h / sp + inter * model.dense_ffn_dim / par.tp)
    return attn + ffn


def kv_bytes_per_sequence(model: ModelSpec, par: Parallel, layers: list[int], context: int, kv_dtype: str) -> float:
    """KV-cache bytes one sequence of ``context`` tokens needs on one GPU of the stage."""
    a = model.attention
    shard = par.kv_shard(a.num_kv_heads, isinstance(a, MLAAttention))
    return _kv_bytes_per_sequence(model, shard, tuple(layers), context, type(context), kv_dtype)


@by_model(4096)
def _kv_bytes_per_sequence(model: ModelSpec, shard: int, layers: tuple[int, ...], context: int, _context_type: type,
                           kv_dtype: str) -> float:
    from ..memory import kv_elements_per_token_per_layer

    a = model.attention
    per = kv_elements_per_token_per_layer(model) * bytes_per_element(kv_dtype)
    per /= shard
    total = 0.0
    for i in layers:
        tokens = min(context, a.sliding_window) if (a.sliding_window and model.is_sliding(i)) else context
        total += per * tokens
    return total
