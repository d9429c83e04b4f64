"""`hegl export`: a trained run as one ONNX file that runs without hegl's model code.

The graph (:mod:`hegl_cli.models.onnx_export`) takes a preprocessed batch ``images`` (N, 1, S, S),
float32 in [0, 1], with a dynamic batch size, and returns ``logits`` (N, C), ``attention`` (N, C, h, w)
(the last decoder layer's cross-attention of each class query, each map summing to 1) and
``probabilities`` (N, C) (the sigmoid, through a site's calibration when ``--calibration`` is given).
Its metadata holds the description (:func:`describe`): classes, thresholds, the preprocessing
contract, the calibration, how it was exported and the parity measured.

Before anything is written, the exported graph runs in onnxruntime on real images of the run's
cache (its test split, else val) at two batch sizes, next to the PyTorch model: the maximum
absolute difference of the logits and of the maps must stay within ``--tolerance``. Written: the
model, ``<stem>.preprocessing.json`` (the description) and ``<stem>.card.md`` (the model card, with a
section on the export) beside it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hegl_cli import __version__
from hegl_cli.apps.card import md_table, model_card
from hegl_cli.apps.recalibrate import read_calibration
from hegl_cli.data.cache import CachedSplit, cache_lock
from hegl_cli.engine.checkpoint import LoadedRun, load_run, source_commit
from hegl_cli.engine.run_folder import RunFolder
from hegl_cli.errors import UserError
from hegl_cli.evaluation.calibration import Calibration
from hegl_cli.fs.atomic import json_text
from hegl_cli.fs.outputs import OutputFolder, sha256_of
from hegl_cli.models.onnx_export import (
    ExportedForward,
    export_onnx,
    identity_calibration,
    preprocessing_contract,
    with_metadata,
)
from hegl_cli.models.onnx_runtime import FORMAT

FORMATS = ("onnx",)
DEFAULT_TOLERANCE = 1e-4
PARITY_IMAGES = 8


@dataclass
class ExportResult:
    out: Path
    description_file: Path
    card: Path
    parity: dict[str, Any]
    exporter: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def sidecars(model_file: Path) -> tuple[Path, Path]:
    """(``<stem>.preprocessing.json``, ``<stem>.card.md``) beside ``model_file``."""
    stem = model_file.name[: -len(model_file.suffix)] if model_file.suffix else model_file.name
    return model_file.with_name(f"{stem}.preprocessing.json"), model_file.with_name(f"{stem}.card.md")


def parity_images(loaded: LoadedRun, count: int = PARITY_IMAGES) -> tuple[np.ndarray, str]:
    """Up to ``count`` images (K, 1, S, S) float32 in [0, 1] of the run's cache: its test split, else val."""
    home = loaded.home_data
    try:
        lock = cache_lock(home, shared=True).acquire()
    except UserError as exc:
        raise UserError(f"parity is checked on real images of the run's cache, and {home} is not one here ({exc}); "
                        "prepare it again or export where it is") from None
    try:
        for split in ("test", "val"):
            try:
                cached = CachedSplit(home, split)
            except UserError:
                continue
            if len(cached) and cached.image_size == loaded.image_size:
                rows = range(min(count, len(cached)))
                return np.stack([cached.image(i) for i in rows])[:, None].astype(np.float32), f"{home} ({split})"
    finally:
        lock.release()
    raise UserError(f"{home}: no test or val image at {loaded.image_size} px to check the exported model against")


