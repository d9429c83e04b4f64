"""`hegl evaluate`."""

from __future__ import annotations

from hegl_cli.cli.common import handles_errors
from hegl_cli.errors import UserError


@handles_errors
def evaluate() -> None:
    """Not available yet."""
    raise UserError("'hegl evaluate' is not available yet")
