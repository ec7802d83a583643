"""The step model against published end-to-end figures (``moesim validate --published``).

A comparisons file (``scenarios/validation-e2e/comparisons.toml``; its header comment documents the
format) lists rows: a scenario file, optional ``--set`` overrides, a named figure read from the
:class:`~moesim.step.result.Estimate`, and the published value it is set against. The published
numbers, their quotes and sources live in a second file (``published.toml`` beside it), one table
per figure, named by each row's ``data_key``.

Error of a numeric row: ``e = predicted / published - 1`` (signed; +0.25 means the model says 25 %
more than published). A memory row (figure ``fits``) agrees or not. The summaries give, per group
(training, serving, and all numeric rows together), the count, the median and the p90 of ``|e|``
(numpy's default ``linear`` percentile: interpolated between the two nearest ranks) and how many rows
lie within ±25 % and ±50 %; for the memory rows, how many agree.

For each numeric row the report also names the stage with the largest share of
``Estimate.time_by_stage_s`` (what dominates the modelled step, pass or token). A row whose scenario
cannot be estimated is reported with its message instead of a prediction; it does not stop the others.

Everything here is plain data in, dataclasses out: no printing, no rich, no torch.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InputError, from_validation_error
from .io import read_toml

GPUS_PER_NODE = 8  #: the per-node figures are for 8-GPU servers (H800, H100, H200 nodes)

PERCENTILE_METHOD = "linear"  #: numpy's default percentile method, used for the p90


def default_comparisons_file() -> Path:
    """The bundled comparisons file (in a checkout or an installed wheel)."""
    from .data import scenarios_dir

    return scenarios_dir() / "validation-e2e" / "comparisons.toml"


# ----------------------------------------------------------------------------- figures


def gpu_hours_per_trillion_tokens(est, sc) -> float:  # noqa: ANN001
    """GPU-hours per 1e12 training tokens: ``num_gpus / tokens_per_s / 3600 * 1e12``."""
    return est.num_gpus / est.tokens_per_s / 3600.0 * 1e12


def mfu_bf16(est, sc) -> float:  # noqa: ANN001
    """MFU against the dense BF16 peak (the convention of the MoE Parallel Folding paper)."""
    return est.mfu_bf16_frac


def model_tflops_per_gpu(est, sc) -> float:  # noqa: ANN001
    """Model TFLOP/s per GPU: ``tokens_per_s_per_gpu * model_flops_per_token / 1e12``."""
    return est.tokens_per_s_per_gpu * est.model_flops_per_token / 1e12


def tokens_per_s_per_gpu(est, sc) -> float:  # noqa: ANN001
    """Tokens/s per GPU as estimated (training tokens; prefill: prompt tokens; decode: output tokens)."""
    return est.tokens_per_s_per_gpu


def step_s(est, sc) -> float:  # noqa: ANN001
    """Training step time with the expected straggler."""
    if est.step_s is None:
        raise ValueError("figure step_s needs a training scenario (the estimate has no step time)")
    return est.step_s


def moe_layer_fwd_bwd_s(est, sc) -> float:  # noqa: ANN001
    """Seconds of one MoE layer's forward and backward for one micro-batch in a training step, as the step
    composes them (:func:`moesim.step.estimate.moe_layer_cost_s`): what a kernel trace of one layer measures."""
    from .step.estimate import moe_layer_cost_s

    if est.step_s is None:
        raise ValueError("figure moe_layer_fwd_bwd_s needs a training scenario (the estimate has no step time)")
    return moe_layer_cost_s(sc)


def tokens_per_s_per_node(est, sc) -> float:  # noqa: ANN001
    """Tokens/s per 8-GPU node: ``tokens_per_s / num_gpus * 8`` (prefill: prompt tokens; decode: output)."""
    return est.tokens_per_s / est.num_gpus * GPUS_PER_NODE


def tokens_per_s(est, sc) -> float:  # noqa: ANN001
    """Tokens/s of the whole deployment as estimated (serving with both phases: output tokens with the prefill of
    every request paid on the same GPUs, as an offline benchmark counts them)."""
    return est.tokens_per_s


def fits(est, sc) -> bool:  # noqa: ANN001
    """Whether the scenario fits in memory (the memory rows)."""
    return est.fits


#: the named figures a comparison may read (the ``figure`` field)
FIGURES: dict[str, Callable[[Any, Any], float | bool]] = {
    f.__name__: f for f in (gpu_hours_per_trillion_tokens, mfu_bf16, model_tflops_per_gpu, tokens_per_s_per_gpu,
                            step_s, moe_layer_fwd_bwd_s, tokens_per_s_per_node, tokens_per_s, fits)
}

Group = Literal["training", "serving", "memory"]
GROUPS: tuple[str, ...] = ("training", "serving", "memory")
NUMERIC_GROUPS: tuple[str, ...] = ("training", "serving")


# ----------------------------------------------------------------------------- the comparisons file


class Comparison(BaseModel):
    """One published figure and how the model's prediction of it is obtained."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1, description="Short unique id (test names, JSON).")
    data_key: str = Field(min_length=1, description="Table of the published-data file with the number, quote and source.")
    scenario: str = Field(min_length=1, description="Scenario file, relative to the comparisons file's folder.")
    what: str = Field(min_length=1, description="The figure in words.")
    unit: str = Field(description="Unit of the published and predicted values, for display ('' for a fraction).")
    group: Group = Field(description="training, serving or memory.")
    figure: str = Field(description="Named figure read from the estimate (see FIGURES).")
    published: bool | float = Field(description="Published value (> 0), or true / false for a memory row.")
    source: str = Field(min_length=1, description="The source, short.")
    overrides: tuple[str, ...] = Field((), description="field=value overrides applied to the scenario (as --set).")
    published_note: str = Field("", description="How the published value was read or derived, when not the data file's value.")
    tolerance: float | None = Field(None, gt=0, allow_inf_nan=False,
                                    description="Pinned bound on |predicted / published - 1| (numeric rows), fraction.")
    notes: str = Field("", description="What the model leaves out that explains the error.")

    @field_validator("figure")
    @classmethod
    def _known_figure(cls, v: str) -> str:
        if v not in FIGURES:
            raise ValueError(f"unknown figure {v!r}; allowed: {', '.join(FIGURES)}")
        return v

    @field_validator("published", mode="before")
    @classmethod
    def _number_or_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return v
        if isinstance(v, (int, float)):
            return float(v)
        raise ValueError(f"must be a number (numeric rows) or true / false (memory rows), got {type(v).__name__}")

    @field_validator("overrides")
    @classmethod
    def _assignments(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from .scenario import parse_set

        try:
            parse_set(v)
        except InputError as exc:
            raise ValueError(exc.message) from None
        return v

    @model_validator(mode="after")
    def _kind(self) -> "Comparison":
        memory = self.group == "memory"
        if memory != (self.figure == "fits"):
            raise ValueError(f"group 'memory' goes with figure 'fits' and only with it (got group {self.group!r}, "
                             f"figure {self.figure!r})")
        if memory != isinstance(self.published, bool):
            raise ValueError(f"a {'memory' if memory else 'numeric'} row's published value must be "
                             f"{'true or false' if memory else 'a number'} (got {self.published!r})")
        if not memory and not (math.isfinite(self.published) and self.published > 0):
            raise ValueError(f"published must be a finite number > 0 (got {self.published!r})")
        if memory and self.tolerance is not None:
            raise ValueError("tolerance applies to numeric rows only (a memory row agrees or not)")
        return self

    @property
    def is_memory(self) -> bool:
        return self.group == "memory"


COMPARISON_KEYS = tuple(Comparison.model_fields)
TOP_LEVEL_KEYS = ("published_data", "comparison")


@dataclass(frozen=True)
class ComparisonSet:
    """A loaded comparisons file: its rows and the published-data tables they name."""

    path: Path
    data_path: Path
    comparisons: tuple[Comparison, ...]
    data: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.path.parent

    def scenario_path(self, c: Comparison) -> Path:
        return self.folder / c.scenario


def _choices(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}allowed: {', '.join(allowed)}"


def _parse_comparison(item: Any, i: int, source: str) -> Comparison:
    key = item.get("key") if isinstance(item, dict) and isinstance(item.get("key"), str) else None
    where = f"comparison[{i}]" + (f" ({key})" if key else "")
    if not isinstance(item, dict):
        raise InputError("each comparison must be a table ([[comparison]])", source=source, field=where)
    try:
        return Comparison.model_validate(item)
    except ValidationError as exc:
        err = from_validation_error(exc, source, item, Comparison)
        msg = err.message
        if msg.startswith("unknown key"):
            msg = f"unknown field; allowed: {', '.join(COMPARISON_KEYS)}"
        elif msg.startswith("required field is missing"):
            required = [k for k, f in Comparison.model_fields.items() if f.is_required()]
            msg = f"required field is missing (required: {', '.join(required)})" + msg.removeprefix(
                "required field is missing")
        field = f"{where}.{err.field}" if err.field else where
        raise InputError(msg, source=source, field=field) from None


def parse_comparisons(raw: dict[str, Any], path: Path) -> ComparisonSet:
    """Validate a parsed comparisons file read from ``path`` (one-line :class:`InputError` on any problem)."""
    source = str(path)
    extra = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if extra:
        raise InputError("unknown top-level key; allowed: published_data and [[comparison]] tables",
                         source=source, field=extra[0])
    data_name = raw.get("published_data", "published.toml")
    if not isinstance(data_name, str) or not data_name:
        raise InputError("must be the name of the published-data file", source=source, field="published_data")
    items = raw.get("comparison")
    if not isinstance(items, list) or not items:
        raise InputError("no [[comparison]] tables found", source=source, field="comparison")
    data_path = path.parent / data_name
    try:
        data = read_toml(data_path)
    except InputError as exc:
        raise InputError(f"published-data file {data_path}: {exc.message}", source=source,
                         field="published_data") from None
    tables = sorted(k for k, v in data.items() if isinstance(v, dict))
    folder_files = sorted(p.name for p in path.parent.glob("*.toml") if p.name not in (path.name, data_path.name))
    out: list[Comparison] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        c = _parse_comparison(item, i, source)
        where = f"comparison[{i}] ({c.key})"
        if c.key in seen:
            raise InputError(f"duplicate key {c.key!r}", source=source, field=f"{where}.key")
        seen.add(c.key)
        if not (path.parent / c.scenario).is_file():
            raise InputError(f"no scenario file {c.scenario!r} in {path.parent}; {_choices(c.scenario, folder_files)}",
                             source=source, field=f"{where}.scenario")
        if c.data_key not in tables:
            raise InputError(f"no table {c.data_key!r} in {data_path.name}; {_choices(c.data_key, tables)}",
                             source=source, field=f"{where}.data_key")
        out.append(c)
    return ComparisonSet(path=path, data_path=data_path, comparisons=tuple(out), data=data)


def load_comparisons(path: str | Path | None = None) -> ComparisonSet:
    """Read and validate a comparisons file [default: the bundled one]."""
    p = Path(path) if path is not None else default_comparisons_file()
    return parse_comparisons(read_toml(p), p)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Row:
    """One comparison's outcome. ``failure`` is set (and the predictions are None) when it could not run."""

    number: int  #: position in the report: numeric rows first, then memory rows, from 1
    key: str
    group: str
    what: str
    unit: str
    figure: str
    published: float | bool
    predicted: float | bool | None
    error_frac: float | None  #: predicted / published - 1 (numeric rows)
    agrees: bool | None  #: predicted == published (memory rows)
    dominant_stage: str | None  #: stage with the largest share of Estimate.time_by_stage_s (numeric rows)
    dominant_stage_frac: float | None  #: its share of the sum of time_by_stage_s
    memory_per_gpu_bytes: float | None
    memory_capacity_bytes: float | None
    tolerance: float | None
    source: str
    data_key: str
    scenario: str
    overrides: tuple[str, ...]
    published_note: str
    notes: str
    failure: str | None = None

    @property
    def is_memory(self) -> bool:
        return self.group == "memory"

    @property
    def abs_error_frac(self) -> float | None:
        return None if self.error_frac is None else abs(self.error_frac)


@dataclass(frozen=True)
class GroupSummary:
    """|error| statistics of the numeric rows of one group (or of all of them: group ``all``)."""

    group: str
    num_rows: int
    num_failed: int  #: rows that could not be estimated (left out of the statistics)
    median_abs_error_frac: float | None
    p90_abs_error_frac: float | None  #: numpy's default (linear) percentile
    num_within_25pct: int
    num_within_50pct: int


@dataclass(frozen=True)
class MemorySummary:
    num_rows: int
    num_failed: int
    num_agree: int


@dataclass(frozen=True)
class PublishedReport:
    """Every row and the summaries (``summaries`` keyed training, serving, all)."""

    comparisons_file: Path
    published_data_file: Path
    percentile_method: str
    rows: tuple[Row, ...]
    summaries: dict[str, GroupSummary]
    memory: MemorySummary

    @property
    def numeric_rows(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if not r.is_memory)

    @property
    def memory_rows(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.is_memory)

    def row(self, key: str) -> Row:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(key)


# ----------------------------------------------------------------------------- running


def _failure_text(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, (InputError, ValueError)) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def estimate_comparison(cset: ComparisonSet, c: Comparison):  # noqa: ANN201
    """``(Estimate, Scenario)`` of one comparison (raises what the scenario or the model raises)."""
    from .scenario import load_scenario
    from .step.estimate import estimate_resolved

    sc = load_scenario(cset.scenario_path(c), list(c.overrides))
    return estimate_resolved(sc, sc.resolve_model(), sc.resolve_hardware()), sc


def _dominant(est) -> tuple[str | None, float | None]:  # noqa: ANN001
    stages = {k: v for k, v in est.time_by_stage_s.items() if math.isfinite(v)}
    total = sum(stages.values())
    if not stages or total <= 0:
        return None, None
    name = max(stages, key=stages.get)  # type: ignore[arg-type]
    return name, stages[name] / total


def _row(number: int, c: Comparison, outcome: Any) -> Row:
    base = dict(number=number, key=c.key, group=c.group, what=c.what, unit=c.unit, figure=c.figure,
                published=c.published, tolerance=c.tolerance, source=c.source, data_key=c.data_key,
                scenario=c.scenario, overrides=tuple(c.overrides), published_note=c.published_note, notes=c.notes)
    if isinstance(outcome, str):
        return Row(**base, predicted=None, error_frac=None, agrees=None, dominant_stage=None,
                   dominant_stage_frac=None, memory_per_gpu_bytes=None, memory_capacity_bytes=None, failure=outcome)
    est, predicted = outcome
    mem = dict(memory_per_gpu_bytes=est.memory_per_gpu_bytes, memory_capacity_bytes=est.memory.capacity_bytes)
    if c.is_memory:
        return Row(**base, predicted=bool(predicted), error_frac=None, agrees=bool(predicted) == c.published,
                   dominant_stage=None, dominant_stage_frac=None, **mem)
    stage, share = _dominant(est)
    p = float(predicted)
    return Row(**base, predicted=p, error_frac=p / float(c.published) - 1.0, agrees=None, dominant_stage=stage,
               dominant_stage_frac=share, **mem)


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q, method=PERCENTILE_METHOD))


