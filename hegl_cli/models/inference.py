"""Running a model: on a batch of images, or batched over a cache split (optionally perturbed).

Shared by training (validation), evaluation (faithfulness, context audit) and every app. ``precision``
is the one in force (:mod:`hegl_cli.engine.precision` resolves it): ``bf16`` runs the forward under
bf16 autocast, on a CPU as on CUDA; the probabilities and maps come back float32 either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from hegl_cli.data.cache import CachedSplit


@dataclass
class Predictions:
    probs: np.ndarray  # float32 (N, C)
    attention: np.ndarray  # float32 (N, C, h, w), each map sums to 1
    index: np.ndarray  # int (N,) indices into the split


def autocast_for(device: torch.device, precision: str = "fp32"):
    """``bf16``: bf16 autocast on ``device`` (CPU or CUDA); ``fp32``: autocast off (also inside an
    enclosing autocast region)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"unknown precision {precision!r} (fp32 | bf16)")
    return torch.autocast(device.type, enabled=False)


@torch.inference_mode()
def predict_images(model: torch.nn.Module, images: torch.Tensor, device: torch.device, precision: str = "fp32"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, 1, S, S) in [0, 1] -> probs (B, C), attention (B, C, h, w), on the CPU, float32."""
    with autocast_for(device, precision):
        out = model(images.to(device))
    return torch.sigmoid(out["logits"].float()).cpu(), out["attention"].float().cpu()


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, device: torch.device, precision: str = "fp32"
                   ) -> torch.Tensor:
    """images (B, 1, S, S) in [0, 1] -> logits (B, C) on the CPU, float32 (what a recalibration reads)."""
    with autocast_for(device, precision):
        out = model(images.to(device))
    return out["logits"].float().cpu()


def split_logits(model: torch.nn.Module, split: CachedSplit, device: torch.device, batch_size: int = 64,
                 precision: str = "fp32") -> np.ndarray:
    """The model's logits (N, C) float32 over every image of ``split``, in eval mode, in ``precision``."""
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(split), batch_size):
        rows = range(start, min(start + batch_size, len(split)))
        images = torch.from_numpy(np.stack([split.image(i) for i in rows])).unsqueeze(1)
        chunks.append(predict_logits(model, images, device, precision).numpy())
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, len(split.classes)), np.float32)


def predict_split(
    model: torch.nn.Module,
    split: CachedSplit,
    device: torch.device,
    batch_size: int = 64,
    indices: np.ndarray | None = None,
    perturb: Callable[[torch.Tensor, np.ndarray], torch.Tensor] | None = None,
    precision: str = "fp32",
) -> Predictions:
    """Run the model (eval mode) over ``indices`` of ``split`` (all by default), in ``precision``.

    ``perturb(images, batch_indices)`` may change the [0, 1] images before the forward pass.
    """
    was_training = model.training
    model.eval()
    indices = np.arange(len(split)) if indices is None else np.asarray(indices)
    probs, maps = [], []
    for start in range(0, len(indices), batch_size):
        batch_idx = indices[start : start + batch_size]
        images = torch.from_numpy(np.stack([split.image(int(i)) for i in batch_idx])).unsqueeze(1)
        if perturb is not None:
            images = perturb(images, batch_idx)
        p, a = predict_images(model, images, device, precision)
        probs.append(p.numpy())
        maps.append(a.numpy())
    model.train(was_training)
    h, w = getattr(model, "grid", (0, 0))
    n_classes = len(split.classes)
    return Predictions(
        probs=np.concatenate(probs) if probs else np.zeros((0, n_classes), np.float32),
        attention=np.concatenate(maps) if maps else np.zeros((0, n_classes, h, w), np.float32),
        index=indices,
    )
