"""The adapter to the step, memory and communication models: same figures as the step model."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.memory import kv_bytes_per_token
from moesim.scenario import load_scenario
from moesim.serving import costs
from moesim.step.estimate import serve_curve


@pytest.fixture(scope="module")
def mixtral():
    sc = load_scenario("mixtral-8x7b-serve-h100")
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    return sc, model, hw, costs.iteration_cost(sc, model, hw, max_tokens=8192, max_keys=4096, max_kv_read=500_000)


@pytest.mark.parametrize("batch", [1, 16, 64])
def test_decode_iteration_is_the_step_models_decode_step(mixtral, batch):
    sc, model, hw, cost = mixtral
    w = sc.workload
    ctx = w.prompt_tokens + w.output_tokens / 2
    decode_only = load_scenario("mixtral-8x7b-serve-h100", ["workload.phase=decode"])  # no prefill chunks riding along
    tpot = float(serve_curve(decode_only, model, hw, [batch])["tpot_s"][0])
    assert cost.exact_s(batch, ctx, batch * ctx, batch) == pytest.approx(tpot, rel=1e-12)
    assert cost.decode_s(batch, ctx) == pytest.approx(tpot, rel=2e-3)  # the interpolated table


def test_prefill_iteration_is_the_step_models_ttft(mixtral):
    sc, model, hw, cost = mixtral
    P = sc.workload.prompt_tokens
    ttft = float(serve_curve(sc, model, hw, [1])["ttft_s"][0])
    assert cost.exact_s(P, (P + 1) / 2, 0.0, 1.0) == pytest.approx(ttft, rel=1e-12)
    assert cost.prefill_s(P) == pytest.approx(ttft, rel=2e-3)


@pytest.mark.parametrize("batch", [1, 32])
def test_mla_decode_and_prefill_iterations_are_the_step_models(batch):
    """DeepSeek-V3: the simulator states a decode iteration by its total cached tokens; the absorbed MLA core
    still gets the step model's FLOPs and kernel efficiency."""
    sc = load_scenario("deepseek-v3-decode-h800")
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    cost = costs.iteration_cost(sc, model, hw, max_tokens=8192, max_keys=8192, max_kv_read=500_000)
    w = sc.workload
    ctx = w.prompt_tokens + w.output_tokens / 2
    decode_only = load_scenario("deepseek-v3-decode-h800", ["workload.phase=decode"])
    tpot = float(serve_curve(decode_only, model, hw, [batch])["tpot_s"][0])
    assert cost.exact_s(batch, ctx, batch * ctx, batch) == pytest.approx(tpot, rel=1e-12)
    P = 1024
    prefill = load_scenario("deepseek-v3-decode-h800", ["workload.phase=both", f"workload.prompt_tokens={P}"])
    ttft = float(serve_curve(prefill, model, hw, [1])["ttft_s"][0])
    cost_p = costs.iteration_cost(prefill, model, hw, max_tokens=8192, max_keys=8192, max_kv_read=500_000)
    assert cost_p.exact_s(P, (P + 1) / 2, 0.0, 1.0) == pytest.approx(ttft, rel=1e-12)


def test_interpolated_table_is_within_half_a_percent_of_the_step_model(mixtral):
    *_, cost = mixtral
    rng = np.random.default_rng(0)
    for _ in range(25):
        n = float(rng.integers(1, 8000))
        keys = float(rng.uniform(1, 4000))
        kv = float(rng.uniform(0, 400_000))
        lm = float(rng.integers(1, int(n) + 1))
        assert cost.iteration_s(n, keys, kv, lm) == pytest.approx(cost.exact_s(n, keys, kv, lm), rel=5e-3)


def test_pipeline_stages_match_the_step_model_too():
    sc = load_scenario("mixtral-8x7b-serve-h100", ["layout.tp=4", "layout.pp=2", "layout.etp=4"])
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    cost = costs.iteration_cost(sc, model, hw, max_tokens=8192, max_keys=4096, max_kv_read=100_000)
    cur = serve_curve(sc, model, hw, [8])
    dec = serve_curve(sc.model_copy(update={"workload": sc.workload.model_copy(update={"phase": "decode"})}), model,
                      hw, [8])
    ctx = sc.workload.prompt_tokens + sc.workload.output_tokens / 2
    assert cost.decode_s(8, ctx) == pytest.approx(float(dec["tpot_s"][0]), rel=2e-3)
    assert cost.prefill_s(sc.workload.prompt_tokens) == pytest.approx(float(cur["ttft_s"][0]), rel=2e-3)


