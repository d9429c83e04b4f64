"""Are the probabilities probabilities? Calibration, and how a model does on each subgroup of patients.

Arrays: ``probs`` and ``labels`` are (N, C); NaN labels are unknown and left out.

- Brier score: the mean of ``(p - y)^2`` over known (image, class) pairs (0 is perfect; always saying
  the base rate scores ``rate (1 - rate)``).
- ECE (expected calibration error): known pairs in ``bins`` equal-width bins of ``p``; the mean, weighted
  by each bin's share of pairs, of ``|mean p - share of positives|`` in the bin.
- Subgroups: per value of a metadata column (sex, view, site, scanner; age in bands), the macro AUC
  under the usual macro rule with a bootstrap interval, and the gap between the best and worst group;
  a group too small (under :data:`MIN_GROUP` images) or with no class to score is listed with its size.
- Recalibration at a site (:class:`Calibration`): per class, a temperature ``T`` (``p = sigmoid(z / T)``,
  Guo et al. 2017, fitted by cross-entropy) or an isotonic map of the probability (piecewise linear
  through knots, clipped at both ends), and thresholds re-chosen on the calibrated probabilities. It
  is fitted on a site's val split only; a temperature keeps every class's ranking, so AUC is unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit

from hegl_cli.config import CALIBRATION_METHODS
from hegl_cli.errors import UserError
from hegl_cli.evaluation.classification import (
    BOOTSTRAP_RESAMPLES,
    auc_per_class,
    bootstrap_macro,
    choose_thresholds,
)

AGE_BANDS = ((0, 40, "<40"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 200, "80+"))
MIN_GROUP = 10  # images a subgroup needs to be scored
TEMPERATURE_BOUNDS = (0.01, 100.0)  # a fitted temperature stays inside (a separable val split pushes it to 0)
CALIBRATION_FORMAT = "hegl site calibration"
IDENTITY_KNOTS = (np.array([0.0, 1.0]), np.array([0.0, 1.0]))


def reliability(probs: np.ndarray, labels: np.ndarray, classes: list[str], bins: int = 10) -> dict[str, Any]:
    """Brier score, ECE and the reliability curve over every known (image, class) pair, and per class."""
    pooled = _reliability(probs[~np.isnan(labels)], labels[~np.isnan(labels)], bins)
    pooled["per_class"] = {}
    for c, name in enumerate(classes):
        known = ~np.isnan(labels[:, c])
        one = _reliability(probs[known, c], labels[known, c], bins)
        pooled["per_class"][name] = {"pairs": one["pairs"], "brier": one["brier"], "ece": one["ece"]}
    return pooled


def pooled_brier_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict[str, float | None]:
    """Brier score and ECE over every known (image, class) pair of ``probs``/``labels`` (N, C)."""
    known = ~np.isnan(labels)
    one = _reliability(probs[known], labels[known], bins)
    return {"brier": one["brier"], "ece": one["ece"]}


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
                    bootstrap: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Per metadata column (``study`` aside): every value with at least :data:`MIN_GROUP` images and a class
    it can score (``groups``: macro AUC with a 95% bootstrap interval, per-class AUC); every other value
    under ``unscored`` with its size and why, never dropped unsaid; the images with no value
    (``without_value``); the gap between the best and worst scored group (None with fewer than two)."""
    out: dict[str, Any] = {}
    for column, values in sorted(metadata.items()):
        if column in ("study",):
            continue
        groups = np.array(groups_of(column, values), dtype=object)
        scored: dict[str, Any] = {}
        unscored: dict[str, Any] = {}
        for group in sorted({g for g in groups if g is not None}):
            rows = np.flatnonzero(groups == group)
            if len(rows) < MIN_GROUP:
                unscored[group] = {"images": int(len(rows)), "reason": f"fewer than {MIN_GROUP} images"}
                continue
            aucs = auc_per_class(probs[rows], labels[rows])
            kept = [a for a in aucs if a is not None]
            if not kept:
                unscored[group] = {"images": int(len(rows)),
                                   "reason": "no class has both a positive and a negative in the group"}
                continue
            ci = bootstrap_macro(probs[rows], labels[rows], np.full(labels.shape[1], 0.5), bootstrap, seed)["auc"]
            scored[group] = {"images": int(len(rows)), "macro_auc": float(np.mean(kept)), "macro_auc_ci95": ci,
                             "per_class_auc": dict(zip(classes, aucs))}
        if not scored and not unscored:
            continue
        aucs_ = [g["macro_auc"] for g in scored.values()]
        out[column] = {"groups": scored, "gap": float(max(aucs_) - min(aucs_)) if len(scored) >= 2 else None,
                       "unscored": unscored, "without_value": int(sum(g is None for g in groups))}
    return out


