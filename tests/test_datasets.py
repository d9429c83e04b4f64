"""Real datasets at real scale (issue 12): the streaming cache and NIH ChestX-ray14 from its real files.

The images are not public here: the tests write stand-in PNGs at the real 1024 px size for real rows
and check the cache against an independent count of the real CSVs.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from conftest import shared_data
from hegl_cli.cli.app import app
from hegl_cli.data.cache import CachedSplit
from hegl_cli.data.formats.chestxdet import CHESTXDET_CLASSES, parse_record
from hegl_cli.data.pathologies import canonical

runner = CliRunner()
SIZE = 64  # cache size for the tests; boxes are in 1024 px coordinates


def prepare(fmt: str, source: Path, out: Path, *extra: str) -> dict:
    """`hegl prepare --format FMT` into ``out`` at the test size; returns the manifest."""
    result = runner.invoke(app, ["-q", "prepare", "--format", fmt, "--source", str(source), "--out", str(out),
                                 "--image-size", str(SIZE), "--workers", "1", *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "manifest.json").read_text())


def nih_rows() -> tuple[list[dict], list[list[str]]]:
    with gzip.open(shared_data("annotations", "nih_data_entry_2017_v2020.csv.gz"), "rt", newline="") as handle:
        entries = list(csv.DictReader(handle))
    with gzip.open(shared_data("annotations", "nih_bbox_list_2017.csv.gz"), "rt", newline="") as handle:
        boxes = list(csv.reader(handle))[1:]
    return entries, boxes


@pytest.fixture(scope="module")
def nih_source(tmp_path_factory):
    """The real label and box files, with stand-in 1024 px PNGs for 150 boxed and 150 other images."""
    entries, boxes = nih_rows()
    root = tmp_path_factory.mktemp("nih")
    boxed = sorted({row[0] for row in boxes})[:150]
    others = [e["Image Index"] for e in entries[::700] if e["Image Index"] not in set(boxed)][:150]
    blank = Image.fromarray(np.full((1024, 1024), 90, np.uint8))
    for i, name in enumerate(boxed + others):
        folder = root / f"images_{1 + i % 3:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        blank.save(folder / name)
    for name, member in (("Data_Entry_2017_v2020.csv.gz", "nih_data_entry_2017_v2020.csv.gz"),
                         ("BBox_List_2017.csv", "nih_bbox_list_2017.csv.gz")):
        data = shared_data("annotations", member).read_bytes()
        (root / name).write_bytes(data if name.endswith(".gz") else gzip.decompress(data))
    return root, set(boxed + others)


def naive_expectations(present: set[str]) -> dict:
    """Counts straight from the CSVs, for the images that exist."""
    entries, boxes = nih_rows()
    # the cache names classes canonically (Pleural_Thickening -> Pleural Thickening: issue 22)
    labels = {e["Image Index"]: {canonical(v) for v in e["Finding Labels"].split("|") if v != "No Finding"}
              for e in entries if e["Image Index"] in present}
    patient = {e["Image Index"]: e["Patient ID"] for e in entries}
    area: dict[tuple[str, str], np.ndarray] = {}
    scale = SIZE / 1024
    for name, label, *xywh in boxes:
        if name not in present:
            continue
        label = canonical("Infiltration" if label == "Infiltrate" else label)
        x, y, w, h = (float(v) for v in xywh[:4])
        canvas = area.setdefault((name, label), np.zeros((SIZE, SIZE), bool))
        x1, y1, x2, y2 = (min(max(v * scale, 0), SIZE) for v in (x, y, x + w, y + h))
        canvas[math.floor(y1) : math.ceil(y2), math.floor(x1) : math.ceil(x2)] = True
    return {"labels": labels, "patient": patient, "area": {k: int(v.sum()) for k, v in area.items()}}


def test_nih_from_its_real_files(nih_source, tmp_path):
    root, present = nih_source
    out = tmp_path / "cache"
    manifest = prepare("nih", root, out)
    expected = naive_expectations(present)
    assert sum(manifest["splits"].values()) == len(present)
    splits = {name: CachedSplit(out, name) for name in manifest["splits"]}
    # No patient in two splits.
    owners = defaultdict(set)
    for name, split in splits.items():
        for f in split.files:
            owners[expected["patient"][Path(f).name]].add(name)
    assert all(len(v) == 1 for v in owners.values())
    assert {"train", "val", "test"} == set(splits)
    # Per-class image counts and annotated-image counts equal the naive count, split by split.
    for name, split in splits.items():
        names = [Path(f).name for f in split.files]
        naive = Counter(c for n in names for c in expected["labels"][n])
        assert manifest["class_counts"][name] == {c: naive.get(c, 0) for c in manifest["classes"]}, name
        boxed = Counter(c for (n, c) in expected["area"] if n in set(names) and c in expected["labels"][n])
        assert manifest["mask_counts"][name] == {c: boxed.get(c, 0) for c in manifest["classes"]}, name
        # Box pixel areas equal the naive rasterisation of the CSV's boxes.
        for i, n in enumerate(names):
            masks = split.masks(i)
            for c, cls in enumerate(split.classes):
                assert int(masks[c].sum()) == expected["area"].get((n, cls), 0), (n, cls)
        # Masks are stored only for images that have one.
        assert split.packed_masks.shape[0] == int(split.has_mask.any(1).sum())
    assert manifest["source"]["labels"].endswith("Data_Entry_2017_v2020.csv.gz")
    assert (out / "skipped.txt").read_text().count("image not found") == 112120 - len(present)


def test_nih_official_lists_and_class_subset(nih_source, tmp_path):
    root, present = nih_source
    entries, _ = nih_rows()
    listed = sorted(present)
    source = tmp_path / "src"
    source.mkdir()
    for item in root.iterdir():
        (source / item.name).symlink_to(item)
    test = set(listed[::4])
    (source / "test_list.txt").write_text("\n".join(sorted(test)))
    (source / "train_val_list.txt").write_text("\n".join(n for n in listed if n not in test))
    out = tmp_path / "cache"
    manifest = prepare("nih", source, out, "--set", "data.classes=[Nodule, Mass, Hernia]")
    assert manifest["classes"] == ["Mass", "Nodule", "Hernia"]  # the format's order
    # These lists put a patient in both splits (every 4th image): the patient's train images move to test
    # and are named (issue 21); no patient is in two splits whatever the lists say.
    cached_test = {Path(f).name for f in CachedSplit(out, "test").files}
    patient = {e["Image Index"]: e["Patient ID"] for e in entries}
    assert cached_test >= test and {patient[n] for n in cached_test - test} <= {patient[n] for n in test}
    moved = (out / "skipped.txt").read_text().count("moved there")
    assert moved == len(cached_test - test) > 0
    train_val = {Path(f).name for s in ("train", "val") for f in CachedSplit(out, s).files}
    assert not {patient[n] for n in train_val} & {patient[n] for n in cached_test}
    labels = {e["Image Index"]: set(e["Finding Labels"].split("|")) for e in entries}
    hernia = sum("Hernia" in labels[n] for n in present if n not in test)
    if hernia == 0:
        assert any("Hernia" in w for w in manifest["warnings"])
    bad = runner.invoke(app, ["-q", "prepare", "--format", "nih", "--source", str(source), "--out", str(tmp_path / "x"),
                              "--set", "data.classes=[Tumour]"])
    assert bad.exit_code == 2 and "'Tumour' is not a class of --format nih" in bad.output


def test_streaming_cache_matches_the_samples_and_trims(tmp_path):
    """SplitWriter: capacity preallocated, rows trimmed to what was written, masks only where present."""
    from hegl_cli.data.cache import SplitWriter, pack_masks

    rng = np.random.default_rng(0)
    writer = SplitWriter(tmp_path / "train", capacity=10, size=16, n_classes=3)
    kept = []
    for i in range(7):
        image = rng.integers(0, 255, (16, 16), dtype=np.uint8)
        masks = (rng.random((3, 16, 16)) < 0.3).astype(np.uint8) * (i % 2)
        has = masks.reshape(3, -1).any(1)
        writer.append(image, np.array([1, 0, i % 2], np.float32), pack_masks(masks), has, f"f{i}.png")
        kept.append((image, masks))
    writer.close()
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": ["a", "b", "c"], "image_size": 16,
                                                        "splits": {"train": 7}}))
    split = CachedSplit(tmp_path, "train")
    assert len(split) == 7 and split.images.shape == (7, 16, 16) and split.packed_masks.shape[0] == 3
    for i, (image, masks) in enumerate(kept):
        np.testing.assert_array_equal(split.images[i], image)
        np.testing.assert_array_equal(split.masks(i), masks)
    assert not list((tmp_path / "train").glob("*.trim"))


def write_dicom(path: Path, width: int, height: int) -> None:
    """An 8-bit uncompressed stand-in DICOM of the real size."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = height, width, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = (np.arange(width * height, dtype=np.uint32) % 251).astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def box_area(boxes: list[tuple[float, float, float, float]], width: int, height: int) -> int:
    """Pixels covered in the SIZE-px cache by the union of boxes on a width x height image (centred padding)."""
    side = max(width, height)
    pad_x, pad_y, s = (side - width) // 2, (side - height) // 2, SIZE / side
    canvas = np.zeros((SIZE, SIZE), bool)
    for x1, y1, x2, y2 in boxes:
        x1, x2 = (min(max(v, 0), width) for v in (x1, x2))
        y1, y2 = (min(max(v, 0), height) for v in (y1, y2))
        a, b = (x1 + pad_x) * s, (x2 + pad_x) * s
        c, d = (y1 + pad_y) * s, (y2 + pad_y) * s
        canvas[math.floor(c) : math.ceil(d), math.floor(a) : math.ceil(b)] = True
    return int(canvas.sum())


