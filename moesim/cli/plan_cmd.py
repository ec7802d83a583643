"""``moesim plan SCENARIO``: search hardware x GPUs x layout x batch under constraints."""

from __future__ import annotations

from pathlib import Path

import click

from .. import limits as L
from .common import Bounded, emit_json, json_option, writable


@click.command()
@click.argument("scenario", required=False)
@click.option("--hardware", "hardware", metavar="A,B,...", help="Profiles to search (default: every shipped GPU profile).")
@click.option("--max-gpus", type=Bounded(L.GPUS, lower=False), default=512, show_default=True,
              help="Largest cluster to consider.")
@click.option("--max-ttft-s", type=Bounded(L.SECONDS, lower=False), help="Time-to-first-token limit, seconds.")
@click.option("--max-tpot-s", type=Bounded(L.SECONDS, lower=False), help="Time-per-output-token limit, seconds.")
@click.option("--min-tokens-per-s", type=Bounded(L.TOKENS_PER_S, lower=False), help="Throughput floor, tokens/s.")
@click.option("--max-usd-per-hour", type=Bounded(L.CLUSTER_USD_PER_HOUR, lower=False),
              help="Budget: price of the whole cluster per hour, USD.")
@click.option("--objective", default="cost", show_default=True, metavar="cost|throughput|latency",
              help="What to optimise: USD per million tokens, tokens/s, or TPOT (TTFT for prefill).")
@click.option("--top", type=Bounded(L.PLAN_TOP), default=5, show_default=True,
              help="How many of the best to print (1 or more).")
@click.option("--recompute", "recompute", metavar="A,B,...",
              help="Training: also search these recomputation settings (none, selective, full; default: the "
              "scenario's workload.recompute).")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE", help="Override a scenario field first.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Write every feasible candidate.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.png",
              help="Draw the Pareto frontier (needs matplotlib).")
@click.option("--rate", "rate", metavar="R", help="Request-rate mode: serve R requests/s (simulated; docs/serving.md).")
@click.option("--max-ttft-p99-s", type=Bounded(L.SECONDS, lower=False), help="With --rate: p99 TTFT limit, seconds.")
@click.option("--max-tpot-p99-s", type=Bounded(L.SECONDS, lower=False), help="With --rate: p99 TPOT limit, seconds.")
@click.option("--requests", "num_requests", type=click.IntRange(1, 1_000_000), default=2000, show_default=True,
              help="With --rate: requests simulated per candidate.")
@click.option("--prompt-tokens", metavar="DIST", help="With --rate: prompt lengths (as moesim simulate).")
@click.option("--output-tokens", metavar="DIST", help="With --rate: output lengths (as moesim simulate).")
@click.option("--arrival", default="poisson", show_default=True, metavar="poisson|gamma:CV",
              help="With --rate: arrival process.")
@click.option("--disaggregated/--aggregated-only", default=True, show_default=True,
              help="With --rate: also try separate prefill and decode pools.")
