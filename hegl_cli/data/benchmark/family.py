"""The benchmark family: members that differ from v2 along the axes a real dataset varies on.

Each member is one ``hegl prepare --set data.benchmark=NAME`` away and keeps v2's design rule
(every ever-positive class is drawn in every image with the same look: a lesion inside a lung when
positive, a decoy outside the body when negative; only position tells them apart, so the
position-free audit of tests/test_benchmark.py holds). They differ in

- **shortcut kind** (:data:`CUE_KINDS`): burned-in corner markers outside the masks; a fine grid over
  the lung fields, inside every mask (``inmask``); global contrast curves (``scanner``,
  ``contrast``); text-like tags in a band (``tag``); a device-like line that crosses the lesion when
  its class is positive and a lung when not (``device``);
- **lesion geometry**: v2's synthetic shapes, or ChestX-Det's expert polygons (:mod:`.shapes`);
- **background**: v2's synthetic chest, or a real NIH radiograph (public domain) pasted at
  :data:`BODY_SCALE` on a margin tiled from its own lung fields (so a decoy in the margin sits on
  pixels distributed like a lesion's);
- **class count and sparsity**: 4 dense classes, or ChestX-Det's 13 of which 8 are never positive;
- **data size**.

Every member has a shifted test (cues independent of the labels), a counterfactual twin (every cue
toggled), and a cue-free variant (``data.cue_free``: the cues independent of the labels in train
too), whose shifted-test AUC is the recipe's no-shortcut ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from hegl_cli.data.benchmark.drawing import (
    LUNG_EDGE,
    MARKER_LEVEL,
    Lung,
    lung_fields,
    point_in_lung,
    stroke_mask,
)
from hegl_cli.data.benchmark.shapes import shape_bank
from hegl_cli.data.formats.chestxdet import CHESTXDET_CLASSES

ASSETS = Path(__file__).parent / "assets"
FOUR = ("Nodule", "Mass", "Effusion", "Consolidation")
CUE_KINDS = ("marker", "scanner", "inmask", "contrast", "tag", "device")


@dataclass(frozen=True)
class Member:
    """One benchmark of the family: its classes, its shortcuts and how its images are drawn."""

    name: str
    classes: tuple[str, ...]
    positive: tuple[str, ...]  # classes that can be positive; the others never are (no lesion, no decoy)
    cues: tuple[str, ...]  # "kind:Class", one bit each in cue.npy
    draw_order: tuple[str, ...]  # largest first: the small shapes fit around
    shapes: str  # synthetic | chestxdet
    background: str  # synthetic | radiograph
    n_train: int
    n_test: int
    about: str

    @property
    def all_cues(self) -> int:
        return (1 << len(self.cues)) - 1

    def cue_index(self, name: str) -> int:
        """The position of cue ``name`` among the member's cues of its kind (its corner, band, ...)."""
        kind = name.split(":")[0]
        return [c for c in self.cues if c.split(":")[0] == kind].index(name)


MEMBERS: dict[str, Member] = {m.name: m for m in (
    Member("v2", FOUR, FOUR, tuple(f"marker:{c}" for c in FOUR) + ("scanner:Effusion",),
           ("Effusion", "Mass", "Consolidation", "Nodule"), "synthetic", "synthetic", 900, 300,
           "corner markers outside the masks and a scanner curve; synthetic chest and shapes"),
    Member("inmask", FOUR, FOUR, ("inmask:Consolidation", "device:Nodule", "contrast:Effusion"),
           ("Effusion", "Mass", "Consolidation", "Nodule"), "synthetic", "synthetic", 600, 300,
           "cues inside the masks: a grid over the lungs, a line through the lesion, a washed-out contrast"),
    Member("tags", FOUR, FOUR, ("tag:Mass", "tag:Nodule", "scanner:Consolidation"),
           ("Effusion", "Mass", "Consolidation", "Nodule"), "synthetic", "radiograph", 900, 300,
           "text-like tags and a scanner curve on real radiographs with synthetic shapes"),
    Member("chestxdet13", CHESTXDET_CLASSES, ("Atelectasis", "Consolidation", "Effusion", "Mass", "Nodule"),
           ("marker:Nodule", "marker:Mass", "tag:Effusion", "device:Atelectasis"),
           ("Effusion", "Consolidation", "Atelectasis", "Mass", "Nodule"), "chestxdet", "radiograph", 600, 250,
           "ChestX-Det's polygons on real radiographs, 13 classes of which 8 never positive, fewer images"),
)}

