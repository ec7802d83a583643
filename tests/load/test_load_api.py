"""expert_load: invariants (hypothesis), closed-form agreement, routers, capacity, decode reads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.errors import InputError
from moesim.load.api import LoadSpec, expert_load, expert_load_layers, load_spec_from_model, straggler_load
from moesim.load.distributions import Histogram, LayerDistributions, Zipf, parse_distribution
from moesim.load.routing import ExpertChoice, GroupLimited, Switch, Threshold, TopK, sample_topk

FAST = settings(max_examples=25, deadline=None)

layouts = st.sampled_from([(8, 2, 2), (8, 2, 4), (16, 4, 4), (32, 4, 8), (64, 8, 8), (12, 3, 3)])  # (E, k, R)
dists = st.one_of(
    st.just("uniform"),
    st.floats(0.0, 2.5).map(lambda s: f"zipf:{s:.3f}"),
    st.floats(0.05, 5.0).map(lambda a: f"dirichlet:{a:.3f}"),
)


@FAST
@given(layout=layouts, dist=dists, cf=st.one_of(st.none(), st.floats(0.1, 3.0)), tokens=st.integers(1, 3000),
       router=st.sampled_from(["top_k", "group_limited"]))
def test_routed_slots_are_conserved(layout, dist, cf, tokens, router) -> None:  # noqa: ANN001
    e, k, r = layout
    rt = TopK() if router == "top_k" else GroupLimited(num_groups=r, topk_groups=max(1, r // 2) if k <= (r // 2) * (e // r) else r)
    res = expert_load(num_experts=e, top_k=k, ep_size=r, num_tokens=tokens, distribution=dist, router=rt,
                      capacity_factor=cf, num_samples=64)
    assert res.routed_slots == tokens * k
    assert res.kept_slots + res.dropped_slots == pytest.approx(tokens * k)
    if cf is None:
        assert res.dropped_slots == 0
    # per-rank loads add up to the kept slots
    assert sum(x.expected_tokens for x in res.ranks) == pytest.approx(res.kept_slots)


@FAST
@given(layout=layouts, dist=dists, tokens=st.integers(1, 5000), cf=st.floats(0.2, 2.0))
def test_expert_choice_is_balanced_by_construction(layout, dist, tokens, cf) -> None:  # noqa: ANN001
    e, k, r = layout
    res = expert_load(num_experts=e, top_k=k, ep_size=r, num_tokens=tokens, distribution=dist,
                      router=ExpertChoice(), capacity_factor=cf, num_samples=16)
    assert res.imbalance.max_over_mean_ratio == pytest.approx(1.0)
    assert res.imbalance.cv_ratio == pytest.approx(0.0, abs=1e-12)
    assert res.dropped_slots == 0


def test_expert_choice_leaves_some_tokens_without_an_expert() -> None:
    res = expert_load(num_experts=16, top_k=1, ep_size=4, num_tokens=1024, router=ExpertChoice(), capacity_factor=1.0)
    # each expert takes C = T/E tokens independently: P(no expert) = (1 - 1/E)^E
    assert res.unrouted_token_frac == pytest.approx((1 - 1 / 16) ** 16, rel=1e-6)


def test_uniform_max_over_mean_falls_toward_one_as_tokens_grow() -> None:
    ratios = [
        expert_load(num_experts=64, top_k=8, ep_size=16, num_tokens=t, num_samples=256).imbalance.max_over_mean_ratio
        for t in (64, 1024, 16384, 262144)
    ]
    assert all(a > b for a, b in zip(ratios, ratios[1:]))
    assert ratios[-1] < 1.02 and ratios[0] > 1.2


@FAST
@given(layout=layouts, dist=dists, tokens=st.integers(1, 4000), extra=st.floats(1.0, 3.0))
def test_capacity_at_least_the_tokens_drops_nothing(layout, dist, tokens, extra) -> None:  # noqa: ANN001
    e, k, r = layout
    cf = extra * e / k  # C = ceil(cf T k / E) >= T: no expert can receive more than T tokens
    res = expert_load(num_experts=e, top_k=k, ep_size=r, num_tokens=tokens, distribution=dist, capacity_factor=cf,
                      num_samples=32)
    assert res.capacity is not None and res.capacity.capacity_tokens >= tokens
    assert res.dropped_slots == 0


@FAST
@given(layout=layouts, s1=st.floats(0.0, 2.0), ds=st.floats(0.0, 1.5))
def test_more_skew_never_lowers_the_max_load_with_hot_experts_together(layout, s1, ds) -> None:  # noqa: ANN001
    # contiguous placement keeps the most popular experts on rank 0
    e, k, r = layout

    def max_load(s: float) -> float:
        return expert_load(num_experts=e, top_k=k, ep_size=r, num_tokens=2048, distribution=Zipf(exponent=s),
                           placement="contiguous", num_samples=8).placement.expected_max_tokens

    assert max_load(s1 + ds) >= max_load(s1) - 1e-6


@FAST
@given(layout=layouts, s1=st.floats(0.0, 2.0), ds=st.floats(0.0, 1.5),
       placement=st.sampled_from(["contiguous", "round_robin"]))
def test_more_skew_never_lowers_the_max_load_with_top1(layout, s1, ds, placement) -> None:  # noqa: ANN001
    e, _, r = layout

    def max_load(s: float) -> float:
        return expert_load(num_experts=e, top_k=1, ep_size=r, num_tokens=2048, distribution=Zipf(exponent=s),
                           placement=placement, num_samples=8).placement.expected_max_tokens

    assert max_load(s1 + ds) >= max_load(s1) - 1e-6


def test_extreme_skew_with_top_k_hot_experts_on_different_ranks_balances_them() -> None:
    # a documented limit of "more skew, more load": with k = 2 and the two hot experts on two
    # ranks (round-robin), every token ends up using exactly those two, one per rank
    def ratio(s: float) -> float:
        return expert_load(num_experts=8, top_k=2, ep_size=2, num_tokens=2048, distribution=Zipf(exponent=s),
                           placement="round_robin").imbalance.expected_max_over_mean_ratio

    assert ratio(2.0) > ratio(6.0) > ratio(12.0)
    assert ratio(12.0) < 1.01


def test_more_skew_raises_the_sampled_max_loaded_rank() -> None:
    vals = [expert_load(num_experts=64, top_k=8, ep_size=8, num_tokens=8192, distribution=f"zipf:{s}").max_rank.p99_tokens
            for s in (0.0, 0.5, 1.0, 1.5)]
    assert all(a < b for a, b in zip(vals, vals[1:]))


@FAST
@given(layout=layouts, dist=dists, reps=st.integers(1, 3),
       placement=st.sampled_from(["contiguous", "round_robin", "load_aware"]))
def test_redundant_replicas_never_raise_the_max_load(layout, dist, reps, placement) -> None:  # noqa: ANN001
    e, k, r = layout
    prev = None
    for n in range(0, reps * r + 1, r):
        res = expert_load(num_experts=e, top_k=k, ep_size=r, num_tokens=4096, distribution=dist,
                          placement=placement, num_redundant_experts=n, num_samples=8)
        cur = res.placement.expected_max_tokens
        if prev is not None:
            assert cur <= prev + 1e-6
        prev = cur


def test_replicas_cut_the_hot_rank_and_cost_memory() -> None:
    kw = dict(num_experts=64, top_k=8, ep_size=8, num_tokens=8192, distribution="zipf:1.2", bytes_per_expert=1e6)
    base = expert_load(**kw, placement="load_aware")
    rep = expert_load(**kw, placement="load_aware", num_redundant_experts=8)
    assert rep.max_rank.mean_tokens < 0.9 * base.max_rank.mean_tokens
    assert rep.imbalance.max_over_mean_ratio < 1.03  # the hot expert (in ~97% of tokens) is split over replicas
    assert rep.placement.extra_memory_bytes == rep.placement.num_redundant_used * 1e6
    assert rep.placement.expected_max_tokens_without_replicas == pytest.approx(base.placement.expected_max_tokens)


def test_monte_carlo_agrees_with_the_uniform_closed_form() -> None:
    res = expert_load(num_experts=256, top_k=8, ep_size=64, num_tokens=16384, num_samples=1000, capacity_factor=1.0)
    cf = res.closed_form
    assert cf is not None
    assert res.imbalance.mean_tokens_per_rank == pytest.approx(cf.rank_mean_tokens * (1 - res.capacity.dropped_frac), rel=1e-3)
    dropless = expert_load(num_experts=256, top_k=8, ep_size=64, num_tokens=16384, num_samples=1000)
    cfd = dropless.closed_form
    stds = np.array([(x.p99_tokens - x.expected_tokens) for x in dropless.ranks])
    assert np.median(stds) == pytest.approx(2.326 * cfd.rank_std_tokens, rel=0.1)
    assert dropless.max_rank.mean_tokens == pytest.approx(cfd.expected_max_tokens, rel=0.005)
    assert dropless.max_rank.p99_tokens == pytest.approx(cfd.p99_max_tokens, rel=0.01)
    assert dropless.max_rank.p99_tokens == pytest.approx(cfd.p99_max_tokens_normal, rel=0.01)
    assert res.capacity.dropped_frac == pytest.approx(cf.expected_dropped_frac, rel=0.03)


def test_switch_aux_loss_is_one_when_balanced_and_n_sum_p_squared_otherwise() -> None:
    assert expert_load(num_experts=8, top_k=1, ep_size=2, num_tokens=100, router=Switch()).imbalance.aux_loss == pytest.approx(1.0)
    res = expert_load(num_experts=4, top_k=1, ep_size=2, num_tokens=100, router=Switch(), distribution=Histogram(counts=[4, 2, 1, 1]))
    p = np.array([4, 2, 1, 1]) / 8
    assert res.imbalance.aux_loss == pytest.approx(4 * np.sum(p * p))


def test_decode_distinct_experts_match_a_per_token_simulation() -> None:
    e, k, r, t = 32, 4, 4, 6
    p = np.arange(1, e + 1, dtype=float) ** -1.0
    p /= p.sum()
    res = expert_load(num_experts=e, top_k=k, ep_size=r, num_tokens=t, distribution=Histogram(counts=p.tolist()))
    rng = np.random.default_rng(0)
    touched = np.zeros(r)
    n = 20_000
    for _ in range(n // 100):
        idx = sample_topk(p, t * 100, k, rng).reshape(100, t * k)
        for row in idx:
            touched += np.bincount(np.unique(row) // (e // r), minlength=r)
    sim = touched / n
    got = np.array([x.expected_distinct_experts for x in res.ranks])
    assert np.allclose(got, sim, atol=0.03)
    assert res.decode.expected_distinct_experts == pytest.approx(got.sum())


def test_one_decode_token_reads_k_experts() -> None:
    res = expert_load(num_experts=64, top_k=6, ep_size=8, num_tokens=1)
    assert res.decode.expected_distinct_experts == pytest.approx(6.0)
    assert res.decode.max_rank_expected_distinct < res.decode.experts_per_rank


def test_threshold_routing_has_variable_experts_per_token() -> None:
    res = expert_load(num_experts=64, top_k=4, ep_size=8, num_tokens=4096, router=Threshold(), distribution="zipf:1.0")
    assert res.routed_slots == pytest.approx(4096 * 4, rel=0.01)
    assert 0 < res.unrouted_token_frac < 0.1


def test_results_are_deterministic_for_a_seed() -> None:
    kw = dict(num_experts=64, top_k=8, ep_size=8, num_tokens=4096, distribution="dirichlet:0.5")
    assert expert_load(**kw) == expert_load(**kw)
    assert expert_load(**kw, seed=1).max_rank != expert_load(**kw, seed=2).max_rank


@pytest.mark.parametrize(
    "fields, needle",
    [
        (dict(num_experts=8, top_k=9, ep_size=2), "top_k (9) cannot exceed num_experts (8)"),
        (dict(num_experts=64, top_k=8, ep_size=6), "EP size 6 does not divide the 64 experts; allowed: 1, 2, 4, 8, 16, 32, 64"),
        (dict(num_experts=64, top_k=8, ep_size=8, capacity_factor=0.0), "greater than 0"),
        (dict(num_experts=64, top_k=8, ep_size=8, capacity_factor=-1.0), "greater than 0"),
        (dict(num_experts=64, top_k=8, ep_size=8, num_redundant_experts=3), "must be a multiple of EP size (8)"),
        (dict(num_experts=4, top_k=1, ep_size=2, distribution="hist:1,2,3"), "3 entries but the model has 4 experts"),
        (dict(num_experts=8, top_k=2, ep_size=2, router=Switch()), "switch router routes top-1"),
        (dict(num_experts=8, top_k=2, ep_size=2, distribution="pareto:2"), "unknown distribution"),
    ],
)
def test_bad_inputs_raise_one_input_error(fields, needle) -> None:  # noqa: ANN001
    with pytest.raises(InputError) as info:
        expert_load(num_tokens=100, **fields)
    assert needle in str(info.value)


def test_per_layer_distributions_give_one_result_per_layer() -> None:
    spec = LoadSpec(num_experts=8, top_k=2, ep_size=2, num_tokens=512)
    layers = LayerDistributions(layers={1: Histogram(counts=[9, 1, 1, 1, 1, 1, 1, 1])})
    out = expert_load_layers(spec, layers, 3)
    assert len(out.layers) == 3
    assert out.worst_layer == 1
    assert out.layers[1].imbalance.max_over_mean_ratio > out.layers[0].imbalance.max_over_mean_ratio


def test_spec_from_a_model_takes_experts_top_k_and_group_limited_router() -> None:
    from moesim.catalog import load_model

    from moesim.dtypes import bytes_per_element

    model = load_model("deepseek-v3")
    spec = load_spec_from_model(model, ep_size=32, num_tokens=4096)
    assert (spec.num_experts, spec.top_k) == (256, 8)
    assert isinstance(spec.router, GroupLimited) and (spec.router.num_groups, spec.router.topk_groups) == (8, 4)
    dtype = model.expert_weight_dtype or model.weight_dtype
    assert spec.bytes_per_expert == pytest.approx(3 * 7168 * 2048 * bytes_per_element(dtype))  # 3 matrices 7168 x 2048


@FAST
@given(layout=layouts, dist=dists, cf=st.one_of(st.none(), st.floats(0.1, 3.0)), tokens=st.integers(1, 5000),
       router=st.sampled_from(["top_k", "group_limited", "threshold", "expert_choice"]), reps=st.integers(0, 3),
       placement=st.sampled_from(["contiguous", "round_robin", "load_aware"]), seed=st.integers(0, 3))
def test_straggler_load_equals_the_expert_load_fields_to_the_bit(layout, dist, cf, tokens, router, reps, placement,
                                                                  seed) -> None:  # noqa: ANN001
    e, k, r = layout
    rt = {"top_k": TopK(), "threshold": Threshold(), "expert_choice": ExpertChoice(),
          "group_limited": GroupLimited(num_groups=r, topk_groups=max(1, r // 2) if k <= (r // 2) * (e // r) else r)}[router]
    reps = reps * r if e % r == 0 else 0
    spec = LoadSpec(num_experts=e, top_k=k, ep_size=r, num_tokens=tokens, distribution=parse_distribution(dist), router=rt,
                    capacity_factor=cf, placement=placement, num_redundant_experts=reps, num_samples=64, seed=seed)
    full, lean = expert_load(spec), straggler_load(spec)
    assert lean.max_rank_mean_tokens == full.max_rank.mean_tokens
    assert lean.max_rank_p99_tokens == full.max_rank.p99_tokens
    assert lean.hottest_expected_tokens == full.max_rank.hottest_expected_tokens
    assert lean.mean_tokens_per_rank == full.imbalance.mean_tokens_per_rank
    assert lean.max_over_mean_ratio == full.imbalance.max_over_mean_ratio
    assert lean.cv_ratio == full.imbalance.cv_ratio
    assert lean.max_rank_expected_distinct == full.decode.max_rank_expected_distinct
    if full.capacity is None:
        assert lean.capacity_slots_per_rank is None and lean.dropped_frac is None
    else:
        assert lean.capacity_slots_per_rank == full.capacity.slots_per_rank
        assert lean.dropped_frac == full.capacity.dropped_frac


# --------------------------------------------------------------------------- counts shared across layouts


def test_counts_drawn_once_per_token_count_across_ep_sizes(monkeypatch):
    """The per-expert counts depend on experts, top-k, tokens, distribution, router, samples and seed only:
    evaluating another EP size or placement of the same token count reuses them, and every result equals the
    one computed with empty caches."""
    import moesim.load.api as api
    from moesim.caches import clear_caches

    specs = [dict(num_experts=64, top_k=6, ep_size=ep, num_tokens=3000, distribution="zipf:1.1", placement=pl)
             for ep in (1, 8, 32) for pl in ("contiguous", "load_aware")]
    fresh = []
    for f in specs:
        clear_caches()
        fresh.append(expert_load(**f).model_dump_json())
    clear_caches()
    calls = []
    real = api._counts
    monkeypatch.setattr(api, "_counts", lambda *a: calls.append(1) or real(*a))
    shared = [expert_load(**f).model_dump_json() for f in specs]
    assert shared == fresh
    assert len(calls) == 1
    expert_load(**{**specs[0], "num_tokens": 3001})  # another token count draws again
    expert_load(**{**specs[0], "seed": 1})  # and another seed
    assert len(calls) == 3


def test_shared_counts_are_read_only():
    import moesim.load.api as api

    spec = api._spec(None, dict(num_experts=16, top_k=2, ep_size=4, num_tokens=500))
    d = api._draw(spec)
    with pytest.raises(ValueError):
        d.counts[0, 0] = 1
