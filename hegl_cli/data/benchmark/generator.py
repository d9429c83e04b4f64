"""The built-in benchmark (v2): chest-like images where only position tells a finding, plus shortcuts.

Each image is a grayscale chest-like radiograph (body, two dark lung fields, heart, spine, ribs,
low-frequency and pixel noise) with air around the body as dark as the lungs. Every class is drawn
once in every image with the same look: inside a lung when the class is positive (the annotated
finding: polygon and box), in the air outside the body when it is negative (a decoy, not
annotated). Shapes never overlap and the lesion sits on pixels distributed like the decoy's, so a
position-free classifier on global image statistics learns nothing (tests/test_benchmark.py keeps
its test AUC at or below 0.60 for every class): the model has to look at where things are.

Five spurious cues, one bit each in ``cue.npy`` (:data:`CUE_NAMES`): a burned-in marker per class
(an "L", a "T", a bar, a ring, one per corner) and a global one, a scanner-like contrast curve
that follows ``GLOBAL_CUE_CLASS``. In train/val each cue is present with probability
``cue_strength`` when its class is positive and ``1 - cue_strength`` when negative; in test each is
independent of every label (probability 0.5). The test split has a counterfactual twin,
``test_counterfactual``: the same images with every cue toggled, so evaluation measures how far
predictions move when nothing but the shortcuts change.

v2 is one member of a family (:mod:`hegl_cli.data.benchmark.family`, ``data.benchmark``): other
shortcut kinds, real lesion outlines, real radiographs, 13 sparse classes; each also comes cue-free
(``data.cue_free``: every cue independent of the labels in train too).

The dataset is written in the ChestX-Det format and imported by the same importer as real data.
Deterministic by seed: every image draws from its own ``default_rng([seed, split, index])`` (and
the family's extra features from ``[seed, split, index, 7]``, so v2's images never change).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hegl_cli.data.benchmark.drawing import (
    BODY_LEVEL,
    LUNG_EDGE,
    LUNG_LEVEL,
    MARKER_LEVEL,
    RIB_MEAN,
    centred_at,
    ellipse,
    place,
    point_in_lung,
    smooth_noise,
)
from hegl_cli.data.benchmark.family import (
    BODY_SCALE,
    MEMBERS,
    Member,
    burn_tag,
    chestxdet_polygon,
    device_line,
    device_targets,
    lung_grid,
    radiograph_background,
    tag_zones,
    washed_out,
)
from hegl_cli.data.parallel import parallel_map
from hegl_cli.data.records import SplitSource

V2 = MEMBERS["v2"]
SYNTHETIC_CLASSES: tuple[str, ...] = V2.classes
SPLIT_IDS = {"train": 0, "test": 1}
EXTRA_STREAM = 7  # the family's extra draws: default_rng([seed, split, index, EXTRA_STREAM])


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
    member: str = "v2"  # a member of the benchmark family (MEMBERS)
    cue_free: bool = False  # True: every cue independent of the labels in train too (the no-shortcut ceiling)

    @property
    def benchmark(self) -> Member:
        return MEMBERS[self.member]


def _anatomy(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """A chest-like background (H, W) in [0, 1], the body's and lungs' soft masks (H, W), the lungs.

    The air around the body is as dark as the lungs (with the same rib-free mean), so a lesion-like
    blob changes the image's intensity histogram the same way in a lung as in the air: only where
    it lies tells a finding from a decoy. Lungs are (cy, cx, ry, rx) in normalised units.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    j = lambda scale: float(rng.uniform(-scale, scale))  # noqa: E731 - small jitter helper
    body = ellipse(yy, xx, 0.55 + j(0.02), 0.5 + j(0.02), 0.40, 0.34 + j(0.02), 0.05)
    img = LUNG_LEVEL + (BODY_LEVEL - LUNG_LEVEL) * body
    lungs = [(0.46 + j(0.02), 0.34 + j(0.02), 0.23 + j(0.02), 0.12 + j(0.01)),
             (0.46 + j(0.02), 0.66 + j(0.02), 0.23 + j(0.02), 0.12 + j(0.01))]
    lung_mask = np.zeros_like(img)
    for cy, cx, ry, rx in lungs:
        lung_mask = np.maximum(lung_mask, ellipse(yy, xx, cy, cx, ry, rx, LUNG_EDGE))
    img -= (BODY_LEVEL - LUNG_LEVEL) * lung_mask * body
    ribs = np.clip(np.cos(2 * np.pi * (yy * (8.5 + j(0.5)) + 1.5 * (xx - 0.5) ** 2)), 0, 1) ** 3
    img += 0.07 * (ribs - RIB_MEAN)  # everywhere: lung and air pixels share one distribution
    heart = ellipse(yy, xx, 0.60 + j(0.02), 0.54 + j(0.02), 0.10 + j(0.01), 0.11 + j(0.015), 0.3)
    img += 0.16 * heart * (1.0 - lung_mask)  # behind the lungs: a lesion sees the same lung level anywhere
    img += 0.12 * np.clip(1.0 - np.abs(xx - 0.5) / 0.03, 0, 1) * (yy > 0.1) * body
    img += 0.04 * smooth_noise(rng, size, 6)
    return img, body, lung_mask, lungs


