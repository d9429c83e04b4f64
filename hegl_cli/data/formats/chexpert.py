"""CheXpert (Stanford) as downloaded: CheXpert-v1.0 or CheXpert-v1.0-small, 13 observations.

Layout of ``--source``: the unpacked folder itself or the folder holding it, with ``train.csv`` and
``valid.csv`` (and ``test.csv`` when present) of ``Path`` (``CheXpert-v1.0-small/train/patient00001/
study1/view1_frontal.jpg``), ``Sex``, ``Age``, ``Frontal/Lateral``, ``AP/PA`` and the 14 observation
columns (1, 0, -1 uncertain, blank), and the images the paths name. The labels follow the label
policy (:mod:`.chexpert_labels`: the No Finding convention, which spares ``Support Devices`` as
torchxrayvision does, and ``-1`` unknown, U-Ones or U-Zeros per class).

Splits: ``train.csv`` is train (val is carved from it by patient); ``valid.csv``, the radiologists'
validation set, is the held-out split ``test``. When a labelled ``test.csv`` is there too (the
later test set), ``valid.csv`` is ``val`` and ``test.csv`` is ``test``; a ``test.csv`` without labels
is named and left out. The patient is the path's ``patientNNNNN``; the view is ``AP``/``PA`` (the
``AP/PA`` column) for a frontal image and ``L`` for a lateral one, as torchxrayvision names them.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from hegl_cli.data.formats import chexpert_labels as cx
from hegl_cli.data.formats.files import find_file, official_download
from hegl_cli.data.formats.registry import DatasetFormat, FormatRead, ReadRequest, register
from hegl_cli.data.records import Record, safe_file_name, view_name
from hegl_cli.errors import UserError
from hegl_cli.fs.tables import stream_table

CHEXPERT_CLASSES = cx.CLASSES
SPARED = ("Support Devices",)  # the labeler's No Finding says nothing of devices (torchxrayvision's reading)
PATIENT = re.compile(r"(?:^|/)(patient\d+)/(study\d+)/")
ROOT_NAMES = ("CheXpert-v1.0-small", "CheXpert-v1.0")


def find_root(source: Path) -> Path:
    """The folder that holds ``train.csv``: ``source`` or one ``CheXpert-v1.0*`` folder inside it."""
    if not source.is_dir():
        raise UserError(f"source folder not found: {source}")
    if (source / "train.csv").is_file():
        return source
    inside = sorted(p.parent for p in source.glob("*/train.csv"))
    if len(inside) == 1:
        return inside[0]
    if inside:
        raise UserError(f"{source}: train.csv is in {len(inside)} folders ({', '.join(p.name for p in inside)}); "
                        "give --source one of them")
    raise UserError(f"{source}: no CheXpert train.csv (in the folder or in CheXpert-v1.0*/ inside it)")


def image_name(path: str) -> str | None:
    """The ``Path`` cell relative to the dataset's folder (its leading ``CheXpert-v1.0*/`` dropped);
    None when it leaves the folder."""
    text = path.strip().replace("\\", "/")
    first, _, rest = text.partition("/")
    if first.startswith("CheXpert-v1.0"):
        text = rest
    return safe_file_name(text) if text else None


def chexpert_view(row: dict[str, str], name: str) -> str:
    """``AP``/``PA`` (the ``AP/PA`` cell) for a frontal image, ``L`` for a lateral one; the file name
    (``view1_frontal.jpg``) decides when the table has no ``Frontal/Lateral`` column."""
    kind = row.get("Frontal/Lateral", "").strip().lower() or ("lateral" if "lateral" in name.lower() else "")
    if kind == "lateral":
        return "L"
    return view_name(row.get("AP/PA", "")) if kind == "frontal" or "frontal" in name.lower() else ""


def read_split(table: Path, root: Path, split: str, classes: tuple[str, ...], policy: cx.LabelPolicy,
               problems: list[str], seen: dict[str, str], exists: Callable[[str], bool] = os.path.isfile
               ) -> list[Record]:
    """The records of one CheXpert table, streamed; a bad row or a missing image (by ``exists``) is named
    and skipped."""
    wanted = frozenset(classes)
    shared = cx.Interned()
    records = []
    folder = str(root)
    with stream_table(table, "CheXpert table", {"Path", cx.NO_FINDING}) as rows:
        columns = tuple(c for c in CHEXPERT_CLASSES if c in rows.header)
        missing = frozenset(classes) - set(columns)  # a class the table has no column for: unknown
        for line, row in rows:
            where = f"{table.name}: line {line}"
            name = image_name(row["Path"])
            if name is None:
                problems.append(f"{where}: Path {row['Path']!r} leaves the dataset's folder; skipped")
                continue
            if name in seen:
                problems.append(f"{where} ({name}): the image is listed again (first in {seen[name]}); the first "
                                "is kept")
                continue
            seen[name] = table.name
            try:
                positive, unknown = cx.row_labels(row, columns, policy)
            except ValueError as exc:
                problems.append(f"{where} ({name}): {exc}; the row is skipped")
                continue
            if not exists(os.path.join(folder, name)):
                problems.append(f"image not found: {name} ({table.name}, line {line})")
                continue
            found = PATIENT.search(name)
            meta = {key: shared(sys.intern(row[column].strip())) for key, column in (("sex", "Sex"), ("age", "Age"))
                    if row.get(column, "").strip()}
            view = chexpert_view(row, name)
            if view:
                meta["view"] = shared(view)
            if found:
                meta["study"] = f"{found.group(1)}/{found.group(2)}"
            records.append(Record(name, [], image_labels=shared(frozenset(positive & wanted)),
                                  patient=found.group(1) if found else None,
                                  unknown=shared(frozenset((unknown | missing) & wanted)), split=split, meta=meta))
    return records


def has_labels(table: Path) -> bool:
    """Whether a CheXpert table holds observation columns (the competition's test.csv lists paths only)."""
    with stream_table(table, "CheXpert table", {"Path"}) as rows:
        return cx.NO_FINDING in rows.header and any(c in rows.header for c in CHEXPERT_CLASSES)


def read_chexpert(source: Path, classes: tuple[str, ...], policy: cx.LabelPolicy,
                  exists: Callable[[str], bool] = os.path.isfile
                  ) -> tuple[dict[str, list[Record]], list[str], dict[str, Path], Path]:
    """({split: records}, problems, the tables read, the dataset's folder); ``exists`` says whether an
    image is there (the tests read the real tables without their 224k images)."""
    root = find_root(source)
    train = find_file(root, ["train.csv"], "train.csv")
    valid = find_file(root, ["valid.csv"], "valid.csv")
    test = find_file(root, ["test.csv", "test_labels.csv"], "test.csv", required=False)
    problems: list[str] = []
    if test is not None and not has_labels(test):
        problems.append(f"{test.name}: no observation columns (the competition's unlabelled test list); left out, "
                        f"{valid.name} is the test split")
        test = None
    roles = [("train", train), ("val", valid), ("test", test)] if test else [("train", train), ("test", valid)]
    seen: dict[str, str] = {}
    splits = {split: read_split(path, root, split, classes, policy, problems, seen, exists)
              for split, path in roles}
    files = {"labels": train, "test_labels": test or valid, **({"val_labels": valid} if test else {})}
    return splits, problems, files, root


def read(request: ReadRequest) -> FormatRead:
    """CheXpert under the label policy of the ``data.label_*`` keys (recorded in the manifest)."""
    policy = cx.label_policy(request.cfg.data, CHEXPERT_CLASSES, SPARED)
    where: dict[str, Path] = {}

    def reader(source: Path, classes: tuple[str, ...], seed: int):
        splits, problems, files, where["root"] = read_chexpert(source, classes, policy)
        return splits, problems, files

    found = official_download(request, reader)
    for src in found.sources:
        src.images = where["root"]
    return cx.recorded(found, policy, tuple(request.classes))


register(DatasetFormat(
    "chexpert", read, classes=CHEXPERT_CLASSES, about=__doc__.splitlines()[0],
    source_help="the unpacked CheXpert-v1.0(-small) folder, or the folder holding it",
    settings=cx.SETTINGS, settings_of=cx.settings_of))
