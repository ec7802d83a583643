"""Serving under load end to end: the checks of docs/serving.md (vanishing rate, Little's law, saturation, KV)."""

from __future__ import annotations

import numpy as np
import pytest

import moesim
from moesim.errors import InputError
from moesim.scenario import load_scenario
from moesim.serving.api import deployment, run_stream, saturation_rate, simulate, simulate_rates
from moesim.serving.stream import generate

MIXTRAL = "mixtral-8x7b-serve-h100"
SEATS = ["serving.max_num_seqs=128"]


@pytest.mark.parametrize("overrides", [[], ["layout.tp=4", "layout.pp=2", "layout.etp=4"]],
                         ids=["tp8", "tp4-pp2"])
def test_at_a_vanishing_rate_ttft_and_tpot_are_one_requests_prefill_and_decode_step(overrides):
    # one request at a time: nothing shares its iterations (the estimate's steady state has arrivals' prefill
    # chunks in every decode iteration; a decode-only estimate has none)
    est = moesim.estimate(MIXTRAL, overrides + ["workload.batch_size=1"])
    dec = moesim.estimate(MIXTRAL, overrides + ["workload.batch_size=1", "workload.phase=decode"])
    r = simulate(MIXTRAL, rate=0.001, num_requests=20, overrides=overrides, saturation=False)
    assert r.ttft.mean_s == pytest.approx(est.ttft_s, rel=0.02)
    assert r.tpot.mean_s == pytest.approx(dec.tpot_s, rel=0.02)
    assert r.queue.max_s == 0.0


def test_vanishing_rate_on_deepseek_v3_with_mla_and_fp8():
    sc = "deepseek-v3-serve-h200"
    est = moesim.estimate(sc, ["workload.batch_size=1"])
    dec = moesim.estimate(sc, ["workload.batch_size=1", "workload.phase=decode"])
    r = simulate(sc, rate=0.001, num_requests=10, saturation=False)
    assert r.ttft.mean_s == pytest.approx(est.ttft_s, rel=0.02)
    assert r.tpot.mean_s == pytest.approx(dec.tpot_s, rel=0.02)


def test_at_a_vanishing_rate_a_cached_prefix_gives_the_estimates_ttft():
    """The simulator starts a request's prefill after its cached prefix, as the step model does."""
    ov = ["workload.cached_prompt_tokens=700"]
    est = moesim.estimate(MIXTRAL, ov + ["workload.batch_size=1"])
    plain = moesim.estimate(MIXTRAL, ["workload.batch_size=1"])
    r = simulate(MIXTRAL, rate=0.001, num_requests=20, overrides=ov, saturation=False)
    assert r.ttft.mean_s == pytest.approx(est.ttft_s, rel=0.02)
    assert est.ttft_s < plain.ttft_s


@pytest.fixture(scope="module")
def mixtral_dep():
    sc = load_scenario(MIXTRAL, SEATS)
    dep = deployment(sc, max_context=4096)
    stream = generate(1.0, 4000, prompt_tokens="lognormal:800,0.7", output_tokens="uniform:16,400", seed=5,
                      max_context=4096)
    return dep, stream, saturation_rate(dep, stream)


def test_littles_law_holds_on_the_simulated_stream(mixtral_dep):
    dep, stream, sat = mixtral_dep
    rate = 0.6 * sat
    r = run_stream(dep, stream.at_rate(rate))
    tl = r.timelines[0]
    # the engine's own count of requests in the system (queued + running), sampled over time
    in_system = np.mean(np.add(tl.num_waiting, tl.num_running))
    assert in_system == pytest.approx(rate * r.e2e.mean_s, rel=0.05)
    assert r.mean_num_in_system == pytest.approx(rate * r.e2e.mean_s, rel=0.05)


def test_throughput_never_exceeds_the_saturation_rate(mixtral_dep):
    dep, stream, sat = mixtral_dep
    served = [run_stream(dep, stream.at_rate(f * sat), keep_requests=False).requests_per_s for f in (0.5, 1.0, 1.5, 3.0)]
    assert served[0] == pytest.approx(0.5 * sat, rel=0.06)
    assert max(served) <= 1.03 * sat
    assert served[-1] == pytest.approx(sat, rel=0.1)


def test_above_saturation_p99_ttft_grows_with_the_stream_length(mixtral_dep):
    dep, stream, sat = mixtral_dep
    short = generate(1.5 * sat, 1000, prompt_tokens="lognormal:800,0.7", output_tokens="uniform:16,400", seed=6)
    long = generate(1.5 * sat, 3000, prompt_tokens="lognormal:800,0.7", output_tokens="uniform:16,400", seed=6)
    p_short = run_stream(dep, short, keep_requests=False).ttft.p99_s
    p_long = run_stream(dep, long, keep_requests=False).ttft.p99_s
    assert p_long > 2.0 * p_short
    # below saturation it does not
    below_s = run_stream(dep, short.at_rate(0.5 * sat), keep_requests=False).ttft.p99_s
    below_l = run_stream(dep, long.at_rate(0.5 * sat), keep_requests=False).ttft.p99_s
    assert below_l < 2.0 * below_s


