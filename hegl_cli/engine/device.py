"""Which device to run on: cuda > mps > cpu for ``auto``, or the one asked for."""

from __future__ import annotations

import torch

from hegl_cli.errors import UserError


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def select_device(requested: str) -> torch.device:
    """cuda > mps > cpu for ``auto``; a clear error when a forced device is missing."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but no CUDA device is available")
    if requested == "mps" and not mps_available():
        raise UserError("device mps was asked for but MPS is not available")
    if requested not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {requested!r} (valid: auto, cpu, cuda, mps)")
    return torch.device(requested)