def onnx_outputs(onnx_bytes: bytes, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run the exported graph in onnxruntime (CPU): {logits, attention, probabilities}."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: images})))


def check_parity(forward: ExportedForward, onnx_bytes: bytes, images: np.ndarray, tolerance: float, source: str
                 ) -> dict[str, Any]:
    """Max |ONNX - PyTorch| of logits, maps and probabilities over ``images`` (K, 1, S, S), run as one batch
    and one by one (the batch axis must be dynamic); a UserError when logits or maps exceed ``tolerance``."""
    with torch.inference_mode():
        reference = [t.float().numpy() for t in forward(torch.from_numpy(images))]
    whole = onnx_outputs(onnx_bytes, images)
    first = onnx_outputs(onnx_bytes, images[:1])
    parity: dict[str, Any] = {"images": int(len(images)), "source": source, "tolerance": tolerance,
                              "batch_sizes": sorted({len(images), 1})}
    for name, ref in zip(("logits", "attention", "probabilities"), reference):
        diff = max(float(np.abs(whole[name] - ref).max()), float(np.abs(first[name] - ref[:1]).max()))
        parity[f"max_abs_{name}"] = diff
    worst = max(("logits", "attention"), key=lambda k: parity[f"max_abs_{k}"])
    if not parity[f"max_abs_{worst}"] <= tolerance:  # NaN fails too
        raise UserError(f"the ONNX model's {worst} differ from the PyTorch model's by {parity[f'max_abs_{worst}']:.3g} "
                        f"(over --tolerance {tolerance:g}) on {len(images)} image(s) of {source}; nothing was written")
    return parity


def describe(loaded: LoadedRun, checkpoint: str, calibration: Calibration | None, thresholds: np.ndarray,
             exporter: dict[str, Any], parity: dict[str, Any]) -> dict[str, Any]:
    """What travels with the model: into its metadata and ``<stem>.preprocessing.json``."""
    meta, cfg, classes = loaded.meta, loaded.cfg, loaded.classes
    h, w = meta.get("grid") or loaded.model.grid
    return {
        "format": FORMAT, "format_version": 1, "hegl": __version__, "hegl_commit": source_commit(),
        "run": loaded.folder.name, "run_path": str(loaded.folder), "checkpoint": checkpoint, "epoch": meta.get("epoch"),
        "val_auc": meta.get("val_auc"), "weights_sha256": sha256_of(RunFolder(loaded.folder).weights(checkpoint)),
        "trained_with": meta.get("versions"), "trained_intensity_rule": int(meta.get("intensity_rule", 1)),
        "trained_intensity_containers": meta.get("intensity_containers"),
        "encoder": cfg.model.encoder, "classes": classes, "thresholds": [float(t) for t in thresholds],
        "run_thresholds": [float(t) for t in loaded.thresholds],
        "threshold_metric": meta.get("threshold_metric", "mcc"),
        "thresholds_chosen_on": ("the site's val (calibration)" if calibration is not None
                                 else meta.get("thresholds_chosen_on", "val")),
        "calibration": calibration.to_dict() if calibration is not None else None,
        "preprocessing": preprocessing_contract(loaded.image_size, cfg.data, cfg.model.in_chans),
        "outputs": {"logits": ["N", len(classes)], "attention": ["N", len(classes), int(h), int(w)],
                    "probabilities": ["N", len(classes)],
                    "decision": "positive when probabilities >= thresholds (per class)"},
        "exporter": exporter, "parity": parity,
    }


def export_section(out: Path, description: dict[str, Any], sha256: str) -> str:
    """The model card's section on the exported file."""
    p, x = description["parity"], description["exporter"]
    cal = description["calibration"]
    rows = [["file", f"{out.name} (sha256 {sha256})"], ["format", f"ONNX opset {x['opset']}, {x['exporter']}, "
                                                               f"torch {x['torch']}"],
            ["input", "images (N, 1, S, S) float32 in [0, 1], S = "
                      f"{description['preprocessing']['image_size']}; contract in {sidecars(out)[0].name}"],
            ["outputs", "logits (N, C), attention (N, C, h, w), probabilities (N, C)"],
            ["parity with PyTorch", f"max abs diff logits {p['max_abs_logits']:.2e}, maps {p['max_abs_attention']:.2e}, "
                                    f"probabilities {p['max_abs_probabilities']:.2e} on {p['images']} images of "
                                    f"{p['source']} (tolerance {p['tolerance']:g})"],
            ["calibration", "none: the run's probabilities and thresholds" if not cal else
             f"{cal['method']} from {cal.get('file')}; thresholds re-chosen on {cal.get('fitted_on', {}).get('data')} "
             "(val)"]]
    return md_table(["", ""], rows)


def export_run(run: Path, fmt: str = "onnx", out: Path | None = None, checkpoint: str = "best",
               calibration: Path | None = None, force: bool = False, tolerance: float = DEFAULT_TOLERANCE,
               images: int = PARITY_IMAGES) -> ExportResult:
    """Export ``run``'s checkpoint ``which`` to ``out`` (default ``RUN/export/model.onnx``) with its
    description and model card beside it; nothing is written unless the parity check passes."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}' (valid: {', '.join(FORMATS)})")
    target = Path(out) if out is not None else RunFolder(run).onnx_model
    if target.name in ("", ".", ".."):
        raise UserError(f"--out {out} names no file")
    folder = (OutputFolder(run, owned=True) if out is None
              else OutputFolder(target.parent, force=force, kind="exported model"))
    files = [target, *sidecars(target)]
    names = [p.relative_to(folder.root) if out is None else p.name for p in files]
    folder.claim(names)
    with load_run(run, checkpoint, device="cpu", command="hegl export") as loaded:
        warning = loaded.reading_warning()
        cal = None if calibration is None else read_calibration(
            calibration, loaded.classes, loaded.thresholds, sha256_of(RunFolder(run).weights(checkpoint)))
        temperature, knots_x, knots_y = (identity_calibration(len(loaded.classes)) if cal is None
                                         else (cal.temperature, *cal.padded_knots()))
        forward = ExportedForward(loaded.model, temperature, knots_x, knots_y).eval()
        raw, exporter = export_onnx(forward, loaded.image_size, loaded.cfg.model.encoder)
        batch, source = parity_images(loaded, images)
        parity = check_parity(forward, raw, batch, tolerance, source)
        thresholds = loaded.thresholds if cal is None else cal.thresholds
        description = describe(loaded, checkpoint, cal, thresholds, exporter, parity)
        model_bytes = with_metadata(raw, description)
        section = export_section(target, description, hashlib.sha256(model_bytes).hexdigest())
        card_text = model_card(run, checkpoint, files[2], exported=section)
        # written while the run is held: no `hegl train --force` replaces it between reading and writing
        folder.write(names[0], lambda tmp: tmp.write_bytes(model_bytes))
        folder.write_text(names[1], json_text(description))
        folder.write_text(names[2], card_text)
    return ExportResult(target, files[1], files[2], parity, exporter, [warning] if warning else [])
