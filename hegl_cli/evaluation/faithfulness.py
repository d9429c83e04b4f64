"""Do the maps explain the decisions? Deletion/insertion curves and shortcut reliance.

Deletion: remove patches from most to least attended (replace them with a blurred copy of the
image) and track the class probability; a faithful map makes it fall fast (low area). Insertion:
start from the blurred image and reveal patches in the same order; a faithful map makes it rise
fast (high area). The same curves for a random patch order are the reference: a map is only
faithful to the extent that it beats random.

Shortcut reliance: mean |p(x) - p(x')| over images and classes, where x' differs from x only by
the spurious cue (the built-in dataset's counterfactual twin).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hegl_cli.data.swap import finding_free_pairing, paste
from hegl_cli.engine.predict import predict_images


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, 1, S, S) images (separable, reflect padding)."""
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


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
    device: torch.device, rng: np.random.Generator,
) -> dict[str, float]:
    """Deletion and insertion areas for one (image, class), by attention order and by a random order.

    Args:
        image: (1, S, S) in [0, 1].
        attention: (h, w) this class's map.
    """
    size = image.shape[-1]
    grid = attention.shape
    blurred = blur(image.unsqueeze(0), sigma=max(1.0, size / 16))[0]
    out: dict[str, float] = {}
    orders = {"attention": np.argsort(-attention.reshape(-1), kind="stable"),
              "random": rng.permutation(attention.size)}
    for name, order in orders.items():
        masks = patch_masks(order, steps, grid, size)  # (K, 1, S, S)
        deleted = image * (1 - masks) + blurred * masks
        inserted = blurred * (1 - masks) + image * masks
        probs, _ = predict_images(model, torch.cat([deleted, inserted]), device)
        p = probs[:, class_index].numpy()
        out[f"deletion_{name}"] = curve_area(p[: steps + 1])
        out[f"insertion_{name}"] = curve_area(p[steps + 1 :])
    return out


def faithfulness_report(
    model: torch.nn.Module, images_fn, attention: np.ndarray, labels: np.ndarray, classes: list[str],
    steps: int, max_pairs: int, device: torch.device, seed: int = 0,
) -> dict:
    """Mean deletion/insertion areas over up to ``max_pairs`` positive (image, class) pairs.

    Args:
        images_fn: ``images_fn(i)`` -> (1, S, S) tensor of image ``i``.
        attention: (N, C, h, w); labels: (N, C).
    """
    rng = np.random.default_rng(seed)
    pairs = np.argwhere(np.nan_to_num(labels) > 0.5)
    if len(pairs) > max_pairs:
        pairs = pairs[np.sort(rng.choice(len(pairs), max_pairs, replace=False))]
    rows = [deletion_insertion(model, images_fn(int(i)), int(c), attention[i, c], steps, device, rng)
            for i, c in pairs]
    if not rows:
        return {"pairs": 0}
    report = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    report["deletion_gain"] = report["deletion_random"] - report["deletion_attention"]
    report["insertion_gain"] = report["insertion_attention"] - report["insertion_random"]
    report["pairs"] = len(rows)
    report["steps"] = steps
    return report


def shortcut_reliance(probs: np.ndarray, twin_probs: np.ndarray, classes: list[str]) -> dict:
    """Mean |p(x) - p(x')| over images and classes (and per class); x' = x with the cue toggled."""
    diff = np.abs(probs - twin_probs)  # (N, C)
    return {"mean": float(diff.mean()) if diff.size else None,
            "per_class": {name: float(diff[:, c].mean()) for c, name in enumerate(classes)},
            "max": float(diff.max()) if diff.size else None, "images": int(len(diff))}


def context_audit(model: torch.nn.Module, split, device: torch.device, batch_size: int = 64, seed: int = 0
                  ) -> dict | None:
    """Does the decision come from the lesion or its context? No counterfactual twin needed.

    - ``context_reliance``: mean |p(x) - p(x')| over images with an expert mask, where x' keeps the
      masked regions of x and takes everything else from a finding-free image of the same split;
    - ``lesion_necessity``: over positive (image, class) pairs with a mask, mean p(x) - p(x''), where
      x'' replaces the class's masked region with the same finding-free content.
    Chance levels: the same with each mask moved to a random place (np.roll, seeded), i.e. what
    swapping an arbitrary region of the same area does. A model that decides from the lesion shows
    low context reliance and lesion necessity well above its chance level.
    """
    from hegl_cli.engine.predict import predict_split

    donors = finding_free_pairing(split.labels, seed)
    annotated = np.flatnonzero(split.has_mask.any(1))
    if donors is None or len(annotated) == 0:
        return None
    size = split.image_size
    shifts = np.random.default_rng(seed + 1).integers(size // 4, 3 * size // 4, size=(len(split), 2))

    def region(i: int, classes: np.ndarray | None, moved: bool) -> torch.Tensor:
        masks = split.masks(int(i))
        keep = (masks if classes is None else masks[classes]).max(0).astype(np.float32)
        if moved:
            keep = np.roll(keep, tuple(shifts[int(i)]), axis=(0, 1))
        return torch.from_numpy(keep)

    def swap(keep_lesion: bool, moved: bool, cls: np.ndarray | None = None):
        def perturb(images: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
            out = images.clone()
            for k, i in enumerate(indices):
                m = region(i, None if cls is None else cls[k:k + 1], moved)
                donor = torch.from_numpy(split.image(int(donors[int(i)])))
                inside, outside = (out[k, 0], donor) if keep_lesion else (donor, out[k, 0])
                out[k, 0] = paste(m, inside, outside)
            return out
        return perturb

    base = predict_split(model, split, device, batch_size, annotated).probs
    report: dict = {"images": int(len(annotated))}
    for moved, suffix in ((False, ""), (True, "_chance")):
        ctx = predict_split(model, split, device, batch_size, annotated, perturb=swap(True, moved)).probs
        diff = np.abs(base - ctx)
        report[f"context_reliance{suffix}"] = float(diff.mean())
        report[f"context_reliance_per_class{suffix}"] = {c: float(diff[:, j].mean()) for j, c in enumerate(split.classes)}
    pairs = np.argwhere((np.nan_to_num(split.labels) > 0.5) & split.has_mask)
    if len(pairs):
        full = predict_split(model, split, device, batch_size, pairs[:, 0]).probs[np.arange(len(pairs)), pairs[:, 1]]
        for moved, suffix in ((False, ""), (True, "_chance")):
            cut = predict_split(model, split, device, batch_size, pairs[:, 0],
                                perturb=swap(False, moved, pairs[:, 1])).probs[np.arange(len(pairs)), pairs[:, 1]]
            drop = full - cut
            report[f"lesion_necessity{suffix}"] = float(drop.mean())
            report[f"lesion_necessity_per_class{suffix}"] = {
                c: float(drop[pairs[:, 1] == j].mean()) for j, c in enumerate(split.classes) if (pairs[:, 1] == j).any()}
        report["pairs"] = int(len(pairs))
    return report
