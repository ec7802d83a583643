"""One MoE FFN layer as the runner executes it and the layer model predicts it.

:class:`MoELayerSpec` is shared by the PyTorch runner (``moesim.runner``), the
single-layer prediction (:mod:`moesim.calib.layer_model`) and the validation
cases (:mod:`moesim.calib.cases`), so a measured layer and its prediction are
always built from the same frozen description.

Sizes are counts. ``num_tokens`` is the number of tokens **per rank**: with
expert parallelism every rank routes its own ``num_tokens`` tokens and holds
``num_experts / ep_size`` experts.

Routers (Megatron-LM ``TopKRouter`` vocabulary: logits -> scores -> probs ->
routing map):

* ``softmax``: scores = softmax(logits); top-k; probs renormalised when
  ``norm_topk_prob`` (Mixtral, Qwen-MoE).
* ``sigmoid``: scores = sigmoid(logits); top-k; probs renormalised
  (DeepSeek-V3).
* group-limited (``num_groups > 1``): experts split in ``num_groups`` groups, a
  token keeps the ``topk_groups`` groups with the highest max score and takes
  its top-k inside them (DeepSeek-V2 device/group-limited routing).
* ``expert_choice``: every expert takes the ``capacity`` tokens with the
  highest softmax scores (Zhou et al., "Mixture-of-Experts with Expert Choice
  Routing", NeurIPS 2022); balanced by construction, a token may get 0..E
  experts.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Implementation = Literal["loop", "padded", "grouped"]
RouterKind = Literal["softmax", "sigmoid", "expert_choice"]
LayerDType = Literal["fp32", "bf16", "fp16"]

IMPLEMENTATIONS: tuple[str, ...] = ("loop", "padded", "grouped")
#: capacity factor used by the padded implementation and expert-choice routing when none is given
DEFAULT_CAPACITY_FACTOR = 1.25


class MoELayerSpec(BaseModel):
    """A routed-expert FFN layer (SwiGLU experts) with optional shared experts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_tokens: int = Field(gt=0, description="Tokens routed by one rank per forward, count.")
    d_model: int = Field(gt=0, description="Model width (hidden size), count of elements.")
    d_expert_ffn: int = Field(gt=0, description="Intermediate width of one routed expert, count of elements.")
    num_experts: int = Field(gt=0, description="Routed experts in the layer (all ranks), count.")
    top_k: int = Field(gt=0, description="Routed experts per token (token-choice routers), count.")
    implementation: Implementation = Field(
        "grouped", description="Runner implementation: 'loop' (per-expert reference), 'padded' (capacity, drops), "
        "'grouped' (dropless sorted grouped GEMM)."
    )
    dtype: LayerDType = Field("fp32", description="Activation and weight dtype.")
    capacity_factor: float | None = Field(
        None, gt=0, description="Expert capacity = ceil(capacity_factor * tokens * top_k / experts); padded and "
        "expert_choice only (default 1.25 there), dimensionless."
    )
    num_shared_experts: int = Field(0, ge=0, description="Always-on shared experts, count.")
    d_shared_ffn: int | None = Field(
        None, gt=0, description="Intermediate width of one shared expert, count of elements (default d_expert_ffn)."
    )
    ep_size: int = Field(1, gt=0, description="Expert-parallel ranks; experts are split evenly over them, count.")
    router: RouterKind = Field("softmax", description="Router scoring: softmax or sigmoid top-k, or expert_choice.")
    num_groups: int = Field(1, gt=0, description="Expert groups for group-limited routing, count (1 = off).")
    topk_groups: int = Field(1, gt=0, description="Groups a token may use when num_groups > 1, count.")
    norm_topk_prob: bool = Field(True, description="Renormalise the top-k probabilities to sum to 1 (softmax).")

    @model_validator(mode="after")
    def _check(self) -> "MoELayerSpec":
        e = self.num_experts
        if self.top_k > e:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed num_experts ({e})")
        if e % self.ep_size:
            raise ValueError(f"ep_size ({self.ep_size}) must divide num_experts ({e})")
        if self.capacity_factor is not None and self.implementation != "padded" and self.router != "expert_choice":
            raise ValueError(
                f"capacity_factor ({self.capacity_factor}) applies only to implementation = 'padded' or "
                f"router = 'expert_choice' (got implementation = {self.implementation!r})"
            )
        if e % self.num_groups:
            raise ValueError(f"num_groups ({self.num_groups}) must divide num_experts ({e})")
        if self.topk_groups > self.num_groups:
            raise ValueError(f"topk_groups ({self.topk_groups}) cannot exceed num_groups ({self.num_groups})")
        if self.num_groups > 1:
            if self.router == "expert_choice":
                raise ValueError("num_groups > 1 (group-limited routing) does not apply to router = 'expert_choice'")
            if self.top_k > self.topk_groups * (e // self.num_groups):
                raise ValueError(
                    f"top_k ({self.top_k}) exceeds the {self.topk_groups * (e // self.num_groups)} experts in "
                    f"topk_groups ({self.topk_groups}) groups of {e // self.num_groups}"
                )
        if self.ep_size > 1 and self.implementation == "padded":
            raise ValueError("ep_size > 1 runs the dropless grouped path; use implementation = 'grouped' or 'loop'")
        return self

    # ------------------------------------------------------------------ derived sizes

    @property
    def num_local_experts(self) -> int:
        """Experts held by one rank."""
        return self.num_experts // self.ep_size

    @property
    def shared_ffn_dim(self) -> int:
        """Total width of the shared experts (they run as one dense FFN), count."""
        return self.num_shared_experts * (self.d_shared_ffn or self.d_expert_ffn)

    @property
    def effective_capacity_factor(self) -> float:
        return self.capacity_factor if self.capacity_factor is not None else DEFAULT_CAPACITY_FACTOR

    @property
    def capacity(self) -> int:
        """Slots per expert: ``ceil(cf * T * K / E)`` (GShard / Switch), at least 1."""
        return max(1, math.ceil(self.effective_capacity_factor * self.num_tokens * self.top_k / self.num_experts))

    @property
    def num_assignments(self) -> int:
        """Token-expert pairs routed by one rank: ``T * K``, or ``E * C`` for expert choice."""
        if self.router == "expert_choice":
            return self.num_experts * min(self.capacity, self.num_tokens)
        return self.num_tokens * self.top_k

    @property
    def bytes_per_element(self) -> int:
        return 4 if self.dtype == "fp32" else 2
