"""RSNA Pneumonia Detection as downloaded: one class, boxes, DICOM images.

``stage_2_train_labels.csv`` (``patientId, x, y, width, height, Target``, several rows for an image
with several boxes) and ``stage_2_train_images/<patientId>.dcm``; one class, Pneumonia (the
challenge's lung opacity). One image per patient; test is a seeded 20% of the patients, since the
official test labels were never released.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from hegl_cli.data.formats.files import find_file, official_download, read_rows
from hegl_cli.data.formats.registry import DatasetFormat, register
from hegl_cli.data.records import Finding, Record, box_from_columns
from hegl_cli.data.splits import hold_out_test
from hegl_cli.errors import UserError

RSNA_CLASSES: tuple[str, ...] = ("Pneumonia",)


def read_rsna(source: Path, classes: tuple[str, ...], seed: int = 0
              ) -> tuple[dict[str, list[Record]], list[str], dict[str, Path]]:
    """({train, test}: records, problems, files read). A patient with a row that cannot be read (a
    ``Target`` other than 0 or 1, a positive row without a usable box) is named and left out: a label
    that cannot be read never becomes a negative."""
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
    unreadable: set[str] = set()
    for line, row in read_rows(labels, {"patientId", "x", "y", "width", "height", "Target"}):
        pid = row["patientId"].strip()
        value = row["Target"].strip()
        if not pid or value not in ("0", "1"):
            problems.append(f"{labels.name}: line {line} ({pid}): Target {value!r} is neither 0 nor 1; the patient "
                            "is left out")
            unreadable.add(pid)
            continue
        positive[pid] = positive.get(pid, False) or value == "1"
        if value == "1":
            try:
                boxes[pid].append(Finding("Pneumonia", box_from_columns(row, ("x", "y", "width", "height"), xywh=True)))
            except (ValueError, KeyError) as exc:
                problems.append(f"{labels.name}: line {line} ({pid}): {exc}; the patient is left out")
                unreadable.add(pid)
    records = []
    for pid, is_positive in positive.items():
        if pid in unreadable:
            continue
        if pid not in present:
            problems.append(f"image not found: {pid} (in {folder.name}/)")
            continue
        wanted = {"Pneumonia"} & set(classes) if is_positive else set()
        records.append(Record(f"{folder.name}/{present[pid]}", boxes.get(pid, []) if wanted else [],
                              image_labels=wanted, patient=pid))
    train, test = hold_out_test(records, seed)
    return {"train": train, "test": test}, problems, {"labels": labels}


register(DatasetFormat(
    "rsna", lambda request: official_download(request, read_rsna), classes=RSNA_CLASSES,
    about=__doc__.splitlines()[0]))
