"""`hegl robustness`."""

from __future__ import annotations

from hegl_cli.cli.common import handles_errors
from hegl_cli.errors import UserError


@handles_errors
def robustness() -> None:
    """Not available yet."""
    raise UserError("'hegl robustness' is not available yet")
