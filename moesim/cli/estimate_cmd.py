"""``moesim estimate [SCENARIO] [--set field=value ...]``: the main report."""

from __future__ import annotations

import click

from .common import emit_json, json_option


@click.command()
@click.argument("scenario", required=False)
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a scenario field, e.g. --set layout.ep=16 --set routing.distribution=zipf:1.2")
@json_option
def estimate(scenario: str | None, overrides: tuple[str, ...], as_json: bool) -> None:
    """Estimate SCENARIO (a bundled name or a TOML file; default: mixtral-8x7b-serve-h100).

    Prints the model card, memory per GPU, time by stage with its bound, expert
    load imbalance, throughput, MFU and cost.
    """
    from ..scenario import load_scenario
    from ..step.estimate import estimate_resolved

    sc = load_scenario(scenario, overrides)
    model = sc.resolve_model()
    hw = sc.resolve_hardware()
    est = estimate_resolved(sc, model, hw)
    if as_json:
        emit_json(est)
        return
    from ..card import model_card  # the report's model card only (not the JSON)
    from .render.estimate import render_estimate

    render_estimate(sc, model_card(model), est)