@json_option
def plan(scenario, hardware, max_gpus, max_ttft_s, max_tpot_s, min_tokens_per_s, max_usd_per_hour, objective, top,
         recompute, overrides, csv_path, plot_path, rate, max_ttft_p99_s, max_tpot_p99_s, num_requests, prompt_tokens,
         output_tokens, arrival, disaggregated, as_json) -> None:
    """Search the scenario's model and workload over hardware, cluster sizes, layouts and batch sizes.

    Prints the best candidates by the objective, the Pareto frontier, and how
    many candidates each constraint rejected. With --rate, candidates are
    deployments (aggregated, or prefill and decode pools) sized by simulating the
    request stream against p99 TTFT / TPOT limits.
    """
    rate_flags = {"--max-ttft-p99-s": max_ttft_p99_s, "--max-tpot-p99-s": max_tpot_p99_s,
                  "--prompt-tokens": prompt_tokens, "--output-tokens": output_tokens}
    if rate is not None:
        if recompute is not None:
            from ..errors import InputError

            raise InputError("searches training scenarios; request-rate mode plans serving", source="--recompute")
        return _plan_rate(scenario, hardware, max_gpus, max_ttft_s, max_tpot_s, min_tokens_per_s, max_usd_per_hour,
                          objective, top, overrides, csv_path, plot_path, rate, max_ttft_p99_s, max_tpot_p99_s,
                          num_requests, prompt_tokens, output_tokens, arrival, disaggregated, as_json)
    for flag, value in rate_flags.items():
        if value is not None:
            from ..errors import InputError

            raise InputError("only used with --rate R (request-rate mode)", source=flag)
    from pydantic import ValidationError

    from ..errors import InputError, from_validation_error
    from ..plan.search import Constraints, empty_reason, plan as run_plan

    try:
        cons = Constraints(max_gpus=max_gpus, max_ttft_s=max_ttft_s, max_tpot_s=max_tpot_s,
                           min_tokens_per_s=min_tokens_per_s, max_usd_per_hour=max_usd_per_hour)
    except ValidationError as exc:
        err = from_validation_error(exc, None)
        raise InputError(err.message, source="--" + (err.field or "").replace("_", "-")) from None
    writable(csv_path, "--csv")
    if plot_path is not None:
        if plot_path.suffix.lower() != ".png":
            raise InputError(f"plot file must end in .png, got {L.short(plot_path.name)}", source="--plot")
        writable(plot_path, "--plot")
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise InputError("matplotlib is not installed; install it with: pip install 'moesim[plot]'", source="--plot")
    _check_objective_name(objective)
    names = [h.strip() for h in hardware.split(",") if h.strip()] if hardware else None
    if hardware is not None and not names:
        raise InputError("give one or more profile names, e.g. --hardware h100-sxm,h200", source="--hardware")
    if names:
        from ..hardware import load_hardware

        for n in names:
            try:
                load_hardware(n)  # unknown names fail here with the list of known ones
            except InputError as exc:
                raise exc.with_source("--hardware") from None
    from ..scenario import load_scenario

    sc = load_scenario(scenario, overrides)  # bad fields fail here, before the search
    _check_search_size(sc, sc.resolve_model(), max_gpus)
    settings = None if recompute is None else [v.strip() for v in recompute.split(",")]
    if settings is not None:
        from ..plan.search import recompute_variants

        recompute_variants(sc, settings)  # a bad list fails here, before the progress bar starts
    scenario, overrides = sc, ()
    feasible: list[dict] = []
    if as_json:
        result = run_plan(scenario, hardware=names, constraints=cons, objective=objective, top=top,
                          overrides=overrides, collect=feasible if (csv_path or plot_path) else None,
                          recompute=settings)
    else:
        from .render.plan import progress_bar

        with progress_bar() as advance:
            result = run_plan(scenario, hardware=names, constraints=cons, objective=objective, top=top,
                              overrides=overrides, progress=advance,
                              collect=feasible if (csv_path or plot_path) else None, recompute=settings)
    if not result.best:
        raise InputError(empty_reason(result), source="moesim plan")
    if csv_path:
        from ..plan.records import write_csv

        write_csv(csv_path, feasible)
    if plot_path:
        from .render.plan import plot_frontier

        plot_frontier(result, feasible, plot_path)
    if as_json:
        emit_json(result)
        return
    from .render.plan import render_plan

    render_plan(result)


