"""`hegl explain`."""

from __future__ import annotations

from hegl_cli.cli.common import handles_errors
from hegl_cli.errors import UserError


@handles_errors
def explain() -> None:
    """Not available yet."""
    raise UserError("'hegl explain' is not available yet")
