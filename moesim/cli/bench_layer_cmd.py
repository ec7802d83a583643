"""``moesim bench-layer``: run one MoE layer configuration; print measured and predicted time side by side."""

from __future__ import annotations

import click

from .. import limits as L
from .common import Bounded, emit_json, json_option

DEFAULT_PROFILE = {"cpu": "local-cpu", "cuda": "h100-sxm"}


def _flag(field: str | None) -> str:
    return "--" + field.split(".")[0].replace("_", "-") if field else "bench-layer"


@click.command("bench-layer")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Device to run on.")
@click.option("--profile", "profile_name", default=None, metavar="PROFILE",
              help="Profile for the prediction [default: local-cpu on cpu, h100-sxm on cuda; calibrate for accuracy].")
@click.option("--num-tokens", "--tokens", "num_tokens", type=Bounded(L.STEP_TOKENS, lower=False), default=2048, show_default=True,
              help="Tokens per rank T.")
@click.option("--d-model", type=Bounded(L.WIDTH, lower=False), default=1024, show_default=True, help="Model width D.")
@click.option("--d-expert-ffn", type=Bounded(L.WIDTH, lower=False), default=2048, show_default=True, help="Expert FFN width F.")
@click.option("--num-experts", "--experts", "num_experts", type=Bounded(L.EXPERTS, lower=False), default=8, show_default=True, help="Routed experts E.")
@click.option("--top-k", type=Bounded(L.EXPERTS, lower=False), default=2, show_default=True, help="Experts per token k.")
@click.option("--routing", default="uniform", show_default=True, metavar="DIST",
              help="Forced routing: uniform | zipf:S | dirichlet:ALPHA | hist:N,N,... (moesim load's forms).")
@click.option("--implementation", type=click.Choice(["loop", "padded", "grouped"]), default="grouped",
              show_default=True, help="Layer implementation.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--capacity-factor", type=Bounded(L.CAPACITY_FACTOR, lower=False), default=None, help="Capacity factor (padded / expert_choice).")
@click.option("--num-shared-experts", type=Bounded(L.EXPERTS_OR_ZERO, lower=False), default=0, show_default=True, help="Shared experts.")
@click.option("--d-shared-ffn", type=Bounded(L.WIDTH, lower=False), default=None, help="Width of one shared expert [default: --d-expert-ffn].")
@click.option("--ep-size", type=Bounded(L.THREADS, lower=False), default=1, show_default=True, help="Expert-parallel processes on this machine.")
@click.option("--router", type=click.Choice(["softmax", "sigmoid", "expert_choice"]), default="softmax",
              show_default=True)
@click.option("--num-groups", type=Bounded(L.EXPERTS, lower=False), default=1, show_default=True, help="Expert groups (group-limited routing).")
@click.option("--topk-groups", type=Bounded(L.EXPERTS, lower=False), default=1, show_default=True, help="Groups a token may use.")
@click.option("--seed", type=Bounded(L.SEED, lower=False), default=0, show_default=True, help="Seed of routing, weights and inputs.")
@click.option("--threads", type=Bounded(L.THREADS, lower=False), default=None, help="CPU threads for torch [default: torch's default].")
@json_option
def bench_layer(device: str, profile_name: str | None, num_tokens: int, d_model: int, d_expert_ffn: int,
                num_experts: int, top_k: int, routing: str, implementation: str, dtype: str,
                capacity_factor: float | None, num_shared_experts: int, d_shared_ffn: int | None, ep_size: int,
                router: str, num_groups: int, topk_groups: int, seed: int, threads: int | None,
                as_json: bool) -> None:
    """Run one MoE layer and print measured and predicted time, by stage."""
    from ..calib.cases import parse_case
    from ..calib.runtime import require_torch
    from ..errors import InputError
    from .render import runner as render
    from .validate_cmd import check_ep_support, prepare_run

    require_torch("bench-layer")
    raw = dict(name="bench-layer", num_tokens=num_tokens, d_model=d_model, d_expert_ffn=d_expert_ffn,
               num_experts=num_experts, top_k=top_k, routing=routing, implementation=implementation, dtype=dtype,
               capacity_factor=capacity_factor, num_shared_experts=num_shared_experts, d_shared_ffn=d_shared_ffn,
               ep_size=ep_size, router=router, num_groups=num_groups, topk_groups=topk_groups, seed=seed)
    try:
        case = parse_case(raw, source="bench-layer")
    except InputError as exc:
        raise InputError(exc.message, source=_flag(exc.field)) from None
    profile, env, warnings = prepare_run(device, profile_name or DEFAULT_PROFILE[device], "bench-layer", threads)
    check_ep_support(profile, [case])

    from ..runner.validate import run_case

    res = run_case(case, profile, device)
    if as_json:
        emit_json({"result": res, "profile": profile.name, "device": device, "device_name": env["device_name"],
                   "warnings": warnings})
        return
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    render.show_bench_layer(res)

