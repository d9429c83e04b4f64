"""What replaces a removed region: the baselines of perturbation-based explanations and metrics.

- ``blur``: a Gaussian-blurred copy of the image (sigma = S/16): removes the detail, keeps the level;
- ``mean``: the image's own mean intensity everywhere;
- ``black``: zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BASELINES = ("blur", "mean", "black")


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, 1, S, S) images (separable, reflect padding)."""
    radius = max(1, int(3 * sigma))
    radius = min(radius, images.shape[-1] - 1)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


def baseline(images: torch.Tensor, kind: str = "blur") -> torch.Tensor:
    """(B, 1, S, S) -> the ``kind`` baseline of each image, same shape."""
    if kind == "blur":
        return blur(images, sigma=max(1.0, images.shape[-1] / 16))
    if kind == "mean":
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images).clone()
    if kind == "black":
        return torch.zeros_like(images)
    raise ValueError(f"unknown baseline {kind!r} (known: {', '.join(BASELINES)})")
