"""What a run trains on, checked before the first step: the train and val splits (one cache or several),
the val split's context swap for selection, the augmentation that must be able to apply, and the lines
that describe the supervision."""

from __future__ import annotations

import numpy as np

from hegl_cli.config import Config
from hegl_cli.data.cache import CachedSplit, supervision_counts
from hegl_cli.data.combined import CombinedSplit, check_no_leak_across, data_paths, open_sources
from hegl_cli.data.dataset import XrayDataset
from hegl_cli.data.labels import finding_free
from hegl_cli.data.manifest import adopt_cache_facts
from hegl_cli.data.swap import context_swap
from hegl_cli.errors import UserError
from hegl_cli.evaluation.classification import macro_auc


def load_train_val(cfg: Config) -> tuple[CachedSplit | CombinedSplit, CachedSplit | CombinedSplit]:
    """The train and val splits (of one cache, or several combined: each cache's own val); selection
    never falls back to test. The cache decides the image size: ``cfg.data.image_size`` becomes the
    cache's, unless the user set another (then it is refused)."""
    paths = data_paths(cfg.data.path)
    for data in paths:
        train_split = CachedSplit(data, "train")
        if "val" not in train_split.manifest["splits"]:
            raise UserError(f"{data} has no 'val' split, and model selection and thresholds never use test: "
                            f"re-run `hegl prepare --force` with data.val_fraction > 0 (e.g. --set "
                            "data.val_fraction=0.15), or give a val split (--annotations val=... --images val=...)")
        if len(train_split) == 0:
            raise UserError(f"{data}: the train split is empty")
        if len(CachedSplit(data, "val")) == 0:
            raise UserError(f"{data}: the val split is empty; re-run `hegl prepare --force` with a larger "
                            "data.val_fraction")
    check_no_leak_across(paths)
    train_split, val_split = open_sources(paths, "train"), open_sources(paths, "val")
    check_val_scorable(val_split, paths)
    adopt_cache_facts(cfg, train_split)
    return train_split, val_split


def check_val_scorable(val_split, paths: list) -> None:
    """Refuse a val split on which no epoch could be scored: no class has both a positive and a
    negative image there, so its macro AUC is undefined and no checkpoint would ever be kept."""
    labels = np.asarray(val_split.labels, dtype=np.float64)  # (N, C), NaN where unknown
    scorable = [(np.nansum(column == 1) > 0) and (np.nansum(column == 0) > 0) for column in labels.T]
    if not any(scorable):
        where = ", ".join(str(p) for p in paths)
        raise UserError(f"{where}: the val split ({len(labels)} image(s)) has no class with both a positive and a "
                        "negative image, so no epoch can be scored and no checkpoint kept; prepare it again with a "
                        "larger data.val_fraction (or more images)")



def per_source_auc(split, probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``val_auc_<source>``: macro AUC on each source's own val images (several caches only)."""
    if not isinstance(split, CombinedSplit):
        return {}
    return {f"val_auc_{name}": macro_auc(probs[split.source == k], labels[split.source == k])
            for k, name in enumerate(split.source_names)}



def check_augmentation(dataset: XrayDataset, cfg: Config) -> None:
    """Refuse an augmentation that could never apply to this train split (the run would say it
    trained with it)."""
    if cfg.data.augment != "background_swap":
        return
    # a finding-free image is "swappable" too (nothing to keep), but swapping it changes nothing
    useful = dataset.swappable & np.asarray(dataset.split.has_mask).any(1)
    if len(dataset.donors) == 0 or not useful.any():
        raise UserError(f"{cfg.data.path}: data.augment=background_swap needs finding-free train images to take the "
                        f"background from and images with masks whose findings all have one; this train split has "
                        f"{len(dataset.donors)} finding-free and {int(useful.sum())} such images "
                        "(set data.augment=none)")



def val_context_swap(val: CachedSplit, cfg: Config):
    """The val split's context swap (see :mod:`hegl_cli.data.swap`), or None when it cannot be built.

    ``train.select_on=val_swapped`` needs it: an error names what the val split lacks.
    """
    perturb = context_swap(val, cfg.data.seed) if val.has_mask.any() else None
    if perturb is None and cfg.train.select_on == "val_swapped":
        raise UserError(f"{cfg.data.path}: train.select_on=val_swapped needs val images with expert masks and "
                        "finding-free val images to take the context from; this val split has "
                        f"{int(val.has_mask.any(1).sum())} masked and "
                        f"{int(finding_free(val.labels).sum())} finding-free images")
    return perturb



def describe_supervision(split: CachedSplit) -> str:
    """One line: how many train images carry each finding and how many of those an expert mask (HA)."""
    positives, masked = supervision_counts(split.labels, split.has_mask)
    per_class = ", ".join(f"{c} {p}/{m}" for c, p, m in zip(split.classes, positives, masked))
    return (f"train: {len(split)} images, {int(split.has_mask.any(1).sum())} with an expert mask; per class "
            f"(images/with mask): {per_class}")
