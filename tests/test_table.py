"""`hegl prepare --format table` (hegl_cli.data.formats.table): a radiology team's own data, read by
the same importer as the public formats. The proof: ChestX-Det as a table + COCO file, and NIH's own
CSVs as a table, give caches identical to `--format chestxdet` and `--format nih` on the same images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_datasets import nih_source  # noqa: F401 - the fixture
from typer.testing import CliRunner

from conftest import shared_data
from hegl_cli.cli.app import app
from hegl_cli.data.cache import CachedSplit
from hegl_cli.data.formats.chestxdet import CHESTXDET_CLASSES
from hegl_cli.data.formats.nih import NIH_CLASSES

runner = CliRunner()
SIZE = 64


def prepare(*args: str) -> dict:
    result = runner.invoke(app, ["-q", "prepare", "--image-size", str(SIZE), "--workers", "1", *args])
    assert result.exit_code == 0, result.output
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "manifest.json").read_text())


def same_cache(a: Path, b: Path, name=lambda f: Path(f).name) -> None:
    """Labels, masks, metadata and split membership equal image by image (file names may differ in folder)."""
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma["classes"] == mb["classes"] and ma["splits"] == mb["splits"]
    for split in ma["splits"]:
        sa, sb = CachedSplit(a, split), CachedSplit(b, split)
        assert [name(f) for f in sa.files] == [name(f) for f in sb.files], split
        np.testing.assert_array_equal(sa.labels, sb.labels)
        np.testing.assert_array_equal(sa.has_mask, sb.has_mask)
        np.testing.assert_array_equal(sa.images, sb.images)
        for i in range(len(sa)):
            np.testing.assert_array_equal(sa.masks(i), sb.masks(i))


def chestxdet_subset(root: Path, n_train: int = 60, n_test: int = 30) -> dict[str, list[dict]]:
    """Real ChestX-Det records (a subset) with stand-in 1024 px images, in the official layout."""
    rng = np.random.default_rng(0)
    subset = {}
    for split, n in (("train", n_train), ("test", n_test)):
        records = json.loads(shared_data("chestxdet", f"ChestX_Det_{split}.json").read_text())[:n]
        (root / split).mkdir(parents=True)
        for record in records:
            Image.fromarray(rng.integers(0, 255, (1024, 1024), dtype=np.uint8)).save(root / split / record["file_name"])
        (root / f"ChestX_Det_{split}.json").write_text(json.dumps(records))
        subset[split] = records
    return subset


def as_table_and_coco(root: Path, subset: dict[str, list[dict]]) -> tuple[Path, Path]:
    """The same records as a labels table (one |-separated column, a split column) and a COCO file."""
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "findings", "split"])
        for split, records in subset.items():
            for r in records:
                writer.writerow([f"{split}/{r['file_name']}", "|".join(dict.fromkeys(r["syms"])) or "No Finding", split])
    categories = [{"id": k, "name": name} for k, name in enumerate(CHESTXDET_CLASSES)]
    images, annotations = [], []
    for split, records in subset.items():
        for r in records:
            image_id = len(images)
            images.append({"id": image_id, "file_name": f"{split}/{r['file_name']}", "width": 1024, "height": 1024})
            for sym, (x1, y1, x2, y2), polygon in zip(r["syms"], r["boxes"], r.get("polygons") or [[]] * len(r["syms"])):
                annotations.append({"id": len(annotations), "image_id": image_id,
                                    "category_id": CHESTXDET_CLASSES.index(sym), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                    "segmentation": [[v for point in polygon for v in point]] if polygon else []})
    coco = root / "coco.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return labels, coco


def test_chestxdet_as_a_table_and_a_coco_file_is_the_same_cache(tmp_path):
    source = tmp_path / "cxd"
    subset = chestxdet_subset(source)
    labels, coco = as_table_and_coco(tmp_path, subset)
    prepare("--format", "chestxdet", "--source", str(source), "--out", str(tmp_path / "a"))
    classes = "[" + ", ".join(CHESTXDET_CLASSES) + "]"
    prepare("--format", "table", "--source", str(source), "--labels", str(labels), "--out", str(tmp_path / "b"),
            "--set", "table.labels_column=findings", "--set", "table.split_column=split",
            "--set", f"table.coco={coco}", "--set", f"data.classes={classes}")
    same_cache(tmp_path / "a", tmp_path / "b")
    assert CachedSplit(tmp_path / "a", "train").has_mask.any()  # the comparison covers masks


def test_nih_csvs_as_a_table_are_the_same_cache(nih_source, tmp_path):  # noqa: F811 - the fixture
    root, _ = nih_source
    prepare("--format", "nih", "--source", str(root), "--out", str(tmp_path / "a"))
    classes = "[" + ", ".join(NIH_CLASSES) + "]"
    prepare("--format", "table", "--source", str(root), "--labels", str(root / "Data_Entry_2017_v2020.csv.gz"),
            "--out", str(tmp_path / "b"), "--set", "table.image_column=Image Index",
            "--set", "table.labels_column=Finding Labels", "--set", "table.patient_column=Patient ID",
            "--set", "table.metadata_columns={age: Patient Age, sex: Patient Gender, view: View Position}",
            "--set", f"table.boxes={root / 'BBox_List_2017.csv'}", "--set", "table.box_image_column=Image Index",
            "--set", "table.box_class_column=Finding Label", "--set", 'table.box_columns=["Bbox [x", y, w, "h]"]',  # NIH's header cuts its own name
            "--set", "table.box_format=xywh", "--set", f"data.classes={classes}")
    same_cache(tmp_path / "a", tmp_path / "b", name=lambda f: f)
    for split in ("train", "test"):
        assert CachedSplit(tmp_path / "a", split).metadata == CachedSplit(tmp_path / "b", split).metadata
    assert CachedSplit(tmp_path / "a", "train").metadata["sex"]  # the metadata is there to compare


def own_dataset(root: Path) -> Path:
    """A team's folder: DICOMs and PNGs, a per-class label table with unknowns, boxes, a COCO RLE
    mask and a mask image."""
    from test_images import _dicom

    rng = np.random.default_rng(3)
    images = root / "images"
    rows = [["path", "Nodule", "Effusion", "patient", "sex", "site"]]
    for i in range(24):
        name = f"p{i:02d}.dcm" if i % 2 else f"p{i:02d}.png"
        pixels = rng.integers(0, 255, (40, 50), dtype=np.uint8)
        if name.endswith(".dcm"):
            _dicom(images / name, pixels)
        else:
            images.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(images / name)
        rows.append([f"images/{name}", "1" if i % 3 == 0 else "0", ["", "-1", "0", "1"][i % 4], f"P{i // 2}",
                     "F" if i % 2 else "M", "north" if i < 12 else "south"])
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    (root / "boxes.csv").write_text("image,class,x1,y1,x2,y2\nimages/p00.png,Nodule,5,5,20,20\n"
                                    "p03.dcm,Nodule,1,1,9,9\n")
    return root


def test_a_teams_own_table_with_unknowns_metadata_boxes_coco_and_mask_images(tmp_path):
    from pycocotools import mask as coco_mask

    root = own_dataset(tmp_path / "team")
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 20:40] = 1
    rle = coco_mask.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    (root / "coco.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "images/p06.png", "width": 50, "height": 40}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [20, 10, 20, 20], "segmentation": rle}],
        "categories": [{"id": 1, "name": "nodule"}]}))
    (root / "masks" / "Nodule").mkdir(parents=True)
    Image.fromarray(mask * 255).save(root / "masks" / "Nodule" / "p10.png")  # p10 is labelled negative
    manifest = prepare("--format", "table", "--source", str(root), "--labels", str(root / "labels.csv"),
                       "--out", str(tmp_path / "c"), "--set", "table.image_column=path",
                       "--set", "table.class_columns=[Nodule, Effusion]", "--set", "table.patient_column=patient",
                       "--set", "table.metadata_columns={sex: sex, site: site}",
                       "--set", f"table.boxes={root / 'boxes.csv'}", "--set", f"table.coco={root / 'coco.json'}",
                       "--set", f"table.masks={root / 'masks'}")
    assert manifest["classes"] == ["Nodule", "Effusion"] and sum(manifest["splits"].values()) == 24
    splits = {s: CachedSplit(tmp_path / "c", s) for s in manifest["splits"]}
    found = {Path(f).name: (s, i) for s, split in splits.items() for i, f in enumerate(split.files)}
    for i in range(24):
        name = f"p{i:02d}.dcm" if i % 2 else f"p{i:02d}.png"
        split, k = found[name]
        labels = splits[split].labels[k]
        assert labels[0] == (1.0 if i % 3 == 0 else 0.0)
        assert {0: np.isnan(labels[1]), 1: np.isnan(labels[1]), 2: labels[1] == 0, 3: labels[1] == 1}[i % 4]
        assert splits[split].metadata["site"][k] == ("north" if i < 12 else "south")
    for name in ("p00.png", "p03.dcm", "p06.png", "p10.png"):
        split, k = found[name]
        assert splits[split].has_mask[k, 0] == (name != "p10.png"), name
    split, k = found["p06.png"]
    expected_share = mask.sum() / mask.size  # the COCO mask, padded and resized with the image
    assert abs(splits[split].masks(k)[0].mean() - expected_share * 40 / 50) < 0.05
    skipped = (tmp_path / "c" / "skipped.txt").read_text()
    assert "a Nodule annotation on an image labelled negative for it" in skipped  # the mask image of p10
    patients = {}
    for s, split in splits.items():
        for f in split.files:
            patients.setdefault(int(Path(f).stem[1:]) // 2, set()).add(s)
    assert all(len(v) == 1 for v in patients.values())


def _table_cmd(tmp_path: Path, *extra: str) -> list[str]:
    root = own_dataset(tmp_path / "team")
    return ["-q", "prepare", "--format", "table", "--source", str(root), "--labels", str(root / "labels.csv"),
            "--out", str(tmp_path / "c"), "--image-size", "16", "--workers", "1", "--set", "table.image_column=path",
            "--set", "table.class_columns=[Nodule, Effusion]", *extra]


@pytest.mark.parametrize("change,message", [
    (("--set", "table.image_column=file"), "expected the columns"),
    (("--set", "table.class_columns=[Nodule, Tumour]"), "missing 'Tumour'"),
    (("--set", "table.labels_column=findings"), "not both"),
    (("--set", "table.separator=", "--set", "table.class_columns=[]", "--set", "table.labels_column=Nodule"),
     "'table.separator' is empty"),
    (("--set", "table.box_size_columns=[w]"), "'table.box_size_columns' names 1 column(s)"),
    (("--set", "table.metadata_columns={sex: 1}"), "'table.metadata_columns' maps 'sex' to 1"),
    (("--set", "data.class_map={Nodule: ''}"), "'Nodule' -> '' is not a class name"),
    (("--set", "data.class_map={Nodule: ../../evil}"), "'Nodule' -> '../../evil' is not a class name"),
])
def test_a_table_that_cannot_be_read_is_one_line(tmp_path, change, message):
    result = runner.invoke(app, [*_table_cmd(tmp_path), *change])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("edit,extra,message", [
    (lambda root: _edit_row(root, 2, "Nodule", "2"), (), "holds '2', not 1, 0, blank or -1"),
    (lambda root: _edit_row(root, 3, "path", "../../etc/passwd"), (), "image escapes the source folder"),
    (lambda root: _edit_row(root, 4, "path", "images/none.png"), (), "image not found under the source"),
    (lambda root: (root / "boxes.csv").write_text("image,class,x1,y1,x2,y2\nimages/p00.png,Tumour,1,1,5,5\n"), (),
     "unknown class 'Tumour'"),
    (lambda root: (root / "boxes.csv").write_text("image,class,x1,y1,x2,y2,w,h\nimages/p00.png,Nodule,1,1,5,5,512,512\n"),
     ("--set", "table.box_size_columns=[w, h]"), "drawn on a 512x512 image but the image is 50x40"),
    (lambda root: (root / "coco.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "images/p00.png"}],
                                                              "annotations": [{"image_id": 2, "category_id": 1,
                                                                               "bbox": [1, 1, 4, 4]}],
                                                              "categories": [{"id": 1, "name": "Nodule"}]})),
     ("--set", "table.coco={root}/coco.json"), "image id 2 is not among its images"),
    (lambda root: (root / "coco.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "images/p00.png", "width": 50, "height": 40}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4],
                         "segmentation": {"size": [40, 50], "counts": [5, 5, 5]}}],
        "categories": [{"id": 1, "name": "Nodule"}]})),
     ("--set", "table.coco={root}/coco.json"), "annotation id 7: its RLE counts do not cover the 50x40 mask"),
    (lambda root: (root / "coco.json").write_text(json.dumps({
        "images": [{"id": 3, "file_name": "images/p00.png"}, {"id": 3, "file_name": "images/p02.png"}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 1, "bbox": [1, 1, 4, 4]}],
        "categories": [{"id": 1, "name": "Nodule"}]})),
     ("--set", "table.coco={root}/coco.json"), "image id 3 is given to more than one image"),
    (lambda root: (root / "boxes.csv").write_text("image,class,x1,y1,x2,y2\nimages/p00.png,Nodule,100,100,200,200\n"), (),
     "a Nodule box lies entirely outside the image; it was left out"),
    *[(lambda root, ann=ann: _coco_with(root, ann), ("--set", "table.coco={root}/coco.json"), message) for ann, message in (
        ({"segmentation": [[1, 1, float("nan"), 4, 4, 4]]}, "annotation id 9: its segmentation polygon holds a coordinate"),
        ({"segmentation": [[1, 1, 1e300, 4, 4, 4]]}, "annotation id 9: its segmentation polygon holds a coordinate"),
        ({"segmentation": "x"}, "annotation id 9: its segmentation is 'x', neither polygons nor an RLE"),
        ({"bbox": None}, "annotation id 9: it has no 'bbox'"),
        ({"bbox": [1, 1, float("inf"), 4]}, "annotation id 9: its bbox holds a coordinate"),
        ({"image_id": [1]}, "annotation id 9: image id [1] is not among its images"),
        ({"category_id": [1]}, "annotation id 9: category [1] is no class of the table"),
    )],
])
def test_a_bad_row_or_annotation_is_named_and_skipped(tmp_path, edit, extra, message):
    args = _table_cmd(tmp_path, "--set", f"table.boxes={tmp_path / 'team' / 'boxes.csv'}")
    root = tmp_path / "team"
    edit(root)
    result = runner.invoke(app, [*args, *(a.format(root=root) for a in extra)])
    assert result.exit_code == 0, result.output
    assert message in (tmp_path / "c" / "skipped.txt").read_text()


def _coco_with(root: Path, change: dict) -> None:
    """A COCO file of one good image and one annotation with ``change`` (None removes a key); the
    annotations used to be a TypeError (exit 1), or accepted with NaN points, under --strict too."""
    ann = {"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "segmentation": [[1, 1, 4, 1, 4, 4]]}
    ann = {k: v for k, v in {**ann, **change}.items() if v is not None}
    (root / "coco.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "images/p00.png"}, {"id": [2]}],
                                                "annotations": [ann], "categories": [{"id": 1, "name": "Nodule"},
                                                                                      {"id": {"a": 1}}]}))


def _edit_row(root: Path, line: int, column: str, value: str) -> None:
    rows = list(csv.reader((root / "labels.csv").open()))
    rows[line - 1][rows[0].index(column)] = value
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def test_an_image_under_two_names_stays_in_one_split(tmp_path):
    """A symbolic link and a hard link to one image, listed in train and in test, are one image (its
    first place kept). A link to a file elsewhere is followed: the user made it."""
    import os

    args = _table_cmd(tmp_path, "--set", "table.split_column=split")
    root = tmp_path / "team"
    os.symlink(root / "images" / "p00.png", root / "images" / "alias00.png")
    os.link(root / "images" / "p02.png", root / "images" / "hard02.png")
    elsewhere = tmp_path / "other-disk.png"
    Image.new("L", (50, 40), 200).save(elsewhere)
    os.symlink(elsewhere, root / "images" / "link.png")
    rows = list(csv.reader((root / "labels.csv").open()))
    rows[0].append("split")
    for row in rows[1:]:
        row.append("train")
    rows += [["images/alias00.png", "1", "0", "Q1", "F", "north", "test"],
             ["images/hard02.png", "0", "0", "Q2", "F", "north", "test"],
             ["images/link.png", "0", "0", "Q3", "F", "north", "test"],
             ["images/p04.png", "0", "0", "Q4", "F", "north", "test"]]
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    test = CachedSplit(tmp_path / "c", "test")
    train_files = {Path(f).name for s in ("train", "val") for f in CachedSplit(tmp_path / "c", s).files}
    assert "p00.png" in train_files and "p02.png" in train_files
    assert {Path(f).name for f in test.files}.isdisjoint({"alias00.png", "hard02.png"})
    assert "link.png" in {Path(f).name for f in test.files}
    skipped = (tmp_path / "c" / "skipped.txt").read_text()
    assert "alias00.png: the same image is listed also in split 'train' (as images/p00.png)" in skipped
    assert "hard02.png: the same image is listed also in split 'train' (as images/p02.png)" in skipped


@pytest.mark.parametrize("cell", ["", "nan", "-1"])
def test_a_findings_cell_that_says_nothing_is_skipped_not_negative(tmp_path, cell):
    root = own_dataset(tmp_path / "team")
    rows = [["path", "findings"]] + [[f"images/p{i:02d}.png", "Nodule" if i % 4 == 0 else "No Finding"]
                                     for i in range(0, 24, 2)]
    rows[3][1] = cell
    with open(root / "findings.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    manifest = prepare("--format", "table", "--source", str(root), "--labels", str(root / "findings.csv"),
                       "--out", str(tmp_path / "c"), "--set", "table.image_column=path",
                       "--set", "table.labels_column=findings")
    assert manifest["classes"] == ["Nodule"] and sum(manifest["splits"].values()) == 11
    assert "images/p04.png" in (tmp_path / "c" / "skipped.txt").read_text()


def test_compressed_rle_counts_read_as_pycocotools_writes_them():
    """rle_string_counts (the check before pycocotools decodes) against pycocotools' own encoder on
    random masks: the run lengths of each mask in COCO's column-major order."""
    from pycocotools import mask as coco_mask

    from hegl_cli.data.formats.table import check_coco_rle, rle_string_counts

    rng = np.random.default_rng(0)
    for trial in range(200):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8) * (trial % 5 != 0)
        counts = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
        flat = mask.flatten(order="F")
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        expected = runs if flat[0] == 0 else [0, *runs]
        assert rle_string_counts(counts) == expected
        check_coco_rle({"size": [h, w], "counts": counts})
        with pytest.raises(ValueError):
            check_coco_rle({"size": [h + 1, w], "counts": counts})


