"""End-to-end figures published for real MoE deployments and what the step model predicts for each.

Shared by ``tests/step/test_published.py`` (which pins the model's current error on every row) and
``docs/published-comparisons.md`` (which shows the table). ``python tests/step/published_e2e.py``
prints the markdown table.

Every comparison runs one scenario file of ``scenarios/validation-e2e/`` (its header comment cites the
source and states each assumption), optionally with ``--set`` overrides, reads one figure from the
:class:`moesim.step.result.Estimate` (or derives it from a few of its fields), and sets it against the
published value. ``data_key`` names the table of ``tests/data/published_e2e.toml`` that holds the
published number, its quote and its source.

Error convention: ``predicted / published - 1`` (signed; +0.25 = the model says 25% more than
published). For a memory check the figure is ``fits`` and the comparison either agrees or not.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "scenarios" / "validation-e2e"
DATA = SCENARIOS / "published.toml"

if str(REPO) not in sys.path:  # the script may run from anywhere
    sys.path.insert(0, str(REPO))

from moesim.scenario import Scenario, load_scenario  # noqa: E402
from moesim.step.estimate import estimate_resolved  # noqa: E402
from moesim.step.result import Estimate  # noqa: E402

GPUS_PER_NODE = 8  # the per-node figures below are all for 8-GPU nodes (H800, H100)


# ----------------------------------------------------------------------------- derived figures


def gpu_hours_per_trillion_tokens(est: Estimate, sc: Scenario) -> float:
    """GPU-hours per 1e12 training tokens: ``num_gpus / tokens_per_s / 3600 * 1e12``."""
    return est.num_gpus / est.tokens_per_s / 3600.0 * 1e12


def mfu_bf16(est: Estimate, sc: Scenario) -> float:
    """MFU against the dense BF16 peak (the convention of the MoE Parallel Folding paper)."""
    return est.mfu_bf16_frac


def model_tflops_per_gpu(est: Estimate, sc: Scenario) -> float:
    """Model TFLOP/s per GPU: ``tokens_per_s_per_gpu * model_flops_per_token / 1e12``."""
    return est.tokens_per_s_per_gpu * est.model_flops_per_token / 1e12


def tokens_per_s_per_gpu(est: Estimate, sc: Scenario) -> float:
    return est.tokens_per_s_per_gpu


def step_s(est: Estimate, sc: Scenario) -> float:
    """Training step time with the expected straggler."""
    assert est.step_s is not None
    return est.step_s


def tokens_per_s_per_node(est: Estimate, sc: Scenario) -> float:
    """Tokens/s per 8-GPU node: ``tokens_per_s / num_gpus * 8`` (prefill: prompt tokens; decode: output)."""
    return est.tokens_per_s / est.num_gpus * GPUS_PER_NODE


def offline_system_tokens_per_s(est: Estimate, sc: Scenario) -> float:
    """Generated tokens/s of the system with every prefill counted: ``dp * b * O / ((b / pb) * ttft + O * tpot)``.

    ``Estimate.tokens_per_s`` counts decode steps only and ``ttft_s`` is one prefill of ``pb``
    prompts; an offline benchmark pays the prefill of each of the ``b`` requests per replica on the
    same GPUs, ``b / pb`` prefills per ``O`` decode steps.
    """
    w = sc.workload
    assert est.ttft_s is not None and est.tpot_s is not None
    pb = w.prefill_batch_size or 1  # type: ignore[union-attr]
    b, o = w.batch_size, w.output_tokens  # type: ignore[union-attr]
    return sc.dp * b * o / (b / pb * est.ttft_s + o * est.tpot_s)


def fits(est: Estimate, sc: Scenario) -> bool:
    return est.fits


# ----------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class Comparison:
    """One published figure and the model's prediction of it."""

    key: str  #: short id (test names and table rows)
    data_key: str  #: table in tests/data/published_e2e.toml with the quote and source
    scenario: str  #: file name under scenarios/validation-e2e
    what: str  #: the figure, in words
    unit: str
    published: float | bool
    figure: Callable[[Estimate, Scenario], float | bool]
    source: str
    overrides: tuple[str, ...] = ()
    published_note: str = ""  #: how the published value was read or derived, when not the quoted number

    @property
    def is_memory(self) -> bool:
        return isinstance(self.published, bool)


