"""The fused attention core: its kernel efficiency over keys per query (profile tables from published kernel
benchmarks), its backward's recomputation, and sliding-window layers (docs/step-model.md, "Attention kernel
efficiency")."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest

from moesim.catalog import load_model
from moesim.flops import attention_score_flops
from moesim.hardware import bundled_profile_path, load_hardware
from moesim.step.ops import ATTENTION_BACKWARD_FACTOR, attention_ops
from moesim.step.parallel import Parallel
from moesim.timing import op_terms

H100 = "h100-sxm"


def _par(tp: int = 1) -> Parallel:
    return Parallel(num_gpus=tp, tp=tp, pp=1, dp=1, ep=1, etp=1, edp=1, zero_stage=0, sequence_parallel=False,
                    gpus_per_node=8)


def _core(model: str, n: float, keys: float, *, tp: int = 1, **kw):
    ops = attention_ops(load_model(model), _par(tp), n, keys, **kw)
    return {op.name: op for op in ops}


def test_the_core_runs_at_the_profiles_forward_and_backward_curves_at_its_keys_per_query():
    hw = load_hardware(H100)
    eff = hw.efficiency
    assert [a.head_dim for a in eff.attention] == [64, 128]
    att = eff.attention[1]
    peak = hw.accelerator.peak_for("bf16")
    for seq in (512, 4096, 16384):
        keys = (seq + 1) / 2
        core = _core("mixtral-8x7b", 4096.0, keys)["attention_core"]
        assert core.compute_kind == "attention" and core.keys_per_query == keys
        compute, _, _ = op_terms(hw, core, "fp8")  # the core stays in bf16 under an fp8 recipe
        assert compute == pytest.approx(core.flops / (peak * att.forward_frac(keys)), rel=1e-12)
        back = core.backward(2.0)  # the caller's dgrad + wgrad factor does not apply to the core
        assert back.flops == pytest.approx(ATTENTION_BACKWARD_FACTOR * core.flops, rel=1e-12)
        compute_b, _, _ = op_terms(hw, back, "bf16")
        assert compute_b == pytest.approx(back.flops / (peak * att.backward_frac(keys)), rel=1e-12)


def test_short_sequences_cost_more_per_flop_than_long_ones():
    """The kernel's key-block loop fills its pipeline over more blocks at longer keys (FA3: 292 TFLOP/s causal
    at S = 512 against 616 at 16k on H100)."""
    hw = load_hardware(H100)
    per_flop = []
    for seq in (512, 2048, 8192):
        core = _core("mixtral-8x7b", 8192.0, (seq + 1) / 2)["attention_core"]
        per_flop.append(op_terms(hw, core, "bf16")[0] / core.flops)
    assert per_flop[0] > 1.5 * per_flop[2]
    assert per_flop[0] > per_flop[1] > per_flop[2]


def test_a_profile_without_an_attention_table_times_the_core_as_a_gemm_of_its_flops():
    hw = load_hardware("a100-sxm-80gb")
    assert hw.efficiency.attention == []
    core = _core("mixtral-8x7b", 4096.0, 2048.5)["attention_core"]
    compute, _, _ = op_terms(hw, core, "bf16")
    want = core.flops / (hw.accelerator.peak_for("bf16") * hw.efficiency.matmul_frac(core.flops))
    assert compute == pytest.approx(want, rel=1e-12)


def test_projections_and_norms_have_a_dgrad_plus_wgrad_backward():
    ops = _core("mixtral-8x7b", 4096.0, 2048.5)
    for name in ("attention_proj", "attention_norm_rope"):
        op = ops[name]
        assert op.backward(2.0).flops == pytest.approx(2.0 * op.flops, rel=1e-12)
        assert op.backward(2.0).bytes_moved == pytest.approx(2.0 * op.bytes_moved, rel=1e-12)


def test_sliding_window_layers_attend_their_window_at_their_own_efficiency():
    model = load_model("gpt-oss-120b")
    window = float(model.attention.sliding_window)
    share = model.num_sliding_layers / model.num_layers
    assert 0 < share < 1
    n, keys, tp = 4096.0, 2048.5, 2
    ops = _core("gpt-oss-120b", n, keys, tp=tp)
    full, win = ops["attention_core"], ops["attention_core_window"]
    assert win.keys_per_query == window and full.keys_per_query == keys
    assert full.num_kernels + win.num_kernels == pytest.approx(1.0)  # one core kernel per layer on average
    # the two ops together are the model's attention FLOPs per layer (moesim.flops)
    assert full.flops + win.flops == pytest.approx(attention_score_flops(model, keys) / model.num_layers * n / tp,
                                                   rel=1e-12)
    hw = load_hardware(H100)
    assert op_terms(hw, win, "bf16")[0] / win.flops > op_terms(hw, full, "bf16")[0] / full.flops
    assert hw.efficiency.attention_frac(64, window, False) < hw.efficiency.attention_frac(64, keys, False)


def test_decode_reads_only_the_window_of_the_kv_cache_in_sliding_layers():
    model = load_model("gpt-oss-120b")
    window = float(model.attention.sliding_window)
    b, ctx = 64.0, 8192.0
    ops = _core("gpt-oss-120b", b, ctx, decode_batch=b, context=ctx)
    full, win = ops["attention_core"], ops["attention_core_window"]
    share_f, share_w = full.num_kernels, win.num_kernels
    kv_per_token = full.bytes_moved / share_f / (b * ctx + b)  # full layers: read b x ctx tokens, write b
    assert win.bytes_moved == pytest.approx(share_w * kv_per_token * (b * window + b), rel=1e-9)
    assert window < ctx


def test_vector_token_counts_give_the_scalar_times():
    hw = load_hardware(H100)
    ns = np.array([512.0, 4096.0, 32768.0])
    vec = _core("gpt-oss-120b", ns, 1024.5)
    for i, n in enumerate(ns):
        one = _core("gpt-oss-120b", float(n), 1024.5)
        for name in ("attention_core", "attention_core_window"):
            assert op_terms(hw, vec[name], "bf16")[0][i] == pytest.approx(op_terms(hw, one[name], "bf16")[0],
                                                                          rel=1e-12)


def test_a_bad_attention_curve_in_a_profile_exits_2_naming_the_field(run_cli, tmp_path):
    raw = tomllib.loads(bundled_profile_path(H100).read_text())
    raw["efficiency"]["attention"][1]["forward_frac"]["points"] = [[4096, 0.6], [1024, 0.5]]
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(raw))
    res = run_cli("hardware", "show", str(f))
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "efficiency.attention.1.forward_frac" in line and "bad.json" in line


# ----------------------------------------------------------------------------- MLA's absorbed decode


def test_mla_decode_queries_attend_the_latent_in_the_absorbed_form():
    """DeepSeek-V3: 128 heads, latent 512, rope key 64 -> 2 x 128 x (512 + 64) + 2 x 128 x 512 = 278,528 FLOPs per
    cached key, against 2 x 128 x (192 + 128) = 81,920 in the expanded form a prefill runs."""
    model = load_model("deepseek-v3")
    b, ctx, tp = 64.0, 4096.0, 2
    ops = _core("deepseek-v3", b, ctx, tp=tp, decode_batch=b, context=ctx)
    dec, pre = ops["attention_core_decode"], ops["attention_core"]
    assert dec.flops == pytest.approx(278_528 * b * ctx / tp, rel=1e-12)
    assert dec.keys_per_query == ctx and dec.num_kernels == 1.0
    assert pre.flops == 0.0 and pre.num_kernels == 0.0  # no prefill tokens in a pure decode iteration
    # a prefill of the same model stays in the expanded form, with no decode kernel
    prefill = _core("deepseek-v3", 4096.0, 2048.5, tp=tp)
    assert "attention_core_decode" not in prefill
    assert prefill["attention_core"].flops == pytest.approx(
        attention_score_flops(model, 2048.5) / model.num_layers * 4096.0 / tp, rel=1e-12)


def test_an_iteration_with_prefill_chunks_splits_its_query_key_pairs_between_the_two_forms():
    b, ctx, chunk, prompt = 32.0, 3000.0, 256.0, 2048.0
    n = b + chunk
    keys = (b * ctx + chunk * (prompt + 1) / 2) / n
    ops = _core("deepseek-v3", n, keys, decode_batch=b, context=ctx, decode_tokens=b)
    dec, pre = ops["attention_core_decode"], ops["attention_core"]
    assert pre.flops == pytest.approx(81_920 * chunk * (prompt + 1) / 2, rel=1e-9)
    assert pre.keys_per_query == pytest.approx((prompt + 1) / 2, rel=1e-9)
    assert dec.flops == pytest.approx(278_528 * b * ctx, rel=1e-12)
    assert pre.num_kernels == dec.num_kernels == 1.0


def test_mtp_verified_tokens_are_decode_queries_each_attending_the_context():
    b, ctx, verified = 16.0, 1024.0, 2.0
    ops = _core("deepseek-v3", b * verified, ctx, decode_batch=b, context=ctx, decode_tokens=b * verified)
    assert ops["attention_core_decode"].flops == pytest.approx(278_528 * b * verified * ctx, rel=1e-12)
    assert ops["attention_core"].flops == 0.0


def test_absorbed_decode_is_compute_bound_on_hopper():
    """The absorbed form does 3.4x the expanded count's core FLOPs: 242 FLOPs per byte of BF16 latent, above
    H200's ridge at the attention curve, so the core is compute-bound, not bound by the latent read."""
    hw = load_hardware("h200")
    model = load_model("deepseek-v3")
    dec = _core("deepseek-v3", 128.0, 2048.0, decode_batch=128.0, context=2048.0)["attention_core_decode"]
    compute, memory, _ = op_terms(hw, dec, "fp8")
    assert compute > memory
    expanded_flops = attention_score_flops(model, 2048.0) / model.num_layers * 128.0
    assert dec.flops / expanded_flops == pytest.approx(278_528 / 81_920, rel=1e-12)


