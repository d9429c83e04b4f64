"""The context swap (hegl_cli.data.swap) and the background-swap augmentation (hegl_cli.data.dataset)."""

from __future__ import annotations

import numpy as np
import torch


def test_background_swap_keeps_the_masks_and_takes_the_rest_from_a_finding_free_image(tiny_cache):
    from hegl_cli.data.cache import CachedSplit
    from hegl_cli.data.dataset import XrayDataset

    split = CachedSplit(tiny_cache, "train")
    data = XrayDataset(split, "background_swap", seed=3, swap_prob=1.0)
    plain = XrayDataset(split, "none")
    donors = [split.image(int(d)) for d in data.donors]
    assert len(donors) > 0
    swapped = 0
    for i in range(len(split)):
        sample, original = data[i], plain[i]
        keep = split.masks(i).max(0).astype(bool)
        image, before = sample["image"][0].numpy(), original["image"][0].numpy()
        assert torch.equal(sample["labels"], original["labels"]) and torch.equal(sample["masks"], original["masks"])
        if not data.swappable[i]:
            np.testing.assert_array_equal(image, before)
            continue
        np.testing.assert_allclose(image[keep], before[keep], atol=1e-6)  # the finding stays
        outside = ~keep
        assert any(np.allclose(image[outside], d[outside], atol=1e-6) for d in donors)  # the rest is a donor's
        swapped += int(not np.allclose(image, before))
    assert swapped > 0
    data.set_epoch(0)
    first = data[0]["image"]
    data.set_epoch(0)
    assert torch.equal(first, data[0]["image"])  # drawn from (seed, epoch, index): resumable


def test_context_swap_keeps_the_masks_on_a_fixed_finding_free_donor(tiny_cache):
    from hegl_cli.data.cache import CachedSplit
    from hegl_cli.data.swap import context_swap, finding_free_pairing, swappable

    split = CachedSplit(tiny_cache, "train")
    perturb = context_swap(split, seed=5)
    donors = finding_free_pairing(split.labels, seed=5)
    index = np.arange(len(split))
    images = torch.from_numpy(np.stack([split.image(int(i)) for i in index]))[:, None]
    out = perturb(images, index)
    ok = swappable(split)
    assert ok.any() and torch.equal(perturb(images, index), out)  # fixed pairing
    for i in index:
        keep = split.masks(int(i)).max(0).astype(bool)
        got, before = out[i, 0].numpy(), images[i, 0].numpy()
        if not ok[i]:
            np.testing.assert_array_equal(got, before)
            continue
        donor = split.image(int(donors[i]))
        np.testing.assert_allclose(got[keep], before[keep], atol=1e-6)
        np.testing.assert_allclose(got[~keep], donor[~keep], atol=1e-6)