FOLDING = "MoE Parallel Folding, arXiv 2504.14960, Table 3"
BRIDGE = "Megatron-Bridge performance summary (NeMo {}), docs/performance-summary-archive.md"
ZOO = "Megatron-MoE-ModelZoo best_practice/Qwen3/readme.md, Performance Results"
DAY6 = "DeepSeek Open Infra Index, day 6 (inference system overview)"
LMSYS = "lmsys.org/blog/2025-05-05-large-scale-ep"
MLPERF = "MLPerf Inference v4.1 closed/NVIDIA/results/{}/mixtral-8x7b/Offline mlperf_log_summary.txt"

# DeepSeek day 6: 608B input tokens of which 342B hit the on-disk KV cache (same document).
DEEPSEEK_CACHE_HIT_FRAC = 342.0 / 608.0

COMPARISONS: list[Comparison] = [
    # --- training
    Comparison("dsv3-pretrain-gpu-hours", "deepseek-v3-pretraining-gpu-hours", "deepseek-v3-pretrain-h800.toml",
               "DeepSeek-V3 pre-training, 2048x H800: GPU-hours per 1e12 tokens", "GPU-h", 180000.0,
               gpu_hours_per_trillion_tokens, "DeepSeek-V3 report, arXiv 2412.19437, section 1 and Table 1"),
    Comparison("mixtral-8x22b-folding-mfu", "mixtral-8x22b-moe-parallel-folding-mfu",
               "mixtral-8x22b-train-h100-folding.toml",
               "Mixtral-8x22B training, 128x H100, BF16: MFU", "", 0.493, mfu_bf16, FOLDING),
    Comparison("mixtral-8x22b-folding-fp8-tflops", "mixtral-8x22b-moe-parallel-folding-fp8-tflops",
               "mixtral-8x22b-train-h100-folding-fp8.toml",
               "Mixtral-8x22B training, 128x H100, FP8: model TFLOP/s per GPU", "TFLOP/s", 631.7,
               model_tflops_per_gpu, "MoE Parallel Folding, arXiv 2504.14960, Table 2"),
    Comparison("qwen2-57b-folding-mfu", "qwen2-57b-a14b-moe-parallel-folding-mfu", "qwen2-57b-train-h100-folding.toml",
               "Qwen2-57B-A14B training, 64x H100, BF16: MFU", "", 0.390, mfu_bf16, FOLDING),
    Comparison("dsv3-bridge-h100", "deepseek-v3-megatron-bridge-h100-1024gpu",
               "deepseek-v3-train-h100-megatron-bridge.toml",
               "DeepSeek-V3 training, 1024x H100, FP8: tokens/s per GPU", "tok/s", 1297.0, tokens_per_s_per_gpu,
               BRIDGE.format("25.09")),
    Comparison("dsv3-bridge-b200", "deepseek-v3-megatron-bridge-b200-mxfp8", "deepseek-v3-train-b200-megatron-bridge.toml",
               "DeepSeek-V3 training, 256x B200, MXFP8: tokens/s per GPU", "tok/s", 2689.0, tokens_per_s_per_gpu,
               BRIDGE.format("26.02")),
    Comparison("dsv3-bridge-gb200", "deepseek-v3-megatron-bridge-gb200-mxfp8",
               "deepseek-v3-train-gb200-megatron-bridge.toml",
               "DeepSeek-V3 training, 256x GB200, MXFP8: tokens/s per GPU", "tok/s", 3955.0, tokens_per_s_per_gpu,
               BRIDGE.format("26.02")),
    Comparison("qwen3-235b-bridge-h100", "qwen3-235b-megatron-bridge-h100-fp8", "qwen3-235b-train-h100-megatron-bridge.toml",
               "Qwen3-235B-A22B training, 256x H100, FP8: tokens/s per GPU", "tok/s", 1633.0, tokens_per_s_per_gpu,
               BRIDGE.format("26.02")),
    Comparison("qwen3-30b-bridge-h100", "qwen3-30b-a3b-megatron-bridge-h100-fp8", "qwen3-30b-train-h100-megatron-bridge.toml",
               "Qwen3-30B-A3B training, 16x H100, FP8: tokens/s per GPU", "tok/s", 5113.0, tokens_per_s_per_gpu,
               BRIDGE.format("26.02")),
    Comparison("gpt-oss-120b-bridge-h100", "gpt-oss-120b-megatron-bridge-h100-bf16",
               "gpt-oss-120b-train-h100-megatron-bridge.toml",
               "gpt-oss-120b training, 64x H100, BF16: tokens/s per GPU", "tok/s", 5993.0, tokens_per_s_per_gpu,
               BRIDGE.format("26.02")),
    Comparison("qwen3-235b-zoo-overlap", "qwen3-235b-megatron-moe-modelzoo-h100-step-time",
               "qwen3-235b-train-h100-modelzoo-overlap.toml",
               "Qwen3-235B-A22B training, 256x H100, BF16, all-to-all overlapped: step time", "s", 17.6, step_s, ZOO),
    Comparison("qwen3-235b-zoo", "qwen3-235b-megatron-moe-modelzoo-h100-step-time", "qwen3-235b-train-h100-modelzoo.toml",
               "the same without the overlap: step time", "s", 19.7, step_s, ZOO,
               published_note="19.7 s is the row without '+1f1b overlap' (in the data file's notes)"),
    # --- serving
    Comparison("dsv3-prod-prefill", "deepseek-v3-production-prefill-throughput",
               "deepseek-v3-prefill-h800-production.toml",
               "DeepSeek-V3 production prefill, H800: computed input tokens/s per node", "tok/s",
               73700.0 * (1.0 - DEEPSEEK_CACHE_HIT_FRAC), tokens_per_s_per_node, DAY6,
               published_note="73.7k including cache hits x (1 - 342B/608B hits) = 32.2k computed"),
    Comparison("dsv3-prod-decode", "deepseek-v3-production-decode-throughput", "deepseek-v3-decode-h800-production.toml",
               "DeepSeek-V3 production decode, H800: output tokens/s per node", "tok/s", 14800.0,
               tokens_per_s_per_node, DAY6),
    Comparison("dsv3-sglang-prefill", "deepseek-v3-sglang-96xh100-prefill", "deepseek-v3-prefill-h100-sglang.toml",
               "DeepSeek-V3 SGLang prefill, 4x8 H100, 4K prompts: input tokens/s per node", "tok/s", 50302.0,
               tokens_per_s_per_node, LMSYS),
    Comparison("dsv3-sglang-decode", "deepseek-v3-sglang-96xh100-decode", "deepseek-v3-decode-h100-sglang.toml",
               "DeepSeek-V3 SGLang decode, H100, batch 256, KV 2000: output tokens/s per node", "tok/s", 22282.0,
               tokens_per_s_per_node, LMSYS),
    Comparison("mixtral-mlperf-h100", "mixtral-8x7b-mlperf-v41-h100x8-offline", "mixtral-8x7b-mlperf-h100-offline.toml",
               "Mixtral-8x7B MLPerf v4.1 Offline, 8x H100, FP8: tokens/s per system", "tok/s", 52415.9,
               offline_system_tokens_per_s, MLPERF.format("DGX-H100_H100-SXM-80GBx8_TRT")),
    Comparison("mixtral-mlperf-h200", "mixtral-8x7b-mlperf-v41-h200x8-offline", "mixtral-8x7b-mlperf-h200-offline.toml",
               "Mixtral-8x7B MLPerf v4.1 Offline, 8x H200, FP8: tokens/s per system", "tok/s", 59022.3,
               offline_system_tokens_per_s, MLPERF.format("H200-SXM-141GBx8_TRT")),
    # --- memory
    Comparison("gpt-oss-120b-1xh100", "gpt-oss-120b-fits-single-h100", "gpt-oss-120b-fits-1xh100.toml",
               "gpt-oss-120b (MXFP4 experts) on 1x H100 80GB", "", True, fits, "github.com/openai/gpt-oss README"),
    Comparison("gpt-oss-120b-bf16-4xh100", "gpt-oss-120b-bf16-reference-min-gpus", "gpt-oss-120b-bf16-4xh100.toml",
               "gpt-oss-120b, all BF16, TP4 on 4x H100", "", True, fits, "github.com/openai/gpt-oss README"),
    Comparison("gpt-oss-120b-bf16-2xh100", "gpt-oss-120b-bf16-reference-min-gpus", "gpt-oss-120b-bf16-4xh100.toml",
               "gpt-oss-120b, all BF16, TP2 on 2x H100 (4 is the published minimum)", "", False, fits,
               "github.com/openai/gpt-oss README", overrides=("num_gpus=2", "layout.tp=2", "layout.etp=2")),
    Comparison("mixtral-8x7b-bf16-1xh100", "mixtral-8x7b-min-gpu-memory-bf16", "mixtral-8x7b-bf16-1xh100.toml",
               "Mixtral-8x7B BF16 on 1x H100 80GB (needs 100 GB)", "", False, fits, "docs.mistral.ai Model weights"),
    Comparison("mixtral-8x7b-bf16-2xh100", "mixtral-8x7b-min-gpu-memory-bf16", "mixtral-8x7b-bf16-1xh100.toml",
               "Mixtral-8x7B BF16, TP2 on 2x H100", "", True, fits, "docs.mistral.ai Model weights",
               overrides=("num_gpus=2", "layout.tp=2", "layout.etp=2")),
    Comparison("dsv3-fp8-8xh200", "deepseek-v3-fp8-single-node-h200", "deepseek-v3-fp8-8xh200.toml",
               "DeepSeek-V3 FP8, TP8 on 8x H200", "", True, fits, "docs.sglang.ai DeepSeek usage"),
    Comparison("dsv3-fp8-8xh100", "deepseek-v3-fp8-h100-min-gpus", "deepseek-v3-fp8-8xh200.toml",
               "DeepSeek-V3 FP8, TP8 on 8x H100 (needs 2 nodes)", "", False, fits, "docs.sglang.ai DeepSeek usage",
               overrides=("hardware=h100-sxm",)),
    Comparison("dsv3-fp8-16xh100", "deepseek-v3-fp8-h100-min-gpus", "deepseek-v3-fp8-8xh200.toml",
               "DeepSeek-V3 FP8, TP16 on 16x H100", "", True, fits, "docs.sglang.ai DeepSeek usage",
               overrides=("hardware=h100-sxm", "num_gpus=16", "layout.tp=16", "layout.etp=16")),
]


