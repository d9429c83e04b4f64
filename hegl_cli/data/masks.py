"""Expert annotations (boxes, polygons, run-length pixel masks) -> per-class binary masks in cache coordinates."""

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


def run_lengths(rle: str) -> np.ndarray:
    """SIIM's ``offset length offset length ...`` as int64 (2K,); ValueError for anything else."""
    try:
        values = np.array(rle.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        raise ValueError("run-length mask is not pairs of non-negative numbers") from None
    if len(values) % 2 or (values < 0).any() or not len(values):
        raise ValueError("run-length mask is not pairs of non-negative numbers")
    return values


def decode_rle(rle: str, width: int, height: int) -> np.ndarray:
    """SIIM's relative run-length encoding -> bool (height, width).

    Pairs ``offset length``: each offset counts pixels since the end of the previous run, over the
    column-major flattened image (the first run's offset counts from pixel 0).
    """
    values = run_lengths(rle)
    flat = np.zeros(width * height, bool)
    position = 0
    for offset, length in values.reshape(-1, 2):
        start = position + offset
        if start + length > flat.size:
            raise ValueError(f"run-length mask runs past the {width}x{height} image")
        flat[start : start + length] = True
        position = start + length
    return flat.reshape(width, height).T  # column-major


def decode_pixel_mask(finding: Finding, width: int, height: int) -> np.ndarray:
    """bool (height, width) of a finding's pixel mask: SIIM run lengths, COCO RLE (decoded by
    pycocotools) or a mask image; ValueError when it does not fit the image."""
    if finding.rle is not None:
        return decode_rle(finding.rle, width, height)
    if finding.coco_rle is not None:
        from pycocotools import mask as coco_mask

        rle = dict(finding.coco_rle)
        h, w = (int(v) for v in rle.get("size", (0, 0)))
        if (h, w) != (height, width):
            raise ValueError(f"its COCO mask is {w}x{h} but the image is {width}x{height}")
        if isinstance(rle.get("counts"), list):  # uncompressed RLE
            rle = coco_mask.frPyObjects(rle, h, w)
        return coco_mask.decode(rle).astype(bool)
    try:
        with Image.open(finding.mask_file) as img:
            if (img.width, img.height) != (width, height):  # refused before its pixels are decoded
                raise ValueError(f"its mask {finding.mask_file} is {img.width}x{img.height} but the image is "
                                 f"{width}x{height}")
            mask = np.asarray(img.convert("L")) > 0
    except ValueError:
        raise
    except (OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ValueError(f"its mask {finding.mask_file} cannot be read ({' '.join(str(exc).split())[:160]})") from None
    if mask.shape != (height, width):
        raise ValueError(f"its mask {finding.mask_file} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                         f"{width}x{height}")
    return mask


def area_coverage(square: np.ndarray, size: int) -> np.ndarray:
    """(side, side) 0/1 -> (size, size) float64: the exact share of each cache pixel's area that the mask
    covers, every original pixel a unit square. The integral image of a pixel-constant mask is
    bilinear between integer knots, so its value at every cache pixel boundary is an interpolation."""
    side = square.shape[0]
    integral = np.zeros((side + 1, side + 1), np.float64)
    integral[1:, 1:] = square.astype(np.float64).cumsum(0).cumsum(1)
    bounds = np.arange(size + 1, dtype=np.float64) * side / size
    low = np.minimum(np.floor(bounds).astype(np.int64), side - 1)
    frac = bounds - low

    def along(a: np.ndarray, axis: int) -> np.ndarray:
        first, second = np.take(a, low, axis=axis), np.take(a, low + 1, axis=axis)
        shape = [1, 1]
        shape[axis] = -1
        return first * (1 - frac.reshape(shape)) + second * frac.reshape(shape)

    at_bounds = along(along(integral, 0), 1)  # (size + 1, size + 1)
    area = at_bounds[1:, 1:] - at_bounds[:-1, 1:] - at_bounds[1:, :-1] + at_bounds[:-1, :-1]
    return area / (side / size) ** 2


def resample_mask(mask: np.ndarray, geometry: Geometry, size: int) -> np.ndarray:
    """A pixel mask in original coordinates -> (size, size) uint8 in cache coordinates: padded like the
    image, then a cache pixel is in the mask when at least half of its area is (exactly: see
    :func:`area_coverage`)."""
    side = max(geometry.height, geometry.width)
    square = np.zeros((side, side), np.uint8)
    square[geometry.pad_y : geometry.pad_y + geometry.height, geometry.pad_x : geometry.pad_x + geometry.width] = mask
    if side == size:
        return square
    return (area_coverage(square, size) >= 0.5 - 1e-9).astype(np.uint8)


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
    notes: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw each class's findings into a (size, size) mask.

    Pixel masks (run-length encoded) are used as they are, a class's masks united before they are
    resampled (the README's union rule); polygons where present and ``mask_source == "polygon"``;
    boxes otherwise.

    Returns:
        masks: uint8 (C, size, size) of 0/1.
        has_mask: bool (C,).
        clipped: how many boxes reached outside the original image and were clipped.

    An annotation drawn on an image of another size (``Finding.frame``), or a pixel mask that does not
    fit the image, is left out with a line in ``notes`` (the image and its labels are kept).
    """
    canvases = [Image.new("L", (size, size), 0) for _ in classes]
    has_mask = np.zeros(len(classes), dtype=bool)
    clipped_count = 0
    index = {name: i for i, name in enumerate(classes)}
    pixel_masks: dict[int, np.ndarray] = {}
    for finding in findings:
        c = index[finding.label]
        if finding.frame is not None and tuple(finding.frame) != (geometry.width, geometry.height):
            _note(notes, f"a {finding.label} annotation was drawn on a {finding.frame[0]}x{finding.frame[1]} image "
                         f"but the image is {geometry.width}x{geometry.height}; it was left out")
            continue
        if finding.is_pixel_mask:  # united at full resolution, resampled once below
            try:
                decoded = decode_pixel_mask(finding, geometry.width, geometry.height)
            except (ValueError, OSError) as exc:
                where = f" ({finding.origin})" if finding.origin else ""
                _note(notes, f"a {finding.label} mask{where} was left out, the image and its label kept: {exc}")
                continue
            pixel_masks[c] = decoded if c not in pixel_masks else pixel_masks[c] | decoded
            continue
        box, clipped = clip_box(finding.box, geometry.width, geometry.height)
        clipped_count += int(clipped)
        draw = ImageDraw.Draw(canvases[c])
        if mask_source == "polygon" and finding.polygon:
            points = clip_polygon([geometry.transform_xy(x, y) for x, y in finding.polygon], -1.0, size + 1.0)
            if len(points) < 3:
                _tell(notes, f"a {finding.label} polygon lies entirely outside the image; it was left out")
                continue
            draw.polygon(points, fill=1)
        else:
            if box[2] <= box[0] or box[3] <= box[1]:
                _tell(notes, f"a {finding.label} box lies entirely outside the image; it was left out")
                continue
            # Pixel i covers [i, i+1): fill every pixel the box overlaps, edges computed exactly.
            (x1, x2), (y1, y2) = geometry.pixel_span(box[0], box[2], "x"), geometry.pixel_span(box[1], box[3], "y")
            draw.rectangle([x1, y1, x2, y2], fill=1)
        has_mask[c] = True
    for c, union in pixel_masks.items():
        if not union.any():
            _tell(notes, f"a {classes[c]} mask covers no pixel; the image keeps its label without that mask")
            continue
        canvases[c] = Image.fromarray(np.maximum(np.asarray(canvases[c]), resample_mask(union, geometry, size)))
        has_mask[c] = True
    masks = np.stack([np.asarray(canvas, dtype=np.uint8) for canvas in canvases]) if classes else np.zeros(
        (0, size, size), np.uint8)
    return masks, has_mask, clipped_count


def _tell(notes: list[str] | None, line: str) -> None:
    """A finding left without a mask that is no error (it lies outside the image, it covers nothing):
    named in ``notes`` when the caller keeps them."""
    if notes is not None:
        notes.append(line)


def _note(notes: list[str] | None, line: str) -> None:
    if notes is None:
        raise ValueError(line)
    notes.append(line)
