"""`hegl ablation`."""

from __future__ import annotations

from hegl_cli.cli.common import handles_errors
from hegl_cli.errors import UserError


@handles_errors
def ablation() -> None:
    """Not available yet."""
    raise UserError("'hegl ablation' is not available yet")
