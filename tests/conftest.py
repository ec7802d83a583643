"""Shared fixtures: paths to the test data and an in-process CLI runner.

Keep this file small; fixtures used by one test module belong in that module.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
HF_CONFIGS = DATA / "hf_configs"
PUBLISHED_PARAMS = DATA / "published_params.toml"


@pytest.fixture(scope="session")
def published() -> dict[str, dict[str, Any]]:
    """Publisher-quoted parameter counts, one table per bundled real model."""
    with PUBLISHED_PARAMS.open("rb") as f:
        return tomllib.load(f)


@pytest.fixture
def hf_raw() -> Callable[[str], dict[str, Any]]:
    """Parsed ``tests/data/hf_configs/<name>.json`` (a fresh dict each call, safe to modify)."""

    def load(name: str) -> dict[str, Any]:
        return json.loads((HF_CONFIGS / f"{name}.json").read_text())

    return load


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a (modified) config dict as ``tmp_path/<name>.json`` and return its path."""

    def write(raw: Any, name: str = "config-variant") -> Path:
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(raw))
        return p

    return write


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``moesim ARGS`` in-process through ``moesim.cli.main.main`` (its InputError -> exit 2 handling included)."""
    from moesim.cli.main import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run