def test_rsna_from_its_real_rows(tmp_path):
    import zipfile

    archive = shared_data("annotations", "rsna_pneumonia_train_labels.csv.zip")
    with zipfile.ZipFile(archive) as z:
        rows = list(csv.DictReader(z.read(z.namelist()[0]).decode().splitlines()))
    boxes: dict[str, list] = defaultdict(list)
    for r in rows:
        if r["Target"] == "1":
            x, y, w, h = (float(r[k]) for k in ("x", "y", "width", "height"))
            boxes[r["patientId"]].append((x, y, x + w, y + h))
    positive = sorted(boxes)[:12]
    negative = sorted({r["patientId"] for r in rows} - set(boxes))[:12]
    source = tmp_path / "rsna"
    for pid in positive + negative:
        write_dicom(source / "stage_2_train_images" / f"{pid}.dcm", 1024, 1024)
    (source / "stage_2_train_labels.csv.zip").write_bytes(archive.read_bytes())
    out = tmp_path / "cache"
    manifest = prepare("rsna", source, out)
    assert manifest["classes"] == ["Pneumonia"] and sum(manifest["splits"].values()) == 24
    total_positive = sum(c["Pneumonia"] for c in manifest["class_counts"].values())
    total_masked = sum(c["Pneumonia"] for c in manifest["mask_counts"].values())
    assert total_positive == total_masked == 12
    for name in manifest["splits"]:
        split = CachedSplit(out, name)
        for i, f in enumerate(split.files):
            pid = Path(f).stem
            assert split.labels[i, 0] == (pid in boxes)
            assert int(split.masks(i)[0].sum()) == box_area(boxes.get(pid, []), 1024, 1024), pid


