"""Pixel rules every image container shares (PNG/JPEG in :mod:`.images`, DICOM in :mod:`.dicom`): the
colour-to-grey rule and the pixel-count limit checked before decoding. A leaf: it imports no reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hegl_cli.errors import UserError


def luma(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) colour in [0, 1] -> (...) grey: ITU-R BT.601 luma, the rule for every container."""
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.float32)


def check_pixels(path: Path, width: int, height: int, max_pixels: int, frames: int = 1) -> None:
    """Refuse an image whose header claims more pixels than ``max_pixels``, or whose square (every image
    is padded to one before it is resized) would hold more, before decoding it: a 1 x 40000 strip of a
    few bytes would otherwise take 6 GB."""
    if width <= 0 or height <= 0:
        raise UserError(f"cannot read image {path}: it claims {width}x{height} pixels")
    if width * height * frames > max_pixels:
        size = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
        raise UserError(f"image {path} is {size} = {width * height * frames / 1e6:.0f} Mpx, over the "
                        f"{max_pixels / 1e6:g} Mpx limit (data.max_pixels; raise it if the file is genuine)")
    side = max(width, height)
    if side * side > max_pixels:  # every image is padded to a square before it is resized
        raise UserError(f"image {path} is {width}x{height}: padded to a square it holds {side * side / 1e6:.0f} Mpx, "
                        f"over the {max_pixels / 1e6:g} Mpx limit (data.max_pixels; raise it if the file is genuine)")
