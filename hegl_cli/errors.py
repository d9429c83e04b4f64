"""Exceptions that the CLI turns into one-line messages and exit codes.

Exit codes: 0 success, 2 user error (bad input, bad config, missing file), 1 anything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A problem with what the user gave us (file, config key, value). Exit code 2."""

    exit_code = 2


class TrainingDiverged(Exception):
    """Training produced a non-finite loss term; the last good checkpoint is kept. Exit code 1."""

    exit_code = 1


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), at most ``limit`` chars."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


@contextmanager
def reading_record(path: object, what: str) -> Iterator[None]:
    """Render or compute from a record hegl wrote (a JSON report, a robustness record): a value of the
    wrong type or shape in it is one line naming the file, not an "unexpected error"."""
    try:
        yield
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise UserError(f"{path}: a damaged {what} ({type(exc).__name__}: {first_line(exc)}); run the command that "
                        "writes it again") from exc
