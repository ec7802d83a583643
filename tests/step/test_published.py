"""The step model against published end-to-end figures (training throughput, serving throughput, memory).

The comparisons (scenario, figure, published value, source) live in ``published_e2e.py``; the same
table is printed in docs/published-comparisons.md. Each test below pins the model's current error on
one row: its tolerance is the error the model has today, rounded up to the next 5 points, plus a
5-point margin, and its comment says what the model leaves out that explains the error. A change to
the model, a profile or a scenario that moves a prediction further from the published figure than
that fails here; a change that brings it closer passes, and the tolerance should then be tightened
(and the docs table regenerated).

Error = predicted / published - 1. Settings come from the publications; no setting was chosen to
bring a prediction closer (the scenario headers list every assumption).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from published_e2e import COMPARISONS, KNOWN_FAILURES, REPO, SCENARIOS, error, published_data, run, table

from moesim.catalog import load_model
from moesim.params import count_params

BY_KEY = {c.key: c for c in COMPARISONS}
KNOWN = {k.key: k for k in KNOWN_FAILURES}


def _assert_within(key: str, tol: float) -> None:
    c = BY_KEY[key]
    err = error(c)
    assert abs(err) <= tol, f"{c.what}: predicted {err:+.1%} from published {c.published} {c.unit} (tolerance ±{tol:.0%})"


def _assert_fits(key: str) -> None:
    c = BY_KEY[key]
    est, _ = run(c)
    need = f"{est.memory_per_gpu_bytes / 1e9:.1f} GB of {est.memory.capacity_bytes / 1e9:.0f} GB"
    assert est.fits is c.published, f"{c.what}: model says fits={est.fits} ({need}), published fits={c.published}"


# ----------------------------------------------------------------------------- training


def test_deepseek_v3_pretraining_gpu_hours_per_trillion_tokens_within_50pct():
    # Today -44% (101K vs 180K H800 GPU-hours per 1e12 tokens: the model is too fast). Left out: DualPipe's
    # own bubble and chunk bookkeeping (modelled as 1F1B), the time of recomputing RMSNorm / MLA
    # up-projections / SwiGLU (selective recomputation is charged in memory only), FP8 fine-grained
    # scaling costs (per-tile quantisation, promotion to CUDA cores), real routing imbalance (uniform
    # here), and everything a 2-month run pays beyond steady-state steps (the batch ramp, evaluation,
    # checkpoints, restarts). The H800 efficiency curves are uncalibrated defaults.
    _assert_within("dsv3-pretrain-gpu-hours", 0.50)


def test_mixtral_8x22b_bf16_mfu_with_parallel_folding_within_15pct():
    # Today -5% (46.6% vs 49.3% MFU). Left out: virtual pipeline stages (the 1F1B bubble modelled here is
    # larger than an interleaved schedule's), MFU FLOP-counting convention differences (Megatron's formula
    # vs moesim's 6 x active + attention), and communication overlap Megatron applies (TP comm overlap).
    _assert_within("mixtral-8x22b-folding-mfu", 0.15)


def test_mixtral_8x22b_fp8_model_tflops_with_parallel_folding_within_25pct():
    # Today +17% (740 vs 632 TFLOP/s per GPU). Left out: FP8 delayed-scaling casts and amax bookkeeping,
    # parts that stay BF16 in Transformer Engine besides the attention core; the layout is the BF16
    # optimum (not stated for the FP8 run).
    _assert_within("mixtral-8x22b-folding-fp8-tflops", 0.25)


def test_qwen2_57b_bf16_mfu_with_parallel_folding_within_25pct():
    # Today +18% (46.0% vs 39.0% MFU). Left out: the paper's reason for the lower MFU, fine-grained
    # experts with "higher dispatch volume and smaller expert GEMMs": the small-GEMM efficiency and the
    # permute / unpermute kernels are uncalibrated defaults; per-kernel launch costs of 64 experts.
    _assert_within("qwen2-57b-folding-mfu", 0.25)


def test_deepseek_v3_fp8_tokens_per_gpu_on_1024_h100_within_30pct():
    # Today -20% (1,035 vs 1,297 tokens/s per GPU: the model is too slow). The model has 62% of the step
    # in cross-node EP64 all-to-all with nothing overlapping it; left out: whatever overlap Megatron-Bridge
    # applies that the table does not state, VPP 4 (smaller bubble than 1F1B), and exactly forced balance.
    _assert_within("dsv3-bridge-h100", 0.30)


def test_deepseek_v3_mxfp8_tokens_per_gpu_on_256_b200_within_110pct():
    # Today +100% (5,390 vs 2,689 tokens/s per GPU). Left out: MXFP8 quantisation kernels (block scales for
    # every GEMM input, forward and backward), per-kernel host overheads of a 61-layer model at MBS 1;
    # the B200 efficiency curves are the H100 defaults rescaled, not measured on Blackwell.
    _assert_within("dsv3-bridge-b200", 1.10)


def test_deepseek_v3_mxfp8_tokens_per_gpu_on_256_gb200_within_65pct():
    # Today +59% (6,297 vs 3,955 tokens/s per GPU). Left out: as for B200 (MXFP8 casts, host overheads,
    # uncalibrated Blackwell curves); EP64 is taken to sit inside one NVL72 rack.
    _assert_within("dsv3-bridge-gb200", 0.65)


def test_qwen3_235b_fp8_tokens_per_gpu_on_256_h100_within_15pct():
    # Today -9% (1,487 vs 1,633 tokens/s per GPU). 70% of the modelled step is cross-node EP32
    # all-to-all; left out: VPP 4 and any overlap the table does not state, FP8 cast kernels.
    _assert_within("qwen3-235b-bridge-h100", 0.15)


def test_qwen3_30b_fp8_tokens_per_gpu_on_16_h100_within_270pct():
    # Today +261% (18,479 vs 5,113 tokens/s per GPU; published 118 TFLOP/s is 12% of the BF16 peak). A
    # 3B-active model at MBS 1 is bound by what moesim does not model: host-side launch and framework
    # overheads of many small kernels (moesim charges 4 us per counted kernel and counts far fewer than
    # Megatron launches), FP8 cast kernels of small GEMMs, router / permute / unpermute kernels at real
    # efficiency, and VPP 12's extra pipeline communication.
    _assert_within("qwen3-30b-bridge-h100", 2.70)


def test_gpt_oss_120b_bf16_tokens_per_gpu_on_64_h100_within_120pct():
    # Today +112% (12,725 vs 5,993 tokens/s per GPU). Left out: attention with sinks and 128-token sliding
    # windows at the efficiency of real kernels (moesim uses its generic matmul curve), gpt-oss's clamped
    # SwiGLU and expert biases as extra elementwise kernels, host overheads; moesim's model FLOPs per token
    # (32.7 G) are 20% above the table's implied 27.2 G (163 TFLOP/s / 5,993), so the throughput error is
    # not a FLOP-count artefact.
    _assert_within("gpt-oss-120b-bridge-h100", 1.20)


def test_qwen3_235b_bf16_step_time_with_all_to_all_overlap_within_10pct():
    # Today -1% (17.5 vs 17.6 s). The modelled step is communication-bound with the all-to-all fully hidden
    # behind a 15% slowed computation; left out: VPP 4 (smaller bubble), imperfect overlap (the two
    # omissions pull in opposite directions, so the match is partly a cancellation).
    _assert_within("qwen3-235b-zoo-overlap", 0.10)


def test_qwen3_235b_bf16_step_time_without_overlap_within_40pct():
    # Today +33% (26.2 vs 19.7 s: the model is too slow). The exposed cross-node EP32 all-to-all is 59% of
    # the modelled step; DeepEP moves it faster than the topology model's achievable IB rate
    # (docs/communication.md: moesim vs DeepEP internode bandwidth), and VPP 4 shrinks the bubble.
    _assert_within("qwen3-235b-zoo", 0.40)


# ----------------------------------------------------------------------------- serving


def test_deepseek_v3_production_prefill_computed_tokens_per_node_within_175pct():
    # Today +169% (86.8K vs 32.2K computed input tokens/s per node). The published figure is a 24-hour
    # average of a production service (load below capacity much of the day, nodes lent to training at
    # night), while the model predicts the capacity of a saturated unit; DeepSeek's own saturated prefill
    # profile gives about 62.7K per node (LMSYS's derivation). Left out besides: attention over cached
    # prefixes (the schema has no prefix cache), the real prompt mix, EPLB's residual imbalance, FP8
    # grouped-GEMM efficiency below the uncalibrated default, DeepEP's achieved RDMA rate.
    _assert_within("dsv3-prod-prefill", 1.75)


def test_deepseek_v3_production_decode_tokens_per_node_within_80pct():
    # Today +63% (24.1K vs 14.8K output tokens/s per node; with the batch fixed at the published operating
    # point this is TPOT 29.2 ms vs about 47.6 ms). Left out: MTP speculative decoding if it was on, FlashMLA
    # and DeepEP low-latency kernels at their real latency, CPU scheduling, load variation over 24 hours;
    # the all-to-all traffic ignores EPLB's replicas (contiguous home ranks).
    _assert_within("dsv3-prod-decode", 0.80)


def test_deepseek_v3_sglang_prefill_tokens_per_node_within_80pct():
    # Today +73% (86.8K vs 50.3K input tokens/s per node; DeepSeek's profile of the same setting is 62.7K).
    # The model is communication-bound (hierarchical all-to-all hidden under computation only in part);
    # left out: DeepEP's achieved RDMA bandwidth below moesim's (docs/communication.md), FP8 grouped-GEMM
    # efficiency at DeepGEMM's real level, SGLang's default expert distribution (uniform here).
    _assert_within("dsv3-sglang-prefill", 0.80)


def test_deepseek_v3_sglang_decode_tokens_per_node_within_40pct():
    # Today +33% (29.6K vs 22.3K output tokens/s per node: TPOT 69 ms vs 92 ms). Left out: DeepEP
    # low-latency kernels' real latency, the masked grouped GEMM's padding, CUDA-graph and scheduler
    # overheads, SGLang's expert distribution (uniform here), EPLB replicas in the all-to-all traffic.
    _assert_within("dsv3-sglang-decode", 0.40)


def test_mixtral_8x7b_mlperf_offline_tokens_per_system_on_8_h100_within_15pct():
    # Today -6% (49.0K vs 52.4K tokens/s per system). The largest batch that fits (310) sets the figure;
    # left out: the real input-length mix (512 assumed; see docs), FP8 KV cache if used (bf16 here),
    # TensorRT-LLM's in-flight batching dynamics (prefill and decode interleaved rather than alternated).
    _assert_within("mixtral-mlperf-h100", 0.15)


def test_mixtral_8x7b_mlperf_offline_tokens_per_system_on_8_h200_within_30pct():
    # Today +22% (71.8K vs 59.0K). At the 1014 sequences per GPU that fit in 141 GB, decode is bound by
    # the KV-cache reads; left out: any batch cap of the engine (not published), the same omissions as
    # the H100 row. The published H200/H100 ratio is 1.13; the model's is 1.46.
    _assert_within("mixtral-mlperf-h200", 0.30)


def test_mlperf_scenarios_run_the_largest_batch_the_model_says_fits():
    # The MLPerf scenario files fix batch_size to moesim's own max_batch_size (Offline runs the largest
    # batch that fits). If the memory model moves, update the files and the docs table.
    for key in ("mixtral-mlperf-h100", "mixtral-mlperf-h200"):
        est, sc = run(BY_KEY[key])
        assert est.max_batch_size == sc.workload.batch_size, (key, est.max_batch_size, sc.workload.batch_size)


# ----------------------------------------------------------------------------- memory (fits as published)


def test_gpt_oss_120b_with_mxfp4_experts_fits_one_h100():
    _assert_fits("gpt-oss-120b-1xh100")  # published: runs on a single 80 GB GPU


def test_gpt_oss_120b_all_bf16_fits_four_h100():
    _assert_fits("gpt-oss-120b-bf16-4xh100")  # published: the BF16 reference needs at least 4x H100


def test_gpt_oss_120b_all_bf16_does_not_fit_two_h100():
    _assert_fits("gpt-oss-120b-bf16-2xh100")  # published: the BF16 reference needs at least 4x H100 (~234 GB)


def test_mixtral_8x7b_bf16_does_not_fit_one_h100():
    _assert_fits("mixtral-8x7b-bf16-1xh100")  # published: 100 GB minimum for BF16 inference


def test_mixtral_8x7b_bf16_fits_two_h100():
    _assert_fits("mixtral-8x7b-bf16-2xh100")  # published: 100 GB minimum ("2 GPUs")


def test_deepseek_v3_fp8_fits_one_8x_h200_node():
    _assert_fits("dsv3-fp8-8xh200")  # published: FP8 on 8x H200


def test_deepseek_v3_fp8_does_not_fit_one_8x_h100_node():
    _assert_fits("dsv3-fp8-8xh100")  # published: FP8 needs 2 x 8 H100


def test_deepseek_v3_fp8_fits_two_8x_h100_nodes():
    _assert_fits("dsv3-fp8-16xh100")  # published: FP8 on 2 x 8 H100


# ----------------------------------------------------------------------------- bookkeeping


def test_every_comparison_has_its_own_test_with_a_tolerance():
    src = Path(__file__).read_text()
    tested = set(re.findall(r'_assert_(?:within|fits)\("([^"]+)"', src))
    assert tested == set(BY_KEY), sorted(set(BY_KEY) ^ tested)


def test_published_values_are_those_of_the_data_file():
    data = published_data()
    for c in COMPARISONS + KNOWN_FAILURES:  # type: ignore[operator]
        assert c.data_key in data, c.data_key
    for c in COMPARISONS:
        if not c.is_memory and not c.published_note:
            assert c.published == data[c.data_key]["value"], c.key


def test_every_validation_scenario_is_compared_and_cites_its_source():
    used = {c.scenario for c in COMPARISONS} | {k.scenario for k in KNOWN_FAILURES}
    for p in sorted(SCENARIOS.glob("*.toml")):
        if p.name == "qwen2-57b-a14b.toml":  # a model, not a scenario
            continue
        assert p.name in used, f"{p.name} is not used by any comparison"
        head = p.read_text().splitlines()[0]
        assert head.startswith("# Published"), f"{p.name}: first line should cite the published figure"


def test_qwen2_57b_model_file_matches_its_published_size():
    # Qwen2 technical report (arXiv 2407.10671), Table 1 and the model name: 57B total, 14B activated
    # (rounded to whole billions, hence 3%).
    counts = count_params(load_model(SCENARIOS / "qwen2-57b-a14b.toml"))
    assert counts.total == pytest.approx(57e9, rel=0.03)
    assert counts.active == pytest.approx(14e9, rel=0.03)


def test_the_comparison_script_prints_every_row_as_markdown():
    out = subprocess.run([sys.executable, str(REPO / "tests" / "step" / "published_e2e.py")],
                         capture_output=True, text=True, check=True, cwd="/").stdout
    assert out == table() + "\n"
    for c in COMPARISONS:
        assert c.what in out
    assert out.count("\n| ") >= len(COMPARISONS) + len(KNOWN_FAILURES)
