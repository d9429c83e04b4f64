"""Data path throughput, measured in one run on the same files.

Prints images/s for: raw decode of the PNGs (PIL, one process), `hegl prepare` of the same files
(decode + resize + masks + cache write, all cores), and the cached training loader
(memory-mapped cache -> batches of tensors).

Usage: python benchmarks/bench_prepare.py [--images 600] [--source-size 512] [--image-size 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from hegl_cli.data.cache import CachedSplit
from hegl_cli.data.dataset import XrayDataset
from hegl_cli.data.prepare import PrepareOptions, build_cache
from hegl_cli.data.synthetic import SYNTHETIC_CLASSES, SyntheticSpec, write_synthetic_source


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--source-size", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = SyntheticSpec(n_train=args.images, n_test=1, size=args.source_size)
        sources = write_synthetic_source(spec, root / "source", progress=False)
        files = sorted((root / "source" / "train").glob("*.png"))

        t0 = time.perf_counter()
        for path in files:
            with Image.open(path) as img:
                np.asarray(img)
        raw = len(files) / (time.perf_counter() - t0)

        result = build_cache("synthetic", [sources["train"]], root / "cache",
                             PrepareOptions(image_size=args.image_size, val_fraction=0, progress=False),
                             classes=list(SYNTHETIC_CLASSES), source_description="bench")
        prep = len(files) / result.seconds

        loader = DataLoader(XrayDataset(CachedSplit(root / "cache", "train")), batch_size=32, shuffle=True)
        t0 = time.perf_counter()
        seen = sum(len(batch["image"]) for batch in loader)
        cached = seen / (time.perf_counter() - t0)

    print(f"{len(files)} PNGs at {args.source_size} px -> cache at {args.image_size} px")
    print(f"  raw decode (1 process):        {raw:8.1f} images/s")
    print(f"  hegl prepare (all cores):      {prep:8.1f} images/s   ({prep / raw:.2f}x raw decode)")
    print(f"  cached loader (batches of 32): {cached:8.1f} images/s   ({cached / raw:.1f}x raw decode)")


if __name__ == "__main__":
    main()