@dataclass(frozen=True)
class KnownFailure:
    """A published setup the model gets wrong or cannot run today (pinned by a strict xfail)."""

    key: str
    data_key: str
    scenario: str
    overrides: tuple[str, ...]
    what: str
    published: str
    defect: str  #: the model's defect, with file and line of code


KNOWN_FAILURES: list[KnownFailure] = []


# ----------------------------------------------------------------------------- running


@cache
def _run(scenario: str, overrides: tuple[str, ...]) -> tuple[Estimate, Scenario]:
    sc = load_scenario(SCENARIOS / scenario, list(overrides))
    return estimate_resolved(sc, sc.resolve_model(), sc.resolve_hardware()), sc


def run(c: Comparison | KnownFailure) -> tuple[Estimate, Scenario]:
    """Estimate and scenario of one comparison (cached per scenario and overrides)."""
    return _run(c.scenario, tuple(c.overrides))


def predict(c: Comparison) -> float | bool:
    est, sc = run(c)
    return c.figure(est, sc)


def error(c: Comparison) -> float:
    """Signed relative error ``predicted / published - 1`` (numeric comparisons only)."""
    assert not c.is_memory
    return float(predict(c)) / float(c.published) - 1.0


def published_data() -> dict:
    """The tables of tests/data/published_e2e.toml."""
    with DATA.open("rb") as f:
        return tomllib.load(f)


