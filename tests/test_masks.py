"""Boxes, polygons and run-length masks to cache masks (hegl_cli.data.masks), as properties."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hegl_cli.data.images import Geometry
from hegl_cli.data.masks import clip_polygon, rasterize_findings
from hegl_cli.data.records import Finding

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points=st.lists(st.tuples(finite, finite), min_size=3, max_size=8),
       box=st.tuples(finite, finite, finite, finite), height=st.integers(1, 300), width=st.integers(1, 300))
def test_masks_from_any_finite_geometry_stay_in_the_image(points, box, height, width):
    size = 16
    side = max(height, width)
    geometry = Geometry(height, width, (side - width) // 2, (side - height) // 2, size / side)
    x1, y1, x2, y2 = box
    findings = [Finding("Nodule", (min(x1, x2), min(y1, y2), max(x1, x2) + 1.0, max(y1, y2) + 1.0), list(points)),
                Finding("Mass", (min(x1, x2), min(y1, y2), max(x1, x2) + 1.0, max(y1, y2) + 1.0), None)]
    masks, has_mask, clipped = rasterize_findings(findings, ["Nodule", "Mass"], geometry, size, "polygon")
    assert masks.shape == (2, size, size) and set(np.unique(masks)) <= {0, 1}
    assert 0 <= clipped <= 2
    # A box inside the image covers exactly the pixels it overlaps.
    bx1, by1, bx2, by2 = (min(x1, x2), min(y1, y2), max(x1, x2) + 1.0, max(y1, y2) + 1.0)
    if 0 <= bx1 and 0 <= by1 and bx2 <= width and by2 <= height:
        (px1, py1), (px2, py2) = geometry.transform_xy(bx1, by1), geometry.transform_xy(bx2, by2)
        expected = (math.ceil(px2) - math.floor(px1)) * (math.ceil(py2) - math.floor(py1))
        assert masks[1].sum() == min(expected, size * size)


@settings(max_examples=300, deadline=None)
@given(points=st.lists(st.tuples(finite, finite), min_size=3, max_size=8))
def test_polygon_clipping_stays_inside_and_keeps_inner_polygons(points):
    clipped = clip_polygon(points, 0.0, 10.0)
    assert all(-1e-6 <= v <= 10 + 1e-6 for p in clipped for v in p)
    if all(0 <= v <= 10 for p in points for v in p):
        assert clipped == [(float(x), float(y)) for x, y in points]


def test_polygon_clipping_hand_case():
    square = [(-5.0, -5.0), (5.0, -5.0), (5.0, 5.0), (-5.0, 5.0)]
    clipped = clip_polygon(square, 0.0, 10.0)
    assert sorted(clipped) == sorted([(0.0, 0.0), (5.0, 0.0), (5.0, 5.0), (0.0, 5.0)])
    assert clip_polygon([(20.0, 20.0), (30.0, 20.0), (30.0, 30.0)], 0.0, 10.0) == []


# --- issue 21: masks exactly as the README's rules say ----------------------------------------------
def test_run_length_masks_are_united_before_they_are_resampled():
    """Two regions that each cover a quarter of a cache pixel cover half of it together: the pixel is
    in the mask (thresholding each region first lost it)."""
    from hegl_cli.data.images import square_and_resize
    from hegl_cli.data.masks import rasterize_findings

    side, size = 8, 4  # a cache pixel is 2x2 original pixels
    _, geometry = square_and_resize(np.zeros((side, side), np.float32), size)

    def rle(pixels: list[int]) -> str:  # column-major offsets, SIIM's relative form
        flat = sorted(x * side + y for x, y in pixels)
        out, position = [], 0
        for start in flat:
            out += [start - position, 1]
            position = start + 1
        return " ".join(map(str, out))

    findings = [Finding("Pneumothorax", (0, 0, 1, 1), rle=rle([(0, 0)])),
                Finding("Pneumothorax", (0, 0, 1, 1), rle=rle([(1, 1)]))]
    masks, has_mask, _ = rasterize_findings(findings, ["Pneumothorax"], geometry, size)
    assert has_mask[0] and masks[0, 0, 0] == 1 and masks.sum() == 1


@settings(max_examples=300, deadline=None)
@example(side=2704, size=224, edges=[0, 2535, 0, 10])  # 2535 * (224 / 2704) = 210.00000000000003 in floats
@given(side=st.integers(30, 3000), size=st.sampled_from([16, 32, 64, 128, 224]),
       edges=st.lists(st.integers(0, 3000), min_size=4, max_size=4))
def test_box_masks_fill_exactly_the_pixels_a_box_overlaps(side, size, edges):
    """Against exact rational arithmetic: (x + pad) * size / side in floating point put an edge that
    lands on a pixel boundary at 62.99999999999999 and filled a strip outside the box."""
    from fractions import Fraction

    from hegl_cli.data.images import square_and_resize
    from hegl_cli.data.masks import rasterize_findings

    x1, x2 = sorted(min(e, side) for e in edges[:2])
    y1, y2 = sorted(min(e, side) for e in edges[2:])
    if x2 == x1 or y2 == y1:
        return
    _, geometry = square_and_resize(np.zeros((side, side), np.float32), size)
    masks, _, _ = rasterize_findings([Finding("Nodule", (x1, y1, x2, y2))], ["Nodule"], geometry, size)
    cols = range(math.floor(Fraction(x1 * size, side)), math.ceil(Fraction(x2 * size, side)))
    rows = range(math.floor(Fraction(y1 * size, side)), math.ceil(Fraction(y2 * size, side)))
    expected = np.zeros((size, size), np.uint8)
    expected[rows.start:rows.stop, cols.start:cols.stop] = 1
    np.testing.assert_array_equal(masks[0], expected)


def test_a_pixel_mask_is_resampled_by_its_exact_area():
    """The half-area rule at 1024 -> 224 px (a ratio of 32/7), against a grid fine enough to count
    every area exactly (7x7 sub-pixels per original pixel, 32x32 per cache pixel)."""
    from hegl_cli.data.images import square_and_resize
    from hegl_cli.data.masks import area_coverage, resample_mask

    rng = np.random.default_rng(1)
    blobs = np.zeros((1024, 1024), np.uint8)
    for _ in range(40):
        y, x, r = rng.integers(0, 1024, 2).tolist() + [int(rng.integers(3, 60))]
        yy, xx = np.ogrid[:1024, :1024]
        blobs |= ((yy - y) ** 2 + (xx - x) ** 2 <= r * r).astype(np.uint8)
    exact = np.kron(blobs, np.ones((7, 7), np.uint8)).reshape(224, 32, 224, 32).mean((1, 3))
    assert np.abs(area_coverage(blobs, 224) - exact).max() < 1e-9
    _, geometry = square_and_resize(np.zeros((1024, 1024), np.float32), 224)
    np.testing.assert_array_equal(resample_mask(blobs.astype(bool), geometry, 224), (exact >= 0.5).astype(np.uint8))