# The shipped radiographs and their lung fields as (cy, cx, ry, rx) in units of the image side.
RADIOGRAPHS: tuple[tuple[str, tuple[Lung, Lung]], ...] = (
    ("00000001_000.png", ((0.45, 0.28, 0.25, 0.13), (0.43, 0.71, 0.24, 0.13))),
    ("00027426_000.png", ((0.39, 0.34, 0.23, 0.12), (0.41, 0.74, 0.24, 0.12))),
)
BODY_SCALE = 0.6  # the radiograph's side as a share of the image's; the margin holds the decoys
TILE_SHARE = 0.6  # the margin's tiles: this share of each lung's radii around its centre


@lru_cache(maxsize=4)
def _radiograph_pixels(name: str) -> np.ndarray:
    return np.asarray(Image.open(ASSETS / name).convert("L"), dtype=np.float32) / 255.0


def _resize(img: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img, mode="F").resize((side, side), Image.Resampling.BILINEAR))


def _lung_tiles(photo: np.ndarray, lungs: list[Lung], size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size): a canvas tiled with random patches (flipped at random) of the photo's lung cores."""
    side = photo.shape[0]
    patches = []
    for cy, cx, ry, rx in lungs:
        hy, hx = int(TILE_SHARE * ry * side), int(TILE_SHARE * rx * side)
        y, x = int(cy * side), int(cx * side)
        patches.append(photo[max(0, y - hy): y + hy, max(0, x - hx): x + hx])
    ph = min(p.shape[0] for p in patches)
    pw = min(p.shape[1] for p in patches)
    canvas = np.empty((size, size), np.float32)
    for y0 in range(0, size, ph):
        for x0 in range(0, size, pw):
            patch = patches[int(rng.integers(len(patches)))][:ph, :pw]
            if rng.random() < 0.5:
                patch = patch[::-1]
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            h, w = min(ph, size - y0), min(pw, size - x0)
            canvas[y0: y0 + h, x0: x0 + w] = patch[:h, :w]
    return canvas


