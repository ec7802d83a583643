"""Locate the bundled data folders (hardware profiles, scenarios, models).

From a checkout they sit beside the ``moesim`` package; in an installed wheel
they are shipped inside it (``moesim/hardware_profiles``, ``moesim/scenarios``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PKG = Path(__file__).resolve().parent


@cache
def data_dir(name: str) -> Path:
    """Return the folder ``name`` (``hardware_profiles`` or ``scenarios``)."""
    for candidate in (_PKG / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundled data folder {name!r} not found beside {_PKG}")


def hardware_dir() -> Path:
    return data_dir("hardware_profiles")


def scenarios_dir() -> Path:
    return data_dir("scenarios")


def models_dir() -> Path:
    return scenarios_dir() / "models"
