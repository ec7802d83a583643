"""Entry point: a click group whose commands are imported only when used.

Each command lives in its own module (``moesim/cli/<name>_cmd.py``) so that
``moesim --help`` stays instant. User errors (:class:`moesim.errors.InputError`)
print one line to stderr and exit 2; ``-v`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from .. import __version__
from ..errors import InputError

#: command name -> (module, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "estimate": ("moesim.cli.estimate_cmd", "estimate", "Report a scenario: model card, memory, time, cost."),
    "models": ("moesim.cli.models_cmd", "models", "List bundled models or show a model card."),
    "hardware": ("moesim.cli.hardware_cmd", "hardware", "List or show hardware profiles."),
    "schema": ("moesim.cli.schema_cmd", "schema", "Print the JSON Schema of scenario (or model/hardware) files."),
    "load": ("moesim.cli.load_cmd", "load", "Expert load: per-rank tokens, imbalance, drops."),
    "comm": ("moesim.cli.comm_cmd", "comm", "Collective time over the topology (all-to-all, all-reduce, ...)."),
    "calibrate": ("moesim.cli.calibrate_cmd", "calibrate", "Measure this device and write a calibrated profile."),
    "validate": ("moesim.cli.validate_cmd", "validate", "Predicted vs measured time of real MoE layers."),
    "bench-layer": ("moesim.cli.bench_layer_cmd", "bench_layer", "Run one MoE layer; print measured and predicted."),
    "plan": ("moesim.cli.plan_cmd", "plan", "Search hardware x layout x batch under constraints."),
    "sweep": ("moesim.cli.sweep_cmd", "sweep", "Evaluate a scenario over a grid of field values."),
    "compare": ("moesim.cli.compare_cmd", "compare", "Two scenarios side by side."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n, (mod, _, _) in COMMANDS.items() if importlib.util.find_spec(mod) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        mod, attr, _ = COMMANDS[name]
        if importlib.util.find_spec(mod) is None:
            return None
        return getattr(importlib.import_module(mod), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, COMMANDS[n][2]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="moesim")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """moesim: performance and cost of Mixture-of-Experts models on real hardware."""
    ctx.obj = {"verbose": verbose}


def main(argv: list[str] | None = None) -> None:
    verbose = "-v" in (argv if argv is not None else sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="moesim", standalone_mode=False)
    except InputError as exc:
        if verbose:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
