"""Rendering of hardware profiles."""

from __future__ import annotations

from rich.table import Table

from . import console
from .fmt import nbytes, rate, seconds


def render_hardware_list(rows: list[dict]) -> None:
    t = Table(title="Hardware profiles: dense peaks; bandwidth per GPU, per direction", title_justify="left")
    cols = ("name", "BF16\nTFLOP/s", "FP8\nTFLOP/s", "HBM\nGB", "HBM\nTB/s", "GPUs/\nnode",
            "scale-up\nGB/s", "scale-out\nGB/s", "USD/\nGPU-h")
    for i, col in enumerate(cols):
        t.add_column(col, justify="left" if i == 0 else "right", no_wrap=i == 0)

    def num(x, scale, fmt="{:.4g}"):
        return "-" if not x else fmt.format(x / scale)

    for r in rows:
        t.add_row(
            r["name"], num(r["peak_bf16_flops_per_s"], 1e12), num(r["peak_fp8_flops_per_s"], 1e12),
            num(r["memory_bytes"], 1e9), num(r["memory_bandwidth_bytes_per_s"], 1e12, "{:.2f}"),
            str(r["accelerators_per_node"]), num(r["scale_up_bandwidth_per_accelerator_bytes_per_s"], 1e9),
            num(r["scale_out_bandwidth_per_accelerator_bytes_per_s"], 1e9),
            num(r["usd_per_accelerator_hour"], 1, "{:.2f}"),
        )
    console().print(t)


def render_hardware(p) -> None:
    c = console()
    c.print(f"[bold]{p.name}[/bold]: {p.description}")
    t = Table(show_header=True)
    t.add_column("field")
    t.add_column("value", justify="right")
    t.add_column("source", overflow="fold", max_width=70)
    a, n, s = p.accelerator, p.node, p.scale_out

    def row(path: str, text: str) -> None:
        t.add_row(path, text, p.sources.get(path, ""))

    row("accelerator", a.name)
    for d, v in a.peak_flops_per_s.items():
        row(f"accelerator.peak_flops_per_s.{d}", rate(v, "FLOP/s"))
    row("accelerator.memory_bytes", nbytes(a.memory_bytes))
    row("accelerator.memory_bandwidth_bytes_per_s", rate(a.memory_bandwidth_bytes_per_s, "B/s"))
    row("node.accelerators_per_node", str(n.accelerators_per_node))
    row("node.scale_up", n.scale_up)
    row("node.scale_up_domain_size", str(n.scale_up_domain_size))
    if n.scale_up_bandwidth_per_accelerator_bytes_per_s:
        row("node.scale_up_bandwidth_per_accelerator_bytes_per_s", rate(n.scale_up_bandwidth_per_accelerator_bytes_per_s, "B/s"))
    row("node.scale_up_latency_s", seconds(n.scale_up_latency_s))
    row("scale_out.fabric", s.fabric)
    if s.fabric != "none":
        row("scale_out.nics_per_node", str(s.nics_per_node))
        row("scale_out.bandwidth_per_nic_bytes_per_s", rate(s.bandwidth_per_nic_bytes_per_s, "B/s"))
        row("scale_out.latency_s", seconds(s.latency_s))
        row("scale_out.rail_optimized", str(s.rail_optimized))
        row("scale_out.oversubscription_ratio", f"{s.oversubscription_ratio:g}")
    if p.price:
        row("price.usd_per_accelerator_hour", f"{p.price.usd_per_accelerator_hour:.2f}")
    c.print(t)
    e = p.efficiency
    c.print(f"efficiency ({e.source}): matmul {e.matmul_frac.points}, memory {e.memory_frac.points}, "
            f"scale-up {e.scale_up_frac:.0%}, scale-out {e.scale_out_frac:.0%}, kernel {seconds(e.kernel_overhead_s)}"
            + (f", host issue {seconds(e.host_issue_s)}" if e.host_issue_s else "")
            + (f", block-scaled FP8 GEMMs at {e.fp8_block_scaled_frac:g} of the per-tensor speed"
               if e.fp8_block_scaled_frac != 1.0 else ""))
    for a in e.attention:
        c.print(f"attention kernel, head dim {a.head_dim}, over keys per query: forward {a.forward_frac.points}, "
                f"backward {a.backward_frac.points} ({a.source})")
    if p.calibration:
        cal = p.calibration
        c.print(f"calibrated on {cal.device_name} at {cal.date_utc} from {cal.measurements_file} "
                f"(sha256 {cal.measurements_sha256[:12]}, {cal.num_measurements} measurements)")
