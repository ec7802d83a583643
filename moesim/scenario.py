"""Scenario files: model + hardware + cluster, parallel layout, workload, routing, price.

A scenario keeps the three inputs apart (model, layout + workload, hardware)
and names each by reference: ``model`` is a bundled name, a model TOML or a
``config.json`` path; ``hardware`` a profile name or file. Paths are relative
to the scenario file. ``moesim schema`` prints the JSON Schema.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import limits as L
from .catalog import load_model
from .dtypes import DType
from .data import scenarios_dir
from .errors import InputError, from_validation_error
from .hardware import HardwareProfile, load_hardware
from .filecache import parsed
from .io import decode_text, max_nesting, parse_toml, read_bytes
from .model import ModelSpec

# Every count, size and price is bounded by its physical range (moesim/limits.py).
GPUs = L.count(L.GPUS)
Sequences = L.count(L.SEQUENCES)
Tokens = L.count(L.CONTEXT)


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Layout(_Spec):
    """How the model is split over GPUs (Megatron-style MoE parallel folding).

    Dense parts use ``tp x pp x dp`` GPUs; within one pipeline stage the
    ``tp x dp`` GPUs are regrouped for the experts as ``etp x ep x edp``
    (``edp`` = expert data parallel, derived).
    """

    tp: GPUs = Field(1, description="Tensor parallel size for attention and dense FFN.")
    pp: GPUs = Field(1, description="Pipeline stages.")
    dp: GPUs | None = Field(None, description="Data parallel size; default num_gpus / (tp * pp).")
    ep: GPUs = Field(1, description="Expert parallel size (experts split over ep ranks).")
    etp: GPUs = Field(
        1, description="Tensor parallel size inside each expert. Default: tp when ep is 1 (experts sharded over the "
        "TP ranks, as Megatron-Core's expert_tensor_parallel_size defaults to the TP size and vLLM's tensor "
        "parallelism shards every expert), else 1.")
    zero_stage: Literal[0, 1, 2, 3] = Field(
        0, description="ZeRO stage for training: 1 shards optimizer states, 2 also gradients, 3 (FSDP) also weights."
    )
    sequence_parallel: bool = Field(False, description="Megatron sequence parallelism with TP (activations sharded by tp).")
    num_microbatches: L.count(L.MICROBATCHES) | None = Field(None, description="Micro-batches per step per pipeline (training).")
    virtual_stages: int = Field(
        1, ge=1, le=64,
        description="Virtual pipeline stages per GPU (Megatron's interleaved 1F1B, --virtual-pipeline-model-parallel-"
        "size): each GPU holds this many chunks of layers, and the bubble shrinks by this factor; 1 = plain 1F1B.")

    @model_validator(mode="before")
    @classmethod
    def _default_etp(cls, data: Any) -> Any:
        """``etp`` left out: ``tp`` when there is no expert parallelism (``ep`` 1), else 1."""
        if isinstance(data, dict) and "etp" not in data:
            tp, ep = data.get("tp", 1), data.get("ep", 1)
            if ep == 1 and isinstance(tp, int) and not isinstance(tp, bool) and tp > 1:
                data = {**data, "etp": tp}
        return data


class RoutingSpec(_Spec):
    """Expert load: distribution of tokens over experts and how the layer executes."""

    distribution: L.text(L.DISTRIBUTION) = Field("uniform", description="'uniform', 'zipf:S', 'dirichlet:A', or 'hist:FILE' / 'hist:a,b,...'.")
    capacity_factor: L.number(L.CAPACITY_FACTOR) | None = Field(None, description="Expert capacity factor; None = dropless.")
    placement: Literal["contiguous", "round_robin", "load_aware"] = Field("contiguous", description="Expert placement.")
    redundant_experts: L.count(L.REDUNDANT_EXPERTS) = Field(0, description="Extra expert replicas in total (EPLB), spread over EP ranks.")
    node_limit: L.count(L.NODES) | None = Field(
        None, description="Each token reaches at most this many nodes (DeepSeek-V3: 4); inactive when the EP group "
        "spans no more nodes than this."
    )
    dispatch_dtype: Literal["bf16", "fp8"] = Field("bf16", description="Element type of dispatched activations.")
    algorithm: Literal["direct", "hierarchical"] = Field("direct", description="All-to-all algorithm.")
    samples: L.count(L.SAMPLES) = Field(200, description="Monte Carlo samples for the per-rank load tail.")
    seed: L.count(L.SEED) = Field(0, description="Seed of the load model (0 to 2**63 - 1).")


class Schedule(_Spec):
    """What overlaps what (see moesim/step/schedule.py)."""

    overlap_shared_experts: bool = Field(True, description="Shared experts run while the dispatch all-to-all is in flight.")
    overlap_comm_with_compute: bool = Field(
        False, description="Two micro-batches interleave so communication hides under computation (DualPipe, two-batch overlap)."
    )
    overlap_grad_reduce: bool = Field(
        True, description="The data-parallel gradient reduction overlaps the backward: the last micro-batch's, or "
        "each micro-batch's where ZeRO-2+ shards the gradients (Megatron-Core overlap_grad_reduce).")
    overlap_param_gather: bool = Field(
        True, description="ZeRO-1+: the all-gather of the updated bf16 weights overlaps the next step's first "
        "forward (Megatron-Core overlap_param_gather); ZeRO-3: each micro-batch's all-gathers overlap its forward "
        "and backward (FSDP's prefetch).")
    overlap_slowdown_frac: float = Field(
        0.15, ge=0, lt=1, allow_inf_nan=False,
        description="Computation slows by this fraction while overlapped communication kernels hold SMs "
        "(DeepSeek-V3 gives 20 of 132 SMs to communication: 0.15).",
    )
    pipeline: Literal["1f1b", "dualpipe"] = Field(
        "1f1b",
        description="Pipeline schedule of training: '1f1b' (interleaved with layout.virtual_stages > 1) or 'dualpipe' "
        "(DeepSeek-V3's bidirectional schedule: bubble (pp/2 - 1)(F&B + B - 3W), two copies of the parameters, pp "
        "even).",
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
    grouped_gemm: Literal["auto", "per_expert", "grouped"] = Field(
        "auto",
        description="How the fused plan issues the routed experts' GEMMs: 'per_expert' (Transformer Engine's grouped "
        "linear, Megatron-Core's default in training: one cuBLAS GEMM per local expert over 4 streams, each "
        "expert's input quantised on its own), 'grouped' (one grouped kernel for all experts: vLLM's and SGLang's "
        "fused MoE, DeepGEMM, torch._grouped_mm, Megatron-Core's moe_use_grouped_tensor), or 'auto' (per_expert for "
        "training, grouped for serving).",
    )
    def per_expert_gemms(self, training: bool) -> bool:
        """Whether the fused plan's routed-expert GEMMs run one per local expert (``grouped_gemm``)."""
        return self.kernel_plan == "fused" and (
            self.grouped_gemm == "per_expert" or (self.grouped_gemm == "auto" and training))

    gather_in_gemm: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Fused plan at EP 1: the up GEMM gathers each token copy's row itself (vLLM's and SGLang's Triton "
        "fused MoE) instead of a separate permute pass (Megatron-Core, TensorRT-LLM's MoE plugin). 'auto': on for "
        "serving, off for training.",
    )


