"""MIMIC-CXR-JPG (PhysioNet) as downloaded: 377k JPEGs of 227k studies, CheXpert-labeler labels.

Layout of ``--source``: the dataset's root with ``mimic-cxr-2.0.0-chexpert.csv.gz`` (per study:
``subject_id, study_id`` and the 14 observations, 1/0/-1/blank), ``mimic-cxr-2.0.0-metadata.csv.gz``
(per image: ``dicom_id, subject_id, study_id, ViewPosition, ...``), ``mimic-cxr-2.0.0-split.csv.gz``
(``dicom_id, study_id, subject_id, split``) and the images under
``files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg``. Each image takes its study's labels under the label
policy (:mod:`.chexpert_labels`; the No Finding convention spares no class here, as torchxrayvision
reads MIMIC); the patient is ``subject_id``; the view is ``ViewPosition`` (``LATERAL`` is ``L``).

The official split is kept: ``train``, ``validate`` (hegl's ``val``) and ``test``. A split value that
is none of these stops the prepare naming its row; an image in no split row, or whose study has no
labels, is named and left out.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from hegl_cli.data.formats import chexpert_labels as cx
from hegl_cli.data.formats.files import find_file, official_download
from hegl_cli.data.formats.registry import DatasetFormat, FormatRead, ReadRequest, register
from hegl_cli.data.records import Record, view_name
from hegl_cli.errors import UserError
from hegl_cli.fs.tables import stream_table

MIMIC_CLASSES = cx.CLASSES
OFFICIAL_SPLITS = {"train": "train", "validate": "val", "test": "test"}
Labels = tuple[str, frozenset[str], frozenset[str]]  # subject, positive classes, unknown classes


def study_labels(path: Path, classes: tuple[str, ...], policy: cx.LabelPolicy, problems: list[str]
                 ) -> dict[str, Labels]:
    """study_id -> (subject_id, positive, unknown) of the CheXpert-labeler table, streamed."""
    wanted = frozenset(classes)
    shared = cx.Interned()
    studies: dict[str, Labels] = {}
    with stream_table(path, "MIMIC-CXR label table", {"subject_id", "study_id", cx.NO_FINDING}) as rows:
        columns = tuple(c for c in MIMIC_CLASSES if c in rows.header)
        missing = wanted - set(columns)
        for line, row in rows:
            study = row["study_id"].strip()
            try:
                positive, unknown = cx.row_labels(row, columns, policy)
            except ValueError as exc:
                problems.append(f"{path.name}: line {line} (study {study}): {exc}; its images are left out")
                continue
            if study in studies:
                problems.append(f"{path.name}: line {line}: study {study} is labelled again; the first row is kept")
                continue
            studies[sys.intern(study)] = (row["subject_id"].strip(), shared(frozenset(positive & wanted)),
                                          shared(frozenset((unknown | missing) & wanted)))
    return studies


def official_splits(path: Path) -> dict[str, str]:
    """dicom_id -> hegl's split; a split value MIMIC does not have is one line naming the row."""
    splits: dict[str, str] = {}
    with stream_table(path, "MIMIC-CXR split table", {"dicom_id", "split"}) as rows:
        for line, row in rows:
            value = row["split"].strip()
            if value not in OFFICIAL_SPLITS:
                raise UserError(f"{path}: line {line} ({row['dicom_id'].strip()}): split {value!r} is not one of "
                                f"MIMIC-CXR's ({', '.join(OFFICIAL_SPLITS)}); fix the file or restore the original")
            splits[row["dicom_id"].strip()] = OFFICIAL_SPLITS[value]
    return splits


def read_mimic(source: Path, classes: tuple[str, ...], policy: cx.LabelPolicy,
               exists: Callable[[str], bool] = os.path.isfile
               ) -> tuple[dict[str, list[Record]], list[str], dict[str, Path]]:
    """({train, val, test}: records, problems, the tables read); ``exists`` says whether an image is there."""
    if not source.is_dir():
        raise UserError(f"source folder not found: {source}")
    labels = find_file(source, ["mimic-cxr-*-chexpert.csv.gz", "mimic-cxr-*-chexpert.csv"],
                       "label table mimic-cxr-2.0.0-chexpert.csv.gz")
    metadata = find_file(source, ["mimic-cxr-*-metadata.csv.gz", "mimic-cxr-*-metadata.csv"],
                         "metadata table mimic-cxr-2.0.0-metadata.csv.gz")
    split_file = find_file(source, ["mimic-cxr-*-split.csv.gz", "mimic-cxr-*-split.csv"],
                           "split table mimic-cxr-2.0.0-split.csv.gz")
    problems: list[str] = []
    studies = study_labels(labels, classes, policy, problems)
    splits = official_splits(split_file)
    prefix, folder = "files/" if (source / "files").is_dir() else "", str(source)
    shared = cx.Interned()
    out: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    with stream_table(metadata, "MIMIC-CXR metadata table", {"dicom_id", "subject_id", "study_id"}) as rows:
        for line, row in rows:
            dicom, subject, study = (row[k].strip() for k in ("dicom_id", "subject_id", "study_id"))
            where = f"{metadata.name}: line {line} ({dicom})"
            found = studies.get(study)
            if found is None:
                problems.append(f"{where}: study {study} has no row in {labels.name}; left out")
                continue
            if found[0] != subject:
                problems.append(f"{where}: subject {subject} but {labels.name} gives study {study} to subject "
                                f"{found[0]}; left out")
                continue
            split = splits.get(dicom)
            if split is None:
                problems.append(f"{where}: not in {split_file.name}; left out")
                continue
            name = f"{prefix}p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
            if not exists(os.path.join(folder, name)):
                problems.append(f"image not found: {name} ({metadata.name}, line {line})")
                continue
            meta = {"study": study}
            view = view_name(row.get("ViewPosition", ""))
            if view:
                meta["view"] = shared(view)
            out[split].append(Record(name, [], image_labels=found[1], patient=subject, unknown=found[2],
                                     split=split, meta=meta))
    return out, problems, {"labels": labels, "metadata": metadata, "split": split_file}


def read(request: ReadRequest) -> FormatRead:
    """MIMIC-CXR-JPG under the label policy of the ``data.label_*`` keys (recorded in the manifest)."""
    policy = cx.label_policy(request.cfg.data, MIMIC_CLASSES)
    found = official_download(request, lambda source, classes, seed: read_mimic(source, classes, policy))
    found.sources = [src for src in found.sources if src.records]  # a download without, say, test images
    return cx.recorded(found, policy, tuple(request.classes))


register(DatasetFormat(
    "mimic", read, classes=MIMIC_CLASSES, about=__doc__.splitlines()[0],
    source_help="the MIMIC-CXR-JPG root (its three .csv.gz tables and files/)",
    settings=cx.SETTINGS, settings_of=cx.settings_of))
