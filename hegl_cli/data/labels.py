"""What a label matrix says, in one place: 1 positive, 0 negative, NaN unknown.

Arrays are (N, C), numpy or torch alike (``NaN > 0.5`` is false in both, so unknown is never positive).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

Array = TypeVar("Array")


def positive(labels: Array) -> Array:
    """(N, C) bool: the label is known and positive."""
    return labels > 0.5


def annotated_positives(labels: Array, has_mask: Array) -> Array:
    """(N, C) bool: positive (image, class) pairs that have an expert mask: what alignment is measured on."""
    return positive(labels) & has_mask


def finding_free(labels: np.ndarray) -> np.ndarray:
    """(N,) bool: images known negative for every class (an unknown label is not negative)."""
    return (np.nan_to_num(labels, nan=1.0) < 0.5).all(1)