# ----------------------------------------------------------------------------- table


def _fmt(v: float, unit: str) -> str:
    if unit == "":
        return f"{v:.1%}" if v < 1 else f"{v:.3g}"
    if abs(v) >= 1000:
        return f"{v:,.0f} {unit}"
    return f"{v:.3g} {unit}"


def table() -> str:
    """The comparison as markdown: numeric rows, memory rows, the known failures, then sources."""
    lines = ["| # | published figure | published | predicted | error |", "|---|---|---|---|---|"]
    srcs = []
    i = 0
    for c in COMPARISONS:
        if c.is_memory:
            continue
        i += 1
        p = float(predict(c))
        lines.append(f"| {i} | {c.what} | {_fmt(float(c.published), c.unit)} | {_fmt(p, c.unit)} | {error(c):+.0%} |")
        srcs.append(f"{i}. `{c.scenario}`; {c.source} [{c.data_key}]"
                    + (f"; published value: {c.published_note}" if c.published_note else ""))
    lines += ["", "| # | memory check | published | predicted (per GPU) | agrees |", "|---|---|---|---|---|"]
    for c in COMPARISONS:
        if not c.is_memory:
            continue
        i += 1
        est, _ = run(c)
        pred = "fits" if est.fits else "does not fit"
        need = f"{pred}: {est.memory_per_gpu_bytes / 1e9:.1f} of {est.memory.capacity_bytes / 1e9:.0f} GB"
        lines.append(f"| {i} | {c.what} | {'fits' if c.published else 'does not fit'} | {need} | "
                     f"{'yes' if est.fits == c.published else 'NO'} |")
        srcs.append(f"{i}. `{c.scenario}`" + (f" with `--set {' '.join(c.overrides)}`" if c.overrides else "")
                    + f"; {c.source} [{c.data_key}]")
    if KNOWN_FAILURES:
        lines += ["", "| # | known failure (pinned) | published | model today |", "|---|---|---|---|"]
    for k in KNOWN_FAILURES:
        i += 1
        try:
            est, _ = run(k)
            today = ("fits" if est.fits else "does not fit") + f": {est.memory_per_gpu_bytes / 1e9:.1f} GB per GPU"
        except Exception as exc:  # noqa: BLE001 - the failure itself is what the row reports
            today = f"error: {type(exc).__name__}"
        lines.append(f"| {i} | {k.what} | {k.published} | {today} |")
        srcs.append(f"{i}. `{k.scenario}` with `--set {' '.join(k.overrides)}` [{k.data_key}]; defect: {k.defect}")
    return "\n".join(lines) + "\n\nSources and settings:\n\n" + "\n".join(srcs)


def write_doc(path: str = "docs/published-comparisons.md") -> None:
    """Replace the table section of the doc (from ``## Table`` to the next heading) with :func:`table`."""
    from pathlib import Path

    from moesim.io import atomic_write_text

    doc = Path(path).read_text()
    head, rest = doc.split("## Table\n", 1)
    _, tail = rest.split("\n## ", 1)
    atomic_write_text(Path(path), head + "## Table\n\n" + table() + "\n\n## " + tail)


if __name__ == "__main__":  # pragma: no cover
    import sys

    if "--write" in sys.argv:
        write_doc()
    else:
        print(table())
