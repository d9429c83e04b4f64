"""Classification metrics (AUC, F1, MCC), validation-chosen thresholds and bootstrap intervals.

Arrays: ``probs`` and ``labels`` are (N, C); NaN labels are unknown and left out per class.

One rule for every macro figure (AUC, F1 and MCC alike): a class counts only when its known labels
in the split hold both values. A class with no positive (or no negative) there has no AUC, F1 or
MCC (``None``) and is left out of the macro mean; :data:`MACRO_RULE` states this in every report.
F1 and MCC come from one confusion-count implementation (checked against scikit-learn in tests).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

BOOTSTRAP_RESAMPLES = 2000  # eval.bootstrap's default: benchmarks/bootstrap_stability.py measures why


def ci_method(resamples: int, seed: int = 0) -> str:
    """How every 95% interval of a report was computed, in words."""
    if resamples <= 0:
        return "no intervals (eval.bootstrap=0)"
    return (f"95% percentile bootstrap over images: {resamples} resamples (eval.bootstrap), seed {seed}; each "
            "resample scored at the same thresholds, its macro under the macro rule")

MACRO_RULE = ("macro = mean over classes whose known labels in the split include both a positive and a "
              "negative; other classes have no AUC/F1/MCC and are left out of every macro figure")


def _known(labels: np.ndarray, c: int) -> np.ndarray:
    return ~np.isnan(labels[:, c])


def defined_classes(labels: np.ndarray) -> np.ndarray:
    """(C,) bool: the class's known labels hold both a positive and a negative."""
    known = ~np.isnan(labels)
    y = np.nan_to_num(labels) > 0.5
    return (y & known).any(0) & (~y & known).any(0)


def auc_per_class(probs: np.ndarray, labels: np.ndarray) -> list[float | None]:
    out: list[float | None] = []
    defined = defined_classes(labels)
    for c in range(labels.shape[1]):
        k = _known(labels, c)
        out.append(float(roc_auc_score(labels[k, c], probs[k, c])) if defined[c] else None)
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


def confusion_counts(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per class (C,) counts tp, fp, fn, tn over known labels, predicting positive when p >= t."""
    known = ~np.isnan(labels)
    y = np.nan_to_num(labels) > 0.5
    pred = probs >= np.asarray(thresholds)[None, :]
    return ((pred & y & known).sum(0), (pred & ~y & known).sum(0), (~pred & y & known).sum(0),
            (~pred & ~y & known).sum(0))


def f1_mcc_per_class(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> tuple[list, list]:
    """Per-class F1 and MCC at ``thresholds``; ``None`` for classes the macro rule leaves out."""
    tp, fp, fn, tn = confusion_counts(probs, labels, thresholds)
    f1, mcc = f1_from_counts(tp, fp, fn), mcc_from_counts(tp, fp, fn, tn)
    defined = defined_classes(labels)
    return ([float(f1[c]) if defined[c] else None for c in range(labels.shape[1])],
            [float(mcc[c]) if defined[c] else None for c in range(labels.shape[1])])


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def unscored_classes(labels: np.ndarray, classes: list[str]) -> dict[str, str]:
    """Class -> why the macro rule leaves it out of the split's scores (no known label, no positive or no
    negative, with the count of the other); the classes it scores are not listed."""
    known = ~np.isnan(labels)
    y = np.nan_to_num(labels) > 0.5
    positives, negatives = (y & known).sum(0), (~y & known).sum(0)
    out = {}
    for c, name in enumerate(classes):
        if not known[:, c].any():
            out[name] = "no known label in the split"
        elif positives[c] == 0:
            out[name] = f"no positive in the split, {int(negatives[c])} negatives"
        elif negatives[c] == 0:
            out[name] = f"no negative in the split, {int(positives[c])} positives"
    return out


def summarize(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, classes: list[str]) -> dict:
    """Macro and per-class AUC / F1 / MCC at the given thresholds (macro rule: :data:`MACRO_RULE`); the
    macro names the classes it covers (``classes``) and why it leaves the others out (``not_scored``)."""
    aucs = auc_per_class(probs, labels)
    f1s, mccs = f1_mcc_per_class(probs, labels, thresholds)
    per_class = {
        name: {"auc": aucs[c], "f1": f1s[c], "mcc": mccs[c], "threshold": float(thresholds[c]),
               "positives": int(np.nansum(labels[:, c])), "n": int((~np.isnan(labels[:, c])).sum())}
        for c, name in enumerate(classes)
    }
    macro = {"auc": _mean(aucs), "f1": _mean(f1s), "mcc": _mean(mccs),
             "classes": [name for c, name in enumerate(classes) if aucs[c] is not None],
             "not_scored": unscored_classes(labels, classes)}
    return {"macro": macro, "per_class": per_class, "macro_rule": MACRO_RULE}


def macro_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    value = _mean(auc_per_class(probs, labels))
    return float("nan") if value is None else value


def binary_cross_entropy(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy over every known (image, class) label; ``probs`` clipped to
    [eps, 1 - eps]; NaN when no label is known. ``probs``, ``labels``: (N, C)."""
    known = ~np.isnan(labels)
    if not known.any():
        return float("nan")
    p = np.clip(probs[known].astype(np.float64), eps, 1 - eps)
    y = labels[known] > 0.5
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def macro_scores(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    """Macro AUC, F1 and MCC under the macro rule (NaN where no class counts)."""
    f1s, mccs = f1_mcc_per_class(probs, labels, thresholds)
    values = {"auc": _mean(auc_per_class(probs, labels)), "f1": _mean(f1s), "mcc": _mean(mccs)}
    return {k: float("nan") if v is None else v for k, v in values.items()}


BOOTSTRAP_CHUNK = 4_000_000  # resampled (image, resample) cells held at once


def bootstrap_resamples(rows: int, n: int, seed: int = 0):
    """The ``n`` bootstrap resamples of ``rows`` images every interval of a report shares (same seed,
    same resamples), in chunks: yields (b, rows) index arrays, one draw of ``rows`` indices per resample."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, BOOTSTRAP_CHUNK // max(rows, 1))
    for start in range(0, n, per_chunk):
        yield np.stack([rng.integers(0, rows, rows) for _ in range(min(per_chunk, n - start))])


def _resampled_auc(scores: np.ndarray, positive: np.ndarray, known: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(b,) AUC of one class in each resample ``idx`` (b, N): Mann-Whitney with tied scores given their
    average rank (as scikit-learn's); NaN where the resample lacks a positive or a negative."""
    from scipy.stats import rankdata

    kept = known[idx]
    ranks = rankdata(np.where(kept, scores[idx], np.inf), axis=1)  # unknowns rank above every known score
    pos = positive[idx] & kept
    n1, n0 = pos.sum(1), (kept & ~positive[idx]).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * pos).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def _resampled_macro(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, idx: np.ndarray
                     ) -> dict[str, np.ndarray]:
    """(b,) macro AUC, F1 and MCC of each resample ``idx`` (b, N), under :data:`MACRO_RULE` per resample."""
    known = ~np.isnan(labels)
    positive = np.nan_to_num(labels) > 0.5
    pred = probs >= np.asarray(thresholds)[None, :]
    per_class: dict[str, list[np.ndarray]] = {"auc": [], "f1": [], "mcc": []}
    for c in range(labels.shape[1]):
        kept, pos, hit = known[idx, c], positive[idx, c], pred[idx, c]
        tp, fp = (hit & pos & kept).sum(1), (hit & ~pos & kept).sum(1)
        fn, tn = (~hit & pos & kept).sum(1), (~hit & ~pos & kept).sum(1)
        defined = ((tp + fn) > 0) & ((tn + fp) > 0)
        per_class["auc"].append(_resampled_auc(probs[:, c].astype(np.float64), positive[:, c], known[:, c], idx))
        per_class["f1"].append(np.where(defined, f1_from_counts(tp, fp, fn), np.nan))
        per_class["mcc"].append(np.where(defined, mcc_from_counts(tp, fp, fn, tn), np.nan))
    out = {}
    for key, columns in per_class.items():
        table = np.stack(columns, axis=1)
        counted = np.isfinite(table).sum(1)
        out[key] = np.where(counted > 0, np.nansum(table, axis=1) / np.maximum(counted, 1), np.nan)
    return out


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> list[float] | None:
    """The percentile interval of the finite ``samples`` (None when there is none)."""
    samples = np.asarray(samples, dtype=np.float64)
    if not np.isfinite(samples).any():
        return None
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return [float(np.nanpercentile(samples, lo)), float(np.nanpercentile(samples, hi))]


