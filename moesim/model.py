"""The MoE transformer vocabulary: one frozen spec for every model family.

Sizes are counts (no unit suffix); ``num_`` marks a count of things. The spec
describes the *architecture*; parameter counts, FLOPs and bytes are derived by
pure functions in :mod:`moesim.params` and :mod:`moesim.flops`.

Layer selection (which decoder layers carry an MoE FFN) is a discriminated
union so that each family's rule is written once:

* ``all``: every layer (Mixtral, OLMoE, gpt-oss, Qwen3-MoE).
* ``interleaved``: layer ``i`` is MoE when ``(i + 1) % step == 0`` (Llama 4's
  ``interleave_moe_layer_step``, Qwen2-MoE's ``decoder_sparse_step``), except
  the layers listed in ``dense_layers`` (Qwen's ``mlp_only_layers``).
* ``first_k_dense``: MoE when ``i >= k and i % step == 0``, as DeepSeek's
  ``first_k_dense_replace`` and ``moe_layer_freq`` define it.
* ``explicit``: a list of layer indices.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import limits as L
from .dtypes import DType

# Every count and size is bounded by its physical range (moesim/limits.py).
Layers = L.count(L.LAYERS)
LayerIndex = L.count(L.LAYER_INDEX)
Width = L.count(L.WIDTH)
WidthOrZero = L.count(L.WIDTH_OR_ZERO)
Heads = L.count(L.HEADS)
Experts = L.count(L.EXPERTS)
ExpertsOrZero = L.count(L.EXPERTS_OR_ZERO)
Context = L.count(L.CONTEXT)
Vocab = L.count(L.VOCAB)
MTPModules = L.count(L.MTP_MODULES)
Name = L.text(L.NAME)
LayerList = Annotated[list[LayerIndex], Field(max_length=int(L.LAYERS.hi))]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def model_copy(self, *, update=None, deep: bool = False):  # noqa: ANN001, ANN201
        """pydantic's copy, less the cached derived values when ``update`` changes fields (they would be stale)."""
        return _drop_cached(super().model_copy(update=update, deep=deep), update)


def _drop_cached(obj, update):  # noqa: ANN001, ANN202
    """``obj`` without the cached properties its class computes from its fields, when ``update`` changed them."""
    if update:
        fields = type(obj).model_fields
        for name in [k for k in obj.__dict__ if k not in fields]:  # cached properties, params' counts
            del obj.__dict__[name]
    return obj


# ------------------------------------------------------------------ attention

class GQAAttention(_Spec):
    """Multi-head (num_kv_heads == num_heads), grouped-query or multi-query attention."""

    kind: Literal["gqa"] = "gqa"
    num_heads: Heads = Field(description="Query heads.")
    num_kv_heads: Heads = Field(description="Key/value heads (= num_heads for MHA, 1 for MQA).")
    head_dim: Width = Field(description="Per-head dimension; may differ from hidden_size / num_heads (gpt-oss, Qwen3).")
    qkv_bias: bool = Field(False, description="Q, K, V projections carry a bias (Qwen2, gpt-oss).")
    out_bias: bool = Field(False, description="Output projection carries a bias (gpt-oss).")
    qk_norm: bool = Field(False, description="Per-head RMSNorm on q and k (Qwen3, OLMoE norms the full q/k width).")
    qk_norm_full_width: bool = Field(False, description="q/k norm spans all heads (OLMoE) rather than one head_dim.")
    sinks: bool = Field(False, description="Learned attention-sink logit per head (gpt-oss).")
    sliding_window: Context | None = Field(None, description="Window, tokens, for the layers listed in sliding_layers.")
    sliding_layers: Literal["none", "all", "even", "odd"] = Field(
        "none", description="Which layers use the sliding window (gpt-oss alternates: even layers)."
    )

    @model_validator(mode="after")
    def _heads(self) -> "GQAAttention":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.sliding_layers != "none" and self.sliding_window is None:
            raise ValueError(f"sliding_layers = {self.sliding_layers!r} needs sliding_window")
        _attention_width(self.num_heads, self.head_dim, "head_dim")
        return self

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def qk_head_dim(self) -> int:
        return self.head_dim

    @property
    def v_head_dim(self) -> int:
        return self.head_dim


