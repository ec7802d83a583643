"""Rendering of ``moesim validate --published``: the rows, the summaries, a predicted-vs-published plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from . import console
from .plots import parity_axes, pyplot, save_png
from .plots import plot_available as plot_available  # the command asks this module

_GROUP_STYLE = {"training": ("o", "tab:blue"), "serving": ("s", "tab:orange")}


def _error_cell(err: float) -> str:
    style = "green" if abs(err) <= 0.25 else ("yellow" if abs(err) <= 0.50 else "red")
    return f"[{style}]{err:+.0%}[/{style}]"


def show_published(report: Any) -> None:
    from ...published import fmt_memory, fmt_stage, fmt_value, summary_lines

    c = console()
    t = Table(title="The step model against published figures (error = predicted / published - 1)",
              title_justify="left", header_style="bold")
    for col, just in (("#", "right"), ("published figure", "left"), ("group", "left"), ("published", "right"),
                      ("predicted", "right"), ("error", "right"), ("largest stage", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in report.numeric_rows:
        pub = fmt_value(float(r.published), r.unit)
        if r.failure is not None:
            t.add_row(str(r.number), escape(r.what), r.group, pub, f"[red]error: {escape(r.failure)}[/red]", "n/a", "-")
        else:
            t.add_row(str(r.number), escape(r.what), r.group, pub, fmt_value(float(r.predicted), r.unit),
                      _error_cell(r.error_frac), fmt_stage(r))
    c.print(t)
    m = Table(title="Memory checks", title_justify="left", header_style="bold")
    for col, just in (("#", "right"), ("memory check", "left"), ("published", "left"), ("predicted (per GPU)", "left"),
                      ("agrees", "left")):
        m.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in report.memory_rows:
        pub = "fits" if r.published else "does not fit"
        if r.failure is not None:
            m.add_row(str(r.number), escape(r.what), pub, f"[red]error: {escape(r.failure)}[/red]", "n/a")
        else:
            m.add_row(str(r.number), escape(r.what), pub, fmt_memory(r), "yes" if r.agrees else "[red]NO[/red]")
    c.print(m)
    for line in summary_lines(report):
        c.print(escape(line))
    c.print(f"|error| = |predicted / published - 1|; p90 by numpy's {report.percentile_method} percentile")
    c.print(f"comparisons: {escape(str(report.comparisons_file))}")


# ----------------------------------------------------------------------------- plot



def plot_published(report: Any, path: Path) -> None:
    """Predicted against published (log-log), one marker per numeric row, written atomically as a PNG."""
    plt = pyplot()
    import numpy as np


    rows = [r for r in report.numeric_rows if r.failure is None and r.predicted and r.predicted > 0]
    fig, ax = plt.subplots(figsize=(7.5, 6.5), constrained_layout=True)
    values = [float(r.published) for r in rows] + [float(r.predicted) for r in rows]
    lo, hi = (min(values) / 3, max(values) * 3) if values else (0.1, 10.0)
    x = np.geomspace(lo, hi, 50)
    ax.fill_between(x, x * 0.5, x * 1.5, color="0.85", alpha=0.6, lw=0, label="±50 %")
    ax.plot(x, x, color="0.3", lw=1, label="predicted = published")
    groups = [g for g in _GROUP_STYLE if any(r.group == g for r in rows)]
    groups += sorted({r.group for r in rows} - set(groups))
    for g in groups:
        marker, colour = _GROUP_STYLE.get(g, ("^", "tab:green"))
        sel = [r for r in rows if r.group == g]
        ax.scatter([float(r.published) for r in sel], [float(r.predicted) for r in sel], marker=marker, c=colour,
                   s=36, zorder=3, label=g)
        for r in sel:
            ax.annotate(str(r.number), (float(r.published), float(r.predicted)), textcoords="offset points",
                        xytext=(5, 3), fontsize=8)
    parity_axes(ax, lo, hi, "published (the row's unit)", "predicted (same unit)")
    ax.legend(loc="upper left")
    s = report.summaries.get("all")
    if s is not None and s.median_abs_error_frac is not None:
        ax.set_title(f"moesim against published figures: {s.num_rows} rows, median |error| "
                     f"{s.median_abs_error_frac:.0%}, p90 {s.p90_abs_error_frac:.0%}")
    save_png(fig, path, dpi=110)
