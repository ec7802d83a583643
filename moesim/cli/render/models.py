"""Rendering of model lists and model cards."""

from __future__ import annotations

from rich.table import Table

from . import console
from .fmt import gib, nbytes, params


def render_model_list(rows: list[dict]) -> None:
    t = Table(title="Bundled models", title_justify="left")
    for col in ("name", "family", "total", "active", "experts", "top-k"):
        t.add_column(col, justify="right" if col not in ("name", "family") else "left")
    for r in rows:
        t.add_row(r["name"], r["family"], params(r["total_params"]), params(r["active_params"]),
                  str(r["num_experts"]), str(r["top_k"]))
    console().print(t)


def render_model_card(card) -> None:
    c = console()
    p = card.params
    c.print(f"[bold]{card.name}[/bold]  ({card.family})")
    c.print(
        f"{card.num_layers} layers ({card.num_moe_layers} MoE), hidden {card.hidden_size}, vocab {card.vocab_size}, "
        f"attention {card.attention.upper()} {card.num_heads} heads / {card.num_kv_heads} kv"
    )
    if card.num_experts:
        shared = f", {card.num_shared_experts} shared x {card.shared_expert_ffn_dim}" if card.num_shared_experts else ""
        c.print(f"experts: {card.num_experts} routed x {card.expert_ffn_dim}, top-{card.top_k} "
                f"({card.router_scoring}){shared}")
    t = Table(title="Parameters", title_justify="left")
    t.add_column("component")
    t.add_column("total", justify="right")
    t.add_column("active / token", justify="right")
    for k, v in p.by_component.items():
        if v:
            t.add_row(k, params(v), params(p.active_by_component[k]))
    t.add_row("[bold]all[/bold]", f"[bold]{params(p.total)}[/bold]",
              f"[bold]{params(p.active)}[/bold] ({card.active_frac:.1%})")
    c.print(t)
    m = Table(title="Weights and KV cache", title_justify="left")
    m.add_column("what")
    m.add_column("bytes", justify="right")
    m.add_column("GiB", justify="right")
    for d, b in card.weight_bytes_by_dtype.items():
        m.add_row(f"weights, all {d}", nbytes(b), gib(b))
    m.add_row(f"weights as published ({card.published_weight_dtype})", nbytes(card.weight_bytes_published),
              gib(card.weight_bytes_published))
    for d, b in card.kv_bytes_per_token_by_dtype.items():
        m.add_row(f"KV cache per token ({d})", nbytes(b), "")
    c.print(m)
    f = Table(title="Forward FLOPs per token", title_justify="left")
    f.add_column("keys attended", justify="right")
    f.add_column("FLOPs", justify="right")
    for n, v in card.forward_flops_per_token_at_context.items():
        f.add_row(n, f"{v / 1e9:.2f} GFLOP")
    c.print(f)
