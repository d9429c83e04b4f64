"""Do the maps explain the decisions? Deletion/insertion curves and shortcut reliance (for the
twin-free audit from the expert masks, see :mod:`hegl_cli.evaluation.context_audit`).

Deletion: remove patches from most to least attended (replace them with the baseline: a blurred
copy of the image by default, or its mean, or black; :mod:`hegl_cli.models.perturb`) and track the
class probability; a faithful map makes it fall fast (low area). Insertion: start from the baseline
and reveal patches in the same order; a faithful map makes it rise fast (high area). The same
curves for a random patch order are the reference: a map is only faithful to the extent that it
beats random. ``steps`` 0 (the default) removes one patch per step, so that a random order cannot
tie a perfect map by the coarseness of the curve.

Shortcut reliance: mean |p(x) - p(x')| over images and classes, where x' differs from x only by
the spurious cue (the built-in dataset's counterfactual twin).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hegl_cli.data.labels import positive
from hegl_cli.models.inference import predict_images
from hegl_cli.models.perturb import baseline as baseline_of


def patch_masks(order: np.ndarray, steps: int, grid: tuple[int, int], size: int) -> torch.Tensor:
    """(steps + 1, 1, S, S) masks; mask k covers the first round(k/steps * P) patches of ``order``."""
    h, w = grid
    n = h * w
    masks = torch.zeros(steps + 1, n)
    for k in range(steps + 1):
        count = int(round(k / steps * n))
        masks[k, torch.as_tensor(order[:count], dtype=torch.long)] = 1.0
    masks = masks.view(steps + 1, 1, h, w)
    return F.interpolate(masks, size=(size, size), mode="nearest")


def curve_area(values: np.ndarray) -> float:
    """Area under a curve sampled at equally spaced fractions 0..1 (trapezoid rule)."""
    values = np.asarray(values, dtype=np.float64)
    return float(((values[1:] + values[:-1]) / 2).mean()) if len(values) > 1 else float(values[0])


def deletion_insertion(
    model: torch.nn.Module, image: torch.Tensor, class_index: int, attention: np.ndarray, steps: int,
    device: torch.device, rng: np.random.Generator, baseline: str = "blur", precision: str = "fp32",
) -> dict[str, float]:
    """Deletion and insertion areas for one (image, class), by the map's order and by a random order.

    Args:
        image: (1, S, S) in [0, 1].
        attention: (h, w) this class's map (any method's, at patch resolution).
        steps: curve points after the first; 0 = one per patch.
        precision: what the forward passes compute in (fp32 | bf16).
    """
    size = image.shape[-1]
    grid = attention.shape
    steps = steps or attention.size
    replaced = baseline_of(image.unsqueeze(0), baseline)[0]
    out: dict[str, float] = {}
    orders = {"attention": np.argsort(-attention.reshape(-1), kind="stable"),
              "random": rng.permutation(attention.size)}
    for name, order in orders.items():
        masks = patch_masks(order, steps, grid, size)  # (K, 1, S, S)
        deleted = image * (1 - masks) + replaced * masks
        inserted = replaced * (1 - masks) + image * masks
        probs, _ = predict_images(model, torch.cat([deleted, inserted]), device, precision)
        p = probs[:, class_index].numpy()
        out[f"deletion_{name}"] = curve_area(p[: steps + 1])
        out[f"insertion_{name}"] = curve_area(p[steps + 1 :])
    return out


def faithfulness_pairs(labels: np.ndarray, max_pairs: int, seed: int = 0) -> np.ndarray:
    """(K, 2) (image, class) rows: up to ``max_pairs`` positive pairs, drawn once by ``seed``, in order."""
    rng = np.random.default_rng(seed)
    pairs = np.argwhere(positive(labels))
    if len(pairs) > max_pairs:
        pairs = pairs[np.sort(rng.choice(len(pairs), max_pairs, replace=False))]
    return pairs


def faithfulness_scores(
    model: torch.nn.Module, images_fn, attention: np.ndarray, labels: np.ndarray, classes: list[str],
    steps: int, max_pairs: int, device: torch.device, seed: int = 0, baseline: str = "blur",
    pairs: np.ndarray | None = None, precision: str = "fp32",
) -> dict:
    """Mean deletion/insertion areas over up to ``max_pairs`` positive (image, class) pairs.

    Args:
        images_fn: ``images_fn(i)`` -> (1, S, S) tensor of image ``i``.
        attention: (N, C, h, w) maps of one method; labels: (N, C).
        pairs: the (image, class) rows to score (default: :func:`faithfulness_pairs`).
    """
    rng = np.random.default_rng(seed)
    if pairs is None:
        pairs = faithfulness_pairs(labels, max_pairs, seed)
        rng = np.random.default_rng(seed)  # the same random orders whichever way the pairs came
    rows = [deletion_insertion(model, images_fn(int(i)), int(c), attention[i, c], steps, device, rng, baseline,
                               precision) for i, c in pairs]
    if not rows:
        return {"pairs": 0}
    report = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    report["deletion_gain"] = report["deletion_random"] - report["deletion_attention"]
    report["insertion_gain"] = report["insertion_attention"] - report["insertion_random"]
    report["pairs"] = len(rows)
    report["steps"] = steps or int(attention[0, 0].size)
    report["baseline"] = baseline
    return report


def shortcut_reliance(probs: np.ndarray, twin_probs: np.ndarray, classes: list[str]) -> dict:
    """Mean |p(x) - p(x')| over images and classes (and per class); x' = x with the cue toggled."""
    diff = np.abs(probs - twin_probs)  # (N, C)
    return {"mean": float(diff.mean()) if diff.size else None,
            "per_class": {name: float(diff[:, c].mean()) for c, name in enumerate(classes)},
            "max": float(diff.max()) if diff.size else None, "images": int(len(diff))}
