"""The installed console script (not `python -m`, whose runpy imports hide missing imports)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _script() -> str:
    exe = Path(sys.executable).with_name("moesim")
    found = str(exe) if exe.exists() else shutil.which("moesim")
    if not found:
        pytest.skip("the moesim console script is not installed in this environment")
    return found


def test_console_script_runs_the_default_estimate_with_a_clean_interpreter(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run([_script(), "estimate", "--json"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["fits"] is True and data["tpot_s"] > 0


def test_cli_needs_no_import_that_site_packages_happen_to_make(tmp_path):
    """Without ``site`` (no .pth files, whose editable finders import importlib.util) the CLI still runs."""
    import moesim
    import sysconfig

    path = os.pathsep.join([str(Path(moesim.__file__).parents[1]), sysconfig.get_paths()["purelib"]])
    code = "import sys; from moesim.cli.main import main; main(['estimate', '--json'])"
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": path})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["fits"] is True


def test_console_script_help_lists_the_commands(tmp_path):
    out = subprocess.run([_script(), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0
    for cmd in ("estimate", "models", "hardware", "plan", "sweep", "compare", "load", "comm"):
        assert cmd in out.stdout
