"""Compare: two scenarios side by side (H100 vs B200, NVL72 vs 8-GPU nodes, EPLB on vs off).

Both scenarios are estimated with :func:`~moesim.step.estimate.estimate_resolved`.
The comparison lists

* the inputs that differ: every scenario field (flattened to dotted paths,
  ``name``/``description`` left out) plus the derived ``layout.dp`` and
  ``layout.edp`` and the effective price per GPU-hour;
* the key figures, each as a path into :class:`~moesim.step.result.Estimate`
  (``tpot_s``, ``cost.usd_per_million_tokens``, ``time_by_stage_s.dispatch``,
  ``memory.by_category_bytes.kv_cache``), with the ratio ``B / A`` and which
  side is better: lower is better for times, memory, cost, imbalance and
  drops; higher for throughput, MFU and the largest batch that fits.

Ratio conventions: ``B / A``; 1 when both are 0; None when only A is 0 or a
figure is missing on one side. A stage or memory category present on one side
only counts as 0 on the other (that side spends nothing there). No printing;
:func:`compare_estimates` is pure, :func:`compare` reads the scenario, model and
hardware files as :func:`~moesim.step.estimate.estimate` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from ..errors import InputError
from ..hardware import HardwareProfile
from ..model import ModelSpec
from ..scenario import Scenario, apply_overrides, parse_set, read_scenario_raw, scenario_from_dict
from ..step.estimate import estimate_resolved
from ..step.result import Estimate

#: relative difference under which two figures count as the same
SAME_REL_TOL = 1e-9

Direction = Literal["lower", "higher"]

#: (path into Estimate, better direction, human label) for the headline figures, in display order
HEADLINE: tuple[tuple[str, Direction, str], ...] = (
    ("step_s", "lower", "step time"),
    ("step_p99_s", "lower", "step time (p99 straggler)"),
    ("ttft_s", "lower", "time to first token"),
    ("tpot_s", "lower", "time per output token"),
    ("tpot_p99_s", "lower", "time per output token (p99)"),
    ("tokens_per_s", "higher", "tokens/s"),
    ("tokens_per_s_per_gpu", "higher", "tokens/s per GPU"),
    ("mfu_frac", "higher", "MFU"),
    ("mfu_bf16_frac", "higher", "MFU vs BF16 peak"),
    ("memory_per_gpu_bytes", "lower", "memory per GPU"),
    ("memory.headroom_bytes", "higher", "memory headroom"),
    ("max_batch_size", "higher", "largest batch that fits"),
    ("cost.usd_per_gpu_hour", "lower", "USD per GPU-hour"),
    ("cost.gpu_hours_per_million_tokens", "lower", "GPU-hours per million tokens"),
    ("cost.usd_per_million_tokens", "lower", "USD per million tokens"),
    ("cost.run_usd", "lower", "USD for the run"),
    ("cost.run_days", "lower", "days for the run"),
    ("load.max_over_mean_ratio", "lower", "expert load max/mean"),
    ("load.dropped_frac", "lower", "dropped token copies"),
)

#: scenario fields that only label a scenario (not inputs of the estimate)
_LABELS = {"name", "description", "base_dir"}


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Difference(_Spec):
    """One input that differs between the two scenarios."""

    field: str = Field(description="Dotted scenario field (layout.ep, routing.distribution, hardware, ...).")
    a: Any = Field(description="Value in scenario A (None when A does not have the field).")
    b: Any = Field(description="Value in scenario B (None when B does not have the field).")


class Figure(_Spec):
    """One key figure on both sides."""

    key: str = Field(description="Path into the Estimate (units in the name), e.g. cost.usd_per_million_tokens.")
    group: Literal["headline", "time_by_stage", "memory"] = Field(description="Which table it belongs to.")
    a: float | None = Field(description="Value for A (unit in the key).")
    b: float | None = Field(description="Value for B (unit in the key).")
    ratio: float | None = Field(description="B / A (1 when both are 0; None when A is 0 alone or a side is missing).")
    lower_is_better: bool = Field(description="True for times, memory, cost, imbalance; False for throughput, MFU.")
    better: Literal["a", "b", "same"] | None = Field(description="Which side is better; None when not comparable.")


class Comparison(_Spec):
    """Two estimates, the inputs that differ and the ratios of their key figures."""

    a: Estimate = Field(description="Estimate of scenario A.")
    b: Estimate = Field(description="Estimate of scenario B.")
    differences: list[Difference] = Field(description="Inputs that differ, in scenario field order.")
    figures: list[Figure] = Field(description="Key figures, headline then time by stage then memory.")

    @computed_field(description="Figure key -> B / A.")  # type: ignore[prop-decorator]
    @property
    def ratios(self) -> dict[str, float | None]:
        return {f.key: f.ratio for f in self.figures}

    def figure(self, key: str) -> Figure:
        for f in self.figures:
            if f.key == key:
                return f
        raise KeyError(key)


# ----------------------------------------------------------------------------- pieces (pure)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _inputs(sc: Scenario, est: Estimate) -> dict[str, Any]:
    flat = _flatten(sc.model_dump(mode="json", exclude=_LABELS))
    flat["layout.dp"] = sc.dp
    flat["layout.edp"] = sc.edp
    flat["price_usd_per_gpu_hour"] = est.cost.usd_per_gpu_hour
    return flat


def differences(sa: Scenario, ea: Estimate, sb: Scenario, eb: Estimate) -> list[Difference]:
    """Scenario inputs (with derived DP/EDP and the effective price) whose values differ."""
    ia, ib = _inputs(sa, ea), _inputs(sb, eb)
    keys = list(ia) + [k for k in ib if k not in ia]
    return [Difference(field=k, a=ia.get(k), b=ib.get(k)) for k in keys if ia.get(k) != ib.get(k)]


def _get(est: Estimate, path: str) -> float | None:
    node: Any = est
    for part in path.split("."):
        if node is None:
            return None
        node = node.get(part) if isinstance(node, dict) else getattr(node, part)
    if node is None or isinstance(node, bool):
        return None
    return float(node)


def ratio(a: float | None, b: float | None) -> float | None:
    """``b / a``; 1 when both are 0; None when a side is missing, only ``a`` is 0, or a value is not finite."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None
    if a == 0:
        return 1.0 if b == 0 else None
    return b / a


