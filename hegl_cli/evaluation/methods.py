"""Every explanation method of :mod:`hegl_cli.models.explainers`, scored by the same numbers.

On one fixed set of positive (image, class) pairs with an expert mask (``eval.method_pairs``, drawn
once by seed, the same for every method):

- alignment (:mod:`.alignment`): pointing game, energy in mask (and a flat map's), Dice/IoU at patch
  and at pixel resolution;
- faithfulness (:mod:`.faithfulness`): deletion/insertion areas by the method's patch order against
  a random order, one patch per step by default, the baseline of ``eval.faithfulness_baseline``;
- seconds per image for the maps.

Sanity check (Adebayo et al., 2018, "Sanity checks for saliency maps"): cascading model-parameter
randomisation from the top: the class heads, then each decoder layer from the last, then the
projections between encoder and decoder, then each encoder block from the last, then the patch
embedding. After each stage the maps of ``eval.sanity_pairs`` pairs are compared with the trained
model's by Spearman rank correlation (mean over pairs). A method whose maps still correlate at
:data:`SURVIVES` or more once every parameter is random does not depend on the model: it is
flagged. Label randomisation (retraining on shuffled labels) is not run: it costs a training.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from hegl_cli.data.labels import annotated_positives
from hegl_cli.evaluation.alignment import (
    energy_in_mask,
    patch_coverage,
    pixel_overlap,
    pointing_game,
    top_share_overlap,
    uniform_energy_baseline,
)
from hegl_cli.evaluation.faithfulness import deletion_insertion
from hegl_cli.models.explainers import Maps, explain_batch

SURVIVES = 0.5  # mean Spearman similarity to the trained model's maps, after every stage


def method_pairs(labels: np.ndarray, has_mask: np.ndarray, max_pairs: int, seed: int = 0) -> np.ndarray:
    """(K, 2) (image, class) rows: positive pairs with a mask, up to ``max_pairs``, drawn once by ``seed``."""
    pairs = np.argwhere(annotated_positives(labels, has_mask))
    if len(pairs) > max_pairs:
        pairs = pairs[np.sort(np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False))]
    return pairs


def maps_for_pairs(model: nn.Module, images_fn, pairs: np.ndarray, method: str, batch: int = 16
                   ) -> tuple[Maps, float]:
    """One method's maps of every pair, (K, 1, h, w) and (K, 1, S, S) in pair order, and seconds per image."""
    by_image: dict[int, list[int]] = {}
    for row, (i, _) in enumerate(pairs):
        by_image.setdefault(int(i), []).append(row)
    patch: list[torch.Tensor | None] = [None] * len(pairs)
    image: list[torch.Tensor | None] = [None] * len(pairs)
    images = list(by_image)
    start = time.perf_counter()
    for k in range(0, len(images), batch):
        chunk = images[k : k + batch]
        classes = sorted({int(pairs[r][1]) for i in chunk for r in by_image[i]})
        maps = explain_batch(model, torch.stack([images_fn(i) for i in chunk]), classes, method)
        for b, i in enumerate(chunk):
            for r in by_image[i]:
                j = classes.index(int(pairs[r][1]))
                patch[r], image[r] = maps.patch[b, j : j + 1], maps.image[b, j : j + 1]
    seconds = (time.perf_counter() - start) / max(1, len(images))
    return Maps(torch.stack(patch), torch.stack(image)), seconds  # type: ignore[arg-type]


def alignment_of(maps: Maps, masks: np.ndarray, share: float) -> dict[str, float]:
    """Mean alignment of maps (K, 1, h, w) / (K, 1, S, S) with 0/1 pixel masks (K, S, S)."""
    patch = maps.patch[:, 0].numpy()
    cov = patch_coverage(masks, patch.shape[-2:])
    dice, iou = top_share_overlap(patch, cov, share)
    dice_px, iou_px = pixel_overlap(maps.image[:, 0].numpy(), masks, share)
    return {"pointing_game": float(pointing_game(patch, cov).mean()), "energy_in_mask": float(energy_in_mask(patch, cov).mean()),
            "energy_uniform": float(uniform_energy_baseline(cov).mean()), "dice": float(dice.mean()),
            "iou": float(iou.mean()), "dice_pixel": float(dice_px.mean()), "iou_pixel": float(iou_px.mean())}


def faithfulness_of(model: nn.Module, images_fn, pairs: np.ndarray, maps: Maps, steps: int, baseline: str,
                    device: torch.device, seed: int = 0, precision: str = "fp32") -> dict[str, float]:
    """Mean deletion/insertion areas by the maps' order and by random orders (one per pair)."""
    rng = np.random.default_rng(seed)
    rows = [deletion_insertion(model, images_fn(int(i)), int(c), maps.patch[k, 0].numpy(), steps, device, rng, baseline,
                               precision) for k, (i, c) in enumerate(pairs)]
    out = {key.replace("_attention", "_method"): float(np.mean([r[key] for r in rows])) for key in rows[0]}
    out["deletion_gain"] = out["deletion_random"] - out["deletion_method"]
    out["insertion_gain"] = out["insertion_method"] - out["insertion_random"]
    return out


