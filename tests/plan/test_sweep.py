"""moesim sweep: grid order, value parsing, error rows, one-line input errors, CSV / JSONL / JSON / plot outputs."""

from __future__ import annotations

import csv
import io
import json

import pytest

from moesim.errors import InputError
from moesim.plan.records import RECORD_FIELDS, record
from moesim.plan.sweep import SweepResult, parse_vary, split_values, sweep
from moesim.scenario import Scenario, load_scenario, scenario_from_dict
from moesim.step.estimate import estimate, estimate_resolved

#: the default scenario, reshaped so EP can vary over the 8 GPUs of the node (a few ms per point)
MIXTRAL = "mixtral-8x7b-serve-h100"
FLAT = ("layout.tp=1", "layout.etp=1")
CLI = ("sweep", MIXTRAL, "--set", "layout.tp=1", "--set", "layout.etp=1")


def _train_scenario() -> Scenario:
    """A dropless training step, where every token is computed: skew can only add to the straggler."""
    raw = {
        "name": "train", "model": "mixtral-8x7b", "hardware": "h100-sxm", "num_gpus": 16,
        "layout": {"tp": 2, "ep": 8},
        "workload": {"kind": "train", "seq_len": 4096, "global_batch_size": 64, "micro_batch_size": 1},
    }
    return scenario_from_dict(raw, "test")


# ----------------------------------------------------------------------------- grid and parsing


def test_grid_is_the_cartesian_product_in_the_order_given_last_axis_fastest():
    res = sweep(MIXTRAL, {"layout.ep": [1, 2, 8], "hardware": ["h100-sxm", "h200"]}, FLAT)
    assert res.num_points == 6
    assert [(p.values["layout.ep"], p.values["hardware"]) for p in res.points] == [
        (1, "h100-sxm"), (1, "h200"), (2, "h100-sxm"), (2, "h200"), (8, "h100-sxm"), (8, "h200")]
    assert [p.index for p in res.points] == list(range(6))
    # every point is really evaluated at its own coordinates
    assert [p.estimate.layout["ep"] for p in res.points] == [1, 1, 2, 2, 8, 8]
    assert [p.estimate.hardware for p in res.points] == ["h100-sxm", "h200"] * 3
    assert [a.field for a in res.grid] == ["layout.ep", "hardware"]


def test_values_are_parsed_as_toml_literals_or_bare_strings():
    grid = parse_vary([
        "layout.ep=8,16",
        "routing.capacity_factor=1.0,1.25,2",
        "layout.sequence_parallel=true,false",
        "routing.distribution=uniform,zipf:1.2,dirichlet:0.5",
        'hardware="h200",b200',
    ])
    assert grid["layout.ep"] == [8, 16] and all(type(v) is int for v in grid["layout.ep"])
    assert grid["routing.capacity_factor"] == [1.0, 1.25, 2] and type(grid["routing.capacity_factor"][0]) is float
    assert grid["layout.sequence_parallel"] == [True, False]
    assert grid["routing.distribution"] == ["uniform", "zipf:1.2", "dirichlet:0.5"]
    assert grid["hardware"] == ["h200", "b200"]


def test_commas_inside_brackets_and_quotes_do_not_split_values():
    assert split_values('[1, 2],[3],"a,b",c') == ["[1, 2]", "[3]", '"a,b"', "c"]
    assert parse_vary(['description="x, y",z'])["description"] == ["x, y", "z"]


def test_a_parsed_value_reaches_the_scenario_with_its_type():
    res = sweep(MIXTRAL, parse_vary(["routing.capacity_factor=1.0,1.25"]),
                FLAT + ("layout.ep=8", "routing.distribution=zipf:1.0"))
    dropped = [p.estimate.load.dropped_frac for p in res.points]
    assert dropped[0] > dropped[1] > 0  # a tighter capacity drops more of the skewed load


def test_sweep_takes_a_scenario_object_and_base_overrides():
    sc = load_scenario(MIXTRAL, FLAT)
    res = sweep(sc, {"workload.batch_size": [8, 32]}, ["layout.ep=8"])
    assert [p.estimate.layout["ep"] for p in res.points] == [8, 8]
    assert [r["batch_size"] for r in res.records()] == [8, 32]
    assert res.scenario == sc.name