def _blob_polygon(cy: float, cx: float, radius: float, rng: np.random.Generator, wobble: float, n: int = 16) -> np.ndarray:
    """(n, 2) polygon of (x, y) pixel points around a centre, radius modulated by ``wobble``."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    phase, lobes = rng.uniform(0, 2 * np.pi), int(rng.integers(2, 5))
    r = radius * (1 + wobble * np.sin(lobes * theta + phase))
    return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)


def _lesion_polygon(label: str, lung: tuple[float, float, float, float], size: int, rng: np.random.Generator,
                    shapes: str = "synthetic", scale: float = 1.0) -> np.ndarray:
    """(n, 2) polygon in pixels of a class-``label`` lesion placed in ``lung`` (cy, cx, ry, rx);
    ``scale``: the body's size as a share of the image (synthetic shapes are drawn for 1)."""
    if shapes == "chestxdet":
        return chestxdet_polygon(label, lung, size, rng)
    if label == "Effusion":  # fluid in the lung base: the lung ellipse below a horizontal level
        cy, cx, ry, rx = lung
        ry, rx = ry * (1 - 2 * LUNG_EDGE), rx * (1 - 2 * LUNG_EDGE)  # in the dark core, off the rim
        level = cy + ry * rng.uniform(0.15, 0.45)
        theta = np.linspace(0, np.pi, 24)
        xs, ys = cx + rx * np.cos(theta), cy + ry * np.sin(theta)
        keep = ys >= level
        return np.stack([xs[keep], ys[keep]], axis=1) * size
    shape = LESION_SHAPES[label]
    cy, cx = point_in_lung(rng, lung, shape[0])
    return _blob_polygon(cy * size, cx * size, scale * size * rng.uniform(shape[1], shape[2]), rng, shape[3])


DRAW_ORDER = V2.draw_order

# class -> (margin inside the lung, radius range as a share of the image, wobble)
LESION_SHAPES = {"Nodule": (0.35, 0.03, 0.042, 0.08), "Mass": (0.45, 0.065, 0.09, 0.2),
                 "Consolidation": (0.4, 0.06, 0.085, 0.3)}


def _paint(label: str, img: np.ndarray, region: np.ndarray, rng: np.random.Generator, contrast: float) -> None:
    """Add a class-``label`` opacity over ``region`` (H, W) in [0, 1] to ``img`` in place."""
    if label == "Consolidation":  # patchy, air-bronchogram-like texture
        texture = np.clip(0.6 + 0.8 * smooth_noise(rng, img.shape[0], 24), 0, 1)
        img += contrast * region * texture
    elif label == "Atelectasis":  # plate-like: streaks along a random direction
        size = img.shape[0]
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        angle = rng.uniform(0, np.pi)
        streaks = 0.75 + 0.5 * np.clip(np.cos(2 * np.pi * 14 * (yy * np.cos(angle) + xx * np.sin(angle))), 0, 1)
        img += contrast * region * streaks
    elif label == "Effusion":
        img += contrast * 1.2 * region
    else:
        img += contrast * 1.3 * region


def _draw_lesion(
    label: str, img: np.ndarray, lung_mask: np.ndarray, lungs: list, occupied: np.ndarray,
    rng: np.random.Generator, contrast: float, shapes: str = "synthetic", scale: float = 1.0,
) -> np.ndarray:
    """Add one lesion of class ``label`` inside a lung of ``img`` in place; return its (n, 2) polygon.

    The lesion lies in the lungs' dark core (at most 1% of it on the rim), where the pixels below it
    have the same distribution as the air below a decoy.
    """
    size = img.shape[0]
    core = lung_mask >= 0.99
    shape = _lesion_polygon(label, lungs[int(rng.integers(0, 2))], size, rng, shapes, scale)
    margin = LESION_SHAPES[label][0] if shapes == "synthetic" and label in LESION_SHAPES else 0.3

    def in_a_lung(r: np.random.Generator) -> np.ndarray:  # the shape stays; only its place is redrawn
        if label == "Effusion" and shapes == "synthetic" and scale == 1.0:  # drawn first, at its lung's base
            return shape  # (on a real radiograph the base is the diaphragm's: moved like the others)
        cy, cx = point_in_lung(r, lungs[int(r.integers(0, 2))], margin)
        return centred_at(shape, cy * size, cx * size)

    polygon, region = place(in_a_lung, lambda reg: (reg * ~core).sum() <= 0.01 * reg.sum(), occupied, rng)
    _paint(label, img, region, rng, contrast)
    return polygon