#: Activation recomputation (TrainWorkload.recompute)
Recompute = Literal["none", "selective", "full"]
RECOMPUTE_CHOICES: tuple[str, ...] = get_args(Recompute)
#: Megatron-Core's recompute modules (``--recompute-modules``) that the step model runs again (docs/step-model.md,
#: section 2); its "moe" (the whole MoE layer, all-to-all included) is not among them
RecomputeModule = Literal["core_attn", "layernorm", "mla_up_proj", "moe_act", "mlp", "shared_experts"]
RECOMPUTE_MODULES: tuple[str, ...] = get_args(RecomputeModule)


class TrainWorkload(_Spec):
    """One optimizer step of pre-training."""

    kind: Literal["train"] = "train"
    seq_len: Tokens = Field(description="Tokens per sequence.")
    global_batch_size: Sequences = Field(description="Sequences per optimizer step.")
    micro_batch_size: Sequences = Field(1, description="Sequences per micro-batch per data-parallel rank.")
    recompute: Recompute = Field(
        "selective",
        description="Activation recomputation: 'none' (every activation kept), 'selective' (the backward runs "
        "recompute_modules again and memory does not keep them; by default the FFN activations and MLA's "
        "up-projections) or 'full' (each layer keeps its input and runs its whole forward again).")
    recompute_modules: list[RecomputeModule] | None = Field(
        None,
        description="With recompute 'selective': the modules that run again in the backward, by Megatron-Core's "
        "names (--recompute-modules): 'core_attn' (the attention core), 'layernorm' (the input and pre-FFN norms), "
        "'mla_up_proj' (MLA's query and key/value up-projections), 'moe_act' (the routed experts' activation), "
        "'mlp' (the dense layers' whole FFN), 'shared_experts' (the shared experts' whole FFN). Default: "
        "DeepSeek-V3's selective recomputation, MLA's up-projections and every FFN's activation "
        "(docs/step-model.md, section 2). A --set or --vary that turns recompute to 'none' or 'full' drops the "
        "list the file names.")
    compute_dtype: Literal["bf16", "fp8"] = Field("bf16", description="GEMM precision.")
    fp8_scaling: Literal["block", "delayed", "current"] = Field(
        "block",
        description="How an FP8 recipe scales the GEMM inputs (compute_dtype 'fp8'): 'block', a scale per block of "
        "elements computed in the cast kernel (MXFP8, DeepSeek-V3's 1 x 128 tiles, Transformer Engine's "
        "Float8BlockScaling; 1/32 byte of scales per element); 'delayed', one scale per tensor from earlier "
        "steps' amax (Float8 DelayedScaling: the cast kernel records this step's); 'current', one scale per "
        "tensor from the tensor itself (Float8CurrentScaling, Megatron's 'tensorwise', NeMo's fp8_cs): a separate "
        "amax pass reads every input before it is cast (docs/step-model.md, section 3).")
    master_weights_fp32: bool = Field(True, description="Mixed precision: fp32 master weights and fp32 Adam moments.")
    grad_dtype: Literal["fp32", "bf16"] | None = Field(
        None,
        description="Element type of the main gradient buffer: the weight-gradient GEMMs accumulate into it over the "
        "micro-batches, it is held in memory, and the data-parallel reduction sends it. Default: fp32 with fp32 "
        "master weights (Megatron-LM, which accumulates and reduces bf16 training's gradients in fp32), else bf16. "
        "'bf16' is Megatron-LM's --grad-reduce-in-bf16 and the grad_reduce_in_fp32 = False of Megatron-Bridge's "
        "performance recipes.")
    total_tokens: L.number(L.RUN_TOKENS) | None = Field(None, description="Tokens of the whole run, for GPU-hours and cost.")

    @property
    def grad_bytes_per_element(self) -> float:
        """Bytes of one main-gradient element (:attr:`grad_dtype` with its default resolved): 4 for fp32, 2 for
        bf16; the wgrad GEMMs' accumulation, the gradient memory, the reduction and Adam's read all use it."""
        dt = self.grad_dtype or ("fp32" if self.master_weights_fp32 else "bf16")
        return 4.0 if dt == "fp32" else 2.0

    @model_validator(mode="after")
    def _tokens(self) -> "TrainWorkload":
        mods = self.recompute_modules
        if mods is not None:
            if self.recompute != "selective":
                raise ValueError(f"recompute_modules applies to recompute 'selective' (this workload has "
                                 f"{self.recompute!r}); set recompute = 'selective' or drop recompute_modules")
            if not mods:
                raise ValueError("recompute_modules is empty; list one or more of "
                                 f"{', '.join(map(repr, RECOMPUTE_MODULES))}, or set recompute = 'none'")
            twice = sorted({m for m in mods if mods.count(m) > 1})
            if twice:
                raise ValueError(f"recompute_modules lists {', '.join(map(repr, twice))} more than once")
        if "fp8_scaling" in self.model_fields_set and self.compute_dtype != "fp8" and self.fp8_scaling != "block":
            raise ValueError(f"fp8_scaling {self.fp8_scaling!r} applies to compute_dtype 'fp8' (this workload "
                             f"computes in {self.compute_dtype!r}); set compute_dtype = 'fp8' or drop fp8_scaling")
        _step_tokens(self.global_batch_size * self.seq_len, "global_batch_size", "global_batch_size x seq_len",
                     f"{self.global_batch_size:,} x {self.seq_len:,}")
        return self


