"""What does DAL do to the class maps? For each run: per class, how many patches a positive class's
map spreads over (effective patches, 1 / sum(a^2)) next to how many its mask touches, and the
mean cosine similarity between an image's class maps, split into pairs of two present classes,
one present and one absent, and two absent classes (on the test split, best checkpoint).

    python examples/dal_diagnosis.py RUN [RUN ...] [--data data/synthetic]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from hegl_cli.engine.checkpoint import load_run
from hegl_cli.evaluation.alignment import effective_patches, patch_coverage
from hegl_cli.models.inference import predict_split


def diagnose(run: str, data: str | None) -> dict:
    loaded = load_run(Path(run), "best", Path(data) if data else None, "cpu", "test")
    split = loaded.split
    preds = predict_split(loaded.model, split, loaded.device, 64, precision=loaded.in_force)
    maps = preds.attention  # (N, C, h, w)
    labels = np.nan_to_num(split.labels) > 0.5
    grid = maps.shape[-2:]
    out: dict = {"classes": {}}
    for c, name in enumerate(split.classes):
        rows = np.flatnonzero(labels[:, c] & split.has_mask[:, c])
        if len(rows) == 0:
            continue
        cover = np.stack([patch_coverage(split.masks(int(i))[c:c + 1], grid)[0] for i in rows])
        out["classes"][name] = (float(effective_patches(maps[rows, c]).mean()), float((cover > 0).sum((1, 2)).mean()))
    flat = torch.nn.functional.normalize(torch.from_numpy(maps).flatten(2).float(), dim=-1)
    cos = (flat @ flat.transpose(1, 2)).numpy()  # (N, C, C)
    kinds: dict[str, list[float]] = {"both present": [], "one present": [], "both absent": []}
    for i, j in itertools.combinations(range(maps.shape[1]), 2):
        present = labels[:, i].astype(int) + labels[:, j].astype(int)
        for count, kind in ((2, "both present"), (1, "one present"), (0, "both absent")):
            kinds[kind] += cos[present == count, i, j].tolist()
    out["cosine"] = {k: (float(np.mean(v)) if v else None, len(v)) for k, v in kinds.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    for run in args.runs:
        d = diagnose(run, args.data)
        spread = ", ".join(f"{k} {v[0]:.1f}/{v[1]:.1f}" for k, v in d["classes"].items())
        cos = ", ".join(f"{k} {v[0]:.3f}" for k, v in d["cosine"].items() if v[0] is not None)
        print(f"{run}\n  effective patches / mask patches: {spread}\n  map cosine: {cos}")


if __name__ == "__main__":
    main()
