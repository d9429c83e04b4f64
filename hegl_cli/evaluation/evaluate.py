"""`hegl evaluate`: metrics with confidence intervals, attention alignment and faithfulness."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hegl_cli.config import Config
from hegl_cli.data.cache import CachedSplit
from hegl_cli.engine.checkpoint import load_model
from hegl_cli.engine.io import atomic_write, atomic_write_json
from hegl_cli.engine.train import select_device
from hegl_cli.errors import UserError
from hegl_cli.evaluation.attention import alignment_report
from hegl_cli.evaluation.faithfulness import faithfulness_report, shortcut_reliance
from hegl_cli.evaluation.metrics import bootstrap_macro, choose_thresholds, summarize
from hegl_cli.evaluation.predict import Predictions, predict_split


def open_split(data: Path | str, split: str, classes: list[str], image_size: int) -> CachedSplit:
    """A cache split that matches the model's classes and input size (clear error otherwise)."""
    cached = CachedSplit(data, split)
    if cached.classes != list(classes):
        raise UserError(f"{data}: classes {cached.classes} differ from the model's {list(classes)}")
    if cached.image_size != image_size:
        raise UserError(f"{data}: images are {cached.image_size} px but the model expects {image_size} px")
    return cached


def resolve_thresholds(model, meta: dict, cfg: Config, data: Path, device: torch.device, metric: str | None) -> tuple[np.ndarray, str]:
    """Thresholds stored with the checkpoint (chosen on validation during training), or, when another
    metric is asked for, re-chosen on the validation split. Never on the evaluated split."""
    stored_metric = meta.get("threshold_metric", "mcc")
    if metric is None or metric == stored_metric:
        return np.asarray(meta["thresholds"], dtype=np.float64), f"validation ({stored_metric}, stored)"
    val = open_split(data, "val", meta["classes"], int(meta["image_size"]))
    preds = predict_split(model, val, device, cfg.eval.batch_size)
    return choose_thresholds(preds.probs, val.labels, metric), f"validation ({metric})"


def evaluate_run(
    run: Path, split: str = "test", which: str = "best", data: Path | None = None,
    threshold_metric: str | None = None, faithfulness: bool = True, device: str = "auto",
) -> dict[str, Any]:
    """Evaluate a run on a split; writes ``RUN/eval/<split>.json`` and ``<split>.csv``; returns the report."""
    dev = select_device(device)
    model, meta, cfg = load_model(run, which, dev)
    data = Path(data or meta.get("data") or cfg.data.path)
    classes = meta["classes"]
    cached = open_split(data, split, classes, int(meta["image_size"]))
    if len(cached) == 0:
        raise UserError(f"{data}: split '{split}' is empty")
    thresholds, threshold_source = resolve_thresholds(model, meta, cfg, data, dev, threshold_metric)
    preds = predict_split(model, cached, dev, cfg.eval.batch_size)
    metrics = summarize(preds.probs, cached.labels, thresholds, classes)
    report: dict[str, Any] = {
        "run": str(run), "checkpoint": which, "split": split, "data": str(data), "images": len(cached),
        "macro": metrics["macro"],
        "macro_ci95": bootstrap_macro(preds.probs, cached.labels, thresholds, cfg.eval.bootstrap, seed=0),
        "per_class": metrics["per_class"],
        "thresholds": {"values": dict(zip(classes, map(float, thresholds))), "chosen_on": threshold_source},
        "attention": alignment_report(preds.attention, cached.labels, cached.has_mask, cached.masks, classes,
                                      cfg.eval.top_share),
    }
    report["faithfulness"] = faithfulness_section(model, cached, preds, cfg, dev, data, split) if faithfulness else {}
    out_dir = run / "eval"
    atomic_write_json(out_dir / f"{split}.json", report)
    write_per_class_csv(out_dir / f"{split}.csv", report)
    return report


def faithfulness_section(model, cached: CachedSplit, preds: Predictions, cfg: Config, dev: torch.device,
                         data: Path, split: str) -> dict[str, Any]:
    section: dict[str, Any] = {
        **faithfulness_report(model, lambda i: torch.from_numpy(cached.image(i)).unsqueeze(0), preds.attention,
                              cached.labels, cached.classes, cfg.eval.faithfulness_steps,
                              cfg.eval.faithfulness_images, dev)
    }
    twin_name = counterfactual_split(cached.manifest, split)
    if twin_name:
        twin = open_split(data, twin_name, cached.classes, cached.image_size)
        if twin.files != cached.files:
            raise UserError(f"{data}: split '{twin_name}' does not list the same images as '{split}'")
        twin_preds = predict_split(model, twin, dev, cfg.eval.batch_size)
        section["shortcut_reliance"] = shortcut_reliance(preds.probs, twin_preds.probs, cached.classes)
        section["shortcut_reliance"]["counterfactual_split"] = twin_name
    return section


def counterfactual_split(manifest: dict[str, Any], split: str) -> str | None:
    """Name of the split that is ``split`` with only the spurious cue toggled, if the dataset has one."""
    twins = (manifest.get("synthetic") or {}).get("counterfactual_of", {})
    return next((name for name, of in twins.items() if of == split and name in manifest["splits"]), None)


def write_per_class_csv(path: Path, report: dict[str, Any]) -> None:
    attention = report["attention"]["per_class"]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["class", "auc", "f1", "mcc", "threshold", "positives", "n", "pointing_game",
                             "energy_in_mask", "dice", "iou"])
            for name, row in report["per_class"].items():
                a = attention.get(name, {})
                writer.writerow([name, row["auc"], row["f1"], row["mcc"], row["threshold"], row["positives"], row["n"],
                                 a.get("pointing_game"), a.get("energy_in_mask"), a.get("dice"), a.get("iou")])
            m = report["macro"]
            o = report["attention"]["overall"]
            writer.writerow(["macro", m["auc"], m["f1"], m["mcc"], "", "", "", o["pointing_game"], o["energy_in_mask"],
                             o["dice"], o["iou"]])

    atomic_write(path, write)
