"""`hegl predict`: a trained model on a folder (or list) of new images, as one CSV.

Files are decoded and preprocessed exactly as in training (:func:`preprocess_file`) by loader
workers, in batches; an unreadable file is listed and skipped. The CSV has one row per readable
image: the file, each class's probability and its decision at the run's stored thresholds (chosen
on validation during training).

The model is a run folder (PyTorch), or a file `hegl export` wrote (``--model FILE.onnx``), run by
onnxruntime alone with the preprocessing its metadata states; the CSV is the same. ``--calibration``
applies a site's calibration (`hegl evaluate --recalibrate`): its probabilities and thresholds.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from hegl_cli.apps.recalibrate import read_calibration
from hegl_cli.config import DataConfig, config_from_dict
from hegl_cli.data.images import (
    CONTAINERS,
    INTENSITY_RULE,
    collect_image_files,
    container_of,
    preprocess_file,
    trained_reading_shift,
)
from hegl_cli.engine.checkpoint import LoadedRun, load_run
from hegl_cli.engine.run_folder import RunFolder
from hegl_cli.errors import UserError, first_line
from hegl_cli.evaluation.calibration import Calibration
from hegl_cli.fs.outputs import OutputFolder, sha256_of
from hegl_cli.models.inference import predict_images, predict_logits
from hegl_cli.models.onnx_runtime import OnnxModel


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


def image_batches(files: list[Path], size: int, data: DataConfig, batch_size: int = 32, workers: int = 0,
                  pin: bool = False, progress: bool = True) -> Iterator[dict[str, Any]]:
    """Yield :func:`collate`'s batches of ``files`` read as training read its images (``image``: (B, 1, S, S)
    in [0, 1], or None when no file of the batch could be read), with a progress bar."""
    loader = DataLoader(ImageFiles(files, size, data), batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        pin_memory=pin)
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, leave=False)
    try:
        for batch in loader:
            bar.update(len(batch["index"]) + len(batch["errors"]))
            yield batch
    finally:
        bar.close()


def predict_batches(loaded: LoadedRun, files: list[Path], batch_size: int = 32, workers: int = 0,
                    progress: bool = True, calibration: Calibration | None = None
                    ) -> Iterator[tuple[list[int], np.ndarray, list[str]]]:
    """Yield (file indices, probabilities (B, C), error lines) batch by batch (``calibration``: its
    probabilities, from the model's logits)."""
    pin = loaded.device.type == "cuda"
    for batch in image_batches(files, loaded.image_size, loaded.cfg.data, batch_size, workers, pin, progress):
        probs = np.zeros((0, len(loaded.classes)), np.float32)
        if batch["image"] is not None and calibration is None:
            probs = predict_images(loaded.model, batch["image"], loaded.device, loaded.in_force)[0].numpy()
        elif batch["image"] is not None:
            logits = predict_logits(loaded.model, batch["image"], loaded.device, loaded.in_force).numpy()
            probs = calibration.probabilities(logits)
        yield batch["index"], probs, batch["errors"]


def onnx_preprocessing(model: OnnxModel) -> DataConfig:
    """The reading an exported model's metadata states (frames, intensity, pixel limit), checked."""
    contract = model.description["preprocessing"]
    try:
        keys = {k: contract[k] for k in ("frames", "intensity", "max_pixels")}
        return config_from_dict({"data": keys}, source=f"{model.path} metadata").data
    except (KeyError, TypeError, UserError) as exc:
        raise UserError(f"{model.path}: metadata 'preprocessing' is damaged ({first_line(exc)}); export the run "
                        "again") from None


def onnx_batches(model: OnnxModel, files: list[Path], batch_size: int = 32, workers: int = 0, progress: bool = True,
                 calibration: Calibration | None = None) -> Iterator[tuple[list[int], np.ndarray, list[str]]]:
    """Like :func:`predict_batches`, by onnxruntime: the graph's probabilities, or ``calibration``'s from its logits."""
    data = onnx_preprocessing(model)
    for batch in image_batches(files, model.image_size, data, batch_size, workers, False, progress):
        probs = np.zeros((0, len(model.classes)), np.float32)
        if batch["image"] is not None:
            out = model.run(batch["image"].numpy())
            probs = out["probabilities"] if calibration is None else calibration.probabilities(out["logits"])
        yield batch["index"], probs, batch["errors"]


def onnx_warning(model: OnnxModel, containers: Iterable[str] = CONTAINERS) -> str | None:
    """A line when the exported model trained on images that this hegl reads otherwise (of ``containers``,
    the ones it is shown now)."""
    shift = trained_reading_shift(int(model.description.get("trained_intensity_rule", INTENSITY_RULE)),
                                  model.description.get("trained_intensity_containers"), containers)
    return None if shift is None else f"{model.path} was trained on images read under another intensity rule: {shift}, so its predictions on them may shift"


def is_predictions_csv(path: Path) -> bool:
    """A CSV that `hegl predict` wrote (its header starts with ``file`` and has ``p_``/``positive_`` columns)."""
    try:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return bool(header) and header[0] == "file" and any(h.startswith("p_") for h in header)


def collect_rows(batches: Iterator[tuple[list[int], np.ndarray, list[str]]], files: list[Path], thresholds: np.ndarray,
                 failed: list[str], log: Callable[[str], None]) -> list[list[Any]]:
    """CSV rows (file, probabilities, decisions at ``thresholds``) of every readable file; errors to ``failed``."""
    rows: list[list[Any]] = []
    for indices, probs, errors in batches:
        for line in errors:
            failed.append(line)
            log(line)
        for i, p in zip(indices, probs):
            rows.append([str(files[i]), *[f"{v:.6f}" for v in p], *[int(v >= t) for v, t in zip(p, thresholds)]])
    return rows


def predict(inputs: list[Path], run: Path | None, out: Path, checkpoint: str = "best", device: str = "auto",
            batch_size: int = 32, workers: int = 0, force: bool = False, progress: bool = True,
            eval_layers: list | None = None, log: Callable[[str], None] = lambda *_: None,
            model: Path | None = None, calibration: Path | None = None) -> PredictResult:
    """Predict every readable image in ``inputs`` with the run (or the exported ``model``) and write ``out``
    (CSV) atomically; nothing is written when no image could be read."""
    folder = OutputFolder(out.parent, force=force, recognise=is_predictions_csv, kind="predictions CSV")
    if out.name in ("", ".", ".."):
        raise UserError(f"--out {out} names no file")
    folder.claim([out.name])
    if model is not None and eval_layers:
        raise UserError("--config/--set apply to a run folder; an exported --model reads images as its metadata says")
    exported = OnnxModel(model) if model is not None else None
    files, failed = collect_image_files(inputs, recursive=True)
    if not files:
        raise UserError(f"no readable image among the inputs ({failed[0] if failed else 'nothing given'})")
    read_as = {container_of(path) for path in files}
    if exported is not None:
        classes, warning = exported.classes, onnx_warning(exported, read_as)
        cal = onnx_calibration(exported, calibration)
        thresholds = exported.thresholds if cal is None else cal.thresholds
        rows = collect_rows(onnx_batches(exported, files, batch_size, workers, progress, cal), files, thresholds,
                            failed, log)
    else:
        with load_run(run, checkpoint, device=device, eval_layers=eval_layers, command="hegl predict") as loaded:
            classes, warning = loaded.classes, loaded.reading_warning(read_as)
            cal = None if calibration is None else read_calibration(
                calibration, loaded.classes, loaded.thresholds, sha256_of(RunFolder(run).weights(checkpoint)))
            thresholds = loaded.thresholds if cal is None else cal.thresholds
            rows = collect_rows(predict_batches(loaded, files, batch_size, workers, progress, cal), files, thresholds,
                                failed, log)
    if not rows:
        raise UserError(f"none of the {len(files)} image(s) could be read ({failed[0]}); {out} was not written")

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", *[f"p_{c}" for c in classes], *[f"positive_{c}" for c in classes]])
            writer.writerows(rows)

    folder.write(out.name, write)
    return PredictResult(out, len(rows), failed, classes, [warning] if warning else [])


def onnx_calibration(model: OnnxModel, calibration: Path | None) -> Calibration | None:
    """``--calibration`` over an exported model that carries none (one that does is refused: it would be
    applied twice)."""
    if calibration is None:
        return None
    if model.calibrated:
        raise UserError(f"{model.path} already applies a site calibration "
                        f"({model.description['calibration'].get('file')}); export the run without --calibration "
                        "to apply another")
    run_thresholds = np.asarray(model.description.get("run_thresholds", model.thresholds), np.float64)
    return read_calibration(calibration, model.classes, run_thresholds, model.description.get("weights_sha256"))
