"""``moesim models list | show NAME_OR_PATH``."""

from __future__ import annotations

import click

from .common import emit_json, json_option


@click.group()
def models() -> None:
    """Bundled models and model cards."""


@models.command("list")
@json_option
def list_models(as_json: bool) -> None:
    """List bundled models with total and active parameters."""
    from ..catalog import bundled_models, model_from_toml
    from ..params import count_params

    rows = []
    for name, path in bundled_models().items():
        m = model_from_toml(path)
        c = count_params(m)
        rows.append({
            "name": name,
            "display_name": m.name,
            "family": m.family,
            "total_params": c.total,
            "active_params": c.active,
            "num_experts": m.moe.num_experts if m.moe else 0,
            "top_k": m.moe.top_k if m.moe else 0,
        })
    if as_json:
        emit_json(rows)
        return
    from .render.models import render_model_list

    render_model_list(rows)


@models.command("show")
@click.argument("name_or_path")
@json_option
def show(name_or_path: str, as_json: bool) -> None:
    """Model card of a bundled NAME, a model TOML file, or a Hugging Face config.json."""
    from ..card import model_card
    from ..catalog import load_model

    card = model_card(load_model(name_or_path))
    if as_json:
        emit_json(card)
        return
    from .render.models import render_model_card

    render_model_card(card)
