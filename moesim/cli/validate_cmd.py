"""``moesim validate``: predicted against measured time of real MoE layers on this device (torch), or with
``--published`` the step model against published end-to-end figures of real deployments (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import limits as L
from .common import Bounded, emit_json, json_option, to_jsonable, writable


def default_cases_file() -> Path:
    from ..data import scenarios_dir

    return scenarios_dir() / "validation" / "default.toml"


def prepare_run(device: str, profile_name: str, command: str, threads: int | None):  # noqa: ANN201
    """Shared by validate and bench-layer: torch, device, profile and the warnings about them."""
    from ..calib.runtime import check_calibrated_here, check_profile_device, require_device
    from ..errors import InputError
    from ..hardware import load_hardware

    try:
        profile = load_hardware(profile_name)
    except InputError as exc:
        raise exc.with_source("--profile") from None
    warnings = check_profile_device(profile, device, source="--profile")
    if threads is not None and threads < 1:
        raise InputError(f"must be >= 1, got {threads}", source="--threads")
    torch = require_device(device, command)
    if threads is not None:
        torch.set_num_threads(threads)
    from ..runner.env import capture_env, load_warning

    env = capture_env(device)
    warnings += check_calibrated_here(profile, env["device_name"])
    cal = profile.calibration
    if device == "cpu" and cal is not None:
        cal_threads = cal.host.get("num_threads")
        if cal_threads and int(cal_threads) != env["num_threads"]:
            warnings.append(f"profile was calibrated with {cal_threads} threads, this run uses {env['num_threads']}")
    lw = load_warning(env)
    if lw:
        warnings.append(lw)
    return profile, env, warnings


def check_ep_support(profile, cases) -> None:  # noqa: ANN001
    """EP cases need the profile's link bandwidth (fitted from the all-to-all benchmarks)."""
    from ..errors import InputError

    ep = [c.name for c in cases if c.ep_size > 1]
    if ep and profile.node.scale_up_bandwidth_per_accelerator_bytes_per_s is None:
        raise InputError(
            f"profile {profile.name!r} has no link bandwidth for the expert-parallel all-to-all that case(s) "
            f"{', '.join(ep[:3])} need; calibrate with collectives (--world-size 2 or more)",
            source="--profile",
        )


#: the options of the layer-case run (on this device), refused with --published
LAYER_OPTIONS = {"device": "--device", "profile_name": "--profile", "cases_path": "--cases", "out_dir": "--out",
                 "threads": "--threads", "target_s": "--target-s"}


def _check_plot(plot_path: Path | None, available) -> None:  # noqa: ANN001
    from ..errors import InputError

    if plot_path is None:
        return
    if plot_path.suffix.lower() != ".png":
        raise InputError(f"plot file must end in .png, got {plot_path.name!r}", source="--plot")
    if not available():
        raise InputError("matplotlib is not installed; install it with: pip install 'moesim[plot]'", source="--plot")
    writable(plot_path, "--plot")


@click.command("validate")
@click.option("--published", is_flag=True,
              help="Compare the step model with published end-to-end figures of real deployments "
                   "(no torch, no profile; takes --comparisons, --markdown, --plot, --json).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Device to run on.")
@click.option("--profile", "profile_name", default=None, metavar="PROFILE",
              help="Calibrated profile (name or .json from moesim calibrate); required without --published.")
