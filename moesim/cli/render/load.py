"""Rendering of ``moesim load``: per-rank table with bars, imbalance, drops; the PNG plot."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from . import console
from .plots import pyplot, save_png
from .plots import plot_available as plot_available  # the command asks this module
from .fmt import bar, nbytes

#: ranks shown in the table before it switches to the most loaded ones
MAX_ROWS = 64


def _dist_text(spec) -> str:  # noqa: ANN001
    d = spec.distribution
    if d.kind == "zipf":
        return f"zipf s={d.exponent:g}" + (f" (seed {d.seed})" if d.seed is not None else "")
    if d.kind == "dirichlet":
        return f"dirichlet alpha={d.concentration:g} (seed {d.seed})"
    if d.kind == "histogram":
        return f"histogram of {len(d.counts)} experts"
    return "uniform"


def _router_text(spec) -> str:  # noqa: ANN001
    r = spec.router
    if r.kind == "top_k":
        return f"top-{spec.top_k} ({r.scoring})"
    if r.kind == "switch":
        return "switch top-1"
    if r.kind == "group_limited":
        return f"group-limited top-{spec.top_k}, {r.topk_groups} of {r.num_groups} groups ({r.group_score})"
    if r.kind == "threshold":
        return f"threshold, mean {r.mean_experts_per_token or spec.top_k:g} experts/token"
    return f"expert-choice (k={spec.top_k})"


def _n(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}"


def render_load(res, title: str | None = None) -> None:  # noqa: ANN001
    c = console()
    s = res.spec
    head = f"[bold]{title}[/bold]: " if title else ""
    c.print(
        f"{head}{s.num_experts} experts, {_router_text(s)}, EP {s.ep_size}, {s.num_tokens:,} tokens/step "
        f"({s.tokens_per_rank:,.0f} per rank), {_dist_text(s)}, {s.placement} placement"
        + (f", {res.placement.num_redundant_used} of {s.num_redundant_experts} redundant replicas used" if s.num_redundant_experts else "")
    )
    ranks = list(res.ranks)
    note = ""
    if len(ranks) > MAX_ROWS:
        ranks = sorted(ranks, key=lambda r: -r.expected_tokens)[: MAX_ROWS // 2]
        note = f"{len(ranks)} most loaded of {len(res.ranks)} ranks (--json lists all)"
    top = max([r.p99_tokens for r in res.ranks] + [1e-12])
    t = Table(
        title="Tokens per rank per step" + (f" ({note})" if note else ""),
        title_justify="left",
        caption="bar: mean relative to the highest p99; max %: steps in which the rank is the most loaded; "
        "distinct: experts with a token",
        caption_justify="left",
    )
    for col, just in (("rank", "right"), ("experts", "right"), ("mean", "right"), ("p50", "right"),
                      ("p99", "right"), ("mean load", "left"), ("max %", "right"),
                      ("distinct", "right")):
        t.add_column(col, justify=just)
    hot = res.max_rank.hottest_rank
    for r in ranks:
        style = "bold" if r.rank == hot else ""
        t.add_row(str(r.rank), str(r.num_experts), _n(r.expected_tokens), _n(r.p50_tokens), _n(r.p99_tokens),
                  bar(r.expected_tokens / top, 20), f"{r.max_frac:.0%}", f"{r.expected_distinct_experts:.1f}", style=style)
    c.print(t)

    im = res.imbalance
    m = res.max_rank
    c.print("[bold]Imbalance[/bold]")
    c.print(f"  mean rank {_n(im.mean_tokens_per_rank)} tokens; max-loaded rank: mean {_n(m.mean_tokens)}, "
            f"p50 {_n(m.p50_tokens)}, p99 {_n(m.p99_tokens)} (hottest: rank {m.hottest_rank})")
    c.print(f"  max/mean {im.max_over_mean_ratio:.3f} (p99 {im.p99_max_over_mean_ratio:.3f}; skew alone "
            f"{im.expected_max_over_mean_ratio:.3f}), CV across ranks {im.cv_ratio:.3f}, "
            f"aux balance loss {im.aux_loss:.3f} (1 = balanced)")
    c.print(f"  busiest expert: mean {_n(im.max_expert_mean_tokens)}, p99 {_n(im.max_expert_p99_tokens)} tokens")

    cap = res.capacity
    if cap is not None:
        c.print(f"[bold]Capacity[/bold] factor {cap.capacity_factor:g}: C = {cap.capacity_tokens:,} tokens per expert, "
                f"{_n(cap.slots_per_rank)} slots per rank")
        c.print(f"  dropped {cap.dropped_frac:.2%} of slots (p99 {cap.p99_dropped_frac:.2%}), "
                f"padding {cap.padded_frac:.2%} of slots is wasted compute"
                + (f", {nbytes(cap.padded_bytes)} of padded buffer" if cap.padded_bytes is not None else ""))
    else:
        c.print(f"[bold]Dropless[/bold]: no drops; the step waits for the max-loaded rank ({_n(m.mean_tokens)} tokens on "
                f"average, {im.max_over_mean_ratio:.2f}x the mean)")
    if res.unrouted_token_frac > 0:
        c.print(f"  tokens with no expert: {res.unrouted_token_frac:.2%}")

    d = res.decode
    c.print(f"[bold]Weights read[/bold]: {d.expected_distinct_experts:.1f} distinct experts per step; max rank "
            f"{d.max_rank_expected_distinct:.1f} (p99 {d.p99_max_rank_distinct:.0f}) of {d.experts_per_rank} it holds"
            + (f", {nbytes(d.max_rank_weight_bytes)}" if d.max_rank_weight_bytes is not None else ""))
    pl = res.placement
    if s.num_redundant_experts:
        mem = f", {nbytes(pl.extra_memory_bytes)} extra weights" if pl.extra_memory_bytes is not None else ""
        before = (f" (without replicas {_n(pl.expected_max_tokens_without_replicas)})"
                  if pl.expected_max_tokens_without_replicas is not None else "")
        c.print(f"[bold]Replicas[/bold]: {pl.num_redundant_used} used{mem}; expected max rank "
                f"{_n(pl.expected_max_tokens)} tokens{before}")
    cf = res.closed_form
    if cf is not None:
        c.print(f"[bold]Closed form[/bold] (uniform): rank {_n(cf.rank_mean_tokens)} ± {cf.rank_std_tokens:.1f}; "
                f"max rank mean {_n(cf.expected_max_tokens)}, p99 {_n(cf.p99_max_tokens)} "
                f"(Monte Carlo {_n(m.mean_tokens)}, {_n(m.p99_tokens)})")


def render_layers(res, title: str | None = None) -> None:  # noqa: ANN001
    c = console()
    t = Table(title="Per layer" + (f": {title}" if title else ""), title_justify="left")
    for col in ("layer", "max rank mean", "max rank p99", "max/mean", "CV", "dropped"):
        t.add_column(col, justify="right")
    for i, r in enumerate(res.layers):
        drop = f"{r.capacity.dropped_frac:.2%}" if r.capacity is not None else "-"
        t.add_row(str(i), _n(r.max_rank.mean_tokens), _n(r.max_rank.p99_tokens),
                  f"{r.imbalance.max_over_mean_ratio:.3f}", f"{r.imbalance.cv_ratio:.3f}", drop,
                  style="bold" if i == res.worst_layer else "")
    c.print(t)
    c.print(f"worst layer {res.worst_layer}; mean max/mean over layers {res.mean_max_over_mean_ratio:.3f}")
    render_load(res.layers[res.worst_layer], f"layer {res.worst_layer}")



def plot_load(res, path: Path) -> None:  # noqa: ANN001
    """Per-expert expected tokens and per-rank mean / p99, as a PNG written atomically."""
    plt = pyplot()


    s = res.spec
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), constrained_layout=True)
    w = res.expected_tokens_per_expert
    ax1.bar(range(len(w)), w, width=1.0, color="tab:blue")
    if res.capacity is not None:
        ax1.axhline(res.capacity.capacity_tokens, color="tab:red", lw=1, label=f"capacity C = {res.capacity.capacity_tokens}")
        ax1.legend(loc="upper right")
    ax1.set_xlabel("expert")
    ax1.set_ylabel("expected tokens / step")
    ax1.set_title(f"{s.num_experts} experts, top-{s.top_k}, {_dist_text(s)}, {s.num_tokens:,} tokens/step")
    mean = [r.expected_tokens for r in res.ranks]
    p99 = [r.p99_tokens for r in res.ranks]
    x = range(len(mean))
    ax2.bar(x, mean, width=0.8, color="tab:green", label="mean")
    ax2.scatter(x, p99, marker="_", color="black", s=60, label="p99")
    ax2.axhline(res.imbalance.mean_tokens_per_rank, color="grey", lw=1, ls="--", label="mean over ranks")
    ax2.axhline(res.max_rank.p99_tokens, color="tab:red", lw=1, label="p99 of the max-loaded rank")
    ax2.set_xlabel("EP rank")
    ax2.set_ylabel("tokens / step")
    ax2.set_title(f"EP {s.ep_size}, {s.placement} placement: max/mean {res.imbalance.max_over_mean_ratio:.2f}")
    ax2.legend(loc="upper right", fontsize="small")
    save_png(fig, path, dpi=110)
