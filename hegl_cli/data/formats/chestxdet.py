"""ChestX-Det / ChestX-Det10 annotation files: reading and validating records.

The official JSON is a list of ``{"file_name", "syms", "boxes", "polygons"}`` where the three
lists are parallel (one entry per finding). ChestX-Det10 has no ``polygons``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hegl_cli.data.formats.registry import DatasetFormat, FormatRead, ReadRequest, register
from hegl_cli.data.records import Finding, Record, SplitSource, safe_file_name
from hegl_cli.errors import UserError
from hegl_cli.fs.tables import read_json

CHESTXDET_CLASSES: tuple[str, ...] = (
    "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "Diffuse Nodule", "Effusion",
    "Emphysema", "Fibrosis", "Fracture", "Mass", "Nodule", "Pleural Thickening", "Pneumothorax",
)
CHESTXDET10_CLASSES: tuple[str, ...] = (
    "Atelectasis", "Calcification", "Consolidation", "Effusion", "Emphysema", "Fibrosis", "Fracture",
    "Mass", "Nodule", "Pneumothorax",
)

# Per format: its classes and, per split, the annotation file names of the official download.
LAYOUTS: dict[str, dict[str, Any]] = {
    "chestxdet": {
        "classes": CHESTXDET_CLASSES,
        "annotations": {"train": ["ChestX_Det_train.json"], "test": ["ChestX_Det_test.json"]},
    },
    "chestxdet10": {
        "classes": CHESTXDET10_CLASSES,
        "annotations": {"train": ["train.json"], "test": ["test.json"]},
    },
}
IMAGE_DIRS: dict[str, list[str]] = {"train": ["train", "train_data"], "test": ["test", "test_data"]}


def read_annotation_file(path: Path) -> list[Any]:
    """Load the JSON list; a file that is not a JSON list is a user error naming the file."""
    data = read_json(path, "annotation file")
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def parse_record(raw: Any, classes: tuple[str, ...]) -> Record:
    """Validate one raw record; raises ValueError with a short reason."""
    if not isinstance(raw, dict):
        raise ValueError("record is not an object")
    name = safe_file_name(raw.get("file_name"))
    if name is None:
        raise ValueError(f"file_name {raw.get('file_name')!r} is missing or escapes the images folder")
    missing = [key for key in ("syms", "boxes") if key not in raw]
    if missing:  # a finding-free record says so with empty lists; a missing key is not "no finding"
        raise ValueError(f"no {' or '.join(repr(k) for k in missing)} list (a record without findings has empty lists)")
    syms, boxes = raw["syms"], raw["boxes"]
    polygons = raw.get("polygons")
    if not isinstance(syms, list) or not isinstance(boxes, list):
        raise ValueError("'syms' and 'boxes' must be lists")
    if len(syms) != len(boxes):
        raise ValueError(f"'syms' has {len(syms)} entries but 'boxes' has {len(boxes)}")
    if polygons is not None and (not isinstance(polygons, list) or len(polygons) != len(syms)):
        count = len(polygons) if isinstance(polygons, list) else type(polygons).__name__
        raise ValueError(f"'syms' has {len(syms)} entries but 'polygons' has {count}")
    findings = []
    for i, (label, box) in enumerate(zip(syms, boxes)):
        if label not in classes:
            raise ValueError(f"unknown class {label!r}")
        findings.append(Finding(label, _parse_box(box, i), _parse_polygon(polygons[i], i) if polygons else None))
    return Record(name, findings)


def _parse_box(box: Any, index: int) -> tuple[float, float, float, float]:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ValueError(f"box {index} is not [x1, y1, x2, y2]")
    try:
        x1, y1, x2, y2 = (_number(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box {index} has non-numeric coordinates") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"box {index} has a non-finite coordinate {list(box)}")
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {index} {list(box)} has no area")
    return x1, y1, x2, y2


def _parse_polygon(polygon: Any, index: int) -> list[tuple[float, float]] | None:
    if polygon in (None, []):
        return None
    if not isinstance(polygon, (list, tuple)):
        raise ValueError(f"polygon {index} is not a list of [x, y] points")
    points = []
    for point in polygon:
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise ValueError(f"polygon {index} is not a list of [x, y] points")
        try:
            points.append((_number(point[0]), _number(point[1])))
        except TypeError:
            raise ValueError(f"polygon {index} has a non-numeric point") from None
    if not all(math.isfinite(v) for point in points for v in point):
        raise ValueError(f"polygon {index} has a non-finite point")
    if len(points) < 3:
        raise ValueError(f"polygon {index} has fewer than 3 points")
    return points


def _number(value: Any) -> float:
    """A JSON number (not a bool, not a string) as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def parse_records(path: Path, classes: tuple[str, ...], problems: list[str]) -> list[Record]:
    """Read and validate every record of one file; bad records are named in ``problems`` and skipped."""
    records: list[Record] = []
    seen: set[str] = set()
    for index, raw in enumerate(read_annotation_file(path)):
        label = str(raw.get("file_name", f"#{index}"))[:80] if isinstance(raw, dict) else f"#{index}"
        try:
            record = parse_record(raw, classes)
        except ValueError as exc:
            problems.append(f"{path.name}: record {index} ({label}): {exc}")
            continue
        if record.file_name in seen:
            problems.append(f"{path.name}: record {index} ({label}): duplicate file_name "
                                   f"{record.file_name!r}, skipped")
            continue
        seen.add(record.file_name)
        records.append(record)
    return records


