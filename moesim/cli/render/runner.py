"""Rendering of ``moesim calibrate``, ``validate`` and ``bench-layer``: progress, tables, the validation plot."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import console
from .plots import parity_axes, pyplot, save_png
from .plots import plot_available as plot_available  # the command asks this module
from .fmt import rate, seconds

STAGE_ORDER = ("router", "dispatch", "experts", "combine", "shared_experts")


@contextlib.contextmanager
def progress_bar(description: str, *, enabled: bool = True) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar on stderr; yields ``update(done, total, label)``."""
    if not enabled:
        yield lambda done, total, label: None
        return
    from rich.console import Console

    prog = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[label]}"),
        console=Console(stderr=True), transient=False,
    )
    task = prog.add_task(description, total=None, label="")
    with prog:
        def update(done: int, total: int, label: str) -> None:
            prog.update(task, completed=done, total=total, label=label[:60])
        yield update


def _pct(x: float) -> str:
    return f"{x * 100:+.1f} %"


def show_calibration(summary: dict[str, Any]) -> None:
    c = console()
    c.print(f"[bold]Calibrated profile[/bold] {summary['profile_path']}  ({summary['device_name']})")
    c.print(f"measurements: {summary['num_measurements']} in {summary['measurements_file']}"
            f"  (grid {summary['grid']}, {seconds(summary['elapsed_s'])})")
    if summary.get("num_measured_again"):
        c.print(f"measured again while the machine was slow: {summary['num_measured_again']} records "
                f"(still slow: {summary.get('num_measured_slow', 0)})")
    t = Table(title="Fitted parameters", show_header=True, header_style="bold")
    t.add_column("parameter")
    t.add_column("value", justify="right")
    for dt, v in summary["peak_flops_per_s"].items():
        t.add_row(f"peak {dt}", rate(v, "FLOP/s"))
    t.add_row("memory bandwidth", rate(summary["memory_bandwidth_bytes_per_s"], "B/s"))
    t.add_row("kernel overhead", seconds(summary["kernel_overhead_s"]))
    for op, lf in summary.get("links", {}).items():
        t.add_row(f"{op} latency", seconds(lf["overhead_s"]))
        t.add_row(f"{op} bandwidth", rate(lf["bandwidth_bytes_per_s"], "B/s"))
    c.print(t)
    r = Table(title="Fit residuals (median |predicted / measured - 1|)", header_style="bold")
    r.add_column("family")
    r.add_column("residual", justify="right")
    for fam, v in summary["fit_residuals_frac"].items():
        r.add_row(fam, f"{v * 100:.1f} %")
    c.print(r)
    for n in summary.get("notes", []):
        c.print(f"[yellow]note:[/yellow] {n}")


