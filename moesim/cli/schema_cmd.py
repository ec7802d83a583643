"""``moesim schema [scenario|model|hardware]``: JSON Schema of the input files."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("kind", type=click.Choice(["scenario", "model", "hardware"]), default="scenario")
def schema(kind: str) -> None:
    """Print the JSON Schema of scenario (default), model or hardware files."""
    if kind == "scenario":
        from ..scenario import Scenario as cls
    elif kind == "model":
        from ..model import ModelSpec as cls  # type: ignore[assignment]
    else:
        from ..hardware import HardwareProfile as cls  # type: ignore[assignment]
    click.echo(json.dumps(cls.model_json_schema(), indent=2))
