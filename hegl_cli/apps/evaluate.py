"""`hegl evaluate`: metrics with confidence intervals, attention alignment and faithfulness."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hegl_cli.config import Config
from hegl_cli.data.cache import CachedSplit
from hegl_cli.data.manifest import (
    containers_of,
    counterfactual_split,
    intensity_rule_of,
    outdated_cache_note,
    read_manifest,
)
from hegl_cli.engine.checkpoint import LoadedRun, load_run, open_split
from hegl_cli.engine.run_folder import RunFolder, external_name
from hegl_cli.errors import UserError
from hegl_cli.evaluation.alignment import alignment_scores
from hegl_cli.evaluation.calibration import reliability, subgroup_scores
from hegl_cli.evaluation.classification import (
    MACRO_RULE,
    bootstrap_macro,
    choose_thresholds,
    ci_method,
    summarize,
)
from hegl_cli.evaluation.context_audit import context_audit
from hegl_cli.evaluation.faithfulness import faithfulness_scores, shortcut_reliance
from hegl_cli.evaluation.methods import method_pairs, sanity_check, score_methods
from hegl_cli.fs.outputs import OutputFolder
from hegl_cli.models.inference import Predictions, predict_split
from hegl_cli.plots import plot_methods, plot_reliability


def resolve_thresholds(loaded: LoadedRun, metric: str | None) -> tuple[np.ndarray, str]:
    """Thresholds stored with the checkpoint (chosen on validation during training), or, when another
    metric is asked for, re-chosen on the validation split. Never on the evaluated split."""
    stored_metric = loaded.meta.get("threshold_metric", "mcc")
    if metric is None or metric == stored_metric:
        return loaded.thresholds, f"validation ({stored_metric}, stored)"
    # the run's own val, whichever cache is evaluated: another site's data never sets a threshold
    val = open_split(loaded.home_data, "val", list(loaded.meta["classes"]), loaded.image_size)
    model = loaded.model.model if loaded.external else loaded.model
    preds = predict_split(model, val, loaded.device, loaded.cfg.eval.batch_size, precision=loaded.in_force)
    chosen = choose_thresholds(preds.probs, val.labels, metric)
    return (chosen[list(loaded.match.model_index)] if loaded.external else chosen), f"validation ({metric})"


def evaluate_run(
    run: Path, split: str = "test", checkpoint: str = "best", data: Path | None = None,
    threshold_metric: str | None = None, faithfulness: bool = True, device: str = "auto",
    eval_layers: list | None = None, methods: list[str] | None = None, sanity: bool = True,
    log=lambda *_: None,
) -> dict[str, Any]:
    """Evaluate a run on a split; writes the run's evaluation report (JSON) and per-class table (CSV) of
    that split (and, with ``methods``, the explanation methods' table and figure); returns the report."""
    with load_run(run, checkpoint, data, device, split, eval_layers, "hegl evaluate") as loaded:
        return _evaluate(loaded, run, split, checkpoint, threshold_metric, faithfulness, methods, sanity, log)


def _evaluate(loaded: LoadedRun, run: Path, split: str, checkpoint: str, threshold_metric: str | None,
              faithfulness: bool, methods: list[str] | None = None, sanity: bool = True,
              log=lambda *_: None) -> dict[str, Any]:
    cached, cfg, classes = loaded.split, loaded.cfg, loaded.classes
    assert cached is not None
    if len(cached) == 0:
        raise UserError(f"{loaded.data}: split '{split}' is empty")
    thresholds, threshold_source = resolve_thresholds(loaded, threshold_metric)
    preds = predict_split(loaded.model, cached, loaded.device, cfg.eval.batch_size, precision=loaded.in_force)
    metrics = summarize(preds.probs, cached.labels, thresholds, classes)
    report: dict[str, Any] = {
        "run": str(run), "checkpoint": checkpoint, "epoch": loaded.meta.get("epoch"), "split": split,
        "data": str(loaded.data), "images": len(cached),
        "macro": metrics["macro"], "macro_rule": MACRO_RULE,
        "macro_ci95": bootstrap_macro(preds.probs, cached.labels, thresholds, cfg.eval.bootstrap, seed=0),
        "ci_method": ci_method(cfg.eval.bootstrap),
        "per_class": metrics["per_class"],
        "thresholds": {"values": dict(zip(classes, map(float, thresholds))), "chosen_on": threshold_source},
        "attention": alignment_scores(preds.attention, cached.labels, cached.has_mask, cached.masks, classes,
                                      cfg.eval.top_share),
        "eval_config": dataclasses.asdict(cfg.eval),
        "precision": loaded.precision.record() if loaded.precision else None,
        "warnings": reading_warnings(loaded),
        **external_fields(loaded),
        "calibration": reliability(preds.probs, cached.labels, classes),
        "subgroups": subgroup_scores(preds.probs, cached.labels, cached.metadata, classes, cfg.eval.bootstrap),
    }
    report["unscored"] = unscored(loaded, metrics["macro"])
    report["faithfulness"] = (faithfulness_section(loaded.model, cached, preds, cfg, loaded.device, loaded.data, split,
                                                   loaded.in_force) if faithfulness else {})
    if methods:
        report.update(methods_section(loaded.model, cached, methods, cfg, loaded.device, sanity, log, loaded.in_force))
    run_folder, outputs = RunFolder(run), OutputFolder(run, owned=True)
    site = external_name(loaded.data) if loaded.external else None
    report["site"] = site  # where eval/external/<site>/ keeps it (None: the run's own cache)
    where = {kind: path.relative_to(run_folder.path) for kind, path in run_folder.eval_files(split, site).items()}
    outputs.write_json(where["report"], report)
    outputs.write(where["table"], lambda tmp: write_per_class_csv(tmp, report))
    outputs.write(where["reliability"],
                  lambda tmp: plot_reliability(report["calibration"]["curve"], tmp, f"{split}: reliability"))
    if methods and report["methods"].get("methods"):
        outputs.write(where["methods_table"], lambda tmp: write_methods_csv(tmp, report))
        outputs.write(where["methods_figure"], lambda tmp: plot_methods(report, tmp, f"{split}: explanation methods"))
    return report


def methods_section(model, cached: CachedSplit, methods: list[str], cfg: Config, dev: torch.device, sanity: bool,
                    log=lambda *_: None, precision: str = "fp32") -> dict[str, Any]:
    """Every method scored on the same pairs, and (``sanity``) the cascading randomisation check. The
    methods' maps are computed in float32; the deletion/insertion forward passes in ``precision``."""
    def image(i: int) -> torch.Tensor:
        return torch.from_numpy(cached.image(i)).unsqueeze(0)

    section: dict[str, Any] = {"methods": score_methods(model, image, cached.masks, cached.labels, cached.has_mask,
                                                        methods, cfg.eval, dev, log, precision)}
    if sanity:
        pairs = method_pairs(cached.labels, cached.has_mask, cfg.eval.sanity_pairs, seed=1)
        section["sanity"] = sanity_check(model, image, pairs, methods, seed=0, log=log) if len(pairs) else {"pairs": 0}
    return section


METHOD_COLUMNS = ("pointing_game", "energy_in_mask", "energy_uniform", "dice", "dice_pixel", "iou", "iou_pixel",
                  "deletion_method", "deletion_random", "deletion_gain", "insertion_method", "insertion_random",
                  "insertion_gain", "seconds_per_image")


def write_methods_csv(path: Path, report: dict[str, Any]) -> None:
    """One row per method: alignment, faithfulness, seconds and the sanity check's final similarity."""
    sanity = (report.get("sanity") or {}).get("methods", {})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", *METHOD_COLUMNS, "sanity_similarity", "sanity_flagged"])
        for method, row in report["methods"]["methods"].items():
            s = sanity.get(method, {})
            writer.writerow([method, *(row.get(k) for k in METHOD_COLUMNS), s.get("final_similarity"), s.get("flagged")])


def external_fields(loaded: LoadedRun) -> dict[str, Any]:
    """What an evaluation on another cache says of itself: which classes were scored, which not."""
    if not loaded.external:
        return {"external": False}
    return {"external": True, "home_data": str(loaded.home_data), "scored_classes": list(loaded.match.scored),
            "not_scored": {"model_only": list(loaded.match.model_only), "data_only": list(loaded.match.data_only)}}


def unscored(loaded: LoadedRun, macro: dict[str, Any]) -> dict[str, str]:
    """Every class that counts in no macro figure of this evaluation -> why: the split has no positive (or
    no negative, or no label) for it, or, at another site, only the model or only the data has it."""
    reasons = dict(macro.get("not_scored") or {})
    if loaded.external:
        reasons.update({c: "this site's data does not label it" for c in loaded.match.model_only})
        reasons.update({c: "the model has no such class" for c in loaded.match.data_only})
    return reasons


def reading_warnings(loaded: LoadedRun) -> list[str]:
    """A line when the run is still training (the epoch read), and when the evaluated cache's images were
    read under another intensity rule than the run's."""
    manifest = loaded.split.manifest
    notes = [loaded.training_note(), *(outdated_cache_note(read_manifest(root), root)
                                       for root in loaded.split.roots)]
    shift = loaded.reading_shift(containers_of(manifest, loaded.split.root), intensity_rule_of(manifest))
    if shift:
        notes.append(f"{loaded.data} and the images {loaded.folder} trained on were read under different rules: "
                     f"{shift}, so the scores mix two readings")
    return [n for n in notes if n]


def faithfulness_section(model, cached: CachedSplit, preds: Predictions, cfg: Config, dev: torch.device,
                         data: Path, split: str, precision: str = "fp32") -> dict[str, Any]:
    section: dict[str, Any] = {
        **faithfulness_scores(model, lambda i: torch.from_numpy(cached.image(i)).unsqueeze(0), preds.attention,
                              cached.labels, cached.classes, cfg.eval.faithfulness_steps,
                              cfg.eval.faithfulness_images, dev, baseline=cfg.eval.faithfulness_baseline,
                              precision=precision)
    }
    audit = context_audit(model, cached, dev, cfg.eval.batch_size, precision=precision)
    if audit is not None:
        section["context_audit"] = audit
    twin_name = counterfactual_split(cached.manifest, split)
    if twin_name:
        twin = open_split(data, twin_name, cached.classes, cached.image_size)
        if twin.files != cached.files:
            raise UserError(f"{data}: split '{twin_name}' does not list the same images as '{split}'")
        twin_preds = predict_split(model, twin, dev, cfg.eval.batch_size, precision=precision)
        section["shortcut_reliance"] = shortcut_reliance(preds.probs, twin_preds.probs, cached.classes)
        section["shortcut_reliance"]["counterfactual_split"] = twin_name
    return section


def write_per_class_csv(path: Path, report: dict[str, Any]) -> None:
    """The report's per-class rows (and the macro row) as a CSV at ``path``."""
    attention = report["attention"]["per_class"]
    with open(path, "w", newline="") as handle:
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