class MLAAttention(_Spec):
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank compressed K/V (and optionally Q).

    KV cache stores the compressed latent (kv_lora_rank) plus the decoupled rope
    key (qk_rope_head_dim) per token per layer (DeepSeek-V2 paper, section 2.1).
    """

    kind: Literal["mla"] = "mla"
    num_heads: Heads = Field(description="Attention heads.")
    q_lora_rank: Width | None = Field(None, description="Rank of the query down-projection; None = full-rank q.")
    kv_lora_rank: Width = Field(description="Rank of the compressed KV latent.")
    qk_nope_head_dim: Width = Field(description="Per-head q/k dimension without rope.")
    qk_rope_head_dim: Width = Field(description="Per-head decoupled rope dimension (the rope key is shared by heads).")
    v_head_dim: Width = Field(description="Per-head value dimension.")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    sliding_window: None = None
    sliding_layers: Literal["none"] = "none"

    @model_validator(mode="after")
    def _width(self) -> "MLAAttention":
        _attention_width(self.num_heads, max(self.qk_head_dim, self.v_head_dim), "qk / v head dims")
        return self


def _attention_width(heads: int, head_dim: int, what: str) -> None:
    """Refuse heads x head_dim over :data:`moesim.limits.ATTENTION_WIDTH` (it sizes the KV cache and projections)."""
    if heads * head_dim > L.ATTENTION_WIDTH.hi:
        raise ValueError(f"num_heads x {what} ({heads:,} x {head_dim:,}) must be at most {int(L.ATTENTION_WIDTH.hi):,} "
                         f"({L.ATTENTION_WIDTH.why})")


Attention = Annotated[Union[GQAAttention, MLAAttention], Field(discriminator="kind")]


# ------------------------------------------------------------------ which layers are MoE

class AllLayers(_Spec):
    kind: Literal["all"] = "all"

    def is_moe(self, i: int) -> bool:
        return True


class Interleaved(_Spec):
    kind: Literal["interleaved"] = "interleaved"
    step: Layers = Field(description="Layer i is MoE when (i + 1) % step == 0.")
    dense_layers: LayerList = Field(default_factory=list, description="Layers forced dense (Qwen mlp_only_layers).")

    @cached_property
    def _dense(self) -> frozenset[int]:
        return frozenset(self.dense_layers)

    def is_moe(self, i: int) -> bool:
        return (i + 1) % self.step == 0 and i not in self._dense


class FirstKDense(_Spec):
    kind: Literal["first_k_dense"] = "first_k_dense"
    k: LayerIndex = Field(description="The first k layers are dense (DeepSeek first_k_dense_replace).")
    step: Layers = Field(1, description="After them, layer i is MoE when i % step == 0 (DeepSeek moe_layer_freq).")

    def is_moe(self, i: int) -> bool:
        return i >= self.k and i % self.step == 0


class ExplicitLayers(_Spec):
    kind: Literal["explicit"] = "explicit"
    layers: LayerList = Field(description="0-based indices of the MoE layers.")

    @cached_property
    def _moe(self) -> frozenset[int]:
        return frozenset(self.layers)

    def is_moe(self, i: int) -> bool:
        return i in self._moe


MoELayers = Annotated[Union[AllLayers, Interleaved, FirstKDense, ExplicitLayers], Field(discriminator="kind")]


# ------------------------------------------------------------------ router and experts

class RouterSpec(_Spec):
    """How tokens pick experts (Megatron vocabulary: logits -> scores -> probs -> routing_map)."""

    scoring: Literal["softmax", "sigmoid"] = Field("softmax", description="Score function over router logits.")
    num_groups: Experts = Field(1, description="Expert groups for group-limited routing (DeepSeek n_group).")
    topk_groups: Experts = Field(1, description="Groups a token may use (DeepSeek topk_group); = num_groups disables it.")
    norm_topk_prob: bool = Field(True, description="Renormalise the top-k probabilities to sum to 1.")
    bias: bool = Field(False, description="Router linear layer has a bias (gpt-oss).")
    score_correction_bias: bool = Field(False, description="Aux-loss-free per-expert bias (DeepSeek-V3).")

    @model_validator(mode="after")
    def _groups(self) -> "RouterSpec":
        if self.topk_groups > self.num_groups:
            raise ValueError(f"topk_groups ({self.topk_groups}) cannot exceed num_groups ({self.num_groups})")
        return self


class MoESpec(_Spec):
    """The routed and shared experts of one MoE FFN."""

    num_experts: Experts = Field(description="Routed experts per MoE layer.")
    top_k: Experts = Field(description="Routed experts each token uses.")
    expert_ffn_dim: Width = Field(description="Intermediate width of one routed expert.")
    num_shared_experts: ExpertsOrZero = Field(0, description="Always-on shared experts.")
    shared_expert_ffn_dim: WidthOrZero = Field(
        0, description="Intermediate width of ONE shared expert (Qwen2-MoE: the full shared_expert_intermediate_size)."
    )
    shared_expert_gate: bool = Field(False, description="A sigmoid gate (hidden -> 1) scales the shared expert (Qwen2-MoE).")
    expert_bias: bool = Field(False, description="Expert linear layers carry biases (gpt-oss).")
    router: RouterSpec = Field(default_factory=RouterSpec)

    @model_validator(mode="after")
    def _check(self) -> "MoESpec":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed num_experts ({self.num_experts})")
        if self.num_shared_experts and not self.shared_expert_ffn_dim:
            raise ValueError(f"num_shared_experts = {self.num_shared_experts} needs shared_expert_ffn_dim > 0")
        if self.num_experts % self.router.num_groups:
            raise ValueError(
                f"num_experts ({self.num_experts}) must be divisible by router.num_groups ({self.router.num_groups})"
            )
        if self.router.num_groups > 1:
            per_group = self.num_experts // self.router.num_groups
            if self.top_k > self.router.topk_groups * per_group:
                raise ValueError(
                    f"top_k ({self.top_k}) exceeds the experts in topk_groups ({self.router.topk_groups}) groups "
                    f"of {per_group}"
                )
        return self


class MTPSpec(_Spec):
    """DeepSeek-V3 multi-token prediction modules (arXiv 2412.19437, section 2.2).

    Each module is one transformer block of the main model's MoE kind, a linear
    projection 2h -> h and two RMSNorms, and shares the embedding and LM head.
    """

    num_modules: MTPModules = Field(0, description="MTP depth D (DeepSeek-V3: 1).")
    own_embedding_and_head: bool = Field(
        False, description="Count a separate copy of embedding and head per module (as the published checkpoint stores)."
    )


class ModelSpec(_Spec):
    """An MoE (or dense) decoder-only transformer."""

    name: Name = Field(description="Display name.")
    family: Name = Field("custom", description="Family or HF model_type it came from.")
    num_layers: Layers = Field(description="Decoder layers.")
    hidden_size: Width = Field(description="Model width d_model.")
    vocab_size: Vocab = Field(description="Vocabulary size.")
    tie_embeddings: bool = Field(False, description="LM head shares the embedding matrix.")
    attention: Attention
    gated_ffn: bool = Field(True, description="3-matrix gated FFN (SwiGLU); False = 2-matrix (up, down).")
    ffn_bias: bool = Field(False, description="Dense/shared FFN linears carry biases.")
    dense_ffn_dim: WidthOrZero = Field(0, description="Intermediate width of the dense FFN in non-MoE layers.")
    moe: MoESpec | None = Field(None, description="Experts; None for a dense model.")
    moe_layers: MoELayers = Field(default_factory=AllLayers, description="Which layers carry the MoE FFN.")
    norm: Literal["rmsnorm", "layernorm", "layernorm_nobias"] = Field(
        "rmsnorm", description="Normalisation; layernorm carries a bias (2h params), rmsnorm and layernorm_nobias h."
    )
    mtp: MTPSpec = Field(default_factory=MTPSpec)
    weight_dtype: DType = Field("bf16", description="Storage dtype of the published weights.")
    expert_weight_dtype: DType | None = Field(
        None, description="Storage dtype of routed-expert weights when it differs (gpt-oss: mxfp4)."
    )
    max_context: Context | None = Field(
        None, description="Trained context length, tokens; a serving scenario with longer sequences is refused."
    )

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        moe_idx = [i for i in range(self.num_layers) if self.moe is not None and self.moe_layers.is_moe(i)]
        if self.moe is not None and not moe_idx:
            raise ValueError(f"moe_layers selects no layer out of num_layers = {self.num_layers}")
        if isinstance(self.moe_layers, ExplicitLayers):
            bad = [i for i in self.moe_layers.layers if i >= self.num_layers]
            if bad:
                raise ValueError(f"moe_layers.layers {bad} out of range for num_layers = {self.num_layers}")
        if len(moe_idx) < self.num_layers and self.dense_ffn_dim == 0:
            raise ValueError(
                f"{self.num_layers - len(moe_idx)} dense layer(s) need dense_ffn_dim > 0 (moe_layers = {self.moe_layers.kind})"
            )
        # params imports this module; uncached: model_copy(update=...) would carry a cached count over
        from .params import _count_params

        total = _count_params(self).total
        if total > L.PARAMS.hi:
            raise ValueError(f"the model has {total:.3g} parameters; at most {L.PARAMS.hi:.3g} ({L.PARAMS.why}): "
                             "check num_layers, hidden_size, the experts and the FFN widths")
        return self

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the whole spec: equal contents, equal key (the step model's caches are keyed on it)."""
        import hashlib

        return hashlib.sha1(self.model_dump_json().encode()).hexdigest()

    @cached_property
    def moe_layer_indices(self) -> list[int]:
        """0-based indices of the MoE layers (computed once per spec; do not mutate)."""
        if self.moe is None:
            return []
        return [i for i in range(self.num_layers) if self.moe_layers.is_moe(i)]

    @cached_property
    def num_sliding_layers(self) -> int:
        """Layers that use the sliding window."""
        return sum(1 for i in range(self.num_layers) if self.is_sliding(i))

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layer_indices)

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def ffn_matrices(self) -> int:
        return 3 if self.gated_ffn else 2

    def is_sliding(self, layer: int) -> bool:
        a = self.attention
        return {"none": False, "all": True, "even": layer % 2 == 0, "odd": layer % 2 == 1}[a.sliding_layers]
