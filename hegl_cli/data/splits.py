"""Seeded splits: by image, or by patient wherever the data names patients (no patient in two splits)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hegl_cli.data.records import Record


def carve_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train_index, val_index) over ``n`` images, both sorted."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fraction * n)) if n > 1 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def split_by_group(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(kept, held out) records: about ``fraction`` of the images held out, whole patients only.

    Records without a patient are each their own group; when no record names a patient this is
    exactly :func:`carve_validation` over the records.
    """
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(record.patient if record.patient is not None else f"\0{i}", []).append(i)
    if all(len(members) == 1 for members in groups.values()):
        kept, held = carve_validation(len(records), fraction, seed)
    else:
        keys = sorted(groups)
        order = np.random.default_rng(seed).permutation(len(keys))
        target, taken, chosen = fraction * len(records), 0, []
        for k in order:
            if taken >= target:
                break
            chosen.append(keys[k])
            taken += len(groups[keys[k]])
        held = np.sort(np.array([i for key in chosen for i in groups[key]], dtype=int))
        kept = np.setdiff1d(np.arange(len(records)), held)
    return [records[i] for i in kept], [records[i] for i in held]


TEST_SEED_OFFSET = 7919  # the test split is another draw than validation's from the same data.seed


def hold_out_test(records: list[Record], seed: int, fraction: float = 0.2) -> tuple[list[Record], list[Record]]:
    """(train, test) for data without an official test split: about ``fraction`` held out by patient,
    drawn apart from the validation split (which :func:`split_by_group` carves from train with ``seed``)."""
    return split_by_group(records, fraction, seed + TEST_SEED_OFFSET)
