"""Rendering of ``moesim plan``: best candidates, frontier, rejections, progress and the Pareto plot."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from rich.table import Table

from . import console
from .plots import pyplot, save_png
from .fmt import gib, seconds


def _row(r: dict, training: bool, recompute: bool = False) -> list[str]:
    def s(x):
        return "-" if x is None else seconds(x)

    lat = [s(r.get("step_s"))] if training else [s(r.get("ttft_s")), s(r.get("tpot_s"))]
    usd = r.get("usd_per_million_tokens")
    return [
        r["hardware"], str(r["num_gpus"]),
        f"{r['tp']}/{r['pp']}/{r['dp']}/{r['ep']}/{r['etp']}" + (f" Z{r['zero_stage']}" if r["zero_stage"] else ""),
        str(r["batch_size"]),
        # workload.recompute, "selective" shortened: the table fills a terminal
        *([r["recompute"].replace("selective", "sel")] if recompute else []),
        *lat, f"{r['tokens_per_s']:,.0f}", f"{r['tokens_per_s_per_gpu']:,.0f}", f"{r['mfu_frac']:.1%}",
        gib(r["memory_per_gpu_bytes"]), "-" if usd is None else f"{usd:.4g}",
    ]


def _table(title: str, rows: list[dict], batch_label: str, recompute: bool = False) -> Table:
    training = batch_label == "micro-batch"
    t = Table(title=title, title_justify="left")
    lat = ("step",) if training else ("TTFT", "TPOT")
    shown = "mbs" if recompute else batch_label  # the recomputation column's room: the table fills a terminal
    for c in ("hardware", "GPUs", "TP/PP/DP/EP/ETP", shown, *(("recomp",) if recompute else ()), *lat,
              "tokens/s", "tok/s/GPU", "MFU", "mem/GPU", "USD/Mtok"):
        t.add_column(c, justify="left" if c in ("hardware", "TP/PP/DP/EP/ETP", "recomp") else "right",
                     no_wrap=True)
    for r in rows:
        t.add_row(*_row(r, training, recompute))
    return t


def render_plan(result) -> None:
    c = console()
    batch = "micro-batch" if result.workload == "train" else "batch"
    searched = len(result.recompute) > 1  # the column only where recomputation was searched
    over = f" x recompute {', '.join(result.recompute)}" if searched else ""
    c.print(f"[bold]plan[/bold] {result.scenario}: objective {result.objective}, {result.num_candidates:,} candidates "
            f"over {', '.join(result.hardware)}{over} in {result.elapsed_s:.2f} s, {result.num_feasible:,} feasible")
    c.print(_table(f"Best {len(result.best)} by {result.objective}", result.best, batch, searched))
    c.print(_table(f"Pareto frontier ({len(result.frontier)})", result.frontier[:20], batch, searched))
    if result.rejected:
        rj = ", ".join(f"{k}: {v:,}" for k, v in sorted(result.rejected.items(), key=lambda kv: -kv[1]))
        c.print(f"rejected (first failed constraint): {rj}")


@contextmanager
def progress_bar():
    """A progress bar on stderr; yields ``advance(done, total)``."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("searching"), BarColumn(), TextColumn("{task.completed}/{task.total} layouts"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as prog:
        task = prog.add_task("plan", total=None)

        def advance(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield advance


def plot_frontier(result, feasible: list[dict], path: Path) -> None:
    """Every feasible candidate (grey) and the Pareto frontier, coloured by hardware."""
    from ...errors import InputError
    from ...plan.search import frontier_axes

    try:
        plt = pyplot()
    except ImportError:
        raise InputError("matplotlib is not installed; pip install 'moesim[plot]'", source="--plot") from None

    xkey, ykey = frontier_axes(result.workload == "train", result.workload)
    labels = {"usd_per_million_tokens": "USD per million tokens", "tpot_s": "time per output token (s)",
              "ttft_s": "time to first token (s)", "tokens_per_s": "tokens/s", "tokens_per_s_per_gpu": "tokens/s per GPU"}
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    pts = [r for r in feasible if r.get(xkey) is not None]
    ax.scatter([r[xkey] for r in pts], [r[ykey] for r in pts], s=6, color="lightgrey", label="feasible")
    by_hw: dict[str, list] = {}
    for r in result.frontier:
        by_hw.setdefault(r["hardware"], []).append(r)
    for hw, rows in sorted(by_hw.items()):
        ax.scatter([r[xkey] for r in rows], [r[ykey] for r in rows], s=30, label=f"frontier: {hw}", zorder=3)
    ax.plot([r[xkey] for r in result.frontier], [r[ykey] for r in result.frontier], color="black", lw=0.8, zorder=2)
    ax.set_xlabel(labels[xkey])
    ax.set_ylabel(labels[ykey])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(f"{result.scenario}: {len(pts):,} feasible candidates")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=120)
