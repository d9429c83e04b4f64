"""RSNA Pneumonia, VinDr-CXR and SIIM-ACR Pneumothorax: CSV annotations over DICOM folders, as downloaded.

RSNA (``--format rsna``): ``stage_2_train_labels.csv`` (``patientId, x, y, width, height, Target``,
several rows for an image with several boxes) and ``stage_2_train_images/<patientId>.dcm``; one
class, Pneumonia (the challenge's lung opacity). One image per patient; test is a seeded 20% of the
patients, since the official test labels were never released.

VinDr-CXR (``--format vindr``): ``train.csv`` (``image_id, class_name, class_id, rad_id, x_min,
y_min, x_max, y_max``; three radiologists per image, ``No finding`` rows without coordinates) and
``train/<image_id>.dicom``, and ``test.csv`` + ``test/`` when present (otherwise a seeded 20%).
Radiologists are fused per class by ``data.label_fusion``: ``any`` (the default) calls an image
positive when any radiologist marked the class and takes the union of every box drawn for it;
``majority`` needs two of the radiologists who read the image and keeps the union of their boxes.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections import defaultdict
from pathlib import Path

from hegl_cli.data.chestxdet import FORMATS, Finding, Record
from hegl_cli.data.nih import find_file, open_text
from hegl_cli.data.splits import split_by_group
from hegl_cli.errors import UserError

NO_FINDING = "No finding"


def read_rows(path: Path, required: set[str]) -> list[dict[str, str]]:
    """Rows of a CSV (plain, .gz, or a .zip holding one CSV) with the ``required`` columns."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            text = archive.read(archive.namelist()[0]).decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
    else:
        with open_text(path) as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
    if not reader.fieldnames or not required <= set(reader.fieldnames):
        raise UserError(f"{path}: expected the columns {', '.join(sorted(required))}")
    return rows


def _box(row: dict[str, str], keys: tuple[str, str, str, str], xywh: bool) -> tuple[float, float, float, float]:
    a, b, c, d = (float(row[k]) for k in keys)
    box = (a, b, a + c, b + d) if xywh else (a, b, c, d)
    if not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"box {[row[k] for k in keys]} is not finite with area")
    return box


def read_rsna(source: Path, classes: tuple[str, ...], seed: int = 0
              ) -> tuple[dict[str, list[Record]], list[str], dict[str, Path]]:
    if not source.is_dir():
        raise UserError(f"source folder not found: {source}")
    labels = find_file(source, ["stage_2_train_labels.csv", "stage_2_train_labels.csv.zip",
                                "stage_2_train_labels.csv.gz"], "label file stage_2_train_labels.csv")
    folder = next((source / d for d in ("stage_2_train_images", "train") if (source / d).is_dir()), None)
    if folder is None:
        raise UserError(f"{source}: no images folder (stage_2_train_images)")
    present = {p.stem: p.name for p in folder.iterdir() if p.suffix.lower() in (".dcm", ".dicom")}
    problems: list[str] = []
    boxes: dict[str, list[Finding]] = defaultdict(list)
    positive: dict[str, bool] = {}
    for line, row in enumerate(read_rows(labels, {"patientId", "x", "y", "width", "height", "Target"}), start=2):
        pid = row["patientId"].strip()
        target = row["Target"].strip() == "1"
        positive[pid] = positive.get(pid, False) or target
        if target:
            try:
                boxes[pid].append(Finding("Pneumonia", _box(row, ("x", "y", "width", "height"), xywh=True)))
            except (ValueError, KeyError) as exc:
                problems.append(f"{labels.name}: line {line} ({pid}): {exc}")
    records = []
    for pid, is_positive in positive.items():
        if pid not in present:
            problems.append(f"image not found: {pid} (in {folder.name}/)")
            continue
        wanted = {"Pneumonia"} & set(classes) if is_positive else set()
        records.append(Record(f"{folder.name}/{present[pid]}", boxes.get(pid, []) if wanted else [],
                              image_labels=wanted, patient=pid))
    train, test = split_by_group(records, 0.2, seed + 7919)
    return {"train": train, "test": test}, problems, {"labels": labels}


