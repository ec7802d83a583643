"""moesim/limits.py: one place for the bounds of every count and size, used by every input surface."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import moesim
from moesim import limits as L
from moesim.errors import InputError

REPO = Path(__file__).resolve().parents[1]
HF = REPO / "tests" / "data" / "hf_configs"
ALL_LIMITS = [v for v in vars(L).values() if isinstance(v, L.Limit)]


@pytest.mark.parametrize("limit", ALL_LIMITS, ids=[lim.what for lim in ALL_LIMITS])
def test_every_limit_names_its_bound_and_reason_and_refuses_non_finite_values(limit: L.Limit):
    assert limit.lo < limit.hi and limit.why.strip()
    assert limit.problem(limit.hi) is None
    over = limit.problem(limit.hi * 10 + 1)
    assert over is not None and limit.why in over and L._fmt(limit.hi) in over
    for bad in (math.inf, -math.inf, math.nan):
        assert "finite" in limit.problem(bad)
    assert "boolean" in limit.problem(True) or "number" in limit.problem(True)
    below = limit.lo - 1 if not limit.lo_open else limit.lo
    assert limit.problem(below).startswith("Input should be greater than")


def test_command_line_numbers_accept_underscores_and_integral_exponents_only_for_counts():
    assert L.EXPERTS.parse_text("16_384") == 16384
    assert L.STEP_TOKENS.parse_text("1e6") == 1_000_000 and isinstance(L.STEP_TOKENS.parse_text("1e6"), int)
    for text in ("1.5", "abc", "", "9" * 100, "1e400"):
        with pytest.raises(ValueError):
            L.EXPERTS.parse_text(text)
    assert L.CAPACITY_FACTOR.parse_text("1.25") == 1.25
    assert L.STEP_TOKENS.parse_text("0", lower=False) == 0  # the lower bound left to the caller


def test_huge_values_are_written_short_in_messages():
    assert L.short(10**30) == "1e+30"
    assert "digits" in L.short(10**5000)
    assert len(L.short("x" * 100_000)) < 80 and "100,002 characters" in L.short("x" * 100_000)


# ----------------------------------------------------------------------------- one limit, every surface


def _err(run_cli, *args: str) -> str:
    r = run_cli(*args)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r
    return lines[0]


def test_the_experts_limit_reads_the_same_in_a_model_file_a_config_json_and_the_flags(run_cli, tmp_path):
    toml = (REPO / "scenarios" / "models" / "tiny-moe.toml").read_text().replace("num_experts = 8",
                                                                                  "num_experts = 1000000")
    (tmp_path / "m.toml").write_text(toml)
    cfg = json.loads((HF / "mixtral-8x7b.json").read_text()) | {"num_local_experts": 10**6}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    lines = [
        _err(run_cli, "models", "show", str(tmp_path / "m.toml")),
        _err(run_cli, "models", "show", str(tmp_path / "config.json")),
        _err(run_cli, "load", "--experts", "1000000", "--top-k", "2"),
        _err(run_cli, "comm", "all-to-all", "-H", "h800", "-n", "8", "-t", "64", "-k", "2", "-e", "1000000",
             "--hidden", "64"),
    ]
    for line in lines:
        assert "at most 16,384" in line and L.EXPERTS.why in line, line
    assert "moe.num_experts" in lines[0] and "num_local_experts" in lines[1]
    assert "--experts" in lines[2] and "--experts" in lines[3]


def test_the_token_limits_read_the_same_in_a_scenario_file_set_and_the_api(run_cli, tmp_path):
    body = (REPO / "scenarios" / "mixtral-8x7b-serve-h100.toml").read_text()
    (tmp_path / "s.toml").write_text(body.replace("output_tokens = 256", "output_tokens = " + "1" + "0" * 30))
    file_line = _err(run_cli, "estimate", str(tmp_path / "s.toml"))
    set_line = _err(run_cli, "estimate", "--set", "workload.output_tokens=1000000000000000000000000000000")
    with pytest.raises(InputError) as exc:
        moesim.load_scenario(None, ["workload.output_tokens=1000000000000000000000000000000"])
    for line in (file_line, set_line, str(exc.value)):
        assert "workload.output_tokens" in line and L.CONTEXT.why in line and "1e+30" in line, line
    assert str(tmp_path / "s.toml") in file_line and "(with --set)" in set_line


@pytest.mark.parametrize("override,field", [
    ("routing.capacity_factor=inf", "routing.capacity_factor"),
    ("routing.seed=-1", "routing.seed"),
    ("workspace_bytes=inf", "workspace_bytes"),
    ("price_usd_per_gpu_hour=inf", "price_usd_per_gpu_hour"),
    ("price_usd_per_gpu_hour=1e9", "price_usd_per_gpu_hour"),
    ("routing.node_limit=1000000000000000000000000000000", "routing.node_limit"),
    ("workload.batch_size=1000000000000000000000000000000", "workload.batch_size"),
    ("workload.batch_size=true", "workload.batch_size"),
    ("num_gpus=1e30", "num_gpus"),
    ("routing.samples=1000000", "routing.samples"),
    ("routing.distribution=" + '"' + "x" * 2_000_000 + '"', "routing.distribution"),
    ("model=" + '"' + "m" * 100_000 + '"', "model"),
    ("workload.batch_size=10000000", "workload"),  # x 1,280 tokens per sequence: over the step-token limit
])
def test_issue_overrides_are_one_line_errors_naming_the_field(run_cli, override, field):
    line = _err(run_cli, "estimate", "--set", override, "--json")
    assert f": {field}: " in line and len(line) < 700, line


def test_estimate_api_refuses_bad_overrides_with_input_error():
    with pytest.raises(InputError, match="routing.capacity_factor"):
        moesim.estimate("mixtral-8x7b-serve-h100", ["routing.capacity_factor=nan"])
    with pytest.raises(InputError, match="32,768-token context"):
        moesim.estimate("mixtral-8x7b-serve-h100", ["workload.prompt_tokens=40000"])


def test_a_prompt_longer_than_the_models_context_names_the_field_and_the_context(run_cli):
    line = _err(run_cli, "estimate", "--set", "workload.prompt_tokens=40000")
    assert "workload.prompt_tokens" in line and "32,768-token context" in line and "Mixtral-8x7B" in line
    # the output counts too, unless the deployment only prefills
    line = _err(run_cli, "estimate", "--set", "workload.prompt_tokens=32000", "--set", "workload.output_tokens=1000")
    assert "workload.output_tokens" in line and "32,768" in line
    r = run_cli("estimate", "--set", "workload.prompt_tokens=32000", "--set", "workload.output_tokens=1000",
                "--set", "workload.phase=prefill", "--json")
    assert r.exit_code == 0, r.stderr


def test_a_model_without_a_stated_context_accepts_a_long_prompt(run_cli, tmp_path):
    toml = (REPO / "scenarios" / "models" / "mixtral-8x7b.toml").read_text()
    toml = "\n".join(ln for ln in toml.splitlines() if not ln.startswith("max_context"))
    (tmp_path / "m.toml").write_text(toml + "\n")
    r = run_cli("estimate", "--set", f'model="{tmp_path / "m.toml"}"', "--set", "workload.prompt_tokens=40000",
                "--set", "workload.batch_size=1", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["tpot_s"] > 0


def test_a_model_too_large_to_be_physical_is_refused_fast(run_cli, tmp_path):
    cfg = json.loads((HF / "deepseek-v3.json").read_text()) | {"num_hidden_layers": 10**30}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert "num_hidden_layers" in _err(run_cli, "models", "show", str(tmp_path / "config.json"))
    cfg |= {"num_hidden_layers": 10_000, "hidden_size": 100_000}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    line = _err(run_cli, "models", "show", str(tmp_path / "config.json"))
    assert "parameters; at most 1e+15" in line
    cfg = json.loads((HF / "mixtral-8x7b.json").read_text()) | {"hidden_size": 1e308}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert "hidden_size: must be at most 1,000,000" in _err(run_cli, "models", "show", str(tmp_path / "config.json"))


def test_a_non_string_model_type_is_an_input_error(run_cli, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": []}')
    line = _err(run_cli, "models", "show", str(tmp_path / "config.json"))
    assert "model_type" in line and "supported: " in line


def test_plan_top_must_be_positive_and_is_refused_before_the_search(run_cli):
    for top in ("0", "-1"):
        assert "--top" in _err(run_cli, "plan", "--top", top)


def test_load_tables_too_large_to_evaluate_quickly_are_refused(run_cli):
    line = _err(run_cli, "load", "--experts", "16384", "--top-k", "8", "--ep", "16384")
    assert "--ep" in line and f"{int(L.LOAD_MODEL_CELLS.hi):,}" in line
    line = _err(run_cli, "estimate", "deepseek-v3-decode-h800", "--set", "routing.samples=10000",
                "--set", "routing.redundant_experts=4000")
    assert "routing.samples" in line


def test_estimate_json_is_byte_identical_across_runs(tmp_path):
    runs = [subprocess.run([sys.executable, "-m", "moesim.cli.main", "estimate", "--json"], cwd=tmp_path,
                           capture_output=True, timeout=120) for _ in range(2)]
    assert runs[0].returncode == 0 and runs[0].stdout == runs[1].stdout and runs[0].stdout


def test_load_model_work_limits_are_refused_before_minutes_of_computation(run_cli):
    """Skewed routing with a large top-k, tiny Dirichlet concentrations and replica placement over many
    experts per rank each have a bound; inside them the same commands answer in seconds."""
    line = _err(run_cli, "load", "--experts", "256", "--top-k", "64", "-d", "dirichlet:0.1")
    assert "--distribution" in line and "262,144" in line
    line = _err(run_cli, "comm", "all-to-all", "-H", "h800", "-n", "64", "-t", "4096", "-k", "64", "-e", "256",
                "--hidden", "7168", "-d", "zipf:1")
    assert "--distribution" in line and "top-k^2" in line
    line = _err(run_cli, "estimate", "deepseek-v3-train-h800", "--set", "routing.distribution=dirichlet:0.001")
    assert "routing.distribution" in line and "0.05" in line
    line = _err(run_cli, "load", "--experts", "16384", "--top-k", "8", "--ep", "2", "--redundant-experts", "256")
    assert "--redundant-experts" in line and "131,072" in line
    assert run_cli("load", "--experts", "256", "--top-k", "64", "--json").exit_code == 0  # uniform stays cheap
    assert run_cli("load", "--experts", "256", "--top-k", "8", "-d", "dirichlet:0.05:3", "--json").exit_code == 0
