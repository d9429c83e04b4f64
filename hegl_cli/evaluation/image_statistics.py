"""Can a dataset's labels be read without looking at the finding? A position-free audit.

:func:`global_statistics` turns an image into features that ignore where anything is (intensity
histogram and quantiles, moments, gradient-magnitude histogram and moments);
:func:`position_free_auc` fits a logistic regression on them per class and reports its AUC on
another set of images. A class such a classifier separates well carries a global cue (exposure,
scanner, the amount of bright tissue), not only the spatial evidence of the lesion.
"""

from __future__ import annotations

import numpy as np


def global_statistics(image: np.ndarray) -> np.ndarray:
    """(86,) position-free features of an (H, W) image in [0, 1]."""
    image = np.asarray(image, dtype=np.float64)
    hist = np.histogram(image, bins=32, range=(0, 1))[0] / image.size
    quantiles = np.quantile(image, np.linspace(0.02, 0.98, 25))
    gy, gx = np.gradient(image)
    grad = np.hypot(gx, gy)
    grad_hist = np.histogram(grad, bins=16, range=(0, 0.3))[0] / image.size
    m, s = image.mean(), max(image.std(), 1e-12)
    moments = [m, s, ((image - m) ** 3).mean() / s**3, ((image - m) ** 4).mean() / s**4, grad.mean(), grad.std()]
    return np.concatenate([hist, quantiles, grad_hist, moments])


def position_free_auc(
    train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, test_labels: np.ndarray,
) -> list[float | None]:
    """Per class: test AUC of a logistic regression on standardised features fitted on train.

    features (N, F); labels (N, C) 0/1. None for a class without both labels on either side.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    aucs: list[float | None] = []
    for k in range(train_labels.shape[1]):
        y_train, y_test = train_labels[:, k], test_labels[:, k]
        if len(set(y_train.tolist())) < 2 or len(set(y_test.tolist())) < 2:
            aucs.append(None)
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(train_features, y_train)
        aucs.append(float(roc_auc_score(y_test, model.predict_proba(test_features)[:, 1])))
    return aucs
