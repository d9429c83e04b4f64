"""How long each explanation method takes on one image with the demo model (the README's figure for
``hegl explain --method ...``): seconds per image, median of repeats after a warm-up, and the ratio
to the plain forward pass that gives the class attention, all measured in one run.

The weights are random (speed does not depend on training); the model is the default config's
(ViT-Tiny, 6 blocks, 128 px, 4 classes, per-class maps for every class).

Usage: python benchmarks/bench_explain.py [--methods gradcam,rollout,ig] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hegl_cli.config import load_config
from hegl_cli.models.explainers import METHODS, explain_batch, parse_methods
from hegl_cli.models.model import build_model


def seconds(call, repeats: int) -> float:
    call()  # warm-up: library imports, first-call allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = load_config(None, ["model.text_encoder=none"])
    classes = ["Nodule", "Mass", "Effusion", "Consolidation"]
    model = build_model(classes, cfg.model, cfg.data.image_size).eval()
    image = torch.rand(1, 1, cfg.data.image_size, cfg.data.image_size)
    with torch.inference_mode():
        forward = seconds(lambda: model(image), args.repeats)
    print(f"demo model ({cfg.model.encoder}, {cfg.data.image_size} px, {len(classes)} classes), one image, "
          f"{torch.get_num_threads()} threads; forward {forward * 1000:.1f} ms")
    for method in parse_methods(args.methods):
        t = seconds(lambda m=method: explain_batch(model, image, list(range(len(classes))), m), args.repeats)
        print(f"  {method:17s} {t:7.3f} s   {t / forward:7.1f}x the forward")


if __name__ == "__main__":
    main()
