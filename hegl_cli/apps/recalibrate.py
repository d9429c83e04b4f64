"""`hegl evaluate RUN --data SITE --recalibrate`: a site's own calibration, fitted on its val split only.

Per class, a temperature (``--calibration-method temperature``, the default) or an isotonic map of
the probability (``isotonic``) is fitted on the model's logits over the site's **val** split, and the
thresholds are re-chosen there, on the calibrated probabilities, by the run's threshold metric. The
site's test split is opened only afterwards, to score the model before and after: ECE, Brier, AUC,
F1, MCC, sensitivity and specificity, with bootstrap intervals drawn as `hegl evaluate` draws them.
A temperature keeps each class's ranking, so AUC is unchanged by construction.

Written under ``RUN/eval/external/<site>/``: the site's calibration (``RunFolder.site_calibration``: what
``hegl predict --calibration`` and ``hegl export --calibration`` apply) and the before/after report
(``RunFolder.recalibration_report``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from hegl_cli import __version__
from hegl_cli.engine.checkpoint import load_run
from hegl_cli.engine.run_folder import RunFolder, external_name
from hegl_cli.errors import UserError
from hegl_cli.evaluation.calibration import Calibration, fit_calibration, pooled_brier_ece, reliability
from hegl_cli.evaluation.classification import (
    MACRO_RULE,
    bootstrap_macro,
    bootstrap_statistics,
    ci_method,
    sensitivity_specificity,
    summarize,
)
from hegl_cli.fs.outputs import OutputFolder, sha256_of
from hegl_cli.fs.tables import read_json
from hegl_cli.models.inference import split_logits


def fit_site_calibration(run: Path, data: Path, checkpoint: str = "best", method: str = "temperature",
                         metric: str | None = None, device: str = "auto", eval_layers: list | None = None
                         ) -> Calibration:
    """Fit the site's calibration on its val split (the only split this opens) and re-choose thresholds there."""
    with load_run(run, checkpoint, data, device, "val", eval_layers, "hegl evaluate") as loaded:
        cached = loaded.split
        if len(cached) == 0:
            raise UserError(f"{data}: split 'val' is empty; a site's calibration is fitted on its val split")
        logits = split_logits(loaded.model, cached, loaded.device, loaded.cfg.eval.batch_size,
                              precision=loaded.in_force)
        chosen = metric or loaded.meta.get("threshold_metric", "mcc")
        facts = {"fitted_on": {"data": str(Path(data).resolve()), "split": "val", "images": len(cached),
                               "positives": dict(zip(loaded.classes, np.nansum(cached.labels, 0).astype(int).tolist()))},
                 "threshold_metric": chosen, "run_thresholds": dict(zip(loaded.classes, loaded.thresholds.tolist())),
                 "model": {"run": str(run), "checkpoint": checkpoint, "classes": list(loaded.meta["classes"]),
                           "weights_sha256": sha256_of(RunFolder(run).weights(checkpoint))},
                 "hegl": __version__}
        return fit_calibration(logits, cached.labels, loaded.classes, method, chosen, loaded.thresholds, facts)


MIN_SITE_VAL_IMAGES = 100  # below these a fitted calibration can make ECE worse (a 12-image val did, 0.076 -> 0.161)
MIN_SITE_VAL_POSITIVES = 20


def small_site_warnings(fitted_on: dict[str, Any] | None) -> list[str]:
    """One line per reason the site's val split is small for a calibration fitted on it: too few images,
    or a class with too few positives."""
    if not fitted_on:
        return []
    out = []
    if fitted_on.get("images", 0) < MIN_SITE_VAL_IMAGES:
        out.append(f"the site's val split holds {fitted_on['images']} images (under {MIN_SITE_VAL_IMAGES}): a "
                   "calibration fitted on so few can make ECE worse; compare before and after below")
    few = {c: n for c, n in (fitted_on.get("positives") or {}).items() if 0 < n < MIN_SITE_VAL_POSITIVES}
    if few:
        out.append(f"classes with under {MIN_SITE_VAL_POSITIVES} positives in the site's val split, their "
                   "temperature and threshold rest on these: " + ", ".join(f"{c} {n}" for c, n in few.items()))
    return out