class ServeWorkload(_Spec):
    """Inference: prefill of the prompt (time to first token) then decode (time per output token)."""

    kind: Literal["serve"] = "serve"
    phase: Literal["both", "prefill", "decode"] = Field("both", description="Which phase this deployment runs.")
    batch_size: Sequences = Field(description="Concurrent sequences per model replica (the decode batch).")
    prefill_batch_size: Sequences | None = Field(
        None,
        description="Sequences prefilled together. Default: 1 when the deployment also decodes (requests arrive and "
        "are prefilled one at a time, so TTFT is one prompt's prefill), batch_size for a prefill-only deployment.",
    )
    prompt_tokens: Tokens = Field(description="Prompt length, tokens.")
    cached_prompt_tokens: int = Field(
        0, ge=0,
        description="Leading prompt tokens whose KV cache a request finds already resident (prefix caching: a shared "
        "system prompt, the earlier turns of a conversation; vLLM's automatic prefix caching, SGLang's radix cache). "
        "They are not computed; the rest of the prompt attends to them. Less than prompt_tokens; 0 = no prefix "
        "cache.")
    output_tokens: Tokens = Field(1, description="Generated tokens per sequence.")
    compute_dtype: Literal["bf16", "fp8", "fp4"] = Field("bf16", description="GEMM precision.")
    weight_dtype: DType | None = Field(None, description="Weight storage dtype; default the model's published dtype.")
    expert_compute_dtype: Literal["bf16", "fp8", "fp4"] | None = Field(
        None,
        description="GEMM precision of the routed experts when it differs from compute_dtype: NVFP4 / MXFP4 "
        "checkpoints quantise the MoE experts only (nvidia/DeepSeek-R1-FP4 keeps attention and the dense layers "
        "in FP8); default compute_dtype.")
    expert_weight_dtype: DType | None = Field(
        None,
        description="Storage dtype of the routed experts' weights when it differs from the other weights; default "
        "weight_dtype when that is set, else the model's published expert dtype.")
    kv_dtype: Literal["bf16", "fp8"] = Field("bf16", description="KV-cache element type.")
    fp8_scaling: Literal["block", "static", "dynamic"] = Field(
        "block",
        description="How FP8 GEMM inputs are scaled (compute_dtype or expert_compute_dtype 'fp8'): 'block', a scale "
        "per block of elements computed in the cast kernel (DeepSeek-V3 / R1's FP8 checkpoints, weight_block_size "
        "[128, 128], run with 1 x 128 activation tiles); 'static', one scale per tensor calibrated ahead of time "
        "(TensorRT Model Optimizer's FP8_DEFAULT_CFG, AMD Quark's w_fp8_a_fp8); 'dynamic', one scale per tensor "
        "from the tensor itself, a separate amax pass before each cast (docs/step-model.md, section 2).")
    mtp_draft_tokens: int = Field(
        0, ge=0, le=8,
        description="Speculative decoding with the model's multi-token-prediction modules (DeepSeek-V3 serves this "
        "way): tokens drafted per sequence per decode iteration and verified in the next one; 0 = off.")
    mtp_acceptance_rate: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False,
        description="Probability that a drafted token is accepted, given the one before it was (DeepSeek-V3 reports "
        "85-90% for its second token); required with mtp_draft_tokens.")
    memory_utilization_frac: float = Field(
        0.9, gt=0, le=1, allow_inf_nan=False,
        description="Share of each GPU's memory the engine may fill with weights, KV cache and activations; the rest "
        "is its workspace (vLLM's gpu_memory_utilization, default 0.9). Ignored when workspace_bytes is set.")

    @property
    def computed_prompt_tokens(self) -> int:
        """Prompt tokens a prefill computes: the prompt less its cached prefix."""
        return self.prompt_tokens - self.cached_prompt_tokens

    @property
    def prefill_keys_per_token(self) -> float:
        """Keys each computed prompt token attends on average (causal): the cached prefix, then half the rest."""
        return self.cached_prompt_tokens + (self.computed_prompt_tokens + 1) / 2

    @property
    def context_tokens(self) -> int:
        """Tokens one sequence holds at the end: the prompt, plus the output unless only prefilled."""
        return self.prompt_tokens + (self.output_tokens if self.phase != "prefill" else 0)

    @model_validator(mode="after")
    def _tokens(self) -> "ServeWorkload":
        if ("fp8_scaling" in self.model_fields_set and self.fp8_scaling != "block"
                and "fp8" not in (self.compute_dtype, self.expert_compute_dtype)):
            raise ValueError(f"fp8_scaling {self.fp8_scaling!r} applies to FP8 GEMMs (this workload computes in "
                             f"{self.compute_dtype!r}); set compute_dtype = 'fp8' or drop fp8_scaling")
        if self.mtp_draft_tokens and self.mtp_acceptance_rate is None:
            raise ValueError(f"mtp_draft_tokens = {self.mtp_draft_tokens} needs mtp_acceptance_rate (0 to 1, the "
                             "probability that a drafted token is accepted)")
        if self.cached_prompt_tokens >= self.prompt_tokens:
            raise ValueError(f"cached_prompt_tokens ({self.cached_prompt_tokens:,}) must be less than prompt_tokens "
                             f"({self.prompt_tokens:,}): the last prompt token is always computed (its logits give "
                             "the first output token)")
        if self.cached_prompt_tokens and self.phase == "decode":
            raise ValueError("cached_prompt_tokens applies to prefill; this deployment only decodes (phase = decode: "
                             "its requests arrive with their whole prompt's KV cache)")
        if self.mtp_draft_tokens and self.phase == "prefill":
            raise ValueError("mtp_draft_tokens applies to decode; this deployment only prefills (phase = prefill)")
        ctx = self.context_tokens
        if ctx > L.CONTEXT.hi:
            raise ValueError(f"prompt_tokens + output_tokens ({self.prompt_tokens:,} + {self.output_tokens:,}) must "
                             f"be at most {int(L.CONTEXT.hi):,} tokens per sequence ({L.CONTEXT.why})")
        _step_tokens(self.batch_size * ctx, "batch_size", "batch_size x context", f"{self.batch_size:,} x {ctx:,}")
        pb = self.prefill_batch_size or (self.batch_size if self.phase == "prefill" else 1)
        _step_tokens(pb * self.prompt_tokens, "prefill_batch_size", "prefill_batch_size x prompt_tokens",
                     f"{pb:,} x {self.prompt_tokens:,}")
        return self


