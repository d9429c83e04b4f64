"""The built-in synthetic shortcut dataset: chest-like images, class lesions, and a planted cue.

Each image is a grayscale chest-like radiograph (body, two dark lung fields, heart, spine, ribs,
low-frequency and pixel noise). Each class draws its own lesion inside a lung; the lesion's polygon
and box are the expert annotation. A laterality-tag-like "L" marker in the top-right corner is the
spurious cue: in train/val it is present with probability ``cue_strength`` when the cue class is
positive and ``1 - cue_strength`` when it is negative; in test it is independent of every label
(probability 0.5). The test split has a counterfactual twin, ``test_counterfactual``: the same
images with only the marker toggled, so evaluation can measure how far predictions move when
nothing but the shortcut changes.

The dataset is written in the ChestX-Det format and imported by the same importer as real data.
Deterministic by seed: every image draws from its own ``default_rng([seed, split, index])``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hegl_cli.data.prepare import (
    PrepareOptions,
    PrepareResult,
    SplitSource,
    _parallel_map,
    build_cache,
    fingerprint,
    up_to_date,
)

SYNTHETIC_CLASSES: tuple[str, ...] = ("Nodule", "Mass", "Effusion", "Consolidation")
CUE_CLASS = "Nodule"
SPLIT_IDS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated dataset."""

    n_train: int = 900
    n_test: int = 300
    size: int = 256
    seed: int = 0
    cue_strength: float = 0.9
    prevalence: float = 0.3
    lesion_contrast: float = 0.22
    cue_in_train: bool = True  # False: train/val images never carry the cue (a model that never sees it)


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, soft: float) -> np.ndarray:
    """Soft-edged ellipse indicator in [0, 1]; ``soft`` is the edge width in normalised units."""
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 - d) / max(soft, 1e-6), 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a random ``cells`` grid upsampled bilinearly."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _anatomy(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """A chest-like background (H, W) in [0, 1] and the two lung ellipses (cy, cx, ry, rx)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    j = lambda scale: float(rng.uniform(-scale, scale))  # noqa: E731 - small jitter helper
    img = np.full((size, size), 0.06, dtype=np.float32)
    img += 0.5 * _ellipse(yy, xx, 0.56 + j(0.02), 0.5 + j(0.02), 0.47, 0.42 + j(0.02), 0.05)
    lungs = [(0.45 + j(0.02), 0.31 + j(0.02), 0.27 + j(0.02), 0.13 + j(0.01)),
             (0.45 + j(0.02), 0.69 + j(0.02), 0.27 + j(0.02), 0.13 + j(0.01))]
    lung_mask = np.zeros_like(img)
    for cy, cx, ry, rx in lungs:
        lung_mask = np.maximum(lung_mask, _ellipse(yy, xx, cy, cx, ry, rx, 0.15))
    img -= 0.32 * lung_mask
    ribs = np.clip(np.cos(2 * np.pi * (yy * (8.5 + j(0.5)) + 1.5 * (xx - 0.5) ** 2)), 0, 1) ** 3
    img += 0.07 * ribs * lung_mask
    img += 0.16 * _ellipse(yy, xx, 0.63 + j(0.02), 0.56 + j(0.02), 0.12 + j(0.01), 0.13 + j(0.015), 0.3)
    img += 0.12 * np.clip(1.0 - np.abs(xx - 0.5) / 0.03, 0, 1) * (yy > 0.1)
    img += 0.04 * _smooth_noise(rng, size, 6)
    return img, lungs


def _point_in_lung(rng: np.random.Generator, lung: tuple[float, float, float, float], margin: float) -> tuple[float, float]:
    cy, cx, ry, rx = lung
    while True:
        u, v = rng.uniform(-1, 1, size=2)
        if u * u + v * v <= (1 - margin) ** 2:
            return cy + u * ry, cx + v * rx


