"""Rendering of ``moesim sweep`` and ``moesim compare``: tables, progress bar, the sweep plot."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from . import console
from .plots import pyplot, save_png
from .plots import plot_available as plot_available  # the command asks this module
from .fmt import gib, seconds

# ----------------------------------------------------------------------------- shared formatting

#: record metric -> (column header, higher is better)
SWEEP_METRICS: dict[str, tuple[str, bool]] = {
    "memory_per_gpu_bytes": ("GiB/GPU", False),
    "step_s": ("step", False),
    "ttft_s": ("TTFT", False),
    "tpot_s": ("TPOT", False),
    "tokens_per_s": ("tok/s", True),
    "tokens_per_s_per_gpu": ("tok/s/GPU", True),
    "mfu_frac": ("MFU", True),
    "usd_per_million_tokens": ("USD/Mtok", False),
}


def fmt_value(key: str, v: Any) -> str:
    """A figure for humans, by the unit in its name."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if not isinstance(v, (int, float)):
        return str(v)
    if key.endswith("_bytes"):
        return gib(v)
    if key.endswith("_s") and "tokens_per" not in key:
        return seconds(v)
    if key.endswith("_frac"):
        return f"{v:.1%}" if v >= 0.001 or v == 0 else f"{v:.2e}"
    if "tokens_per_s" in key:
        return f"{v:,.0f}"
    if "usd" in key or "gpu_hours" in key:
        return f"{v:,.4g}"
    if key.endswith("_ratio"):
        return f"{v:.3f}"
    if isinstance(v, int) or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:.4g}"


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@contextlib.contextmanager
def progress_bar(description: str, total: int, *, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields ``update(done, total)``."""
    if not enabled:
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=False)
    task = prog.add_task(description, total=total)
    with prog:
        yield lambda done, tot: prog.update(task, completed=done, total=tot)


# ----------------------------------------------------------------------------- sweep


def _short_headers(fields: list[str]) -> list[str]:
    """Last component of each dotted field (``layout.ep`` -> ``ep``) unless two would clash."""
    short = [f.rsplit(".", 1)[-1] for f in fields]
    return [sh if short.count(sh) == 1 else f for f, sh in zip(fields, short)]


def _compact(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key.endswith("_bytes"):
        return f"{v / 2**30:.1f}"
    return fmt_value(key, v)


def render_sweep(result, title: str | None = None) -> None:  # noqa: ANN001
    """Table of the grid: varied fields, then fits, memory, time, throughput, MFU, cost (best value in bold);
    the reasons points cannot run are listed under the table, each once."""
    from rich import box

    c = console()
    rows = result.records()
    fields = result.fields
    metrics = [k for k in SWEEP_METRICS if any(r.get(k) is not None for r in rows)]
    ok = [r for r in rows if r["error"] is None and r.get("fits")]
    best: dict[str, Any] = {}
    for k in metrics:
        vals = [r[k] for r in ok if r.get(k) is not None]
        if len(set(vals)) > 1:
            best[k] = max(vals) if SWEEP_METRICS[k][1] else min(vals)
    star = "" if c.color_system else "*"  # without colour, mark the best values with a star
    errors: list[str] = []
    n_err = result.num_errors
    t = Table(title=title or f"Sweep of {result.scenario}: {result.num_points} points"
              + (f", {n_err} cannot run" if n_err else ""), title_justify="left", box=box.SIMPLE_HEAD,
              padding=(0, 1, 0, 0) if c.width >= 110 else 0, pad_edge=False)
    for h in _short_headers(fields):
        t.add_column(h, no_wrap=True)
    t.add_column("fits", no_wrap=True)
    for k in metrics:
        t.add_column(SWEEP_METRICS[k][0], justify="right", no_wrap=True)
    for r in rows:
        cells = [_cell(r[f]) for f in fields]
        if r["error"] is not None:
            if r["error"] not in errors:
                errors.append(r["error"])
            cells += [f"[red]error {errors.index(r['error']) + 1}[/red]"] + ["-"] * len(metrics)
            t.add_row(*cells)
            continue
        cells.append("[green]yes[/green]" if r["fits"] else "[red]no[/red]")
        for k in metrics:
            s = _compact(k, r[k])
            cells.append(f"[bold green]{s}{star}[/bold green]" if r["fits"] and k in best and r[k] == best[k] else s)
        t.add_row(*cells)
    c.print(t)
    for i, e in enumerate(errors, 1):
        c.print(f"[red]error {i}[/red]: {e}")
    if ok:
        c.print(f"{'*' if star else 'bold green'}: best value among the points that fit")



def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_sweep(result, path: Path, x: str, y: str, hue: str | None = None) -> None:  # noqa: ANN001
    """``y`` against ``x``, one line per value of ``hue`` (and of any other varied field), as a PNG written atomically.

    Points that cannot run are left out; points that do not fit in memory are drawn hollow.
    """
    plt = pyplot()


    rows = [r for r in result.records() if r["error"] is None and r.get(y) is not None and r.get(x) is not None]
    group_fields = ([hue] if hue else []) + [f for f in result.fields if f not in (x, hue)]
    numeric_x = all(_num(r[x]) for r in rows)
    categories: list[Any] = []
    if not numeric_x:
        for r in rows:
            if r[x] not in categories:
                categories.append(r[x])
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(_cell(r[f]) for f in group_fields), []).append(r)

    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for key, pts in groups.items():
        pts = sorted(pts, key=lambda r: r[x] if numeric_x else categories.index(r[x]))
        xs = [p[x] if numeric_x else categories.index(p[x]) for p in pts]
        ys = [p[y] for p in pts]
        label = ", ".join(f"{f}={v}" for f, v in zip(group_fields, key)) or y
        (line,) = ax.plot(xs, ys, marker="o", ls="-" if numeric_x else ":", label=label)
        hollow = [(xv, yv) for xv, yv, p in zip(xs, ys, pts) if not p.get("fits", True)]
        if hollow:
            ax.scatter(*zip(*hollow), s=70, facecolors="white", edgecolors=line.get_color(), zorder=3)
    if not numeric_x:
        ax.set_xticks(range(len(categories)), [_cell(v) for v in categories])
    elif all(v > 0 for v in (r[x] for r in rows)) and len({r[x] for r in rows}) > 2:
        vals = sorted({r[x] for r in rows})
        if vals[-1] / vals[0] >= 8:
            ax.set_xscale("log", base=2)
            ax.set_xticks(vals, [_cell(v) for v in vals])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{result.scenario}: {y} vs {x}" + (" (hollow: does not fit)" if any(not r.get("fits", True) for r in rows) else ""))
    ax.grid(True, alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize="small")
    save_png(fig, path, dpi=110)


# ----------------------------------------------------------------------------- compare


def _labels() -> dict[str, str]:
    from ...plan.compare import HEADLINE

    return {k: label for k, _, label in HEADLINE}


def render_compare(sa, sb, cmp, overrides_a: str = "", overrides_b: str = "") -> None:  # noqa: ANN001
    """Inputs that differ, then key figures, time by stage and memory with B/A and the better side in bold green.

    ``overrides_a`` / ``overrides_b``: the override flags of each side as typed, shown beside its name.
    """
    c = console()
    star = "" if c.color_system else "*"  # without colour, mark the better side with a star
    for side, sc, est, sets in (("A", sa, cmp.a, overrides_a), ("B", sb, cmp.b, overrides_b)):
        extra = f"  [dim]({escape(sets)})[/dim]" if sets else ""
        c.print(f"[bold]{side}[/bold]: {sc.name}: {sc.description}{extra}")
        lay = est.layout
        c.print(f"   model {est.model} on {est.hardware} x {est.num_gpus}; TP{lay['tp']} PP{lay['pp']} DP{lay['dp']} "
                f"EP{lay['ep']} ETP{lay['etp']} EDP{lay['edp']}; {est.workload} ({est.phase})")

    d = Table(title="Inputs that differ", title_justify="left")
    d.add_column("field")
    d.add_column("A", overflow="fold")
    d.add_column("B", overflow="fold")
    for diff in cmp.differences:
        d.add_row(diff.field, fmt_value(diff.field, diff.a), fmt_value(diff.field, diff.b))
    if cmp.differences:
        c.print(d)
    else:
        c.print("Inputs that differ: none")

    labels = _labels()
    fits = ("[green]yes[/green]" if cmp.a.fits else "[red]no[/red]", "[green]yes[/green]" if cmp.b.fits else "[red]no[/red]")
    for group, title in (("headline", "Key figures"), ("time_by_stage", "Time by stage (critical path)"),
                         ("memory", "Memory per GPU by category")):
        figs = [f for f in cmp.figures if f.group == group]
        if group != "headline":
            figs = [f for f in figs if (f.a or 0) > 0 or (f.b or 0) > 0]
        if not figs:
            continue
        t = Table(title=title, title_justify="left")
        t.add_column("figure")
        t.add_column("A", justify="right")
        t.add_column("B", justify="right")
        t.add_column("B/A", justify="right")
        if group == "headline":
            t.add_row("fits in memory", *fits, "")
        for f in figs:
            name = labels.get(f.key) or f.key.rsplit(".", 1)[-1]
            unit_key = {"time_by_stage": "stage_s", "memory": "category_bytes"}.get(group, f.key)
            a, b = fmt_value(unit_key, f.a), fmt_value(unit_key, f.b)
            if f.better == "a":
                a = f"[bold green]{a}{star}[/bold green]"
            elif f.better == "b":
                b = f"[bold green]{b}{star}[/bold green]"
            r = "-" if f.ratio is None else f"{f.ratio:.3f}"
            t.add_row(name, a, b, r)
        c.print(t)
    c.print(f"{'*' if star else 'bold green'}: the better side (lower time, memory, cost; higher throughput, MFU, headroom)")