def _draw_decoy(
    label: str, img: np.ndarray, body: np.ndarray, lungs: list, occupied: np.ndarray, rng: np.random.Generator,
    contrast: float, shapes: str = "synthetic", scale: float = 1.0,
) -> None:
    """Add the same opacity as a class-``label`` lesion, but in the air outside the body (not a finding).

    The decoy's shape is drawn as in one of the image's lungs (the same size distribution as a
    lesion's), then moved to random points until it fits; it may overlap the body's soft edge by at
    most 1% of its area.
    """
    size = img.shape[0]
    shape = _lesion_polygon(label, lungs[int(rng.integers(0, 2))], size, rng, shapes, scale)

    def anywhere(r: np.random.Generator) -> np.ndarray:
        cy, cx = r.uniform(0.05, 0.95, size=2)
        return centred_at(shape, cy * size, cx * size)

    _, region = place(anywhere, lambda reg: (reg * body).sum() <= 0.01 * reg.sum(), occupied, rng)
    _paint(label, img, region, rng, contrast)


# v2's spurious cues, one bit each in ``cue.npy``: a burned-in marker per class, then a global one.
MARKER_CLASSES = SYNTHETIC_CLASSES
GLOBAL_CUE_CLASS = "Effusion"
CUE_NAMES = V2.cues
ALL_CUES = V2.all_cues


