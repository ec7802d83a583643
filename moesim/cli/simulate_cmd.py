"""``moesim simulate SCENARIO``: serving under load, request by request (docs/serving.md)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from .. import limits as L
from .common import Bounded, emit_json, json_option, to_jsonable

#: runs of more requests than this (over all rates) show a progress bar on stderr
PROGRESS_MIN_REQUESTS = 20_000


def parse_rates(text: str | None) -> tuple[list[float] | None, int]:
    """``--rate``: a number, a comma list, or ``auto`` / ``auto:N`` (N rates from 10 % to 120 % of saturation)."""
    from ..errors import InputError
    from ..serving.stream import check_rate

    if text is None:
        return None, 0
    t = text.strip().lower()
    if t.startswith("auto"):
        _, sep, n = t.partition(":")
        try:
            k = int(n) if sep else 10
        except ValueError:
            raise InputError(f"auto:N takes a whole number of rates, got {n!r}", source="--rate") from None
        if not 1 <= k <= 1000:
            raise InputError(f"auto:N takes 1 to 1,000 rates, got {k}", source="--rate")
        return None, k
    rates = []
    for part in t.split(","):
        try:
            v = float(part.strip().replace("_", ""))
        except ValueError:
            raise InputError(f"expected requests/s (a number > 0, a comma list, or auto:N), got {part.strip()!r}",
                             source="--rate") from None
        rates.append(check_rate(v))
    if len(rates) > 1000:
        raise InputError(f"at most 1,000 rates, got {len(rates):,}", source="--rate")
    return rates, 0


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    if not rows:
        return ""
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in to_jsonable(r).items()})
    return buf.getvalue()


@click.command()
@click.argument("scenario", required=False)
@click.option("--rate", "rate_text", metavar="R|R1,R2,...|auto:N",
              help="Requests/s (Poisson unless --arrival); a comma list or auto:N sweeps rates.")
@click.option("--requests", "num_requests", type=click.IntRange(1, 10_000_000), default=1000, show_default=True,
              help="Requests in a generated stream (per rate).")
@click.option("--arrival", default="poisson", show_default=True, metavar="poisson|gamma:CV",
              help="Arrival process of a generated stream.")
@click.option("--prompt-tokens", metavar="DIST",
              help="Prompt lengths: N, uniform:LO,HI, lognormal:MEDIAN,SIGMA or hist:V=W,... "
                   "(default: the scenario's prompt_tokens).")
@click.option("--output-tokens", metavar="DIST", help="Output lengths, as --prompt-tokens (default: the scenario's).")
@click.option("--trace", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Requests from a CSV or JSON-lines trace (arrival_s, prompt_tokens, output_tokens).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Seed of a generated stream.")
@click.option("--max-ttft-s", type=Bounded(L.SECONDS), help="SLO for goodput: each request's time to first token, seconds.")
@click.option("--max-tpot-s", type=Bounded(L.SECONDS), help="SLO for goodput: each request's time per output token, seconds.")
@click.option("--saturation/--no-saturation", default=True, show_default=True,
              help="Also measure the saturation rate (an overload run).")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a scenario field, e.g. --set serving.max_num_seqs=256")
@click.option("--csv", "csv_path", metavar="FILE", help="Write one row per request ('-' for stdout).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.png",
              help="KV use and queue over time (one rate) or latency percentiles vs rate (a sweep).")
@json_option
def simulate(scenario, rate_text, num_requests, arrival, prompt_tokens, output_tokens, trace, seed, max_ttft_s,
             max_tpot_s, saturation, overrides, csv_path, plot_path, as_json) -> None:
    """Simulate SCENARIO serving a request stream: continuous batching, chunked prefill, KV cache,
    aggregated or disaggregated (the scenario's [serving] table).

    Prints TTFT, TPOT, inter-token and end-to-end latency percentiles, throughput,
    goodput, queue and KV use, and the saturation rate.
    """
    from ..errors import InputError
    from .common import writable

    rates, auto = parse_rates(rate_text)
    if trace is not None and (rates or auto):
        raise InputError("give either --rate or --trace, not both", source="--rate")
    if trace is None and not rates and not auto:
        raise InputError("give --rate R (requests/s; a list or auto:N sweeps) or --trace FILE", source="--rate")
    sweep = auto > 0 or (rates is not None and len(rates) > 1)
    if as_json and csv_path == "-":
        raise InputError("only one output can go to stdout; got --json and --csv -", source="--csv")
    writable(csv_path, "--csv")
    if plot_path is not None:
        if plot_path.suffix.lower() != ".png":
            raise InputError(f"plot file must end in .png, got {plot_path.name!r}", source="--plot")
        from .render.plan_tables import plot_available

        if not plot_available():
            raise InputError("matplotlib is not installed; install it with: pip install 'moesim[plot]'", source="--plot")
        writable(plot_path, "--plot")

    from ..serving.api import _check_slo, prepare, run_prepared, sweep_prepared
    from .render.plan_tables import progress_bar

    _check_slo(max_ttft_s, "max_ttft_s")
    _check_slo(max_tpot_s, "max_tpot_s")
    # every input error is raised here, before a progress bar or a file
    dep, stream = prepare(scenario, rate=rates[0] if rates else (1.0 if auto else None), trace=trace,
                          num_requests=num_requests, arrivals=arrival, prompt_tokens=prompt_tokens,
                          output_tokens=output_tokens, seed=seed, overrides=overrides)
    n_rates = auto or (len(rates) if rates else 1)
    show = not as_json and len(stream) * n_rates >= PROGRESS_MIN_REQUESTS
    slo = dict(max_ttft_s=max_ttft_s, max_tpot_s=max_tpot_s)
    if sweep:
        with progress_bar(f"simulate ({n_rates} rates)", n_rates, enabled=show) as update:
            result = sweep_prepared(dep, stream, auto if auto else rates, progress=update, **slo)
        rows = [dict(rate_per_s=p.rate_per_s, **r) for p in result.points for r in p.records()]
    else:
        with progress_bar("simulate", len(stream) * len(dep.pools), enabled=show) as update:
            result = run_prepared(dep, stream, saturation=saturation, progress=update, **slo)
        rows = result.records()

    if csv_path is not None:
        text = _csv_text(rows)
        if csv_path == "-":
            click.echo(text, nl=False)
        else:
            from ..io import atomic_write_text

            atomic_write_text(Path(csv_path), text)
            click.echo(f"wrote {csv_path} ({len(rows):,} rows)", err=True)
    if plot_path is not None:
        from .render.simulate import plot_rate_sweep, plot_timeline

        (plot_rate_sweep if sweep else plot_timeline)(result, plot_path)
        click.echo(f"wrote {plot_path}", err=True)
    if as_json:
        emit_json(result)
    elif csv_path != "-":
        from .render.simulate import render_rate_sweep, render_simulation

        (render_rate_sweep if sweep else render_simulation)(result)
