"""The model card: the figures a model report is asked to state, in one typed record."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .dtypes import WEIGHT_DTYPES, bytes_per_element
from .flops import attention_score_flops, forward_flops_per_token
from .memory import kv_bytes_per_token, weight_bytes
from .model import ModelSpec
from .params import count_params

#: contexts at which the card reports forward FLOPs per token (keys attended)
CARD_CONTEXTS = (0, 4096, 32768)


class ParamsView(BaseModel):
    model_config = ConfigDict(frozen=True)
    total: int = Field(description="All stored parameters (including MTP modules).")
    active: int = Field(description="Parameters one token touches (full embedding and LM head included).")
    by_component: dict[str, int]
    active_by_component: dict[str, int]


class ModelCard(BaseModel):
    """Total vs active parameters, experts, memory per dtype, KV bytes and FLOPs per token."""

    model_config = ConfigDict(frozen=True)
    name: str
    family: str
    num_layers: int
    num_moe_layers: int
    moe_layer_indices: list[int]
    hidden_size: int
    vocab_size: int
    attention: str = Field(description="mha / gqa / mqa / mla.")
    num_heads: int
    num_kv_heads: int
    num_experts: int
    top_k: int
    expert_ffn_dim: int
    num_shared_experts: int
    shared_expert_ffn_dim: int
    router_scoring: str
    params: ParamsView
    active_frac: float = Field(description="active / total.")
    weight_bytes_by_dtype: dict[str, float] = Field(description="All weights stored in each dtype, bytes.")
    weight_bytes_published: float = Field(description="Weights in the published checkpoint's dtypes, bytes.")
    published_weight_dtype: str
    kv_bytes_per_token_by_dtype: dict[str, float] = Field(description="KV-cache bytes per token (all layers), by dtype.")
    forward_matmul_flops_per_token: float = Field(description="2 x active matmul parameters (incl. LM head).")
    forward_attention_flops_per_token_per_key: float = Field(description="QK^T + AV FLOPs per attended key, all layers.")
    forward_flops_per_token_at_context: dict[str, float] = Field(
        description="Forward FLOPs of one token attending to N keys, keyed by N."
    )


def attention_label(model: ModelSpec) -> str:
    a = model.attention
    if a.kind == "mla":
        return "mla"
    if a.num_kv_heads == a.num_heads:
        return "mha"
    return "mqa" if a.num_kv_heads == 1 else "gqa"


def model_card(model: ModelSpec) -> ModelCard:
    counts = count_params(model)
    moe = model.moe
    fwd = forward_flops_per_token(model)
    published = model.weight_dtype if model.expert_weight_dtype is None else f"{model.weight_dtype} (experts {model.expert_weight_dtype})"
    return ModelCard(
        name=model.name,
        family=model.family,
        num_layers=model.num_layers,
        num_moe_layers=model.num_moe_layers,
        moe_layer_indices=model.moe_layer_indices,
        hidden_size=model.hidden_size,
        vocab_size=model.vocab_size,
        attention=attention_label(model),
        num_heads=model.attention.num_heads,
        num_kv_heads=model.attention.num_kv_heads,
        num_experts=moe.num_experts if moe else 0,
        top_k=moe.top_k if moe else 0,
        expert_ffn_dim=moe.expert_ffn_dim if moe else 0,
        num_shared_experts=moe.num_shared_experts if moe else 0,
        shared_expert_ffn_dim=moe.shared_expert_ffn_dim if moe else 0,
        router_scoring=moe.router.scoring if moe else "none",
        params=ParamsView(**counts.as_dict()),
        active_frac=counts.active / counts.total,
        weight_bytes_by_dtype={d: counts.total * bytes_per_element(d) for d in WEIGHT_DTYPES},
        weight_bytes_published=weight_bytes(model, counts=counts),
        published_weight_dtype=published,
        kv_bytes_per_token_by_dtype={d: kv_bytes_per_token(model, d) for d in ("bf16", "fp8")},
        forward_matmul_flops_per_token=fwd.matmul_flops,
        forward_attention_flops_per_token_per_key=attention_score_flops(model, 1.0),
        forward_flops_per_token_at_context={
            str(n): forward_flops_per_token(model, n).total_flops for n in CARD_CONTEXTS
        },
    )
