"""`moesim models` and `moesim hardware` through the CLI: output contracts and bad input.

Bad input must give exit code 2 and exactly one line on stderr that names the file (or flag) and
the field, with no traceback and nothing on stdout. Most cases run in-process through
``moesim.cli.main.main`` (the ``run_cli`` fixture); a few run the real interpreter in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.catalog import bundled_models
from moesim.hardware import bundled_hardware

REPO = Path(__file__).resolve().parents[1]
HF_CONFIGS = Path(__file__).resolve().parent / "data" / "hf_configs"


def assert_one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    line = result.stderr.strip()
    assert "\n" not in line, result.stderr
    assert line.startswith("error: ") and "Traceback" not in line
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    return line


def _variant(tmp_path: Path, source: Path, old: str, new: str, suffix: str = ".toml") -> Path:
    text = source.read_text()
    assert old in text, old
    p = tmp_path / f"variant{suffix}"
    p.write_text(text.replace(old, new, 1))
    return p


TINY = bundled_models()["tiny-moe"]
H100 = bundled_hardware()["h100-sxm"]


# ----------------------------------------------------------------------------- bad input: models


def test_model_toml_key_typo(run_cli, tmp_path):
    p = _variant(tmp_path, TINY, "expert_ffn_dim", "expert_ffn_dimm")
    assert_one_line_error(run_cli("models", "show", str(p)), str(p), "expert_ffn_dimm", "unknown key")


@pytest.mark.parametrize(
    "old, new, field",
    [
        ("hidden_size = 256", "hidden_size = -256", "hidden_size"),
        ("num_layers = 4", "num_layers = 0", "num_layers"),
        ("expert_ffn_dim = 512", "expert_ffn_dim = 0", "expert_ffn_dim"),
    ],
)
def test_model_toml_negative_or_zero_size(run_cli, tmp_path, old, new, field):
    p = _variant(tmp_path, TINY, old, new)
    assert_one_line_error(run_cli("models", "show", str(p)), str(p), field, "greater than 0")


def test_model_toml_top_k_above_num_experts(run_cli, tmp_path):
    p = _variant(tmp_path, TINY, "top_k = 2", "top_k = 9")
    assert_one_line_error(run_cli("models", "show", str(p)), str(p), "top_k (9)", "num_experts (8)")


def test_model_toml_that_is_not_toml(run_cli, tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("num_layers = = 4\n")
    assert_one_line_error(run_cli("models", "show", str(p)), str(p), "not valid TOML")


def test_config_json_that_is_not_json(run_cli):
    p = HF_CONFIGS / "bad-not-json.json"
    assert_one_line_error(run_cli("models", "show", str(p)), str(p), "not valid JSON")


def test_config_json_with_unsupported_model_type_lists_supported_ones(run_cli):
    p = HF_CONFIGS / "bad-unknown-model-type.json"
    line = assert_one_line_error(run_cli("models", "show", str(p)), str(p), "model_type", "falcon_mamba_xyz")
    for family in ("mixtral", "deepseek_v3", "qwen3_moe", "gpt_oss", "llama4", "dbrx"):
        assert family in line


def test_config_json_missing_required_field_names_it(run_cli):
    p = HF_CONFIGS / "bad-missing-field.json"
    assert_one_line_error(run_cli("models", "show", str(p)), str(p), "num_local_experts", "missing")


def test_config_json_with_wrong_type_names_the_field(run_cli, hf_raw, write_config):
    p = write_config(hf_raw("mixtral-8x7b") | {"hidden_size": "4k"})
    assert_one_line_error(run_cli("models", "show", str(p)), str(p), "hidden_size", "integer")


def test_missing_model_file(run_cli, tmp_path):
    p = tmp_path / "nope.toml"
    assert_one_line_error(run_cli("models", "show", str(p)), str(p), "not found")


def test_unknown_model_name_lists_known_ones(run_cli):
    line = assert_one_line_error(run_cli("models", "show", "mixtral-9x9b"), "model", "mixtral-9x9b")
    for name in bundled_models():
        assert name in line


# ----------------------------------------------------------------------------- bad input: hardware


def test_unknown_profile_name_lists_known_ones(run_cli):
    line = assert_one_line_error(run_cli("hardware", "show", "h1000"), "hardware", "h1000")
    for name in bundled_hardware():
        assert name in line


def test_hardware_number_with_unknown_unit(run_cli, tmp_path):
    p = _variant(tmp_path, H100, 'value = "80 GB"', 'value = "80 GQ"')
    assert_one_line_error(run_cli("hardware", "show", str(p)), str(p), "accelerator.memory_bytes", "GQ", "GiB")


def test_hardware_datasheet_number_without_source(run_cli, tmp_path):
    line = next(x for x in H100.read_text().splitlines() if x.startswith("scale_up_latency_s = {"))
    p = _variant(tmp_path, H100, line, 'scale_up_latency_s = "3 us"')
    assert_one_line_error(run_cli("hardware", "show", str(p)), str(p), "node.scale_up_latency_s", "source")


def test_hardware_profile_key_typo(run_cli, tmp_path):
    p = _variant(tmp_path, H100, "rail_optimized = true", "rail_optimised = true")
    assert_one_line_error(run_cli("hardware", "show", str(p)), str(p), "rail_optimised", "unknown key")


# ----------------------------------------------------------------------------- output contracts


@pytest.mark.parametrize("name", sorted(bundled_models()))
def test_models_show_json_contract(run_cli, name):
    r = run_cli("models", "show", name, "--json")
    assert r.exit_code == 0 and r.stderr == ""
    card = json.loads(r.stdout)  # stdout is JSON and nothing else
    params = card["params"]
    assert type(params["total"]) is int and type(params["active"]) is int
    for key in ("by_component", "active_by_component"):
        parts = params[key]
        assert {"embedding", "lm_head"} <= set(parts)
        assert all(type(v) is int for v in parts.values())
        assert sum(parts.values()) == params["total" if key == "by_component" else "active"]
    assert card["kv_bytes_per_token_by_dtype"]["bf16"] > 0
    assert card["forward_matmul_flops_per_token"] > 0


def test_models_show_json_of_a_config_json(run_cli):
    r = run_cli("models", "show", str(HF_CONFIGS / "gpt-oss-20b.json"), "--json")
    card = json.loads(r.stdout)
    assert card["name"] == "gpt-oss-20b" and card["num_experts"] == 32


def test_models_list_json_has_every_bundled_model(run_cli):
    r = run_cli("models", "list", "--json")
    rows = json.loads(r.stdout)
    assert {row["name"] for row in rows} == set(bundled_models())
    for row in rows:
        assert type(row["total_params"]) is int and row["active_params"] <= row["total_params"]


def test_models_show_renders_a_card(run_cli):
    r = run_cli("models", "show", "deepseek-v3")
    assert r.exit_code == 0 and "DeepSeek-V3" in r.stdout


def test_hardware_list_and_show_json(run_cli):
    rows = json.loads(run_cli("hardware", "list", "--json").stdout)
    assert {row["name"] for row in rows} == set(bundled_hardware())
    h100 = next(row for row in rows if row["name"] == "h100-sxm")
    assert h100["peak_bf16_flops_per_s"] == pytest.approx(989.4e12)
    assert h100["scale_up_bandwidth_per_accelerator_bytes_per_s"] == 450e9
    assert h100["scale_out_bandwidth_per_accelerator_bytes_per_s"] == 50e9
    shown = json.loads(run_cli("hardware", "show", "h100-sxm", "--json").stdout)
    assert shown["scale_out"]["bandwidth_per_nic_bytes_per_s"] == 50e9
    assert "accelerator.memory_bytes" in shown["sources"]


def test_hardware_show_renders_sources(run_cli):
    r = run_cli("hardware", "show", "h100-sxm")
    assert r.exit_code == 0 and "H100" in r.stdout


# ----------------------------------------------------------------------------- real interpreter


def _moesim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "moesim.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


def test_subprocess_bad_input_exits_2_with_one_line(tmp_path):
    p = _variant(tmp_path, TINY, "top_k = 2", "top_k = 9")
    r = _moesim("models", "show", str(p), cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and str(p) in r.stderr


def test_subprocess_unknown_profile_exits_2(tmp_path):
    r = _moesim("hardware", "show", "nope", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "h100-sxm" in r.stderr


def test_verbose_flag_shows_the_traceback(tmp_path):
    r = _moesim("-v", "hardware", "show", "nope", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr
