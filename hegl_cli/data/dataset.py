"""Torch dataset over a prepared cache split; every sample is a dict (torchxrayvision-style)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from hegl_cli.data.augment import AugmentSpec, augment, build_transform
from hegl_cli.data.cache import CachedSplit
from hegl_cli.data.labels import finding_free
from hegl_cli.data.swap import paste, swappable


class XrayDataset(Dataset):
    """Samples: ``image`` float (1, S, S) in [0, 1]; ``labels`` float (C,) with NaN = unknown;
    ``masks`` uint8 (C, S, S); ``has_mask`` bool (C,); ``index`` int.

    ``augment="background_swap"``: with probability ``swap_prob`` the image's annotated regions are
    pasted onto a random finding-free image of the same split, so that everything outside the expert
    masks (a laterality tag, a device) becomes independent of the labels. Images with a positive
    class that has no mask are left alone (their finding would be pasted away). The random choice is
    drawn from ``(seed, epoch, index)``, so runs and resumed runs see the same samples.

    ``transform``: the joint geometric and intensity augmentation (:mod:`hegl_cli.data.augment`), after
    the swap.
    """

    def __init__(self, split: CachedSplit, augment: str = "none", seed: int = 0, swap_prob: float = 0.5,
                 transform: AugmentSpec | None = None):
        self.split = split
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.swap_prob = swap_prob
        self.donors = np.flatnonzero(finding_free(split.labels))
        self.swappable = swappable(split)
        self.spec = transform or AugmentSpec()
        self.transform = build_transform(self.spec)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.split.image(index)
        masks = self.split.masks(index)
        if self.augment == "background_swap" and len(self.donors) and self.swappable[index]:
            image = self._swap_background(index, image, masks)
        image_t = torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0)
        masks_t = torch.from_numpy(np.ascontiguousarray(masks))
        if self.transform is not None:  # after the swap: the pasted image moves with its masks too
            image_t, masks_t = augment(self.transform, image_t, masks_t, [self.seed, self.epoch, index, 1])
        return {
            "image": image_t,
            "labels": torch.from_numpy(self.split.labels[index].astype(np.float32)),
            "masks": masks_t,
            "has_mask": torch.from_numpy(self.split.has_mask[index].astype(bool)),
            "index": torch.tensor(index),
        }

    def _swap_background(self, index: int, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if rng.random() >= self.swap_prob:
            return image
        donor = int(self.donors[rng.integers(len(self.donors))])
        keep = masks.max(0).astype(np.float32) if masks.size else np.zeros_like(image)
        return paste(keep, image, self.split.image(donor))