def test_model_and_hardware_load_once_per_distinct_value(monkeypatch):
    calls = {"model": 0, "hardware": 0}
    real_m, real_h = Scenario.resolve_model, Scenario.resolve_hardware

    def count_m(self):
        calls["model"] += 1
        return real_m(self)

    def count_h(self):
        calls["hardware"] += 1
        return real_h(self)

    monkeypatch.setattr(Scenario, "resolve_model", count_m)
    monkeypatch.setattr(Scenario, "resolve_hardware", count_h)
    res = sweep(MIXTRAL, {"hardware": ["h100-sxm", "h200"], "layout.ep": [1, 2, 4, 8]}, FLAT)
    assert res.num_points == 8 and res.num_errors == 0
    assert calls == {"model": 1, "hardware": 2}


def test_the_top_level_api_is_this_sweep():
    import moesim

    assert moesim.sweep is sweep


def test_progress_is_reported_after_every_point():
    seen = []
    sweep(MIXTRAL, {"layout.ep": [1, 2, 4]}, FLAT, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


# ----------------------------------------------------------------------------- error rows and input errors


def test_an_impossible_point_becomes_an_error_row_and_the_sweep_goes_on():
    res = sweep(MIXTRAL, {"layout.ep": [2, 3, 8]}, FLAT)
    rows = res.records()
    assert res.num_errors == 1
    assert rows[1]["layout.ep"] == 3 and rows[1]["tpot_s"] is None and rows[1]["fits"] is None
    assert "layout.ep" in rows[1]["error"] and "\n" not in rows[1]["error"]
    assert rows[0]["error"] is None and rows[0]["tpot_s"] > 0
    assert rows[2]["error"] is None and rows[2]["tpot_s"] > 0


def test_ep_not_dividing_the_experts_is_an_error_row_naming_both_numbers():
    # 16 GPUs, EP16 divides the GPUs but not Mixtral's 8 experts: caught by the step model's layout check
    res = sweep(MIXTRAL, {"layout.ep": [8, 16]}, FLAT + ("num_gpus=16",))
    assert res.points[0].error is None
    assert res.points[1].error == "layout.ep: layout.ep (16) must divide the 8 experts"


def test_unknown_field_is_an_input_error_before_anything_runs(monkeypatch):
    import moesim.plan.sweep as mod

    def must_not_run(*a, **k):
        raise AssertionError("estimated a point of a bad grid")

    monkeypatch.setattr(mod, "estimate_resolved", must_not_run)
    with pytest.raises(InputError) as exc:
        sweep(MIXTRAL, {"layout.ep": [1, 2], "layout.epp": [1, 2]}, FLAT)
    assert exc.value.field == "layout.epp"
    assert "unknown key" in exc.value.message and "allowed here: tp, pp, dp, ep, etp" in exc.value.message


def test_unknown_field_through_the_cli_exits_2_naming_the_flag_and_field(run_cli):
    r = run_cli(*CLI, "--vary", "layout.ep=1,2", "--vary", "layout.epp=4,8")
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith("error: --vary: layout.epp: unknown key")


def test_a_field_under_the_workload_names_the_variant_keys(run_cli):
    r = run_cli(*CLI, "--vary", "workload.seq_len=1024,2048")
    assert r.exit_code == 2
    assert "--vary: workload.seq_len: unknown key" in r.stderr and "prompt_tokens" in r.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--vary", "layout.ep="), "--vary: layout.ep: empty value"),
        (("--vary", "layout.ep=8,,16"), "--vary: layout.ep: empty value"),
        (("--vary", "layout.ep"), "--vary: expected FIELD=V1,V2,..."),
        (("--vary", "=1,2"), "--vary: expected FIELD=V1,V2,..."),
        (("--vary", "layout..ep=1"), "--vary: expected FIELD=V1,V2,..."),
        (("--vary", "layout.ep=1", "--vary", "layout.ep=2"), "--vary: layout.ep: field given twice"),
        (("--vary", "layout.ep=one,two"), "--vary: layout.ep: Input should be a valid integer"),
        (("--vary", "workload.batch_size=0,8"), "--vary: workload.batch_size: Input should be greater than 0 (got 0)"),
        (("--vary", "routing.placement=packed"), "--vary: routing.placement: Input should be 'contiguous', 'round_robin' or 'load_aware'"),
        (("--vary", "hardware=h100,h200"), "--vary: hardware: unknown hardware profile 'h100'; known: "),
        (("--vary", "model=mixtral-8x7b,no-such-model"), "--vary: model: unknown model 'no-such-model'"),
        (("--vary", "routing.distribution=uniform,zipff:1"), "--vary: routing.distribution: unknown distribution 'zipff:1'"),
        ((), "--vary: give at least one --vary"),
        (("--vary", "layout.ep=1,2", "--y", "tpot_s"), "--y: only used with --plot"),
        (("--vary", "layout.ep=1,2", "--plot", "out.svg", "--y", "tpot_s"), "--plot: plot file must end in .png"),
        (("--vary", "layout.ep=1,2", "--plot", "out.png"), "--y: --plot needs --y METRIC; allowed: "),
        (("--vary", "layout.ep=1,2", "--plot", "out.png", "--y", "speed"), "--y: unknown metric 'speed'; allowed: "),
        (("--vary", "layout.ep=1,2", "--plot", "out.png", "--y", "tpot_s", "--x", "ep_size"), "--x: unknown field 'ep_size'"),
        (("--vary", "layout.ep=1,2", "--plot", "out.png", "--y", "tpot_s", "--hue", "hardware"), "--hue: unknown field 'hardware'"),
        (("--vary", "layout.ep=1,2", "--json", "--jsonl", "-"), "only one output can go to stdout"),
        (("--vary", "layout.ep=1,2", "--set", "layout"), "--set: expected FIELD=VALUE"),
        (("--vary", "layout.ep=1,2", "--set", "workload.batch_size=-1"),
         "mixtral-8x7b-serve-h100.toml (with --set): workload.batch_size: Input should be greater than 0"),
        (("--vary", "workload.kind=train"), "--vary: workload.seq_len: required field is missing"),
    ],
)
def test_bad_grid_or_flags_are_one_line_and_exit_2(run_cli, args, needle):
    r = run_cli(*CLI, *args)
    assert r.exit_code == 2, r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr


