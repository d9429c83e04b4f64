"""The floor of the HA term: the lowest penalized-Dice loss (k=1) any attention map can reach
against each alignment target (``loss.ha_target``), per class, on a prepared cache.

A map is scaled to peak 1 before alignment, and the best map in [0, 1] against a target t under
soft Dice is a threshold of t, so the floor is the minimum over thresholds. ``coverage`` (the soft
share of each patch the mask covers) leaves a floor of about 0.5-0.8: no map can satisfy it.

    python benchmarks/ha_floor.py data/synthetic [--images 400]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hegl_cli.data.cache import CachedSplit
from hegl_cli.losses import alignment_target, mask_coverage, penalized_dice_loss, soft_dice

TARGETS = ("coverage", "peak", "binary")


def best_loss(target: torch.Tensor, k: float = 1.0) -> float:
    """Lowest penalized Dice loss of any map in [0, 1] against ``target`` (N,) in [0, 1]."""
    best = 1.0
    for tau in torch.unique(target[target > 0]):
        hit = (target >= tau).float()
        best = min(best, penalized_dice_loss(soft_dice(hit[None], target[None]), k).item())
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--patch", type=int, default=16)
    args = parser.parse_args()
    split = CachedSplit(args.cache, args.split)
    grid = (split.image_size // args.patch,) * 2
    floors: dict[str, dict[str, list[float]]] = {c: {t: [] for t in TARGETS} for c in split.classes}
    for i in range(min(len(split), args.images)):
        coverage = mask_coverage(torch.from_numpy(split.masks(i)).float()[None], grid)[0]
        for c, name in enumerate(split.classes):
            if split.has_mask[i, c] and coverage[c].sum() > 0:
                for how in TARGETS:
                    floors[name][how].append(best_loss(alignment_target(coverage[c], how).flatten()))
    print(f"HA floor (penalized Dice, k=1) on {args.cache} [{args.split}], {grid[0]}x{grid[1]} patches")
    print(f"{'class':<16}" + "".join(f"{t:>10}" for t in TARGETS) + "   pairs")
    for name, per in floors.items():
        if per[TARGETS[0]]:
            print(f"{name:<16}" + "".join(f"{np.mean(per[t]):>10.3f}" for t in TARGETS) + f"   {len(per[TARGETS[0]])}")


if __name__ == "__main__":
    main()
