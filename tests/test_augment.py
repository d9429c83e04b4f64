"""Joint augmentation (hegl_cli.data.augment): a mask moves with its image under every transform,
intensity changes the image only, draws are reproducible and leave the global RNG alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hegl_cli.data.augment import AugmentSpec, augment, build_transform


def _scene(size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A binary image (1, S, S) and two masks (2, S, S) of asymmetric blobs; the image is the first mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((2, size, size), np.uint8)
    for k in range(2):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        masks[k] = ((yy - cy) ** 2 / 60.0 + (xx - cx) ** 2 / 25.0 <= 1) | ((yy == cy) & (xx > cx) & (xx < cx + 12))
    return torch.from_numpy(masks[:1].astype(np.float32)), torch.from_numpy(masks)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum()) / max(1, int((a | b).sum()))


@pytest.mark.parametrize("seed", range(8))
def test_flip_and_integer_shift_move_the_mask_pixel_exactly(seed):
    image, masks = _scene(seed=seed)
    spec = AugmentSpec(geometry="affine", flip=True, degrees=0.0, scale=(1.0, 1.0), translate=0.15)
    out_image, out_masks = augment(build_transform(spec), image, masks, [seed, 0, 0])
    assert out_masks.dtype == masks.dtype and out_masks.shape == masks.shape
    assert torch.equal(out_image[0] > 0.5, out_masks[0].bool())  # the same pixels, exactly
    moved = not torch.equal(out_masks, masks)
    assert moved or seed > 5  # almost every draw moves something


def test_flips_happen_and_are_exact():
    image, masks = _scene(seed=3)
    flips = 0
    for k in range(20):
        out_image, out_masks = augment(build_transform(AugmentSpec(flip=True)), image, masks, [k])
        if not torch.equal(out_masks, masks):
            assert torch.equal(out_masks, masks.flip(-1)) and torch.equal(out_image, image.flip(-1))
            flips += 1
    assert 3 <= flips <= 17


@pytest.mark.parametrize("seed", range(8))
def test_rotation_and_scale_keep_image_and_mask_together(seed):
    image, masks = _scene(seed=seed)
    spec = AugmentSpec(geometry="affine", degrees=30.0)  # wider than the default 10: a harder case
    out_image, out_masks = augment(build_transform(spec), image, masks, [seed, 1, 2])
    assert _iou(out_image[0] > 0.5, out_masks[0]) >= 0.95
    assert set(torch.unique(out_masks).tolist()) <= {0, 1}  # nearest for masks: still binary


def test_intensity_changes_the_image_and_never_the_masks():
    image = torch.rand(1, 48, 48)
    _, masks = _scene(48)
    changed = 0
    for k in range(10):
        out_image, out_masks = augment(build_transform(AugmentSpec(intensity="strong")), image, masks, [k])
        assert torch.equal(out_masks, masks)
        assert 0 <= float(out_image.min()) and float(out_image.max()) <= 1
        changed += not torch.allclose(out_image, image)
    assert changed >= 8


def test_draws_repeat_by_seed_and_leave_the_global_rng_alone():
    image, masks = _scene()
    transform = build_transform(AugmentSpec(geometry="affine", intensity="mild"))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = augment(transform, image, masks, [0, 4, 9])
    assert torch.equal(torch.get_rng_state(), before)
    b = augment(transform, image, masks, [0, 4, 9])
    c = augment(transform, image, masks, [0, 5, 9])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_nothing_asked_builds_nothing():
    assert build_transform(AugmentSpec()) is None


def test_the_training_dataset_moves_masks_with_images_after_the_swap(tiny_cache):
    """Through XrayDataset (background swap, then the joint transform): wherever a mask is, the
    augmented image shows the same lesion pixels it showed before, moved by the same draw."""
    from hegl_cli.data.cache import CachedSplit
    from hegl_cli.data.dataset import XrayDataset

    split = CachedSplit(tiny_cache, "train")
    plain = XrayDataset(split, "background_swap", seed=3)
    moved = XrayDataset(split, "background_swap", seed=3,
                        transform=AugmentSpec(geometry="affine", flip=True, degrees=0.0, scale=(1.0, 1.0), translate=0.2))
    checked = 0
    for index in range(len(split)):
        a, b = plain[index], moved[index]
        assert torch.equal(a["labels"], b["labels"])
        if a["masks"].sum() == 0:
            continue
        # the transform is a flip and/or an integer shift: undo it by searching the one that maps masks
        found = False
        for flip in (False, True):
            src = a["masks"].flip(-1) if flip else a["masks"]
            for dy in range(-7, 8):
                for dx in range(-7, 8):
                    shifted = torch.roll(src, (dy, dx), (-2, -1))
                    if torch.equal(shifted * b["masks"], b["masks"]) and shifted.sum() >= b["masks"].sum():
                        img = torch.roll(a["image"].flip(-1) if flip else a["image"], (dy, dx), (-2, -1))
                        inside = b["masks"].amax(0).bool()
                        found = found or torch.allclose(img[0][inside], b["image"][0][inside])
        assert found, index
        checked += 1
    assert checked >= 5