def summarise(rows: list[Row] | tuple[Row, ...], group: str) -> GroupSummary:
    """|error| statistics of ``rows`` (numeric rows only; failed rows are counted, not used)."""
    errs = [r.abs_error_frac for r in rows if r.abs_error_frac is not None]
    return GroupSummary(
        group=group,
        num_rows=len(rows),
        num_failed=sum(1 for r in rows if r.failure is not None),
        median_abs_error_frac=_percentile(errs, 50) if errs else None,
        p90_abs_error_frac=_percentile(errs, 90) if errs else None,
        num_within_25pct=sum(1 for e in errs if e <= 0.25),
        num_within_50pct=sum(1 for e in errs if e <= 0.50),
    )


def run_published(comparisons: ComparisonSet | str | Path | None = None, *, raise_errors: bool = False) -> PublishedReport:
    """Run every comparison and summarise the errors.

    A row whose scenario fails to load or estimate (or whose figure cannot be read) becomes a row
    with ``failure`` set; ``raise_errors=True`` lets that exception propagate instead. Rows that
    share a scenario and overrides are estimated once.
    """
    cset = comparisons if isinstance(comparisons, ComparisonSet) else load_comparisons(comparisons)
    ordered = [c for c in cset.comparisons if not c.is_memory] + [c for c in cset.comparisons if c.is_memory]
    cache: dict[tuple[str, tuple[str, ...]], Any] = {}
    rows = []
    for number, c in enumerate(ordered, start=1):
        outcome: Any
        try:
            ck = (c.scenario, tuple(c.overrides))
            if ck not in cache:
                cache[ck] = estimate_comparison(cset, c)
            est, sc = cache[ck]
            outcome = (est, FIGURES[c.figure](est, sc))
        except Exception as exc:  # noqa: BLE001 - a failing row is reported, it does not stop the others
            if raise_errors:
                raise
            outcome = _failure_text(exc)
        rows.append(_row(number, c, outcome))
    numeric = [r for r in rows if not r.is_memory]
    summaries = {g: summarise([r for r in numeric if r.group == g], g) for g in NUMERIC_GROUPS}
    summaries["all"] = summarise(numeric, "all")
    memory = [r for r in rows if r.is_memory]
    return PublishedReport(
        comparisons_file=cset.path,
        published_data_file=cset.data_path,
        percentile_method=PERCENTILE_METHOD,
        rows=tuple(rows),
        summaries=summaries,
        memory=MemorySummary(num_rows=len(memory), num_failed=sum(1 for r in memory if r.failure is not None),
                             num_agree=sum(1 for r in memory if r.agrees)),
    )


