"""Issue 11 beyond the one-line catalogue: skip-and-go-on behaviour, real concurrency, clean-up of a
killed prepare, and property-based tests of the annotation readers and the mask geometry."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fault_catalogue import RECORDS, make_source, write_png
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.cli.app import app
from hegl_cli.data.chestxdet import CHESTXDET_CLASSES, Finding, parse_record
from hegl_cli.data.images import Geometry
from hegl_cli.data.masks import clip_polygon, rasterize_findings

runner = CliRunner()


def test_explain_goes_on_after_a_bad_image_and_exits_2(trained_run, tmp_path):
    folder = tmp_path / "inbox"
    write_png(folder / "good1.png", seed=1)
    (folder / "broken.png").write_text("not a png")
    write_png(folder / "good2.png", seed=2)
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(folder), "--run", str(trained_run), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert sorted(p.name for p in out.iterdir()) == ["good1", "good2"]
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    assert "1 input(s) skipped, 2 explained" in result.output


def test_prepare_skips_bad_records_and_names_them_literally(tmp_path):
    """Non-strict prepare: bad records are named and skipped, the rest imported; '[...]' is printed as is."""
    src = make_source(tmp_path / "src")
    write_png(src / "train" / "[b]odd[/b].png", seed=9)
    records = [*RECORDS, {"file_name": "./a.png", "syms": [], "boxes": []}, {"file_name": "e.png"},
               {"file_name": "[b]odd[/b].png", "syms": ["Nodule"], "boxes": [[1, 1, float("nan"), 4]]}]
    (tmp_path / "train.json").write_text(json.dumps(records))
    result = runner.invoke(app, ["prepare", "--format", "chestxdet", "--annotations", f"train={tmp_path / 'train.json'}",
                                 "--images", f"train={src / 'train'}", "--out", str(tmp_path / "cache"),
                                 "--image-size", "32", "--workers", "1", "--set", "data.val_fraction=0.25"])
    assert result.exit_code == 0, result.output
    assert "duplicate file_name 'a.png'" in result.output and "no 'syms' or 'boxes' list" in result.output
    assert "([b]odd[/b].png): box 0 has a non-finite coordinate" in result.output
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert sum(manifest["splits"].values()) == 4 and manifest["skipped"] == 3


def test_a_killed_prepare_leaves_nothing_that_lasts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / "data" / f"synthetic.partial-{dead.pid}"
    stale.mkdir(parents=True)
    (stale / "images.npy").write_bytes(b"half")
    alive = tmp_path / "data" / f"synthetic.partial-{os.getpid()}x"  # not ours to judge: left alone
    alive.mkdir()
    result = runner.invoke(app, ["-q", "prepare", "--image-size", "32", "--workers", "1", "--set",
                                 "data.synthetic_train=16", "--set", "data.synthetic_test=4", "--set",
                                 "data.synthetic_source_size=64"])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["synthetic", alive.name]


def test_divergence_in_the_first_epoch_promises_no_checkpoint(tiny_cache, tmp_path, monkeypatch):
    from hegl_cli.losses import HybridCriterion

    original = HybridCriterion.forward

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        terms["ce"] = terms["ce"] * float("inf")
        return terms

    monkeypatch.setattr(HybridCriterion, "forward", poisoned)
    args = ["train", "--name", "d", "--runs-dir", str(tmp_path)]
    for item in TINY_OVERRIDES + [f"data.path={tiny_cache}"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "epoch 1, step 1" in result.output and "no checkpoint was written" in result.output
    assert "is kept" not in result.output


def test_a_cnn_trains_with_the_default_config(tiny_cache, tmp_path):
    """default.yaml's ViT depth must not break `--set model.encoder=resnet18` (0.1.0 crashed)."""
    args = ["train", "--name", "cnn", "--runs-dir", str(tmp_path)]
    for item in [f"data.path={tiny_cache}", "data.image_size=32", "model.text_encoder=none", "model.encoder=resnet18",
                 "train.epochs=1", "train.device=cpu", "model.decoder_dim=32", "model.decoder_ffn=64"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_two_trainings_of_one_name_at_once(tiny_cache, tmp_path):
    """One wins, the other exits 2 naming the holder; the run's metrics come from one process only."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = []
    for item in TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.epochs=3"]:
        args += ["--set", item]
    cmd = [sys.executable, "-m", "hegl_cli", "-q", "train", "--name", "same", "--runs-dir", str(tmp_path), *args]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    loser = next(err for p, (_, err) in zip(procs, outputs) if p.returncode == 2)
    assert ("is in use by pid" in loser or "already exists" in loser) and "Traceback" not in loser
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "same" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


# --- property-based: annotation readers and geometry ---------------------------------------------
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
coordinate = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**6, 10**6)


@settings(max_examples=300, deadline=None)
@given(raw=anything)
def test_any_json_value_is_a_record_or_a_reason(raw):
    try:
        record = parse_record(raw, CHESTXDET_CLASSES)
    except ValueError as exc:
        assert str(exc)
        return
    for finding in record.findings:  # whatever got through is finite and well formed
        assert finding.label in CHESTXDET_CLASSES
        assert all(math.isfinite(v) for v in finding.box) and finding.box[2] > finding.box[0]


@settings(max_examples=300, deadline=None)
@given(box=st.lists(coordinate, min_size=4, max_size=4),
       polygon=st.lists(st.lists(coordinate, min_size=2, max_size=2), max_size=6))
def test_records_with_any_numbers_are_finite_or_refused(box, polygon):
    raw = {"file_name": "x.png", "syms": ["Nodule"], "boxes": [box], "polygons": [polygon]}
    try:
        record = parse_record(raw, CHESTXDET_CLASSES)
    except ValueError:
        return
    finding = record.findings[0]
    assert all(math.isfinite(v) for v in finding.box)
    assert finding.polygon is None or all(math.isfinite(v) for p in finding.polygon for v in p)


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
