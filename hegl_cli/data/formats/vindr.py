"""VinDr-CXR as downloaded: three radiologists per image, boxes, DICOM images.

``train.csv`` (``image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max``; ``No
finding`` rows without coordinates) and ``train/<image_id>.dicom``, and ``test.csv`` + ``test/``
when present (otherwise a seeded 20%). Radiologists are fused per class by ``data.label_fusion``:
``any`` (the default) calls an image positive when any radiologist marked the class and takes the
union of every box drawn for it; ``majority`` needs two of the radiologists who read the image and
keeps the union of their boxes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from hegl_cli.data.formats.files import find_file, official_download, read_rows
from hegl_cli.data.formats.registry import DatasetFormat, FormatRead, ReadRequest, register
from hegl_cli.data.records import Finding, Record, box_from_columns
from hegl_cli.data.splits import hold_out_test
from hegl_cli.errors import UserError

VINDR_CLASSES: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD", "Infiltration",
    "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis",
)
NO_FINDING = "No finding"


def fuse(rows: list[tuple[int, dict[str, str]]], classes: tuple[str, ...], fusion: str, problems: list[str],
         name: str) -> dict[str, tuple[set[str], list[Finding]]]:
    """Image id -> (positive classes, findings) from every radiologist's rows.

    A row whose class is not VinDr's leaves its image out (named): what the radiologist marked cannot
    be told, so the image is not finding-free. A row of a known class whose box cannot be read still
    marks the class (positive, without that box).
    """
    marks: dict[str, dict[str, dict[str, list[tuple[float, ...]]]]] = defaultdict(lambda: defaultdict(dict))
    readers: dict[str, set[str]] = defaultdict(set)
    unreadable: set[str] = set()
    for line, row in rows:
        image, label, rad = row["image_id"].strip(), row["class_name"].strip(), row.get("rad_id", "").strip()
        readers[image].add(rad)
        if label == NO_FINDING:
            continue
        if label not in VINDR_CLASSES:
            problems.append(f"{name}: line {line} ({image}): unknown class {label!r}; the image is left out")
            unreadable.add(image)
            continue
        boxes = marks[image][label].setdefault(rad, [])
        try:
            boxes.append(box_from_columns(row, ("x_min", "y_min", "x_max", "y_max"), xywh=False))
        except (ValueError, KeyError) as exc:
            problems.append(f"{name}: line {line} ({image}): {exc}; {label} is kept without this box")
    fused: dict[str, tuple[set[str], list[Finding]]] = {}
    for image, rads in readers.items():
        if image in unreadable:
            continue
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
        splits["train"], splits["test"] = hold_out_test(splits["train"], seed)
    return splits, problems, {"labels": files["train"], **({"test_labels": files["test"]} if "test" in files else {})}


def read(request: ReadRequest) -> FormatRead:
    """VinDr-CXR through the shared official-download reader, radiologists fused by ``data.label_fusion``."""
    fusion = request.cfg.data.label_fusion
    found = official_download(request, lambda source, classes, seed: read_vindr(source, classes, seed, fusion))
    found.manifest = {"label_fusion": fusion}
    return found


register(DatasetFormat(
    "vindr", read, classes=VINDR_CLASSES, about=__doc__.splitlines()[0], settings=("label_fusion",),
    settings_of=lambda manifest: {"label_fusion": manifest["label_fusion"]} if "label_fusion" in manifest else {}))
