"""Rendering of ``moesim comm``: one collective, a size sweep, EP dispatch/combine, the topology; PNG plots."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from . import console
from .plots import pyplot, save_png
from .plots import plot_available as plot_available  # the command asks this module
from .fmt import nbytes, seconds


def _gbps(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x / 1e9:.1f} GB/s"


def _bottleneck(res) -> str:  # noqa: ANN001
    b = res.bottleneck
    if b is None:
        return "none (nothing leaves the ranks)"
    return f"{b.link} ({b.kind}), {nbytes(b.load_bytes)} at {_gbps(b.achievable_bytes_per_s)}, utilisation {b.utilization_frac:.0%}"


def render_collective(res) -> None:  # noqa: ANN001
    c = console()
    c.print(f"[bold]{res.collective.replace('_', '-')}[/bold] on {res.hardware}: {res.num_ranks} ranks over "
            f"{res.num_nodes} node(s), S = {nbytes(res.size_bytes)}, algorithm {res.algorithm}")
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_column("note")
    t.add_row("time", seconds(res.time_s), "overhead + latency + bandwidth")
    t.add_row("  overhead", seconds(res.overhead_s), "fixed cost per call")
    t.add_row("  latency", seconds(res.latency_s), f"{res.num_steps} step(s)")
    t.add_row("  bandwidth", seconds(res.bandwidth_s), "bottleneck link busy time")
    t.add_row("algbw", _gbps(res.algbw_bytes_per_s), "S / time")
    t.add_row("busbw", _gbps(res.busbw_bytes_per_s), f"algbw x {res.busbw_factor:.3g} (nccl-tests)")
    t.add_row("scale-up bytes", nbytes(res.scale_up_bytes), "summed over ranks")
    t.add_row("network bytes", nbytes(res.network_bytes), "summed over ranks")
    c.print(t)
    c.print(f"bottleneck: {_bottleneck(res)}")


def render_sweep(results: list) -> None:
    if not results:
        return
    r0 = results[0]
    t = Table(title=f"{r0.collective.replace('_', '-')} on {r0.hardware}: {r0.num_ranks} ranks over {r0.num_nodes} node(s)",
              title_justify="left")
    for col in ("size", "time", "algbw GB/s", "busbw GB/s", "algorithm", "bottleneck"):
        t.add_column(col, justify="left" if col in ("algorithm", "bottleneck") else "right", no_wrap=True)
    for r in results:
        t.add_row(nbytes(r.size_bytes), seconds(r.time_s), _num(r.algbw_bytes_per_s), _num(r.busbw_bytes_per_s),
                  r.algorithm, r.bottleneck.link if r.bottleneck else "-")
    console().print(t)


def _num(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x / 1e9:.2f}"


def render_all_to_all(res) -> None:  # noqa: ANN001
    c = console()
    limit = f", node limit {res.node_limit}" if res.node_limit else ""
    c.print(f"[bold]expert-parallel all-to-all[/bold] on {res.hardware}: EP {res.num_ranks} = {res.num_nodes} node(s) x "
            f"{res.ranks_per_node}, {res.tokens_per_rank:g} tokens/rank, top-{res.top_k} of {res.num_experts} experts"
            f"{limit}, {res.distribution}, {res.algorithm}")
    t = Table()
    for col in ("phase", "B/token", "time", "busbw GB/s", "scale-up", "network", "bottleneck (use)"):
        t.add_column(col, justify="left" if col in ("phase", "bottleneck (use)") else "right",
                      no_wrap=col != "bottleneck (use)")
    for name, r, bpt in (("dispatch", res.dispatch, res.dispatch_bytes_per_token),
                         ("combine", res.combine, res.combine_bytes_per_token)):
        bn = r.bottleneck
        t.add_row(name, nbytes(bpt), seconds(r.time_s), _num(r.busbw_bytes_per_s), nbytes(r.scale_up_bytes),
                  nbytes(r.network_bytes), f"{bn.link} ({bn.utilization_frac:.0%})" if bn else "-")
    t.add_row("total", "", seconds(res.time_s), "", "", "", "")
    c.print(t)


def render_topology(s: dict) -> None:
    c = console()
    c.print(f"[bold]{s['hardware']}[/bold]: {s['num_nodes']} node(s) x {s['accelerators_per_node']} accelerators, "
            f"scale-up {s['scale_up']} (domain {s['scale_up_domain_size']}), {s['nics_per_node']} NICs/node, "
            f"{s['num_rails']} rail(s), {s['num_leaves']} leaves, {s['num_spines']} spines, "
            f"oversubscription {s['oversubscription_ratio']:g}")
    t = Table(title="links (one per direction)", title_justify="left")
    for col in ("kind", "links", "capacity", "achievable frac", "latency"):
        t.add_column(col, justify="left" if col == "kind" else "right")
    for kind, d in s["links"].items():
        cap = "not modelled" if not math.isfinite(d["capacity_bytes_per_s"]) else _gbps(d["capacity_bytes_per_s"])
        t.add_row(kind, str(d["num_links"]), cap, f"{d['efficiency_frac']:.2f}", seconds(d["latency_s"]))
    c.print(t)
    c.print("graph nodes: " + ", ".join(f"{k} {v}" for k, v in s["graph_nodes"].items()))


# ----------------------------------------------------------------------------- plots




def plot_sweep(results: list, path: Path) -> None:
    """Time and busbw against size (log-log), written atomically as a PNG."""
    plt = pyplot()

    r0 = results[0]
    sizes = [r.size_bytes for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    ax1.loglog(sizes, [r.time_s * 1e6 for r in results], marker="o", ms=3)
    ax1.set_xlabel("size S (bytes)")
    ax1.set_ylabel("time (us)")
    ax1.grid(True, which="both", alpha=0.3)
    ax2.semilogx(sizes, [r.busbw_bytes_per_s / 1e9 for r in results], marker="o", ms=3, label="busbw")
    ax2.semilogx(sizes, [r.algbw_bytes_per_s / 1e9 for r in results], marker=".", ms=3, ls="--", label="algbw")
    ax2.set_xlabel("size S (bytes)")
    ax2.set_ylabel("GB/s")
    ax2.legend()
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{r0.collective.replace('_', '-')} on {r0.hardware}, {r0.num_ranks} ranks / {r0.num_nodes} node(s)")
    save_png(fig, path)


def plot_all_to_all(series: list, path: Path) -> None:
    """Dispatch and combine time against tokens per rank, written atomically as a PNG."""
    plt = pyplot()

    r0 = series[-1]
    x = [r.tokens_per_rank for r in series]
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    ax.loglog(x, [r.dispatch.time_s * 1e6 for r in series], marker="o", ms=3, label="dispatch")
    ax.loglog(x, [r.combine.time_s * 1e6 for r in series], marker="s", ms=3, label="combine")
    ax.set_xlabel("tokens per rank")
    ax.set_ylabel("time (us)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"EP {r0.num_ranks} on {r0.hardware}, top-{r0.top_k}/{r0.num_experts}, {r0.algorithm}")
    save_png(fig, path)
