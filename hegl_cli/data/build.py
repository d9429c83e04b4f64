"""Records + images -> a validated, memory-mappable cache (what `hegl prepare` does after reading a format).

The cache is written to ``<out>.partial-<pid>`` and moved into place when complete, without ever
replacing whatever appeared at ``<out>`` meanwhile, so an interrupted prepare never leaves a folder
that looks done and a folder a user made is never lost. The cache's identity is two fingerprints:
what it was made from and how (``inputs``: format, paths, classes, options) and the content of those
inputs (``content``: the annotation files' bytes and every image's size and modification time, and
its bytes when the images are few). Re-running with the same identity does nothing; a cache whose
inputs are the same but whose content changed (an image replaced) is stale and is rebuilt; other
inputs need ``--force``.

Whatever the format, the builder checks the dataset before it decodes an image: each image is in one
split only, no patient is in two splits (``data.patient_overlap``: move its images to the held-out
split, or refuse), and every record it leaves out is named in ``skipped.txt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hegl_cli import __version__
from hegl_cli.config import DataConfig
from hegl_cli.data.cache import (
    MANIFEST,
    PARTIAL_MARKER,
    SKIPPED,
    SplitWriter,
    cache_lock,
    foreign_files,
    intensity_rule_of,
    pack_masks,
    read_manifest,
    write_inventory,
)
from hegl_cli.data.dicom import dicom_metadata
from hegl_cli.data.formats import format_classes
from hegl_cli.data.formats.chestxdet import parse_records
from hegl_cli.data.images import INTENSITY_RULE, is_dicom, preprocess_file
from hegl_cli.data.masks import rasterize_findings
from hegl_cli.data.parallel import parallel_map
from hegl_cli.data.pathologies import canonical
from hegl_cli.data.records import Finding, Record, SplitSource
from hegl_cli.data.splits import split_by_group
from hegl_cli.errors import UserError, first_line
from hegl_cli.fs.atomic import rename_no_replace
from hegl_cli.fs.locks import pid_alive

HASH_IMAGES_UP_TO = 512 << 20  # bytes of images under which the content fingerprint hashes them all
HELD_OUT_ORDER = ("test", "val", "train")  # a patient in two splits goes to the first of these it is in


@dataclass
class PrepareOptions:
    """How to build a cache: the ``data`` keys that shape it (their defaults are the config's) and how to run."""

    image_size: int = DataConfig.image_size
    seed: int = DataConfig.seed
    val_fraction: float = DataConfig.val_fraction
    mask_source: str = DataConfig.mask_source
    strict: bool = False
    force: bool = False
    workers: int = 0  # 0 = one per CPU core
    progress: bool = True
    max_pixels: int = DataConfig.max_pixels  # larger images are skipped and reported
    patient_overlap: str = DataConfig.patient_overlap
    intensity: str = DataConfig.intensity
    frames: str = DataConfig.frames
    class_map: dict = field(default_factory=dict)
    views: list = field(default_factory=list)

    @classmethod
    def from_config(cls, data: DataConfig, **run: Any) -> PrepareOptions:
        """The options of the ``data`` config section, plus how to run (strict, force, workers, progress)."""
        return cls(image_size=data.image_size, seed=data.seed, val_fraction=data.val_fraction,
                   mask_source=data.mask_source, max_pixels=data.max_pixels, patient_overlap=data.patient_overlap,
                   intensity=data.intensity, frames=data.frames, class_map=dict(data.class_map),
                   views=list(data.views), **run)

    def shaping(self) -> list[Any]:
        """The options that change what the cache holds (not how it is built)."""
        return [self.image_size, self.seed, self.val_fraction, self.mask_source, self.max_pixels, self.patient_overlap,
                self.intensity, self.frames, INTENSITY_RULE, sorted(self.class_map.items()), sorted(self.views)]


@dataclass
class PrepareResult:
    """What a prepare run did, for the summary and for tests."""

    out: Path
    manifest: dict[str, Any]
    skipped: bool = False  # True when the cache was already up to date
    problems: list[str] = field(default_factory=list)
    clipped_boxes: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    stale: bool = False  # True when an existing cache of the same inputs was rebuilt because they changed


@dataclass(frozen=True)
class Identity:
    """What a cache was made from and how (``inputs``), and what those inputs held (``content``)."""

    inputs: str
    content: str

    @property
    def fingerprint(self) -> str:
        return fingerprint([self.inputs, self.content])


def fingerprint(parts: Iterable[Any]) -> str:
    """A stable hash of everything that determines the cache's content."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_paths(sources: list[SplitSource]) -> list[Path]:
    return [src.images / r.file_name for src in sources for r in (src.records or [])]


def content_fingerprint(sources: list[SplitSource], extra_files: Iterable[Path] = ()) -> tuple[str, str]:
    """(fingerprint, how) of what the inputs hold: the annotation files' bytes, and every image's size
    and modification time, or its bytes when all images together are at most :data:`HASH_IMAGES_UP_TO`."""
    files = sorted({str(p) for p in [*(s.annotations for s in sources), *extra_files] if Path(p).is_file()})
    parts: list[Any] = [[f, file_digest(Path(f))] for f in files]
    stamps = []
    for path in image_paths(sources):
        try:
            stat = path.stat()
            stamps.append((str(path), stat.st_size, stat.st_mtime_ns))
        except OSError:
            stamps.append((str(path), None, None))
    total = sum(s[1] or 0 for s in stamps)
    how = "sha256" if total <= HASH_IMAGES_UP_TO else "size+mtime"
    if how == "sha256":
        stamps = [(name, file_digest(Path(name)) if size is not None else None) for name, size, _ in stamps]
    return fingerprint([*parts, stamps]), how


def cache_identity(out: Path) -> Identity | None:
    """The identity recorded in the manifest of a cache at ``out`` (None when there is none)."""
    if not (Path(out) / MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(out)
    except UserError:
        return None
    identity = manifest.get("identity") or {}
    return Identity(identity.get("inputs", ""), identity.get("content", "")) if identity else None


def up_to_date(out: Path, identity: Identity, force: bool) -> PrepareResult | None:
    """The existing cache's result when it was made from exactly these inputs (and no --force)."""
    if not force and cache_identity(out) == identity:
        return PrepareResult(out=out, manifest=read_manifest(out), skipped=True)
    return None


def _decode_one(item: tuple[str, list[Finding], list[str], int, str, int, str, str]) -> tuple[Any, ...]:
    """Worker: one image -> (uint8 image, packed masks, has_mask, clipped boxes) or an error line."""
    path, findings, classes, size, mask_source, max_pixels, frames, intensity = item
    notes: list[str] = []
    try:
        image, geometry = preprocess_file(path, size, max_pixels, frames, intensity)
        masks, has_mask, clipped = rasterize_findings(findings, classes, geometry, size, mask_source, notes)
        header = dicom_metadata(Path(path)) if is_dicom(Path(path)) else {}
    except UserError as exc:
        return ("error", str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad file must not end a prepare of thousands
        return ("error", f"cannot read image {path}: {type(exc).__name__}: {first_line(exc, 160)}")
    return ("ok", image, pack_masks(masks), has_mask, clipped, [f"{path}: {n}" for n in notes], header)


def record_labels(record: Record, index: dict[str, int]) -> np.ndarray:
    """(C,) float32: 1 for the record's labels, NaN for the classes it leaves unknown, 0 for the rest."""
    labels = np.zeros(len(index), dtype=np.float32)
    for label in record.unknown:
        if label in index:
            labels[index[label]] = np.nan
    for label in record.labels:
        labels[index[label]] = 1.0
    return labels


def decode_split(
    source: SplitSource, records: list[Record], classes: list[str], options: PrepareOptions,
    problems: list[str], folder: Path, name: str | None = None,
) -> tuple[SplitWriter, int]:
    """Decode and rasterize ``records`` straight into the memory-mapped arrays of ``folder``.

    Missing or unreadable images are reported and skipped; no split is ever held in RAM whole.
    """
    name = name or source.name
    size = options.image_size
    items = [(str(source.images / r.file_name), r.findings, classes, size, options.mask_source, options.max_pixels,
              options.frames, options.intensity) for r in records]
    writer = SplitWriter(folder, len(records), size, len(classes), with_cue=source.cue is not None)
    clipped_total = 0
    index = {c: i for i, c in enumerate(classes)}
    results = parallel_map(_decode_one, items, options.workers, f"decode {name}", options.progress)
    for record, result in zip(records, results):
        if result[0] == "error":
            problems.append(f"{source.name}: {result[1]}")
            continue
        _, image, packed, has_mask, clipped, notes, header = result
        clipped_total += clipped
        problems.extend(f"{source.name}: {line}" for line in notes)
        cue = source.cue.get(record.file_name, 0) if source.cue is not None else 0
        writer.append(image, record_labels(record, index), packed, has_mask, record.file_name, cue,
                      {**header, **record.meta})
    if records and not len(writer):
        raise UserError(f"none of the {len(records)} images of split '{name}' could be read from "
                        f"{source.images} ({problems[-1] if problems else 'no image'}); is --images/--source right?")
    writer.close()
    return writer, clipped_total


# --- the dataset checked as a whole ------------------------------------------------------------------
def image_identity(images: Path, file_name: str) -> tuple[int, int] | str:
    """What makes two listed images the same file: (device, inode) of the file a name resolves to, so
    a symbolic or hard link under another name is the same image; the normalised path when there is
    no file (decoding names it). Links are followed wherever they lead: the user made them (a source
    folder of links to another disk is common); only names in annotation files are held inside."""
    path = Path(images) / file_name
    try:
        info = path.stat()
    except (OSError, RuntimeError):
        return os.path.normpath(os.path.abspath(path))
    return info.st_dev, info.st_ino


def one_split_per_image(plan: list[tuple[str, SplitSource, list[Record]]], problems: list[str]
                        ) -> list[tuple[str, SplitSource, list[Record]]]:
    """Each image file in one split only (its first place, the others named), whatever the format and
    whatever name or link it is listed under."""
    seen: dict[tuple[int, int] | str, tuple[str, str]] = {}
    kept_plan = []
    for name, src, records in plan:
        kept = []
        for record in records:
            key = image_identity(src.images, record.file_name)
            if key in seen:
                first_split, first_name = seen[key]
                where = "again" if first_split == name else f"also in split '{first_split}'"
                alias = "" if first_name == record.file_name else f" (as {first_name})"
                problems.append(f"{src.name}: {record.file_name}: the same image is listed {where}{alias}; its "
                                "first place is kept")
                continue
            seen[key] = (name, record.file_name)
            kept.append(record)
        kept_plan.append((name, src, kept))
    return kept_plan


def one_split_per_patient(plan: list[tuple[str, SplitSource, list[Record]]], policy: str, problems: list[str]
                          ) -> list[tuple[str, SplitSource, list[Record]]]:
    """No patient in two splits, whatever the official lists say: ``move`` puts every image of such a
    patient into the most held-out of its splits (test, then val) and names the images moved;
    ``refuse`` stops with one line."""
    splits_of: dict[str, set[str]] = {}
    for name, _, records in plan:
        for record in records:
            if record.patient is not None:
                splits_of.setdefault(record.patient, set()).add(name)
    shared = {p: s for p, s in splits_of.items() if len(s) > 1}
    if not shared:
        return plan
    if policy == "refuse":
        patient, splits = sorted(shared.items())[0]
        raise UserError(f"patient {patient!r} has images in the splits {', '.join(sorted(splits))} "
                        f"({len(shared)} patient(s) in all); data.patient_overlap=refuse: fix the split lists, or "
                        "set data.patient_overlap=move")
    home = {p: next(n for n in [*HELD_OUT_ORDER, *sorted(s)] if n in s) for p, s in shared.items()}
    moved: dict[str, list[Record]] = {name: [] for name, _, _ in plan}
    kept_plan = []
    for name, src, records in plan:
        kept = []
        for record in records:
            target = home.get(record.patient) if record.patient is not None else None
            if target is not None and target != name:
                problems.append(f"{src.name}: {record.file_name}: patient {record.patient!r} is also in split "
                                f"'{target}'; moved there (data.patient_overlap=move)")
                moved[target].append(record)
                continue
            kept.append(record)
        kept_plan.append((name, src, kept))
    return [(name, src, records + moved[name]) for name, src, records in kept_plan]


def plan_splits(parsed: dict[str, tuple[SplitSource, list[Record]]], options: PrepareOptions, problems: list[str],
                twins: set[str]) -> list[tuple[str, SplitSource, list[Record]]]:
    """The splits to write: the named ones checked as a whole, then val carved from train by patient.

    ``twins``: splits that show other splits' images on purpose (the benchmark's counterfactual twin):
    left out of the checks and kept as they are.
    """
    plan = [(name, src, records) for name, (src, records) in parsed.items() if name not in twins]
    plan = one_split_per_patient(one_split_per_image(plan, problems), options.patient_overlap, problems)
    carved = []
    for name, src, records in plan:
        if name == "train" and "val" not in parsed and options.val_fraction > 0:
            train_records, val_records = split_by_group(records, options.val_fraction, options.seed)
            carved += [("train", src, train_records), ("val", src, val_records)]
        else:
            carved.append((name, src, records))
    return carved + [(name, src, records) for name, (src, records) in parsed.items() if name in twins]


def check_disjoint(partial: Path, splits: dict[str, SplitSource], twins: set[str]) -> None:
    """The invariant every cache keeps: no image file in two splits (twins aside). A violation is a bug."""
    owner: dict[str, str] = {}
    for name, src in splits.items():
        if name in twins:
            continue
        for file_name in json.loads((partial / name / "files.json").read_text()):
            key = os.path.normpath(os.path.abspath(src.images / file_name))
            if key in owner:
                raise RuntimeError(f"internal error: {file_name} is in the splits {owner[key]} and {name}")
            owner[key] = name


# --- building and committing -------------------------------------------------------------------------
def build_cache(
    fmt: str,
    sources: list[SplitSource],
    out: Path,
    options: PrepareOptions,
    classes: list[str] | None = None,
    source_description: str | None = None,
    extra_manifest: dict[str, Any] | None = None,
    before_build: Callable[[Path], None] | None = None,
    reader_problems: list[str] | None = None,
    identity: Identity | None = None,
) -> PrepareResult:
    """Import ``sources`` into a cache at ``out``, atomically, never replacing anything but a hegl cache.

    ``before_build(partial_dir)`` may write files (e.g. a generated source) into the partial folder
    before the import; ``sources`` may point inside it. ``identity`` is recorded in the manifest; an
    existing cache with the same ``inputs`` but other ``content`` is stale and replaced without ``force``.
    """
    start = time.perf_counter()
    classes = list(classes or format_classes(fmt))
    out = Path(out)
    existing = cache_identity(out)
    stale = identity is not None and existing is not None and existing.inputs == identity.inputs
    check_output_folder(out, [p for src in sources for p in (src.annotations, src.images)], options.force or stale)
    with cache_lock(out):
        remove_stale_partials(out)
        partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
        if (partial / PARTIAL_MARKER).is_file() and not partial.is_symlink():
            shutil.rmtree(partial)  # a killed prepare's, under this pid (we hold the lock: no other runs)
        elif partial.exists() or partial.is_symlink():
            raise UserError(f"{partial} exists and is not a folder prepare left; it was left alone: move it")
        partial.mkdir(parents=True)
        (partial / PARTIAL_MARKER).write_text(str(os.getpid()))
        try:
            if before_build is not None:
                before_build(partial)
            result = _build_into(fmt, sources, partial, out, options, classes, source_description, extra_manifest,
                                 reader_problems, identity)
            (partial / PARTIAL_MARKER).unlink()
            write_inventory(partial)
            commit_cache(partial, out, replace_cache=options.force or stale)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    result.seconds = time.perf_counter() - start
    result.stale = stale and not options.force
    return result


def is_hegl_cache(folder: Path) -> bool:
    """A folder that `hegl prepare` wrote (its manifest names hegl's version)."""
    path = Path(folder) / MANIFEST
    if Path(folder).is_symlink() or not path.is_file():
        return False
    try:
        return "hegl_version" in json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, OSError):
        return False


def check_output_folder(out: Path, inputs: list[Path], replace_cache: bool) -> None:
    """Refuse an output that would overwrite the user's files: an input (or a folder holding or inside
    one), a link, or anything but an empty folder or a hegl cache; a hegl cache needs ``replace_cache``."""
    target = out.resolve()
    for path in inputs:
        src = Path(path).resolve()
        if target == src or target in src.parents or src in target.parents:
            raise UserError(f"--out {out} overlaps the input {path}; choose an output folder outside the dataset")
    if out.is_symlink():
        raise UserError(f"--out {out} is a symbolic link; refusing to write through it")
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not is_hegl_cache(out):
        raise UserError(f"{out} exists and is not a hegl cache (no {MANIFEST} from `hegl prepare`); it was "
                        "left alone, --force included: choose another --out")
    foreign = foreign_files(out)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UserError(f"{out} holds {foreign[0].relative_to(out)}{more}, which hegl did not write; it was left "
                        "alone, --force included: move it out of the cache, or choose another --out")
    if not replace_cache:
        rule = intensity_rule_of(read_manifest(out))
        why = (f" (its images were read under intensity rule {rule}; this hegl reads them under rule {INTENSITY_RULE})"
               if rule != INTENSITY_RULE else "")
        raise UserError(f"{out} already holds a dataset prepared from other inputs or settings{why}; pass --force "
                        "to replace it")


def commit_cache(partial: Path, out: Path, replace_cache: bool) -> None:
    """Move the finished ``partial`` to ``out`` without replacing anything that is not a hegl cache.

    Nothing there (or an empty folder): a no-replace rename, so a folder or file that appears at
    ``out`` in the meantime is refused and kept. A hegl cache (``replace_cache``): moved aside first,
    checked to be the cache it was, then removed once the new one is in place.
    """
    appeared = UserError(f"{out} appeared while prepare ran (someone else made it); it was left alone and "
                         "nothing was written: choose another --out")
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        try:
            out.rmdir()  # an empty folder: nothing to lose, and a rename cannot replace it without a race
        except OSError:
            raise appeared from None
    aside = None
    if out.exists() or out.is_symlink():
        if not (replace_cache and is_hegl_cache(out)):
            raise appeared
        aside = out.with_name(f"{out.name}.old-{os.getpid()}")
        rename_no_replace(out, aside)
        if not is_hegl_cache(aside):  # replaced by something else between the check and the move
            rename_no_replace(aside, out)
            raise appeared
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        rename_no_replace(partial, out)
    except FileExistsError:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        raise appeared from None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def remove_stale_partials(out: Path) -> list[Path]:
    """Delete ``<out>.partial-PID`` / ``<out>.old-PID`` folders whose process is gone (a killed prepare)."""
    removed = []
    for leftover in out.parent.glob(f"{out.name}.*-*"):
        kind, _, pid = leftover.name[len(out.name) + 1 :].partition("-")
        ours = (leftover / PARTIAL_MARKER).is_file() if kind == "partial" else is_hegl_cache(leftover)
        if (kind in ("partial", "old") and pid.isdigit() and leftover.is_dir() and not leftover.is_symlink()
                and ours and not pid_alive(int(pid))):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed


def keep_classes(records: list[Record], classes: list[str]) -> list[Record]:
    """The records with only the findings and labels of ``classes`` (``data.classes``, a subset)."""
    wanted = set(classes)
    for record in records:
        record.findings = [f for f in record.findings if f.label in wanted]
        if record.image_labels is not None:
            record.image_labels &= wanted
        record.unknown &= wanted
    return records


def class_names(classes: list[str], class_map: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """(the cache's classes, original name -> cache name): each dataset name made canonical
    (:mod:`hegl_cli.data.pathologies`), then renamed or merged by ``data.class_map`` (keys may be the
    original or the canonical name; merged classes keep the first one's place)."""
    mapping = {}
    for key, value in class_map.items():
        text = value if isinstance(value, str) else ""
        if (not text.strip() or text.strip() in (".", "..") or any(ch in text for ch in "/\\")
                or not text.isprintable()):
            raise UserError(f"config key 'data.class_map': {key!r} -> {value!r} is not a class name (a name is "
                            "printable text without '/' or '\\', e.g. {Pleural_Thickening: Thickening})")
    targets = {canonical(k): v for k, v in class_map.items()}
    for name in classes:
        mapped = canonical(name)
        mapping[name] = canonical(targets.get(mapped, mapped))
    known = {canonical(c) for c in classes}
    unknown = [k for k in class_map if canonical(k) not in known]
    if unknown:
        raise UserError(f"config key 'data.class_map': {unknown[0]!r} is not a class of this dataset "
                        f"(classes: {', '.join(classes)})")
    return list(dict.fromkeys(mapping.values())), mapping


def rename_classes(records: list[Record], mapping: dict[str, str]) -> list[Record]:
    """Every label, finding and unknown class of ``records`` under its cache name; a label merged from
    several is positive when any is, and unknown only when none is positive."""
    for record in records:
        for finding in record.findings:
            finding.label = mapping.get(finding.label, finding.label)
        if record.image_labels is not None:
            record.image_labels = {mapping.get(label, label) for label in record.image_labels}
        record.unknown = {mapping.get(label, label) for label in record.unknown} - record.labels
    return records


def keep_views(parsed: dict[str, tuple[SplitSource, list[Record]]], views: list[str]
               ) -> tuple[dict[str, tuple[SplitSource, list[Record]]], int]:
    """Only the images of ``data.views`` (by their 'view' metadata, any case); how many were left out."""
    if not views:
        return parsed, 0
    wanted = {v.strip().upper() for v in views}
    for src, records in parsed.values():
        for record in records:  # a DICOM says its view in its header: read it now to choose
            path = src.images / record.file_name
            if "view" not in record.meta and is_dicom(path) and path.is_file():
                record.meta = {**dicom_metadata(path), **record.meta}
    kept = {name: (src, [r for r in records if r.meta.get("view", "").strip().upper() in wanted])
            for name, (src, records) in parsed.items()}
    return kept, sum(len(r) for _, r in parsed.values()) - sum(len(r) for _, r in kept.values())


def _twins(extra_manifest: dict[str, Any] | None) -> set[str]:
    return set(((extra_manifest or {}).get("synthetic") or {}).get("counterfactual_of", {}))


def _build_into(
    fmt: str, sources: list[SplitSource], partial: Path, out: Path, options: PrepareOptions,
    classes: list[str], source_description: str | None, extra_manifest: dict[str, Any] | None,
    reader_problems: list[str] | None = None, identity: Identity | None = None,
) -> PrepareResult:
    read_problems = list(reader_problems or [])
    known = format_classes(fmt) or tuple(classes)
    classes, mapping = class_names(list(classes), options.class_map)
    original_names = {name: [o for o, m in mapping.items() if m == name] for name in classes}
    parsed = {src.name: (src, rename_classes(keep_classes(src.records if src.records is not None
                                                          else parse_records(src.annotations, known, read_problems),
                                                          list(mapping)), mapping))
              for src in sources}
    for src in sources:
        if not src.images.is_dir():
            raise UserError(f"images folder for split '{src.name}' not found: {src.images}")
    for src in sources:
        if not parsed[src.name][1]:
            why = f" ({read_problems[0]})" if read_problems else ""
            raise UserError(f"{src.annotations}: no usable record for split '{src.name}'{why}")
    twins = _twins(extra_manifest)
    parsed, by_view = keep_views(parsed, options.views)
    plan = plan_splits(parsed, options, read_problems, twins)
    if not any(records for _, _, records in plan):
        why = (f"data.views={options.views} left out all {by_view} image(s) (their view is another, or unknown)"
               if by_view else (read_problems[0] if read_problems else "no record"))
        raise UserError(f"no image is left to prepare: {why}; nothing was written")
    if options.strict and read_problems:
        raise UserError(f"--strict: {read_problems[0]} ({len(read_problems)} problem(s) in all)")
    problems = list(read_problems)
    writers: dict[str, SplitWriter] = {}
    clipped = 0
    for name, src, records in plan:
        writers[name], n_clipped = decode_split(src, records, classes, options, problems, partial / name, name)
        clipped += n_clipped
    check_disjoint(partial, {name: src for name, src, _ in plan}, twins)
    if options.strict and len(problems) > len(read_problems):
        raise UserError(f"--strict: {problems[len(read_problems)]} ({len(problems)} problem(s) in all)")
    counts = {name: w.counts(classes) for name, w in writers.items()}
    warnings = [f"class '{c}' has no positive image in train: its query learns nothing"
                for c, n in counts.get("train", ({}, {}))[0].items() if n == 0]
    if by_view:
        warnings.append(f"data.views={options.views} left out {by_view} image(s) of other (or no) views")
    identity = identity or Identity(fingerprint([__version__, fmt, classes, options.shaping(),
                                                 [str(s.annotations) for s in sources]]),
                                    content_fingerprint(sources)[0])
    manifest = {
        "format": fmt,
        "classes": classes,
        "original_names": original_names,
        "image_size": options.image_size,
        "splits": {name: len(w) for name, w in writers.items()},
        "class_counts": {name: c[0] for name, c in counts.items()},
        "mask_counts": {name: c[1] for name, c in counts.items()},
        "source": source_description or {s.name: {"annotations": str(s.annotations.resolve()),
                                                   "images": str(s.images.resolve())} for s in sources},
        "mask_source": options.mask_source,
        "seed": options.seed,
        "val_fraction": options.val_fraction,
        "patient_overlap": options.patient_overlap,
        "prepared_with": {"val_fraction": options.val_fraction, "mask_source": options.mask_source,
                          "patient_overlap": options.patient_overlap, "class_map": dict(options.class_map),
                          "views": list(options.views)},
        "intensity": {"rule": INTENSITY_RULE, "mode": options.intensity, "frames": options.frames},
        "clipped_boxes": clipped,
        "skipped": len(problems),
        "warnings": warnings,
        "hegl_version": __version__,
        "fingerprint": identity.fingerprint,
        "identity": {"inputs": identity.inputs, "content": identity.content},
        **(extra_manifest or {}),
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if problems:
        (partial / SKIPPED).write_text("".join(line + "\n" for line in problems))
    return PrepareResult(out=out, manifest=manifest, problems=problems, clipped_boxes=clipped, warnings=warnings)