def bootstrap_macro(
    probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, n: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap interval (resampling images, :func:`bootstrap_resamples`) of macro AUC, F1 and
    MCC at fixed ``thresholds``; each resample's macro follows :data:`MACRO_RULE`."""
    if n <= 0 or len(probs) < 2:
        return {"auc": None, "f1": None, "mcc": None}
    samples: dict[str, list[np.ndarray]] = {"auc": [], "f1": [], "mcc": []}
    for idx in bootstrap_resamples(len(probs), n, seed):
        for key, values in _resampled_macro(probs, labels, thresholds, idx).items():
            samples[key].append(values)
    return {k: percentile_interval(np.concatenate(v), level) for k, v in samples.items()}


def sensitivity_specificity(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray
                            ) -> tuple[list[float | None], list[float | None]]:
    """Per class, sensitivity tp / (tp + fn) and specificity tn / (tn + fp) at ``thresholds``; ``None``
    for classes the macro rule leaves out."""
    tp, fp, fn, tn = confusion_counts(probs, labels, thresholds)
    defined = defined_classes(labels)
    sens = [float(tp[c] / (tp[c] + fn[c])) if defined[c] else None for c in range(labels.shape[1])]
    spec = [float(tn[c] / (tn[c] + fp[c])) if defined[c] else None for c in range(labels.shape[1])]
    return sens, spec


def bootstrap_statistics(statistics, rows: int, n: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = 0.95
                         ) -> dict[str, list[float] | None]:
    """Percentile bootstrap interval of every figure ``statistics(idx)`` returns ({name: float or NaN})
    over ``n`` resamples of ``rows`` images, the resamples :func:`bootstrap_macro` draws (same seed)."""
    if n <= 0 or rows < 2:
        return {}
    samples: dict[str, list[float]] = {}
    for chunk in bootstrap_resamples(rows, n, seed):
        for idx in chunk:
            for key, value in statistics(idx).items():
                samples.setdefault(key, []).append(np.nan if value is None else float(value))
    return {k: percentile_interval(np.array(v), level) for k, v in samples.items()}
