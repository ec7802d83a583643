"""Checks before running the PyTorch runner: torch installed, device present, profile matching the device.

Nothing here imports torch at module import time; :func:`require_torch`
imports it when a runner command actually needs it.
"""

from __future__ import annotations

from typing import Any, Literal

from ..errors import InputError
from ..hardware import HardwareProfile

Device = Literal["cpu", "cuda"]
TORCH_REQUIREMENT = "torch==2.13.0"
INSTALL_HINT = f"pip install 'moesim[runner]' (it installs {TORCH_REQUIREMENT})"


def require_torch(command: str) -> Any:
    """Import and return torch, or raise a one-line InputError telling how to install it."""
    try:
        import torch
    except ImportError:
        raise InputError(f"`moesim {command}` needs PyTorch, which is not installed; {INSTALL_HINT}") from None
    return torch


def require_device(device: str, command: str) -> Any:
    """torch, after checking that ``device`` is usable; InputError naming --device otherwise."""
    torch = require_torch(command)
    if device == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise InputError(
            f"cuda requested but torch {torch.__version__} ({build}) sees no CUDA GPU; use --device cpu",
            source="--device",
        )
    return torch


def check_profile_device(profile: HardwareProfile, device: str, *, source: str) -> list[str]:
    """Raise when the profile describes another kind of device; return warnings otherwise.

    A GPU profile (datasheet or calibrated on CUDA) cannot predict a CPU run and
    vice versa. A profile that was never calibrated only warns: its
    efficiencies are documented defaults.
    """
    kind = profile.accelerator.kind
    want = "gpu" if device == "cuda" else "cpu"
    cal = profile.calibration
    if kind != want:
        what = (f"was calibrated on {cal.device_name}" if cal else "is a datasheet profile") + f" for a {kind.upper()}"
        hint = f"moesim calibrate --device {device} --out PROFILE.json"
        raise InputError(
            f"profile {profile.name!r} {what} ({profile.accelerator.name}) but --device is {device}; "
            f"calibrate this device first: {hint}",
            source=source,
        )
    warnings = []
    if cal is None:
        warnings.append(
            f"profile {profile.name!r} is not calibrated (datasheet numbers and default efficiencies); "
            f"predictions are rough until `moesim calibrate --device {device}`"
        )
    return warnings


def check_calibrated_here(profile: HardwareProfile, device_name: str) -> list[str]:
    """Warn when a calibrated profile was measured on a differently named device."""
    cal = profile.calibration
    if cal is not None and cal.device_name != device_name:
        return [f"profile {profile.name!r} was calibrated on {cal.device_name!r}, this device is {device_name!r}"]
    return []
