"""Context swap: keep an image's expert-masked regions, take everything else from a finding-free image.

Used three ways: as a training augmentation (``data.augment=background_swap``), to choose the
checkpoint on validation images whose context carries no label information
(``train.select_on=val_swapped``), and in the twin-free audit (``context_reliance``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from hegl_cli.data.cache import CachedSplit
from hegl_cli.data.labels import finding_free


def finding_free_pairing(labels: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """(N,) a finding-free image of the same split for every image (fixed, seeded), or None if none.

    labels: (N, C) with NaN = unknown; only :func:`finding_free` images are donors.
    """
    donors = np.flatnonzero(finding_free(labels))
    if len(donors) == 0:
        return None
    return donors[np.random.default_rng(seed).integers(len(donors), size=len(labels))]


def swappable(split: CachedSplit) -> np.ndarray:
    """(N,) bool: images whose every positive (or unknown) class has a mask, so a swap keeps all
    their findings."""
    labels = np.nan_to_num(split.labels, nan=1.0)
    return ((labels < 0.5) | split.has_mask).all(1)


def paste(keep: np.ndarray | torch.Tensor, inside, outside):
    """``keep * inside + (1 - keep) * outside``: keep (S, S) in [0, 1], images (S, S)."""
    return keep * inside + (1 - keep) * outside


def context_swap(split: CachedSplit, seed: int = 0) -> Callable[[torch.Tensor, np.ndarray], torch.Tensor] | None:
    """A ``perturb(images (B, 1, S, S), indices (B,))`` for :func:`predict_split` that puts every
    swappable image's masked regions onto its fixed finding-free donor (other images are left as
    they are; a finding-free image becomes its donor). None when the split has no finding-free image.
    """
    donors = finding_free_pairing(split.labels, seed)
    if donors is None:
        return None
    ok = swappable(split)

    def perturb(images: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
        out = images.clone()
        for k, i in enumerate(np.asarray(indices)):
            if ok[int(i)]:
                keep = torch.from_numpy(split.masks(int(i)).max(0).astype(np.float32))
                donor = torch.from_numpy(split.image(int(donors[int(i)])))
                out[k, 0] = paste(keep.to(out.dtype), out[k, 0], donor.to(out.dtype))
        return out

    return perturb
