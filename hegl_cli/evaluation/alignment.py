"""Do the maps sit on the expert masks? Definitions chosen and stated (README, "Metrics"):

All functions take maps (N, h, w) and the masks' patch coverage (N, h, w) in [0, 1] (the share of
each patch inside the mask, see :func:`hegl_cli.losses.mask_coverage`). A map is read as its
non-negative part: any method's map, signed or not, is a distribution of evidence once its
negative part is dropped and the rest normalised; a map with no positive mass is flat.

- pointing game: the map's peak patch overlaps the mask. Tied peaks share the credit: the score
  is the share of tied maxima inside the mask (the expected hit of a random tie-break), so a flat
  map scores the mask's share of patches wherever the mask is, never by position;
- energy in mask: the share of the map's mass inside the mask, ``sum(a * coverage)`` (mass spread
  uniformly within a patch); ``energy_uniform`` is the same for a flat map (chance level);
- Dice / IoU (patch): the map's top ``share`` of patches (every patch tied with the last one kept
  too) against the patches the mask overlaps; Dice / IoU (pixel), ``dice_pixel``: the same at image
  resolution, the map spread evenly over each patch's pixels, against the pixel mask (patch Dice
  inflates small masks: a 4 px box touches a whole patch);
- spread: ``effective_patches`` = 1 / sum(a^2) (a map uniform on k patches gives k) next to
  ``mask_patches``, the number of patches the mask touches: a map squeezed into fewer patches than
  its lesion covers shows ``effective_patches`` well below ``mask_patches``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hegl_cli.data.labels import annotated_positives
from hegl_cli.losses import mask_coverage


def as_distribution(maps: np.ndarray) -> np.ndarray:
    """(N, ...) maps -> their non-negative part over its total, flattened (N, P); none positive -> flat."""
    flat = np.clip(maps.reshape(len(maps), -1).astype(np.float64), 0, None)
    total = flat.sum(1, keepdims=True)
    return np.where(total > 0, flat / np.where(total > 0, total, 1), 1.0 / max(flat.shape[1], 1))


def pointing_game(maps: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """(N,) in [0, 1]: the share of each map's tied peak patches that overlap its mask."""
    flat_maps, inside = as_distribution(maps), coverage.reshape(len(coverage), -1) > 0
    peaks = np.isclose(flat_maps, flat_maps.max(1, keepdims=True), rtol=1e-6, atol=1e-12)
    return (peaks & inside).sum(1) / peaks.sum(1)


