"""Joint image/mask augmentation on torchvision.transforms.v2: a mask always moves with its image.

- geometry (``data.augment_geometry: affine``): rotation up to 10 degrees, scale 0.9 to 1.1, shift up
  to 6% each way; image and masks in one call (``tv_tensors.Image``, ``tv_tensors.Mask``: bilinear
  for the image, nearest for the masks). ``data.augment_flip`` adds a horizontal flip; it is off by
  default, because left and right are anatomy in a chest X-ray (the heart, the aortic knob, a
  laterality marker).
- intensity (``data.augment_intensity``): gamma, contrast, brightness, blur and Gaussian noise on the
  image only (the masks do not change); ``mild`` or ``strong`` ranges.

Every sample's draw comes from ``(seed, epoch, index)`` inside a forked RNG, so a run and its resume
see the same samples and the global RNG is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

INTENSITY = {  # ranges: gamma, contrast, brightness, blur sigma, noise sigma
    "mild": {"gamma": (0.8, 1.25), "contrast": 0.15, "brightness": 0.05, "blur": (0.1, 0.8), "noise": 0.02},
    "strong": {"gamma": (0.6, 1.6), "contrast": 0.3, "brightness": 0.1, "blur": (0.1, 1.2), "noise": 0.04},
}


class ImageOnly(v2.Transform):
    """A transform of the image alone: masks (and anything else) pass through unchanged."""

    def __init__(self, function, p: float = 0.5):
        super().__init__()
        self.function, self.p = function, p

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image) and torch.rand(()) < self.p:
            return tv_tensors.wrap(self.function(inpt.as_subclass(torch.Tensor)).clamp(0, 1), like=inpt)
        return inpt


def _gamma(low: float, high: float):
    def apply(x: torch.Tensor) -> torch.Tensor:
        return x.clamp_min(0) ** float(torch.empty(()).uniform_(low, high))
    return apply


def _contrast(amount: float):
    def apply(x: torch.Tensor) -> torch.Tensor:
        return TF.adjust_contrast(x, float(torch.empty(()).uniform_(1 - amount, 1 + amount)))
    return apply


def _brightness(amount: float):
    def apply(x: torch.Tensor) -> torch.Tensor:
        return x + float(torch.empty(()).uniform_(-amount, amount))
    return apply


def _blur(low: float, high: float):
    def apply(x: torch.Tensor) -> torch.Tensor:
        return TF.gaussian_blur(x, kernel_size=5, sigma=float(torch.empty(()).uniform_(low, high)))
    return apply


def _noise(sigma: float):
    def apply(x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x) * float(torch.empty(()).uniform_(0, sigma))
    return apply


@dataclass(frozen=True)
class AugmentSpec:
    """What :func:`build_transform` builds; the affine ranges are those of ``data.augment_geometry: affine``."""

    geometry: str = "none"  # none | affine
    intensity: str = "none"  # none | mild | strong
    flip: bool = False
    degrees: float = 10.0  # rotation up to this many degrees either way
    translate: float = 0.06  # shift up to this share of the side, each axis (whole pixels)
    scale: tuple[float, float] = (0.9, 1.1)

    @property
    def active(self) -> bool:
        return self.geometry != "none" or self.intensity != "none" or self.flip


def build_transform(spec: AugmentSpec) -> v2.Compose | None:
    """The joint transform of ``spec`` (None when it does nothing)."""
    steps: list[v2.Transform] = []
    if spec.flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if spec.geometry == "affine":
        steps.append(v2.RandomAffine(degrees=spec.degrees, translate=(spec.translate, spec.translate),
                                     scale=spec.scale, interpolation=v2.InterpolationMode.BILINEAR))
    if spec.intensity != "none":
        r = INTENSITY[spec.intensity]
        steps += [ImageOnly(_gamma(*r["gamma"])), ImageOnly(_contrast(r["contrast"])),
                  ImageOnly(_brightness(r["brightness"])), ImageOnly(_blur(*r["blur"]), p=0.3),
                  ImageOnly(_noise(r["noise"]), p=0.5)]
    return v2.Compose(steps) if steps else None


def augment(transform: v2.Compose, image: torch.Tensor, masks: torch.Tensor, seed: list[int]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """image float (1, S, S) in [0, 1], masks uint8 (C, S, S) -> both transformed by one draw."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0] >> 1))
        out_image, out_masks = transform(tv_tensors.Image(image), tv_tensors.Mask(masks))
    return out_image.as_subclass(torch.Tensor).clamp(0, 1), out_masks.as_subclass(torch.Tensor)
