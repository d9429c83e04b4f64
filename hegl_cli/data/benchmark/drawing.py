"""Drawing primitives shared by the built-in benchmarks: soft shapes, noise, polygons, placement."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

LUNG_LEVEL, BODY_LEVEL = 0.24, 0.56
LUNG_EDGE = 0.06  # width of the lung field's soft rim, as a share of its radius
RIB_MEAN = 2.0 / (3.0 * np.pi)  # mean of max(cos, 0)^3 over a period: ribs leave the lung mean unchanged
MARKER_LEVEL = 0.97
PLACEMENT_TRIES = 200  # no draw in 8000 images of the default spec needed more than this

Lung = tuple[float, float, float, float]  # (cy, cx, ry, rx) in units of the image side


def ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, soft: float) -> np.ndarray:
    """Soft-edged ellipse indicator in [0, 1]; ``soft`` is the edge width in normalised units."""
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 - d) / max(soft, 1e-6), 0.0, 1.0)


def lung_fields(lungs: list[Lung], size: int) -> np.ndarray:
    """(size, size) soft mask in [0, 1] of the union of the lung ellipses."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    mask = np.zeros((size, size), np.float32)
    for cy, cx, ry, rx in lungs:
        mask = np.maximum(mask, ellipse(yy, xx, cy, cx, ry, rx, LUNG_EDGE))
    return mask


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a random ``cells`` grid upsampled bicubically."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def point_in_lung(rng: np.random.Generator, lung: Lung, margin: float) -> tuple[float, float]:
    """A uniform point (cy, cx) of ``lung`` at least ``margin`` (share of its radii) from its rim."""
    cy, cx, ry, rx = lung
    while True:
        u, v = rng.uniform(-1, 1, size=2)
        if u * u + v * v <= (1 - margin) ** 2:
            return cy + u * ry, cx + v * rx


def polygon_mask(points: np.ndarray, size: int) -> np.ndarray:
    """(size, size) in {0, 1} of the filled (n, 2) (x, y) pixel polygon."""
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points.tolist()], fill=255)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def polygon_area(polygon: np.ndarray) -> float:
    """Area in pixels of an (n, 2) polygon (shoelace formula)."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def centred_at(polygon: np.ndarray, y: float, x: float) -> np.ndarray:
    """The (n, 2) (x, y) polygon moved so that the mean of its points is at (x, y)."""
    return polygon - polygon.mean(0) + np.array([x, y])


def place(draw: Any, accept: Any, occupied: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw a polygon with ``draw(rng)`` until it lies inside the image, touches no ``occupied``
    pixel and ``accept(region)`` holds (the last draw is kept after :data:`PLACEMENT_TRIES`);
    mark it occupied. Returns (polygon (n, 2) in pixels, region (H, W) in [0, 1]).

    Shapes never overlap one another nor the cue zones: overlaps would brighten pixels more often
    where shapes crowd (the air holds more decoys than a lung holds lesions), a histogram cue.
    """
    size = occupied.shape[0]
    for _ in range(PLACEMENT_TRIES):
        polygon = draw(rng)
        region = polygon_mask(polygon, size)
        inside_image = region.sum() >= 0.97 * polygon_area(polygon) > 0
        if inside_image and not (region * occupied).any() and accept(region):
            break
    np.maximum(occupied, region > 0, out=occupied)
    return polygon, region


def stroke_mask(points: list[tuple[float, float]], size: int, width: int) -> np.ndarray:
    """(size, size) in {0, 1}: a polyline through (x, y) pixel ``points``, ``width`` pixels wide."""
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).line(points, fill=255, width=width, joint="curve")
    return np.asarray(canvas, dtype=np.float32) / 255.0
