"""The root `hegl` command: global options and the subcommands."""

from __future__ import annotations

from typing import Annotated

import typer

from hegl_cli import __version__
from hegl_cli.cli import ablation, config_cmd, evaluate, explain, predict, prepare, report, robustness, train
from hegl_cli.cli.common import State

app = typer.Typer(
    name="hegl",
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


app.command("prepare")(prepare.prepare)
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("robustness")(robustness.robustness)
app.command("explain")(explain.explain)
app.command("predict")(predict.predict)
app.command("report")(report.report)
app.command("ablation")(ablation.ablation)
app.add_typer(config_cmd.app, name="config")


def main() -> None:
    app()
