"""Real lesion outlines for the benchmark family: ChestX-Det's expert polygons (Apache-2.0), kept small.

:func:`build_shape_bank` turns the official annotation files into the bank shipped with hegl
(``assets/chestxdet_shapes.json``): per class up to :data:`PER_CLASS` polygons, each resampled to
:data:`POINTS` points around its centroid in units of the image side (the files' images are
1024 px). tests/test_benchmark.py rebuilds it from ``../shared/data`` and compares.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

BANK = Path(__file__).parent / "assets" / "chestxdet_shapes.json"
PER_CLASS, POINTS, SIDE = 60, 16, 1024.0


def _resample(points: np.ndarray, n: int) -> np.ndarray:
    """(k, 2) closed outline -> (n, 2) points evenly spaced along its perimeter."""
    closed = np.vstack([points, points[:1]])
    steps = np.hypot(*np.diff(closed, axis=0).T)
    at = np.r_[0, np.cumsum(steps)]
    targets = np.linspace(0, at[-1], n, endpoint=False)
    return np.stack([np.interp(targets, at, closed[:, 0]), np.interp(targets, at, closed[:, 1])], axis=1)


def build_shape_bank(annotation_files: list[Path]) -> dict[str, list[list[list[float]]]]:
    """{class: [polygon as [[x, y], ...] around (0, 0), in units of the image side]} from ChestX-Det JSON."""
    bank: dict[str, list] = {}
    for path in annotation_files:
        for record in json.loads(Path(path).read_text()):
            for label, polygon in zip(record.get("syms", []), record.get("polygons") or []):
                if not polygon or len(polygon) < 3 or len(bank.get(label, [])) >= PER_CLASS:
                    continue
                points = _resample(np.asarray(polygon, dtype=float), POINTS)
                centred = (points - points.mean(0)) / SIDE
                bank.setdefault(label, []).append(np.round(centred, 4).tolist())
    return dict(sorted(bank.items()))


@lru_cache(maxsize=1)
def shape_bank() -> dict[str, np.ndarray]:
    """The shipped bank as {class: (n, POINTS, 2) array}."""
    return {k: np.asarray(v, dtype=np.float64) for k, v in json.loads(BANK.read_text()).items()}