def test_views_keep_the_chosen_views_and_a_cache_left_empty_is_refused(tmp_path):
    """data.views keeps images whose view metadata is listed; when none is left, one line, exit 2 and
    no cache (it used to write an empty cache with exit 0)."""
    args = _table_cmd(tmp_path, "--set", "table.metadata_columns={view: site}")
    kept = runner.invoke(app, [*args, "--set", "data.views=[north]"])
    assert kept.exit_code == 0, kept.output
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert sum(manifest["splits"].values()) == 12
    empty = runner.invoke(app, [*args[:args.index("--out") + 1], str(tmp_path / "d"), *args[args.index("--out") + 2:],
                                "--set", "data.views=[PA]"])
    lines = [line for line in empty.output.splitlines() if line.strip()]
    assert empty.exit_code == 2 and len(lines) == 1 and "data.views=['PA'] left out all 24 image(s)" in lines[0], \
        empty.output
    assert not (tmp_path / "d").exists()


def test_a_mask_image_that_cannot_be_read_is_named_not_its_x_ray(tmp_path):
    """A decompression-bomb mask was reported as "cannot read image images/p00.png", the X-ray."""
    from test_fault_catalogue import png_claiming

    args = _table_cmd(tmp_path)
    root = tmp_path / "team"
    (root / "masks" / "Nodule").mkdir(parents=True)
    png_claiming(root / "masks" / "Nodule" / "p00.png", 30000, 30000)
    result = runner.invoke(app, [*args, "--set", f"table.masks={root / 'masks'}"])
    assert result.exit_code == 0, result.output
    skipped = (tmp_path / "c" / "skipped.txt").read_text()
    assert "its mask" in skipped and "masks/Nodule/p00.png" in skipped, skipped