def test_a_varied_value_may_replace_a_bad_base_value():
    res = sweep(MIXTRAL, {"workload.batch_size": [8, 16]}, FLAT + ("workload.batch_size=-1",))
    assert res.num_errors == 0 and [r["batch_size"] for r in res.records()] == [8, 16]


def test_bad_grid_writes_no_file(run_cli, tmp_path):
    out = tmp_path / "grid.csv"
    r = run_cli(*CLI, "--vary", "layout.epp=1,2", "--csv", str(out))
    assert r.exit_code == 2 and not out.exists() and list(tmp_path.iterdir()) == []


def test_the_console_script_exits_2_without_traceback():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "moesim.cli.main", "sweep", MIXTRAL, "--vary", "layout.epp=1,2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr and "layout.epp" in p.stderr


# ----------------------------------------------------------------------------- outputs


def test_table_lists_every_point_and_the_reason_a_point_cannot_run(run_cli):
    r = run_cli(*CLI, "--vary", "layout.ep=2,3,8")
    assert r.exit_code == 0, r.stderr
    assert "3 points, 1 cannot run" in r.stdout
    assert "error 1" in r.stdout and "must divide the 8 GPUs" in r.stdout
    assert "TPOT" in r.stdout and "TTFT" in r.stdout and "USD/Mtok" in r.stdout


