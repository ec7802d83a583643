"""moesim plan: the search space, constraints, objectives, frontier and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from moesim.catalog import load_model
from moesim.errors import InputError
from moesim.hardware import load_hardware
from moesim.plan.search import Constraints, cluster_sizes, layouts, pareto, plan
from moesim.scenario import load_scenario
from moesim.step.estimate import estimate_resolved


def test_cluster_sizes_are_powers_of_two_and_whole_nodes():
    assert cluster_sizes(load_hardware("h100-sxm"), 64) == [1, 2, 4, 8, 16, 32, 64]
    nvl = cluster_sizes(load_hardware("gb200-nvl72"), 300)
    assert 72 in nvl and 144 in nvl and 288 in nvl and 64 in nvl and 128 not in nvl


def test_layouts_are_valid_for_the_model():
    model = load_model("mixtral-8x7b")
    hw = load_hardware("h100-sxm")
    for lay in layouts(model, hw, 16, training=True):
        dp = 16 // (lay.tp * lay.pp)
        assert lay.tp * lay.pp * dp == 16
        assert 8 % lay.ep == 0 and (lay.tp * dp) % (lay.ep * lay.etp) == 0
        assert model.attention.num_heads % lay.tp == 0


def test_serving_plan_meets_its_constraints_and_sorts_by_cost():
    r = plan("mixtral-8x7b-serve-h100", hardware=["h100-sxm", "h200"],
             constraints=Constraints(max_gpus=16, max_tpot_s=0.03, max_ttft_s=1.0))
    assert r.best and r.num_feasible > 0
    costs = [b["usd_per_million_tokens"] for b in r.best]
    assert costs == sorted(costs)
    for b in r.best:
        assert b["tpot_s"] <= 0.03 and b["ttft_s"] <= 1.0 and b["num_gpus"] <= 16 and b["fits"]
    assert r.num_candidates == r.num_feasible + sum(r.rejected.values())


def test_plan_candidate_matches_a_full_estimate():
    r = plan("mixtral-8x7b-serve-h100", hardware=["h100-sxm"], constraints=Constraints(max_gpus=8), top=1)
    b = r.best[0]
    sc = load_scenario("mixtral-8x7b-serve-h100", [
        f"num_gpus={b['num_gpus']}", f"layout.tp={b['tp']}", f"layout.pp={b['pp']}", f"layout.ep={b['ep']}",
        f"layout.etp={b['etp']}", f"workload.batch_size={b['batch_size']}"])
    est = estimate_resolved(sc, sc.resolve_model(), sc.resolve_hardware())
    assert est.tpot_s == pytest.approx(b["tpot_s"], rel=1e-9)
    assert est.ttft_s == pytest.approx(b["ttft_s"], rel=1e-9)
    assert est.memory_per_gpu_bytes == pytest.approx(b["memory_per_gpu_bytes"], rel=1e-9)


def test_tighter_latency_never_adds_feasible_candidates():
    loose = plan("mixtral-8x7b-serve-h100", hardware=["h100-sxm"], constraints=Constraints(max_gpus=8, max_tpot_s=0.05))
    tight = plan("mixtral-8x7b-serve-h100", hardware=["h100-sxm"], constraints=Constraints(max_gpus=8, max_tpot_s=0.01))
    assert tight.num_feasible <= loose.num_feasible
    assert tight.rejected.get("max_tpot_s", 0) >= loose.rejected.get("max_tpot_s", 0)


def test_throughput_objective_prefers_more_tokens():
    r = plan("mixtral-8x7b-serve-h100", hardware=["h100-sxm"], constraints=Constraints(max_gpus=8),
             objective="throughput")
    tps = [b["tokens_per_s"] for b in r.best]
    assert tps == sorted(tps, reverse=True)


def test_training_plan_runs_and_latency_objective_is_refused():
    r = plan("mixtral-8x22b-train-h100", hardware=["h100-sxm"], constraints=Constraints(max_gpus=64),
             objective="throughput", top=3)
    assert r.best and all(b["step_s"] > 0 for b in r.best)
    with pytest.raises(InputError, match="latency"):
        plan("mixtral-8x22b-train-h100", objective="latency")


def test_pareto_keeps_only_undominated_points():
    rows = [{"x": 1, "y": 1}, {"x": 2, "y": 3}, {"x": 3, "y": 2}, {"x": 4, "y": 5}]
    front = pareto(rows, "x", "y", x_low=True, y_low=False)
    assert [(r["x"], r["y"]) for r in front] == [(1, 1), (2, 3), (4, 5)]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "moesim.cli.main", *args], capture_output=True, text=True)


def test_cli_plan_json_and_empty_space_error(tmp_path):
    out = _cli("plan", "mixtral-8x7b-serve-h100", "--hardware", "h100-sxm", "--max-gpus", "8", "--json", "--top", "2")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["best"]) == 2 and data["num_feasible"] > 0
    bad = _cli("plan", "mixtral-8x7b-serve-h100", "--hardware", "h100-sxm", "--max-gpus", "8", "--max-tpot-s", "1e-6")
    assert bad.returncode == 2
    assert "max_tpot_s" in bad.stderr and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, needle", [
    (("--objective", "speed"), "objective"),
    (("--hardware", "h100-sxm,tpu-v5"), "unknown hardware profile"),
    (("--max-gpus", "0"), "--max-gpus"),
])
def test_cli_plan_bad_input(args, needle):
    out = _cli("plan", "mixtral-8x7b-serve-h100", *args)
    assert out.returncode == 2
    assert needle in out.stderr and "Traceback" not in out.stderr


def test_cli_plan_csv_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    csv, png = tmp_path / "c.csv", tmp_path / "p.png"
    out = _cli("plan", "mixtral-8x7b-serve-h100", "--hardware", "h100-sxm", "--max-gpus", "8", "--csv", str(csv),
               "--plot", str(png))
    assert out.returncode == 0, out.stderr
    assert csv.read_text().splitlines()[0].startswith("hardware,num_gpus")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_weights_pre_check_never_rejects_a_layout_the_step_model_says_fits():
    """The plan's cheap memory check is the step model's own formula over an average stage: a lower bound."""
    from moesim.plan.search import _weights_fit
    from moesim.step.estimate import check_layout, train_figures

    sc0 = load_scenario("mixtral-8x22b-train-h100")
    model = load_model(sc0.model)
    checked = rejected = 0
    for hw_name in ("h100-sxm", "h200"):
        hw = load_hardware(hw_name)
        for n in (16, 64, 128):
            for lay in layouts(model, hw, n, training=True):
                sc = sc0.model_copy(update={"num_gpus": n, "layout": lay, "hardware": hw_name})
                try:
                    check_layout(sc, model, hw)
                    fits = train_figures(sc, model, hw).fits
                except InputError:
                    continue
                checked += 1
                if not _weights_fit(model, hw, lay, n, True, 2.0, sc.workload.master_weights_fp32,
                                    sc.workload.grad_bytes_per_element):
                    rejected += 1
                    assert not fits, (hw_name, n, lay)
    assert checked > 100 and rejected > 0


def test_an_empty_plan_names_the_missing_price_before_the_memory_rejections():
    # h800 has no price: every layout that fits in memory is rejected for it, so the price is what to fix
    from moesim.plan.search import PlanResult, empty_reason

    res = plan("scenarios/validation-e2e/qwen3-30b-train-h100-megatron-bridge.toml", hardware=["h800"],
               constraints=Constraints(max_gpus=16), objective="cost")
    assert res.num_feasible == 0 and res.rejected["no_price"] > 0 and res.rejected["memory"] > 0
    msg = empty_reason(res)
    assert msg.split(":")[1].strip().startswith("profiles without a price cannot be ranked by cost")
    assert f"no_price: {res.rejected['no_price']}" in msg and f"memory: {res.rejected['memory']}" in msg
    assert "\n" not in msg
    # also where more layouts fail the memory check than the price (DeepSeek-V3 on up to 2048 H800)
    many = PlanResult.model_construct(num_candidates=9510, rejected={"memory": 5049, "no_price": 4461})
    assert "profiles without a price" in empty_reason(many)
    assert "nothing fits in memory" in empty_reason(PlanResult.model_construct(num_candidates=10, rejected={"memory": 10}))
    # the throughput objective needs no price: the same search finds candidates
    free = plan("scenarios/validation-e2e/qwen3-30b-train-h100-megatron-bridge.toml", hardware=["h800"],
                constraints=Constraints(max_gpus=16), objective="throughput")
    assert free.num_feasible > 0


def test_a_training_plan_searches_the_recomputation_settings_asked_for():
    cons = Constraints(max_gpus=64)
    one = plan("mixtral-8x22b-train-h100", hardware=["h100-sxm"], constraints=cons, objective="throughput")
    assert one.recompute == ["selective"]  # the scenario's own
    both = plan("mixtral-8x22b-train-h100", hardware=["h100-sxm"], constraints=cons, objective="throughput",
                recompute=["selective", "full"], collect=(found := []))
    assert both.recompute == ["selective", "full"] and both.num_candidates == 2 * one.num_candidates
    assert {r["recompute"] for r in found} == {"selective", "full"}
    # each setting's records are that setting's estimates
    for setting in ("selective", "full"):
        r = next(x for x in found if x["recompute"] == setting)
        sc = load_scenario("mixtral-8x22b-train-h100", [
            f"num_gpus={r['num_gpus']}", f"layout.tp={r['tp']}", f"layout.pp={r['pp']}", f"layout.ep={r['ep']}",
            f"layout.etp={r['etp']}", f"layout.zero_stage={r['zero_stage']}", f"workload.micro_batch_size={r['batch_size']}",
            f"workload.recompute={setting}"])
        est = estimate_resolved(sc, sc.resolve_model(), sc.resolve_hardware())
        assert est.step_s == pytest.approx(r["step_s"], rel=1e-9)
        assert est.memory_per_gpu_bytes == pytest.approx(r["memory_per_gpu_bytes"], rel=1e-9)
    # full recomputation keeps less, so at least as many layouts fit
    fit = {s: sum(1 for x in found if x["recompute"] == s) for s in ("selective", "full")}
    assert fit["full"] >= fit["selective"]


@pytest.mark.parametrize("args, needle", [
    (("--recompute", "partial"), "got 'partial'; give one or more of none, selective, full"),
    (("--recompute", "full,full"), "listed twice"),
])
def test_cli_plan_bad_recomputation_settings(args, needle):
    out = _cli("plan", "mixtral-8x22b-train-h100", "--hardware", "h100-sxm", "--max-gpus", "64", *args)
    assert out.returncode == 2
    assert needle in out.stderr and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    serve = _cli("plan", "mixtral-8x7b-serve-h100", "--recompute", "full")
    assert serve.returncode == 2 and "training scenario" in serve.stderr