# ----------------------------------------------------------------------------- markdown


def fmt_value(v: float, unit: str) -> str:
    """A published or predicted value for humans: fractions as %, large numbers with separators."""
    if unit == "":
        return f"{v:.1%}" if v < 1 else f"{v:.3g}"
    if abs(v) >= 999.5:  # what three significant digits would round to 1,000 (printed "1e+03")
        return f"{v:,.0f} {unit}"
    return f"{v:.3g} {unit}"


def fmt_stage(r: Row) -> str:
    """``experts 41%`` (the stage that dominates the row's step), or ``-``."""
    if r.dominant_stage is None or r.dominant_stage_frac is None:
        return "-"
    return f"{r.dominant_stage} {r.dominant_stage_frac:.0%}"


def fmt_memory(r: Row) -> str:
    """``fits: 68.6 of 80 GB`` (per GPU)."""
    pred = "fits" if r.predicted else "does not fit"
    return f"{pred}: {r.memory_per_gpu_bytes / 1e9:.1f} of {r.memory_capacity_bytes / 1e9:.0f} GB"


def _pct(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f}%"


GROUP_LABELS = {"training": "training", "serving": "serving", "all": "all numeric"}


def summary_lines(report: PublishedReport) -> list[str]:
    """One plain line per group: rows, median and p90 |error|, rows within ±25 % and ±50 %; then memory."""
    out = []
    for g, s in report.summaries.items():
        failed = f", {s.num_failed} failed" if s.num_failed else ""
        out.append(f"{GROUP_LABELS.get(g, g) + ':':<12} {s.num_rows} rows{failed}, median |error| "
                   f"{_pct(s.median_abs_error_frac, 1)}, "
                   f"p90 |error| {_pct(s.p90_abs_error_frac, 1)}, {s.num_within_25pct} within ±25%, "
                   f"{s.num_within_50pct} within ±50%")
    m = report.memory
    failed = f", {m.num_failed} failed" if m.num_failed else ""
    out.append(f"{'memory:':<12} {m.num_agree} of {m.num_rows} agree{failed}")
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(report: PublishedReport) -> str:
    """The table section of docs/published-comparisons.md: numeric rows, memory rows, summary, sources."""
    lines = ["| # | published figure | published | predicted | error | largest stage |",
             "|---|---|---|---|---|---|"]
    srcs = []

    def setting(r: Row) -> str:
        return f"`{r.scenario}`" + (f" with `--set {' '.join(r.overrides)}`" if r.overrides else "")

    for r in report.numeric_rows:
        if r.failure is not None:
            lines.append(f"| {r.number} | {r.what} | {fmt_value(float(r.published), r.unit)} | error: {_cell(r.failure)} | "
                         "n/a | - |")
        else:
            lines.append(f"| {r.number} | {r.what} | {fmt_value(float(r.published), r.unit)} | "
                         f"{fmt_value(float(r.predicted), r.unit)} | {r.error_frac:+.0%} | {fmt_stage(r)} |")
        srcs.append(f"{r.number}. {setting(r)}; {r.source} [{r.data_key}]"
                    + (f"; published value: {r.published_note}" if r.published_note else ""))
    lines += ["", "| # | memory check | published | predicted (per GPU) | agrees |", "|---|---|---|---|---|"]
    for r in report.memory_rows:
        pub = "fits" if r.published else "does not fit"
        if r.failure is not None:
            lines.append(f"| {r.number} | {r.what} | {pub} | error: {_cell(r.failure)} | n/a |")
        else:
            lines.append(f"| {r.number} | {r.what} | {pub} | {fmt_memory(r)} | {'yes' if r.agrees else 'NO'} |")
        srcs.append(f"{r.number}. {setting(r)}; {r.source} [{r.data_key}]"
                    + (f"; published value: {r.published_note}" if r.published_note else ""))
    lines += ["", "| rows | count | median abs. error | p90 abs. error | within ±25% | within ±50% |",
              "|---|---|---|---|---|---|"]
    for g, s in report.summaries.items():
        failed = f" ({s.num_failed} failed)" if s.num_failed else ""
        lines.append(f"| {GROUP_LABELS.get(g, g)} | {s.num_rows}{failed} | {_pct(s.median_abs_error_frac, 1)} | "
                     f"{_pct(s.p90_abs_error_frac, 1)} | {s.num_within_25pct} | {s.num_within_50pct} |")
    m = report.memory
    lines += ["", f"Memory checks: {m.num_agree} of {m.num_rows} agree"
              + (f" ({m.num_failed} failed)" if m.num_failed else "") + ". The p90 is numpy's default (linear) "
              "percentile."]
    return "\n".join(lines) + "\n\nSources and settings:\n\n" + "\n".join(srcs)


def replace_doc_table(doc: str, table: str) -> str:
    """``doc`` with the section under ``## Table`` (up to the next ``## `` heading) replaced by ``table``."""
    head, sep, rest = doc.partition("## Table\n")
    if not sep or "\n## " not in rest:
        raise ValueError("the document has no '## Table' section followed by another '## ' heading")
    _, _, tail = rest.partition("\n## ")
    return head + "## Table\n\n" + table + "\n\n## " + tail


def doc_table(doc: str) -> str:
    """The text of the ``## Table`` section of ``doc`` (what :func:`markdown` writes there)."""
    _, sep, rest = doc.partition("## Table\n")
    if not sep or "\n## " not in rest:
        raise ValueError("the document has no '## Table' section followed by another '## ' heading")
    return rest.partition("\n## ")[0].strip("\n")