def score_methods(model: nn.Module, images_fn, masks_fn, labels: np.ndarray, has_mask: np.ndarray,
                  methods: list[str], cfg, device: torch.device, log=lambda *_: None,
                  precision: str = "fp32") -> dict[str, Any]:
    """Alignment, faithfulness and speed of every method on the same pairs; ``masks_fn(i)`` -> (C, S, S)."""
    pairs = method_pairs(labels, has_mask, cfg.method_pairs)
    if not len(pairs):
        return {"pairs": 0, "methods": {}, "note": "no positive (image, class) pair with a mask in this split"}
    masks = np.stack([masks_fn(int(i))[int(c)] for i, c in pairs])
    out: dict[str, Any] = {"pairs": int(len(pairs)), "steps": cfg.faithfulness_steps or None,
                           "baseline": cfg.faithfulness_baseline, "top_share": cfg.top_share, "methods": {}}
    for method in methods:
        log(f"explanation method {method}: maps, alignment, faithfulness")
        maps, seconds = maps_for_pairs(model, images_fn, pairs, method)
        out["methods"][method] = {**alignment_of(maps, masks, cfg.top_share),
                                  **faithfulness_of(model, images_fn, pairs, maps, cfg.faithfulness_steps,
                                                    cfg.faithfulness_baseline, device, precision=precision),
                                  "seconds_per_image": seconds}
    return out


# ---- sanity check: cascading parameter randomisation ----------------------------------------------

def randomisation_stages(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """(name, modules) from the top of the model down; each stage adds its modules to the random set."""
    inner = getattr(model, "model", model)
    stages: list[tuple[str, list[nn.Module]]] = [("class heads", [inner.head])]
    for k in reversed(range(len(inner.decoder.layers))):
        stages.append((f"decoder layer {k}", [inner.decoder.layers[k]]))
    stages.append(("decoder norm, queries and memory projection", [inner.decoder.norm, inner.query_proj, inner.memory_proj]))
    backbone = inner.encoder.backbone
    blocks = list(getattr(backbone, "blocks", []))
    if blocks:
        stages.append(("encoder norm", [m for m in (getattr(backbone, "norm", None), getattr(backbone, "fc_norm", None))
                                        if isinstance(m, nn.Module)]))
        for k in reversed(range(len(blocks))):
            stages.append((f"encoder block {k}", [blocks[k]]))
        stages.append(("patch embedding", [m for m in (getattr(backbone, "patch_embed", None),) if m is not None]))
    else:
        stages.append(("encoder", [backbone]))
    return stages


@torch.no_grad()
def randomise(modules: list[nn.Module], generator: torch.Generator) -> None:
    """Replace every parameter of ``modules`` by Gaussian noise with its own mean and std (ones' std 0.02)."""
    for module in modules:
        for p in module.parameters():
            std = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.02
            p.copy_(torch.randn(p.shape, generator=generator) * std + float(p.mean()))


def spearman_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over pairs of Spearman's rank correlation of two (K, 1, h, w) map sets (0 where one is flat)."""
    values = []
    for x, y in zip(a.flatten(1).numpy(), b.flatten(1).numpy()):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            values.append(1.0 if np.ptp(x) == np.ptp(y) == 0 else 0.0)
            continue
        values.append(float(stats.spearmanr(x, y).statistic))
    return float(np.mean(values))


def sanity_check(model: nn.Module, images_fn, pairs: np.ndarray, methods: list[str], seed: int = 0,
                 log=lambda *_: None) -> dict[str, Any]:
    """Per method: similarity to the trained model's maps after each cumulative randomisation stage."""
    reference = {m: maps_for_pairs(model, images_fn, pairs, m)[0].patch for m in methods}
    randomised = copy.deepcopy(model).cpu()
    inner = getattr(randomised, "model", randomised)
    generator = torch.Generator().manual_seed(seed)
    curves: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for name, modules in randomisation_stages(randomised):
        randomise(modules, generator)
        if name.startswith("decoder norm"):
            randomise_positions(inner, generator)
        log(f"sanity check: randomised up to {name}")
        for m in methods:
            maps = maps_for_pairs(randomised, images_fn, pairs, m)[0].patch
            curves[m].append({"stage": name, "similarity": spearman_similarity(reference[m], maps)})
    return {"pairs": int(len(pairs)), "survives_at": SURVIVES,
            "methods": {m: {"stages": c, "final_similarity": c[-1]["similarity"],
                            "flagged": bool(c[-1]["similarity"] >= SURVIVES)} for m, c in curves.items()}}


@torch.no_grad()
def randomise_positions(inner: nn.Module, generator: torch.Generator) -> None:
    """The decoder's learned memory positions and the learned queries (when the model has them)."""
    for p in (inner.decoder.memory_pos, getattr(inner, "learned_queries", None)):
        if p is not None:
            p.copy_(torch.randn(p.shape, generator=generator) * max(float(p.std()), 0.02))