def test_csv_has_the_columns_and_one_row_per_point(run_cli, tmp_path):
    out = tmp_path / "grid.csv"
    r = run_cli(*CLI, "--vary", "layout.ep=2,3,8", "--vary", "hardware=h100-sxm,h200", "--csv", str(out))
    assert r.exit_code == 0, r.stderr
    assert f"wrote {out} (6 rows)" in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["grid.csv"]  # written atomically, no temporary left
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["layout.ep", "hardware"] + [f for f in RECORD_FIELDS if f != "hardware"] + ["error"]
    assert [(r["layout.ep"], r["hardware"]) for r in rows] == [
        ("2", "h100-sxm"), ("2", "h200"), ("3", "h100-sxm"), ("3", "h200"), ("8", "h100-sxm"), ("8", "h200")]
    api = sweep(MIXTRAL, {"layout.ep": [2, 3, 8], "hardware": ["h100-sxm", "h200"]}, FLAT).records()
    for row, rec in zip(rows, api):
        if rec["error"] is None:
            assert float(row["tpot_s"]) == rec["tpot_s"]  # floats written with full precision
            assert row["fits"] == str(rec["fits"]) and row["error"] == "" and row["step_s"] == ""
        else:
            assert row["error"] == rec["error"] and row["tpot_s"] == ""


def test_jsonl_file_holds_one_record_per_line(run_cli, tmp_path):
    out = tmp_path / "grid.jsonl"
    r = run_cli(*CLI, "--vary", "layout.ep=1,2,4,8", "--jsonl", str(out))
    assert r.exit_code == 0, r.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 4
    recs = [json.loads(line) for line in lines]
    assert [x["layout.ep"] for x in recs] == [1, 2, 4, 8]
    assert all(x["error"] is None and x["tokens_per_s"] > 0 for x in recs)
    assert "tpot_s" in recs[0] and "memory_per_gpu_bytes" in recs[0] and "usd_per_million_tokens" in recs[0]


def test_jsonl_to_stdout_prints_only_json_lines(run_cli):
    r = run_cli(*CLI, "--vary", "layout.ep=1,3", "--jsonl", "-")
    assert r.exit_code == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(recs) == 2 and recs[1]["error"] and recs[1]["layout.ep"] == 3


