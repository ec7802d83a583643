"""``moesim plan --rate``: deployments sized by simulating the request stream against p99 SLOs."""

from __future__ import annotations

import json

import pytest

from moesim.plan.rate import empty_reason, plan_rate

MIXTRAL = "mixtral-8x7b-serve-h100"
SMALL = dict(hardware=["h100-sxm"], max_gpus=16, num_requests=300, engines_per_size=1, pool_engines=1,
             overrides=["serving.max_num_seqs=128"])


@pytest.fixture(scope="module")
def found():
    return plan_rate(MIXTRAL, rate=20, max_ttft_p99_s=0.5, max_tpot_p99_s=0.03, **SMALL)


def test_every_listed_deployment_meets_the_p99_slos_at_the_rate(found):
    assert found.best and found.num_simulations > 0
    for r in found.best + found.frontier:
        assert r["ttft_p99_s"] <= 0.5 and r["tpot_p99_s"] <= 0.03
        assert r["num_gpus"] <= 16
        assert 0.7 * 20 <= r["requests_per_s"] <= 1.05 * 20  # a 300-request stream: the drain lowers the mean rate


def test_aggregated_and_disaggregated_candidates_share_the_frontier(found):
    modes = {r["mode"] for r in found.best} | {r["mode"] for r in found.frontier}
    assert "aggregated" in modes
    assert found.num_feasible >= len(found.best)
    costs = [r["usd_per_hour"] for r in found.best]
    assert costs == sorted(costs)
    tpots = [r["tpot_p99_s"] for r in found.frontier]
    assert tpots == sorted(tpots, reverse=True)  # more cost buys lower p99 TPOT along the frontier


def test_disaggregated_candidates_size_each_pool():
    res = plan_rate(MIXTRAL, rate=20, max_ttft_p99_s=0.5, max_tpot_p99_s=0.03, objective="latency",
                    **SMALL | {"engines_per_size": 0})
    assert res.best and all(r["mode"] == "disaggregated" for r in res.best)
    eng = res.best[0]["engines"]
    assert len(eng) == 2 and sum(e["num_gpus"] * e["num_instances"] for e in eng) == res.best[0]["num_gpus"]


def test_an_slo_no_candidate_meets_is_named():
    res = plan_rate(MIXTRAL, rate=20, max_ttft_p99_s=0.5, max_tpot_p99_s=0.0005, **SMALL)
    assert not res.best
    assert "max_tpot_p99_s" in empty_reason(res) and "--max-tpot-p99-s" in empty_reason(res)


def test_cli_rate_mode_json(run_cli):
    r = run_cli("plan", MIXTRAL, "--rate", "20", "--max-ttft-p99-s", "0.5", "--max-tpot-p99-s", "0.03",
                "--hardware", "h100-sxm", "--max-gpus", "8", "--requests", "200", "--aggregated-only",
                "--set", "serving.max_num_seqs=128", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["constraints"]["rate_per_s"] == 20 and data["best"]
    assert all(b["mode"] == "aggregated" for b in data["best"])


@pytest.mark.parametrize("args,needle", [
    (["--rate", "0"], "--rate"),
    (["--rate", "-2"], "--rate"),
    (["--rate", "x"], "--rate"),
    (["--rate", "5", "--max-tpot-s", "0.05"], "--max-tpot-s"),
    (["--max-tpot-p99-s", "0.05"], "only used with --rate"),
    (["--rate", "5", "--max-ttft-p99-s", "0"], "--max-ttft-p99-s"),
    (["--rate", "5", "--prompt-tokens", "uniform:9,3"], "LO <= HI"),
    (["--rate", "20", "--max-tpot-p99-s", "0.0005", "--hardware", "h100-sxm", "--max-gpus", "8", "--requests",
      "100"], "--max-tpot-p99-s"),
])
def test_cli_rate_mode_bad_input_is_one_line(run_cli, tmp_path, args, needle):
    out = tmp_path / "never.csv"
    r = run_cli("plan", MIXTRAL, *args, "--csv", str(out))
    assert r.exit_code == 2, (r.stdout, r.stderr)
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and needle in line
    assert not out.exists()
