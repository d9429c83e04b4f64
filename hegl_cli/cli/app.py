"""The root `hegl` command: global options and the subcommands."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from hegl_cli import __version__
from hegl_cli.cli import (
    ablation,
    config,
    evaluate,
    explain,
    export,
    predict,
    prepare,
    report,
    robustness,
    train,
)
from hegl_cli.cli.common import State, error_line
from hegl_cli.engine.kernels import pin_cpu_kernels

# Typer ships its own copy of click; take its exception classes from Typer's public ones.
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class OneLineErrors(TyperGroup):
    """Usage errors (an unknown option, a value of the wrong type, a missing argument) as one line on
    stderr with exit code 2, like every other user error, instead of click's framed usage block."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except UsageError as exc:
            message = " ".join(exc.format_message().split())
            if not message:  # no arguments: the help was shown already
                sys.exit(exc.exit_code)
            where = exc.ctx.command_path if exc.ctx is not None else "hegl"
            error_line(f"{where}: {message} (see '{where} --help')")
            sys.exit(2)
        except typer.Abort:
            error_line("aborted")
            sys.exit(130)
        except ClickException as exc:
            error_line(" ".join(exc.format_message().split()))
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="hegl",
    cls=OneLineErrors,
    help="Explanation-guided training (H-EGL) of transformer chest X-ray classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hegl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and more detail.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and final results.")] = False,
) -> None:
    """Prepare data, train with CE + alpha*HA + beta*DAL, evaluate, stress-test and explain."""
    State.verbose, State.quiet = verbose, quiet
    pin_cpu_kernels()  # before any kernel runs: the same weights on another x86-64 machine (engine/kernels.py)


app.command("prepare")(prepare.prepare)
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("robustness")(robustness.robustness)
app.command("explain")(explain.explain)
app.command("predict")(predict.predict)
app.command("report")(report.report)
app.command("export")(export.export)
app.command("ablation")(ablation.ablation)
app.add_typer(config.app, name="config")


def main() -> None:
    app()