@pytest.mark.parametrize("fusion", ["any", "majority"])
def test_vindr_from_its_real_rows_with_radiologist_fusion(tmp_path, fusion):
    with gzip.open(shared_data("annotations", "vindr_cxr_train.csv.gz"), "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_image: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_image[r["image_id"]].append(r)
    with_findings = [i for i, rs in by_image.items() if any(r["class_name"] != "No finding" for r in rs)][:8]
    without = [i for i, rs in by_image.items() if all(r["class_name"] == "No finding" for r in rs)][:4]
    source = tmp_path / "vindr"
    sizes = {}
    for image in with_findings + without:
        extents = [(float(r["x_max"]), float(r["y_max"])) for r in by_image[image] if r["x_max"]]
        width = int(max([e[0] for e in extents], default=500)) + 7
        height = int(max([e[1] for e in extents], default=600)) + 3
        sizes[image] = (width, height)
        write_dicom(source / "train" / f"{image}.dicom", width, height)
    with gzip.open(shared_data("annotations", "vindr_cxr_train.csv.gz"), "rb") as handle:
        (source / "train.csv").write_bytes(handle.read())
    out = tmp_path / "cache"
    manifest = prepare("vindr", source, out, "--set", f"data.label_fusion={fusion}")
    classes = manifest["classes"]
    # The naive fusion: per image and class, which radiologists marked it and their boxes.
    expected_pos, expected_area = Counter(), {}
    for image in with_findings + without:
        readers = {r["rad_id"] for r in by_image[image]}
        marked: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for r in by_image[image]:
            if r["class_name"] != "No finding":  # the cache names classes canonically (issue 22)
                marked[canonical(r["class_name"])][r["rad_id"]].append(
                    tuple(float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max")))
        for cls, by_rad in marked.items():
            if len(by_rad) >= (1 if fusion == "any" else len(readers) // 2 + 1):
                expected_pos[cls] += 1
                expected_area[(image, cls)] = box_area([b for bs in by_rad.values() for b in bs], *sizes[image])
    counts = Counter()
    for name in manifest["splits"]:
        split = CachedSplit(out, name)
        for i, f in enumerate(split.files):
            image = Path(f).stem
            masks = split.masks(i)
            for c, cls in enumerate(classes):
                counts[cls] += int(split.labels[i, c])
                assert int(masks[c].sum()) == expected_area.get((image, cls), 0), (image, cls, fusion)
    assert {k: v for k, v in counts.items() if v} == dict(expected_pos)
    assert manifest["label_fusion"] == fusion


def naive_rle(rle: str, side: int = 1024) -> np.ndarray:
    """An independent decoder of SIIM's relative run-length form (column-major)."""
    flat, position = np.zeros(side * side, bool), 0
    numbers = [int(v) for v in rle.split()]
    for offset, length in zip(numbers[::2], numbers[1::2]):
        position += offset
        flat[position : position + length] = True
        position += length
    return flat.reshape(side, side).T


def test_siim_pixel_masks_from_its_real_rows(tmp_path):
    with gzip.open(shared_data("annotations", "siim_pneumothorax_train_rle.csv.gz"), "rt", newline="") as handle:
        rows = [(r[0].strip(), r[1].strip()) for r in list(csv.reader(handle))[1:]]
    runs: dict[str, list[str]] = defaultdict(list)
    for image, pixels in rows:
        runs[image] += [] if pixels == "-1" else [pixels]
    multi = [i for i, r in runs.items() if len(r) > 1][:3]
    single = [i for i, r in runs.items() if len(r) == 1][:3]
    negative = [i for i, r in runs.items() if not r][:4]
    source = tmp_path / "siim"
    for k, image in enumerate(multi + single + negative):
        write_dicom(source / "dicom-images-train" / f"study{k}" / f"series{k}" / f"{image}.dcm", 1024, 1024)
    with gzip.open(shared_data("annotations", "siim_pneumothorax_train_rle.csv.gz"), "rb") as handle:
        (source / "train-rle.csv").write_bytes(handle.read())
    out = tmp_path / "cache"
    manifest = prepare("siim", source, out)
    assert sum(c["Pneumothorax"] for c in manifest["mask_counts"].values()) == 6
    block = 1024 // SIZE
    for name in manifest["splits"]:
        split = CachedSplit(out, name)
        for i, f in enumerate(split.files):
            image = Path(f).stem
            union = np.zeros((1024, 1024), bool)
            for r in runs[image]:
                region = naive_rle(r)
                assert region.sum() == sum(int(v) for v in r.split()[1::2])  # the row's own pixel count
                union |= region  # several rows (regions, some overlapping) -> one mask
            expected = union.reshape(SIZE, block, SIZE, block).mean((1, 3)) >= 0.5
            assert split.labels[i, 0] == bool(runs[image])
            np.testing.assert_array_equal(split.masks(i)[0].astype(bool), expected)


def test_rle_decoding_hand_case():
    from hegl_cli.data.masks import decode_rle

    # 3 wide, 2 high, column-major order: (x0,y0) (x0,y1) (x1,y0) (x1,y1) (x2,y0) (x2,y1)
    mask = decode_rle("1 2 2 1", width=3, height=2)  # pixels 1, 2 and 5
    np.testing.assert_array_equal(mask, [[False, True, False], [True, False, True]])
    with pytest.raises(ValueError, match="past"):
        decode_rle("5 4", width=3, height=2)


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


# --- issue 21: what the readers and the builder refuse to guess, on real rows --------------------------
def test_nih_repeated_rows_and_images_in_neither_list_are_named(nih_source, tmp_path):
    """The real label file with one row repeated exactly and one under another Patient ID: each image is
    cached once; with the official lists, an image in neither list is named and left out."""
    root, present = nih_source
    entries, _ = nih_rows()
    source = tmp_path / "src"
    source.mkdir()
    for item in root.iterdir():
        if not item.name.startswith("Data_Entry"):
            (source / item.name).symlink_to(item)
    rows = [e for e in entries if e["Image Index"] in present]
    twice, other_patient = rows[0], {**rows[1], "Patient ID": "99999"}
    fields = list(entries[0])
    with open(source / "Data_Entry_2017.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows([*rows, twice, other_patient])
    listed = sorted(present)
    neither = listed[45]
    (source / "test_list.txt").write_text("\n".join(listed[:40]))
    (source / "train_val_list.txt").write_text("\n".join(n for n in listed[40:] if n != neither))
    out = tmp_path / "cache"
    manifest = prepare("nih", source, out)
    cached = [Path(f).name for name in manifest["splits"] for f in CachedSplit(out, name).files]
    assert len(cached) == len(set(cached)) == len(present) - 1 and neither not in cached
    skipped = (out / "skipped.txt").read_text()
    assert skipped.count("is listed again") == 2 and f"({twice['Image Index']}): the image is listed again" in skipped
    assert f"({neither}): in neither test_list.txt nor train_val_list.txt" in skipped


def _vindr_source(tmp_path: Path, extra_rows: list[dict]) -> tuple[Path, list[str]]:
    with gzip.open(shared_data("annotations", "vindr_cxr_train.csv.gz"), "rt", newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    images = sorted({r["image_id"] for r in rows})[:6]
    kept = [r for r in rows if r["image_id"] in images]
    source = tmp_path / "vindr"
    for image in images:
        write_dicom(source / "train" / f"{image}.dicom", 3000, 3000)
    with open(source / "train.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(kept + [{**{k: "" for k in fields}, **row} for row in extra_rows])
    return source, images


def test_vindr_a_label_that_cannot_be_read_never_becomes_a_negative(tmp_path):
    """Real rows plus one image whose only finding has a class VinDr does not have, and one box drawn
    backwards: the first image is left out (not cached as finding-free), the second keeps its class."""
    source, images = _vindr_source(tmp_path, [
        {"image_id": "unknownclass", "class_name": "Tumour", "rad_id": "R1", "x_min": "1", "y_min": "1",
         "x_max": "9", "y_max": "9"},
        {"image_id": "inverted", "class_name": "Nodule/Mass", "rad_id": "R1", "x_min": "90", "y_min": "90",
         "x_max": "10", "y_max": "10"},
    ])
    for image in ("unknownclass", "inverted"):
        write_dicom(source / "train" / f"{image}.dicom", 200, 200)
    out = tmp_path / "cache"
    manifest = prepare("vindr", source, out)
    found = {Path(f).stem: (split, i) for split in manifest["splits"] for i, f in enumerate(CachedSplit(out, split).files)}
    assert "unknownclass" not in found and set(images) <= set(found)
    split, i = found["inverted"]
    c = manifest["classes"].index("Nodule/Mass")
    assert CachedSplit(out, split).labels[i, c] == 1 and not CachedSplit(out, split).has_mask[i, c]
    skipped = (out / "skipped.txt").read_text()
    assert "(unknownclass): unknown class 'Tumour'; the image is left out" in skipped
    assert "(inverted): box" in skipped and "Nodule/Mass is kept without this box" in skipped


def test_rsna_a_target_other_than_0_or_1_leaves_the_patient_out(tmp_path):
    import zipfile

    archive = shared_data("annotations", "rsna_pneumonia_train_labels.csv.zip")
    with zipfile.ZipFile(archive) as z:
        text = z.read(z.namelist()[0]).decode()
    rows = list(csv.DictReader(text.splitlines()))
    negatives = sorted({r["patientId"] for r in rows if r["Target"] == "0"})[:6]
    bad = negatives[0]
    kept = [r for r in rows if r["patientId"] in negatives]
    kept = [{**r, "Target": "2"} if r["patientId"] == bad else r for r in kept]
    source = tmp_path / "rsna"
    for pid in negatives:
        write_dicom(source / "stage_2_train_images" / f"{pid}.dcm", 64, 64)
    with open(source / "stage_2_train_labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    out = tmp_path / "cache"
    manifest = prepare("rsna", source, out)
    cached = {Path(f).stem for split in manifest["splits"] for f in CachedSplit(out, split).files}
    assert bad not in cached and cached == set(negatives[1:])
    assert f"({bad}): Target '2' is neither 0 nor 1" in (out / "skipped.txt").read_text()


def test_siim_an_empty_mask_or_an_image_found_twice_is_named(tmp_path):
    with gzip.open(shared_data("annotations", "siim_pneumothorax_train_rle.csv.gz"), "rt", newline="") as handle:
        rows = [(r[0].strip(), r[1].strip()) for r in list(csv.reader(handle))[1:]]
    negatives = [i for i, p in rows if p == "-1"][:5]
    empty, twice = "1.2.3.empty", negatives[0]
    source = tmp_path / "siim"
    for k, image in enumerate(negatives + [empty]):
        write_dicom(source / "dicom-images-train" / f"study{k}" / f"series{k}" / f"{image}.dcm", 64, 64)
    write_dicom(source / "dicom-images-train" / "other" / "series" / f"{twice}.dcm", 64, 64)
    with open(source / "train-rle.csv", "w", newline="") as handle:
        handle.write("ImageId, EncodedPixels\n")
        handle.writelines(f"{i}, -1\n" for i in negatives)
        handle.write(f"{empty}, 10 0 30 0\n")
    out = tmp_path / "cache"
    manifest = prepare("siim", source, out)
    cached = {Path(f).stem for split in manifest["splits"] for f in CachedSplit(out, split).files}
    assert cached == set(negatives[1:])
    skipped = (out / "skipped.txt").read_text()
    assert f"({empty}): the mask covers no pixel; the image is left out" in skipped
    assert f"{twice}: two files carry this ImageId" in skipped
