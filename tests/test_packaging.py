"""Packaging: `import moesim` stays light, `moesim --help` runs, and an installed (non-editable)
wheel carries the package, its subpackages and the bundled data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

HEAVY = ("torch", "networkx", "rich", "pydantic", "numpy", "matplotlib")


def _python(code: str, cwd: Path, pythonpath: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    env.pop("PYTHONSTARTUP", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def _loaded_after(code: str, cwd: Path) -> set[str]:
    """Top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    r = _python(probe, cwd)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.strip().splitlines()[-1]))


def test_import_moesim_imports_no_heavy_package(tmp_path):
    loaded = _loaded_after("import moesim", tmp_path)
    assert "moesim" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_analytical_api_never_imports_torch_rich_or_networkx(tmp_path):
    code = (
        "import moesim\n"
        "m = moesim.load_model('deepseek-v3')\n"
        "moesim.count_params(m); moesim.forward_flops_per_token(m, 4096); moesim.kv_bytes_per_token(m)\n"
        "moesim.weight_bytes(m); moesim.load_hardware('h100-sxm')\n"
        "from moesim.card import model_card; model_card(m)\n"
    )
    loaded = _loaded_after(code, tmp_path)
    assert not loaded & {"torch", "rich", "networkx", "matplotlib"}


def test_help_runs_without_heavy_imports(tmp_path):
    code = (
        "from moesim.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
    )
    loaded = _loaded_after(code, tmp_path)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_moesim_help_lists_the_foundation_commands(tmp_path):
    r = subprocess.run([sys.executable, "-m", "moesim.cli.main", "--help"], capture_output=True, text=True,
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert r.returncode == 0 and "models" in r.stdout and "hardware" in r.stdout


# ----------------------------------------------------------------------------- wheel

SOURCES = ("pyproject.toml", "README.md", "LICENSE", "moesim", "runner", "hardware_profiles", "scenarios")


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory) -> Path:
    """Build a wheel from a copy of the checkout (so no build/ folder lands in the repo) and unzip it."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=ignore)
        elif p.exists():
            shutil.copy2(p, src / name)
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out),
         str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = out.glob("moesim-*.whl")
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def _packages(root: Path) -> set[str]:
    return {str(p.parent.relative_to(root)).replace(os.sep, ".") for p in root.rglob("__init__.py")
            if "__pycache__" not in p.parts}


def test_wheel_holds_every_subpackage(unpacked_wheel):
    expected = {p for p in _packages(REPO / "moesim")}
    expected = {"moesim" if p == "." else f"moesim.{p}" for p in expected}
    expected |= {"moesim.runner" if p == "." else f"moesim.runner.{p}" for p in _packages(REPO / "runner")}
    shipped = {"moesim" if p == "." else f"moesim.{p}" for p in _packages(unpacked_wheel / "moesim")}
    assert expected <= shipped, sorted(expected - shipped)


def test_wheel_holds_every_bundled_data_file(unpacked_wheel):
    for folder, pattern in (("hardware_profiles", "*.toml"), ("scenarios", "*.toml"), ("scenarios", "models/*.toml")):
        expected = {p.relative_to(REPO / folder) for p in (REPO / folder).glob(pattern)}
        shipped = {p.relative_to(unpacked_wheel / "moesim" / folder)
                   for p in (unpacked_wheel / "moesim" / folder).glob(pattern)}
        assert expected and expected == shipped, (folder, sorted(expected ^ shipped))


def test_installed_wheel_finds_profiles_models_and_scenarios(unpacked_wheel, tmp_path):
    code = (
        "import json, moesim\n"
        "from moesim.data import hardware_dir, models_dir, scenarios_dir\n"
        "from moesim.scenario import bundled_scenarios, load_scenario\n"
        "hw = moesim.load_hardware('h100-sxm'); m = moesim.load_model('deepseek-v3')\n"
        "names = sorted(bundled_scenarios())\n"
        "for n in names:\n"
        "    s = load_scenario(n); s.resolve_model(); s.resolve_hardware()\n"
        "print(json.dumps({'file': moesim.__file__, 'hw_dir': str(hardware_dir()), 'models_dir': str(models_dir()),\n"
        "                  'scenarios_dir': str(scenarios_dir()), 'hw': hw.name, 'model': m.name,\n"
        "                  'scenarios': names}))\n"
    )
    r = _python(code, tmp_path, pythonpath=unpacked_wheel)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    root = str(unpacked_wheel.resolve())
    for key in ("file", "hw_dir", "models_dir", "scenarios_dir"):
        assert out[key].startswith(root), (key, out[key])
    assert out["hw"] == "h100-sxm" and out["model"] == "DeepSeek-V3"
    assert out["scenarios"] == sorted(p.stem for p in (REPO / "scenarios").glob("*.toml"))


def test_installed_wheel_renders_a_model_card(unpacked_wheel, tmp_path):
    code = "from moesim.cli.main import main\nmain(['models', 'show', 'tiny-moe'])\n"
    r = _python(code, tmp_path, pythonpath=unpacked_wheel)
    assert r.returncode == 0, r.stderr
    assert "tiny-moe" in r.stdout