def test_kv_capacity_uses_the_memory_models_bytes_per_token(mixtral):
    sc, model, hw, _ = mixtral
    kv = costs.kv_capacity(sc, model, hw, max_num_seqs=64, max_num_batched_tokens=8192, where="t")
    # Mixtral: 32 layers x (K + V) x 8 KV heads x 128 x 2 bytes, split over TP 8 (8 KV heads)
    assert kv.bytes_per_token_per_gpu == pytest.approx(kv_bytes_per_token(model, "bf16") / 8)
    assert kv.bytes_per_token_per_gpu == 32 * 2 * 8 * 128 * 2 / 8
    assert kv.tokens_per_dp_rank * kv.bytes_per_token_per_gpu <= kv.free_bytes_per_gpu
    # more seats hold more activations: less room for the cache
    more = costs.kv_capacity(sc, model, hw, max_num_seqs=1024, max_num_batched_tokens=8192, where="t")
    assert more.tokens_per_dp_rank < kv.tokens_per_dp_rank


def test_kv_capacity_refuses_a_deployment_whose_weights_fill_the_gpu():
    sc = load_scenario("mixtral-8x7b-serve-h100", ["num_gpus=1", "layout.tp=1", "layout.etp=1"])
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    with pytest.raises(costs.InputError, match="no room for a KV cache"):
        costs.kv_capacity(sc, model, hw, max_num_seqs=64, max_num_batched_tokens=8192, where="t")


def test_kv_transfer_goes_over_nvlink_inside_a_node_and_scales_with_bytes():
    hw = load_scenario("mixtral-8x7b-serve-h100").resolve_hardware()
    inside = costs.kv_transfer_s(hw, 1e9, same_node=True)
    across = costs.kv_transfer_s(hw, 1e9, same_node=False)
    assert inside < across
    assert costs.kv_transfer_s(hw, 2e9, same_node=False) == pytest.approx(2 * across, rel=0.05)


@pytest.mark.parametrize("overlap", [True, False])
def test_the_engines_host_step_is_the_step_models_in_the_simulator_too(overlap):
    """serving.host_step_s / host_step_per_token_s: one formula (estimate.engine_iteration_s) for the step
    model's TPOT and TTFT and for the simulator's iterations, max(device, host) overlapped, device + host not."""
    sets = ["serving.host_step_s=0.006", "serving.host_step_per_token_s=2e-6", f"serving.overlap_host_step={str(overlap).lower()}"]
    plain = load_scenario("mixtral-8x7b-serve-h100", ["workload.phase=decode"])
    sc = load_scenario("mixtral-8x7b-serve-h100", ["workload.phase=decode", *sets])
    model, hw = sc.resolve_model(), sc.resolve_hardware()
    w = sc.workload
    ctx = w.prompt_tokens + w.output_tokens / 2
    batches = [1, 64, 512]
    device = serve_curve(plain, model, hw, batches)["tpot_s"]
    tpot = serve_curve(sc, model, hw, batches)["tpot_s"]
    host = 0.006 + 2e-6 * np.asarray(batches, dtype=float)
    want = np.maximum(device, host) if overlap else device + host
    assert np.allclose(tpot, want, rtol=1e-12, atol=0)
    # overlapped, a small batch is host-bound (6 ms > its device step) and a large one is not
    assert (tpot[0] == pytest.approx(host[0], rel=1e-12)) == overlap and device[2] > host[2]
    cost = costs.iteration_cost(sc, model, hw, max_tokens=8192, max_keys=4096, max_kv_read=500_000)
    for b, t in zip(batches, tpot):
        assert cost.exact_s(b, ctx, b * ctx, b) == pytest.approx(t, rel=1e-12)
        assert cost.decode_s(b, ctx) == pytest.approx(t, rel=2e-3)
    # the prefill iteration samples one token and pays the host step once
    both_plain = load_scenario("mixtral-8x7b-serve-h100")
    both = load_scenario("mixtral-8x7b-serve-h100", sets)
    dev_ttft = float(serve_curve(both_plain, model, hw, [1])["ttft_s"][0])
    ttft = float(serve_curve(both, model, hw, [1])["ttft_s"][0])
    h1 = 0.006 + 2e-6
    assert ttft == pytest.approx(max(dev_ttft, h1) if overlap else dev_ttft + h1, rel=1e-12)
