"""Decoding a split: each record's image and masks, in worker processes, straight into the cache's arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hegl_cli.data.cache import SplitWriter, pack_masks
from hegl_cli.data.dicom import dicom_metadata
from hegl_cli.data.images import container_of, preprocess_file
from hegl_cli.data.masks import rasterize_findings
from hegl_cli.data.options import PrepareOptions
from hegl_cli.data.parallel import parallel_map
from hegl_cli.data.records import Finding, Record, SplitSource
from hegl_cli.errors import UserError, first_line


def decode_one(item: tuple[str, list[Finding], list[str], int, str, int, str, str]) -> tuple[Any, ...]:
    """Worker: one image -> (uint8 image, packed masks, has_mask, clipped boxes, notes, DICOM header,
    container) or an error line."""
    path, findings, classes, size, mask_source, max_pixels, frames, intensity = item
    notes: list[str] = []
    try:
        image, geometry = preprocess_file(path, size, max_pixels, frames, intensity)
        masks, has_mask, clipped = rasterize_findings(findings, classes, geometry, size, mask_source, notes)
        container = container_of(Path(path))
        header = dicom_metadata(Path(path)) if container == "dicom" else {}
    except UserError as exc:
        return ("error", str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad file must not end a prepare of thousands
        return ("error", f"cannot read image {path}: {type(exc).__name__}: {first_line(exc, 160)}")
    return ("ok", image, pack_masks(masks), has_mask, clipped, [f"{path}: {n}" for n in notes], header, container)



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
) -> tuple[SplitWriter, int, set[str]]:
    """Decode and rasterize ``records`` straight into the memory-mapped arrays of ``folder``.

    Missing or unreadable images are reported and skipped; no split is ever held in RAM whole.
    Returns the writer, the number of clipped boxes and the containers read (``dicom``, ``pillow``).
    """
    name = name or source.name
    size = options.image_size
    items = [(str(source.images / r.file_name), r.findings, classes, size, options.mask_source, options.max_pixels,
              options.frames, options.intensity) for r in records]
    writer = SplitWriter(folder, len(records), size, len(classes), with_cue=source.cue is not None)
    clipped_total = 0
    containers: set[str] = set()
    index = {c: i for i, c in enumerate(classes)}
    results = parallel_map(decode_one, items, options.workers, f"decode {name}", options.progress)
    for record, result in zip(records, results):
        if result[0] == "error":
            problems.append(f"{source.name}: {result[1]}")
            continue
        _, image, packed, has_mask, clipped, notes, header, container = result
        containers.add(container)
        clipped_total += clipped
        problems.extend(f"{source.name}: {line}" for line in notes)
        cue = source.cue.get(record.file_name, 0) if source.cue is not None else 0
        writer.append(image, record_labels(record, index), packed, has_mask, record.file_name, cue,
                      {**header, **record.meta})
    if records and not len(writer):
        raise UserError(f"none of the {len(records)} images of split '{name}' could be read from "
                        f"{source.images} ({problems[-1] if problems else 'no image'}); is --images/--source right?")
    writer.close()
    return writer, clipped_total, containers
