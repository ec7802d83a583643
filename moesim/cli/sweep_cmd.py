"""``moesim sweep``: estimate a scenario over a grid of field values."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import click

from .common import emit_json, json_option, to_jsonable, writable

#: grids larger than this show a progress bar (on stderr)
PROGRESS_MIN_POINTS = 50


def _rename(exc: Exception) -> Exception:
    """Errors from the library name ``vary``; on the command line it is ``--vary``."""
    from ..errors import InputError

    if isinstance(exc, InputError) and exc.source == "vary":
        return InputError(exc.message, source="--vary", field=exc.field)
    return exc


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in to_jsonable(r).items()})
    return buf.getvalue()


def _jsonl_text(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(to_jsonable(r)) + "\n" for r in rows)


def _check_outputs(csv_path: str | None, jsonl_path: str | None, as_json: bool, plot_path: Path | None,
                   x: str | None, y: str | None, hue: str | None, fields: list[str]) -> tuple[str | None, str | None]:
    """Validate the output flags before anything runs; return the plot's (x, hue)."""
    from ..errors import InputError
    from ..plan.records import RECORD_FIELDS

    to_stdout = [f for f, p in (("--csv", csv_path), ("--jsonl", jsonl_path)) if p == "-"] + (["--json"] if as_json else [])
    if len(to_stdout) > 1:
        raise InputError(f"only one output can go to stdout; got {' and '.join(to_stdout)}", source=to_stdout[1])
    if csv_path is not None and csv_path == jsonl_path and csv_path != "-":
        raise InputError("--csv and --jsonl name the same file", source="--jsonl")
    writable(csv_path, "--csv")
    writable(jsonl_path, "--jsonl")
    if plot_path is None:
        for flag, val in (("--x", x), ("--y", y), ("--hue", hue)):
            if val is not None:
                raise InputError("only used with --plot FILE.png", source=flag)
        return None, None
    if plot_path.suffix.lower() != ".png":
        raise InputError(f"plot file must end in .png, got {plot_path.name!r}", source="--plot")
    writable(plot_path, "--plot")
    numeric = [f for f in RECORD_FIELDS if f not in ("hardware", "fits")]
    if y is None:
        raise InputError(f"--plot needs --y METRIC; allowed: {', '.join(numeric)}", source="--y")
    if y not in numeric:
        raise InputError(f"unknown metric {y!r}; allowed: {', '.join(numeric)}", source="--y")
    x = x or fields[0]
    if x not in fields and x not in numeric:
        raise InputError(f"unknown field {x!r}; allowed: a varied field ({', '.join(fields)}) or a metric "
                         f"({', '.join(numeric)})", source="--x")
    if hue is not None and (hue not in fields or hue == x):
        allowed = [f for f in fields if f != x]
        raise InputError(f"unknown field {hue!r}; allowed: a varied field other than --x ({', '.join(allowed) or 'none'})",
                         source="--hue")
    from .render.plan_tables import plot_available

    if not plot_available():
        raise InputError("matplotlib is not installed; install it with: pip install 'moesim[plot]'", source="--plot")
    return x, hue


@click.command()
@click.argument("scenario")
@click.option("--vary", "vary", multiple=True, metavar="FIELD=V1,V2,...",
              help="A grid axis (repeatable; the grid is their cartesian product, the last one fastest), "
                   "e.g. --vary layout.ep=8,16,32 --vary routing.distribution=uniform,zipf:1.2")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a field at every point, e.g. --set num_gpus=64")
@click.option("--csv", "csv_path", metavar="FILE", help="Write one row per point as CSV ('-' for stdout).")
@click.option("--jsonl", "jsonl_path", metavar="FILE", help="Write one JSON object per point per line ('-' for stdout).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.png",
              help="Plot --y against --x, one line per --hue value (needs matplotlib).")
@click.option("--x", "x_field", metavar="FIELD", help="Plot x axis: a varied field or a metric (default: the first --vary).")
@click.option("--y", "y_metric", metavar="METRIC", help="Plot y axis: a metric such as tpot_s or usd_per_million_tokens.")
@click.option("--hue", "hue_field", metavar="FIELD", help="Plot one line per value of this varied field.")
@json_option
def sweep(scenario: str, vary: tuple[str, ...], overrides: tuple[str, ...], csv_path: str | None, jsonl_path: str | None,
          plot_path: Path | None, x_field: str | None, y_metric: str | None, hue_field: str | None, as_json: bool) -> None:
    """Estimate SCENARIO (a bundled name or a TOML file) at every point of a grid.

    Values are TOML literals or bare strings, as with --set. A point that cannot
    run (say EP not dividing the experts) gets an error row; a bad field or value
    stops before anything runs.
    """
    try:
        _run(scenario, vary, overrides, csv_path, jsonl_path, plot_path, x_field, y_metric, hue_field, as_json)
    except Exception as exc:  # noqa: BLE001 - only InputError is renamed; everything else re-raised as is
        raise _rename(exc) from None


def _run(scenario: str, vary: tuple[str, ...], overrides: tuple[str, ...], csv_path: str | None, jsonl_path: str | None,
         plot_path: Path | None, x_field: str | None, y_metric: str | None, hue_field: str | None, as_json: bool) -> None:
    from ..errors import InputError
    from ..io import atomic_write_many
    from ..plan.sweep import parse_vary
    from ..plan.sweep import sweep as run_sweep

    if not vary:
        raise InputError("give at least one --vary FIELD=V1,V2,... (e.g. --vary layout.ep=8,16,32)", source="--vary")
    grid = parse_vary(vary)
    x, hue = _check_outputs(csv_path, jsonl_path, as_json, plot_path, x_field, y_metric, hue_field, list(grid))
    total = 1
    for values in grid.values():
        total *= len(values)

    from .render.plan_tables import progress_bar

    show = total > PROGRESS_MIN_POINTS and not as_json
    with progress_bar(f"sweep ({total} points)", total, enabled=show) as update:
        result = run_sweep(scenario, grid, overrides, progress=update)

    rows = result.records()
    columns = result.columns()
    stdout_used = as_json or csv_path == "-" or jsonl_path == "-"
    files = []  # written together, all or nothing
    for path, text in ((csv_path, lambda: _csv_text(rows, columns)), (jsonl_path, lambda: _jsonl_text(rows))):
        if path is None:
            continue
        if path == "-":
            click.echo(text(), nl=False)
        else:
            files.append((Path(path), text().encode("utf-8")))
    atomic_write_many(files)
    for path, _ in files:
        click.echo(f"wrote {path} ({len(rows)} rows)", err=True)
    if plot_path is not None:
        from .render.plan_tables import plot_sweep

        plot_sweep(result, plot_path, x, y_metric, hue)  # type: ignore[arg-type]
        click.echo(f"wrote {plot_path}", err=True)
    if as_json:
        emit_json({"scenario": result.scenario, "grid": result.grid, "num_points": result.num_points,
                   "num_errors": result.num_errors, "columns": columns, "records": rows})
    elif not stdout_used:
        from .render.plan_tables import render_sweep

        render_sweep(result)
