"""Weight and KV-cache bytes (no hardware).

* Weight bytes = parameters x bytes per element of the storage dtype, with
  fractional bytes for block-scaled formats (:mod:`moesim.dtypes`); routed
  experts' weight matrices may use their own dtype (gpt-oss stores them in
  MXFP4) while their biases stay in the model's dtype (block scaling applies
  to matrices; the gpt-oss checkpoint keeps expert biases in BF16).
* KV cache per token per layer:
  GQA/MHA/MQA: ``2 * kv_heads * head_dim`` elements (K and V);
  MLA: ``kv_lora_rank + qk_rope_head_dim`` elements (the compressed latent and
  the shared rope key, DeepSeek-V2 section 2.1.3).
  Sliding-window layers hold at most ``window`` tokens.

Left out: allocator fragmentation and paging granularity (vLLM's block size),
quantisation scales of fp8 KV caches.
"""

from __future__ import annotations

from .dtypes import bytes_per_element
from .model import MLAAttention, ModelSpec
from .params import ParamCounts, count_params


def weight_bytes(model: ModelSpec, dtype: str | None = None, expert_dtype: str | None = None,
                 counts: ParamCounts | None = None) -> float:
    """Bytes to store all weights; ``dtype`` defaults to the model's, experts may differ."""
    counts = counts or count_params(model)
    dtype = dtype or model.weight_dtype
    expert_dtype = expert_dtype or (model.expert_weight_dtype if dtype == model.weight_dtype else None) or dtype
    experts = counts.by_component["routed_experts"] - expert_bias_params(model)
    return (counts.total - experts) * bytes_per_element(dtype) + experts * bytes_per_element(expert_dtype)


def expert_bias_params(model: ModelSpec) -> int:
    """Bias parameters of all routed experts of the main model: ``L_moe * E * ((m-1)*F + h)``, or 0."""
    moe = model.moe
    if moe is None or not moe.expert_bias:
        return 0
    per_expert = (model.ffn_matrices - 1) * moe.expert_ffn_dim + model.hidden_size
    return model.num_moe_layers * moe.num_experts * per_expert


def kv_elements_per_token_per_layer(model: ModelSpec) -> int:
    """Cached elements per token in one attention layer."""
    a = model.attention
    if isinstance(a, MLAAttention):
        return a.kv_lora_rank + a.qk_rope_head_dim
    return 2 * a.num_kv_heads * a.head_dim


def kv_bytes_per_token(model: ModelSpec, dtype: str = "bf16") -> float:
    """KV-cache bytes one token adds across all layers, before any sliding window fills."""
    return model.num_layers * kv_elements_per_token_per_layer(model) * bytes_per_element(dtype)


def kv_cache_bytes(model: ModelSpec, context_tokens: int, batch: int = 1, dtype: str = "bf16") -> float:
    """KV-cache bytes for ``batch`` sequences of ``context_tokens`` tokens (windows applied)."""
    per = kv_elements_per_token_per_layer(model) * bytes_per_element(dtype)
    w = model.attention.sliding_window
    total = 0.0
    for i in range(model.num_layers):
        tokens = min(context_tokens, w) if (w is not None and model.is_sliding(i)) else context_tokens
        total += per * tokens
    return total * batch
