"""SIIM-ACR Pneumothorax Segmentation as downloaded: run-length pixel masks over DICOM images.

``train-rle.csv`` (``ImageId, EncodedPixels``; ``-1`` = no pneumothorax, several rows for an image
with several regions) and ``dicom-images-train/<study>/<series>/<ImageId>.dcm``. One class; test is
a seeded 20%.
"""

from __future__ import annotations

from pathlib import Path

from hegl_cli.data.formats.files import find_file, official_download
from hegl_cli.data.formats.registry import DatasetFormat, register
from hegl_cli.data.masks import run_lengths
from hegl_cli.data.records import Finding, Record
from hegl_cli.data.splits import hold_out_test
from hegl_cli.errors import UserError
from hegl_cli.fs.tables import read_table

SIIM_CLASSES: tuple[str, ...] = ("Pneumothorax",)


def read_siim(source: Path, classes: tuple[str, ...], seed: int = 0
              ) -> tuple[dict[str, list[Record]], list[str], dict[str, Path]]:
    """({train, test}: records, problems, files read). An image with a mask that covers no pixel, or
    whose ImageId names two files, is named and left out."""
    if not source.is_dir():
        raise UserError(f"source folder not found: {source}")
    table_path = find_file(source, ["train-rle.csv", "train-rle.csv.gz"], "mask file train-rle.csv")
    folder = next((source / d for d in ("dicom-images-train", "train") if (source / d).is_dir()), None)
    if folder is None:
        raise UserError(f"{source}: no images folder (dicom-images-train)")
    problems: list[str] = []
    present = _locate(source, folder, problems)
    masks: dict[str, list[tuple[str, str]]] = {}
    unreadable: set[str] = set()
    table = read_table(table_path, "mask file", {"ImageId", "EncodedPixels"})
    for line, row in zip(table.lines, table.dicts()):
        image, pixels = row["ImageId"].strip(), row["EncodedPixels"].strip()
        if not image:
            problems.append(f"{table_path.name}: line {line}: not 'ImageId, EncodedPixels'")
            continue
        runs = masks.setdefault(image, [])
        origin = f"{table_path.name}: line {line}"
        if pixels == "-1":
            continue
        try:
            if not run_lengths(pixels)[1::2].any():
                raise ValueError("the mask covers no pixel")
        except ValueError as exc:
            problems.append(f"{table_path.name}: line {line} ({image}): {exc}; the image is left out")
            unreadable.add(image)
            continue
        runs.append((pixels, origin))
    records = []
    wanted = "Pneumothorax" in classes
    for image, runs in masks.items():
        if image in unreadable:
            continue
        if image not in present:
            problems.append(f"image not found: {image} (under {folder.name}/)")
            continue
        if present[image] is None:
            continue  # two files carry this ImageId: named by _locate
        findings = [Finding("Pneumothorax", (0.0, 0.0, 1.0, 1.0), rle=r, origin=o) for r, o in runs] if wanted else []
        records.append(Record(present[image], findings, image_labels={"Pneumothorax"} if findings else set()))
    train, test = hold_out_test(records, seed)
    return {"train": train, "test": test}, problems, {"labels": table_path}


def _locate(source: Path, folder: Path, problems: list[str]) -> dict[str, str | None]:
    """ImageId -> the DICOM's path relative to ``source``; None (and a line) for an ImageId found twice."""
    present: dict[str, str | None] = {}
    for path in sorted(folder.rglob("*.dcm")):
        relative = str(path.relative_to(source))
        if path.stem in present:
            if present[path.stem] is not None:
                problems.append(f"{path.stem}: two files carry this ImageId ({present[path.stem]}, {relative}); "
                                "the image is left out")
            present[path.stem] = None
            continue
        present[path.stem] = relative
    return present


register(DatasetFormat(
    "siim", lambda request: official_download(request, read_siim), classes=SIIM_CLASSES,
    about=__doc__.splitlines()[0]))
