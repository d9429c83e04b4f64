"""What every subcommand shares: console, error handling, config options."""

from __future__ import annotations

import errno
import functools
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hegl_cli.config import DEVICES, Config, config_layers, load_config
from hegl_cli.engine.run_folder import CHECKPOINTS
from hegl_cli.errors import TrainingDiverged, UserError, first_line

console = Console(stderr=True, highlight=False)
out = Console(highlight=False)


class State:
    """Global options set by the root callback."""

    verbose: bool = False
    quiet: bool = False


F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(func: F) -> F:
    """Turn known errors into one line on stderr and an exit code, with no traceback.

    UserError -> 2, TrainingDiverged -> 1, anything else -> 1 (traceback only with --verbose).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (UserError, TrainingDiverged) as exc:
            _report(exc)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            if exc.errno not in USER_FIXABLE_ERRNOS:
                _report(exc, unexpected=True)
                raise typer.Exit(1) from None
            _report(UserError(os_error_line(exc)))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            error_line("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            _report(exc, unexpected=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# What a user fixes (a full or read-only disk, a path through a file, a name too long, no permission):
# one line naming the path and exit 2. Atomic writes leave nothing half-written that looks complete.
USER_FIXABLE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EISDIR, errno.EACCES,
                       errno.EPERM, errno.EDQUOT, errno.ENOENT, errno.EEXIST, errno.ELOOP, errno.EFBIG}


def os_error_line(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else "a file"
    target = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
    return f"cannot use {where}{target}: {exc.strerror or type(exc).__name__}"


def _report(exc: BaseException, unexpected: bool = False) -> None:
    if State.verbose or os.environ.get("HEGL_TRACEBACK"):
        console.print(traceback.format_exc(), markup=False)
    prefix = "unexpected error" if unexpected else "error"
    message = first_line(exc, 10_000)
    if unexpected:
        message = f"{type(exc).__name__}: {message} (run with --verbose for the traceback)"
    error_line(message, prefix)


def error_line(message: str, prefix: str = "error") -> None:
    """One line on stderr; the message is printed literally (file names may contain '[...]')."""
    console.print(Text.assemble((f"{prefix}: ", "red"), message), soft_wrap=True)


def info(message: str, style: str | None = None) -> None:
    """A progress or result line, hidden by --quiet; printed literally, never as markup."""
    if not State.quiet:
        console.print(Text(message, style=style or ""), soft_wrap=True)


def result_line(message: str) -> None:
    """A result on stdout (kept by --quiet), printed literally."""
    out.print(Text(message), soft_wrap=True)


def fitted_table(title: str, header: list[str], rows: list[list[str]], console: Console, full: str) -> Table:
    """A table that never cuts a label: text wraps, and metric columns that do not fit the console's
    width (80 when printing to a log) are dropped with a note saying where the full table is."""
    label_width = min(max([len(header[0]), *(len(r[0]) for r in rows)]), 36)
    value_width = max([13, *(len(v) for r in rows for v in r[1:])])
    fits = max(1, (console.width - label_width - 4) // (value_width + 3))
    shown = header[1 : 1 + fits]
    dropped = len(header) - 1 - len(shown)
    caption = f"{dropped} more column(s) in {full}" if dropped else f"also in {full}"
    view = Table(title=Text(title), caption=Text(caption))
    view.add_column(header[0], overflow="fold", min_width=min(label_width, 24))
    for name in shown:
        view.add_column(name, justify="right", overflow="fold", min_width=value_width)
    for row in rows:
        view.add_row(*[Text(str(v)) for v in row[: 1 + len(shown)]])
    return view


def cell(value: object) -> Text:
    """A table cell shown exactly as given (rich would read '[...]' in a file name as markup)."""
    return Text(str(value))


ConfigOpt = Annotated[
    str | None, typer.Option("--config", "-c", help="YAML config file (or a packaged name: paper.yaml).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one key: section.key=value (repeatable)."),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", help="Where run folders live.")]


def choice(what: str, options: tuple[str, ...]) -> Callable[[str], str]:
    """A parser for an option that takes one of ``options``: anything else is a usage error that says
    ``unknown <what> 'x' (valid: ...)`` in one line."""

    def parse(value: str) -> str:
        if value not in options:
            raise typer.BadParameter(f"unknown {what} {value!r} (valid: {', '.join(options)})")
        return value

    return parse


def choice_option(what: str, options: tuple[str, ...], help: str, *names: str) -> typer.models.OptionInfo:
    """``typer.Option`` for one of ``options``, shown as ``a|b|c`` in the help."""
    return typer.Option(*names, parser=choice(what, options), metavar="|".join(options), help=help)


CheckpointOpt = Annotated[str, choice_option("checkpoint", CHECKPOINTS, "Which checkpoint of the run.")]
DeviceOpt = Annotated[str, choice_option("device", DEVICES, "Where the model runs.")]


def resolve_config(config: str | None, overrides: list[str] | None, base: Path | None = None, **flags: Any) -> Config:
    """Default (or ``base``, a run's config) < --config < --set < dedicated flags (section__key=value)."""
    dotted = {key.replace("__", "."): value for key, value in flags.items()}
    return load_config(config, overrides or [], dotted, base=base)


def eval_layers(config: str | None, overrides: list[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """The --config/--set layers of evaluate/robustness/explain (checked against eval.* later)."""
    return config_layers(config, overrides or [])


def existing_path(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    return path