def energy_in_mask(maps: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """(N,) share of each map's (non-negative) mass inside its mask."""
    return (as_distribution(maps) * coverage.reshape(len(coverage), -1)).sum(1)


def top_share_selection(maps: np.ndarray, share: float) -> np.ndarray:
    """(N, P) bool: each map's top ``ceil(share * P)`` entries, and every entry tied with the last of them."""
    flat = as_distribution(maps)
    k = max(1, math.ceil(share * flat.shape[1]))
    kth = -np.partition(-flat, k - 1, axis=1)[:, k - 1 : k]
    return flat >= kth * (1 - 1e-6)


def _overlap(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inter = (pred & target).sum(1)
    union = (pred | target).sum(1)
    size = pred.sum(1) + target.sum(1)
    return 2 * inter / np.where(size > 0, size, 1), inter / np.where(union > 0, union, 1)


def top_share_overlap(maps: np.ndarray, coverage: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(dice (N,), iou (N,)) of each map's top share of patches (ties kept) vs. the mask's patches."""
    return _overlap(top_share_selection(maps, share), coverage.reshape(len(coverage), -1) > 0)


def pixel_overlap(image_maps: np.ndarray, masks: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(dice (N,), iou (N,)) at image resolution: maps (N, S, S) at their top share of pixels (ties
    kept) vs. the 0/1 pixel masks (N, S, S)."""
    return _overlap(top_share_selection(image_maps, share), masks.reshape(len(masks), -1) > 0)


def spread_to_pixels(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) patch maps -> (N, S, S), each patch's value on all its pixels (nearest)."""
    h, w = maps.shape[-2:]
    return np.repeat(np.repeat(maps, size // h, axis=-2), size // w, axis=-1)


def effective_patches(maps: np.ndarray) -> np.ndarray:
    """(N,) participation ratio 1 / sum(a^2) of each map (N, h, w), after normalising it to sum 1."""
    flat = maps.reshape(len(maps), -1)
    flat = flat / np.where(flat.sum(1, keepdims=True) > 0, flat.sum(1, keepdims=True), 1)
    return 1.0 / np.maximum((flat**2).sum(1), 1e-12)


def patch_coverage(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(N, S, S) 0/1 masks -> (N, h, w) coverage."""
    return mask_coverage(torch.from_numpy(masks).unsqueeze(1), grid).squeeze(1).numpy()


def alignment_scores(
    attention: np.ndarray, labels: np.ndarray, has_mask: np.ndarray, mask_fn, classes: list[str], share: float
) -> dict:
    """Mean pointing game / energy / Dice / IoU over positive (image, class) pairs that have a mask.

    Args:
        attention: (N, C, h, w).
        labels, has_mask: (N, C).
        mask_fn: ``mask_fn(i)`` -> (C, S, S) masks of image ``i`` (row of ``attention``).
    """
    grid = attention.shape[-2:]
    rows: list[tuple[int, int]] = [(i, c) for i, c in zip(*np.nonzero(annotated_positives(labels, has_mask)))]
    per_class: dict[str, dict[str, list[float]]] = {name: {"pointing_game": [], "energy_in_mask": [], "dice": [],
                                                           "iou": [], "dice_pixel": [], "iou_pixel": [],
                                                           "energy_uniform": [], "effective_patches": [],
                                                           "mask_patches": []} for name in classes}
    by_image: dict[int, list[int]] = {}
    for i, c in rows:
        by_image.setdefault(int(i), []).append(int(c))
    for i, cs in by_image.items():
        cov = patch_coverage(mask_fn(i)[cs], grid)
        maps = attention[i, cs]
        keep = cov.reshape(len(cs), -1).sum(1) > 0
        if not keep.any():
            continue
        maps, cov = maps[keep], cov[keep]
        hits, energy = pointing_game(maps, cov), energy_in_mask(maps, cov)
        dice, iou = top_share_overlap(maps, cov, share)
        pixel_masks = mask_fn(i)[cs][keep]
        dice_px, iou_px = pixel_overlap(spread_to_pixels(maps, pixel_masks.shape[-1]), pixel_masks, share)
        chance = uniform_energy_baseline(cov)
        spread, touched = effective_patches(maps), (cov.reshape(len(cov), -1) > 0).sum(1)
        for j, c in enumerate(np.asarray(cs)[keep]):
            d = per_class[classes[c]]
            d["pointing_game"].append(float(hits[j]))
            d["energy_in_mask"].append(float(energy[j]))
            d["dice"].append(float(dice[j]))
            d["iou"].append(float(iou[j]))
            d["dice_pixel"].append(float(dice_px[j]))
            d["iou_pixel"].append(float(iou_px[j]))
            d["energy_uniform"].append(float(chance[j]))
            d["effective_patches"].append(float(spread[j]))
            d["mask_patches"].append(float(touched[j]))
    summary_per_class = {name: {k: (float(np.mean(v)) if v else None) for k, v in d.items()} | {"pairs": len(d["dice"])}
                         for name, d in per_class.items()}
    pooled = {k: [x for d in per_class.values() for x in d[k]]
              for k in ("pointing_game", "energy_in_mask", "dice", "iou", "dice_pixel", "iou_pixel", "energy_uniform",
                        "effective_patches", "mask_patches")}
    overall = {k: (float(np.mean(v)) if v else None) for k, v in pooled.items()}
    overall["pairs"] = len(pooled["dice"])
    overall["top_share"] = share
    return {"overall": overall, "per_class": summary_per_class}


def uniform_energy_baseline(coverage: np.ndarray) -> np.ndarray:
    """Energy in mask of a uniform map: the mask's share of the image (chance level)."""
    return coverage.reshape(len(coverage), -1).mean(1)
