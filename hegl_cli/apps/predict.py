"""`hegl predict`: a trained model on a folder (or list) of new images, as one CSV.

Files are decoded and preprocessed exactly as in training (:func:`preprocess_file`) by loader
workers, in batches; an unreadable file is listed and skipped. The CSV has one row per readable
image: the file, each class's probability and its decision at the run's stored thresholds (chosen
on validation during training).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from hegl_cli.config import DataConfig
from hegl_cli.data.images import collect_image_files, preprocess_file
from hegl_cli.engine.checkpoint import LoadedRun, load_run
from hegl_cli.errors import UserError, first_line
from hegl_cli.fs.outputs import OutputFolder
from hegl_cli.models.inference import predict_images


class ImageFiles(Dataset):
    """Item ``i``: ``{"index", "image" (1, S, S) float in [0, 1]}`` or ``{"index", "error"}``."""

    def __init__(self, files: list[Path], size: int, data: DataConfig | None = None):
        self.files, self.size, self.data = files, size, data or DataConfig()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            pixels, _ = preprocess_file(self.files[index], self.size, self.data.max_pixels, self.data.frames,
                                        self.data.intensity)
        except UserError as exc:
            return {"index": index, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one bad file must not end a batch of thousands
            return {"index": index, "error": f"cannot read image {self.files[index]}: {type(exc).__name__}: "
                                             f"{first_line(exc)}"}
        return {"index": index, "image": torch.from_numpy(pixels.astype(np.float32) / 255.0).unsqueeze(0)}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable images of a batch; keep the failures apart."""
    good = [it for it in items if "image" in it]
    return {"index": [it["index"] for it in good],
            "image": torch.stack([it["image"] for it in good]) if good else None,
            "errors": [it["error"] for it in items if "error" in it]}


@dataclass
class PredictResult:
    out: Path
    rows: int
    failed: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def predict_batches(loaded: LoadedRun, files: list[Path], batch_size: int = 32, workers: int = 0,
                    progress: bool = True) -> Iterator[tuple[list[int], np.ndarray, list[str]]]:
    """Yield (file indices, probabilities (B, C), error lines) batch by batch."""
    dataset = ImageFiles(files, loaded.image_size, loaded.cfg.data)  # read as the run's training images were
    pin = loaded.device.type == "cuda"
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate, pin_memory=pin)
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, leave=False)
    try:
        for batch in loader:
            probs = np.zeros((0, len(loaded.classes)), np.float32)
            if batch["image"] is not None:
                p, _ = predict_images(loaded.model, batch["image"], loaded.device, loaded.cfg.train.amp)
                probs = p.numpy()
            bar.update(len(batch["index"]) + len(batch["errors"]))
            yield batch["index"], probs, batch["errors"]
    finally:
        bar.close()


def is_predictions_csv(path: Path) -> bool:
    """A CSV that `hegl predict` wrote (its header starts with ``file`` and has ``p_``/``positive_`` columns)."""
    try:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return bool(header) and header[0] == "file" and any(h.startswith("p_") for h in header)


def predict(inputs: list[Path], run: Path, out: Path, which: str = "best", device: str = "auto",
            batch_size: int = 32, workers: int = 0, force: bool = False, progress: bool = True,
            eval_layers: list | None = None, log: Callable[[str], None] = lambda *_: None) -> PredictResult:
    """Predict every readable image in ``inputs`` and write ``out`` (CSV) atomically; nothing is
    written when no image could be read."""
    folder = OutputFolder(out.parent, force=force, recognise=is_predictions_csv, kind="predictions CSV")
    if out.name in ("", ".", ".."):
        raise UserError(f"--out {out} names no file")
    folder.claim([out.name])
    files, failed = collect_image_files(inputs, recursive=True)
    if not files:
        raise UserError(f"no readable image among the inputs ({failed[0] if failed else 'nothing given'})")
    with load_run(run, which, device=device, eval_layers=eval_layers, command="hegl predict") as loaded:
        classes, thresholds = loaded.classes, loaded.thresholds
        warning = loaded.reading_warning()
        rows: list[list[Any]] = []
        for indices, probs, errors in predict_batches(loaded, files, batch_size, workers, progress):
            for line in errors:
                failed.append(line)
                log(line)
            for i, p in zip(indices, probs):
                rows.append([str(files[i]), *[f"{v:.6f}" for v in p], *[int(v >= t) for v, t in zip(p, thresholds)]])
    if not rows:
        raise UserError(f"none of the {len(files)} image(s) could be read ({failed[0]}); {out} was not written")

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", *[f"p_{c}" for c in classes], *[f"positive_{c}" for c in classes]])
            writer.writerows(rows)

    folder.write(out.name, write)
    return PredictResult(out, len(rows), failed, classes, [warning] if warning else [])
