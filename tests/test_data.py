"""`hegl prepare`: real ChestX-Det annotations, bad input, synthetic data, image formats."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import shared_data
from hegl_cli.apps.prepare import prepare, prepare_synthetic
from hegl_cli.cli.app import app
from hegl_cli.config import Config
from hegl_cli.data.benchmark.generator import SyntheticSpec
from hegl_cli.data.cache import CachedSplit
from hegl_cli.data.formats.chestxdet import CHESTXDET10_CLASSES, CHESTXDET_CLASSES
from hegl_cli.data.images import load_image, preprocess_file, square_and_resize
from hegl_cli.data.options import PrepareOptions
from hegl_cli.data.splits import carve_validation

runner = CliRunner()


def _link_images(records: list[dict], folder: Path, template: Path) -> None:
    """One file per record with the template's bytes (links to one file would be one image: hegl keeps
    an image in one place whatever names list it)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = template.read_bytes()
    for r in records:
        target = folder / r["file_name"]
        if not target.exists():
            target.write_bytes(data)


@pytest.fixture(scope="module")
def blank_1024(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "blank.png"
    Image.fromarray(np.full((1024, 1024), 40, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("fmt,folder,names,counts,classes", [
    ("chestxdet", "chestxdet", ("ChestX_Det_train.json", "ChestX_Det_test.json"), (3025, 553), CHESTXDET_CLASSES),
    ("chestxdet10", "chestxdet/det10", ("train.json", "test.json"), (3001, 542), CHESTXDET10_CLASSES),
])
def test_import_real_annotations(tmp_path, blank_1024, fmt, folder, names, counts, classes):
    src = shared_data(folder)
    layout = tmp_path / "download"
    layout.mkdir()
    expected_counts = {}
    for split, name in zip(("train", "test"), names):
        records = json.loads((src / name).read_text())
        (layout / name).symlink_to(src / name)
        _link_images(records, layout / ("train_data" if split == "train" else "test"), blank_1024)
        expected_counts[split] = Counter(s for r in records for s in set(r["syms"]))
    result = prepare(fmt, Config(), PrepareOptions(image_size=16, val_fraction=0.1, progress=False),
                     tmp_path / "cache", source=layout)
    m = result.manifest
    assert m["classes"] == list(classes)
    assert m["splits"]["train"] + m["splits"]["val"] == counts[0]
    assert m["splits"]["test"] == counts[1]
    assert result.problems == []
    train_plus_val = Counter(m["class_counts"]["train"]) + Counter(m["class_counts"]["val"])
    assert {k: v for k, v in train_plus_val.items() if v} == dict(expected_counts["train"])
    assert {k: v for k, v in m["class_counts"]["test"].items() if v} == dict(expected_counts["test"])
    if fmt == "chestxdet":
        test = CachedSplit(tmp_path / "cache", "test")
        assert int(test.labels.sum(1).__eq__(0).sum()) == 64  # "no finding" records in the README


def _write_dataset(root: Path, records: list[dict], size=(64, 64), skip: tuple[str, ...] = ()) -> Path:
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    for split in ("train", "test"):
        for r in records:
            if r["file_name"] in skip or "/" in r["file_name"]:
                continue
            Image.fromarray(np.full(size[::-1], 100, np.uint8)).save(root / split / r["file_name"])
        (root / f"ChestX_Det_{split}.json").write_text(json.dumps(records))
    return root


def _good(name: str, label="Nodule", box=(10, 10, 20, 20)) -> dict:
    x1, y1, x2, y2 = box
    return {"file_name": name, "syms": [label], "boxes": [list(box)],
            "polygons": [[[x1, y1], [x2, y1], [x2, y2], [x1, y2]]]}


def _prepare(args: list[str]):
    return runner.invoke(app, ["prepare", *args])


@pytest.mark.parametrize("bad,message", [
    ({"file_name": "bad.png", "syms": ["Nodule", "Mass"], "boxes": [[1, 1, 5, 5]], "polygons": []}, "'syms' has 2 entries but 'boxes' has 1"),
    ({"file_name": "bad.png", "syms": ["Tumour"], "boxes": [[1, 1, 5, 5]], "polygons": [[]]}, "unknown class 'Tumour'"),
    ({"file_name": "../etc/passwd", "syms": [], "boxes": [], "polygons": []}, "escapes the images folder"),
    ({"file_name": "/abs.png", "syms": [], "boxes": [], "polygons": []}, "escapes the images folder"),
    ({"file_name": "bad.png", "syms": ["Nodule"], "boxes": [[5, 5, 1, 1]], "polygons": [[]]}, "has no area"),
])
def test_bad_record_is_named_and_skipped_and_valid_ones_kept(tmp_path, bad, message):
    src = _write_dataset(tmp_path / "src", [_good("a.png"), bad, _good("b.png", "Mass")])
    result = _prepare(["--format", "chestxdet", "--source", str(src), "--out", str(tmp_path / "c"), "--image-size", "16",
                       "--set", "data.val_fraction=0"])
    assert result.exit_code == 0, result.output
    assert message in result.output and "record 1" in result.output
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["splits"]["train"] == 2 and manifest["splits"]["test"] == 2
    strict = _prepare(["--format", "chestxdet", "--source", str(src), "--out", str(tmp_path / "s"), "--image-size", "16",
                       "--strict"])
    assert strict.exit_code == 2 and message in strict.output
    assert not (tmp_path / "s").exists()


def test_duplicates_missing_images_and_clipping(tmp_path):
    records = [_good("a.png", box=(50, 50, 90, 70)), _good("a.png"), _good("gone.png"), _good("b.png")]
    src = _write_dataset(tmp_path / "src", records, skip=("gone.png",))
    (src / "train" / "b.png").write_bytes(b"not an image")
    result = _prepare(["--format", "chestxdet", "--source", str(src), "--out", str(tmp_path / "c"), "--image-size", "16",
                       "--set", "data.val_fraction=0"])
    assert result.exit_code == 0, result.output
    assert "duplicate file_name" in result.output
    assert "gone.png" in result.output and "b.png" in result.output
    assert "clipped" in result.output
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["splits"]["train"] == 1  # a.png only: gone.png missing, b.png unreadable
    assert m["clipped_boxes"] >= 1


def test_existing_cache_is_kept_without_force(tmp_path):
    src = _write_dataset(tmp_path / "src", [_good("a.png"), _good("b.png")])
    out = tmp_path / "c"
    args = ["--format", "chestxdet", "--source", str(src), "--out", str(out), "--image-size", "16"]
    assert _prepare(args).exit_code == 0
    before = (out / "train" / "images.npy").read_bytes()
    assert "up to date" in _prepare(args).output
    changed = _prepare(args[:-1] + ["24"])
    assert changed.exit_code == 2 and "--force" in changed.output
    assert (out / "train" / "images.npy").read_bytes() == before
    assert _prepare(args[:-1] + ["24", "--force"]).exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["image_size"] == 24


def test_missing_source_layout_errors(tmp_path):
    result = _prepare(["--format", "chestxdet", "--source", str(tmp_path)])
    assert result.exit_code == 2 and "ChestX_Det_train.json" in result.output
    result = _prepare(["--format", "nope", "--source", str(tmp_path)])
    assert result.exit_code == 2 and "unknown format" in result.output
    (tmp_path / "ChestX_Det_train.json").write_text("{not json")
    (tmp_path / "ChestX_Det_test.json").write_text("[]")
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    result = _prepare(["--format", "chestxdet", "--source", str(tmp_path), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "ChestX_Det_train.json: not valid JSON" in result.output


def test_explicit_annotations_and_images(tmp_path):
    src = _write_dataset(tmp_path / "src", [_good("a.png"), _good("b.png")])
    result = _prepare(["--format", "chestxdet", "--annotations", f"train={src / 'ChestX_Det_train.json'}",
                       "--images", f"train={src / 'train'}", "--out", str(tmp_path / "c"), "--image-size", "16",
                       "--set", "data.val_fraction=0.5"])
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["splits"] == {"train": 1, "val": 1}


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_synthetic_noop_force_and_bit_identical(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["prepare", "--set", "data.synthetic_train=24", "--set", "data.synthetic_test=8",
            "--set", "data.synthetic_source_size=64", "--image-size", "32"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    cache = tmp_path / "data" / "synthetic"
    digest = _tree_digest(cache)
    mtime = (cache / "manifest.json").stat().st_mtime_ns
    second = runner.invoke(app, args)
    assert "up to date" in second.output and (cache / "manifest.json").stat().st_mtime_ns == mtime
    assert runner.invoke(app, args + ["--force"]).exit_code == 0
    assert _tree_digest(cache) == digest
    other = tmp_path / "other"
    assert runner.invoke(app, args + ["--out", str(other)]).exit_code == 0
    assert _tree_digest(other) == digest
    m = json.loads((cache / "manifest.json").read_text())
    assert set(m["splits"]) == {"train", "val", "test", "test_counterfactual"}
    for key in ("format", "classes", "image_size", "splits", "class_counts", "source", "hegl_version"):
        assert key in m


def test_interrupted_prepare_leaves_no_cache(tmp_path, monkeypatch):
    import hegl_cli.data.build as prep

    def boom(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep.SplitWriter, "close", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare_synthetic(tmp_path / "c", PrepareOptions(image_size=16, progress=False, workers=1),
                          SyntheticSpec(n_train=8, n_test=4, size=32))
    assert not (tmp_path / "c").exists()
    assert not list(tmp_path.glob("c.partial-*"))


def test_validation_split_is_deterministic():
    a = carve_validation(100, 0.2, seed=1)
    b = carve_validation(100, 0.2, seed=1)
    c = carve_validation(100, 0.2, seed=2)
    assert all((x == y).all() for x, y in zip(a, b))
    assert len(a[1]) == 20 and not (a[1] == c[1]).all()
    assert set(a[0]) | set(a[1]) == set(range(100))


def test_image_formats(tmp_path):
    gray16 = (np.arange(40 * 20, dtype=np.uint16).reshape(40, 20) * 50)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    img16 = load_image(tmp_path / "g16.png")
    # issue 20's contract: a 16-bit image is scaled by its bit depth, not stretched to its own range
    assert img16.shape == (40, 20) and img16.min() == 0.0 and img16.max() == np.float32(gray16.max() / 65535)
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg")
    assert load_image(tmp_path / "rgb.jpg").shape == (10, 10)
    square, geometry = square_and_resize(img16, 20)
    assert square.shape == (20, 20)
    assert (geometry.pad_x, geometry.pad_y, geometry.scale) == (10, 0, 0.5)
    assert square[:, :4].max() == 0.0  # padding is black
    assert geometry.transform_xy(0, 0) == (5.0, 0.0)


def test_non_square_annotations_follow_the_padding(tmp_path):
    from hegl_cli.data.masks import rasterize_findings
    from hegl_cli.data.records import Finding

    _, geometry = square_and_resize(np.zeros((50, 100), np.float32), 20)  # pad 25 rows top
    masks, has, clipped = rasterize_findings([Finding("Nodule", (0, 0, 10, 10))], ["Nodule"], geometry, 20, "box")
    assert has.tolist() == [True] and clipped == 0
    ys, xs = np.nonzero(masks[0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 6, 0, 1)


def test_real_png_and_monochrome1_dicom():
    png = load_image(shared_data("cxr", "00000001_000.png"))
    assert png.shape == (512, 512)
    dcm_path = shared_data("cxr", "RG1_UNCR.dcm")
    dcm = load_image(dcm_path)
    assert dcm.shape == (1955, 1841) and 0.0 <= dcm.min() and dcm.max() <= 1.0
    import pydicom

    raw = pydicom.dcmread(dcm_path).pixel_array.astype(np.float32)
    # MONOCHROME1: high stored values are dark, so our bright pixels must be low stored values.
    assert np.corrcoef(raw.ravel()[::97], dcm.ravel()[::97])[0, 1] < -0.5
    pixels, _ = preprocess_file(dcm_path, 64)
    assert pixels.dtype == np.uint8 and pixels.shape == (64, 64)


def test_unreadable_image_error(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("hello")
    from hegl_cli.errors import UserError

    with pytest.raises(UserError, match="cannot read image"):
        load_image(bad)
