"""Entry point: a click group whose commands are imported only when used.

Each command lives in its own module (``moesim/cli/<name>_cmd.py``) so that
``moesim --help`` stays instant. User errors (:class:`moesim.errors.InputError`,
bad flags) print one line to stderr and exit 2, in the group itself so that
click's ``CliRunner`` sees the same; ``-v`` shows the traceback instead.
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
    "validate": ("moesim.cli.validate_cmd", "validate", "Predicted vs measured: real MoE layers on this device, or published runs (--published)."),
    "bench-layer": ("moesim.cli.bench_layer_cmd", "bench_layer", "Run one MoE layer; print measured and predicted."),
    "plan": ("moesim.cli.plan_cmd", "plan", "Search hardware x layout x batch under constraints."),
    "sweep": ("moesim.cli.sweep_cmd", "sweep", "Evaluate a scenario over a grid of field values."),
    "compare": ("moesim.cli.compare_cmd", "compare", "Two scenarios side by side."),
    "simulate": ("moesim.cli.simulate_cmd", "simulate", "Serving under load: a request stream, latency percentiles."),
}


#: exceptions that only input of an impossible size can cause once the bounds of moesim/limits.py hold; a last
#: net so that even a case the bounds missed ends as one line and exit 2 (``-v`` shows the traceback)
_SIZE_ERRORS = (OverflowError, RecursionError, MemoryError, FloatingPointError)


def one_line(text: str, width: int = 1200) -> str:
    """``text`` on one line, at most about ``width`` characters."""
    from ..errors import clip

    return clip(" ".join(str(text).split()), width)


def _usage_line(exc: click.UsageError) -> str:
    cmd = exc.ctx.command_path if exc.ctx is not None else "moesim"
    return one_line(f"error: {exc.format_message()} (see '{cmd} --help')")


class LazyGroup(click.Group):
    """The ``moesim`` group: lazy subcommands, and the one error path of the CLI.

    Whether it runs as the console script or under click's ``CliRunner``, a bad
    input (:class:`~moesim.errors.InputError`, a bad flag, a size the bounds
    missed) prints one line ``error: ...`` to stderr and exits with status 2;
    ``-v`` re-raises it with its traceback.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: ANN001
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            click.echo(_usage_line(exc), err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):  # noqa: ANN201
        try:
            return super().invoke(ctx)
        except InputError as exc:
            if (ctx.obj or {}).get("verbose"):
                raise
            click.echo(one_line(f"error: {exc}"), err=True)
            ctx.exit(2)
        except click.UsageError as exc:  # a subcommand's flags (the group's own are parsed before invoke)
            if (ctx.obj or {}).get("verbose"):
                raise
            click.echo(_usage_line(exc), err=True)
            ctx.exit(2)
        except _SIZE_ERRORS as exc:
            if (ctx.obj or {}).get("verbose"):
                raise
            click.echo(one_line(f"error: input too large to compute ({type(exc).__name__}: {exc}); "
                                "check the sizes given (moesim -v shows the traceback)"), err=True)
            ctx.exit(2)

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
    if not verbose:  # numpy's floating-point warnings would break the one-line output; -v shows them
        import warnings

        warnings.simplefilter("ignore", RuntimeWarning)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with its status (0, 2 for bad input, 130 when interrupted)."""
    try:
        cli.main(args=argv, prog_name="moesim")
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
