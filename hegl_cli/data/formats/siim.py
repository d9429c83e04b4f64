"""SIIM-ACR Pneumothorax Segmentation as downloaded: run-length pixel masks over DICOM images.

``train-rle.csv`` (``ImageId, EncodedPixels``; ``-1`` = no pneumothorax, several rows for an image
with several regions) and ``dicom-images-train/<study>/<series>/<ImageId>.dcm``. One class; test is
a seeded 20%.
"""

from __future__ import annotations

import csv
from pathlib import Path

from hegl_cli.data.formats.files import find_file, open_text
from hegl_cli.data.records import Finding, Record
from hegl_cli.data.splits import hold_out_test
from hegl_cli.errors import UserError

SIIM_CLASSES: tuple[str, ...] = ("Pneumothorax",)


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
    train, test = hold_out_test(records, seed)
    return {"train": train, "test": test}, problems, {"labels": table}
