"""Records + images -> a validated, memory-mappable cache (what `hegl prepare` does after reading a format).

The cache is written to ``<out>.partial-<pid>`` and renamed when complete, so an interrupted
prepare never leaves a folder that looks done. Re-running with the same inputs is a no-op.
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
from hegl_cli.data.cache import MANIFEST, SplitWriter, commit_folder, pack_masks
from hegl_cli.data.formats import format_classes
from hegl_cli.data.formats.chestxdet import parse_records
from hegl_cli.data.images import preprocess_file
from hegl_cli.data.masks import rasterize_findings
from hegl_cli.data.parallel import parallel_map
from hegl_cli.data.records import Finding, Record, SplitSource
from hegl_cli.data.splits import split_by_group
from hegl_cli.errors import UserError, first_line
from hegl_cli.fs.locks import FolderLock, pid_alive


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

    @classmethod
    def from_config(cls, data: DataConfig, **run: Any) -> PrepareOptions:
        """The options of the ``data`` config section, plus how to run (strict, force, workers, progress)."""
        return cls(image_size=data.image_size, seed=data.seed, val_fraction=data.val_fraction,
                   mask_source=data.mask_source, max_pixels=data.max_pixels, **run)


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


def fingerprint(parts: Iterable[Any]) -> str:
    """A stable hash of everything that determines the cache's content."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _image_stamp(folder: Path) -> list[tuple[str, int, int]]:
    if not folder.is_dir():
        return []
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())


def source_fingerprint(fmt: str, sources: list[SplitSource], options: PrepareOptions, classes: list[str]) -> str:
    parts: list[Any] = [__version__, fmt, classes, options.image_size, options.seed, options.val_fraction,
                        options.mask_source]
    for src in sources:
        parts += [src.name, file_digest(src.annotations) if src.annotations.is_file() else None,
                  _image_stamp(src.images), src.cue]
    return fingerprint(parts)


def existing_fingerprint(out: Path) -> str | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("fingerprint")
    except json.JSONDecodeError:
        return None


def _decode_one(item: tuple[str, list[Finding], list[str], int, str, int]) -> tuple[Any, ...]:
    """Worker: one image -> (uint8 image, packed masks, has_mask, clipped boxes) or an error line."""
    path, findings, classes, size, mask_source, max_pixels = item
    try:
        image, geometry = preprocess_file(path, size, max_pixels)
        masks, has_mask, clipped = rasterize_findings(findings, classes, geometry, size, mask_source)
    except UserError as exc:
        return ("error", str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad file must not end a prepare of thousands
        return ("error", f"cannot read image {path}: {type(exc).__name__}: {first_line(exc, 160)}")
    return ("ok", image, pack_masks(masks), has_mask, clipped)


def decode_split(
    source: SplitSource, records: list[Record], classes: list[str], options: PrepareOptions,
    problems: list[str], folder: Path, name: str | None = None,
) -> tuple[SplitWriter, int]:
    """Decode and rasterize ``records`` straight into the memory-mapped arrays of ``folder``.

    Missing or unreadable images are reported and skipped; no split is ever held in RAM whole.
    """
    name = name or source.name
    size = options.image_size
    items = [(str(source.images / r.file_name), r.findings, classes, size, options.mask_source, options.max_pixels)
             for r in records]
    writer = SplitWriter(folder, len(records), size, len(classes), with_cue=source.cue is not None)
    clipped_total = 0
    index = {c: i for i, c in enumerate(classes)}
    results = parallel_map(_decode_one, items, options.workers, f"decode {name}", options.progress)
    for record, result in zip(records, results):
        if result[0] == "error":
            problems.append(f"{source.name}: {result[1]}")
            continue
        _, image, packed, has_mask, clipped = result
        clipped_total += clipped
        labels = np.zeros(len(classes), dtype=np.float32)
        for label in record.labels:
            labels[index[label]] = 1.0
        cue = source.cue.get(record.file_name, 0) if source.cue is not None else 0
        writer.append(image, labels, packed, has_mask, record.file_name, cue)
    if records and not len(writer):
        raise UserError(f"none of the {len(records)} images of split '{name}' could be read from "
                        f"{source.images} ({problems[-1] if problems else 'no image'}); is --images/--source right?")
    writer.close()
    return writer, clipped_total


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
) -> PrepareResult:
    """Import ``sources`` into a cache at ``out`` (atomic; no-op when already up to date).

    ``before_build(partial_dir)`` may write files (e.g. a generated source) into the partial folder
    before the import; ``sources`` may point inside it.
    """
    start = time.perf_counter()
    classes = list(classes or format_classes(fmt))
    out = Path(out)
    check_output_folder(out, [p for src in sources for p in (src.annotations, src.images)], options.force)
    with FolderLock(lock_path(out), f"prepare output {out}"):
        remove_stale_partials(out)
        partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            if before_build is not None:
                before_build(partial)
            result = _build_into(fmt, sources, partial, out, options, classes, source_description, extra_manifest,
                                 reader_problems)
            commit_folder(partial, out, force=True)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    lock_path(out).unlink(missing_ok=True)
    result.seconds = time.perf_counter() - start
    return result