# --- recalibration at a site ----------------------------------------------------------------------------
def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` that minimises the mean cross-entropy of ``sigmoid(z / T)`` against 0/1 labels.

    Args:
        logits: (N,) one class's logits; labels: (N,) 0/1 (no unknowns).

    The loss is convex in ``a = 1 / T``; a bounded Brent search over ``log a`` finds it, within
    :data:`TEMPERATURE_BOUNDS`.
    """
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)

    def loss(log_a: float) -> float:
        s = np.exp(log_a) * z
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    low, high = TEMPERATURE_BOUNDS
    found = minimize_scalar(loss, bounds=(-np.log(high), -np.log(low)), method="bounded", options={"xatol": 1e-7})
    return float(np.exp(-found.x))


def fit_isotonic(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots (x, y) of the isotonic (non-decreasing) fit of 0/1 ``labels`` (N,) on ``probs`` (N,): the map is
    linear between knots and flat outside them (scikit-learn's ``IsotonicRegression``, clipped). The knots
    are rounded to float32 values."""
    from sklearn.isotonic import IsotonicRegression

    fit = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(probs, labels)
    # knots a float32 graph holds exactly: a plateau's value (and a threshold chosen on it) is the same number
    # in the exported model as here
    as_float32 = [np.asarray(v, np.float32).astype(np.float64) for v in (fit.X_thresholds_, fit.y_thresholds_)]
    return as_float32[0], as_float32[1]


@dataclass
class Calibration:
    """Per-class recalibration of a model's logits ``z`` (N, C): ``p = interp(sigmoid(z / T), knots)``.

    ``temperature`` (C,); ``knots`` per class (x, y) on the tempered probability (``IDENTITY_KNOTS`` for
    temperature scaling and for a class that was not fitted); ``thresholds`` (C,) on the calibrated
    probabilities; ``fitted`` (C,) whether the class had positives and negatives to fit on; ``facts``:
    where it was fitted and for which model.
    """

    method: str
    classes: list[str]
    temperature: np.ndarray
    knots: list[tuple[np.ndarray, np.ndarray]]
    thresholds: np.ndarray
    fitted: list[bool]
    facts: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(N, C) logits -> (N, C) float64 calibrated probabilities."""
        tempered = expit(np.asarray(logits, np.float64) / self.temperature[None, :])
        out = tempered.copy()
        for c, (x, y) in enumerate(self.knots):
            out[:, c] = np.interp(tempered[:, c], x, y)
        return out

    def padded_knots(self) -> tuple[np.ndarray, np.ndarray]:
        """Every class's knots as (C, K) arrays (x, y), a short class padded with its last knot (a flat
        piece): what the exported graph's piecewise-linear map reads."""
        k = max(len(x) for x, _ in self.knots)
        xs = np.stack([np.pad(x, (0, k - len(x)), mode="edge") for x, _ in self.knots])
        ys = np.stack([np.pad(y, (0, k - len(y)), mode="edge") for _, y in self.knots])
        return xs, ys

    def for_classes(self, classes: list[str], thresholds: np.ndarray) -> Calibration:
        """This calibration over a model's ``classes`` (in its order): a class it does not cover keeps
        its plain probability and the model's own threshold (``thresholds`` (C,)). A class it covers that
        the model lacks means it was fitted for another model: refused."""
        extra = [c for c in self.classes if c not in classes]
        if extra:
            raise UserError(f"{self.facts.get('file', 'the calibration')} covers class(es) {', '.join(extra)} that "
                            f"the model lacks ({', '.join(classes)}): it was fitted for another model")
        where = {name: i for i, name in enumerate(self.classes)}
        pick = [where.get(name) for name in classes]
        return Calibration(
            self.method, list(classes),
            np.array([1.0 if i is None else self.temperature[i] for i in pick]),
            [IDENTITY_KNOTS if i is None else self.knots[i] for i in pick],
            np.array([float(t) if i is None else self.thresholds[i] for i, t in zip(pick, thresholds)]),
            [False if i is None else self.fitted[i] for i in pick], dict(self.facts))

    def to_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, "version": 1, "method": self.method, "classes": self.classes,
                "per_class": {name: {"fitted": self.fitted[c], "temperature": float(self.temperature[c]),
                                     "knots_x": self.knots[c][0].tolist(), "knots_y": self.knots[c][1].tolist(),
                                     "threshold": float(self.thresholds[c])}
                              for c, name in enumerate(self.classes)},
                **self.facts}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Calibration:
        """Read :meth:`to_dict`'s form back; anything else is one line naming ``source`` and the key."""
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise UserError(f"{source}: not a hegl site calibration (written by `hegl evaluate --recalibrate`)")
        try:
            classes = [str(c) for c in data["classes"]]
            rows = [data["per_class"][name] for name in classes]
            knots = [(np.asarray(r["knots_x"], np.float64), np.asarray(r["knots_y"], np.float64)) for r in rows]
            calibration = cls(str(data["method"]), classes, np.array([float(r["temperature"]) for r in rows]), knots,
                              np.array([float(r["threshold"]) for r in rows]), [bool(r["fitted"]) for r in rows],
                              {k: v for k, v in data.items() if k not in ("format", "version", "method", "classes",
                                                                          "per_class")})
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source}: damaged site calibration (key {exc}); run `hegl evaluate --recalibrate` "
                            "again") from exc
        bad = [name for name, t, threshold, (x, y) in zip(classes, calibration.temperature, calibration.thresholds, knots)
               if not _valid_class_calibration(t, threshold, x, y)]
        model = data.get("model")
        if calibration.method not in CALIBRATION_METHODS or bad or not isinstance(model, dict):
            what = "class " + bad[0] if bad else ("method" if calibration.method not in CALIBRATION_METHODS else
                                                   "no record of the model it was fitted for")
            raise UserError(f"{source}: damaged site calibration ({what}); run `hegl evaluate --recalibrate` again")
        calibration.facts["file"] = source
        return calibration


def _valid_class_calibration(temperature: float, threshold: float, knots_x: np.ndarray, knots_y: np.ndarray) -> bool:
    """One class's calibration as :meth:`Calibration.to_dict` writes it: a temperature a fit can give, a
    finite threshold, and 1-D finite knots of equal length, ``knots_x`` non-decreasing."""
    low, high = TEMPERATURE_BOUNDS  # what a fit can give (1e-320 overflowed every logit)
    finite = np.isfinite(temperature) and low * (1 - 1e-6) <= temperature <= high * (1 + 1e-6) and np.isfinite(threshold)
    shaped = knots_x.ndim == 1 and knots_y.ndim == 1 and 0 < len(knots_x) == len(knots_y)
    return bool(finite and shaped and np.isfinite(knots_x).all() and np.isfinite(knots_y).all()
                and not np.any(np.diff(knots_x) < 0))


def fit_calibration(logits: np.ndarray, labels: np.ndarray, classes: list[str], method: str, metric: str,
                    fallback_thresholds: np.ndarray, facts: dict[str, Any] | None = None) -> Calibration:
    """Fit a :class:`Calibration` per class on one split (a site's val) and re-choose the thresholds there.

    Args:
        logits: (N, C); labels: (N, C) 0/1, NaN unknown; method: ``temperature`` | ``isotonic``;
        metric: the threshold metric (``mcc`` | ``f1``); fallback_thresholds: (C,) kept, with no
        calibration, for a class whose known labels lack a positive or a negative.
    """
    if method not in CALIBRATION_METHODS:
        raise UserError(f"unknown calibration method '{method}' (valid: {', '.join(CALIBRATION_METHODS)})")
    temperature, knots, fitted = np.ones(len(classes)), [IDENTITY_KNOTS] * len(classes), [False] * len(classes)
    for c in range(len(classes)):
        known = ~np.isnan(labels[:, c])
        z, y = np.asarray(logits, np.float64)[known, c], labels[known, c]
        if len(np.unique(y)) < 2:
            continue
        fitted[c] = True
        if method == "temperature":
            temperature[c] = fit_temperature(z, y)
        else:
            knots[c] = fit_isotonic(expit(z), y)
    calibration = Calibration(method, list(classes), temperature, list(knots), np.zeros(len(classes)), fitted,
                              dict(facts or {}))
    chosen = choose_thresholds(calibration.probabilities(logits), labels, metric)
    calibration.thresholds = np.where(fitted, chosen, np.asarray(fallback_thresholds, np.float64))
    return calibration
