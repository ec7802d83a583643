"""Parameter accounting: total and active-per-token counts by component.

Components (the names every view uses): ``embedding``, ``lm_head``,
``attention``, ``router``, ``routed_experts``, ``shared_experts``,
``dense_ffn``, ``norms``, ``mtp``.

Conventions:

* ``total`` counts every stored parameter, including the MTP modules (DeepSeek
  publishes 671B for the main model and 685B with MTP).
* ``active`` counts the parameters one token touches in a forward pass: all
  non-expert weights, ``top_k`` routed experts per MoE layer, every shared
  expert, and the **full** embedding and LM-head matrices (Mistral's 12.9B and
  DeepSeek's 37B count them so; subtract ``embedding`` for the
  "non-embedding" convention). Biases and norm weights are counted.

Formulas (h = hidden_size, V = vocab, m = 3 for a gated FFN else 2):

* GQA attention: ``h*(q + 2*kv) + q*h`` with ``q = heads*head_dim``,
  ``kv = kv_heads*head_dim``, plus biases, q/k norms and sinks.
* MLA (DeepSeek-V2 section 2.1): ``h*r_q + r_q + r_q*H*(d_nope+d_rope)`` (or
  ``h*H*(d_nope+d_rope)`` without q compression) ``+ h*(r_kv+d_rope) + r_kv +
  r_kv*H*(d_nope+d_v) + H*d_v*h``.
* One FFN of width F: ``m*h*F`` (+ ``(m-1)*F + h`` biases).
* Router: ``h*E`` (+ ``E`` bias, + ``E`` score-correction bias).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import GQAAttention, MLAAttention, ModelSpec

COMPONENTS = (
    "embedding",
    "lm_head",
    "attention",
    "router",
    "routed_experts",
    "shared_experts",
    "dense_ffn",
    "norms",
    "mtp",
)


@dataclass(frozen=True)
class ParamCounts:
    """Total and active parameter counts, each broken down by component."""

    total: int
    active: int
    by_component: dict[str, int] = field(default_factory=dict)
    active_by_component: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "active": self.active,
            "by_component": dict(self.by_component),
            "active_by_component": dict(self.active_by_component),
        }


def norm_params(model: ModelSpec) -> int:
    """Parameters of one normalisation layer over the hidden size."""
    return 2 * model.hidden_size if model.norm == "layernorm" else model.hidden_size


def attention_params(model: ModelSpec) -> int:
    """Parameters of one attention block (projections, biases, q/k norms, sinks)."""
    h = model.hidden_size
    a = model.attention
    if isinstance(a, GQAAttention):
        q, kv = a.q_dim, a.kv_dim
        n = h * (q + 2 * kv) + q * h
        if a.qkv_bias:
            n += q + 2 * kv
        if a.out_bias:
            n += h
        if a.qk_norm:
            n += (q + kv) if a.qk_norm_full_width else 2 * a.head_dim
        if a.sinks:
            n += a.num_heads
        return n
    assert isinstance(a, MLAAttention)
    H = a.num_heads
    if a.q_lora_rank:
        q = h * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * H * a.qk_head_dim
    else:
        q = h * H * a.qk_head_dim
    kv = h * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank + a.kv_lora_rank * H * (a.qk_nope_head_dim + a.v_head_dim)
    o = H * a.v_head_dim * h
    return q + kv + o


def ffn_params(model: ModelSpec, width: int, bias: bool) -> int:
    """Parameters of one FFN (gated: gate, up, down; plain: up, down) of intermediate ``width``."""
    m = model.ffn_matrices
    n = m * model.hidden_size * width
    if bias:
        n += (m - 1) * width + model.hidden_size
    return n


def expert_params(model: ModelSpec) -> int:
    """Parameters of one routed expert."""
    assert model.moe is not None
    return ffn_params(model, model.moe.expert_ffn_dim, model.moe.expert_bias)


def shared_expert_params(model: ModelSpec) -> int:
    """Parameters of all shared experts of one MoE layer (with the Qwen2 shared gate)."""
    moe = model.moe
    assert moe is not None
    n = moe.num_shared_experts * ffn_params(model, moe.shared_expert_ffn_dim, model.ffn_bias)
    if moe.shared_expert_gate and moe.num_shared_experts:
        n += model.hidden_size
    return n


def router_params(model: ModelSpec) -> int:
    moe = model.moe
    assert moe is not None
    n = model.hidden_size * moe.num_experts
    if moe.router.bias:
        n += moe.num_experts
    if moe.router.score_correction_bias:
        n += moe.num_experts
    return n


def _layer(model: ModelSpec, is_moe: bool) -> tuple[dict[str, int], dict[str, int]]:
    """(total, active) parameters of one decoder layer by component."""
    tot = {"attention": attention_params(model), "norms": 2 * norm_params(model)}
    act = dict(tot)
    if is_moe:
        moe = model.moe
        assert moe is not None
        e = expert_params(model)
        tot |= {"router": router_params(model), "routed_experts": moe.num_experts * e, "shared_experts": shared_expert_params(model)}
        act |= {"router": tot["router"], "routed_experts": moe.top_k * e, "shared_experts": tot["shared_experts"]}
    else:
        tot["dense_ffn"] = act["dense_ffn"] = ffn_params(model, model.dense_ffn_dim, model.ffn_bias)
    return tot, act


def count_params(model: ModelSpec) -> ParamCounts:
    """Total and active-per-token parameters of ``model`` by component (see module docstring).

    Computed once per spec object and kept with it (specs are frozen); treat the
    result as read-only.
    """
    cached = model.__dict__.get("_param_counts")
    if cached is not None:
        return cached
    counts = _count_params(model)
    model.__dict__["_param_counts"] = counts
    return counts


def _count_params(model: ModelSpec) -> ParamCounts:
    tot = dict.fromkeys(COMPONENTS, 0)
    act = dict.fromkeys(COMPONENTS, 0)
    V, h = model.vocab_size, model.hidden_size
    tot["embedding"] = act["embedding"] = V * h
    tot["lm_head"] = act["lm_head"] = 0 if model.tie_embeddings else V * h
    tot["norms"] = act["norms"] = norm_params(model)  # final norm
    moe_layers = set(model.moe_layer_indices)
    cache: dict[bool, tuple[dict[str, int], dict[str, int]]] = {}
    for i in range(model.num_layers):
        is_moe = i in moe_layers
        if is_moe not in cache:
            cache[is_moe] = _layer(model, is_moe)
        lt, la = cache[is_moe]
        for k, v in lt.items():
            tot[k] += v
        for k, v in la.items():
            act[k] += v
    if model.mtp.num_modules:
        lt, la = _layer(model, model.moe is not None)
        extra = 2 * h * h + 3 * norm_params(model)  # eh_proj (2h -> h), enorm, hnorm, final norm
        if model.mtp.own_embedding_and_head:
            extra += 2 * V * h
        tot["mtp"] = model.mtp.num_modules * (sum(lt.values()) + extra)
        act["mtp"] = model.mtp.num_modules * (sum(la.values()) + extra)
    return ParamCounts(
        total=sum(tot.values()),
        active=sum(act.values()),
        by_component=tot,
        active_by_component=act,
    )
