"""`--format table`: a dataset in no public layout, described by a labels table and any localisation.

- labels (``table.labels``): a CSV/TSV with an image path column and either one column per class
  (``1`` positive, ``0`` negative, blank or ``-1`` unknown: the CheXpert convention) or one column
  of findings separated by ``|`` (the NIH convention; ``No Finding`` or blank for none); optional
  patient, study, split (train/val/test, also training, valid, validate, validation, testing: any
  other value stops the prepare naming its row) and metadata columns, each named by a ``table.*``
  key. Without a patient column the splits are by image: warned in one line, kept in the manifest.
- localisation, any of: a boxes CSV (image, class, x1,y1,x2,y2 or x,y,w,h in pixels of the original
  image, optionally the width and height it was drawn on), a COCO JSON (boxes, polygons, RLE masks,
  decoded by pycocotools), or a folder of per-class mask images (``masks/<class>/<image>.png``).

The labels table decides the labels; a box for a class an image is not positive for is named and
dropped. Every bad row is named and skipped; unknown labels stay unknown (NaN in the cache). What
comes out is the same ``Record`` list every public format produces, for the same builder: the NIH
importer and this one give identical caches on NIH's own files (tests/test_table.py).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from hegl_cli.config import TableConfig
from hegl_cli.data.formats.registry import DatasetFormat, FormatRead, ReadRequest, register
from hegl_cli.data.pathologies import canonical
from hegl_cli.data.records import Finding, Record, SplitSource, box_from_columns, safe_file_name
from hegl_cli.data.splits import hold_out_test
from hegl_cli.errors import UserError
from hegl_cli.fs.tables import read_json, read_table, stream_table

POSITIVE, NEGATIVE, UNKNOWN = {"1", "1.0", "true", "yes"}, {"0", "0.0", "false", "no"}, {"", "-1", "-1.0", "nan"}
SPLITS = ("train", "val", "test")
# The split values a table may hold (any case) -> hegl's split; any other value stops the prepare.
SPLIT_VALUES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
                "validation": "val", "test": "test", "testing": "test"}


def _user_path(text: str, what: str) -> Path:
    path = Path(text).expanduser()
    if not text:
        raise UserError(f"--format table needs {what}")
    return path


class ImageLocator:
    """An image path from a table -> its path relative to ``source`` (None when it is not there or
    leaves ``source``); a bare file name is looked up anywhere under ``source``."""

    def __init__(self, source: Path):
        self.source = source.resolve()
        self._by_name: dict[str, str | None] | None = None

    def __call__(self, text: str) -> str | None:
        text = text.strip()
        path = Path(text)
        if path.is_absolute():
            try:
                relative = str(path.resolve().relative_to(self.source))
            except ValueError:
                return None
        else:
            relative = safe_file_name(text)
            if relative is None:
                return None
        if (self.source / relative).is_file():
            found: str | None = relative
        else:
            found = self.by_name().get(relative) if len(PurePosixPath(relative).parts) == 1 else None
        return found  # a link is followed: the user made it (only the table's names are held inside)

    def by_name(self) -> dict[str, str | None]:
        if self._by_name is None:
            found: dict[str, str | None] = {}
            for folder, _, names in os.walk(self.source):
                for name in names:
                    relative = os.path.relpath(os.path.join(folder, name), self.source)
                    found[name] = None if name in found else relative  # a name found twice names no file
            self._by_name = found
        return self._by_name


def _row_labels(row: dict[str, str], cfg: TableConfig, classes: list[str],
                spelled: dict[str, dict[str, None]] | None = None) -> tuple[set[str], set[str]]:
    """(positive classes, unknown classes) of one row; ValueError for a value that is no label.
    ``spelled`` gathers, per class, how the labels column writes it."""
    if cfg.class_columns:
        positive, unknown = set(), set()
        for column, name in zip(cfg.class_columns, classes):
            value = row[column].strip().lower()
            if value in POSITIVE:
                positive.add(name)
            elif value in UNKNOWN:
                unknown.add(name)
            elif value not in NEGATIVE:
                raise ValueError(f"column {column!r} holds {row[column]!r}, not 1, 0, blank or -1")
        return positive, unknown
    cell = row[cfg.labels_column]
    values = [v.strip() for v in cell.split(cfg.separator) if v.strip()]
    if not values:
        raise ValueError(f"column {cfg.labels_column!r} is empty (an image without findings says "
                         f"{cfg.no_finding!r})")
    unreadable = [v for v in values if v.lower() in UNKNOWN]
    if unreadable:
        raise ValueError(f"column {cfg.labels_column!r} holds {unreadable[0]!r}, which is no finding")
    found = {canonical(v) for v in values}
    if spelled is not None:
        for value in values:
            spelled.setdefault(canonical(value), {})[value] = None
    return found & set(classes), set()  # a finding outside data.classes is left out, as for every format


def table_classes(cfg: TableConfig, wanted: list[str]) -> list[str]:
    """The dataset's classes: the class columns (canonical names), or every finding of the labels
    column in the order first seen, or ``data.classes`` (in its order) when given."""
    if bool(cfg.class_columns) == bool(cfg.labels_column):
        raise UserError("--format table needs either table.class_columns (one column per class) or "
                        "table.labels_column (one column of findings), not both")
    if cfg.class_columns:
        return [canonical(c) for c in cfg.class_columns]
    if wanted:
        return list(dict.fromkeys(canonical(c) for c in wanted))
    seen: dict[str, None] = {}
    with stream_table(_user_path(cfg.labels, "table.labels (or --labels FILE)"), "labels table",
                      {cfg.labels_column}) as table:
        for _, row in table:
            for value in row[cfg.labels_column].split(cfg.separator):
                if (value.strip() and value.strip().lower() not in UNKNOWN
                        and canonical(value) != canonical(cfg.no_finding)):
                    seen[canonical(value)] = None
    return list(seen)


class Labels:
    """The labels table read: image key (the table's image value) -> its record, in the table's order;
    a localisation file may name an image by that key or by its file name alone."""

    def __init__(self, records: dict[str, Record]):
        self.records = records
        names: dict[str, str | None] = {}
        for key in records:
            names[Path(key).name] = None if Path(key).name in names else key
        self.by_name = names

    def find(self, key: str) -> Record | None:
        if key in self.records:
            return self.records[key]
        other = self.by_name.get(Path(key).name)
        return self.records.get(other) if other else None


def split_of(value: str, where: str) -> str:
    """hegl's split for a table's split value (:data:`SPLIT_VALUES`); any other value, blank included, is
    one line naming the row: an official split is never guessed, nor its row dropped without a word."""
    split = SPLIT_VALUES.get(value.strip().lower())
    if split is None:
        raise UserError(f"{where}: split {value!r} is not a split hegl knows (train, val or test; also training, "
                        "valid, validate, validation, testing); fix the table's split column, or leave "
                        "table.split_column unset")
    return split


def read_labels(source: Path, cfg: TableConfig, classes: list[str], problems: list[str],
                spelled: dict[str, dict[str, None]] | None = None) -> tuple[Labels, Path]:
    """The labels table's records (see :class:`Labels`) and its path; an unknown split value stops."""
    path = _user_path(cfg.labels, "table.labels (or --labels FILE)")
    columns = {cfg.image_column, *cfg.class_columns, *([cfg.labels_column] if cfg.labels_column else []),
               *(c for c in (cfg.patient_column, cfg.study_column, cfg.split_column) if c),
               *cfg.metadata_columns.values()}
    locate = ImageLocator(source)
    records: dict[str, Record] = {}
    with stream_table(path, "labels table", columns) as table:
        for line, row in table:
            key = row[cfg.image_column].strip()
            where = f"{path.name}: line {line} ({key})"
            if key in records:
                problems.append(f"{where}: the image is listed again; the first line is kept")
                continue
            split = split_of(row[cfg.split_column], where) if cfg.split_column else None
            try:
                positive, unknown = _row_labels(row, cfg, classes, spelled)
            except ValueError as exc:
                problems.append(f"{where}: {exc}; the row is skipped")
                continue
            located = locate(key) if key else None
            if located is None:
                why = "escapes the source folder" if key and (
                    Path(key).is_absolute() or safe_file_name(key) is None) else "not found under the source"
                problems.append(f"image {why}: {key} ({path.name}, line {line})")
                continue
            patient = row[cfg.patient_column].strip() if cfg.patient_column else ""
            meta = {name: row[column].strip() for name, column in cfg.metadata_columns.items() if row[column].strip()}
            if cfg.study_column and row[cfg.study_column].strip():
                meta["study"] = row[cfg.study_column].strip()
            records[key] = Record(located, [], image_labels=positive, patient=patient or None, unknown=unknown,
                                  split=split, meta=meta)
    return Labels(records), path


def _attach(labels: Labels, key: str, finding: Finding, where: str, problems: list[str]) -> None:
    """Add a localisation to its image, if the labels make the image positive for its class."""
    record = labels.find(key)
    if record is None:
        problems.append(f"{where}: image {key!r} is not in the labels table; the annotation is skipped")
        return
    if finding.label not in record.labels:
        state = "unknown" if finding.label in record.unknown else "negative"
        problems.append(f"{where}: a {finding.label} annotation on an image labelled {state} for it; it is dropped")
        return
    record.findings.append(finding)


def read_boxes(cfg: TableConfig, records: Labels, classes: list[str], problems: list[str]) -> Path:
    path = _user_path(cfg.boxes, "table.boxes")
    columns = {cfg.box_image_column, cfg.box_class_column, *cfg.box_columns, *cfg.box_size_columns}
    table = read_table(path, "boxes table", columns)
    for line, row in zip(table.lines, table.dicts()):
        where = f"{path.name}: line {line}"
        label = canonical(row[cfg.box_class_column])
        if label not in classes:
            problems.append(f"{where}: unknown class {row[cfg.box_class_column]!r}; the box is skipped")
            continue
        try:
            box = box_from_columns(row, tuple(cfg.box_columns), xywh=cfg.box_format == "xywh")
            frame = tuple(int(float(row[c])) for c in cfg.box_size_columns) if cfg.box_size_columns else None
        except (ValueError, KeyError) as exc:
            problems.append(f"{where}: {exc}; the box is skipped")
            continue
        _attach(records, row[cfg.box_image_column].strip(), Finding(label, box, frame=frame), where, problems)
    return path


def read_coco(cfg: TableConfig, records: Labels, classes: list[str], problems: list[str]) -> Path:
    """COCO's images, categories and annotations: a box, a polygon per part, or an RLE mask each."""
    path = _user_path(cfg.coco, "table.coco")
    data = read_json(path, "COCO file")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                     "categories")):
        raise UserError(f"{path}: not a COCO file (it needs lists of 'images', 'annotations' and 'categories')")
    images: dict[Any, dict] = {}
    repeated: set[Any] = set()
    for number, im in enumerate(data["images"]):
        if isinstance(im, dict) and not _is_coco_id(im.get("id")):
            problems.append(f"{path.name}: image #{number + 1} has id {im.get('id')!r}, not a number or a string; "
                            "skipped")
        elif isinstance(im, dict):
            if im.get("id") in images:
                repeated.add(im.get("id"))
            images[im.get("id")] = im
    for image_id in sorted(repeated, key=str):
        problems.append(f"{path.name}: image id {image_id!r} is given to more than one image; its annotations "
                        "are skipped")
        del images[image_id]
    categories = {c.get("id"): canonical(str(c.get("name", ""))) for c in data["categories"]
                  if isinstance(c, dict) and _is_coco_id(c.get("id"))}
    for number, ann in enumerate(data["annotations"]):
        named = f"id {ann['id']!r}" if isinstance(ann, dict) and "id" in ann else f"#{number + 1} (no id)"
        where = f"{path.name}: annotation {named}"
        if not isinstance(ann, dict) or not _is_coco_id(ann.get("image_id")) or ann.get("image_id") not in images:
            problems.append(f"{where}: image id {ann.get('image_id') if isinstance(ann, dict) else None!r} is not "
                            "among its images; skipped")
            continue
        image = images[ann["image_id"]]
        label = categories.get(ann.get("category_id")) if _is_coco_id(ann.get("category_id")) else None
        if label not in classes:
            problems.append(f"{where}: category {ann.get('category_id')!r} is no class of the table; skipped")
            continue
        try:
            findings = _coco_findings(ann, label, image)
        except (ValueError, TypeError, KeyError) as exc:
            problems.append(f"{where}: {exc}; skipped")
            continue
        for finding in findings:
            _attach(records, str(image.get("file_name", "")), finding, where, problems)
    return path


