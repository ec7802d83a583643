"""Scenario files: model + hardware + cluster, parallel layout, workload, routing, price.

A scenario keeps the three inputs apart (model, layout + workload, hardware)
and names each by reference: ``model`` is a bundled name, a model TOML or a
``config.json`` path; ``hardware`` a profile name or file. Paths are relative
to the scenario file. ``moesim schema`` prints the JSON Schema.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .catalog import load_model
from .data import scenarios_dir
from .errors import InputError, from_validation_error
from .hardware import HardwareProfile, load_hardware
from .io import read_toml
from .model import ModelSpec

PosInt = Annotated[int, Field(gt=0)]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Layout(_Spec):
    """How the model is split over GPUs (Megatron-style MoE parallel folding).

    Dense parts use ``tp x pp x dp`` GPUs; within one pipeline stage the
    ``tp x dp`` GPUs are regrouped for the experts as ``etp x ep x edp``
    (``edp`` = expert data parallel, derived).
    """

    tp: PosInt = Field(1, description="Tensor parallel size for attention and dense FFN.")
    pp: PosInt = Field(1, description="Pipeline stages.")
    dp: PosInt | None = Field(None, description="Data parallel size; default num_gpus / (tp * pp).")
    ep: PosInt = Field(1, description="Expert parallel size (experts split over ep ranks).")
    etp: PosInt = Field(1, description="Tensor parallel size inside each expert.")
    zero_stage: Literal[0, 1, 2, 3] = Field(
        0, description="ZeRO stage for training: 1 shards optimizer states, 2 also gradients, 3 (FSDP) also weights."
    )
    sequence_parallel: bool = Field(False, description="Megatron sequence parallelism with TP (activations sharded by tp).")
    num_microbatches: PosInt | None = Field(None, description="Micro-batches per step per pipeline (training).")


class RoutingSpec(_Spec):
    """Expert load: distribution of tokens over experts and how the layer executes."""

    distribution: str = Field("uniform", description="'uniform', 'zipf:S', 'dirichlet:A', or 'hist:FILE' / 'hist:a,b,...'.")
    capacity_factor: float | None = Field(None, gt=0, description="Expert capacity factor; None = dropless.")
    placement: Literal["contiguous", "round_robin", "load_aware"] = Field("contiguous", description="Expert placement.")
    redundant_experts: int = Field(0, ge=0, description="Extra expert replicas in total (EPLB), spread over EP ranks.")
    node_limit: PosInt | None = Field(
        None, description="Each token reaches at most this many nodes (DeepSeek-V3: 4); inactive when the EP group "
        "spans no more nodes than this."
    )
    dispatch_dtype: Literal["bf16", "fp8"] = Field("bf16", description="Element type of dispatched activations.")
    algorithm: Literal["direct", "hierarchical"] = Field("direct", description="All-to-all algorithm.")
    samples: PosInt = Field(200, description="Monte Carlo samples for the per-rank load tail.")
    seed: int = Field(0, description="Seed of the load model.")


class Schedule(_Spec):
    """What overlaps what (see moesim/step/schedule.py)."""

    overlap_shared_experts: bool = Field(True, description="Shared experts run while the dispatch all-to-all is in flight.")
    overlap_comm_with_compute: bool = Field(
        False, description="Two micro-batches interleave so communication hides under computation (DualPipe, two-batch overlap)."
    )
    overlap_grad_reduce: bool = Field(True, description="Gradient reduction overlaps the last micro-batch's backward.")
    overlap_slowdown_frac: float = Field(
        0.15, ge=0, lt=1,
        description="Computation slows by this fraction while overlapped communication kernels hold SMs "
        "(DeepSeek-V3 gives 20 of 132 SMs to communication: 0.15).",
    )
    launch: Literal["auto", "eager", "graph"] = Field(
        "auto",
        description="How kernels are issued: 'eager' (each kernel by the host: a pass takes max(device time, kernels "
        "x the profile's host_issue_s)), 'graph' (a captured CUDA graph: no per-kernel issue cost), or 'auto' "
        "(graph for decode, as vLLM and SGLang capture decode steps; eager for training and prefill).",
    )
    kernel_plan: Literal["fused", "grouped", "padded", "loop"] = Field(
        "fused",
        description="Kernels of the MoE FFN (moesim/layer.py): 'fused' as training frameworks and inference engines "
        "run it, or one of the reference runner's eager PyTorch implementations.",
    )


class TrainWorkload(_Spec):
    """One optimizer step of pre-training."""

    kind: Literal["train"] = "train"
    seq_len: PosInt = Field(description="Tokens per sequence.")
    global_batch_size: PosInt = Field(description="Sequences per optimizer step.")
    micro_batch_size: PosInt = Field(1, description="Sequences per micro-batch per data-parallel rank.")
    recompute: Literal["none", "selective", "full"] = Field("selective", description="Activation recomputation.")
    compute_dtype: Literal["bf16", "fp8"] = Field("bf16", description="GEMM precision.")
    master_weights_fp32: bool = Field(True, description="Mixed precision: fp32 master weights and fp32 Adam moments.")
    total_tokens: float | None = Field(None, gt=0, description="Tokens of the whole run, for GPU-hours and cost.")


class ServeWorkload(_Spec):
    """Inference: prefill of the prompt (time to first token) then decode (time per output token)."""

    kind: Literal["serve"] = "serve"
    phase: Literal["both", "prefill", "decode"] = Field("both", description="Which phase this deployment runs.")
    batch_size: PosInt = Field(description="Concurrent sequences per model replica (the decode batch).")
    prefill_batch_size: PosInt | None = Field(
        None,
        description="Sequences prefilled together. Default: 1 when the deployment also decodes (requests arrive and "
        "are prefilled one at a time, so TTFT is one prompt's prefill), batch_size for a prefill-only deployment.",
    )
    prompt_tokens: PosInt = Field(description="Prompt length, tokens.")
    output_tokens: PosInt = Field(1, description="Generated tokens per sequence.")
    compute_dtype: Literal["bf16", "fp8", "fp4"] = Field("bf16", description="GEMM precision.")
    weight_dtype: str | None = Field(None, description="Weight storage dtype; default the model's published dtype.")
    kv_dtype: Literal["bf16", "fp8"] = Field("bf16", description="KV-cache element type.")


Workload = Annotated[Union[TrainWorkload, ServeWorkload], Field(discriminator="kind")]


class Scenario(_Spec):
    """A what-if question: this model, on this hardware and layout, doing this workload."""

    name: str = Field("scenario", description="Short name.")
    description: str = Field("", description="What the scenario represents, with sources for its settings.")
    model: str = Field(description="Bundled model name, model TOML path, or config.json path.")
    hardware: str = Field(description="Hardware profile name or file.")
    num_gpus: PosInt = Field(description="Accelerators used.")
    layout: Layout = Field(default_factory=Layout)
    workload: Workload
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    schedule: Schedule = Field(default_factory=Schedule)
    price_usd_per_gpu_hour: float | None = Field(None, gt=0, description="Overrides the profile's price.")
    workspace_bytes: float = Field(
        2.5e9, ge=0, description="Per-GPU allowance for CUDA context, library workspaces and communication buffers."
    )
    base_dir: str = Field(".", description="Folder that relative paths resolve against (set by the loader).")

    @model_validator(mode="after")
    def _layout(self) -> "Scenario":
        lay = self.layout
        if self.num_gpus % (lay.tp * lay.pp):
            raise ValueError(f"num_gpus ({self.num_gpus}) must be a multiple of layout.tp x layout.pp ({lay.tp} x {lay.pp})")
        if lay.dp is not None and lay.tp * lay.pp * lay.dp != self.num_gpus:
            raise ValueError(
                f"layout.tp x layout.pp x layout.dp ({lay.tp} x {lay.pp} x {lay.dp}) must equal num_gpus ({self.num_gpus})"
            )
        dp = self.dp
        if (lay.tp * dp) % (lay.ep * lay.etp):
            raise ValueError(
                f"layout.ep x layout.etp ({lay.ep} x {lay.etp}) must divide the {lay.tp * dp} GPUs of one pipeline "
                f"stage (tp {lay.tp} x dp {dp})"
            )
        w = self.workload
        if isinstance(w, TrainWorkload):
            if w.global_batch_size % (dp * w.micro_batch_size):
                raise ValueError(
                    f"workload.global_batch_size ({w.global_batch_size}) must be a multiple of dp x micro_batch_size "
                    f"({dp} x {w.micro_batch_size})"
                )
        return self

    @property
    def dp(self) -> int:
        return self.layout.dp or self.num_gpus // (self.layout.tp * self.layout.pp)

    @property
    def edp(self) -> int:
        """Expert data-parallel size: replicas of each expert shard per pipeline stage."""
        return self.layout.tp * self.dp // (self.layout.ep * self.layout.etp)

    def resolve_model(self) -> ModelSpec:
        return load_model(_rel(self.model, self.base_dir))

    def resolve_hardware(self) -> HardwareProfile:
        return load_hardware(_rel(self.hardware, self.base_dir))


def _rel(ref: str, base: str) -> str:
    p = Path(ref)
    if p.suffix in (".toml", ".json") and not p.is_absolute():
        return str(Path(base) / p)
    return ref


# --------------------------------------------------------------------------- loading

def bundled_scenarios() -> dict[str, Path]:
    return {p.stem: p for p in sorted(scenarios_dir().glob("*.toml"))}


DEFAULT_SCENARIO = "mixtral-8x7b-serve-h100"


def parse_set(assignments: tuple[str, ...] | list[str]) -> list[tuple[list[str], Any]]:
    """Parse ``field.path=value`` overrides; values are TOML literals or bare strings."""
    out = []
    for a in assignments:
        if "=" not in a:
            raise InputError(f"expected FIELD=VALUE, got {a!r}", source="--set")
        key, _, text = a.partition("=")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out.append((key.strip().split("."), value))
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> dict[str, Any]:
    """Return a copy of ``raw`` with overrides applied (unknown fields are caught by validation)."""
    import copy

    raw = copy.deepcopy(raw)
    for path, value in overrides:
        node = raw
        for k in path[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise InputError(f"{'.'.join(path)}: {k} is not a table", source="--set")
            node = nxt
        node[path[-1]] = value
    return raw


def scenario_from_dict(raw: dict[str, Any], where: str, base_dir: str = ".") -> Scenario:
    raw = dict(raw)
    raw.setdefault("base_dir", base_dir)
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(exc, where, raw, Scenario) from None


def read_scenario_raw(name_or_path: str | Path | None) -> tuple[dict[str, Any], str, str]:
    """(raw dict, where, base folder) of a bundled scenario name or a TOML file."""
    ref = str(name_or_path) if name_or_path is not None else DEFAULT_SCENARIO
    p = Path(ref)
    if p.suffix != ".toml":
        known = bundled_scenarios()
        if ref not in known:
            raise InputError(f"unknown scenario {ref!r}; known: {', '.join(known)} (or a path to a .toml file)",
                             field="scenario")
        p = known[ref]
    return read_toml(p), str(p), str(p.parent)


def load_scenario(name_or_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """Load a bundled scenario by name or a scenario TOML, applying ``field=value`` overrides."""
    raw, where, base = read_scenario_raw(name_or_path)
    if overrides:
        raw = apply_overrides(raw, parse_set(overrides))
        where = f"{where} (with --set)"
    return scenario_from_dict(raw, where, base)
