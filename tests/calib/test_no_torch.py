"""The analytical core and the calibration math never import torch; without torch the runner commands say how to install it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_importing_moesim_calib_and_the_cli_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        import moesim, moesim.calib, moesim.cli.main
        import moesim.calib.fit, moesim.calib.layer_model, moesim.calib.cases, moesim.calib.grid
        import moesim.calib.records, moesim.calib.store, moesim.calib.routing, moesim.calib.validation
        import moesim.calib.runtime, moesim.calib.layer_spec
        import moesim.cli.calibrate_cmd, moesim.cli.validate_cmd, moesim.cli.bench_layer_cmd
        import moesim.cli.render.runner
        bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not bad, bad
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.fixture
def no_torch_env(tmp_path):
    """An environment where ``import torch`` fails (a shadowing package that raises ImportError)."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named torch (test stub)')\n")
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(tmp_path / "fake") + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("args", [
    ["calibrate", "--out", "{tmp}/p.json"],
    ["validate", "--profile", "local-cpu"],
    ["bench-layer"],
])
def test_runner_commands_without_torch_print_one_install_line_and_exit_2(no_torch_env, tmp_path, args):
    argv = [a.format(tmp=tmp_path) for a in args]
    r = subprocess.run([sys.executable, "-m", "moesim.cli.main", *argv], cwd=REPO, env=no_torch_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "pip install 'moesim[runner]'" in lines[0] and "torch==2.13.0" in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "p.json").exists()
