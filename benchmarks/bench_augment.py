"""What joint augmentation costs: the training loader's images/s under each augmentation setting,
next to the model's training images/s (demo model, alpha = beta = 1), measured in one run.

The issue's target: the loader stays >= 5x the model with augmentation on (train.workers as configured:
0 loads in the training process, so the loader's rate is what one core gives).

Usage: python benchmarks/bench_augment.py [--images 320] [--batch 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from run import CLASSES, hegl_step, interleaved  # benchmarks/run.py
from torch.utils.data import DataLoader

from hegl_cli.apps.prepare import prepare_synthetic
from hegl_cli.config import load_config
from hegl_cli.data.augment import AugmentSpec
from hegl_cli.data.benchmark.generator import SyntheticSpec
from hegl_cli.data.cache import CachedSplit
from hegl_cli.data.dataset import XrayDataset
from hegl_cli.data.options import PrepareOptions

SETTINGS = {
    "none": ("none", AugmentSpec()),
    "affine": ("none", AugmentSpec(geometry="affine")),
    "intensity strong": ("none", AugmentSpec(intensity="strong")),
    "affine + intensity strong": ("none", AugmentSpec(geometry="affine", intensity="strong")),
    "swap + affine + intensity strong": ("background_swap", AugmentSpec(geometry="affine", intensity="strong")),
}


def loader_rate(split: CachedSplit, swap: str, spec: AugmentSpec, batch: int, workers: int) -> float:
    dataset = XrayDataset(split, swap, seed=0, transform=spec)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    t0, seen = time.perf_counter(), 0
    for item in loader:
        seen += len(item["image"])
    return seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cfg = load_config(None, [])
    device = torch.device("cpu")
    step_seconds = interleaved({"hegl": hegl_step(cfg, args.batch, 384, device, 1.0, 1.0)}, args.repeats, device)["hegl"]
    model_rate = args.batch / step_seconds
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        prepare_synthetic(cache, PrepareOptions(image_size=cfg.data.image_size, progress=False),
                          SyntheticSpec(n_train=args.images, n_test=8, size=256))
        split = CachedSplit(cache, "train")
        print(f"demo model ({cfg.model.encoder}, {cfg.data.image_size} px, {len(CLASSES)} classes), batch {args.batch}, "
              f"{torch.get_num_threads()} threads: model training {model_rate:.1f} images/s")
        for name, (swap, spec) in SETTINGS.items():
            rate = loader_rate(split, swap, spec, args.batch, cfg.train.workers)
            print(f"  loader, {name:34s} {rate:9.1f} images/s   {rate / model_rate:6.1f}x the model")


if __name__ == "__main__":
    main()
