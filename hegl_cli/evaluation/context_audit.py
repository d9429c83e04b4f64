"""Does the decision come from the lesion or from its context? An audit from the expert masks alone.

No counterfactual twin is needed: the masked regions are moved onto (or cut out of) a finding-free
image of the same split, and the probabilities are compared with the same swap of a randomly placed
region of the same area (the chance level).
"""

from __future__ import annotations

import numpy as np
import torch

from hegl_cli.data.labels import annotated_positives
from hegl_cli.data.swap import finding_free_pairing, paste
from hegl_cli.models.inference import predict_split


def context_audit(model: torch.nn.Module, split, device: torch.device, batch_size: int = 64, seed: int = 0,
                  precision: str = "fp32") -> dict | None:
    """Does the decision come from the lesion or its context? No counterfactual twin needed.

    - ``context_reliance``: mean |p(x) - p(x')| over images with an expert mask, where x' keeps the
      masked regions of x and takes everything else from a finding-free image of the same split;
    - ``lesion_necessity``: over positive (image, class) pairs with a mask, mean p(x) - p(x''), where
      x'' replaces the class's masked region with the same finding-free content.
    Chance levels: the same with each mask moved to a random place (np.roll, seeded), i.e. what
    swapping an arbitrary region of the same area does. A model that decides from the lesion shows
    low context reliance and lesion necessity well above its chance level.
    """
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

    base = predict_split(model, split, device, batch_size, annotated, precision=precision).probs
    report: dict = {"images": int(len(annotated))}
    for moved, suffix in ((False, ""), (True, "_chance")):
        ctx = predict_split(model, split, device, batch_size, annotated, perturb=swap(True, moved),
                            precision=precision).probs
        diff = np.abs(base - ctx)
        report[f"context_reliance{suffix}"] = float(diff.mean())
        report[f"context_reliance_per_class{suffix}"] = {c: float(diff[:, j].mean()) for j, c in enumerate(split.classes)}
    pairs = np.argwhere(annotated_positives(split.labels, split.has_mask))
    if len(pairs):
        full = predict_split(model, split, device, batch_size, pairs[:, 0],
                             precision=precision).probs[np.arange(len(pairs)), pairs[:, 1]]
        for moved, suffix in ((False, ""), (True, "_chance")):
            cut = predict_split(model, split, device, batch_size, pairs[:, 0],
                                perturb=swap(False, moved, pairs[:, 1]),
                                precision=precision).probs[np.arange(len(pairs)), pairs[:, 1]]
            drop = full - cut
            report[f"lesion_necessity{suffix}"] = float(drop.mean())
            report[f"lesion_necessity_per_class{suffix}"] = {
                c: float(drop[pairs[:, 1] == j].mean()) for j, c in enumerate(split.classes) if (pairs[:, 1] == j).any()}
        report["pairs"] = int(len(pairs))
    return report