def find_source_layout(source: Path, fmt: str) -> dict[str, tuple[Path, Path]]:
    """Locate ``{split: (annotation_file, images_dir)}`` in an unzipped official download."""
    if not source.is_dir():
        raise UserError(f"source folder not found: {source}")
    layout: dict[str, tuple[Path, Path]] = {}
    for split, names in LAYOUTS[fmt]["annotations"].items():
        ann = next((source / n for n in names if (source / n).is_file()), None)
        if ann is None:
            raise UserError(f"{source}: no {' or '.join(names)} found for the {split} split")
        images = next((source / d for d in IMAGE_DIRS[split] if (source / d).is_dir()), None)
        if images is None:
            raise UserError(f"{source}: no images folder ({' or '.join(IMAGE_DIRS[split])}) for the {split} split")
        layout[split] = (ann, images)
    return layout


def split_files(request: ReadRequest, fmt: str) -> dict[str, tuple[Path, Path]]:
    """``{split: (annotation file, images folder)}`` from ``--annotations/--images`` or ``--source``."""
    if request.annotations:
        mismatch = set(request.annotations) ^ set(request.images)
        if mismatch:
            raise UserError(f"--annotations and --images must name the same splits (mismatch: "
                            f"{', '.join(sorted(mismatch))})")
        layout = {split: (Path(request.annotations[split]), Path(request.images[split])) for split in request.annotations}
    else:
        layout = find_source_layout(Path(request.source), fmt)  # type: ignore[arg-type]  # prepare checked it
    for annotation, _ in layout.values():
        if annotation.is_dir():
            raise UserError(f"{annotation} is a folder, not an annotation file (--annotations SPLIT=FILE.json)")
        if not annotation.is_file():
            raise UserError(f"annotation file not found: {annotation}")
    return layout


def reader(fmt: str):
    """The reader of ``fmt`` (ChestX-Det or ChestX-Det10): every split's JSON, identified by its images folder."""

    def read(request: ReadRequest) -> FormatRead:
        layout = split_files(request, fmt)
        problems: list[str] = []
        sources = [SplitSource(name, ann, img, records=parse_records(ann, LAYOUTS[fmt]["classes"], problems))
                   for name, (ann, img) in layout.items()]
        return FormatRead(sources=sources, classes=list(request.classes), problems=problems,
                          where=[str(s.images.resolve()) for s in sources])

    return read


for _name in LAYOUTS:
    register(DatasetFormat(_name, reader(_name), classes=LAYOUTS[_name]["classes"], about=__doc__.splitlines()[0],
                           inputs="source-or-files"))