def _step_tokens(total: int, field: str, what: str, product: str) -> None:
    """Refuse a batch holding more tokens than :data:`moesim.limits.STEP_TOKENS` allows."""
    if total > L.STEP_TOKENS.hi:
        raise ValueError(f"{what} ({product} = {total:.3g} tokens) must be at most {L.STEP_TOKENS.hi:.3g} tokens "
                         f"({L.STEP_TOKENS.why}); lower {field}")


Workload = Annotated[Union[TrainWorkload, ServeWorkload], Field(discriminator="kind")]


class ServingPool(_Spec):
    """One pool of a disaggregated deployment: ``num_instances`` identical engines of ``num_gpus`` each."""

    num_gpus: GPUs = Field(description="Accelerators of one engine instance of this pool.")
    layout: Layout = Field(default_factory=Layout, description="Parallel layout of one instance.")
    num_instances: GPUs = Field(1, description="Engine instances in the pool (requests go round-robin).")


class ServingSpec(_Spec):
    """Serving under load (``moesim simulate``): the engine's iteration scheduler and the deployment's pools.

    The scheduler is vLLM / SGLang style (see docs/serving.md): a running batch of at most
    ``max_num_seqs`` sequences and ``max_num_batched_tokens`` tokens per iteration per DP rank,
    prefill chunks sharing iterations with decode, paged KV blocks of ``kv_block_tokens``.
    With ``prefill`` and ``decode`` pools given, prompts run on the prefill pool and their KV
    cache moves to the decode pool; otherwise every instance (the scenario's ``num_gpus`` and
    ``layout``) does both.
    """

    max_num_seqs: Sequences | None = Field(
        None, description="Most sequences in the running batch per DP rank; default the workload's batch_size.")
    max_num_batched_tokens: L.count(L.STEP_TOKENS) = Field(
        8192, description="Most tokens (decode tokens plus prefill chunks) in one iteration per DP rank.")
    chunked_prefill: bool = Field(
        True, description="Prompts are split into chunks that share iterations with decode; false: a prompt is "
        "prefilled whole in an iteration of its own (decode waits).")
    kv_block_tokens: L.count(L.CONTEXT) = Field(16, description="Tokens per paged KV-cache block.")
    host_step_s: float = Field(
        0.0, ge=0, le=1, allow_inf_nan=False,
        description="Host time of one engine iteration outside the forward pass, seconds: scheduling, KV block "
        "bookkeeping, input preparation, sampling and output processing (vLLM 0.5 measured 5-13 ms of idle GPU per "
        "decode step from it, vLLM RFC #6854); 0 = not modelled.")
    host_step_per_token_s: float = Field(
        0.0, ge=0, le=1e-3, allow_inf_nan=False,
        description="Host time per token the iteration samples (one per decode sequence, 1 + d with d MTP drafts, "
        "one per prompt that completes), seconds, added to host_step_s (vLLM's per-request output update alone: "
        "about 1.1 us, vLLM PR #46112).")
    overlap_host_step: bool = Field(
        True, description="The engine prepares iteration i + 1 while the device runs iteration i (SGLang's and "
        "TensorRT-LLM's overlap schedulers, vLLM's async scheduling): an iteration takes max(device, host); false: "
        "device + host.")
    num_instances: GPUs = Field(1, description="Aggregated engine instances (each num_gpus with layout), round-robin.")
    prefill: ServingPool | None = Field(None, description="Prefill pool of a disaggregated deployment.")
    decode: ServingPool | None = Field(None, description="Decode pool of a disaggregated deployment.")

    @property
    def host_step_modelled(self) -> bool:
        """Whether an iteration pays a host step (host_step_s or host_step_per_token_s set)."""
        return bool(self.host_step_s or self.host_step_per_token_s)

    def host_step_time_s(self, sampled):
        """Host seconds of an iteration whose LM head samples ``sampled`` tokens (a number or an array)."""
        return self.host_step_s + self.host_step_per_token_s * sampled

    @model_validator(mode="after")
    def _pools(self) -> "ServingSpec":
        if (self.prefill is None) != (self.decode is None):
            raise ValueError("serving.prefill and serving.decode go together (a disaggregated deployment needs both "
                             f"pools); got only serving.{'prefill' if self.prefill is not None else 'decode'}")
        if self.max_num_seqs is not None and self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(f"serving.max_num_batched_tokens ({self.max_num_batched_tokens:,}) must be at least "
                             f"serving.max_num_seqs ({self.max_num_seqs:,}): every running sequence takes a token "
                             "per iteration")
        return self


