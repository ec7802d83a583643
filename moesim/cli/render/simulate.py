"""Rendering of ``moesim simulate``: the summary, the rate-sweep table and the two plots."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table

from . import console
from .plots import pyplot, save_png
from .fmt import seconds


def _s(x: float | None) -> str:
    return "-" if x is None else seconds(x)


def _num(x: float | None, fmt: str = ",.1f") -> str:
    return "-" if x is None else format(x, fmt)


def _latency_table(r) -> Table:
    t = Table(title="Latency", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ("", "p50", "p90", "p99", "mean", "max"):
        t.add_column(c, justify="left" if not c else "right", no_wrap=True)
    rows = [("TTFT", r.ttft), ("TPOT", r.tpot), ("inter-token", r.itl), ("end-to-end", r.e2e), ("queue", r.queue)]
    if r.kv_transfer is not None:
        rows.append(("KV transfer", r.kv_transfer))
    for name, p in rows:
        t.add_row(name, _s(p.p50_s), _s(p.p90_s), _s(p.p99_s), _s(p.mean_s), _s(p.max_s))
    return t


def _pool_table(r) -> Table:
    t = Table(title="Engines", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ("pool", "GPUs", "TP/PP/DP/EP/ETP", "seqs/rank", "KV tokens", "busy", "KV peak", "max queue", "running",
              "preempted"):
        t.add_column(c, justify="left" if c in ("pool", "TP/PP/DP/EP/ETP") else "right", no_wrap=True)
    for p in r.pools:
        lay = p.layout
        t.add_row(p.role, f"{p.num_instances} x {p.num_gpus_per_instance}",
                  f"{lay['tp']}/{lay['pp']}/{lay['dp']}/{lay['ep']}/{lay['etp']}", f"{p.max_num_seqs_per_dp_rank:,}",
                  f"{p.num_kv_tokens_per_instance:,}", f"{p.busy_frac:.0%}", f"{p.peak_kv_used_frac:.1%}",
                  f"{p.max_num_waiting:,}", f"{p.mean_num_running:,.1f}", f"{p.num_preemptions:,}")
    return t


def render_simulation(r) -> None:
    c = console()
    what = f"at {r.rate_per_s:g} requests/s ({r.stream})" if r.rate_per_s is not None else f"from the {r.stream}"
    c.print(f"[bold]simulate[/bold] {r.scenario}: {r.model} on {r.num_gpus} x {r.hardware}, {r.mode}; "
            f"{r.num_requests:,} requests {what}; {r.elapsed_s:.2f} s")
    c.print(_latency_table(r))
    c.print(_pool_table(r))
    c.print(f"throughput: {r.requests_per_s:,.2f} requests/s, {r.input_tokens_per_s:,.0f} input + "
            f"{r.output_tokens_per_s:,.0f} output tokens/s ({r.output_tokens_per_s_per_gpu:,.0f} output tokens/s per "
            f"GPU); mean prompt {r.mean_prompt_tokens:,.0f}, output {r.mean_output_tokens:,.0f} tokens")
    if r.saturation_requests_per_s is not None:
        state = "above it: latency grows with the stream" if r.rate_per_s and r.rate_per_s > r.saturation_requests_per_s \
            else "latency stays bounded below it"
        c.print(f"saturation rate: {r.saturation_requests_per_s:,.2f} requests/s ({state})")
    if r.goodput_requests_per_s is not None:
        slo = ", ".join(x for x in (f"TTFT <= {seconds(r.max_ttft_s)}" if r.max_ttft_s else "",
                                    f"TPOT <= {seconds(r.max_tpot_s)}" if r.max_tpot_s else "") if x)
        c.print(f"goodput ({slo}): {r.goodput_requests_per_s:,.2f} requests/s, {r.slo_met_frac:.1%} of requests")
    cost = f"; {r.usd_per_hour:,.2f} USD/h, {r.usd_per_million_output_tokens:,.3f} USD per million output tokens" \
        if r.usd_per_million_output_tokens is not None else ""
    c.print(f"mean requests in the system: {r.mean_num_in_system:,.1f}; preemptions: {r.num_preemptions:,}{cost}")


def render_rate_sweep(s) -> None:
    c = console()
    sat = f"{s.saturation_requests_per_s:,.2f}" if s.saturation_requests_per_s is not None else "-"
    c.print(f"[bold]simulate[/bold] {s.scenario}: {s.mode} on {s.num_gpus} GPUs; {len(s.points)} rates, "
            f"{s.points[0].num_requests:,} requests each ({s.stream}); saturation {sat} requests/s; {s.elapsed_s:.2f} s")
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    good = any(p.goodput_requests_per_s is not None for p in s.points)
    cols = ["rate/s", "served/s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "E2E p99",
            "tok/s/GPU", "in system"] + (["goodput/s", "SLO met"] if good else [])
    for col in cols:
        t.add_column(col, justify="right", no_wrap=True)
    for p in s.points:
        row = [f"{p.rate_per_s:,.2f}", f"{p.requests_per_s:,.2f}", _s(p.ttft.p50_s), _s(p.ttft.p99_s),
               _s(p.tpot.p50_s), _s(p.tpot.p99_s), _s(p.e2e.p99_s),
               f"{p.output_tokens_per_s_per_gpu:,.0f}", _num(p.mean_num_in_system)]
        if good:
            row += [_num(p.goodput_requests_per_s, ",.2f"), "-" if p.slo_met_frac is None else f"{p.slo_met_frac:.1%}"]
        t.add_row(*row)
    c.print(t)



def plot_timeline(r, path: Path) -> None:
    """Queue length, running batch and KV-cache use over time, one column per pool."""
    plt = pyplot()

    n = max(1, len(r.timelines))
    fig, axes = plt.subplots(2, n, figsize=(6.5 * n, 6), squeeze=False, constrained_layout=True)
    for k, tl in enumerate(r.timelines):
        ax, ax2 = axes[0][k], axes[1][k]
        ax.plot(tl.time_s, tl.num_waiting, label="waiting", lw=1)
        ax.plot(tl.time_s, tl.num_running, label="running", lw=1)
        ax.set_ylabel("requests")
        ax.set_title(f"{tl.role}: queue and running batch")
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        ax2.plot(tl.time_s, [100 * x for x in tl.kv_used_frac], color="tab:green", lw=1)
        ax2.set_ylabel("KV cache used (%)")
        ax2.set_xlabel("time (s)")
        ax2.set_ylim(0, max(5.0, 110 * max(tl.kv_used_frac, default=0.0)))
        ax2.set_title(f"{tl.role}: KV cache")
        ax2.grid(True, alpha=0.3)
    rate = f"{r.rate_per_s:g} req/s" if r.rate_per_s is not None else "trace"
    fig.suptitle(f"{r.scenario}: {r.num_requests:,} requests at {rate}")
    save_png(fig, path)


def plot_rate_sweep(s, path: Path) -> None:
    """TTFT and TPOT percentiles against the request rate, with the saturation rate."""
    plt = pyplot()

    rates = [p.rate_per_s for p in s.points]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    for ax, key, label in ((a1, "ttft", "time to first token (s)"), (a2, "tpot", "time per output token (s)")):
        for q, style in (("p50_s", "-"), ("p90_s", "--"), ("p99_s", ":")):
            ys = [getattr(getattr(p, key), q) for p in s.points]
            ax.plot(rates, ys, style, marker="o", ms=3, label=q.removesuffix("_s"))
        if s.saturation_requests_per_s:
            ax.axvline(s.saturation_requests_per_s, color="grey", lw=0.8)
            ax.annotate("saturation", (s.saturation_requests_per_s, ax.get_ylim()[1]), fontsize=8, ha="right",
                        va="top", rotation=90, color="grey")
        ax.set_xlabel("request rate (requests/s)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize="small")
    fig.suptitle(f"{s.scenario} ({s.mode}, {s.num_gpus} GPUs): latency percentiles vs rate")
    save_png(fig, path)


# ----------------------------------------------------------------------------- plan --rate


def _rate_table(title: str, rows: list[dict]) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ("mode", "hardware", "GPUs", "prefill", "decode", "TTFT p99", "TPOT p99", "tok/s/GPU", "USD/h"):
        t.add_column(c, justify="left" if c in ("mode", "hardware", "prefill", "decode") else "right", no_wrap=True)
    for r in rows:
        agg = r["mode"] == "aggregated"
        t.add_row("aggr." if agg else "disagg.", r["hardware"], str(r["num_gpus"]), r["prefill"],
                  "(same)" if agg else r["decode"], _s(r["ttft_p99_s"]), _s(r["tpot_p99_s"]),
                  f"{r['output_tokens_per_s_per_gpu']:,.0f}",
                  "-" if r["usd_per_hour"] is None else f"{r['usd_per_hour']:,.2f}")
    return t


def render_rate_plan(res) -> None:
    c = console()
    cons = res.constraints
    slo = ", ".join(x for x in (f"p99 TTFT <= {seconds(cons.max_ttft_p99_s)}" if cons.max_ttft_p99_s else "",
                                f"p99 TPOT <= {seconds(cons.max_tpot_p99_s)}" if cons.max_tpot_p99_s else "") if x)
    c.print(f"[bold]plan --rate[/bold] {res.scenario}: {cons.rate_per_s:g} requests/s ({res.stream}), {slo or 'no SLO'}; "
            f"{res.num_candidates:,} engines over {', '.join(res.hardware)}, {res.num_simulations} simulations of "
            f"{res.num_requests:,} requests in {res.elapsed_s:.1f} s, {res.num_feasible} feasible")
    c.print(_rate_table(f"Best {len(res.best)} by {res.objective}", res.best))
    x = "USD/h" if all(r["usd_per_hour"] is not None for r in res.frontier) else "GPUs"
    c.print(_rate_table(f"Frontier: {x} vs p99 TPOT ({len(res.frontier)})", res.frontier[:15]))
    if res.rejected:
        rj = ", ".join(f"{k}: {v:,}" for k, v in sorted(res.rejected.items(), key=lambda kv: -kv[1]))
        c.print(f"rejected (first failed check): {rj}")


def plot_rate_plan(res, feasible: list[dict], path: Path) -> None:
    """Feasible deployments: cost per hour (or GPUs) against p99 TPOT, aggregated and disaggregated."""
    plt = pyplot()

    xkey = "usd_per_hour" if all(r["usd_per_hour"] is not None for r in feasible) else "num_gpus"
    fig, ax = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
    for mode, marker in (("aggregated", "o"), ("disaggregated", "s")):
        pts = [r for r in feasible if r["mode"] == mode]
        ax.scatter([r[xkey] for r in pts], [r["tpot_p99_s"] for r in pts], marker=marker, s=28, label=mode)
    ax.plot([r[xkey] for r in res.frontier], [r["tpot_p99_s"] for r in res.frontier], color="black", lw=0.8,
            label="frontier")
    ax.set_xlabel("USD per hour" if xkey == "usd_per_hour" else "GPUs")
    ax.set_ylabel("p99 time per output token (s)")
    ax.set_title(f"{res.scenario}: {res.constraints.rate_per_s:g} requests/s, {len(feasible)} feasible deployments")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    save_png(fig, path)
