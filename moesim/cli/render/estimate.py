"""Rendering of ``moesim estimate``."""

from __future__ import annotations

from rich.table import Table

from . import console
from .fmt import bar, gib, params, seconds


def render_estimate(sc, card, est) -> None:
    c = console()
    c.print(f"[bold]{sc.name}[/bold]: {sc.description}")
    lay = est.layout
    c.print(
        f"model {card.name}: {params(card.params.total)} total, {params(card.params.active)} active "
        f"({card.num_experts} experts, top-{card.top_k}); hardware {est.hardware} x {est.num_gpus}; "
        f"TP{lay['tp']} PP{lay['pp']} DP{lay['dp']} EP{lay['ep']} ETP{lay['etp']} EDP{lay['edp']}"
        + (f" ZeRO-{lay['zero_stage']}" if lay["zero_stage"] else "")
    )

    # headline
    h = Table(title="Result", title_justify="left", show_header=False)
    h.add_column("what")
    h.add_column("value", justify="right")
    if est.step_s is not None:
        h.add_row("step time (expected straggler)", seconds(est.step_s))
        h.add_row("step time (p99 straggler)", seconds(est.step_p99_s))
    if est.ttft_s is not None:
        h.add_row("time to first token", seconds(est.ttft_s))
    if est.tpot_s is not None:
        h.add_row("time per output token (expected / p99)", f"{seconds(est.tpot_s)} / {seconds(est.tpot_p99_s)}")
    what = "tokens/s" if est.workload == "train" else ("prompt tokens/s" if est.phase == "prefill" else "output tokens/s")
    h.add_row(what, f"{est.tokens_per_s:,.0f}  ({est.tokens_per_s_per_gpu:,.0f} per GPU)")
    h.add_row("MFU (compute dtype / BF16 peak)", f"{est.mfu_frac:.1%} / {est.mfu_bf16_frac:.1%}")
    cost = est.cost
    h.add_row("GPU-hours per million tokens", f"{cost.gpu_hours_per_million_tokens:.4g}")
    if cost.usd_per_million_tokens is not None:
        h.add_row(f"USD per million tokens (at {cost.usd_per_gpu_hour:.2f}/GPU-h)", f"{cost.usd_per_million_tokens:.4g}")
    if cost.run_gpu_hours is not None:
        run = f"{cost.run_gpu_hours:,.0f} GPU-h, {cost.run_days:.1f} days"
        if cost.run_usd is not None:
            run += f", USD {cost.run_usd:,.0f}"
        h.add_row(f"run of {cost.run_tokens:.3g} tokens", run)
    if est.max_batch_size is not None:
        h.add_row("largest batch per replica that fits", str(est.max_batch_size))
    c.print(h)

    # time by stage
    t = Table(title="Time by stage (critical path)", title_justify="left")
    t.add_column("stage")
    t.add_column("time", justify="right")
    t.add_column("share", justify="right")
    t.add_column("bound")
    total = sum(v for v in est.time_by_stage_s.values() if v > 0) or 1.0
    for k, v in sorted(est.time_by_stage_s.items(), key=lambda kv: -kv[1]):
        if v <= 0:
            continue
        t.add_row(k, seconds(v), f"{v / total:.0%} {bar(v / total, 12)}", est.bound_by_stage.get(k, ""))
    c.print(t)

    # memory
    m = est.memory
    mt = Table(title=f"Memory per GPU (stage {m.stage})", title_justify="left")
    mt.add_column("category")
    mt.add_column("GiB", justify="right")
    for k, v in m.by_category_bytes.items():
        mt.add_row(k, gib(v))
    status = "[green]fits[/green]" if m.fits else "[red]DOES NOT FIT[/red]"
    mt.add_row("[bold]total[/bold]", f"[bold]{gib(m.total_bytes)}[/bold] of {gib(m.capacity_bytes)}")
    c.print(mt)
    c.print(f"memory {bar(m.total_bytes / m.capacity_bytes)} {m.total_bytes / m.capacity_bytes:.0%}  {status}")

    # load
    if est.load is not None:
        ld = est.load
        c.print(
            f"expert load ({ld.distribution}, EP{ld.ep_size}): {ld.tokens_per_rank:,.0f} tokens/rank, "
            f"max/mean {ld.max_over_mean_ratio:.3f}, CV {ld.coefficient_of_variation:.3f}, "
            f"max-rank copies {ld.copies_max_rank_mean:,.0f} (p99 {ld.copies_max_rank_p99:,.0f}), "
            f"dropped {ld.dropped_frac:.2%}, experts touched/rank {ld.experts_touched_per_rank:.1f} of {ld.local_experts:g}"
        )
    for note in est.notes:
        c.print(f"note: {note}")
