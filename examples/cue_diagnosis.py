"""Which shortcut does a model on a built-in benchmark read? Twin shortcut reliance, one cue at a
time: for every test image, the same image with only that cue toggled (a marker, a tag, the scanner
curve, ...), and mean |p(x) - p(x')| over images and classes, per cue and per class. ``all`` toggles
every cue at once, as the twin does.

    python examples/cue_diagnosis.py RUN [RUN ...] [--images 300] [--seed 0] [--member v2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import hegl_cli.data.benchmark.generator as synthetic
from hegl_cli.data.images import preprocess_array
from hegl_cli.engine.checkpoint import load_run
from hegl_cli.models.inference import predict_images

Case = tuple[np.ndarray, int, int, dict]


def clean_test_images(n: int, seed: int, member: str = "v2") -> list[Case]:
    """(clean image (S, S), cue bits, cue seed, render keywords) of the first ``n`` test images."""
    captured: list[Case] = []
    real = synthetic.render_cues

    def capture(img: np.ndarray, cues: int, cue_seed: int, **kwargs) -> np.ndarray:
        captured.append((img, cues, cue_seed, kwargs))
        return real(img, cues, cue_seed, **kwargs)

    synthetic.render_cues = capture
    try:
        spec = synthetic.SyntheticSpec(seed=seed, member=member)
        out = []
        for i in range(n):
            captured.clear()
            synthetic.generate_case((spec, "test", i))
            out.append(captured[0])
        return out
    finally:
        synthetic.render_cues = real


def as_cached(img: np.ndarray, size: int) -> torch.Tensor:
    """The image as `hegl prepare` stores it: an 8-bit PNG, squared and resized, back to [0, 1]."""
    png = np.rint(np.clip(img, 0, 1) * 255) / 255
    return torch.from_numpy(preprocess_array(png.astype(np.float32), size)[0].astype(np.float32) / 255.0)


def reliance_by_cue(run: Path, cases: list[Case], member: str = "v2", batch: int = 50) -> dict[str, dict]:
    """Per cue (and ``all``): mean and per-class |p(x) - p(x with that cue toggled)| over ``cases``."""
    loaded = load_run(run, "best", None, "cpu")
    size = loaded.image_size
    bench = synthetic.MEMBERS[member]
    toggles = {name: 1 << k for k, name in enumerate(bench.cues)} | {"all": bench.all_cues}

    def probs(flip: int) -> np.ndarray:
        chunks = []
        for start in range(0, len(cases), batch):
            images = torch.stack([as_cached(synthetic.render_cues(img, bits ^ flip, s, **kw), size)
                                  for img, bits, s, kw in cases[start:start + batch]])[:, None]
            chunks.append(predict_images(loaded.model, images, loaded.device, loaded.in_force)[0].numpy())
        return np.concatenate(chunks)

    base = probs(0)
    out = {}
    for name, flip in toggles.items():
        diff = np.abs(base - probs(flip))
        out[name] = {"mean": float(diff.mean()),
                     "per_class": {c: round(float(v), 3) for c, v in zip(loaded.classes, diff.mean(0))}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="the dataset seed (data.seed of `hegl prepare`)")
    parser.add_argument("--member", default="v2", choices=sorted(synthetic.MEMBERS),
                        help="the benchmark family member the runs were trained on")
    args = parser.parse_args()
    cases = clean_test_images(args.images, args.seed, args.member)
    for run in args.runs:
        result = reliance_by_cue(run, cases, args.member)
        print(run)
        for name, r in result.items():
            print(f"  {name:<22} {r['mean']:.3f}  {r['per_class']}")


if __name__ == "__main__":
    main()
