"""Typed results of an estimate (pydantic, so ``--json`` prints them as they are)."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

M = TypeVar("M", bound=BaseModel)


class _R(BaseModel):
    model_config = ConfigDict(frozen=True)


#: per class: (field names in declaration order, {field: default factory or None for a None default}); None when
#: the class needs pydantic's own model_construct (aliases, extras kept, post-init, non-None plain defaults)
_PLANS: dict[type, tuple[tuple[str, ...], dict[str, Any]] | None] = {}


def _plan(cls: type[BaseModel]) -> tuple[tuple[str, ...], dict[str, Any]] | None:
    if cls.__pydantic_root_model__ or cls.__pydantic_post_init__ or cls.model_config.get("extra") == "allow":
        return None
    defaults: dict[str, Any] = {}
    for name, f in cls.__pydantic_fields__.items():
        if f.alias is not None or f.validation_alias is not None:
            return None
        if f.is_required():
            continue
        if f.default_factory is not None:
            defaults[name] = f.default_factory
        elif f.default is None:
            defaults[name] = None
        else:
            return None
    return tuple(cls.__pydantic_fields__), defaults


def built(cls: type[M], **values: Any) -> M:
    """``cls.model_construct(**values)``, the same instance (its fields in declaration order, the defaults of
    those left out, which stay out of its fields set) built without pydantic's per-field loop: trusted values
    of the right types only (the step model's results, thousands per sweep)."""
    plan = _PLANS.get(cls, False)
    if plan is False:
        plan = _PLANS[cls] = _plan(cls)
    if plan is None:
        return cls.model_construct(**values)
    names, defaults = plan
    try:
        if len(values) != len(names):
            raise KeyError
        fields = {k: values[k] for k in names}
        given = set(values)
    except KeyError:
        fields = {}
        for k in names:
            if k in values:
                fields[k] = values[k]
            elif k in defaults:
                factory = defaults[k]
                fields[k] = factory() if factory is not None else None
            else:  # a required field left out: model_construct leaves it unset too
                continue
        given = {k for k in values if k in fields}
    m = cls.__new__(cls)
    object.__setattr__(m, "__dict__", fields)
    object.__setattr__(m, "__pydantic_fields_set__", given)
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