class Scenario(_Spec):
    """A what-if question: this model, on this hardware and layout, doing this workload."""

    name: L.text(L.NAME) = Field("scenario", description="Short name.")
    description: L.text(L.DESCRIPTION) = Field("", description="What the scenario represents, with sources for its settings.")
    model: L.text(L.PATH) = Field(description="Bundled model name, model TOML path, or config.json path.")
    hardware: L.text(L.PATH) = Field(description="Hardware profile name or file.")
    num_gpus: GPUs = Field(description="Accelerators used.")
    layout: Layout = Field(default_factory=Layout)
    workload: Workload
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    schedule: Schedule = Field(default_factory=Schedule)
    serving: ServingSpec = Field(default_factory=ServingSpec, description="Serving under load (moesim simulate).")
    price_usd_per_gpu_hour: L.number(L.PRICE_PER_GPU_HOUR) | None = Field(
        None, description="Overrides the profile's price, USD per accelerator-hour."
    )
    workspace_bytes: L.number(L.WORKSPACE_BYTES) | None = Field(
        None, description="Per-GPU allowance for CUDA context, library workspaces and communication buffers. "
        "Default: 2.5 GB for training; for serving the share of device memory the engine leaves unused, "
        "(1 - workload.memory_utilization_frac) x device memory."
    )
    base_dir: L.text(L.PATH) = Field(".", description="Folder that relative paths resolve against (set by the loader).")

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
            for f in ("host_step_s", "host_step_per_token_s"):
                if getattr(self.serving, f):
                    raise ValueError(f"serving.{f} applies to serving engines' iterations; this scenario trains "
                                     "(workload.kind = train): leave it at 0")
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
        """The scenario's model, checked against the scenario (:meth:`check_model`)."""
        model = load_model(_rel(self.model, self.base_dir))
        self.check_model(model)
        return model

    def check_model(self, model: ModelSpec) -> None:
        """Raise InputError when the workload does not make sense for ``model``.

        * a serving sequence (prompt, plus output unless prefill-only) longer than the
          model's stated context (``max_context``; no limit when the model states none);
        * load-model tables (samples x experts, EP ranks x experts, samples x EP ranks)
          over :data:`moesim.limits.LOAD_MODEL_CELLS`.
        """
        w = getattr(self, "workload", None)  # absent on a probe built with model_construct
        if isinstance(w, ServeWorkload) and model.max_context is not None and w.context_tokens > model.max_context:
            if w.phase == "prefill":
                what, field = f"prompt_tokens ({w.prompt_tokens:,})", "workload.prompt_tokens"
            else:
                what = (f"prompt_tokens + output_tokens ({w.prompt_tokens:,} + "
                        f"{w.output_tokens:,} = {w.context_tokens:,} tokens)")
                field = "workload.prompt_tokens" if w.prompt_tokens > model.max_context else "workload.output_tokens"
            raise InputError(f"{what} exceeds the {model.max_context:,}-token context of model {model.name} "
                             f"(its max_context); allowed: at most {model.max_context:,} tokens per sequence",
                             source=self._source(), field=field)
        if isinstance(w, ServeWorkload) and w.mtp_draft_tokens and not model.mtp.num_modules:
            raise InputError(f"model {model.name} has no multi-token-prediction modules to draft with (its "
                             f"mtp.num_modules is 0); allowed: workload.mtp_draft_tokens = 0 for this model",
                             source=self._source(), field="workload.mtp_draft_tokens")
        if model.moe is not None:
            msg = L.routing_problem(self.routing.distribution, model.moe.num_experts, model.moe.top_k)
            if msg is not None:
                raise InputError(msg, source=self._source(), field="routing.distribution")
            experts = model.moe.num_experts + self.routing.redundant_experts
            per_rank = -(-model.moe.num_experts // self.layout.ep)
            if per_rank * self.routing.redundant_experts > L.PLACEMENT_WORK.hi:
                raise InputError(f"experts per EP rank x routing.redundant_experts ({per_rank:,} x "
                                 f"{self.routing.redundant_experts:,}) must be at most {int(L.PLACEMENT_WORK.hi):,} "
                                 f"({L.PLACEMENT_WORK.why})", source=self._source(), field="routing.redundant_experts")
            cells = L.LOAD_MODEL_CELLS.hi
            for field, what, x, y in (
                ("routing.samples", "routing.samples x experts", self.routing.samples, experts),
                ("layout.ep", "layout.ep x experts", self.layout.ep, experts),
                ("routing.samples", "routing.samples x layout.ep", self.routing.samples, self.layout.ep),
            ):
                n = x * y
                if n > cells:
                    raise InputError(f"{what} ({x:,} x {y:,}) = {n:,} must be at most {int(cells):,} "
                                     f"({L.LOAD_MODEL_CELLS.why})", source=self._source(), field=field)

    def _source(self) -> str:
        """What :meth:`check_model`'s errors name as their source."""
        return f"scenario {L.short(self.name, 40)}"

    def resolve_hardware(self) -> HardwareProfile:
        return load_hardware(_rel(self.hardware, self.base_dir))


@lru_cache(maxsize=1024)
def _rel(ref: str, base: str) -> str:
    """``ref`` as the loaders take it: a relative .toml / .json path under ``base``, anything else as it is
    (a function of the two strings alone)."""
    p = Path(ref)
    if p.suffix in (".toml", ".json") and not p.is_absolute():
        return str(Path(base) / p)
    return ref


# --------------------------------------------------------------------------- loading

def bundled_scenarios() -> dict[str, Path]:
    return {p.stem: p for p in sorted(scenarios_dir().glob("*.toml"))}


def _bundled_scenario_path(name: str) -> Path | None:
    """The file of bundled scenario ``name`` (a key of :func:`bundled_scenarios`) without listing the folder."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        return None
    p = os.path.join(_scenarios_dir(), name + ".toml")
    return Path(p) if os.path.exists(p) else None  # False for a name too long for the file system


@lru_cache(maxsize=1)
def _scenarios_dir() -> str:
    return str(scenarios_dir())


def _copy_toml(value: Any) -> Any:
    """A copy of parsed TOML (tables and arrays copied, the immutable leaves shared)."""
    if isinstance(value, dict):
        return {k: _copy_toml(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_toml(v) for v in value]
    return value


DEFAULT_SCENARIO = "mixtral-8x7b-serve-h100"


def parse_set(assignments: tuple[str, ...] | list[str]) -> list[tuple[list[str], Any]]:
    """Parse ``field.path=value`` overrides; values are TOML literals or bare strings."""
    out = []
    for a in assignments:
        if not isinstance(a, str) or "=" not in a:
            raise InputError(f"expected FIELD=VALUE, got {L.short(a)}", source="--set")
        key, _, text = a.partition("=")
        path = key.strip().split(".")
        if any(not p.strip() for p in path) or len(path) > L.MAX_FIELD_PARTS:
            raise InputError(f"expected FIELD=VALUE with a dotted field of at most {L.MAX_FIELD_PARTS} parts "
                             f"(e.g. layout.ep=8), got {L.short(a)}", source="--set")
        L.PATH.check(key, source="--set")
        L.DISTRIBUTION.check(text, source="--set", field=key.strip())
        out.append(([p.strip() for p in path], parse_value(text, key.strip())))
    return out


def parse_value(text: str, field: str | None = None) -> Any:
    """A ``--set`` / ``--vary`` value: a TOML literal (``8``, ``1.25``, ``true``, ``"x"``, ``[1, 2]``) or else
    the bare text. Nesting deeper than :data:`moesim.limits.MAX_NESTING` is refused before parsing."""
    if "\n" in text or "\r" in text:  # one line only: a newline would start another TOML key
        return text
    if max_nesting(text, toml=True) > L.MAX_NESTING:
        raise InputError(f"value nested more than {L.MAX_NESTING} deep", source="--set", field=field)
    try:
        ok, value = _toml_literal(text)
    except (RecursionError, ValueError):  # too deep for the parser, or an integer over 4300 digits
        raise InputError(f"cannot read the value {L.short(text)}", source="--set", field=field) from None
    return _copy_toml(value) if ok else text


@lru_cache(maxsize=4096)
def _toml_literal(text: str) -> tuple[bool, Any]:
    """(True, the value) of the TOML literal ``text``, or (False, None) if it is none (shared: copy tables and
    arrays before handing them out)."""
    try:
        return True, tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return False, None


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
    return drop_unused_recompute_modules(raw, [path for path, _ in overrides])


#: Where an override sets the recomputation and its module list
_RECOMPUTE_PATH, _MODULES_PATH = ["workload", "recompute"], ["workload", "recompute_modules"]


def drop_unused_recompute_modules(raw: dict[str, Any], paths: list[list[str]]) -> dict[str, Any]:
    """``raw`` (overridden at ``paths``) without the module list it inherited, where an override turned
    recomputation to 'none' or 'full' and did not set ``workload.recompute_modules`` itself: the list names
    what a selective recomputation runs again and means nothing to the other two (Megatron-Core reads
    ``--recompute-modules`` only with ``--recompute-granularity selective``). A file that states both is
    still refused (:class:`TrainWorkload`); ``moesim plan --recompute`` builds its settings the same way.
    The workload table must be the caller's own copy (it is changed in place)."""
    if _RECOMPUTE_PATH not in paths or _MODULES_PATH in paths:
        return raw
    w = raw.get("workload")
    if isinstance(w, dict) and w.get("recompute") in ("none", "full"):
        w.pop("recompute_modules", None)
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
    raw, where, base = _scenario_raw(name_or_path)
    return _copy_toml(raw), where, base


def _scenario_raw(name_or_path: str | Path | None) -> tuple[dict[str, Any], str, str]:
    """:func:`read_scenario_raw` with the raw dict shared: the file parsed once per content
    (:func:`moesim.filecache.parsed`); it must not be modified."""
    ref = str(name_or_path) if name_or_path is not None else DEFAULT_SCENARIO
    p = Path(ref)
    if p.suffix != ".toml":
        found = _bundled_scenario_path(ref)
        if found is None:
            known = bundled_scenarios()
            raise InputError(f"unknown scenario {L.short(ref)}; known: {', '.join(known)} (or a path to a .toml file)",
                             field="scenario")
        p = found
    return parsed(str(p), read_bytes, _parse_scenario_file), str(p), str(p.parent)


def _parse_scenario_file(where: str, data: bytes) -> dict[str, Any]:
    return parse_toml(decode_text(data, where), where)


def load_scenario(name_or_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """Load a bundled scenario by name or a scenario TOML, applying ``field=value`` overrides."""
    raw, where, base = _scenario_raw(name_or_path)  # apply_overrides copies; validation reads it only
    if overrides:
        raw = apply_overrides(raw, parse_set(overrides))
        where = f"{where} (with --set)"
    return scenario_from_dict(raw, where, base)