def check_coco_rle(rle: dict) -> None:
    """ValueError unless ``rle`` is a COCO RLE that describes exactly its ``size``: pycocotools decodes
    a malformed one without a word (from memory it never wrote), so it is checked before."""
    size = rle.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"its RLE size {size!r} is not [height, width]")
    h, w = size
    counts = rle.get("counts")
    if isinstance(counts, str):
        counts = rle_string_counts(counts)
    if not isinstance(counts, list) or not counts:
        raise ValueError("its RLE has no counts")
    if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
        raise ValueError(f"its RLE counts do not cover the {w}x{h} mask (they must be non-negative and sum "
                         f"to {h * w})")


def rle_string_counts(text: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (COCO's own LEB128-like code: 5 bits a
    character from '0', 0x20 = more follows, 0x10 in the last = negative; from the third count on,
    each is stored as its difference to the count two before). ValueError for a truncated string."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("its compressed RLE counts end in the middle of a number")
            chunk = ord(text[pos]) - 48
            if not 0 <= chunk < 64:
                raise ValueError(f"its compressed RLE counts hold {text[pos]!r}, which COCO's code never writes")
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            pos, shift = pos + 1, shift + 5
            if not more and chunk & 0x10:
                value |= -1 << shift
        counts.append(value + (counts[-2] if len(counts) > 2 else 0))
    return counts


def _is_coco_id(value: Any) -> bool:
    """A COCO id: a whole number or a string (a list or a mapping cannot key anything)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _finite_numbers(values: Any, what: str) -> list[float]:
    """``values`` as floats; ValueError naming ``what`` unless they are all finite numbers."""
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"its {what} is not a list of numbers")
    numbers = [float(v) for v in values]
    if not all(math.isfinite(v) and abs(v) < 1e7 for v in numbers):
        raise ValueError(f"its {what} holds a coordinate that is not a finite number of pixels")
    return numbers


def _coco_findings(ann: dict, label: str, image: dict) -> list[Finding]:
    if "bbox" not in ann:
        raise ValueError("it has no 'bbox' (COCO gives every annotation one)")
    bbox = _finite_numbers(ann["bbox"], "bbox")
    if len(bbox) != 4:
        raise ValueError(f"its bbox has {len(bbox)} numbers, not 4 (x, y, width, height)")
    x, y, w, h = bbox
    box = box_from_columns({"x": x, "y": y, "w": w, "h": h}, ("x", "y", "w", "h"), xywh=True)
    frame = (int(image["width"]), int(image["height"])) if "width" in image and "height" in image else None
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, dict):  # RLE, compressed or not
        check_coco_rle(segmentation)
        return [Finding(label, box, coco_rle=segmentation, frame=frame)]
    if isinstance(segmentation, list) and segmentation:
        parts = [_finite_numbers(part, "segmentation polygon") for part in segmentation]
        polygons = [list(zip(part[0::2], part[1::2])) for part in parts]
        return [Finding(label, box, polygon=p, frame=frame) for p in polygons if len(p) >= 3]
    if segmentation not in (None, []):
        raise ValueError(f"its segmentation is {segmentation!r}, neither polygons nor an RLE")
    return [Finding(label, box, frame=frame)]


def read_mask_folder(cfg: TableConfig, records: Labels, classes: list[str], problems: list[str]) -> Path:
    """``masks/<class>/<image file>`` (or the image's stem with any image suffix)."""
    root = _user_path(cfg.masks, "table.masks")
    if not root.is_dir():
        raise UserError(f"table.masks {root} is not a folder of masks/<class>/<image>.png")
    stems = defaultdict(list)
    for key in records.records:
        stems[Path(key).stem].append(key)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = canonical(folder.name)
        for mask in sorted(p for p in folder.iterdir() if p.is_file()):
            where = f"{mask}"
            if label not in classes:
                problems.append(f"{where}: folder {folder.name!r} is no class of the table; skipped")
                break
            keys = stems.get(mask.stem, [])
            if len(keys) != 1:
                problems.append(f"{where}: {'no' if not keys else 'more than one'} image of the table is named "
                                f"{mask.stem!r}; skipped")
                continue
            _attach(records, keys[0], Finding(label, (0.0, 0.0, 1.0, 1.0), mask_file=str(mask)), where, problems)
    return root


def check_table_config(cfg: TableConfig) -> None:
    """The ``table.*`` keys that the types alone do not check, each refused in one line naming it."""
    if not cfg.separator:
        raise UserError("config key 'table.separator' is empty; the findings of one cell need a separator such as '|'")
    if len(cfg.box_columns) != 4:
        raise UserError(f"config key 'table.box_columns' names {len(cfg.box_columns)} columns, not 4")
    if len(cfg.box_size_columns) not in (0, 2):
        raise UserError(f"config key 'table.box_size_columns' names {len(cfg.box_size_columns)} column(s); it "
                        "takes two, [width, height], or none")
    for name, column in cfg.metadata_columns.items():
        if not isinstance(name, str) or not isinstance(column, str) or not name.strip() or not column.strip():
            raise UserError(f"config key 'table.metadata_columns' maps {name!r} to {column!r}; it takes "
                            "{name: column} with both as text, e.g. {sex: Patient Sex}")


BY_IMAGE = ("table.patient_column is not set: the splits are drawn by image, so one patient's images can be "
            "in train and test (name the table's patient column to split by patient)")


@dataclass
class TableRead:
    """What :func:`read_table_dataset` found: each split's records, the rows left out, the files read,
    the classes, how the table spells each class and what the user should know."""

    splits: dict[str, list[Record]]
    problems: list[str]
    files: dict[str, Path]
    classes: list[str]
    spelled: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def read_table_dataset(source: Path, cfg: TableConfig, wanted: list[str], seed: int = 0) -> TableRead:
    """A table-described dataset read (:class:`TableRead`). Without a patient column the splits are by
    image, which is warned (one line, also in the manifest), never silent."""
    check_table_config(cfg)
    if not source.is_dir():
        raise UserError(f"source folder not found: {source}")
    classes = table_classes(cfg, wanted)
    problems: list[str] = []
    found_spellings: dict[str, dict[str, None]] = {}
    labels, labels_path = read_labels(source, cfg, classes, problems, found_spellings)
    files = {"labels": labels_path}
    readers = (("boxes", cfg.boxes, read_boxes), ("coco", cfg.coco, read_coco), ("masks", cfg.masks, read_mask_folder))
    for name, given, reader in readers:
        if given:
            files[name] = reader(cfg, labels, classes, problems)
    rows = list(labels.records.values())
    if cfg.split_column:
        named = {s: [r for r in rows if r.split == s] for s in SPLITS}
        splits = {s: recs for s, recs in named.items() if recs}
        if "test" not in splits:
            splits["train"], splits["test"] = hold_out_test(named["train"], seed)
    else:
        train, test = hold_out_test(rows, seed)
        splits = {"train": train, "test": test}
    if cfg.class_columns:
        spelled = {canonical(c): [c] for c in cfg.class_columns}
    else:
        spelled = {c: list(found_spellings.get(c, {c: None})) for c in classes}
    return TableRead(splits, problems, {k: v for k, v in files.items() if v.is_file()}, classes, spelled,
                     [] if cfg.patient_column else [BY_IMAGE])


def read(request: ReadRequest) -> FormatRead:
    """A dataset in no public layout, read by the ``table.*`` keys; ``data.classes`` must be the table's."""
    source, table = Path(request.source), request.cfg.table  # type: ignore[arg-type]  # prepare checked it
    found = read_table_dataset(source, table, list(request.classes), request.seed)
    files = found.files
    asked = {canonical(c) for c in request.classes}
    if asked - set(found.classes):
        raise UserError(f"config key 'data.classes': {sorted(asked - set(found.classes))[0]!r} is not a class of "
                        f"the table (classes: {', '.join(found.classes)})")
    return FormatRead(
        sources=[SplitSource(name, files["labels"], source, records=recs) for name, recs in found.splits.items()],
        classes=[c for c in found.classes if not asked or c in asked], problems=found.problems, files=files,
        where=[str(source.resolve()), asdict(table)],
        description={"source": str(source.resolve()), **{k: str(Path(v).resolve()) for k, v in files.items()},
                     "table": asdict(table)},
        original_names=found.spelled, warnings=found.warnings)


register(DatasetFormat(
    "table", read, about="a labels table plus boxes, COCO or mask images, named by the table.* config keys",
    source_help="the folder the table's image paths start from"))