@click.option("--cases", "cases_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="CASES.toml", help="Cases file [default: the bundled scenarios/validation/default.toml].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Write validation.json (every case, every stage) into DIR.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.png", help="Plot predicted against measured (or published) (needs matplotlib).")
@click.option("--threads", type=Bounded(L.THREADS, lower=False), default=None, help="CPU threads for torch [default: torch's default].")
@click.option("--target-s", "target_s", type=Bounded(L.SECONDS), default=0.3, hidden=True)
@click.option("--comparisons", "comparisons_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.toml",
              help="With --published: a comparisons file (paths in it relative to its folder) "
                   "[default: the bundled scenarios/validation-e2e/comparisons.toml].")
@click.option("--markdown", is_flag=True,
              help="With --published: print the markdown table section of docs/published-comparisons.md.")
@json_option
@click.pass_context
def validate(ctx: click.Context, published: bool, device: str, profile_name: str | None, cases_path: Path | None,
             out_dir: Path | None, plot_path: Path | None, threads: int | None, target_s: float,
             comparisons_path: Path | None, markdown: bool, as_json: bool) -> None:
    """Check the model's predictions against measurements.

    Without --published: predict each layer case with the profile, run the
    real layer on this device (torch), report the errors, then the median and
    p90 absolute error. Validation cases are never used for fitting.

    With --published: run every published end-to-end comparison (training
    throughput, step time, serving throughput, memory limits of real
    deployments), print predicted, published, error = predicted / published - 1
    and the stage that dominates each step, then the median and p90 |error|
    per group (training, serving, all) and the memory checks that agree.
    The exit status is 0 however large the errors (it is a report).
    """
    if published:
        given = [flag for name, flag in LAYER_OPTIONS.items()
                 if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"--published does not take {', '.join(given)} (options of the layer cases "
                                   "run on this device)", ctx=ctx)
        if markdown and as_json:
            raise click.UsageError("--markdown and --json cannot be combined", ctx=ctx)
        verbose = bool((ctx.obj or {}).get("verbose"))
        _published(comparisons_path, plot_path, markdown, as_json, verbose)
        return
    extra = [flag for flag, v in (("--comparisons", comparisons_path), ("--markdown", markdown)) if v]
    if extra:
        raise click.UsageError(f"{', '.join(extra)} needs --published", ctx=ctx)
    if profile_name is None:
        raise click.UsageError("Missing option '--profile' (or give --published to compare with published figures)",
                               ctx=ctx)
    _layer_cases(device, profile_name, cases_path, out_dir, plot_path, threads, target_s, as_json)


def _published(comparisons_path: Path | None, plot_path: Path | None, markdown: bool, as_json: bool,
               verbose: bool) -> None:
    from ..published import load_comparisons, markdown as to_markdown, run_published
    from .render import published as render

    _check_plot(plot_path, render.plot_available)
    cset = load_comparisons(comparisons_path)
    report = run_published(cset, raise_errors=verbose)
    if plot_path is not None:
        render.plot_published(report, plot_path)
    if as_json:
        emit_json(report)
    elif markdown:
        click.echo(to_markdown(report))
    else:
        render.show_published(report)
    if plot_path is not None and not as_json:
        click.echo(f"wrote {plot_path}", err=True)


def _layer_cases(device: str, profile_name: str, cases_path: Path | None, out_dir: Path | None,
                 plot_path: Path | None, threads: int | None, target_s: float, as_json: bool) -> None:
    from ..calib.cases import load_cases
    from ..calib.runtime import require_torch
    from ..errors import InputError
    from ..io import atomic_write_text
    from .render import runner as render

    require_torch("validate")
    _check_plot(plot_path, render.plot_available)
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise InputError("exists and is not a folder", source="--out")
    if out_dir is not None:
        writable(out_dir / "validation.json", "--out")
    cases_file = cases_path or default_cases_file()
    cases = load_cases(cases_file)
    profile, env, warnings = prepare_run(device, profile_name, "validate", threads)
    check_ep_support(profile, cases)
    from ..runner.env import bf16_warning

    bw = bf16_warning(env, {c.dtype for c in cases})
    if bw:
        warnings.append(bw)

    from ..runner.validate import run_validation

    if not as_json:
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
    with render.progress_bar(f"validate {device}", enabled=not as_json) as update:
        report = run_validation(cases, profile, device, cases_file=str(cases_file), env=env, warnings=warnings,
                                target_s=target_s, progress=update)
    if out_dir is not None:
        atomic_write_text(out_dir / "validation.json", json.dumps(to_jsonable(report), indent=2) + "\n")
    if plot_path is not None:
        render.plot_validation(report, plot_path)
    if as_json:
        emit_json(report)
    else:
        render.show_validation(report)
        if out_dir is not None:
            click.echo(f"wrote {out_dir / 'validation.json'}", err=True)
        if plot_path is not None:
            click.echo(f"wrote {plot_path}", err=True)