def radiograph_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """A real radiograph at :data:`BODY_SCALE` (jittered) on a margin tiled from its lungs.

    Returns the image (H, W) in [0, 1], the body (the radiograph's footprint, H, W), the lung fields'
    soft mask (H, W) and the lungs as (cy, cx, ry, rx) in units of the image side.
    """
    name, source_lungs = RADIOGRAPHS[int(rng.integers(len(RADIOGRAPHS)))]
    side = int(round(size * (BODY_SCALE + rng.uniform(-0.02, 0.02))))
    room = size - side
    oy, ox = (int(rng.integers(room // 2 - size // 50, room // 2 + size // 50 + 1)) for _ in range(2))
    photo = np.clip(_resize(_radiograph_pixels(name), side), 0, 1) ** float(rng.uniform(0.9, 1.1))
    canvas = _lung_tiles(photo, list(source_lungs), size, rng)
    canvas[oy: oy + side, ox: ox + side] = photo
    body = np.zeros((size, size), np.float32)
    body[oy: oy + side, ox: ox + side] = 1.0
    lungs = [((oy + cy * side) / size, (ox + cx * side) / size, ry * side / size, rx * side / size)
             for cy, cx, ry, rx in source_lungs]
    return canvas, body, lung_fields(lungs, size), lungs


def chestxdet_polygon(label: str, lung: Lung, size: int, rng: np.random.Generator) -> np.ndarray:
    """(16, 2) pixel polygon: one of ChestX-Det's ``label`` outlines at the radiograph's scale, shrunk
    until it fits in the lung's core, centred in ``lung``."""
    bank = shape_bank()[label]
    outline = bank[int(rng.integers(len(bank)))] * BODY_SCALE * size
    cy, cx, ry, rx = lung
    fit_h, fit_w = 1.7 * ry * (1 - 2 * LUNG_EDGE) * size, 1.7 * rx * (1 - 2 * LUNG_EDGE) * size
    extent = outline.max(0) - outline.min(0)  # (width, height)
    outline = outline * min(1.0, fit_w / max(extent[0], 1e-6), fit_h / max(extent[1], 1e-6))
    y, x = point_in_lung(rng, lung, 0.3)
    return outline - outline.mean(0) + np.array([x * size, y * size])


# ---- cues beyond v2's markers and scanner curve -------------------------------------------------

GLYPHS = ("111101111", "010010010", "111011111", "101111001", "110101011", "111100111")  # 3x3 blocks
TAG_TEXT = ((0, 3, 2, 5, 1), (4, 1, 1, 0, 2, 3))  # the glyphs of tag 0 and tag 1


def tag_zones(size: int) -> np.ndarray:
    """(size, size) bool: every pixel a tag may cover (a band at the top, one at the bottom)."""
    zones = np.zeros((size, size), bool)
    band = max(3, size // 14)
    zones[: band + 2, size // 5: size - size // 5] = True
    zones[size - band - 2:, size // 5: size - size // 5] = True
    return zones


def burn_tag(img: np.ndarray, which: int, rng: np.random.Generator) -> None:
    """Burn text-like tag ``which`` (0: top band, 1: bottom band) into ``img`` in place, jittered."""
    size = img.shape[0]
    unit = max(1, size // 96)
    width = len(TAG_TEXT[which]) * 4 * unit
    y0 = unit + int(rng.integers(0, unit + 1)) if which == 0 else size - 5 * unit - int(rng.integers(0, unit + 1))
    x0 = int(rng.integers(size // 5 + unit, max(size // 5 + unit + 1, size - size // 5 - width - unit)))
    for k, glyph in enumerate(TAG_TEXT[which]):
        cells = np.array([int(b) for b in GLYPHS[glyph]], bool).reshape(3, 3)
        block = np.kron(cells, np.ones((unit, unit), bool))
        y, x = y0, x0 + k * 4 * unit
        img[y: y + 3 * unit, x: x + 3 * unit][block] = MARKER_LEVEL


def device_line(img: np.ndarray, target: tuple[float, float], rng: np.random.Generator) -> None:
    """Draw a catheter-like bright line from the top edge through ``target`` (x, y pixels) and a little
    beyond, in place."""
    size = img.shape[0]
    tx, ty = target
    x0 = tx + float(rng.uniform(-0.12, 0.12)) * size
    t = np.linspace(0.0, 1.15, 40)
    control = (x0, 0.45 * ty)
    xs = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * control[0] + t ** 2 * tx
    ys = 2 * (1 - t) * t * control[1] + t ** 2 * ty
    line = stroke_mask(list(zip(xs.tolist(), ys.tolist())), size, max(1, size // 128))
    np.maximum(img, 0.88 * line, out=img)


def lung_grid(img: np.ndarray, lung_mask: np.ndarray) -> None:
    """Add a fine horizontal grid (an anti-scatter-grid artefact) over the lung fields, in place;
    zero-mean over a period, so it changes the texture and not the level."""
    size = img.shape[0]
    period = max(2, size // 64)
    rows = ((np.arange(size) // (period // 2 or 1)) % 2).astype(np.float32) - 0.5
    img += 0.08 * rows[:, None] * lung_mask


def washed_out(img: np.ndarray) -> np.ndarray:
    """Another detector: a raised floor and a flatter contrast."""
    return 0.12 + 0.8 * np.clip(img, 0, 1)


def device_targets(member: Member, labels: list[str], drawn: dict[str, np.ndarray], lungs: list,
                   size: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """(x, y) pixels each device cue's line goes through: its class's lesion when positive, else a lung."""
    targets = []
    for name in member.cues:
        kind, cls = name.split(":")
        if kind != "device":
            continue
        if cls in labels:
            targets.append(tuple(drawn[cls].mean(0).tolist()))
        else:
            y, x = point_in_lung(rng, lungs[int(rng.integers(0, len(lungs)))], 0.3)
            targets.append((x * size, y * size))
    return targets
