"""`hegl predict` throughput vs the model's own forward pass, measured in one run on the same images.

Prints images/s for: the model forward on already decoded tensors (the ceiling), and `hegl predict`
end to end on PNG files (decode + preprocess in loader workers + forward + CSV), and their ratio.

Usage: python benchmarks/bench_predict.py [--images 256] [--source-size 512] [--workers 2] [--batch 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hegl_cli.apps.predict import predict
from hegl_cli.config import load_config
from hegl_cli.engine.checkpoint import save_checkpoint
from hegl_cli.models.model import build_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--source-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    cfg = load_config(None, ["model.text_encoder=none", "train.device=cpu"])  # the demo model, 128 px
    classes = ["Nodule", "Mass", "Effusion", "Consolidation"]
    model = build_model(classes, cfg.model, cfg.data.image_size).eval()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = root / "run"
        run.mkdir()
        save_checkpoint(run, "best", model, cfg, {"epoch": 1, "thresholds": [0.5] * 4, "threshold_metric": "mcc"})
        rng = np.random.default_rng(0)
        folder = root / "images"
        folder.mkdir()
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 255, (args.source_size,) * 2, dtype=np.uint8)).save(folder / f"{i:05d}.png")
        images = torch.rand(args.images, 1, cfg.data.image_size, cfg.data.image_size)
        with torch.inference_mode():
            model(images[: args.batch])  # warm-up
            t0 = time.perf_counter()
            for start in range(0, args.images, args.batch):
                model(images[start : start + args.batch])
            forward = args.images / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = predict([folder], run, root / "p.csv", device="cpu", batch_size=args.batch, workers=args.workers,
                         progress=False)
        end_to_end = result.rows / (time.perf_counter() - t0)
    print(f"model forward (decoded tensors, batch {args.batch}): {forward:8.1f} images/s")
    print(f"hegl predict ({args.source_size} px PNG, {args.workers} workers): {end_to_end:8.1f} images/s")
    print(f"ratio predict / forward: {end_to_end / forward:.2f}")


if __name__ == "__main__":
    main()
