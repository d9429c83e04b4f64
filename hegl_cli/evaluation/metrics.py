"""Classification metrics (AUC, F1, MCC), validation-chosen thresholds and bootstrap intervals.

Arrays: ``probs`` and ``labels`` are (N, C); NaN labels are unknown and left out per class.
A class whose known labels are all one value has no AUC (``None``) and is left out of the macro.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, matthews_corrcoef, roc_auc_score


def _known(labels: np.ndarray, c: int) -> np.ndarray:
    return ~np.isnan(labels[:, c])


def auc_per_class(probs: np.ndarray, labels: np.ndarray) -> list[float | None]:
    out: list[float | None] = []
    for c in range(labels.shape[1]):
        k = _known(labels, c)
        y = labels[k, c]
        out.append(float(roc_auc_score(y, probs[k, c])) if len(np.unique(y)) == 2 else None)
    return out


def _confusion_sweep(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """For every candidate threshold (predict positive when score >= t): thresholds, tp, fp, fn, tn."""
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(t)[distinct]
    fp = (distinct + 1) - tp
    pos, neg = t.sum(), len(t) - t.sum()
    thresholds = s[distinct]
    # Also allow "predict nothing positive".
    thresholds = np.r_[np.inf, thresholds]
    tp, fp = np.r_[0, tp], np.r_[0, fp]
    return thresholds, tp, fp, pos - tp, neg - fp


def mcc_from_counts(tp, fp, fn, tn) -> np.ndarray:
    tp, fp, fn, tn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn, tn))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return np.where(denom > 0, (tp * tn - fp * fn) / np.where(denom > 0, denom, 1), 0.0)


def f1_from_counts(tp, fp, fn) -> np.ndarray:
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)


def choose_thresholds(probs: np.ndarray, labels: np.ndarray, metric: str = "mcc") -> np.ndarray:
    """Per class, the threshold (predict positive when p >= t) that maximises MCC or F1.

    Ties go to the highest threshold; a class without both labels gets 0.5. Call this on the
    validation split only: the returned thresholds travel with the checkpoint.
    """
    out = np.full(labels.shape[1], 0.5, dtype=np.float64)
    for c in range(labels.shape[1]):
        k = _known(labels, c)
        y = labels[k, c].astype(np.int64)
        if len(np.unique(y)) < 2:
            continue
        thresholds, tp, fp, fn, tn = _confusion_sweep(probs[k, c].astype(np.float64), y)
        score = mcc_from_counts(tp, fp, fn, tn) if metric == "mcc" else f1_from_counts(tp, fp, fn)
        best = int(np.argmax(score))
        out[c] = thresholds[best] if np.isfinite(thresholds[best]) else 1.0 + 1e-9
    return out


def f1_mcc_per_class(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> tuple[list, list]:
    f1s, mccs = [], []
    for c in range(labels.shape[1]):
        k = _known(labels, c)
        y, pred = labels[k, c].astype(int), (probs[k, c] >= thresholds[c]).astype(int)
        if len(y) == 0:
            f1s.append(None)
            mccs.append(None)
            continue
        f1s.append(float(f1_score(y, pred, zero_division=0)))
        mccs.append(float(matthews_corrcoef(y, pred)) if len(np.unique(y)) == 2 else None)
    return f1s, mccs


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarize(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, classes: list[str]) -> dict:
    """Macro and per-class AUC / F1 / MCC at the given thresholds."""
    aucs = auc_per_class(probs, labels)
    f1s, mccs = f1_mcc_per_class(probs, labels, thresholds)
    per_class = {
        name: {"auc": aucs[c], "f1": f1s[c], "mcc": mccs[c], "threshold": float(thresholds[c]),
               "positives": int(np.nansum(labels[:, c])), "n": int((~np.isnan(labels[:, c])).sum())}
        for c, name in enumerate(classes)
    }
    return {"macro": {"auc": _mean(aucs), "f1": _mean(f1s), "mcc": _mean(mccs)}, "per_class": per_class}


def macro_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    value = _mean(auc_per_class(probs, labels))
    return float("nan") if value is None else value


def bootstrap_macro(
    probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, n: int = 200, seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap interval (resampling images) for macro AUC, F1 and MCC."""
    if n <= 0 or len(probs) < 2:
        return {"auc": None, "f1": None, "mcc": None}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {"auc": [], "f1": [], "mcc": []}
    for _ in range(n):
        idx = rng.integers(0, len(probs), len(probs))
        p, y = probs[idx], labels[idx]
        samples["auc"].append(_mean(auc_per_class(p, y)) or np.nan)
        f1s, mccs = _fast_f1_mcc(p, y, thresholds)
        samples["f1"].append(f1s)
        samples["mcc"].append(mccs)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: [float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi))] for k, v in samples.items()}


def _fast_f1_mcc(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """Macro F1 and MCC from confusion counts (same values as scikit-learn, much faster)."""
    known = ~np.isnan(labels)
    y = np.nan_to_num(labels).astype(bool)
    pred = probs >= thresholds[None, :]
    tp = (pred & y & known).sum(0)
    fp = (pred & ~y & known).sum(0)
    fn = (~pred & y & known).sum(0)
    tn = (~pred & ~y & known).sum(0)
    both = (tp + fn > 0) & (fp + tn > 0)
    f1 = f1_from_counts(tp, fp, fn)
    mcc = mcc_from_counts(tp, fp, fn, tn)
    return float(f1[known.any(0)].mean()), float(mcc[both].mean()) if both.any() else float("nan")
