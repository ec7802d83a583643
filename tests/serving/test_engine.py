"""The scheduler of one engine, against hand calculations with synthetic iteration costs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.serving.engine import EngineConfig, run_engine


def cfg(**kw) -> EngineConfig:
    base = dict(dp=1, pp=1, max_num_seqs=8, max_num_batched_tokens=512, kv_capacity_tokens=1_000_000,
                kv_block_tokens=16, chunked_prefill=True)
    base.update(kw)
    return EngineConfig(**base)


def const(t: float):
    return lambda n, keys, kv_read, lm: t


def test_one_request_takes_one_prefill_then_one_iteration_per_further_token():
    # prefill (1 iteration) gives token 1; tokens 2..O take one decode iteration each
    r = run_engine([0.0], [100], [5], const(0.01), cfg())
    assert r.first_token_s[0] == pytest.approx(0.01)
    assert r.finish_s[0] == pytest.approx(0.05)
    assert r.second_token_s[0] == pytest.approx(0.02)
    assert r.num_iterations == 5


def test_a_prompt_longer_than_the_token_budget_is_prefilled_in_chunks():
    # 1,200 tokens with 512 per iteration: chunks of 512, 512, 176 -> first token after 3 iterations
    r = run_engine([0.0], [1200], [2], const(0.01), cfg())
    assert r.first_token_s[0] == pytest.approx(0.03)
    assert r.finish_s[0] == pytest.approx(0.04)


def test_iteration_cost_sees_decode_batch_context_and_chunk():
    seen = []

    def cost(n, keys, kv_read, lm):
        seen.append((n, keys, kv_read, lm))
        return 0.01

    # request 0 decodes while request 1 (arrives at 0.015) is prefilled in the same iteration
    run_engine([0.0, 0.015], [100, 10], [4, 2], cost, cfg(), skip_ahead=False)
    # iteration 1: prefill of 100 tokens alone: keys (100+1)/2, nothing read, one LM-head token
    assert seen[0] == (100, pytest.approx(50.5), 0.0, 1)
    # iteration 2 (t=0.01..0.02): decode of request 0 at 101 keys
    assert seen[1] == (1, pytest.approx(101.0), pytest.approx(101.0), 1)
    # iteration 3: decode (102 keys) + prefill chunk of 10 (55 key pairs) -> n 11, kv read 102, lm 2
    n, keys, kv_read, lm = seen[2]
    assert (n, kv_read, lm) == (11, pytest.approx(102.0), 2)
    assert keys == pytest.approx((102 + 10 * 11 / 2) / 11)


def test_skipping_identical_decode_iterations_changes_nothing_with_a_constant_cost():
    rng = np.random.default_rng(3)
    arr = np.cumsum(rng.exponential(0.05, 300))
    P = rng.integers(10, 400, 300)
    O = rng.integers(1, 60, 300)
    a = run_engine(arr, P, O, const(0.004), cfg(), skip_ahead=True)
    b = run_engine(arr, P, O, const(0.004), cfg(), skip_ahead=False)
    assert a.num_iterations == b.num_iterations
    np.testing.assert_allclose(a.first_token_s, b.first_token_s, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.finish_s, b.finish_s, rtol=0, atol=1e-9)


def test_skipping_stays_close_with_a_cost_growing_in_the_context():
    def cost(n, keys, kv_read, lm):
        return 0.002 + 1e-6 * n + 2e-8 * kv_read

    rng = np.random.default_rng(4)
    arr = np.cumsum(rng.exponential(0.02, 400))
    P = rng.integers(100, 2000, 400)
    O = rng.integers(2, 300, 400)
    a = run_engine(arr, P, O, cost, cfg(max_num_seqs=64, max_num_batched_tokens=4096), skip_ahead=True)
    b = run_engine(arr, P, O, cost, cfg(max_num_seqs=64, max_num_batched_tokens=4096), skip_ahead=False)
    e2e_a, e2e_b = a.finish_s - arr, b.finish_s - arr
    assert np.mean(e2e_a) == pytest.approx(np.mean(e2e_b), rel=0.01)
    assert a.num_iterations == pytest.approx(b.num_iterations, rel=0.02)


def test_running_batch_never_exceeds_max_num_seqs():
    arr = np.zeros(50)
    r = run_engine(arr, np.full(50, 20), np.full(50, 30), const(0.01), cfg(max_num_seqs=6), sample_dt_s=0.005)
    assert r.num_running.max() == 6
    assert np.all(np.isfinite(r.finish_s))
    # 50 requests, 6 at a time, 30 tokens each: at least ceil(50 / 6) x 30 iterations
    assert r.num_iterations >= math.ceil(50 / 6) * 30


def test_kv_cache_is_never_overfilled_and_preemption_recomputes():
    # 12 requests of 200 + 300 tokens on a 2,000-token cache: they cannot all stay; some are preempted
    n = 12
    c = cfg(max_num_seqs=12, max_num_batched_tokens=2048, kv_capacity_tokens=2000)
    r = run_engine(np.zeros(n), np.full(n, 200), np.full(n, 300), const(0.01), c, sample_dt_s=0.01)
    assert np.all(np.isfinite(r.finish_s))
    assert r.num_preemptions.sum() > 0
    assert r.peak_kv_tokens <= 2000
    assert r.kv_used_tokens.max() <= 2000


def test_without_chunked_prefill_decode_waits_for_a_prompt():
    # request 1's prompt lands mid-decode of request 0; unchunked, request 0 skips that iteration
    kw = dict(max_num_seqs=4, max_num_batched_tokens=512)
    chunked = run_engine([0.0, 0.025], [100, 100], [10, 2], const(0.01), cfg(chunked_prefill=True, **kw))
    whole = run_engine([0.0, 0.025], [100, 100], [10, 2], const(0.01), cfg(chunked_prefill=False, **kw))
    assert chunked.finish_s[0] == pytest.approx(0.10)
    assert whole.finish_s[0] == pytest.approx(0.11)
    assert whole.itl_s.max() == pytest.approx(0.02)


def test_data_parallel_ranks_pool_seats_and_spread_decode_tokens():
    seen = []

    def cost(n, keys, kv_read, lm):
        seen.append(n)
        return 0.01

    c = cfg(dp=4, max_num_seqs=2)
    r = run_engine(np.zeros(8), np.full(8, 8), np.full(8, 3), cost, c, sample_dt_s=0.005, skip_ahead=False)
    assert r.num_running.max() == 8  # 4 ranks x 2 seats
    # first iteration: 8 prompts of 8 tokens, each on the rank with the most budget left -> 2 per rank
    assert seen[0] == 16
    # decode of 8 sequences over 4 ranks: 2 tokens per rank
    assert seen[1] == pytest.approx(2.0)


def test_a_long_prompt_fills_one_rank_and_spills_to_the_next():
    seen = []

    def cost(n, keys, kv_read, lm):
        seen.append(n)
        return 0.01

    # 3 prompts of 400 tokens, 512 per rank, 2 ranks: ranks get 400 and 400, the third takes the 112 left of one
    c = cfg(dp=2, max_num_seqs=4)
    run_engine(np.zeros(3), np.full(3, 400), np.full(3, 2), cost, c, skip_ahead=False)
    assert seen[0] == 512


def test_prefilled_requests_join_decode_at_once():
    # the decode pool of a disaggregated deployment: prompt cached, first token already out
    r = run_engine([0.0], [100], [4], const(0.01), cfg(), prefilled=[True])
    assert math.isnan(r.first_token_s[0])
    assert r.second_token_s[0] == pytest.approx(0.01)
    assert r.finish_s[0] == pytest.approx(0.03)


def test_a_cached_prefix_is_not_computed_but_attended_to():
    seen = []

    def cost(n, keys, kv_read, lm):
        seen.append((n, keys, kv_read, lm))
        return 0.01

    # 100-token prompt, 60 of them in the prefix cache: one chunk of the 40 others, which attend to the 60
    run_engine([0.0], [100], [2], cost, cfg(cached_prompt_tokens=60), skip_ahead=False)
    n, keys, kv_read, lm = seen[0]
    assert (n, kv_read, lm) == (40, pytest.approx(60.0), 1)
    assert keys == pytest.approx(60 + 41 / 2)
    # the decode that follows sees the whole prompt and the first output token
    assert seen[1][1] == pytest.approx(101.0)
    # a prompt shorter than the cached prefix still computes its last token
    seen.clear()
    run_engine([0.0], [30], [1], cost, cfg(cached_prompt_tokens=60), skip_ahead=False)
    assert seen[0][0] == 1 and seen[0][2] == pytest.approx(29.0)


def test_a_cached_prefix_frees_token_budget_for_more_prompts():
    # budget 512 per iteration: 4 prompts of 400 tokens take 4 prefill iterations uncached, 1 with 300 cached
    P, O = [400] * 4, [1] * 4
    plain = run_engine([0.0] * 4, P, O, const(0.01), cfg(chunked_prefill=False))
    hit = run_engine([0.0] * 4, P, O, const(0.01), cfg(chunked_prefill=False, cached_prompt_tokens=300))
    assert plain.num_iterations == 4 and hit.num_iterations == 1
    assert hit.first_token_s.max() == pytest.approx(0.01)