def _marker(img: np.ndarray, which: int, rng: np.random.Generator) -> None:
    """Burn marker ``which`` (0-3: an "L", a "T", a bar, a ring, one per corner) into ``img`` in place."""
    size = img.shape[0]
    unit = max(1, size // 64)
    h, w, stroke = 5 * unit, 4 * unit, max(1, unit)
    jy, jx = (int(rng.integers(-unit, unit + 1)) for _ in range(2))
    y0 = (int(size * 0.05) if which in (0, 1) else int(size * 0.9)) + jy
    x0 = (int(size * 0.84) if which in (0, 3) else int(size * 0.08)) + jx
    if which == 0:  # laterality-tag-like "L", top right
        img[y0 : y0 + h, x0 : x0 + stroke] = MARKER_LEVEL
        img[y0 + h - stroke : y0 + h, x0 : x0 + w] = MARKER_LEVEL
    elif which == 1:  # "T", top left
        img[y0 : y0 + stroke, x0 : x0 + w] = MARKER_LEVEL
        img[y0 : y0 + h, x0 + w // 2 : x0 + w // 2 + stroke] = MARKER_LEVEL
    elif which == 2:  # text-tag-like bar, bottom left
        img[y0 : y0 + 2 * stroke, x0 : x0 + 2 * w] = MARKER_LEVEL
    else:  # device-like ring, bottom right
        img[y0 : y0 + w, x0 : x0 + w] = MARKER_LEVEL
        img[y0 + stroke : y0 + w - stroke, x0 + stroke : x0 + w - stroke] = LUNG_LEVEL


def marker_zones(size: int) -> np.ndarray:
    """(size, size) bool: every pixel a marker may cover (kept free of lesions and decoys)."""
    zones = np.zeros((size, size), bool)
    unit = max(1, size // 64)
    for y in (int(size * 0.05), int(size * 0.9)):
        for x in (int(size * 0.08), int(size * 0.84)):
            zones[max(0, y - 2 * unit) : y + 7 * unit, max(0, x - 2 * unit) : x + 10 * unit] = True
    return zones


def cue_zones(member: Member, size: int) -> np.ndarray:
    """(size, size) bool: the pixels burned-in cues may cover, kept free of shapes."""
    zones = marker_zones(size)
    if any(c.startswith("tag:") for c in member.cues):
        zones |= tag_zones(size)
    return zones


def render_cues(img: np.ndarray, cues: int, seed: int, member: Member = V2, scene: dict | None = None) -> np.ndarray:
    """The image as the scanner writes it: cues in the patient first (a grid over the lungs, a device
    line), then the detector's (contrast curves), then the burned-in ones (markers, tags).

    img: (H, W) in [0, 1], without cues; ``cues``: bitmask over ``member.cues``; ``scene``: the lung
    mask and device targets the in-patient cues need. Returns a new array.
    """
    out = img.copy()
    on = [name for k, name in enumerate(member.cues) if cues >> k & 1]
    for name in on:
        if name.startswith("inmask:"):
            lung_grid(out, scene["lung_mask"])
        elif name.startswith("device:"):
            which = member.cue_index(name)
            device_line(out, scene["targets"][which], np.random.default_rng([seed, 50 + which]))
    for name in on:
        if name.startswith("scanner:"):  # another scanner: a harder contrast curve and a lower floor
            out = np.clip(out, 0, 1) ** 1.35 * 1.08
        elif name.startswith("contrast:"):
            out = washed_out(out)
    for name in on:
        if name.startswith("marker:"):
            which = member.cue_index(name)
            _marker(out, which, np.random.default_rng([seed, which]))
        elif name.startswith("tag:"):
            which = member.cue_index(name)
            burn_tag(out, which, np.random.default_rng([seed, 100 + which]))
    return np.clip(out, 0, 1)


def _cue_bits(labels: list[str], split: str, spec: SyntheticSpec, rng: np.random.Generator) -> int:
    """Draw every cue: with its class at ``cue_strength`` in train/val (0.5 when ``cue_free``),
    independent (0.5) in test."""
    bits = 0
    for k, name in enumerate(spec.benchmark.cues):
        cls = name.split(":")[1]
        if split == "train" and not spec.cue_free:
            p = spec.cue_strength if cls in labels else 1.0 - spec.cue_strength
        else:
            p = 0.5
        present = bool(rng.random() < p) and (split != "train" or spec.cue_in_train)
        bits |= int(present) << k
    return bits


def _background(member: Member, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    if member.background == "radiograph":
        return radiograph_background(rng, size)
    return _anatomy(rng, size)


def generate_case(args: tuple[SyntheticSpec, str, int]) -> dict[str, Any]:
    """Generate one image: its pixels (with its cues and with every cue toggled), labels, annotations.

    Every ever-positive class is drawn once per image: inside a lung when positive (the annotated
    finding), in the air outside the body when negative (a decoy with the same look), so only
    position tells them apart.
    """
    spec, split, index = args
    member = spec.benchmark
    rng = np.random.default_rng([spec.seed, SPLIT_IDS[split], index])
    img, body, lung_mask, lungs = _background(member, rng, spec.size)
    labels = [c for c in member.positive if rng.random() < spec.prevalence]
    occupied = cue_zones(member, spec.size)
    drawn = {}
    look = {"shapes": member.shapes, "scale": BODY_SCALE if member.background == "radiograph" else 1.0}
    for label in member.draw_order:
        if label in labels:
            drawn[label] = _draw_lesion(label, img, lung_mask, lungs, occupied, rng, spec.lesion_contrast, **look)
        else:
            _draw_decoy(label, img, body, lungs, occupied, rng, spec.lesion_contrast, **look)
    syms, boxes, polygons = [], [], []
    for label in sorted(labels, key=member.classes.index):
        pts = np.clip(np.rint(drawn[label]), 0, spec.size - 1).astype(int)
        syms.append(label)
        polygons.append(pts.tolist())
        boxes.append([int(pts[:, 0].min()), int(pts[:, 1].min()), int(pts[:, 0].max()) + 1, int(pts[:, 1].max()) + 1])
    img += rng.normal(0.0, 0.02, img.shape).astype(np.float32)
    cues = _cue_bits(labels, split, spec, rng)
    cue_seed = int(rng.integers(0, 2**31))
    scene = None
    if member is not V2:
        extra = np.random.default_rng([spec.seed, SPLIT_IDS[split], index, EXTRA_STREAM])
        scene = {"lung_mask": lung_mask, "targets": device_targets(member, labels, drawn, lungs, spec.size, extra)}
    return {
        "file_name": f"{split[:2]}{index:05d}.png",
        "image": render_cues(img, cues, cue_seed, member=member, scene=scene),
        "twin": render_cues(img, cues ^ member.all_cues, cue_seed, member=member, scene=scene),
        "cue": cues,
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
        for case in parallel_map(generate_case, items, workers, f"generate {split}", progress):
            name = case["file_name"]
            _save_png(case["image"], folder / name)
            records.append({"file_name": name, **case["record"]})
            cues[name] = case["cue"]
            if split == "test":
                _save_png(case["twin"], twin_folder / name)
                twin_cues[name] = case["cue"] ^ spec.benchmark.all_cues
        annotation = root / f"ChestX_Det_{split}.json"
        annotation.write_text(json.dumps(records))
        (root / f"cue_{split}.json").write_text(json.dumps(cues))
        sources[split] = SplitSource(split, annotation, folder, cue=cues)
        if split == "test":
            sources["test_counterfactual"] = SplitSource("test_counterfactual", annotation, twin_folder, cue=twin_cues)
    return sources