def is_hegl_cache(folder: Path) -> bool:
    """A folder that `hegl prepare` wrote (its manifest names hegl's version)."""
    path = Path(folder) / MANIFEST
    if Path(folder).is_symlink() or not path.is_file():
        return False
    try:
        return "hegl_version" in json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return False


def check_output_folder(out: Path, inputs: list[Path], force: bool) -> None:
    """Refuse an output that would overwrite the user's files: an input (or a folder holding or inside
    one), a link, or anything but an empty folder or a hegl cache; a hegl cache needs ``force``."""
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
        raise UserError(f"{out} exists and is not a hegl cache (no manifest.json from `hegl prepare`); it was "
                        "left alone, --force included: choose another --out")
    if not force:
        raise UserError(f"{out} already holds a dataset prepared from other inputs or settings; pass --force "
                        "to replace it")


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def remove_stale_partials(out: Path) -> list[Path]:
    """Delete ``<out>.partial-PID`` / ``<out>.old-PID`` folders whose process is gone (a killed prepare)."""
    removed = []
    for leftover in out.parent.glob(f"{out.name}.*-*"):
        kind, _, pid = leftover.name[len(out.name) + 1 :].partition("-")
        if kind in ("partial", "old") and pid.isdigit() and leftover.is_dir() and not pid_alive(int(pid)):
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
    return records


def _build_into(
    fmt: str, sources: list[SplitSource], partial: Path, out: Path, options: PrepareOptions,
    classes: list[str], source_description: str | None, extra_manifest: dict[str, Any] | None,
    reader_problems: list[str] | None = None,
) -> PrepareResult:
    read_problems = list(reader_problems or [])
    known = format_classes(fmt) or tuple(classes)
    parsed = {src.name: keep_classes(src.records if src.records is not None
                                     else parse_records(src.annotations, known, read_problems), classes)
              for src in sources}
    for src in sources:
        if not src.images.is_dir():
            raise UserError(f"images folder for split '{src.name}' not found: {src.images}")
    for src in sources:
        if not parsed[src.name]:
            why = f" ({read_problems[0]})" if read_problems else ""
            raise UserError(f"{src.annotations}: no usable record for split '{src.name}'{why}")
    if options.strict and read_problems:
        raise UserError(f"--strict: {read_problems[0]} ({len(read_problems)} problem(s) in all)")
    problems = list(read_problems)
    plan: list[tuple[str, SplitSource, list[Record]]] = []
    for src in sources:
        records = parsed[src.name]
        if src.name == "train" and "val" not in parsed and options.val_fraction > 0:
            train_records, val_records = split_by_group(records, options.val_fraction, options.seed)
            plan += [("train", src, train_records), ("val", src, val_records)]
        else:
            plan.append((src.name, src, records))
    writers: dict[str, SplitWriter] = {}
    clipped = 0
    for name, src, records in plan:
        writers[name], n_clipped = decode_split(src, records, classes, options, problems, partial / name, name)
        clipped += n_clipped
    if options.strict and len(problems) > len(read_problems):
        raise UserError(f"--strict: {problems[len(read_problems)]} ({len(problems)} problem(s) in all)")
    counts = {name: w.counts(classes) for name, w in writers.items()}
    warnings = [f"class '{c}' has no positive image in train: its query learns nothing"
                for c, n in counts.get("train", ({}, {}))[0].items() if n == 0]
    manifest = {
        "format": fmt,
        "classes": classes,
        "image_size": options.image_size,
        "splits": {name: len(w) for name, w in writers.items()},
        "class_counts": {name: c[0] for name, c in counts.items()},
        "mask_counts": {name: c[1] for name, c in counts.items()},
        "source": source_description or {s.name: {"annotations": str(s.annotations.resolve()),
                                                   "images": str(s.images.resolve())} for s in sources},
        "mask_source": options.mask_source,
        "seed": options.seed,
        "val_fraction": options.val_fraction,
        "clipped_boxes": clipped,
        "skipped": len(problems),
        "warnings": warnings,
        "hegl_version": __version__,
        "fingerprint": source_fingerprint(fmt, sources, options, classes) if extra_manifest is None
        or "fingerprint" not in extra_manifest else extra_manifest["fingerprint"],
        **{k: v for k, v in (extra_manifest or {}).items() if k != "fingerprint"},
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if problems:
        (partial / "skipped.txt").write_text("".join(line + "\n" for line in problems))
    return PrepareResult(out=out, manifest=manifest, problems=problems, clipped_boxes=clipped, warnings=warnings)


def up_to_date(out: Path, expected: str, force: bool) -> PrepareResult | None:
    """The existing cache's result when it already matches ``expected`` (and no --force)."""
    if not force and existing_fingerprint(out) == expected:
        manifest = json.loads((out / MANIFEST).read_text())
        return PrepareResult(out=out, manifest=manifest, skipped=True)
    return None


