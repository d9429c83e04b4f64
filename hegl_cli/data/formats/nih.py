"""NIH ChestX-ray14 as downloaded: every image labelled, under 1% with a box.

Layout of ``--source``: ``Data_Entry_2017*.csv`` (image-level labels of every image, 14 findings,
``|``-separated, ``No Finding``), ``BBox_List_2017.csv`` (boxes for 8 findings in the 1024 px
coordinates of the PNGs; its ``Infiltrate`` is the label list's ``Infiltration``), the images in
``images/`` or the twelve ``images_0XX/images/`` folders, and the official ``train_val_list.txt`` /
``test_list.txt`` when present (otherwise test is a seeded split by ``Patient ID``). Validation is
carved from train by patient as well, so no patient is in two splits.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from hegl_cli.data.formats.files import find_file, official_download
from hegl_cli.data.formats.registry import DatasetFormat, register
from hegl_cli.data.records import Finding, Record
from hegl_cli.data.splits import hold_out_test
from hegl_cli.errors import UserError
from hegl_cli.fs.tables import read_lines, read_table, stream_table

NIH_CLASSES: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
BOX_ALIASES = {"Infiltrate": "Infiltration"}
METADATA_COLUMNS = {"age": "Patient Age", "sex": "Patient Gender", "view": "View Position"}  # kept with each image
NO_FINDING = "No Finding"


def image_index(source: Path) -> dict[str, str]:
    """File name -> path relative to ``source`` for ``images/`` and ``images_0XX/images/``."""
    folders = [source / "images", *sorted(source.glob("images_*/images")), *sorted(source.glob("images_*"))]
    index: dict[str, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file() and entry.name.lower().endswith(".png"):
                    index.setdefault(entry.name, os.path.relpath(entry.path, source))
    return index


def read_boxes(path: Path | None, classes: tuple[str, ...], problems: list[str]) -> dict[str, list[Finding]]:
    """Image name -> its boxes as findings (x, y, w, h -> x1, y1, x2, y2)."""
    boxes: dict[str, list[Finding]] = {}
    if path is None:
        return boxes
    table = read_table(path, "box list")
    for line, row in zip(table.lines, table.rows):
        try:
            name, label = row[0].strip(), BOX_ALIASES.get(row[1].strip(), row[1].strip())
            x, y, w, h = (float(v) for v in row[2:6])
        except (IndexError, ValueError):
            problems.append(f"{path.name}: line {line}: not 'Image Index, Finding Label, x, y, w, h'")
            continue
        if label not in classes:
            continue  # a class left out by data.classes
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            problems.append(f"{path.name}: line {line} ({name}): box {row[2:6]} is not finite with area")
            continue
        boxes.setdefault(name, []).append(Finding(label, (x, y, x + w, y + h)))
    return boxes


def read_list(path: Path | None) -> set[str] | None:
    return None if path is None else set(read_lines(path, "image list"))


def read_nih(source: Path, classes: tuple[str, ...], seed: int = 0, test_fraction: float = 0.2
             ) -> tuple[dict[str, list[Record]], list[str], dict[str, Path]]:
    """({train, test}: records, problems, the annotation files read).

    A row repeated (the same image twice, whatever its Patient ID) keeps its first line and names the
    others; with the official lists, a labelled image in neither list is named and left out.
    """
    if not source.is_dir():
        raise UserError(f"source folder not found: {source}")
    entries = find_file(source, ["Data_Entry_2017*.csv", "Data_Entry_2017*.csv.gz"], "label file Data_Entry_2017.csv")
    bbox = find_file(source, ["BBox_List_2017.csv", "BBox_List_2017.csv.gz"], "box list", required=False)
    test_list = read_list(find_file(source, ["test_list.txt"], "test list", required=False))
    train_list = read_list(find_file(source, ["train_val_list.txt"], "train list", required=False))
    problems: list[str] = []
    boxes = read_boxes(bbox, classes, problems)
    located = image_index(source)
    records: list[Record] = []
    wanted = set(classes)
    first_line: dict[str, int] = {}
    with stream_table(entries, "label file", {"Image Index", "Finding Labels", "Patient ID"}) as table:
        for line, row in table:
            name = row["Image Index"].strip()
            labels = {v.strip() for v in row["Finding Labels"].split("|") if v.strip()} - {NO_FINDING}
            unknown = labels - set(NIH_CLASSES)
            if not name or unknown:
                problems.append(f"{entries.name}: line {line} ({name}): unknown finding {sorted(unknown)}")
                continue
            if name in first_line:
                problems.append(f"{entries.name}: line {line} ({name}): the image is listed again (first on line "
                                f"{first_line[name]}); the first line is kept")
                continue
            first_line[name] = line
            if name not in located:
                problems.append(f"image not found: {name} (in images/ or images_0XX/images/)")
                continue
            split = None
            if test_list is not None:
                split = "test" if name in test_list else "train" if (train_list is None or name in train_list) else None
                if split is None:
                    problems.append(f"{entries.name}: line {line} ({name}): in neither test_list.txt nor "
                                    "train_val_list.txt; left out")
                    continue
            meta = {key: row[column].strip() for key, column in METADATA_COLUMNS.items() if row.get(column, "").strip()}
            records.append(Record(located[name], boxes.get(name, []), image_labels=labels & wanted,
                                  patient=row["Patient ID"].strip() or None, split=split, meta=meta))
    if bbox is not None:
        problems += [f"{bbox.name}: {name}: boxes of an image that {entries.name} does not list; they are skipped"
                     for name in sorted(set(boxes) - set(first_line))]
    if test_list is not None:
        test = [r for r in records if r.split == "test"]
        train = [r for r in records if r.split == "train"]
    else:
        train, test = hold_out_test(records, seed, test_fraction)
    files = {"labels": entries, **({"boxes": bbox} if bbox else {})}
    return {"train": train, "test": test}, problems, files


register(DatasetFormat(
    "nih", lambda request: official_download(request, read_nih), classes=NIH_CLASSES,
    about=__doc__.splitlines()[0]))
