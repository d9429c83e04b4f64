"""Data path throughput, measured in one run on the same files.

Prints images/s for: raw decode of the PNGs (PIL, one process), `hegl prepare` of the same files
(decode + resize + masks + cache write, all cores), and the cached training loader
(memory-mapped cache -> batches of tensors).

With ``--peak-memory N [N ...]``: peak resident memory of `hegl prepare` (the main process and,
separately, its largest decoding worker) for each N, on N stand-in records (hard links to a few
1024 px PNGs, a box on every third) at ``--image-size`` (224 for this mode's default): a cache that
streams to disk keeps the peak flat as N grows.

Usage: python benchmarks/bench_prepare.py [--images 600] [--source-size 512] [--image-size 128]
       python benchmarks/bench_prepare.py --peak-memory 5000 40000 [--image-size 224]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from hegl_cli.data.benchmark.generator import SYNTHETIC_CLASSES, SyntheticSpec, write_synthetic_source
from hegl_cli.data.build import build_cache
from hegl_cli.data.cache import CachedSplit
from hegl_cli.data.dataset import XrayDataset
from hegl_cli.data.formats.chestxdet import parse_records
from hegl_cli.data.identity import Identity
from hegl_cli.data.options import PrepareOptions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--source-size", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--peak-memory", type=int, nargs="+", default=None)
    args = parser.parse_args()
    if args.peak_memory:
        peak_memory(args.peak_memory, args.image_size or 224)
        return
    args.image_size = args.image_size or 128
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

        train = sources["train"]
        train.records = parse_records(train.annotations, SYNTHETIC_CLASSES, [])
        result = build_cache("synthetic", [train], root / "cache",
                             PrepareOptions(image_size=args.image_size, val_fraction=0, progress=False),
                             classes=list(SYNTHETIC_CLASSES), identity=Identity("bench", "bench"),
                             source_description="bench")
        prep = len(files) / result.seconds

        loader = DataLoader(XrayDataset(CachedSplit(root / "cache", "train")), batch_size=32, shuffle=True)
        t0 = time.perf_counter()
        seen = sum(len(batch["image"]) for batch in loader)
        cached = seen / (time.perf_counter() - t0)

    print(f"{len(files)} PNGs at {args.source_size} px -> cache at {args.image_size} px")
    print(f"  raw decode (1 process):        {raw:8.1f} images/s")
    print(f"  hegl prepare (all cores):      {prep:8.1f} images/s   ({prep / raw:.2f}x raw decode)")
    print(f"  cached loader (batches of 32): {cached:8.1f} images/s   ({cached / raw:.1f}x raw decode)")


PEAK_CHILD = """
import json, resource, sys
from pathlib import Path
from hegl_cli.apps.prepare import prepare
from hegl_cli.config import Config
from hegl_cli.data.options import PrepareOptions
root, size = Path(sys.argv[1]), int(sys.argv[2])
result = prepare("chestxdet", Config(), PrepareOptions(image_size=size, progress=False), root / "cache",
                 annotations={"train": root / "train.json"}, images={"train": root / "images"})
print(json.dumps({"images": sum(result.manifest["splits"].values()), "seconds": result.seconds,
                  "main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def peak_memory(sizes: list[int], image_size: int) -> None:
    """Peak RSS of a whole prepare run at each size, each in a fresh process."""
    import json
    import os
    import subprocess
    import sys

    print(f"peak resident memory of hegl prepare at {image_size} px (fresh process per size)")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "images").mkdir()
            rng = np.random.default_rng(0)
            originals = []
            for k in range(8):
                path = root / f"original{k}.png"
                Image.fromarray(rng.integers(0, 255, (1024, 1024), dtype=np.uint8)).save(path)
                originals.append(path)
            records = []
            for i in range(n):
                name = f"{i:06d}.png"
                os.link(originals[i % len(originals)], root / "images" / name)
                boxed = i % 3 == 0
                records.append({"file_name": name, "syms": ["Nodule"] if boxed else [],
                                "boxes": [[100, 120, 300, 340]] if boxed else []})
            (root / "train.json").write_text(json.dumps(records))
            out = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(root), str(image_size)], check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
        print(f"  {n:6d} images: main process {r['main_mb']:7.1f} MB, largest worker {r['worker_mb']:7.1f} MB, "
              f"{r['images'] / r['seconds']:.0f} images/s")


if __name__ == "__main__":
    main()
