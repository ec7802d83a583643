"""``moesim hardware list | show NAME_OR_PATH``."""

from __future__ import annotations

import click

from .common import emit_json, json_option


@click.group()
def hardware() -> None:
    """Hardware profiles (shipped TOML or calibrated JSON)."""


@hardware.command("list")
@json_option
def list_hardware(as_json: bool) -> None:
    """List shipped hardware profiles."""
    from ..hardware import bundled_hardware, read_profile_file

    profiles = [read_profile_file(p) for p in bundled_hardware().values()]
    if as_json:
        emit_json([hardware_summary(p) for p in profiles])
        return
    from .render.hardware import render_hardware_list

    render_hardware_list([hardware_summary(p) for p in profiles])


@hardware.command("show")
@click.argument("name_or_path")
@json_option
def show(name_or_path: str, as_json: bool) -> None:
    """Show one profile with the source of every number."""
    from ..hardware import load_hardware

    p = load_hardware(name_or_path)
    if as_json:
        emit_json(p)
        return
    from .render.hardware import render_hardware

    render_hardware(p)


def hardware_summary(p) -> dict:
    a, n, s = p.accelerator, p.node, p.scale_out
    return {
        "name": p.name,
        "accelerator": a.name,
        "peak_bf16_flops_per_s": a.peak_for("bf16"),
        "peak_fp8_flops_per_s": a.peak_for("fp8"),
        "memory_bytes": a.memory_bytes,
        "memory_bandwidth_bytes_per_s": a.memory_bandwidth_bytes_per_s,
        "accelerators_per_node": n.accelerators_per_node,
        "scale_up_domain_size": n.scale_up_domain_size,
        "scale_up_bandwidth_per_accelerator_bytes_per_s": n.scale_up_bandwidth_per_accelerator_bytes_per_s,
        "scale_out_bandwidth_per_accelerator_bytes_per_s": (
            s.nics_per_node * s.bandwidth_per_nic_bytes_per_s / n.accelerators_per_node
            if s.bandwidth_per_nic_bytes_per_s else None
        ),
        "usd_per_accelerator_hour": p.price.usd_per_accelerator_hour if p.price else None,
        "calibrated": p.calibration is not None,
    }
