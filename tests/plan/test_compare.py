"""moesim compare: JSON structure, B/A ratios and the better side, differences, self-comparison, bad input."""

from __future__ import annotations

import json
import math

import pytest

from moesim.errors import InputError
from moesim.plan.compare import Comparison, compare, ratio
from moesim.scenario import load_scenario
from moesim.step.estimate import estimate

H100 = "mixtral-8x7b-serve-h100"
B200 = "mixtral-8x7b-serve-b200"
UNIT_WORDS = ("_s", "_bytes", "_frac", "_ratio", "usd_", "_hours", "_days", "batch_size")


def test_json_has_a_b_differences_and_ratios_b_over_a(run_cli):
    r = run_cli("compare", H100, B200, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"a", "b", "differences", "ratios"} <= set(doc)
    a, b = doc["a"], doc["b"]
    assert a["hardware"] == "h100-sxm" and b["hardware"] == "b200"
    for key in ("tpot_s", "ttft_s", "tokens_per_s", "memory_per_gpu_bytes", "mfu_frac"):
        assert doc["ratios"][key] == pytest.approx(b[key] / a[key], rel=1e-12)
    assert doc["ratios"]["cost.usd_per_million_tokens"] == pytest.approx(
        b["cost"]["usd_per_million_tokens"] / a["cost"]["usd_per_million_tokens"], rel=1e-12)
    for stage, t in a["time_by_stage_s"].items():
        if t > 0:
            assert doc["ratios"][f"time_by_stage_s.{stage}"] == pytest.approx(b["time_by_stage_s"][stage] / t, rel=1e-12)
    for cat, v in a["memory"]["by_category_bytes"].items():
        assert doc["ratios"][f"memory.by_category_bytes.{cat}"] == pytest.approx(
            b["memory"]["by_category_bytes"][cat] / v, rel=1e-12)
    assert r.stderr == ""


def test_the_ratio_keys_are_paths_with_units_in_their_names(run_cli):
    doc = json.loads(run_cli("compare", H100, B200, "--json").stdout)
    for key in doc["ratios"]:
        if key.startswith(("time_by_stage_s.", "memory.by_category_bytes.")):
            continue
        last = key.rsplit(".", 1)[-1]
        assert any(w in last for w in UNIT_WORDS), key


def test_the_bundled_hardware_pair_differs_only_in_hardware_and_price():
    cmp = compare(H100, B200)
    assert [(d.field, d.a, d.b) for d in cmp.differences] == [
        ("hardware", "h100-sxm", "b200"), ("price_usd_per_gpu_hour", 2.99, 5.74)]
    # B200's higher FLOP/s and bandwidth make it faster per token...
    assert cmp.figure("tpot_s").better == "b" and cmp.figure("tpot_s").ratio < 1
    assert cmp.figure("tokens_per_s").better == "b" and cmp.figure("tokens_per_s").ratio > 1
    # ...and B's larger memory leaves more headroom at the same use
    assert cmp.figure("memory.headroom_bytes").better == "b"
    # the same weights and KV cache; the engine's unused share (workload.memory_utilization_frac) grows with the device
    assert cmp.figure("memory.by_category_bytes.weights").better == "same"
    assert cmp.figure("memory.by_category_bytes.kv_cache").better == "same"


def test_the_bundled_nvl72_pair_differs_only_in_hardware_and_price():
    cmp = compare("qwen3-235b-serve-h100x8", "qwen3-235b-serve-gb200")
    assert [d.field for d in cmp.differences] == ["hardware", "price_usd_per_gpu_hour"]
    # EP64 over eight 8-GPU nodes sends most dispatch traffic over InfiniBand; in one NVLink domain it does not
    assert cmp.figure("time_by_stage_s.dispatch").ratio < 0.5


def test_scenario_compared_with_itself_has_no_differences_and_ratios_of_one(run_cli):
    cmp = compare(H100, H100)
    assert cmp.differences == []
    assert cmp.ratios and all(v == 1.0 for v in cmp.ratios.values())
    assert all(f.better == "same" for f in cmp.figures)
    doc = json.loads(run_cli("compare", H100, H100, "--json").stdout)
    assert doc["differences"] == [] and set(doc["ratios"].values()) == {1.0}


def test_set_a_and_set_b_apply_to_their_own_side_only():
    cmp = compare(H100, H100, set_a=["workload.batch_size=16"], set_b=["workload.batch_size=128"])
    assert [(d.field, d.a, d.b) for d in cmp.differences] == [("workload.batch_size", 16, 128)]
    assert cmp.a.tokens_per_s < cmp.b.tokens_per_s
    assert cmp.figure("tokens_per_s").ratio == pytest.approx(cmp.b.tokens_per_s / cmp.a.tokens_per_s)


