"""Typed results of an estimate (pydantic, so ``--json`` prints them as they are)."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

M = TypeVar("M", bound=BaseModel)


class _R(BaseModel):
    model_config = ConfigDict(frozen=True)


_MISSING = object()


class _Plan:
    """How :func:`built` builds one class: a template of its fields in declaration order (plain defaults filled
    in, the rest :data:`_MISSING`), its default factories and its required fields."""

    __slots__ = ("names", "template", "factories", "required")

    def __init__(self, cls: type[BaseModel]):
        self.names = tuple(cls.__pydantic_fields__)
        self.template: dict[str, Any] = {}
        self.factories: dict[str, Any] = {}
        required = []
        for name, f in cls.__pydantic_fields__.items():
            if f.is_required():
                required.append(name)
                self.template[name] = _MISSING
            elif f.default_factory is not None:
                self.factories[name] = f.default_factory
                self.template[name] = _MISSING
            else:
                self.template[name] = f.default
        self.required = frozenset(required)


def _plan(cls: type[BaseModel]) -> _Plan | None:
    """None when the class needs pydantic's own model_construct (aliases, extras kept, post-init, a plain default
    that pydantic would copy: anything but None and immutable scalars)."""
    if cls.__pydantic_root_model__ or cls.__pydantic_post_init__ or cls.model_config.get("extra") == "allow":
        return None
    for f in cls.__pydantic_fields__.values():
        if f.alias is not None or f.validation_alias is not None:
            return None
        if not f.is_required() and f.default_factory is None and not (
                f.default is None or type(f.default) in (bool, int, float, str)):
            return None
    return _Plan(cls)


#: per class: its :class:`_Plan`, or None (pydantic's model_construct)
_PLANS: dict[type, _Plan | None] = {}


def built(cls: type[M], **values: Any) -> M:
    """``cls.model_construct(**values)``, the same instance (its fields in declaration order, the defaults of
    those left out, which stay out of its fields set) built without pydantic's per-field loop: trusted values
    of the right types only (the step model's results, thousands per sweep)."""
    plan = _PLANS.get(cls, False)
    if plan is False:
        plan = _PLANS[cls] = _plan(cls)
    if plan is None:
        return cls.model_construct(**values)
    fields = plan.template.copy()
    fields.update(values)  # keys already in the template keep their place
    if len(fields) != len(plan.names) or not plan.required.issubset(values):
        return cls.model_construct(**values)  # names it does not know, or a required field left out
    for k, factory in plan.factories.items():
        if k not in values:
            fields[k] = factory()
    m = cls.__new__(cls)
    object.__setattr__(m, "__dict__", fields)
    object.__setattr__(m, "__pydantic_fields_set__", set(values))
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


class OpTiming(_R):
    """One operation of one layer pass on the GPU that sets the pace."""

    kind: str = Field(description="Stage name (moesim.ops.OpKind).")
    layer: Literal["moe", "dense", "model"] = Field(description="Which layer template it belongs to.")
    time_s: float
    flops: float
    bytes_moved: float = Field(description="Device-memory bytes read and written.")
    comm_bytes: float = Field(description="Bytes this GPU sends.")
    group: str = Field(description="Communication group (tp, ep, etp, dp, edp, pp) or empty.")
    bound: str = Field(description="compute, memory, latency or communication.")
    on_critical_path: bool


class LoadSummary(_R):
    """Expert load on the EP group (per MoE layer pass)."""

    distribution: str
    ep_size: int
    tokens_per_rank: float = Field(description="Tokens entering the MoE layer on one EP rank.")
    copies_mean_per_rank: float = Field(description="Mean token copies computed per EP rank.")
    copies_max_rank_mean: float = Field(description="Expected copies on the most loaded rank.")
    copies_max_rank_p99: float = Field(description="p99 over steps of the most loaded rank's copies.")
    max_over_mean_ratio: float
    coefficient_of_variation: float
    dropped_frac: float = Field(description="Token copies dropped by the capacity factor.")
    experts_touched_per_rank: float = Field(description="Distinct local experts that receive a token (weights read).")
    local_experts: float


class MemoryResult(_R):
    by_category_bytes: dict[str, float]
    total_bytes: float
    capacity_bytes: float
    headroom_bytes: float
    fits: bool
    stage: int = Field(description="Pipeline stage with the largest need.")


class CostResult(_R):
    usd_per_gpu_hour: float | None
    gpu_hours_per_million_tokens: float
    usd_per_million_tokens: float | None
    run_tokens: float | None = None
    run_gpu_hours: float | None = None
    run_usd: float | None = None
    run_days: float | None = None


class Estimate(_R):
    """Everything ``moesim estimate`` reports. Times are per step (training) or per phase (serving)."""

    scenario: str
    model: str
    hardware: str
    num_gpus: int
    workload: Literal["train", "serve"]
    phase: str
    layout: dict[str, int | bool]
    fits: bool
    memory_per_gpu_bytes: float
    memory: MemoryResult
    tokens_per_s: float = Field(description="Training: tokens per second; serving: output tokens/s (prefill phase: prompt tokens/s).")
    tokens_per_s_per_gpu: float
    mfu_frac: float = Field(description="Model FLOPs / (GPUs x dense peak of the compute dtype).")
    mfu_bf16_frac: float = Field(description="The same against the dense BF16 peak (the usual convention).")
    model_flops_per_token: float
    step_s: float | None = Field(None, description="Training step time with the expected straggler.")
    step_p99_s: float | None = Field(None, description="Training step time with the p99 straggler.")
    ttft_s: float | None = Field(None, description="Time to first token: prefill of the batch.")
    tpot_s: float | None = Field(None, description="Time per output token at the mean context.")
    tpot_p99_s: float | None = None
    max_batch_size: int | None = Field(None, description="Largest batch per replica whose KV cache fits.")
    time_by_stage_s: dict[str, float] = Field(description="Time per step (train) or per token/pass by stage, critical-path share.")
    bound_by_stage: dict[str, str]
    ops: list[OpTiming] = Field(description="One forward pass of one MoE (and dense) layer.")
    load: LoadSummary | None
    cost: CostResult
    notes: list[str] = Field(default_factory=list)