def fuse(rows: list[dict[str, str]], classes: tuple[str, ...], fusion: str, problems: list[str], name: str
         ) -> dict[str, tuple[set[str], list[Finding]]]:
    """Image id -> (positive classes, findings) from every radiologist's rows."""
    marks: dict[str, dict[str, dict[str, list[tuple[float, ...]]]]] = defaultdict(lambda: defaultdict(dict))
    readers: dict[str, set[str]] = defaultdict(set)
    for line, row in enumerate(rows, start=2):
        image, label, rad = row["image_id"].strip(), row["class_name"].strip(), (row.get("rad_id") or "").strip()
        readers[image].add(rad)
        if label == NO_FINDING:
            continue
        if label not in FORMATS["vindr"]["classes"]:
            problems.append(f"{name}: line {line} ({image}): unknown class {label!r}")
            continue
        try:
            box = _box(row, ("x_min", "y_min", "x_max", "y_max"), xywh=False)
        except (ValueError, KeyError) as exc:
            problems.append(f"{name}: line {line} ({image}): {exc}")
            continue
        marks[image][label].setdefault(rad, []).append(box)
    fused: dict[str, tuple[set[str], list[Finding]]] = {}
    for image, rads in readers.items():
        positive, findings = set(), []
        for label, by_rad in marks[image].items():
            needed = 1 if fusion == "any" else len(rads) // 2 + 1
            if label in classes and len(by_rad) >= needed:
                positive.add(label)
                findings += [Finding(label, box) for boxes in by_rad.values() for box in boxes]
        fused[image] = (positive, findings)
    return fused


def read_vindr(source: Path, classes: tuple[str, ...], seed: int = 0, fusion: str = "any"
               ) -> tuple[dict[str, list[Record]], list[str], dict[str, Path]]:
    if not source.is_dir():
        raise UserError(f"source folder not found: {source}")
    problems: list[str] = []
    files: dict[str, Path] = {}
    splits: dict[str, list[Record]] = {}
    for split in ("train", "test"):
        table = find_file(source, [f"{split}.csv", f"{split}.csv.gz"], f"{split}.csv", required=split == "train")
        if table is None:
            continue
        folder = source / split
        if not folder.is_dir():
            raise UserError(f"{source}: no images folder {split}/ for {table.name}")
        files[split] = table
        present = {p.stem: p.name for p in folder.iterdir() if p.suffix.lower() in (".dicom", ".dcm")}
        rows = read_rows(table, {"image_id", "class_name", "x_min", "y_min", "x_max", "y_max"})
        records = []
        for image, (positive, findings) in fuse(rows, classes, fusion, problems, table.name).items():
            if image not in present:
                problems.append(f"image not found: {image} (in {split}/)")
                continue
            records.append(Record(f"{split}/{present[image]}", findings, image_labels=positive))
        splits[split] = records
    if "test" not in splits:
        splits["train"], splits["test"] = split_by_group(splits["train"], 0.2, seed + 7919)
    return splits, problems, {"labels": files["train"], **({"test_labels": files["test"]} if "test" in files else {})}


def read_siim(source: Path, classes: tuple[str, ...], seed: int = 0
              ) -> tuple[dict[str, list[Record]], list[str], dict[str, Path]]:
    if not source.is_dir():
        raise UserError(f"source folder not found: {source}")
    table = find_file(source, ["train-rle.csv", "train-rle.csv.gz"], "mask file train-rle.csv")
    folder = next((source / d for d in ("dicom-images-train", "train") if (source / d).is_dir()), None)
    if folder is None:
        raise UserError(f"{source}: no images folder (dicom-images-train)")
    present = {p.stem: str(p.relative_to(source)) for p in folder.rglob("*.dcm")}
    problems: list[str] = []
    masks: dict[str, list[str]] = {}
    with open_text(table) as handle:
        rows = csv.reader(handle)
        header = [h.strip() for h in next(rows, [])]
        if header[:2] != ["ImageId", "EncodedPixels"]:
            raise UserError(f"{table}: expected the columns ImageId, EncodedPixels")
        for line, row in enumerate(rows, start=2):
            if len(row) < 2 or not row[0].strip():
                problems.append(f"{table.name}: line {line}: not 'ImageId, EncodedPixels'")
                continue
            image, pixels = row[0].strip(), row[1].strip()
            runs = masks.setdefault(image, [])
            if pixels != "-1":
                runs.append(pixels)
    records = []
    wanted = "Pneumothorax" in classes
    for image, runs in masks.items():
        if image not in present:
            problems.append(f"image not found: {image} (under {folder.name}/)")
            continue
        findings = [Finding("Pneumothorax", (0.0, 0.0, 1.0, 1.0), rle=r) for r in runs] if wanted else []
        records.append(Record(present[image], findings, image_labels={"Pneumothorax"} if findings else set()))
    train, test = split_by_group(records, 0.2, seed + 7919)
    return {"train": train, "test": test}, problems, {"labels": table}
