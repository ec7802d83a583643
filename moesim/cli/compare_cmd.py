"""``moesim compare``: two scenarios side by side."""

from __future__ import annotations

import click

from .common import emit_json, json_option


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--set-a", "set_a", multiple=True, metavar="FIELD=VALUE", help="Override a field of A (repeatable).")
@click.option("--set-b", "set_b", multiple=True, metavar="FIELD=VALUE", help="Override a field of B (repeatable).")
@click.option("--set", "set_both", multiple=True, metavar="FIELD=VALUE",
              help="Override a field of both (applied before --set-a / --set-b).")
@json_option
def compare(a: str, b: str, set_a: tuple[str, ...], set_b: tuple[str, ...], set_both: tuple[str, ...],
            as_json: bool) -> None:
    """Compare scenarios A and B (bundled names or TOML files; the same one twice with
    different --set-a / --set-b is fine): the inputs that differ, the key figures,
    time by stage and memory, with B/A and the better side highlighted.
    """
    from ..plan.compare import compare_scenarios, load_with
    from ..scenario import parse_set

    parse_set(set_both)  # a malformed --set is named as such before it joins --set-a / --set-b
    sa = load_with(a, set_both + set_a, "--set-a" if set_a else "--set")
    sb = load_with(b, set_both + set_b, "--set-b" if set_b else "--set")
    cmp = compare_scenarios(sa, sb)
    if as_json:
        emit_json(cmp)
        return
    from .render.plan_tables import render_compare

    def flags(*groups: tuple[str, tuple[str, ...]]) -> str:
        return " ".join(f"{flag} {v}" for flag, values in groups for v in values)

    render_compare(sa, sb, cmp, flags(("--set", set_both), ("--set-a", set_a)), flags(("--set", set_both), ("--set-b", set_b)))
