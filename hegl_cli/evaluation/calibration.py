"""Are the probabilities probabilities? Calibration, and how a model does on each subgroup of patients.

Arrays: ``probs`` and ``labels`` are (N, C); NaN labels are unknown and left out.

- Brier score: the mean of ``(p - y)^2`` over known (image, class) pairs (0 is perfect; always saying
  the base rate scores ``rate (1 - rate)``).
- ECE (expected calibration error): known pairs in ``bins`` equal-width bins of ``p``; the mean, weighted
  by each bin's share of pairs, of ``|mean p - share of positives|`` in the bin.
- Subgroups: per value of a metadata column (sex, view, site, scanner; age in bands), the macro AUC
  under the usual macro rule with a bootstrap interval, and the gap between the best and worst group.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from hegl_cli.evaluation.classification import auc_per_class, bootstrap_macro

AGE_BANDS = ((0, 40, "<40"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 200, "80+"))
MIN_GROUP = 10  # images a subgroup needs to be scored


def reliability(probs: np.ndarray, labels: np.ndarray, classes: list[str], bins: int = 10) -> dict[str, Any]:
    """Brier score, ECE and the reliability curve over every known (image, class) pair, and per class."""
    pooled = _reliability(probs[~np.isnan(labels)], labels[~np.isnan(labels)], bins)
    pooled["per_class"] = {}
    for c, name in enumerate(classes):
        known = ~np.isnan(labels[:, c])
        one = _reliability(probs[known, c], labels[known, c], bins)
        pooled["per_class"][name] = {"pairs": one["pairs"], "brier": one["brier"], "ece": one["ece"]}
    return pooled


def _reliability(p: np.ndarray, y: np.ndarray, bins: int) -> dict[str, Any]:
    p, y = p.astype(np.float64), y.astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    curve = []
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            mean_p, share = float(p[inside].mean()), float(y[inside].mean())
            ece += inside.mean() * abs(mean_p - share)
            curve.append({"bin": [float(edges[b]), float(edges[b + 1])], "pairs": int(inside.sum()),
                          "mean_probability": mean_p, "positive_share": share})
    return {"pairs": int(len(p)), "bins": bins, "brier": float(np.mean((p - y) ** 2)) if len(p) else None,
            "ece": float(ece) if len(p) else None, "curve": curve}


def age_band(value: str) -> str | None:
    """'58', '058Y' (DICOM), '58.0' -> '40-59'; months, weeks and days count as under 40; None if unreadable."""
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*$", str(value), re.IGNORECASE)
    if not match:
        return None
    years = float(match.group(1)) if match.group(2).upper() in ("", "Y") else 0.0
    return next(name for low, high, name in AGE_BANDS if low <= years < high)


def groups_of(column: str, values: list[str]) -> list[str | None]:
    if column == "age":
        return [age_band(v) for v in values]
    return [str(v).strip().upper() if str(v).strip() else None for v in values]


def subgroup_scores(probs: np.ndarray, labels: np.ndarray, metadata: dict[str, list[str]], classes: list[str],
                    bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """Per metadata column and value with at least :data:`MIN_GROUP` images: macro AUC with a 95% bootstrap
    interval and per-class AUC; per column the gap between its best and worst scored group."""
    out: dict[str, Any] = {}
    for column, values in sorted(metadata.items()):
        if column in ("study",):
            continue
        groups = np.array(groups_of(column, values), dtype=object)
        scored: dict[str, Any] = {}
        for group in sorted({g for g in groups if g is not None}):
            rows = np.flatnonzero(groups == group)
            if len(rows) < MIN_GROUP:
                continue
            aucs = auc_per_class(probs[rows], labels[rows])
            kept = [a for a in aucs if a is not None]
            if not kept:
                continue
            ci = bootstrap_macro(probs[rows], labels[rows], np.full(labels.shape[1], 0.5), bootstrap, seed)["auc"]
            scored[group] = {"images": int(len(rows)), "macro_auc": float(np.mean(kept)), "macro_auc_ci95": ci,
                             "per_class_auc": dict(zip(classes, aucs))}
        if len(scored) >= 2:
            values_ = [g["macro_auc"] for g in scored.values()]
            out[column] = {"groups": scored, "gap": float(max(values_) - min(values_))}
    return out
