"""Do the class attention maps sit on the expert masks?

All functions take maps (N, h, w) that sum to 1 and the masks' patch coverage (N, h, w) in [0, 1]
(the share of each patch inside the mask, see :func:`hegl_cli.losses.mask_coverage`).

- pointing game: the map's peak patch overlaps the mask;
- energy in mask: the share of attention mass inside the mask, ``sum(a * coverage)`` (attention
  spread uniformly within a patch); ``energy_uniform`` is the same for a flat map (chance level);
- Dice / IoU of the map thresholded at its top ``share`` of patches against the patches the mask
  overlaps;
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


def pointing_game(maps: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """(N,) bool: the peak patch of each map overlaps its mask."""
    flat_maps, flat_cov = maps.reshape(len(maps), -1), coverage.reshape(len(coverage), -1)
    peak = flat_maps.argmax(1)
    return flat_cov[np.arange(len(maps)), peak] > 0


def energy_in_mask(maps: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """(N,) share of each map's mass inside its mask."""
    flat_maps = maps.reshape(len(maps), -1)
    total = flat_maps.sum(1)
    inside = (flat_maps * coverage.reshape(len(coverage), -1)).sum(1)
    return inside / np.where(total > 0, total, 1)


def top_share_overlap(maps: np.ndarray, coverage: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(dice (N,), iou (N,)) of each map's top ``ceil(share * P)`` patches vs. the mask's patches."""
    flat_maps = maps.reshape(len(maps), -1)
    target = coverage.reshape(len(coverage), -1) > 0
    k = max(1, math.ceil(share * flat_maps.shape[1]))
    top = np.argsort(-flat_maps, axis=1, kind="stable")[:, :k]
    pred = np.zeros_like(target)
    np.put_along_axis(pred, top, True, axis=1)
    inter = (pred & target).sum(1)
    union = (pred | target).sum(1)
    size = pred.sum(1) + target.sum(1)
    return 2 * inter / np.where(size > 0, size, 1), inter / np.where(union > 0, union, 1)


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
                                                           "iou": [], "energy_uniform": [], "effective_patches": [],
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
        chance = uniform_energy_baseline(cov)
        spread, touched = effective_patches(maps), (cov.reshape(len(cov), -1) > 0).sum(1)
        for j, c in enumerate(np.asarray(cs)[keep]):
            d = per_class[classes[c]]
            d["pointing_game"].append(float(hits[j]))
            d["energy_in_mask"].append(float(energy[j]))
            d["dice"].append(float(dice[j]))
            d["iou"].append(float(iou[j]))
            d["energy_uniform"].append(float(chance[j]))
            d["effective_patches"].append(float(spread[j]))
            d["mask_patches"].append(float(touched[j]))
    summary_per_class = {name: {k: (float(np.mean(v)) if v else None) for k, v in d.items()} | {"pairs": len(d["dice"])}
                         for name, d in per_class.items()}
    pooled = {k: [x for d in per_class.values() for x in d[k]]
              for k in ("pointing_game", "energy_in_mask", "dice", "iou", "energy_uniform", "effective_patches",
                        "mask_patches")}
    overall = {k: (float(np.mean(v)) if v else None) for k, v in pooled.items()}
    overall["pairs"] = len(pooled["dice"])
    overall["top_share"] = share
    return {"overall": overall, "per_class": summary_per_class}


def uniform_energy_baseline(coverage: np.ndarray) -> np.ndarray:
    """Energy in mask of a uniform map: the mask's share of the image (chance level)."""
    return coverage.reshape(len(coverage), -1).mean(1)
