"""``moesim validate``: predicted against measured time of real MoE layers on this device."""

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


@click.command("validate")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Device to run on.")
@click.option("--profile", "profile_name", required=True, metavar="PROFILE",
              help="Calibrated profile (name or .json from moesim calibrate).")
@click.option("--cases", "cases_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="CASES.toml", help="Cases file [default: the bundled scenarios/validation/default.toml].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Write validation.json (every case, every stage) into DIR.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.png", help="Plot predicted against measured (needs matplotlib).")
@click.option("--threads", type=Bounded(L.THREADS, lower=False), default=None, help="CPU threads for torch [default: torch's default].")
@click.option("--target-s", "target_s", type=Bounded(L.SECONDS), default=0.3, hidden=True)
@json_option
def validate(device: str, profile_name: str, cases_path: Path | None, out_dir: Path | None, plot_path: Path | None,
             threads: int | None, target_s: float, as_json: bool) -> None:
    """Predict each case with the profile, run the real layer, report the errors.

    Prints predicted, measured and error per case, then the median and p90
    absolute error. Validation cases are never used for fitting.
    """
    from ..calib.cases import load_cases
    from ..calib.runtime import require_torch
    from ..errors import InputError
    from ..io import atomic_write_text
    from .render import runner as render

    require_torch("validate")
    if plot_path is not None:
        if plot_path.suffix.lower() != ".png":
            raise InputError(f"plot file must end in .png, got {plot_path.name!r}", source="--plot")
        if not render.plot_available():
            raise InputError("matplotlib is not installed; install it with: pip install 'moesim[plot]'", source="--plot")
        writable(plot_path, "--plot")
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