def _better(a: float | None, b: float | None, lower: bool) -> Literal["a", "b", "same"] | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    if a == b or abs(a - b) <= SAME_REL_TOL * max(abs(a), abs(b)):
        return "same"
    return ("a" if a < b else "b") if lower else ("a" if a > b else "b")


def _figure(key: str, group: str, a: float | None, b: float | None, direction: Direction) -> Figure:
    lower = direction == "lower"
    return Figure(key=key, group=group, a=a, b=b, ratio=ratio(a, b), lower_is_better=lower, better=_better(a, b, lower))


def figures(ea: Estimate, eb: Estimate) -> list[Figure]:
    """Headline figures present on either side, then time by stage, then memory by category."""
    out = []
    for key, direction, _ in HEADLINE:
        a, b = _get(ea, key), _get(eb, key)
        if a is None and b is None:
            continue
        out.append(_figure(key, "headline", a, b, direction))
    for group, da, db, path in (
        ("time_by_stage", ea.time_by_stage_s, eb.time_by_stage_s, "time_by_stage_s"),
        ("memory", ea.memory.by_category_bytes, eb.memory.by_category_bytes, "memory.by_category_bytes"),
    ):
        names = list(da) + [k for k in db if k not in da]
        for name in names:
            a, b = da.get(name, 0.0), db.get(name, 0.0)
            out.append(_figure(f"{path}.{name}", group, a, b, "lower"))
    return out


def compare_estimates(sa: Scenario, ea: Estimate, sb: Scenario, eb: Estimate) -> Comparison:
    """The comparison of two estimates already made (pure)."""
    return Comparison(a=ea, b=eb, differences=differences(sa, ea, sb, eb), figures=figures(ea, eb))


# ----------------------------------------------------------------------------- entry point


def load_with(ref: Scenario | str | Path | None, overrides: Sequence[str], flag: str) -> Scenario:
    """A scenario (object, bundled name or TOML path) with ``field=value`` overrides; errors name ``flag``."""
    if isinstance(ref, Scenario):
        raw, where, base = ref.model_dump(mode="python"), f"scenario {ref.name}", ref.base_dir
    else:
        raw, where, base = read_scenario_raw(ref)
    if overrides:
        try:
            raw = apply_overrides(raw, parse_set(tuple(overrides)))
        except InputError as exc:
            raise InputError(exc.message, source=flag, field=exc.field) from None
        where = f"{where} (with {flag})"
    return scenario_from_dict(raw, where, base)


def compare(
    a: Scenario | str | Path,
    b: Scenario | str | Path,
    set_a: Sequence[str] = (),
    set_b: Sequence[str] = (),
) -> Comparison:
    """Estimate scenarios ``a`` and ``b`` (objects, bundled names or TOML paths; the same one twice is fine)
    with their own ``field=value`` overrides, and compare them (ratios are B / A)."""
    return compare_scenarios(load_with(a, set_a, "--set-a"), load_with(b, set_b, "--set-b"))


def compare_scenarios(sa: Scenario, sb: Scenario) -> Comparison:
    """Estimate two loaded scenarios (model and hardware loaded once when shared) and compare them."""
    ma, ha = sa.resolve_model(), sa.resolve_hardware()
    mb = ma if (sa.model, sa.base_dir) == (sb.model, sb.base_dir) else sb.resolve_model()
    hb = ha if (sa.hardware, sa.base_dir) == (sb.hardware, sb.base_dir) else sb.resolve_hardware()
    return compare_estimates(sa, _estimate(sa, ma, ha, "A"), sb, _estimate(sb, mb, hb, "B"))


def _estimate(sc: Scenario, model: ModelSpec, hw: HardwareProfile, side: str) -> Estimate:
    """Estimate one side; a layout that cannot run names the side."""
    try:
        sc.check_model(model)  # the model may be shared with the other side, loaded (and checked) once for it
        return estimate_resolved(sc, model, hw)
    except InputError as exc:
        raise InputError(exc.message, source=f"{exc.source or 'scenario ' + sc.name} (side {side})", field=exc.field) from None
