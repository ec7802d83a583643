"""Sweep: evaluate one scenario over a grid (cartesian product) of field values.

A grid is a list of axes, each a dotted scenario field (as ``--set`` spells it:
``layout.ep``, ``routing.distribution``, ``hardware``, ``workload.batch_size``)
with a list of values. Points are the cartesian product of the axes in the
order given, the last axis varying fastest (``itertools.product``), so
``vary={"a": [1, 2], "b": [x, y]}`` evaluates ``(1, x), (1, y), (2, x), (2, y)``.

Every point is the base scenario (plus ``overrides``) with that point's values
applied, validated as a :class:`~moesim.scenario.Scenario` and estimated with
:func:`~moesim.step.estimate.estimate_resolved`. Model and hardware are loaded
once per distinct reference. Serving points that differ only in
``workload.batch_size`` are timed together (:func:`~moesim.step.estimate.serve_figures`,
the same figures to the last bits of rounding); their full estimates are built
when :attr:`SweepPoint.estimate` is first read. A point whose combination cannot run (EP not
dividing the experts, GPUs not a multiple of TP x PP, more GPUs than the
profile describes) becomes a row with an ``error`` (one line) instead of
stopping the sweep. Problems with the grid itself (an unknown field, a value
of the wrong type or outside its range, an unknown profile or distribution,
an empty value list) raise :class:`~moesim.errors.InputError` before any point
is estimated.

No printing and no output files; files are read only to load the scenario, its
model and its hardware (as :func:`~moesim.step.estimate.estimate` does).
``progress`` is an optional callback.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from .. import limits as L
from ..caches import collection_paused
from ..errors import InputError, field_errors
from ..hardware import HardwareProfile
from ..model import ModelSpec
from ..scenario import (
    Scenario,
    ServeWorkload,
    TrainWorkload,
    apply_overrides,
    drop_unused_recompute_modules,
    parse_set,
    read_scenario_raw,
    scenario_from_dict,
)
from ..step.estimate import estimate_resolved, serve_figures
from ..step.result import Estimate, built
from .records import RECORD_FIELDS, record, to_dataframe

#: source named by errors in the grid (the CLI renames it to its flag)
VARY = "vary"


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SweepAxis(_Spec):
    """One dimension of the grid."""

    field: str = Field(description="Dotted scenario field, as --set spells it (e.g. layout.ep).")
    values: list[Any] = Field(min_length=1, description="Values in grid order (TOML types: int, float, str, bool).")


class SweepPoint(_Spec):
    """One grid point: its values and either its key figures and estimate or the reason it cannot run."""

    index: int = Field(ge=0, description="Position in grid order (last axis fastest).")
    values: dict[str, Any] = Field(description="Varied field -> value at this point.")
    record: dict[str, Any] | None = Field(description="Key figures (moesim.plan.records.record), units in the names; None on error.")
    error: str | None = Field(description="One-line reason this point cannot run; None when it ran.")
    _estimate: Estimate | None = PrivateAttr(None)
    _inputs: tuple[Scenario, ModelSpec, HardwareProfile] | None = PrivateAttr(None)

    @property
    def estimate(self) -> Estimate | None:
        """The full estimate (:func:`~moesim.step.estimate.estimate_resolved` of the point's scenario); None on
        error. A point of a serving sweep over ``workload.batch_size`` builds it on first access: its record
        came from the batch sizes timed together (:func:`~moesim.step.estimate.serve_figures`)."""
        if self._estimate is None and self._inputs is not None:
            self._estimate = estimate_resolved(*self._inputs)
            self._inputs = None
        return self._estimate

    @classmethod
    def _of(cls, index: int, values: dict[str, Any], record: dict[str, Any] | None, error: str | None,
            estimate: Estimate | None = None, inputs: tuple | None = None) -> "SweepPoint":
        # every field built here with its type (the estimate is already a result): no revalidation per point
        p = built(cls, index=index, values=values, record=record, error=error)
        object.__setattr__(p, "__pydantic_private__", {"_estimate": estimate, "_inputs": inputs})
        return p


class SweepResult(_Spec):
    """All points of a sweep, in grid order."""

    scenario: str = Field(description="Name of the base scenario.")
    grid: list[SweepAxis] = Field(description="The axes, in the order given.")
    points: list[SweepPoint] = Field(description="One per grid point, in grid order.")

    @property
    def num_points(self) -> int:
        return len(self.points)

    @property
    def num_errors(self) -> int:
        return sum(1 for p in self.points if p.error is not None)

    @property
    def fields(self) -> list[str]:
        """The varied fields, in grid order."""
        return [a.field for a in self.grid]

    def columns(self) -> list[str]:
        """Record keys in order: varied fields, then the key figures not already varied, then ``error``."""
        varied = self.fields
        return varied + [f for f in RECORD_FIELDS if f not in varied] + ["error"]

    def records(self) -> list[dict[str, Any]]:
        """One plain dict per point (varied values first, then the key figures, then ``error``)."""
        cols = self.columns()
        out = []
        for p in self.points:
            row = dict.fromkeys(cols)
            if p.record is not None:
                row.update({k: v for k, v in p.record.items() if k in row})
            row.update(p.values)  # the grid coordinate wins over a resolved figure of the same name
            row["error"] = p.error
            out.append(row)
        return out

    def to_dataframe(self):  # noqa: ANN201 - pandas is optional
        """A pandas DataFrame of :meth:`records` (needs pandas)."""
        return to_dataframe(self.records())


# ----------------------------------------------------------------------------- grid parsing


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,...`` on commas outside brackets and quotes (so TOML arrays and strings stay whole)."""
    items, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    items.append("".join(cur))
    return [i.strip() for i in items]


def parse_vary(specs: Sequence[str], *, source: str = "--vary") -> dict[str, list[Any]]:
    """Parse ``FIELD=V1,V2,...`` specs into ``{field: [values]}``; values are parsed like ``--set`` values.

    Values are TOML literals (``8``, ``1.25``, ``true``, ``"text"``) or else bare
    strings (``zipf:1.2``, ``h100-sxm``).
    """
    out: dict[str, list[Any]] = {}
    points = 1
    for spec in specs:
        field, eq, text = spec.partition("=")
        field = field.strip()
        if not eq or not field or any(not part.strip() for part in field.split(".")):
            raise InputError(f"expected FIELD=V1,V2,... (e.g. layout.ep=8,16,32), got {L.short(spec)}", source=source)
        if field in out:
            raise InputError("field given twice; list all its values in one --vary", source=source, field=field)
        items = split_values(text)
        if not text.strip() or any(not i for i in items):
            raise InputError(f"empty value in {L.short(text)}; give one or more comma-separated values "
                             f"(e.g. {field}=8,16)", source=source, field=field)
        points *= len(items)
        _check_points(points, source)
        try:
            out[field] = [parse_set([f"{field}={i}"])[0][1] for i in items]
        except InputError as exc:
            raise InputError(exc.message, source=source, field=exc.field or field) from None
    return out


def _check_points(points: int, source: str) -> None:
    """Refuse a grid of more points than :data:`moesim.limits.SWEEP_POINTS` allows."""
    if points > L.SWEEP_POINTS.hi:
        raise InputError(f"the grid has {points:,} points; at most {int(L.SWEEP_POINTS.hi):,} "
                         f"({L.SWEEP_POINTS.why})", source=source)


# ----------------------------------------------------------------------------- validation


def _field_errors(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(dotted field, message) of each field-level validation problem of ``raw``, in field order.

    Cross-field rules (layout vs GPU count) are not included: pydantic runs the
    scenario's after-validator only when every field is valid, so they never
    appear together with a field problem, and they belong to grid points.
    """
    try:
        Scenario.model_validate(raw)
    except ValidationError as exc:
        return [(f, m) for f, m in field_errors(exc, dict(raw), Scenario) if f]
    return []


def _check_value(raw: dict[str, Any], base_errors: set[tuple[str, str]], field: str, value: Any, source: str) -> None:
    """Raise InputError if ``field = value`` brings a field problem of its own (unknown key, type, range).

    Problems the base scenario already has are left to :func:`_check_base`.
    """
    path = field.split(".")
    try:
        new = apply_overrides(raw, [(path, value)])
    except InputError as exc:
        raise InputError(exc.message, source=source, field=field) from None
    errs = [e for e in _field_errors(new) if e not in base_errors]
    if errs:
        where, msg = errs[0]
        if where == field and not msg.startswith("unknown key") and "; got " not in msg:
            msg = f"{msg} (got {L.short(value)})"
        raise InputError(msg, source=source, field=where)
    if path == ["routing", "distribution"]:
        from ..load.distributions import parse_distribution

        try:
            parse_distribution(str(value), source=source)
        except InputError as exc:
            raise InputError(exc.message, source=exc.source, field=field) from None


def _check_base(raw: dict[str, Any], axes: list[SweepAxis], where: str) -> None:
    """Raise InputError if the first grid point still has a field problem: every varied value passed
    :func:`_check_value`, so it comes from the scenario or ``--set`` and would fail every point alike."""
    errs = _field_errors(apply_overrides(raw, [(a.field.split("."), a.values[0]) for a in axes]))
    if errs:
        (field, msg), rest = errs[0], errs[1:]
        raise InputError("; ".join([msg] + [f"{f}: {m}" for f, m in rest]), source=where, field=field)


class _Resolver:
    """Model and hardware loaded once per (reference, folder)."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], ModelSpec] = {}
        self.hardware: dict[tuple[str, str], HardwareProfile] = {}

    def model(self, sc: Scenario) -> ModelSpec:
        key = (sc.model, sc.base_dir)
        if key not in self.models:
            self.models[key] = sc.resolve_model()
        return self.models[key]

    def hw(self, sc: Scenario) -> HardwareProfile:
        key = (sc.hardware, sc.base_dir)
        if key not in self.hardware:
            self.hardware[key] = sc.resolve_hardware()
        return self.hardware[key]


def _preload(raw: dict[str, Any], base: str, vary: Mapping[str, list[Any]], res: _Resolver, source: str) -> None:
    """Load every model and hardware profile the grid names, so an unknown one fails before the sweep."""
    for field in ("model", "hardware"):
        refs = vary.get(field, [raw.get(field)])
        for ref in refs:
            if not isinstance(ref, str):
                continue
            # resolve exactly as a scenario does (paths relative to its folder), without validating the rest
            probe = Scenario.model_construct(model=ref, hardware=ref, base_dir=str(raw.get("base_dir", base)))
            try:
                res.model(probe) if field == "model" else res.hw(probe)
            except InputError as exc:
                if field in vary:
                    raise InputError(exc.message if exc.field in (None, field) else f"{exc.field}: {exc.message}",
                                     source=source if exc.source in (None, ref) else exc.source, field=field) from None
                raise


# ----------------------------------------------------------------------------- the sweep


def _base_raw(scenario: Scenario | str | Path | None, overrides: Sequence[str]) -> tuple[dict[str, Any], str, str]:
    if isinstance(scenario, Scenario):
        raw = scenario.model_dump(mode="python")
        where, base = f"scenario {scenario.name}", scenario.base_dir
    else:
        raw, where, base = read_scenario_raw(scenario)
    if overrides:
        raw = apply_overrides(raw, parse_set(tuple(overrides)))
        where = f"{where} (with --set)"
    raw.setdefault("base_dir", base)
    return raw, where, base


def _with_values(raw: dict[str, Any], paths: list[list[str]], values: Sequence[Any]) -> dict[str, Any]:
    """``raw`` with ``values`` set at ``paths``, as :func:`~moesim.scenario.apply_overrides` would give it, copying
    only the tables on those paths (``raw`` itself is left as it is and shared for the rest)."""
    out = dict(raw)
    for path, value in zip(paths, values):
        node = out
        for k in path[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = {}
            elif not isinstance(nxt, dict):
                return apply_overrides(raw, list(zip(paths, values)))  # the same one-line error as --set
            else:
                nxt = dict(nxt)
            node[k] = nxt
            node = nxt
        node[path[-1]] = copy.deepcopy(value) if isinstance(value, (dict, list)) else value
    return drop_unused_recompute_modules(out, paths)


def _batch(sc: Scenario) -> int:
    w = sc.workload
    return w.global_batch_size if isinstance(w, TrainWorkload) else w.batch_size


def _one_line(exc: InputError) -> str:
    return f"{exc.field}: {exc.message}" if exc.field else exc.message


def sweep(
    scenario: Scenario | str | Path | None,
    vary: Mapping[str, Sequence[Any]],
    overrides: Sequence[str] = (),
    *,
    progress: Callable[[int, int], None] | None = None,
) -> SweepResult:
    """Estimate ``scenario`` at every point of the grid ``vary`` (field -> values; last field fastest).

    ``scenario`` is a :class:`Scenario`, a bundled name or a TOML path;
    ``overrides`` are ``field=value`` strings applied to the base first (as
    ``--set``). Values in ``vary`` are used as given (Python values; use
    :func:`parse_vary` for text). ``progress(done, total)`` is called after
    each point. Raises :class:`InputError` for a bad grid; points that cannot
    run become rows with ``error`` set.
    """
    if not vary:
        raise InputError("give at least one field to vary (e.g. layout.ep=8,16,32)", source=VARY)
    axes = []
    for field, values in vary.items():
        values = list(values) if not isinstance(values, (str, bytes)) else [values]
        if not values:
            raise InputError("empty value list; give one or more values", source=VARY, field=field)
        axes.append(SweepAxis(field=field, values=values))
    points = 1
    for ax in axes:
        points *= len(ax.values)
    _check_points(points, VARY)
    raw, where, base = _base_raw(scenario, overrides)
    base_errors = set(_field_errors(raw))
    for ax in axes:
        for v in ax.values:
            _check_value(raw, base_errors, ax.field, v, VARY)
    _check_base(raw, axes, where)
    res = _Resolver()
    _preload(raw, base, {a.field: a.values for a in axes}, res, VARY)

    paths = [a.field.split(".") for a in axes]
    combos = list(itertools.product(*(a.values for a in axes)))
    frozen = apply_overrides(raw, [])  # a private copy: each point shares it but for the tables it sets
    points: list[SweepPoint | None] = [None] * len(combos)
    done = 0

    def scenario_at(idx: int) -> tuple[Scenario | None, ModelSpec | None, str | None]:
        try:
            sc = scenario_from_dict(_with_values(frozen, paths, combos[idx]), f"{where} (grid point {idx})", base)
            model = res.model(sc)
            sc.check_model(model)
            return sc, model, None
        except InputError as exc:
            return None, None, _one_line(exc)

    def finish(idx: int, rec=None, est=None, err=None, inputs=None) -> None:
        nonlocal done
        values = {a.field: v for a, v in zip(axes, combos[idx])}
        points[idx] = SweepPoint._of(idx, values, rec, err, est, inputs)
        done += 1
        if progress is not None:
            progress(done, len(combos))

    def one(idx: int, sc: Scenario | None = None, model: ModelSpec | None = None) -> None:
        if sc is None:
            sc, model, err = scenario_at(idx)
            if err is not None:
                return finish(idx, err=err)
        try:
            est = estimate_resolved(sc, model, res.hw(sc))
        except InputError as exc:
            return finish(idx, err=_one_line(exc))
        finish(idx, rec=record(est, _batch(sc)), est=est)

    with collection_paused():  # the caches a sweep fills hold no cycles (moesim.caches)
        for group in _batch_groups(axes, len(combos)):
            if len(group) == 1:
                one(group[0])
                continue
            # points that differ only in the batch size: their serving passes are timed together
            built_points = [(idx, *scenario_at(idx)) for idx in group]
            ok = [(idx, sc, model) for idx, sc, model, err in built_points
                  if err is None and isinstance(sc.workload, ServeWorkload)]
            figs = None
            if len(ok) > 1:
                first = ok[0][1]
                try:
                    figs = serve_figures(first, ok[0][2], res.hw(first), [sc.workload.batch_size for _, sc, _ in ok])
                except InputError:
                    figs = None  # the points report it one by one below
            by_idx = {idx: i for i, (idx, _, _) in enumerate(ok)} if figs is not None else {}
            for idx, sc, model, err in built_points:
                if err is not None:
                    finish(idx, err=err)
                elif idx in by_idx:
                    finish(idx, rec=record(figs[by_idx[idx]], _batch(sc)), inputs=(sc, model, res.hw(sc)))
                else:
                    one(idx, sc, model)
    name = str(raw.get("name", "scenario"))
    return SweepResult(scenario=name, grid=axes, points=points)


#: the field whose values a serving sweep times together (moesim.step.estimate.serve_figures)
BATCH_FIELD = "workload.batch_size"


def _batch_groups(axes: list[SweepAxis], num_points: int) -> list[list[int]]:
    """Grid indices in groups that share every value but ``workload.batch_size`` (one group per combination of
    the other axes, in grid order); each index alone when the batch size is not varied."""
    b = next((i for i, a in enumerate(axes) if a.field == BATCH_FIELD), None)
    if b is None or len(axes[b].values) < 2:
        return [[i] for i in range(num_points)]
    stride = 1
    for a in axes[b + 1:]:
        stride *= len(a.values)  # grid order: the last axis fastest
    n_b = len(axes[b].values)
    block = stride * n_b
    return [[start + inner + j * stride for j in range(n_b)]
            for start in range(0, num_points, block) for inner in range(stride)]
