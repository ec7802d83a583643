"""Validation results: predicted against measured layer time, per case and summarised (pure).

The error of a case is ``predicted_s / measured_s - 1`` (positive = the model
is slow, i.e. pessimistic). The summary is the median and the 90th percentile
(linear interpolation between order statistics, numpy's default) of the
absolute errors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .layer_model import LayerPrediction


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CaseResult(_Frozen):
    """One case: the layer, its prediction and its measurement."""

    name: str = Field(description="Case name.")
    layer: dict[str, Any] = Field(description="The layer configuration (MoELayerSpec fields) and its routing.")
    predicted_s: float = Field(description="Predicted forward time (slowest rank), seconds.")
    measured_s: float = Field(description="Measured median forward time, seconds.")
    measured_p10_s: float = Field(description="10th percentile of the measured samples, seconds.")
    measured_p90_s: float = Field(description="90th percentile of the measured samples, seconds.")
    num_samples: int = Field(description="Timed repetitions, count.")
    error_frac: float = Field(description="predicted_s / measured_s - 1, dimensionless (signed).")
    predicted_by_stage_s: dict[str, float] = Field(description="Predicted seconds per stage (OpKind).")
    measured_by_stage_s: dict[str, float] = Field(description="Measured seconds per stage (OpKind), one separate pass.")
    predicted_by_op_s: dict[str, float] = Field(
        default_factory=dict,
        description="Predicted seconds per operation of the slowest rank (router_logits, router_topk, permute, "
        "dispatch_all_to_all, experts_up, experts_act, experts_down, unpermute, shared_*).")
    tokens_per_expert_max: int = Field(description="Rows routed to the most loaded expert (all ranks), count.")
    tokens_per_expert_mean: float = Field(description="Mean rows per expert (all ranks), count.")
    num_dropped: int = Field(0, description="Assignments dropped by capacity (padded), count.")
    details: dict[str, str] = Field(default_factory=dict, description="What ran: backends, all-to-all method, threads.")
    sentinel_s: float | None = Field(
        None, gt=0,
        description="The slower of two timings of the sentinel GEMM (moesim.runner.timing.Sentinel) right before and "
        "right after this case's measurement, seconds (the calibration's sentinel). None: results from before it.")

    @property
    def abs_error_frac(self) -> float:
        return abs(self.error_frac)


class ValidationReport(_Frozen):
    """All cases of a validation run and the error summary."""

    device: str = Field(description="Device kind measured (cpu or cuda).")
    device_name: str = Field(description="Device model measured.")
    profile: str = Field(description="Profile name used for the predictions.")
    profile_calibrated_on: str | None = Field(description="Device the profile was calibrated on (None: datasheet).")
    cases_file: str = Field(description="Cases file validated.")
    cases: list[CaseResult]
    median_abs_error_frac: float = Field(description="Median |predicted / measured - 1| over the cases.")
    p90_abs_error_frac: float = Field(description="90th percentile of |predicted / measured - 1| over the cases.")
    by_class: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Per case class (decode, fine_grained, wide, padded, loop, shared, ep, bf16, skewed): "
        "num_cases, median_abs_error_frac, p90_abs_error_frac.")
    elapsed_s: float = Field(description="Wall time of the validation run, seconds.")
    env: dict[str, Any] = Field(default_factory=dict, description="Environment (versions, threads, load average).")
    warnings: list[str] = Field(default_factory=list, description="Warnings raised while validating.")
    sentinel_fastest_s: float | None = Field(
        None, description="Fastest sentinel of the run, seconds (None: results from before the sentinel).")
    num_measured_again: int = Field(
        0, description="Cases measured again because their sentinel ran more than SLOW_MACHINE_FRAC over the fastest.")
    num_measured_slow: int = Field(
        0, description="Cases whose kept measurement still ran more than SLOW_MACHINE_FRAC over the fastest sentinel.")


def case_classes(layer: dict[str, Any]) -> list[str]:
    """The classes a case belongs to (a case may be in several): ``decode`` (at most 64 tokens per rank),
    ``fine_grained`` (expert width at most half the model width), ``wide`` (expert width at least 3x the
    model width), ``padded`` and ``loop`` (implementation), ``shared`` (shared experts), ``ep`` (expert
    parallel), ``bf16`` (16-bit), ``skewed`` (non-uniform forced routing)."""
    out = []
    if layer["num_tokens"] <= 64:
        out.append("decode")
    if layer["d_expert_ffn"] * 2 <= layer["d_model"]:
        out.append("fine_grained")
    if layer["d_expert_ffn"] >= 3 * layer["d_model"]:
        out.append("wide")
    if layer.get("implementation") in ("padded", "loop"):
        out.append(str(layer["implementation"]))
    if layer.get("num_shared_experts"):
        out.append("shared")
    if layer.get("ep_size", 1) > 1:
        out.append("ep")
    if layer.get("dtype") in ("bf16", "fp16"):
        out.append("bf16")
    if str(layer.get("routing", "uniform")) != "uniform":
        out.append("skewed")
    return out


def class_summary(cases: list[CaseResult]) -> dict[str, dict[str, float]]:
    """Per case class: number of cases, median and p90 of ``|predicted / measured - 1|``."""
    groups: dict[str, list[float]] = {}
    for c in cases:
        for k in case_classes(c.layer):
            groups.setdefault(k, []).append(abs(c.error_frac))
    return {k: {"num_cases": float(len(v)), "median_abs_error_frac": float(np.median(v)),
                "p90_abs_error_frac": float(np.percentile(v, 90))} for k, v in sorted(groups.items())}


def error_summary(predicted_s: list[float], measured_s: list[float]) -> tuple[float, float]:
    """(median, p90) of ``|predicted / measured - 1|``."""
    if not predicted_s:
        return float("nan"), float("nan")
    err = np.abs(np.asarray(predicted_s, dtype=float) / np.asarray(measured_s, dtype=float) - 1.0)
    return float(np.median(err)), float(np.percentile(err, 90))


def stage_dict(pred: LayerPrediction) -> dict[str, float]:
    return {str(k): float(v) for k, v in pred.by_stage_s.items()}
