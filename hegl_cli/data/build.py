"""Records + images -> a validated, memory-mappable cache (what `hegl prepare` does after reading a format).

The cache is written to ``<out>.partial-<pid>`` and moved into place when complete, without ever
replacing whatever appeared at ``<out>`` meanwhile, so an interrupted prepare never leaves a folder
that looks done and a folder a user made is never lost. The cache's identity is two fingerprints:
what it was made from and how (``inputs``: format, paths, classes, options) and the content of those
inputs (``content``: the annotation files' bytes and every image's size and modification time, and
its bytes when the images are few). Re-running with the same identity does nothing; a cache whose
inputs are the same but whose content changed (an image replaced), or whose images this hegl reads
otherwise (a later intensity rule changed their container), is stale and is rebuilt; other inputs
need ``--force``.

Whatever the format, the builder checks the dataset before it decodes an image: each image is in one
split only, no patient is in two splits (``data.patient_overlap``: move its images to the held-out
split, or refuse), and every record it leaves out is named in ``skipped.txt``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hegl_cli.data.cache import PARTIAL_MARKER, SKIPPED, SplitWriter, cache_lock, write_inventory
from hegl_cli.data.decode import decode_split
from hegl_cli.data.identity import Identity, cache_identity
from hegl_cli.data.manifest import (
    MANIFEST,
    cache_manifest,
    outdated_reading,
    read_manifest,
    twin_splits,
)
from hegl_cli.data.options import PrepareOptions, PrepareResult
from hegl_cli.data.publish import check_output_folder, commit_cache, remove_stale_partials
from hegl_cli.data.record_filters import class_names, keep_classes, keep_views, rename_classes
from hegl_cli.data.records import SplitSource
from hegl_cli.data.split_plan import check_disjoint, plan_splits
from hegl_cli.errors import UserError
from hegl_cli.fs.atomic import NO_ROOM, crash_point, no_room


def up_to_date(out: Path, identity: Identity, force: bool) -> PrepareResult | None:
    """The existing cache's result when it was made from exactly these inputs, reads as this hegl would
    read them (:func:`outdated_reading`), and there is no --force."""
    if force or cache_identity(out) != identity:
        return None
    manifest = read_manifest(out)
    if outdated_reading(manifest, out):
        return None
    return PrepareResult(out=out, manifest=manifest, skipped=True)


def stale_reason(out: Path, existing: Identity | None, identity: Identity) -> str | None:
    """Why a cache of the same inputs as ``identity`` is rebuilt without --force (None: it is not one)."""
    if existing is None or existing.inputs != identity.inputs:
        return None
    shift = outdated_reading(read_manifest(out), out)
    if shift:
        return f"its images were read under another intensity rule ({shift}); rebuilt"
    return "its source changed since it was prepared (an annotation file or an image); rebuilt"


# --- the dataset checked as a whole ------------------------------------------------------------------


# --- building and committing -------------------------------------------------------------------------
def build_cache(
    fmt: str,
    sources: list[SplitSource],
    out: Path,
    options: PrepareOptions,
    classes: list[str],
    identity: Identity,
    source_description: str | dict[str, Any] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    before_build: Callable[[Path], None] | None = None,
    reader_problems: list[str] | None = None,
    protected: tuple[Path, ...] = (),
    original_names: dict[str, list[str]] | None = None,
    reader_warnings: list[str] | None = None,
) -> PrepareResult:
    """Import ``sources`` into a cache at ``out``, atomically, never replacing anything but a hegl cache.

    ``before_build(partial_dir)`` may write files (e.g. a generated source) into the partial folder
    before the import; ``sources`` may point inside it. ``identity`` is recorded in the manifest; an
    existing cache with the same ``inputs`` but other ``content`` is stale and replaced without ``force``.
    ``protected``: folders the cache must stay out of besides the sources' own (the dataset's root).
    ``original_names``: a class of ``classes`` -> the names the dataset spells it with, where the reader
    knows them to differ from the class (default: the class as the reader names it).
    """
    start = time.perf_counter()
    out = Path(out)
    reason = stale_reason(out, cache_identity(out), identity)
    stale = reason is not None
    inputs = [*protected, *(p for src in sources for p in (src.annotations, src.images))]
    check_output_folder(out, inputs, options.force or stale)
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
            result = _build_into(fmt, sources, partial, out, options, list(classes), source_description,
                                 extra_manifest, list(reader_problems or []), identity, original_names or {},
                                 list(reader_warnings or []))
            (partial / PARTIAL_MARKER).unlink()
            crash_point("prepare:marker-removed")
            write_inventory(partial)
            commit_cache(partial, out, replace_cache=options.force or stale)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            if exc.errno in NO_ROOM:
                raise no_room(Path(exc.filename or partial), exc, f"no cache was published at {out}") from None
            raise
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    result.seconds = time.perf_counter() - start
    result.stale = stale and not options.force
    result.stale_reason = reason if result.stale else None
    return result


def _build_into(
    fmt: str, sources: list[SplitSource], partial: Path, out: Path, options: PrepareOptions,
    classes: list[str], source_description: str | dict[str, Any] | None, extra_manifest: dict[str, Any] | None,
    reader_problems: list[str], identity: Identity, spelled: dict[str, list[str]], reader_warnings: list[str],
) -> PrepareResult:
    read_problems = list(reader_problems)
    classes, mapping = class_names(list(classes), options.class_map)
    original_names = {name: list(dict.fromkeys(o for c, m in mapping.items() if m == name for o in spelled.get(c, [c])))
                      for name in classes}
    parsed = {src.name: (src, rename_classes(keep_classes(list(src.records or []), list(mapping)), mapping))
              for src in sources}
    for src in sources:
        if not src.images.is_dir():
            raise UserError(f"images folder for split '{src.name}' not found: {src.images}")
    for src in sources:
        if not parsed[src.name][1]:
            why = f" ({read_problems[0]})" if read_problems else ""
            raise UserError(f"{src.annotations}: no usable record for split '{src.name}'{why}")
    twins = set(twin_splits(extra_manifest))
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
    containers: set[str] = set()
    for name, src, records in plan:
        writers[name], n_clipped, read = decode_split(src, records, classes, options, problems, partial / name, name)
        clipped += n_clipped
        containers |= read
    check_disjoint(partial, {name: src for name, src, _ in plan}, twins)
    if options.strict and len(problems) > len(read_problems):
        raise UserError(f"--strict: {problems[len(read_problems)]} ({len(problems)} problem(s) in all)")
    counts = {name: w.counts(classes) for name, w in writers.items()}
    warnings = reader_warnings + [f"class '{c}' has no positive image in train: its query learns nothing"
                                  for c, n in counts.get("train", ({}, {}))[0].items() if n == 0]
    if by_view:
        warnings.append(f"data.views={options.views} left out {by_view} image(s) of other (or no) views")
    source = source_description or {s.name: {"annotations": str(s.annotations.resolve()),
                                              "images": str(s.images.resolve())} for s in sources}
    manifest = cache_manifest(fmt=fmt, classes=classes, original_names=original_names, options=options,
                              split_sizes={name: len(w) for name, w in writers.items()}, counts=counts,
                              source=source, clipped=clipped, skipped=len(problems), warnings=warnings,
                              identity=identity, extra=extra_manifest, containers=containers)
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if problems:
        (partial / SKIPPED).write_text("".join(line + "\n" for line in problems))
    return PrepareResult(out=out, manifest=manifest, problems=problems, clipped_boxes=clipped, warnings=warnings)