def show_validation(report: Any) -> None:
    c = console()
    t = Table(title=f"Validation on {report.device_name} with profile {report.profile}", header_style="bold")
    for col, just in (("case", "left"), ("impl", "left"), ("T x D x F", "right"), ("E / k", "right"),
                      ("routing", "left"), ("predicted", "right"), ("measured", "right"), ("spread", "right"),
                      ("error", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for cr in report.cases:
        L = cr.layer
        spread = (cr.measured_p90_s - cr.measured_p10_s) / cr.measured_s if cr.measured_s else 0.0
        err = cr.error_frac
        style = "green" if abs(err) <= 0.10 else ("yellow" if abs(err) <= 0.20 else "red")
        ep = f" ep{L['ep_size']}" if L.get("ep_size", 1) > 1 else ""
        t.add_row(
            cr.name, f"{L['implementation']}{ep} {L['dtype']}",
            f"{L['num_tokens']}x{L['d_model']}x{L['d_expert_ffn']}", f"{L['num_experts']} / {L['top_k']}",
            L.get("routing", ""), seconds(cr.predicted_s), seconds(cr.measured_s), f"±{spread * 50:.0f} %",
            f"[{style}]{_pct(err)}[/{style}]",
        )
    c.print(t)
    st = Table(title="Per stage: predicted / measured - 1 (the stage that misses most by time in bold)",
               header_style="bold")
    st.add_column("case")
    stages = [s for s in STAGE_ORDER if any(s in cr.predicted_by_stage_s or s in cr.measured_by_stage_s
                                            for cr in report.cases)]
    for s in stages:
        st.add_column(s, justify="right")
    for cr in report.cases:
        cells, misses = [], {}
        for s in stages:
            p, m = cr.predicted_by_stage_s.get(s), cr.measured_by_stage_s.get(s)
            if p is None or not m:
                cells.append("-")
                continue
            misses[s] = abs(p - m)
            cells.append(f"{_pct(p / m - 1)} ({seconds(m)})")
        worst = max(misses, key=misses.get) if misses else None  # type: ignore[arg-type]
        st.add_row(cr.name, *[f"[bold]{v}[/bold]" if s == worst else v for s, v in zip(stages, cells)])
    c.print(st)
    c.print(f"median |error| [bold]{report.median_abs_error_frac * 100:.1f} %[/bold]   "
            f"p90 |error| [bold]{report.p90_abs_error_frac * 100:.1f} %[/bold]   "
            f"({len(report.cases)} cases, {seconds(report.elapsed_s)})")
    if report.by_class:
        c.print("by class: " + "   ".join(
            f"{k} {v['median_abs_error_frac'] * 100:.1f} % / {v['p90_abs_error_frac'] * 100:.1f} % ({int(v['num_cases'])})"
            for k, v in report.by_class.items()) + "   (median / p90 |error|, cases)")
    if report.num_measured_again:
        c.print(f"measured again while the machine was slow: {report.num_measured_again} cases "
                f"(still slow: {report.num_measured_slow})")
    for w in report.warnings:
        c.print(f"[yellow]warning:[/yellow] {w}")


def show_bench_layer(res: Any) -> None:
    c = console()
    L = res.layer
    c.print(f"[bold]{L['implementation']}[/bold] layer: T={L['num_tokens']} D={L['d_model']} F={L['d_expert_ffn']} "
            f"E={L['num_experts']} k={L['top_k']} {L['dtype']} routing={L.get('routing', 'uniform')}"
            + (f" ep={L['ep_size']}" if L.get("ep_size", 1) > 1 else ""))
    t = Table(header_style="bold")
    t.add_column("stage")
    t.add_column("predicted", justify="right")
    t.add_column("measured", justify="right")
    stages = [s for s in STAGE_ORDER if s in res.predicted_by_stage_s or s in res.measured_by_stage_s]
    for s in stages:
        p = res.predicted_by_stage_s.get(s)
        m = res.measured_by_stage_s.get(s)
        t.add_row(s, seconds(p) if p is not None else "-", seconds(m) if m is not None else "-")
    t.add_row("[bold]layer[/bold]", f"[bold]{seconds(res.predicted_s)}[/bold]", f"[bold]{seconds(res.measured_s)}[/bold]")
    c.print(t)
    c.print(f"error {_pct(res.error_frac)}   (measured median of {res.num_samples}, p10-p90 "
            f"{seconds(res.measured_p10_s)} - {seconds(res.measured_p90_s)})")
    c.print(f"tokens per expert: max {res.tokens_per_expert_max}, mean {res.tokens_per_expert_mean:.1f}"
            + (f"; dropped {res.num_dropped}" if res.num_dropped else ""))
    for k, v in res.details.items():
        c.print(f"  {k}: {v}")



def plot_validation(report: Any, path: Path) -> None:
    """Predicted against measured (log-log) with the y = x line and ±10 % / ±20 % bands; written atomically."""
    plt = pyplot()

    meas = [c.measured_s for c in report.cases]
    pred = [c.predicted_s for c in report.cases]
    lo, hi = min(meas + pred) * 0.7, max(meas + pred) * 1.4
    fig, ax = plt.subplots(figsize=(7, 6.5), constrained_layout=True)
    xs = [lo, hi]
    ax.plot(xs, xs, color="black", lw=1, label="predicted = measured")
    for f, alpha in ((0.10, 0.18), (0.20, 0.08)):
        ax.fill_between(xs, [x * (1 - f) for x in xs], [x * (1 + f) for x in xs], color="tab:green", alpha=alpha,
                        lw=0, label=f"±{int(f * 100)} %")
    colors = {"loop": "tab:blue", "padded": "tab:orange", "grouped": "tab:purple"}
    for impl, col in colors.items():
        pts = [(c.measured_s, c.predicted_s) for c in report.cases if c.layer["implementation"] == impl]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=col, s=28, label=impl, zorder=3)
    for c in report.cases:
        ax.annotate(c.name, (c.measured_s, c.predicted_s), fontsize=6, xytext=(3, 3), textcoords="offset points")
    parity_axes(ax, lo, hi, "measured layer time (s)", "predicted layer time (s)")
    ax.set_title(f"{report.device_name}, profile {report.profile}\nmedian |err| "
                 f"{report.median_abs_error_frac * 100:.1f} %, p90 {report.p90_abs_error_frac * 100:.1f} %")
    ax.legend(loc="upper left", fontsize=8)
    save_png(fig, path, dpi=130)
