"""Expert annotations (boxes, polygons) -> per-class binary masks in cache coordinates."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from hegl_cli.data.images import Geometry
from hegl_cli.data.records import Finding


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[tuple[float, ...], bool]:
    """Clip (x1, y1, x2, y2) to the image; returns the box and whether it changed."""
    x1, y1, x2, y2 = box
    clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
               min(max(x2, 0.0), width), min(max(y2, 0.0), height))
    return clipped, clipped != tuple(box)


def decode_rle(rle: str, width: int, height: int) -> np.ndarray:
    """SIIM's relative run-length encoding -> bool (height, width).

    Pairs ``offset length``: each offset counts pixels since the end of the previous run, over the
    column-major flattened image (the first run's offset counts from pixel 0).
    """
    values = np.array(rle.split(), dtype=np.int64)
    if len(values) % 2 or (values < 0).any():
        raise ValueError("run-length mask is not pairs of non-negative numbers")
    flat = np.zeros(width * height, bool)
    position = 0
    for offset, length in values.reshape(-1, 2):
        start = position + offset
        if start + length > flat.size:
            raise ValueError(f"run-length mask runs past the {width}x{height} image")
        flat[start : start + length] = True
        position = start + length
    return flat.reshape(width, height).T  # column-major


def resample_mask(mask: np.ndarray, geometry: Geometry, size: int) -> np.ndarray:
    """A pixel mask in original coordinates -> (size, size) uint8 in cache coordinates: padded like
    the image, then a cache pixel is in the mask when at least half of its area is (area average)."""
    side = max(geometry.height, geometry.width)
    square = np.zeros((side, side), np.float32)
    square[geometry.pad_y : geometry.pad_y + geometry.height, geometry.pad_x : geometry.pad_x + geometry.width] = mask
    if side != size:
        square = np.asarray(Image.fromarray(square, mode="F").resize((size, size), Image.Resampling.BOX))
    return (square >= 0.5).astype(np.uint8)


def clip_polygon(points: list[tuple[float, float]], low: float, high: float) -> list[tuple[float, float]]:
    """Sutherland-Hodgman: the part of a polygon inside the square [low, high]^2 (exact, any finite input)."""
    edges = ((0, low, True), (0, high, False), (1, low, True), (1, high, False))
    far = 1e12  # bring overflowing (inf) or absurd coordinates into float range first
    out = [(min(max(x, -far), far), min(max(y, -far), far)) for x, y in points]
    for axis, bound, keep_above in edges:
        if not out:
            break
        src, out = out, []

        def inside(p, axis=axis, bound=bound, keep_above=keep_above) -> bool:
            return p[axis] >= bound if keep_above else p[axis] <= bound

        for i, cur in enumerate(src):
            prev = src[i - 1]
            if inside(cur) != inside(prev):
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = [prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])]
                cross[axis] = bound
                out.append((cross[0], cross[1]))
            if inside(cur):
                out.append(cur)
    return out


def rasterize_findings(
    findings: list[Finding],
    classes: list[str],
    geometry: Geometry,
    size: int,
    mask_source: str = "polygon",
) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw each class's findings into a (size, size) mask.

    Pixel masks (run-length encoded) are used as they are; polygons where present and
    ``mask_source == "polygon"``; boxes otherwise.

    Returns:
        masks: uint8 (C, size, size) of 0/1.
        has_mask: bool (C,).
        clipped: how many boxes reached outside the original image and were clipped.
    """
    canvases = [Image.new("L", (size, size), 0) for _ in classes]
    has_mask = np.zeros(len(classes), dtype=bool)
    clipped_count = 0
    index = {name: i for i, name in enumerate(classes)}
    for finding in findings:
        c = index[finding.label]
        if finding.rle is not None:  # a pixel mask (SIIM): no box to clip
            pixels = resample_mask(decode_rle(finding.rle, geometry.width, geometry.height), geometry, size)
            canvases[c] = Image.fromarray(np.maximum(np.asarray(canvases[c]), pixels))
            has_mask[c] = True
            continue
        box, clipped = clip_box(finding.box, geometry.width, geometry.height)
        clipped_count += int(clipped)
        draw = ImageDraw.Draw(canvases[c])
        if mask_source == "polygon" and finding.polygon:
            points = clip_polygon([geometry.transform_xy(x, y) for x, y in finding.polygon], -1.0, size + 1.0)
            if len(points) < 3:
                continue  # entirely outside the image
            draw.polygon(points, fill=1)
        else:
            if box[2] <= box[0] or box[3] <= box[1]:
                continue  # entirely outside the image
            (x1, y1), (x2, y2) = geometry.transform_xy(box[0], box[1]), geometry.transform_xy(box[2], box[3])
            # Pixel i covers [i, i+1): fill every pixel the box overlaps.
            draw.rectangle([int(np.floor(x1)), int(np.floor(y1)), int(np.ceil(x2)) - 1, int(np.ceil(y2)) - 1], fill=1)
        has_mask[c] = True
    masks = np.stack([np.asarray(canvas, dtype=np.uint8) for canvas in canvases]) if classes else np.zeros(
        (0, size, size), np.uint8)
    return masks, has_mask, clipped_count