def test_differences_include_derived_parallel_sizes():
    cmp = compare(H100, H100, set_b=["layout.tp=1", "layout.etp=1", "layout.ep=8"])
    fields = {d.field: (d.a, d.b) for d in cmp.differences}
    assert fields["layout.tp"] == (8, 1) and fields["layout.ep"] == (1, 8) and fields["layout.etp"] == (8, 1)
    assert fields["layout.dp"] == (1, 8)  # derived: num_gpus / (tp x pp)
    assert "layout.edp" not in fields  # 1 on both sides


def test_a_stage_on_one_side_only_counts_as_zero_on_the_other():
    # TP8 attention has tensor-parallel all-reduces; DP attention (TP1) has none
    cmp = compare(H100, H100, set_b=["layout.tp=1", "layout.etp=1", "layout.ep=8"])
    f = cmp.figure("time_by_stage_s.tp_comm")
    assert f.a > 0 and f.b == 0.0 and f.ratio == 0.0 and f.better == "b"


def test_better_follows_the_direction_of_each_figure():
    cmp = compare(H100, H100, set_b=["hardware=b200"])
    for f in cmp.figures:
        if f.better in (None, "same"):
            continue
        lower_side = "a" if f.a < f.b else "b"
        assert f.better == (lower_side if f.lower_is_better else ("b" if lower_side == "a" else "a")), f.key
    assert not cmp.figure("tokens_per_s").lower_is_better and cmp.figure("cost.usd_per_million_tokens").lower_is_better


def test_ratio_conventions():
    assert ratio(2.0, 1.0) == 0.5
    assert ratio(0.0, 0.0) == 1.0
    assert ratio(0.0, 1.0) is None
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None
    assert ratio(1.0, math.inf) is None


def test_compare_takes_scenario_objects():
    sa = load_scenario(H100)
    cmp = compare(sa, sa, set_b=["routing.distribution=zipf:1.2"])
    assert isinstance(cmp, Comparison)
    assert cmp.a.tpot_s == estimate(sa).tpot_s
    assert [d.field for d in cmp.differences] == ["routing.distribution"]


def test_redundant_experts_with_load_aware_placement_relieve_a_skewed_decode():
    """EPLB on vs off (the docs example): replicas of hot experts bring the max-loaded rank down."""
    both = ["layout.ep=32", "routing.distribution=zipf:1.0"]
    cmp = compare("deepseek-v3-decode-h800", "deepseek-v3-decode-h800", set_a=both,
                  set_b=both + ["routing.redundant_experts=32", "routing.placement=load_aware"])
    assert cmp.figure("load.max_over_mean_ratio").ratio < 0.5
    assert cmp.figure("time_by_stage_s.experts").ratio < 0.5
    assert cmp.figure("tpot_s").better == "b"


def test_table_shows_the_differing_inputs_and_the_ratio_column(run_cli):
    r = run_cli("compare", H100, H100, "--set-b", "hardware=b200")
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert "Inputs that differ" in out and "hardware" in out and "b200" in out
    assert "B/A" in out and "Time by stage" in out and "Memory per GPU by category" in out
    assert "(--set-b hardware=b200)" in out
    both = run_cli("compare", H100, H100, "--set", "workload.batch_size=8", "--set-b", "hardware=b200").stdout
    assert "(--set workload.batch_size=8 --set-b hardware=b200)" in both and "(--set workload.batch_size=8)" in both


def test_same_scenario_table_says_no_inputs_differ(run_cli):
    r = run_cli("compare", H100, H100)
    assert r.exit_code == 0 and "Inputs that differ: none" in r.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        ((H100, "no-such-scenario"), "scenario: unknown scenario 'no-such-scenario'"),
        ((H100, H100, "--set-a", "layout"), "--set-a: expected FIELD=VALUE"),
        ((H100, H100, "--set", "layout"), "--set: expected FIELD=VALUE"),
        ((H100, H100, "--set-b", "layout.epp=2"), "(with --set-b): layout.epp: unknown key"),
        ((H100, H100, "--set-b", "layout.etp=1", "--set-b", "layout.tp=1", "--set-b", "num_gpus=16", "--set-b", "layout.ep=16"),
         "(side B): layout.ep: layout.ep (16) must divide the 8 experts"),
        ((H100,), "Missing argument 'B'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_cli, args, needle):
    r = run_cli("compare", *args)
    assert r.exit_code == 2
    assert r.stdout == ""
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.strip().splitlines() if ln.startswith("error")]) <= 1 or "Usage" in r.stderr


def test_api_errors_name_the_side():
    with pytest.raises(InputError) as exc:
        compare(H100, H100, set_a=["layout.tp=1", "layout.etp=1", "num_gpus=16", "layout.ep=16"])
    assert "(side A)" in str(exc.value) and exc.value.field == "layout.ep"