def test_kv_cache_use_never_exceeds_the_memory_models_capacity():
    # workspace raised so that the cache holds few sequences: the scheduler must queue and preempt
    ov = ["serving.max_num_seqs=256", "workspace_bytes=62.5e9"]
    r = simulate(MIXTRAL, rate=40, num_requests=600, overrides=ov, prompt_tokens="uniform:500,3000",
                 output_tokens="uniform:200,800", saturation=False)
    pool = r.pools[0]
    assert pool.num_kv_tokens_per_instance < 400_000
    assert r.num_preemptions > 0
    assert pool.peak_kv_used_frac <= 1.0
    assert max(r.timelines[0].kv_used_frac) <= 1.0
    assert max(r.timelines[0].kv_used_frac) > 0.8  # it did fill up
    assert all(x is not None for x in (r.e2e.max_s,))


def test_same_seed_same_stream_and_results():
    a = simulate(MIXTRAL, rate=20, num_requests=300, seed=3, prompt_tokens="lognormal:900,0.5", saturation=False)
    b = simulate(MIXTRAL, rate=20, num_requests=300, seed=3, prompt_tokens="lognormal:900,0.5", saturation=False)
    c = simulate(MIXTRAL, rate=20, num_requests=300, seed=4, prompt_tokens="lognormal:900,0.5", saturation=False)
    assert a.records() == b.records()
    assert a.records() != c.records()


def test_records_are_per_request_with_units_in_names():
    r = simulate(MIXTRAL, rate=10, num_requests=50, saturation=False)
    rows = r.records()
    assert len(rows) == 50
    assert {"arrival_s", "ttft_s", "tpot_s", "e2e_s", "prompt_tokens", "output_tokens"} <= set(rows[0])
    assert all(row["e2e_s"] >= row["ttft_s"] > 0 for row in rows)


def test_disaggregated_pools_move_the_kv_cache_and_decode_elsewhere():
    ov = SEATS + ["serving.prefill.num_gpus=4", "serving.prefill.layout.tp=4", "serving.prefill.layout.etp=4",
                  "serving.decode.num_gpus=4", "serving.decode.layout.tp=4", "serving.decode.layout.etp=4"]
    est = moesim.estimate(MIXTRAL, ["num_gpus=4", "layout.tp=4", "layout.etp=4", "workload.batch_size=1"])
    r = simulate(MIXTRAL, rate=0.001, num_requests=10, overrides=ov, saturation=False)
    assert r.mode == "disaggregated" and r.num_gpus == 8
    assert [p.role for p in r.pools] == ["prefill", "decode"]
    assert r.ttft.mean_s == pytest.approx(est.ttft_s, rel=0.02)
    # 1,024 prompt tokens x 32 KiB per token per GPU (TP 4) over NVLink (4 + 4 GPUs share a node)
    assert r.kv_transfer.mean_s > 0
    across = simulate(MIXTRAL, rate=0.001, num_requests=10, saturation=False,
                      overrides=[o.replace("num_gpus=4", "num_gpus=8").replace("tp=4", "tp=8").replace("etp=4", "etp=8")
                                 for o in ov])
    assert across.kv_transfer.mean_s > r.kv_transfer.mean_s  # 8 + 8 GPUs: two nodes, over InfiniBand
    # TPOT includes the transfer gap, so it is at least the decode step (of a pool that only decodes)
    dec = moesim.estimate(MIXTRAL, ["num_gpus=4", "layout.tp=4", "layout.etp=4", "workload.batch_size=1",
                                    "workload.phase=decode"])
    assert r.tpot.mean_s >= dec.tpot_s * 0.98


def test_rate_sweep_reuses_the_requests_and_orders_latency():
    s = simulate_rates(MIXTRAL, [5.0, 20.0, 40.0], num_requests=400, overrides=SEATS)
    assert [p.rate_per_s for p in s.points] == [5.0, 20.0, 40.0]
    assert s.points[0].mean_prompt_tokens == s.points[2].mean_prompt_tokens
    ttft = [p.ttft.p50_s for p in s.points]
    assert ttft == sorted(ttft)
    assert len(s.records()) == 3 and "ttft_p99_s" in s.records()[0]


def test_a_trace_runs_and_names_its_lines(tmp_path):
    r = simulate(MIXTRAL, trace="scenarios/traces/sample.csv", saturation=False)
    assert r.num_requests == 200 and r.rate_per_s is None
    bad = tmp_path / "long.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,10\n1,40000,10\n")
    with pytest.raises(InputError, match=r"line 3.*exceeds the 32,768-token context"):
        simulate(MIXTRAL, trace=bad, saturation=False)


@pytest.mark.parametrize("kw,match", [
    (dict(rate=0), "rate must be"), (dict(rate=-3), "rate must be"), (dict(rate=float("nan")), "rate must be"),
    (dict(), "give a request rate"),
    (dict(rate=1, prompt_tokens="fixed:40000"), "over the model's 32,768-token context"),
    (dict(rate=1, max_tpot_s=0), "seconds > 0"),
])
def test_bad_arguments_are_one_line_input_errors(kw, match):
    with pytest.raises(InputError, match=match):
        simulate(MIXTRAL, num_requests=10, saturation=False, **kw)


def test_a_training_scenario_is_refused():
    with pytest.raises(InputError, match="serving scenario"):
        simulate("deepseek-v3-train-h800", rate=1, num_requests=10, saturation=False)


def test_one_pool_without_the_other_is_refused():
    with pytest.raises(InputError, match="serving.prefill and serving.decode go together"):
        simulate(MIXTRAL, rate=1, num_requests=10, overrides=["serving.prefill.num_gpus=4"], saturation=False)