def _polygon_mask(points: np.ndarray, size: int) -> np.ndarray:
    from PIL import ImageDraw

    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points.tolist()], fill=255)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _blob_polygon(cy: float, cx: float, radius: float, rng: np.random.Generator, wobble: float, n: int = 16) -> np.ndarray:
    """(n, 2) polygon of (x, y) pixel points around a centre, radius modulated by ``wobble``."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    phase, lobes = rng.uniform(0, 2 * np.pi), int(rng.integers(2, 5))
    r = radius * (1 + wobble * np.sin(lobes * theta + phase))
    return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)


def _draw_lesion(
    label: str, img: np.ndarray, lungs: list, rng: np.random.Generator, contrast: float
) -> np.ndarray:
    """Add one lesion of class ``label`` to ``img`` in place; return its (n, 2) polygon in pixels."""
    size = img.shape[0]
    lung = lungs[int(rng.integers(0, 2))]
    if label == "Effusion":  # fluid in the lung base: the lung ellipse below a horizontal level
        cy, cx, ry, rx = lung
        level = cy + ry * rng.uniform(0.15, 0.45)
        theta = np.linspace(0, np.pi, 24)
        xs, ys = cx + rx * np.cos(theta), cy + ry * np.sin(theta)
        keep = ys >= level
        polygon = np.stack([xs[keep], ys[keep]], axis=1) * size
    elif label == "Nodule":
        cy, cx = _point_in_lung(rng, lung, 0.35)
        polygon = _blob_polygon(cy * size, cx * size, size * rng.uniform(0.03, 0.042), rng, 0.08)
    elif label == "Mass":
        cy, cx = _point_in_lung(rng, lung, 0.45)
        polygon = _blob_polygon(cy * size, cx * size, size * rng.uniform(0.065, 0.09), rng, 0.2)
    elif label == "Consolidation":
        cy, cx = _point_in_lung(rng, lung, 0.4)
        polygon = _blob_polygon(cy * size, cx * size, size * rng.uniform(0.06, 0.085), rng, 0.3)
    else:  # pragma: no cover - classes are fixed
        raise ValueError(label)
    region = _polygon_mask(polygon, size)
    if label == "Consolidation":  # patchy, air-bronchogram-like texture
        texture = np.clip(0.6 + 0.8 * _smooth_noise(rng, size, 24), 0, 1)
        img += contrast * region * texture
    elif label == "Effusion":
        img += contrast * 1.2 * region
    else:
        img += contrast * 1.3 * region
    return polygon


def draw_cue(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A laterality-tag-like bright "L" in the top-right corner; returns a new image."""
    size = img.shape[0]
    out = img.copy()
    unit = max(1, size // 64)
    x0 = int(size * 0.84) + int(rng.integers(-unit, unit + 1))
    y0 = int(size * 0.05) + int(rng.integers(-unit, unit + 1))
    h, w, stroke = 5 * unit, 4 * unit, max(1, unit)
    out[y0 : y0 + h, x0 : x0 + stroke] = 0.97
    out[y0 + h - stroke : y0 + h, x0 : x0 + w] = 0.97
    return out


def generate_case(args: tuple[SyntheticSpec, str, int]) -> dict[str, Any]:
    """Generate one image: returns its pixels (with and without the cue), labels and annotations."""
    spec, split, index = args
    rng = np.random.default_rng([spec.seed, SPLIT_IDS[split], index])
    img, lungs = _anatomy(rng, spec.size)
    labels = [c for c in SYNTHETIC_CLASSES if rng.random() < spec.prevalence]
    syms, boxes, polygons = [], [], []
    for label in labels:
        polygon = _draw_lesion(label, img, lungs, rng, spec.lesion_contrast)
        pts = np.clip(np.rint(polygon), 0, spec.size - 1).astype(int)
        syms.append(label)
        polygons.append(pts.tolist())
        boxes.append([int(pts[:, 0].min()), int(pts[:, 1].min()), int(pts[:, 0].max()) + 1, int(pts[:, 1].max()) + 1])
    img += rng.normal(0.0, 0.02, img.shape).astype(np.float32)
    img = np.clip(img, 0, 1)
    if split == "train":
        p_cue = spec.cue_strength if CUE_CLASS in labels else 1.0 - spec.cue_strength
    else:
        p_cue = 0.5
    cue = bool(rng.random() < p_cue) and (split != "train" or spec.cue_in_train)
    cue_rng_seed = int(rng.integers(0, 2**31))
    with_cue = draw_cue(img, np.random.default_rng(cue_rng_seed))
    return {
        "file_name": f"{split[:2]}{index:05d}.png",
        "image": with_cue if cue else img,
        "twin": img if cue else with_cue,
        "cue": int(cue),
        "record": {"syms": syms, "boxes": boxes, "polygons": polygons},
    }


def _save_png(img: np.ndarray, path: Path) -> None:
    Image.fromarray(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), mode="L").save(path, optimize=False)


def write_synthetic_source(spec: SyntheticSpec, root: Path, workers: int = 0, progress: bool = True) -> dict[str, SplitSource]:
    """Write the dataset in the official ChestX-Det layout under ``root``; return the split sources."""
    sources: dict[str, SplitSource] = {}
    for split, count in (("train", spec.n_train), ("test", spec.n_test)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        twin_folder = root / "test_counterfactual"
        if split == "test":
            twin_folder.mkdir(parents=True, exist_ok=True)
        records, cues, twin_cues = [], {}, {}
        items = [(spec, split, i) for i in range(count)]
        for case in _parallel_map(generate_case, items, workers, f"generate {split}", progress):
            name = case["file_name"]
            _save_png(case["image"], folder / name)
            records.append({"file_name": name, **case["record"]})
            cues[name] = case["cue"]
            if split == "test":
                _save_png(case["twin"], twin_folder / name)
                twin_cues[name] = 1 - case["cue"]
        annotation = root / f"ChestX_Det_{split}.json"
        annotation.write_text(json.dumps(records))
        (root / f"cue_{split}.json").write_text(json.dumps(cues))
        sources[split] = SplitSource(split, annotation, folder, cue=cues)
        if split == "test":
            sources["test_counterfactual"] = SplitSource("test_counterfactual", annotation, twin_folder, cue=twin_cues)
    return sources


def prepare_synthetic(out: Path, options: PrepareOptions, spec: SyntheticSpec) -> PrepareResult:
    """Generate the built-in dataset inside the cache folder (``source/``) and import it."""
    from hegl_cli import __version__

    identity = fingerprint([__version__, "synthetic", asdict(spec), options.image_size, options.seed,
                            options.val_fraction, options.mask_source])
    done = up_to_date(out, identity, options.force)
    if done is not None:
        return done
    partial_sources: dict[str, SplitSource] = {}

    def generate(partial: Path) -> None:
        partial_sources.update(write_synthetic_source(spec, partial / "source", options.workers, options.progress))
        sources[:] = [partial_sources[name] for name in ("train", "test", "test_counterfactual")]

    sources: list[SplitSource] = []
    extra = {"fingerprint": identity, "synthetic": {**asdict(spec), "cue_class": CUE_CLASS,
                                                    "counterfactual_of": {"test_counterfactual": "test"}}}
    return build_cache("synthetic", sources, out, options, classes=list(SYNTHETIC_CLASSES),
                       source_description="builtin:synthetic", extra_manifest=extra, before_build=generate)
