"""Boxes, polygons and run-length masks to cache masks (hegl_cli.data.masks), as properties."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
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
