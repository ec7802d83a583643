"""moesim load SCENARIO: the scenario supplies the model, EP size, tokens and routing; flags override it."""

from __future__ import annotations

import json
import subprocess
import sys


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "moesim.cli.main", "load", *args], capture_output=True, text=True)


def test_load_takes_model_layout_tokens_and_routing_from_the_scenario():
    out = _cli("deepseek-v3-train-h800", "--json")
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout)["spec"]
    # DeepSeek-V3 (256 experts, top-8, group-limited routing), EP64, one 4096-token micro-batch per rank
    assert (spec["num_experts"], spec["top_k"], spec["ep_size"]) == (256, 8, 64)
    assert spec["num_tokens"] == 4096 * 64
    assert spec["router"]["kind"] == "group_limited"


def test_flags_override_the_scenario():
    out = _cli("deepseek-v3-train-h800", "--ep", "32", "-d", "zipf:1.2", "--json")
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout)["spec"]
    assert spec["ep_size"] == 32 and spec["distribution"]["kind"] == "zipf"


def test_unknown_scenario_is_one_line_exit_2():
    out = _cli("no-such-scenario")
    assert out.returncode == 2
    assert "unknown scenario" in out.stderr and "Traceback" not in out.stderr
