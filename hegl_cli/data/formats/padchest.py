"""PadChest (BIMCV, Alicante) as downloaded: 160k images, report terms mapped to 28 classes.

Layout of ``--source``: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (or ``.csv.gz``) with
``ImageID, ImageDir, PatientID, Projection, PatientSex_DICOM, PatientBirth, StudyDate_DICOM, Labels``
(``Labels`` a Python list literal of report terms, ``['pleural effusion', 'cardiomegaly']``), and the
16-bit PNGs in ``<ImageDir>/<ImageID>`` (the numbered folders of the download) or all in ``--source``
(the resized copy).

The classes and the term-to-class map are torchxrayvision's (1.5.7): its 28 classes, each fed by
every PadChest term that contains the class's name or one of its synonyms (the map is
many-to-many: ``consolidation`` feeds Consolidation and Infiltration, and Effusion gathers four
terms). It is written out below term by term over PadChest's whole vocabulary and printed by
``hegl prepare --format padchest --show-class-map``. A term the map lists under no class
(``normal``, ``kyphosis``, ...) says nothing of any class: every class not fed is negative, as
torchxrayvision reads it. Left out, each named: an image labelled ``exclude``, an image with no term
at all (``['']``, which says neither normal nor abnormal), an empty ``Labels`` cell, and an image
with a term PadChest's vocabulary does not have (it could be a synonym of a class).

The patient is ``PatientID``; the view is ``Projection`` (``PA``, ``L``, ``AP``, ``AP Supine`` for
``AP_horizontal``, as torchxrayvision names it, ``COSTAL``, ...); the age is the study's year minus
``PatientBirth``.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hegl_cli.data.formats.chexpert_labels import Interned
from hegl_cli.data.formats.files import find_file, official_download
from hegl_cli.data.formats.registry import DatasetFormat, FormatRead, ReadRequest, register
from hegl_cli.data.records import Record, safe_file_name, view_name
from hegl_cli.data.splits import hold_out_test
from hegl_cli.errors import UserError
from hegl_cli.fs.tables import stream_table

# class -> the PadChest terms that make it positive (torchxrayvision 1.5.7's PC_Dataset: a term feeds a
# class when it contains the class's name or a synonym, "tube'" meaning a term that ends in "tube").
PADCHEST_TERMS: dict[str, tuple[str, ...]] = {
    "Air Trapping": ("air trapping",),
    "Aortic Atheromatosis": ("aortic atheromatosis",),
    "Aortic Elongation": (
        "aortic elongation", "ascendent aortic elongation", "descendent aortic elongation",
        "supra aortic elongation",
    ),
    "Atelectasis": (
        "atelectasis", "atelectasis basal", "laminar atelectasis", "lobar atelectasis", "round atelectasis",
        "segmental atelectasis", "total atelectasis",
    ),
    "Bronchiectasis": ("bronchiectasis",),
    "Cardiomegaly": ("cardiomegaly",),
    "Consolidation": ("air bronchogram", "consolidation"),
    "Costophrenic Angle Blunting": ("costophrenic angle blunting",),
    "Edema": ("pulmonary edema",),
    "Effusion": (
        "loculated fissural effusion", "loculated pleural effusion", "pericardial effusion",
        "pleural effusion",
    ),
    "Emphysema": ("emphysema", "subcutaneous emphysema"),
    "Fibrosis": ("pulmonary fibrosis",),
    "Flattened Diaphragm": ("flattened diaphragm",),
    "Fracture": (
        "callus rib fracture", "clavicle fracture", "fracture", "humeral fracture", "rib fracture",
        "vertebral fracture",
    ),
    "Granuloma": ("calcified granuloma", "granuloma"),
    "Hemidiaphragm Elevation": ("hemidiaphragm elevation",),
    "Hernia": ("hiatal hernia",),
    "Hilar Enlargement": (
        "adenopathy", "calcified adenopathy", "calcified mediastinal adenopathy", "hilar enlargement",
        "pulmonary artery enlargement", "vascular hilar enlargement",
    ),
    "Infiltration": (
        "air bronchogram", "alveolar pattern", "consolidation", "ground glass pattern", "infiltrates",
        "interstitial pattern", "reticular interstitial pattern", "reticulonodular interstitial pattern",
    ),
    "Mass": ("breast mass", "mass", "mediastinal mass", "pleural mass", "pulmonary mass", "soft tissue mass"),
    "Nodule": ("multiple nodules", "nodule", "pseudonodule"),
    "Pleural_Thickening": ("apical pleural thickening", "calcified pleural thickening", "pleural thickening"),
    "Pneumonia": ("atypical pneumonia", "pneumonia"),
    "Pneumothorax": ("hydropneumothorax", "pneumothorax"),
    "Scoliosis": ("scoliosis",),
    "Support Devices": ("dual chamber device", "electrical device", "pacemaker", "single chamber device"),
    "Tube": (
        "NSG tube", "chest drain tube", "double J stent", "endotracheal tube", "gastrostomy tube",
        "nephrostomy tube", "tracheostomy tube", "ventriculoperitoneal drain tube",
    ),
    "Tuberculosis": ("tuberculosis", "tuberculosis sequelae"),
}
OTHER_TERMS: tuple[str, ...] = (
    "COPD signs", "Chilaiditi sign", "abnormal foreign body", "abscess", "air fluid level",
    "aortic aneurysm", "aortic button enlargement", "aortic endoprosthesis", "artificial aortic heart valve",
    "artificial heart valve", "artificial mitral heart valve", "asbestosis signs", "axial hyperostosis",
    "azygoesophageal recess shift", "azygos lobe", "blastic bone lesion", "bone cement", "bone metastasis",
    "bronchovascular markings", "bullas", "calcified densities", "calcified fibroadenoma",
    "calcified pleural plaques", "catheter", "cavitation", "central vascular redistribution",
    "central venous catheter", "central venous catheter via jugular vein",
    "central venous catheter via subclavian vein", "central venous catheter via umbilical vein",
    "cervical rib", "chronic changes", "costochondral junction hypertrophy", "cyst", "dai", "dextrocardia",
    "diaphragmatic eventration", "empyema", "end on vessel", "endoprosthesis", "esophagic dilatation",
    "external foreign body", "fibrotic band", "fissure thickening", "goiter", "gynecomastia",
    "heart insufficiency", "heart valve calcified", "hilar congestion", "humeral prosthesis",
    "hyperinflated lung", "hypoexpansion", "hypoexpansion basal", "increased density", "kerley lines",
    "kyphosis", "lepidic adenocarcinoma", "lipomatosis", "lung metastasis", "lung vascular paucity",
    "lymphangitis carcinomatosa", "lytic bone lesion", "major fissure thickening", "mammary prosthesis",
    "mastectomy", "mediastinal enlargement", "mediastinal shift", "mediastinic lipomatosis", "metal",
    "miliary opacities", "minor fissure thickening", "nipple shadow",
    "non axial articular degenerative changes", "normal", "obesity", "osteopenia", "osteoporosis",
    "osteosynthesis material", "pectum carinatum", "pectum excavatum", "pleural plaques",
    "pneumomediastinum", "pneumoperitoneo", "post radiotherapy changes", "prosthesis",
    "pulmonary artery hypertension", "pulmonary hypertension", "pulmonary venous hypertension",
    "reservoir central venous catheter", "respiratory distress", "right sided aortic arch",
    "sclerotic bone lesion", "sternoclavicular junction hypertrophy", "sternotomy",
    "subacromial space narrowing", "suboptimal study", "superior mediastinal enlargement", "surgery",
    "surgery breast", "surgery heart", "surgery humeral", "surgery lung", "surgery neck", "suture material",
    "thoracic cage deformation", "tracheal shift", "unchanged", "vascular redistribution",
    "vertebral anterior compression", "vertebral compression", "vertebral degenerative changes",
    "volume loss",
)
PADCHEST_CLASSES: tuple[str, ...] = tuple(PADCHEST_TERMS)
EXCLUDE = "exclude"  # PadChest's mark of an image its labels should not be used for
TERM_CLASSES: dict[str, tuple[str, ...]] = {
    term: tuple(c for c, terms in PADCHEST_TERMS.items() if term in terms)
    for term in sorted({t for terms in PADCHEST_TERMS.values() for t in terms} | set(OTHER_TERMS))
}
LABELS_FILE = ["PADCHEST_chest_x_ray_images_labels_160K*.csv.gz", "PADCHEST_chest_x_ray_images_labels_160K*.csv",
               "PADCHEST_*.csv.gz", "PADCHEST_*.csv"]


def terms_of(cell: str) -> list[str]:
    """The report terms of a ``Labels`` cell (a Python list literal), stripped; ValueError if it is none."""
    try:
        value = ast.literal_eval(cell.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"Labels {cell[:60]!r} is not a list of terms") from None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"Labels {cell[:60]!r} is not a list of terms")
    return [t.strip() for t in value if t.strip()]


def classes_of(terms: list[str]) -> set[str]:
    """The classes the terms feed; ValueError naming a term PadChest's vocabulary does not have, an
    ``exclude`` mark or no term at all."""
    if not terms:
        raise ValueError("no term (neither normal nor a finding)")
    if EXCLUDE in terms:
        raise ValueError("labelled 'exclude'")
    unknown = [t for t in terms if t not in TERM_CLASSES]
    if unknown:
        raise ValueError(f"term {unknown[0]!r} is not in PadChest's vocabulary (it could be a synonym of a class)")
    return {c for t in terms for c in TERM_CLASSES[t]}


def age_of(row: dict[str, str]) -> str:
    """The age at the study, in years (its year minus ``PatientBirth``); '' when either is missing."""
    try:
        return str(int(row.get("StudyDate_DICOM", "").strip()[:4]) - int(float(row.get("PatientBirth", ""))))
    except ValueError:
        return ""


def image_file(source: Path, row: dict[str, str], exists: Callable[[str], bool] = os.path.isfile) -> str | None:
    """``<ImageDir>/<ImageID>`` or ``<ImageID>`` under ``source``, whichever is there (None: neither)."""
    image = row["ImageID"].strip()
    folder = row.get("ImageDir", "").strip()
    if folder.endswith(".0"):  # a folder number written as a float
        folder = folder[:-2]
    for name in (f"{folder}/{image}" if folder else None, image):
        name = safe_file_name(name) if name else None
        if name and exists(os.path.join(source, name)):
            return name
    return None


def read_padchest(source: Path, classes: tuple[str, ...], seed: int = 0,
                  exists: Callable[[str], bool] = os.path.isfile
                  ) -> tuple[dict[str, list[Record]], list[str], dict[str, Path]]:
    """({train, test}: records, problems, the table read); test is a seeded 20% of the patients (PadChest
    has no official split); ``exists`` says whether an image is there."""
    if not source.is_dir():
        raise UserError(f"source folder not found: {source}")
    table = find_file(source, LABELS_FILE, "label table PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv")
    problems: list[str] = []
    wanted = frozenset(classes)
    shared = Interned()
    records: list[Record] = []
    seen: set[str] = set()
    with stream_table(table, "PadChest table", {"ImageID", "PatientID", "Labels"}) as rows:
        for line, row in rows:
            image = row["ImageID"].strip()
            where = f"{table.name}: line {line} ({image})"
            if image in seen:
                problems.append(f"{where}: the image is listed again; the first line is kept")
                continue
            seen.add(image)
            try:
                if row["Labels"].strip().lower() in ("", "nan", "none"):
                    raise ValueError("no Labels")
                positive = classes_of(terms_of(row["Labels"]))
            except ValueError as exc:
                problems.append(f"{where}: {exc}; left out")
                continue
            name = image_file(source, row, exists)
            if name is None:
                problems.append(f"image not found: {image} (in {row.get('ImageDir', '').strip() or '.'}/ or the "
                                f"source folder; {table.name}, line {line})")
                continue
            meta = {"view": shared(view_name(row.get("Projection", ""))),
                    "sex": shared(sys.intern(row.get("PatientSex_DICOM", "").strip())),
                    "age": shared(age_of(row)), "study": row.get("StudyID", "").strip()}
            records.append(Record(name, [], image_labels=shared(frozenset(positive & wanted)),
                                  patient=row["PatientID"].strip() or None, meta={k: v for k, v in meta.items() if v}))
    train, test = hold_out_test(records, seed)
    return {"train": train, "test": test}, problems, {"labels": table}


def read(request: ReadRequest) -> FormatRead:
    """PadChest through torchxrayvision's term map (recorded: each class's terms are its original names)."""
    found = official_download(request, read_padchest)
    found.original_names = {c: list(PADCHEST_TERMS[c]) for c in request.classes}
    found.manifest = {"label_policy": {
        "terms": "torchxrayvision 1.5.7 PC_Dataset, term by term (hegl prepare --format padchest --show-class-map)",
        "left_out": ["labelled 'exclude'", "no term", "no Labels", "a term outside PadChest's vocabulary"]}}
    return found


def source_names() -> list[tuple[str, tuple[str, ...]]]:
    """Every term of PadChest's vocabulary and the classes it feeds (none for most)."""
    return sorted(TERM_CLASSES.items())


register(DatasetFormat(
    "padchest", read, classes=PADCHEST_CLASSES, about=__doc__.splitlines()[0],
    source_help="the PadChest folder (its labels CSV and the numbered image folders)",
    source_names=source_names,
    class_map_note="a term that feeds no class is a negative for every class it does not feed; an image labelled "
                   "'exclude', with no term, or with a term not listed here is left out (named in skipped.txt)"))
