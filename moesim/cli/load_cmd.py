"""``moesim load``: expert load per rank, imbalance and drops for one MoE layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import limits as L
from .common import Bounded, emit_json, json_option, writable

#: LoadSpec / router field -> the flag that sets it (errors name the flag)
FLAGS = {
    "num_experts": "--experts",
    "top_k": "--top-k",
    "ep_size": "--ep",
    "num_tokens": "--tokens",
    "distribution": "--distribution",
    "router": "--router",
    "capacity_factor": "--capacity-factor",
    "placement": "--placement",
    "num_redundant_experts": "--redundant-experts",
    "num_samples": "--samples",
    "seed": "--seed",
    "model": "--model",
    "router.num_groups": "--groups",
    "router.topk_groups": "--topk-groups",
    "router.mean_experts_per_token": "--mean-experts",
    "num_groups": "--groups",
    "topk_groups": "--topk-groups",
}

ROUTERS = ("top_k", "switch", "group_limited", "threshold", "expert_choice")


def _flag_for(field: str | None) -> str | None:
    if not field:
        return None
    for key in (field, field.split(".")[0]):
        if key in FLAGS:
            return FLAGS[key]
    return None


def _named(exc: Exception) -> Exception:
    """Give an InputError without a source the flag of its field."""
    from ..errors import InputError

    if isinstance(exc, InputError) and exc.source is None:
        return InputError(exc.message, source=_flag_for(exc.field) or "moesim load", field=exc.field)
    return exc


@click.command()
@click.argument("scenario", required=False)
@click.option("--model", "model_name", metavar="NAME_OR_PATH", help="Take experts, top-k and router from a model.")
@click.option("--experts", "num_experts", type=Bounded(L.EXPERTS, lower=False), help="Routed experts E.")
@click.option("--top-k", "top_k", type=Bounded(L.EXPERTS, lower=False),
              help="Experts per token k (mean for --router threshold).")
@click.option("--ep", "ep_size", type=Bounded(L.GPUS, lower=False), default=None,
              help="Expert-parallel ranks [default: 8, or the scenario's].")
@click.option("--tokens", "num_tokens", type=Bounded(L.STEP_TOKENS, lower=False), default=None,
              help="Tokens per step entering the layer, summed over the EP group [default: 16384, or the scenario's].")
@click.option("--distribution", "-d", default=None, metavar="DIST",
              help="uniform | zipf:S[:SEED] | dirichlet:ALPHA[:SEED] | hist:N,N,... | hist:FILE.json|FILE.csv[@LAYER].")
@click.option("--router", type=click.Choice(ROUTERS), default=None, help="Router (default: the model's, else top_k).")
@click.option("--scoring", type=click.Choice(["softmax", "sigmoid"]), default=None, help="Router score function.")
@click.option("--groups", "num_groups", type=Bounded(L.EXPERTS, lower=False),
              help="Expert groups for --router group_limited.")
@click.option("--topk-groups", "topk_groups", type=Bounded(L.EXPERTS, lower=False),
              help="Groups a token may use (group_limited).")
@click.option("--mean-experts", "mean_experts", type=Bounded(L.MEAN_EXPERTS, lower=False),
              help="Mean experts per token for --router threshold.")
@click.option("--capacity-factor", "-c", "capacity_factor", type=Bounded(L.CAPACITY_FACTOR, lower=False), default=None,
              help="Capacity factor (padded execution, drops); omit for dropless.")
@click.option("--placement", type=click.Choice(["contiguous", "round_robin", "load_aware"]), default=None,
              help="Expert placement over ranks [default: contiguous, or the scenario's].")
@click.option("--redundant-experts", "num_redundant", type=Bounded(L.REDUNDANT_EXPERTS, lower=False), default=None,
              help="Redundant replicas of hot experts (EPLB) [default: 0, or the scenario's].")
@click.option("--samples", "num_samples", type=Bounded(L.SAMPLES, lower=False), default=None,
              help="Monte Carlo steps [default: 256].")
@click.option("--seed", type=Bounded(L.SEED, lower=False), default=None, help="Monte Carlo seed [default: 0].")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.png", help="Draw per-expert and per-rank load (needs matplotlib).")
@json_option
def load(
    scenario: str | None,
    model_name: str | None,
    num_experts: int | None,
    top_k: int | None,
    ep_size: int,
    num_tokens: int,
    distribution: str,
    router: str | None,
    scoring: str | None,
    num_groups: int | None,
    topk_groups: int | None,
    mean_experts: float | None,
    capacity_factor: float | None,
    placement: str,
    num_redundant: int,
    num_samples: int,
    seed: int,
    plot_path: Path | None,
    as_json: bool,
) -> None:
    """Expert load of one MoE layer: tokens per EP rank (mean, p50, p99), the max-loaded rank,
    imbalance, drops and padding with a capacity factor, and distinct experts read.

    Give a SCENARIO (bundled name or TOML: its model, EP size, tokens per MoE layer pass and
    routing), --model NAME_OR_PATH, or --experts and --top-k; flags override the scenario.
    """
    args = dict(locals())
    scenario = args.pop("scenario")
    if scenario is not None:
        args = _from_scenario(scenario, args)
    defaults = {"ep_size": 8, "num_tokens": 16384, "distribution": "uniform", "placement": "contiguous",
                "num_redundant": 0, "num_samples": 256, "seed": 0}
    args = {k: (defaults[k] if v is None and k in defaults else v) for k, v in args.items()}
    try:
        _run(**args)
    except Exception as exc:  # noqa: BLE001 - only InputError is renamed; everything else re-raised as is
        raise _named(exc) from None


def _from_scenario(ref: str, args: dict[str, Any]) -> dict[str, Any]:
    """Fill unset flags from a scenario: its model, EP size, the tokens one MoE layer pass sees over the EP
    group (a training micro-batch, or a decode step of the serving batch) and its routing settings."""
    from ..scenario import TrainWorkload, load_scenario

    sc = load_scenario(ref)
    w = sc.workload
    per_dp = w.micro_batch_size * w.seq_len if isinstance(w, TrainWorkload) else (
        w.batch_size if w.phase != "prefill" else w.batch_size * w.prompt_tokens)
    lay = sc.layout
    tokens = max(1, int(round(per_dp * lay.etp / lay.tp * lay.ep)))
    rt = sc.routing
    model_ref = sc.model
    if Path(model_ref).suffix in (".toml", ".json") and not Path(model_ref).is_absolute():
        model_ref = str(Path(sc.base_dir) / model_ref)
    fill = {"model_name": model_ref, "ep_size": lay.ep, "num_tokens": tokens, "distribution": rt.distribution,
            "capacity_factor": rt.capacity_factor, "placement": rt.placement, "num_redundant": rt.redundant_experts,
            "num_samples": rt.samples, "seed": rt.seed}
    return {k: (fill[k] if v is None and k in fill else v) for k, v in args.items()}


def _router(kind: str, scoring: str | None, num_groups: int | None, topk_groups: int | None,
            mean_experts: float | None, top_k: int) -> Any:
    from pydantic import ValidationError

    from ..errors import InputError, from_validation_error
    from ..load.routing import ExpertChoice, GroupLimited, Switch, Threshold, TopK

    for flag, val, ok in (("--groups", num_groups, kind == "group_limited"), ("--topk-groups", topk_groups, kind == "group_limited"),
                          ("--mean-experts", mean_experts, kind == "threshold")):
        if val is not None and not ok:
            raise InputError(f"only used with --router {'threshold' if flag == '--mean-experts' else 'group_limited'}",
                             source=flag)
    try:
        if kind == "top_k":
            return TopK(scoring=scoring or "softmax")
        if kind == "switch":
            return Switch()
        if kind == "threshold":
            return Threshold(mean_experts_per_token=mean_experts)
        if kind == "expert_choice":
            return ExpertChoice()
        if num_groups is None or topk_groups is None:
            raise InputError("group_limited needs --groups and --topk-groups", source="--router", field="router")
        return GroupLimited(num_groups=num_groups, topk_groups=topk_groups, scoring=scoring or "sigmoid")
    except ValidationError as exc:
        err = from_validation_error(exc, None)
        raise InputError(err.message, source=_flag_for(f"router.{err.field}") or "--router", field=f"router.{err.field}") from None


def _run(
    *,
    model_name: str | None,
    num_experts: int | None,
    top_k: int | None,
    ep_size: int,
    num_tokens: int,
    distribution: str,
    router: str | None,
    scoring: str | None,
    num_groups: int | None,
    topk_groups: int | None,
    mean_experts: float | None,
    capacity_factor: float | None,
    placement: str,
    num_redundant: int,
    num_samples: int,
    seed: int,
    plot_path: Path | None,
    as_json: bool,
) -> None:
    from ..errors import InputError
    from ..load.api import expert_load, expert_load_layers, load_spec_from_model
    from ..load.distributions import expert_probs, parse_layer_distributions

    if plot_path is not None:
        if plot_path.suffix.lower() != ".png":
            raise InputError(f"plot file must end in .png, got {L.short(plot_path.name)}", source="--plot")
        writable(plot_path, "--plot")
        from .render.load import plot_available

        if not plot_available():
            raise InputError("matplotlib is not installed; install it with: pip install 'moesim[plot]'", source="--plot")

    fields: dict[str, Any] = {}
    model = None
    if model_name is not None:
        from ..catalog import load_model

        try:
            model = load_model(model_name)
        except InputError as exc:
            raise exc.with_source("--model") from None
    elif num_experts is None or top_k is None:
        raise InputError("give --model NAME_OR_PATH, or both --experts and --top-k", source="moesim load")

    e = num_experts if num_experts is not None else (model.moe.num_experts if model and model.moe else None)
    k = top_k if top_k is not None else (model.moe.top_k if model and model.moe else None)
    if e is not None and e < 1:
        raise InputError(f"must be >= 1, got {e}", source="--experts", field="num_experts")
    if k is not None and e is not None and not 1 <= k <= e:
        raise InputError(f"top-k {k} is outside 1..{e} (the number of experts)", source="--top-k", field="top_k")

    layers = parse_layer_distributions(distribution)
    src = distribution.split(":", 1)[1].rsplit("@", 1)[0] if distribution.lower().startswith(("hist:", "histogram:")) else ""
    dist_source = src if Path(src).suffix.lower() in (".json", ".csv") else "--distribution"
    if e is not None:
        for d in [layers.default, *layers.layers.values()]:
            try:
                expert_probs(d, e)
            except InputError as exc:
                raise InputError(exc.message, source=dist_source, field=exc.field) from None

    if router is not None or scoring is not None or model is None:
        kind = router or (
            "group_limited" if model is not None and model.moe is not None and model.moe.router.topk_groups < model.moe.router.num_groups else "top_k"
        )
        if kind == "group_limited" and model is not None and model.moe is not None:
            num_groups = num_groups or model.moe.router.num_groups
            topk_groups = topk_groups or model.moe.router.topk_groups
        if kind == "switch":
            if top_k is not None and top_k != 1:
                raise InputError(f"--router switch routes top-1; got --top-k {top_k} (allowed: 1)", source="--top-k", field="top_k")
            k = 1
        fields["router"] = _router(kind, scoring, num_groups, topk_groups, mean_experts, k or 1)
    elif num_groups is not None or topk_groups is not None or mean_experts is not None:
        raise InputError("needs --router group_limited or threshold", source="--groups" if num_groups else "--mean-experts")

    fields.update(
        ep_size=ep_size,
        num_tokens=num_tokens,
        distribution=layers.default,
        capacity_factor=capacity_factor,
        placement=placement,
        num_redundant_experts=num_redundant,
        num_samples=num_samples,
        seed=seed,
    )
    if model is not None:
        if num_experts is not None:
            fields["num_experts"] = num_experts
        if k is not None:
            fields["top_k"] = k
        try:
            spec = load_spec_from_model(model, **fields)
        except InputError as exc:
            raise _named(exc) from None
    else:
        fields.update(num_experts=e, top_k=k)
        from ..load.api import _spec

        spec = _spec(None, fields)

    _check_load_size(spec, "--tokens" if model is None or num_tokens is not None else "moesim load", distribution)
    title = model.name if model is not None else None
    from .render import load as render

    if layers.layers:
        result = expert_load_layers(spec, layers, len(layers.layers))
        if as_json:
            emit_json(result)
        else:
            render.render_layers(result, title)
        if plot_path is not None:
            render.plot_load(result.layers[result.worst_layer], plot_path)
        return
    result1 = expert_load(spec)
    if as_json:
        emit_json(result1)
    else:
        render.render_load(result1, title)
    if plot_path is not None:
        render.plot_load(result1, plot_path)
        if not as_json:
            click.echo(f"wrote {plot_path}", err=True)


def _check_load_size(spec: Any, tokens_source: str, distribution: str) -> None:
    """Refuse a load model too large to evaluate in seconds (limits.STEP_TOKENS, limits.LOAD_MODEL_CELLS,
    limits.routing_problem)."""
    from ..errors import InputError

    L.STEP_TOKENS.check(spec.num_tokens, source=tokens_source, field="num_tokens")
    msg = L.routing_problem(distribution, spec.num_experts, spec.top_k)
    if msg is not None:
        raise InputError(msg, source="--distribution")
    experts = spec.num_experts + spec.num_redundant_experts
    per_rank = -(-spec.num_experts // spec.ep_size)
    if per_rank * spec.num_redundant_experts > L.PLACEMENT_WORK.hi:
        raise InputError(f"experts per rank x --redundant-experts ({per_rank:,} x {spec.num_redundant_experts:,}) must "
                         f"be at most {int(L.PLACEMENT_WORK.hi):,} ({L.PLACEMENT_WORK.why})", source="--redundant-experts")
    for flag, what, n in (
        ("--samples", f"--samples x experts ({spec.num_samples:,} x {experts:,})", spec.num_samples * experts),
        ("--ep", f"--ep x experts ({spec.ep_size:,} x {experts:,})", spec.ep_size * experts),
        ("--samples", f"--samples x --ep ({spec.num_samples:,} x {spec.ep_size:,})", spec.num_samples * spec.ep_size),
    ):
        if n > L.LOAD_MODEL_CELLS.hi:
            raise InputError(f"{what} = {n:,} must be at most {int(L.LOAD_MODEL_CELLS.hi):,} "
                             f"({L.LOAD_MODEL_CELLS.why})", source=flag)