def test_json_is_only_json_with_the_grid_and_the_records(run_cli):
    r = run_cli(*CLI, "--vary", "layout.ep=2,3", "--vary", "routing.distribution=uniform,zipf:1.2", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["grid"] == [{"field": "layout.ep", "values": [2, 3]},
                           {"field": "routing.distribution", "values": ["uniform", "zipf:1.2"]}]
    assert doc["num_points"] == 4 and doc["num_errors"] == 2 and len(doc["records"]) == 4
    assert doc["columns"] == list(doc["records"][0])
    assert r.stderr == ""  # no progress bar, no notes


def test_progress_bar_on_stderr_for_big_grids_only(run_cli):
    big = ("--vary", "layout.ep=1,2,4,8", "--vary", "workload.batch_size=1,2,4,8,16,32,64,128,256,512,1024,2048,4096")
    r = run_cli(*CLI, *big)
    assert r.exit_code == 0, r.stderr
    assert "sweep (52 points)" in r.stderr and "52/52" in r.stderr
    assert "52 points" in r.stdout
    r = run_cli(*CLI, *big, "--json")
    assert r.exit_code == 0 and r.stderr == ""
    small = run_cli(*CLI, "--vary", "layout.ep=1,2")
    assert small.stderr == ""


def test_plot_writes_a_png(run_cli, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "tpot.png"
    r = run_cli(*CLI, "--vary", "layout.ep=1,2,3,4,8", "--vary", "routing.distribution=uniform,zipf:1.2",
                "--plot", str(out), "--y", "tpot_s", "--hue", "routing.distribution")
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["tpot.png"]


def test_plot_with_a_categorical_x_and_a_metric_x(tmp_path):
    pytest.importorskip("matplotlib")
    from moesim.cli.render.plan_tables import plot_sweep

    res = sweep(MIXTRAL, {"hardware": ["h100-sxm", "h200", "b200"], "layout.ep": [1, 8]}, FLAT)
    plot_sweep(res, tmp_path / "a.png", "hardware", "usd_per_million_tokens", "layout.ep")
    plot_sweep(res, tmp_path / "b.png", "tokens_per_s_per_gpu", "tpot_s", None)
    assert all((tmp_path / n).read_bytes()[:4] == b"\x89PNG" for n in ("a.png", "b.png"))


def test_plot_without_matplotlib_is_one_line_naming_the_extra(run_cli, tmp_path, monkeypatch):
    import moesim.cli.render.plan_tables as render

    monkeypatch.setattr(render, "plot_available", lambda: False)
    out = tmp_path / "p.png"
    r = run_cli(*CLI, "--vary", "layout.ep=1,2", "--plot", str(out), "--y", "tpot_s")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["error: --plot: matplotlib is not installed; install it with: pip install 'moesim[plot]'"]
    assert not out.exists()


def test_records_put_grid_values_first_and_keep_the_grid_coordinate():
    res = sweep(MIXTRAL, {"hardware": ["h100-sxm"], "layout.ep": [8]}, FLAT)
    rec = res.records()[0]
    assert list(rec)[:2] == ["hardware", "layout.ep"] and list(rec)[-1] == "error"
    assert rec["hardware"] == "h100-sxm" and rec["ep"] == 8
    assert isinstance(res, SweepResult) and res.columns() == list(rec)


def test_to_dataframe_has_one_row_per_point():
    pd = pytest.importorskip("pandas")
    df = sweep(MIXTRAL, {"layout.ep": [1, 2, 3]}, FLAT).to_dataframe()
    assert isinstance(df, pd.DataFrame) and len(df) == 3 and "error" in df.columns


# ----------------------------------------------------------------------------- physics through the sweep


def test_skewed_routing_never_speeds_up_a_training_step():
    exps = ["uniform", "zipf:0.25", "zipf:0.5", "zipf:0.75", "zipf:1.0", "zipf:1.25", "zipf:1.5"]
    res = sweep(_train_scenario(), {"routing.distribution": exps})
    steps = [r["step_s"] for r in res.records()]
    assert all(s is not None for s in steps)
    assert all(b >= a for a, b in zip(steps, steps[1:])), steps
    assert steps[-1] > 1.2 * steps[0]  # and a strong skew costs real time (the max-loaded rank paces the step)


def test_skew_costs_more_with_wider_expert_parallelism():
    """With one expert per rank a hot expert cannot be spread: the slowdown from skew grows with EP."""
    res = sweep(_train_scenario(), {"layout.ep": [2, 8], "routing.distribution": ["uniform", "zipf:1.2"]})
    s = {(p.values["layout.ep"], p.values["routing.distribution"]): p.record["step_s"] for p in res.points}
    assert s[(8, "zipf:1.2")] / s[(8, "uniform")] > s[(2, "zipf:1.2")] / s[(2, "uniform")] >= 1.0


def test_recomputation_can_be_swept_on_a_scenario_that_lists_its_modules():
    """'none' and 'full' points drop the module list of a selective scenario (as --set and plan --recompute
    do); the 'selective' point keeps it."""
    base = ("workload.recompute=selective", 'workload.recompute_modules=["moe_act"]')
    res = sweep("deepseek-v3-train-h800", {"workload.recompute": ["none", "selective", "full"]}, base)
    assert res.num_errors == 0
    plain = {v: estimate(load_scenario("deepseek-v3-train-h800", [f"workload.recompute={v}"])).step_s
             for v in ("none", "full")}
    assert res.points[0].record["step_s"] == plain["none"] and res.points[2].record["step_s"] == plain["full"]
    listed = estimate(load_scenario("deepseek-v3-train-h800", list(base))).step_s
    assert res.points[1].record["step_s"] == listed
    steps = [p.record["step_s"] for p in res.points]
    assert steps[0] < steps[1] < steps[2]


# ----------------------------------------------------------------------------- batch sizes timed together


def _rel_equal(a: dict, b: dict) -> bool:
    """Records equal, floats to the last bits of rounding (the expert all-to-all of several token counts is
    routed once and scaled: moesim.step.bridge.a2a_times_s)."""
    return a.keys() == b.keys() and all(
        (x == y) if not (isinstance(x, float) and isinstance(y, float)) else abs(x - y) <= 1e-14 * max(abs(x), abs(y))
        for x, y in ((a[k], b[k]) for k in a))


@pytest.mark.parametrize("name,vary,sets", [
    ("deepseek-v3-decode-h800", {"workload.batch_size": [1, 8, 64, 256], "workload.prompt_tokens": [512, 4096]}, ()),
    (MIXTRAL, {"layout.ep": [1, 8], "workload.batch_size": [1, 16, 128], "workload.output_tokens": [64, 1024]}, FLAT),
    ("deepseek-v3-prefill-h800", {"workload.prompt_tokens": [1024, 8192], "workload.batch_size": [1, 3, 32]}, ()),
])
def test_a_batch_size_sweep_times_the_batches_together_with_the_figures_of_each_estimate(name, vary, sets):
    """Points that differ only in the batch size get their records from one pass over the batches
    (serve_figures); each equals the record of the point's own estimate, which the point builds on access
    and which equals estimate_resolved of the point's scenario field for field."""
    res = sweep(name, vary, sets)
    base = load_scenario(name)
    model, hw = base.resolve_model(), base.resolve_hardware()
    assert res.num_errors == 0
    for p in res.points:
        sc = load_scenario(name, list(sets) + [f"{k}={v}" for k, v in p.values.items()])
        own = estimate_resolved(sc, model, hw)
        assert _rel_equal(p.record, record(own, sc.workload.batch_size)), p.values
        assert p.estimate.model_dump() == own.model_dump()
        assert p.estimate is p.estimate  # built once


def test_a_batch_group_whose_layout_cannot_run_gives_error_rows_and_the_others_run():
    """A group whose layout cannot run (EP 16 over 8 experts) gives one error row per batch size; the other
    group is timed together; points stay in grid order and the progress callback counts every point once."""
    seen = []
    # 16 GPUs: EP16 divides them but not the 8 experts (the step model's layout check, for the whole group)
    res = sweep(MIXTRAL, {"layout.ep": [16, 8], "workload.batch_size": [1, 64]}, FLAT + ("num_gpus=16",),
                progress=lambda d, t: seen.append((d, t)))
    assert [p.index for p in res.points] == [0, 1, 2, 3]
    assert [p.error is None for p in res.points] == [False, False, True, True]
    assert res.points[0].error == res.points[1].error == "layout.ep: layout.ep (16) must divide the 8 experts"
    assert res.points[0].record is None and res.points[0].estimate is None
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    single = sweep(MIXTRAL, {"workload.batch_size": [64]}, FLAT + ("num_gpus=16", "layout.ep=8"))
    assert _rel_equal(single.points[0].record, res.points[3].record)


def test_batch_groups_follow_grid_order_with_the_batch_axis_anywhere():
    from moesim.plan.sweep import SweepAxis, _batch_groups

    def axes(*spec):
        return [SweepAxis(field=f, values=list(range(n))) for f, n in spec]

    assert _batch_groups(axes(("layout.ep", 2), ("workload.batch_size", 3)), 6) == [[0, 1, 2], [3, 4, 5]]
    assert _batch_groups(axes(("workload.batch_size", 3), ("layout.ep", 2)), 6) == [[0, 2, 4], [1, 3, 5]]
    assert _batch_groups(axes(("a.b", 2), ("workload.batch_size", 2), ("c.d", 2)), 8) == [
        [0, 2], [1, 3], [4, 6], [5, 7]]
    assert _batch_groups(axes(("layout.ep", 3)), 3) == [[0], [1], [2]]
    assert _batch_groups(axes(("workload.batch_size", 1), ("layout.ep", 2)), 2) == [[0], [1]]


def test_a_training_sweep_over_the_global_batch_is_estimated_point_by_point():
    res = sweep(_train_scenario(), {"workload.global_batch_size": [64, 128]})
    assert res.num_errors == 0
    own = estimate(scenario_from_dict({**_train_scenario().model_dump(mode="python"),
                                       "workload": {**_train_scenario().workload.model_dump(mode="python"),
                                                    "global_batch_size": 128}}, "test"))
    assert res.points[1].record == record(own, 128)