def scores(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, classes: list[str], bootstrap: int
           ) -> dict[str, Any]:
    """AUC/F1/MCC/sensitivity/specificity per class and macro, pooled ECE/Brier, 95% bootstrap intervals.

    probs, labels: (N, C) (NaN labels unknown); thresholds: (C,)."""
    summary = summarize(probs, labels, thresholds, classes)
    sens, spec = sensitivity_specificity(probs, labels, thresholds)
    calibration = reliability(probs, labels, classes)
    per_class = {name: {**summary["per_class"][name], "sensitivity": sens[c], "specificity": spec[c],
                        "ece": calibration["per_class"][name]["ece"], "brier": calibration["per_class"][name]["brier"]}
                 for c, name in enumerate(classes)}

    def mean(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return float(np.mean(kept)) if kept else None

    def resampled(idx: np.ndarray) -> dict[str, float | None]:
        s, p = sensitivity_specificity(probs[idx], labels[idx], thresholds)
        return {"sensitivity": mean(s), "specificity": mean(p), **pooled_brier_ece(probs[idx], labels[idx])}

    macro = {**summary["macro"], "sensitivity": mean(sens), "specificity": mean(spec),
             "ece": calibration["ece"], "brier": calibration["brier"]}
    ci = {**bootstrap_macro(probs, labels, thresholds, bootstrap, seed=0),
          **bootstrap_statistics(resampled, len(probs), bootstrap, seed=0)}
    return {"macro": macro, "macro_ci95": ci, "per_class": per_class,
            "thresholds": dict(zip(classes, map(float, thresholds)))}


def score_recalibration(run: Path, data: Path, calibration: Calibration, checkpoint: str = "best", split: str = "test",
                        device: str = "auto", eval_layers: list | None = None) -> dict[str, Any]:
    """The site's ``split`` scored with the run's own probabilities and thresholds, and with ``calibration``'s."""
    with load_run(run, checkpoint, data, device, split, eval_layers, "hegl evaluate") as loaded:
        cached = loaded.split
        if len(cached) == 0:
            raise UserError(f"{data}: split '{split}' is empty")
        if list(loaded.classes) != list(calibration.classes):
            raise UserError(f"{data}: split '{split}' scores classes {loaded.classes}, the calibration "
                            f"{calibration.classes}")
        logits = split_logits(loaded.model, cached, loaded.device, loaded.cfg.eval.batch_size,
                              precision=loaded.in_force)
        n = loaded.cfg.eval.bootstrap
        before = scores(expit(logits.astype(np.float64)), cached.labels, loaded.thresholds, loaded.classes, n)
        after = scores(calibration.probabilities(logits), cached.labels, calibration.thresholds, loaded.classes, n)
        return {"run": str(run), "checkpoint": checkpoint, "data": str(data), "split": split, "images": len(cached),
                "method": calibration.method, "fitted_on": calibration.facts.get("fitted_on"),
                "threshold_metric": calibration.facts.get("threshold_metric"), "classes": list(loaded.classes),
                "fitted": dict(zip(calibration.classes, calibration.fitted)), "macro_rule": MACRO_RULE,
                "ci_method": ci_method(n), "warnings": small_site_warnings(calibration.facts.get("fitted_on")),
                "before": before, "after": after}


def recalibrate_run(run: Path, data: Path | None, checkpoint: str = "best", method: str = "temperature",
                    metric: str | None = None, split: str = "test", device: str = "auto",
                    eval_layers: list | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Fit on the site's val, score on its ``split``, write both files; returns (report, {calibration, report})."""
    if data is None:
        raise UserError("--recalibrate fits a site's calibration on its val split: name the site's cache with --data")
    if split == "val":
        raise UserError("--recalibrate fits on the site's val split and scores --split: choose another split (test)")
    calibration = fit_site_calibration(run, data, checkpoint, method, metric, device, eval_layers)
    report = score_recalibration(run, data, calibration, checkpoint, split, device, eval_layers)
    folder, site = RunFolder(run), external_name(data)
    files = {"calibration": folder.site_calibration(site), "report": folder.recalibration_report(split, site)}
    report["calibration_file"] = str(files["calibration"])
    outputs = OutputFolder(run, owned=True)
    outputs.write_json(files["calibration"].relative_to(folder.path), calibration.to_dict())
    outputs.write_json(files["report"].relative_to(folder.path), report)
    return report, files


def read_calibration(path: Path, classes: list[str], thresholds: np.ndarray, weights_sha256: str | None
                     ) -> Calibration:
    """A site calibration file, checked against the model it is applied to and laid over its ``classes``
    (a class it does not cover keeps its plain probability and its threshold from ``thresholds``)."""
    calibration = Calibration.from_dict(read_json(path, "site calibration"), str(path))
    fitted_for = (calibration.facts.get("model") or {}).get("weights_sha256")
    if weights_sha256 and not isinstance(fitted_for, str):
        raise UserError(f"{path} does not record the weights it was fitted for (its 'model' has no weights_sha256); "
                        "run `hegl evaluate --recalibrate` again")
    if weights_sha256 and fitted_for != weights_sha256:
        model = calibration.facts.get("model") or {}
        raise UserError(f"{path} was fitted for another model ({model.get('run')}, {model.get('checkpoint')} "
                        "checkpoint): its weights differ from this one's")
    return calibration.for_classes(classes, thresholds)