def test_the_head_dimension_picks_and_interpolates_the_benchmarked_curves():
    """FlashAttention-3 runs head dim 64 at 420 TFLOP/s (causal, S = 4k) against 579 at 128: gpt-oss's 64-wide
    heads cost more per FLOP than Mixtral's 128-wide ones at the same keys per query."""
    eff = load_hardware(H100).efficiency
    lo, hi = eff.attention
    assert eff.attention_frac(64, 2048.0, False) == pytest.approx(lo.forward_frac(2048.0))
    assert eff.attention_frac(128, 2048.0, True) == pytest.approx(hi.backward_frac(2048.0))
    assert eff.attention_frac(192, 2048.0, False) == pytest.approx(hi.forward_frac(2048.0))  # held above
    mid = eff.attention_frac(np.sqrt(64 * 128), 2048.0, False)  # halfway in log(head dim)
    assert mid == pytest.approx((lo.forward_frac(2048.0) + hi.forward_frac(2048.0)) / 2)
    oss = _core("gpt-oss-120b", 4096.0, 2048.5)["attention_core"]
    mix = _core("mixtral-8x7b", 4096.0, 2048.5)["attention_core"]
    assert (oss.head_dim, mix.head_dim) == (64.0, 128.0)
    hw = load_hardware(H100)
    assert op_terms(hw, oss, "bf16")[0] / oss.flops > 1.3 * op_terms(hw, mix, "bf16")[0] / mix.flops


def test_head_dims_of_a_profile_must_increase(run_cli, tmp_path):
    raw = tomllib.loads(bundled_profile_path(H100).read_text())
    raw["efficiency"]["attention"][0]["head_dim"] = 256
    f = tmp_path / "dims.json"
    f.write_text(json.dumps(raw))
    res = run_cli("hardware", "show", str(f))
    assert res.exit_code == 2 and "head_dim" in res.stderr and "\n" not in res.stderr.strip()