def _plan_rate(scenario, hardware, max_gpus, max_ttft_s, max_tpot_s, min_tokens_per_s, max_usd_per_hour, objective,
               top, overrides, csv_path, plot_path, rate, max_ttft_p99_s, max_tpot_p99_s, num_requests, prompt_tokens,
               output_tokens, arrival, disaggregated, as_json) -> None:  # noqa: ANN001
    """``plan --rate``: deployments sized by simulating the request stream (moesim/plan/rate.py)."""
    from pydantic import ValidationError

    from ..errors import InputError, from_validation_error
    from ..plan.rate import RateConstraints, empty_reason, plan_rate
    from ..serving.stream import check_rate

    for flag, value, instead in (("--max-ttft-s", max_ttft_s, "--max-ttft-p99-s"),
                                 ("--max-tpot-s", max_tpot_s, "--max-tpot-p99-s"),
                                 ("--min-tokens-per-s", min_tokens_per_s, "--rate")):
        if value is not None:
            raise InputError(f"not used with --rate; the rate sets the throughput and {instead} the limits",
                             source=flag)
    try:
        r = check_rate(float(rate.strip().replace("_", "")))
    except ValueError:
        raise InputError(f"expected requests/s (a number > 0), got {L.short(rate)}", source="--rate") from None
    try:
        RateConstraints(rate_per_s=r, max_ttft_p99_s=max_ttft_p99_s, max_tpot_p99_s=max_tpot_p99_s, max_gpus=max_gpus,
                        max_usd_per_hour=max_usd_per_hour)
    except ValidationError as exc:
        err = from_validation_error(exc, None)
        raise InputError(err.message, source="--" + (err.field or "").replace("_", "-")) from None
    if objective not in ("cost", "throughput", "latency"):
        raise InputError(f"unknown objective {L.short(objective)}; allowed: cost, throughput, latency",
                         source="--objective")
    writable(csv_path, "--csv")
    if plot_path is not None:
        if plot_path.suffix.lower() != ".png":
            raise InputError(f"plot file must end in .png, got {L.short(plot_path.name)}", source="--plot")
        writable(plot_path, "--plot")
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise InputError("matplotlib is not installed; install it with: pip install 'moesim[plot]'", source="--plot")
    names = [h.strip() for h in hardware.split(",") if h.strip()] if hardware else None
    if hardware is not None and not names:
        raise InputError("give one or more profile names, e.g. --hardware h100-sxm,h200", source="--hardware")
    if names:
        from ..hardware import load_hardware

        for n in names:
            try:
                load_hardware(n)
            except InputError as exc:
                raise exc.with_source("--hardware") from None
    from ..scenario import load_scenario
    from ..serving.stream import parse_arrivals, parse_length

    sc = load_scenario(scenario, overrides)
    parse_arrivals(arrival, "--arrival")
    for flag, text in (("--prompt-tokens", prompt_tokens), ("--output-tokens", output_tokens)):
        if text is not None:
            parse_length(text, flag)
    feasible: list[dict] = []
    kw = dict(rate=r, max_ttft_p99_s=max_ttft_p99_s, max_tpot_p99_s=max_tpot_p99_s, max_gpus=max_gpus,
              max_usd_per_hour=max_usd_per_hour, hardware=names, objective=objective, top=top,
              num_requests=num_requests, arrivals=arrival, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
              disaggregated=disaggregated, collect=feasible)
    if as_json:
        result = plan_rate(sc, **kw)
    else:
        from .render.plan_tables import progress_bar

        with progress_bar("plan --rate", 1) as update:
            result = plan_rate(sc, progress=update, **kw)
    if not result.best:
        raise InputError(empty_reason(result), source="moesim plan --rate")
    if csv_path:
        from ..plan.rate import write_csv as write_rate_csv

        write_rate_csv(csv_path, feasible)
    if plot_path:
        from .render.simulate import plot_rate_plan

        plot_rate_plan(result, feasible, plot_path)
    if as_json:
        emit_json(result)
        return
    from .render.simulate import render_rate_plan

    render_rate_plan(result)


def _check_objective_name(objective: str) -> None:
    from ..errors import InputError

    if objective not in ("cost", "throughput", "latency"):
        raise InputError(f"unknown objective {L.short(objective)}; allowed: cost, throughput, latency",
                         source="--objective")


def _check_search_size(sc, model, max_gpus: int) -> None:  # noqa: ANN001
    """Refuse a search whose EP sizes would need load-model tables over limits.LOAD_MODEL_CELLS."""
    from ..errors import InputError

    if model.moe is None:
        return
    experts = model.moe.num_experts + sc.routing.redundant_experts
    if model.moe.num_experts * sc.routing.redundant_experts > L.PLACEMENT_WORK.hi:  # the search starts at EP 1
        raise InputError(f"routing.redundant_experts ({sc.routing.redundant_experts:,}) x the {model.moe.num_experts:,} "
                         f"experts of EP 1 must be at most {int(L.PLACEMENT_WORK.hi):,} ({L.PLACEMENT_WORK.why})",
                         source="--set", field="routing.redundant_experts")
    max_ep = min(max_gpus, model.moe.num_experts)
    n = max_ep * max(experts, sc.routing.samples)
    if n > L.LOAD_MODEL_CELLS.hi:
        raise InputError(f"--max-gpus {max_gpus:,} lets EP reach {max_ep:,} ranks of {experts:,} experts "
                         f"({sc.routing.samples:,} load samples): {n:,} cells, over {int(L.LOAD_MODEL_CELLS.hi):,} "
                         f"({L.LOAD_MODEL_CELLS.why}); lower --max-gpus", source="--max-gpus")
