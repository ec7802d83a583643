"""moesim: an analytical performance simulator and cost model for Mixture-of-Experts models.

The public API is imported lazily so that ``import moesim`` stays fast and never
imports torch::

    import moesim
    model = moesim.load_model("mixtral-8x7b")
    moesim.count_params(model).active
    hw = moesim.load_hardware("h100-sxm")
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "load_model": "moesim.catalog",
    "bundled_models": "moesim.catalog",
    "count_params": "moesim.params",
    "ParamCounts": "moesim.params",
    "ModelSpec": "moesim.model",
    "load_hardware": "moesim.hardware",
    "bundled_hardware": "moesim.hardware",
    "HardwareProfile": "moesim.hardware",
    "forward_flops_per_token": "moesim.flops",
    "weight_bytes": "moesim.memory",
    "kv_bytes_per_token": "moesim.memory",
    "kv_cache_bytes": "moesim.memory",
    "load_hf_config": "moesim.hf_import",
    "InputError": "moesim.errors",
    "load_scenario": "moesim.scenario",
    "Scenario": "moesim.scenario",
    "estimate": "moesim.step.estimate",
    "expert_load": "moesim.load.api",
    "all_to_all": "moesim.comm.api",
    "all_reduce": "moesim.comm.api",
    "plan": "moesim.plan.search",
    "sweep": "moesim.plan.sweep",
    "simulate": "moesim.serving.api",
    "simulate_rates": "moesim.serving.api",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'moesim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .catalog import bundled_models, load_model
    from .errors import InputError
    from .flops import forward_flops_per_token
    from .hardware import HardwareProfile, bundled_hardware, load_hardware
    from .hf_import import load_hf_config
    from .memory import kv_bytes_per_token, kv_cache_bytes, weight_bytes
    from .model import ModelSpec
    from .params import ParamCounts, count_params
    from .comm.api import all_reduce, all_to_all
    from .load.api import expert_load
    from .plan.search import plan
    from .plan.sweep import sweep
    from .scenario import Scenario, load_scenario
    from .serving.api import simulate, simulate_rates
    from .step.estimate import estimate
