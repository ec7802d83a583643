"""Forward FLOPs per token (no hardware).

A matrix multiply of a token vector by a weight of ``n`` parameters costs
``2n`` FLOPs (one multiply and one add each). Per token:

* matrix FLOPs = 2 x (active parameters of attention projections, router,
  ``top_k`` routed experts, shared experts, dense FFN, LM head); the embedding
  lookup is free and the LM head is counted even when tied.
* attention FLOPs per layer = ``2 * H * (d_qk + d_v) * L`` for a query that
  attends to ``L`` keys (QK^T and AV), with ``L`` capped at the sliding window on
  windowed layers. For a causal prefill of ``S`` tokens the mean is
  ``L = (S + 1) / 2``; for decode at context ``C`` it is ``L = C``.

Left out: norms, activations, softmax and rotary embeddings (elementwise,
< 1 % of FLOPs for these models); the MTP modules (training only). Biases,
attention sinks and the norm weights inside attention (q/k norms, MLA's
low-rank norms) are part of the active parameter counts the matrix term
starts from, so they are charged 2 FLOPs each (< 0.05 % of the matrix FLOPs
of every bundled model). MLA is counted in its non-absorbed form (prefill);
the absorbed decode form trades projection FLOPs for attention FLOPs on the
latent and is not modelled here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import ModelSpec
from .params import count_params


@dataclass(frozen=True)
class ForwardFlops:
    """Forward FLOPs for one token, by part."""

    matmul_flops: float
    attention_flops: float
    by_component: dict[str, float]

    @property
    def total_flops(self) -> float:
        return self.matmul_flops + self.attention_flops


def attention_score_flops_per_key(model: ModelSpec) -> float:
    """QK^T and AV FLOPs of one token in one layer per key attended: ``2 H (d_qk + d_v)``."""
    a = model.attention
    return 2.0 * a.num_heads * (a.qk_head_dim + a.v_head_dim)


def attention_score_flops(model: ModelSpec, keys_attended: float) -> float:
    """QK^T and AV FLOPs of one token over all layers, attending to ``keys_attended`` keys."""
    a = model.attention
    per_key = attention_score_flops_per_key(model)
    n_slide = model.num_sliding_layers
    windowed = min(keys_attended, float(a.sliding_window)) if a.sliding_window is not None else keys_attended
    return per_key * ((model.num_layers - n_slide) * keys_attended + n_slide * windowed)


def forward_flops_per_token(model: ModelSpec, keys_attended: float = 0.0) -> ForwardFlops:
    """Forward FLOPs of one token of ``model`` attending to ``keys_attended`` keys (see module docstring)."""
    act = count_params(model).active_by_component
    parts = {
        "attention": act["attention"],
        "router": act["router"],
        "routed_experts": act["routed_experts"],
        "shared_experts": act["shared_experts"],
        "dense_ffn": act["dense_ffn"],
        "lm_head": model.vocab_size * model.hidden_size,
    }
    by = {k: 2.0 * v for k, v in parts.items()}
    att = attention_score_flops(model, keys_attended)
    by["attention_scores"] = att
    return ForwardFlops(matmul_flops=sum(2.0 * v for v in parts.values()), attention_flops=att, by_component=by)
