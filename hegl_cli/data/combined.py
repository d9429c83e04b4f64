"""Several caches trained as one (``data.path: [a, b, ...]``): one split seen across sources.

The classes are the union by canonical name (:mod:`hegl_cli.data.pathologies`), in the order the
sources name them. A class a source does not label is NaN on that source's images (no
classification loss, no false negative) and has no mask there, so HA uses masks wherever a source
has them. ``source`` gives each row's source; the trainer logs val AUC per source.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from hegl_cli.data.cache import CachedSplit
from hegl_cli.data.images import reading_shift
from hegl_cli.data.manifest import containers_of, intensity_rule_of
from hegl_cli.data.pathologies import canonical
from hegl_cli.errors import UserError
from hegl_cli.fs.outputs import safe_name, unique_names


def data_paths(value: str | list[str]) -> list[Path]:
    """``data.path`` as a list of cache folders (one or several), each named once."""
    paths = [Path(v) for v in (value if isinstance(value, list) else [value])]
    if not paths:
        raise UserError("config key 'data.path' lists no cache")
    seen: set[str] = set()
    for path in paths:
        key = str(path.resolve()) if path.exists() else str(path)
        if key in seen:
            raise UserError(f"config key 'data.path' names {path} twice")
        seen.add(key)
    return paths


def source_names(paths: list[Path]) -> list[str]:
    """A short, distinct, safe name per source (its folder's name), for metrics and reports."""
    return unique_names([safe_name(p.resolve().name if p.exists() else p.name, fallback="source") for p in paths])


def one_reading(splits: list[CachedSplit]) -> dict[str, Any]:
    """The intensity reading several caches share (their manifests' ``intensity``: the newest rule, the
    union of containers); one line when their settings differ or a cache reads its images under a rule
    that reads them otherwise than another's."""
    settings = {((s.manifest.get("intensity") or {}).get("mode"), (s.manifest.get("intensity") or {}).get("frames"))
                for s in splits}
    if len(settings) > 1:
        raise UserError("config key 'data.path': the caches were read under different intensity settings ("
                        + ", ".join(f"{s.root}: {s.manifest.get('intensity')}" for s in splits)
                        + "); prepare them under one")
    newest = max(intensity_rule_of(s.manifest) for s in splits)
    containers: set[str] = set()
    for s in splits:
        read = containers_of(s.manifest, s.root)
        shift = reading_shift(intensity_rule_of(s.manifest), newest, read)
        if shift:
            raise UserError(f"config key 'data.path': {s.root}: {shift}; prepare it again (`hegl prepare`) so "
                            "the caches are read alike")
        containers.update(read)
    return {**(splits[0].manifest.get("intensity") or {}), "rule": newest, "containers": sorted(containers)}


class CombinedSplit:
    """One split of several caches: images, labels (N, C) with NaN where a source does not label a
    class, masks (C, S, S) and has_mask (N, C) over the union of classes."""

    def __init__(self, splits: list[CachedSplit], names: list[str]):
        sizes = {s.image_size for s in splits}
        if len(sizes) > 1:
            raise UserError("config key 'data.path': the caches were prepared at different sizes ("
                            + ", ".join(f"{s.root}: {s.image_size} px" for s in splits) + "); prepare them at one size")
        reading = one_reading(splits)
        self.parts, self.source_names = splits, list(names)
        self.split = splits[0].split
        self.image_size = splits[0].image_size
        self.classes: list[str] = []
        for s in splits:
            for name in s.classes:
                if canonical(name) not in {canonical(c) for c in self.classes}:
                    self.classes.append(name)
        lookup = {canonical(c): k for k, c in enumerate(self.classes)}
        self.columns = [np.array([lookup[canonical(c)] for c in s.classes], dtype=int) for s in splits]
        self.offsets = np.cumsum([0] + [len(s) for s in splits])
        self.source = np.repeat(np.arange(len(splits)), [len(s) for s in splits])
        n, c = int(self.offsets[-1]), len(self.classes)
        self.labels = np.full((n, c), np.nan, np.float32)
        self.has_mask = np.zeros((n, c), bool)
        for k, s in enumerate(splits):
            rows = slice(self.offsets[k], self.offsets[k + 1])
            self.labels[rows, self.columns[k]] = s.labels
            self.has_mask[rows, self.columns[k]] = s.has_mask
        self.files = [f"{names[k]}/{f}" for k, s in enumerate(splits) for f in s.files]
        self.root = splits[0].root
        self.roots = [s.root for s in splits]
        self.cue = None
        self.metadata = _merged_metadata(splits, names)
        fingerprint = hashlib.sha256(json.dumps([s.manifest.get("fingerprint") for s in splits]).encode()).hexdigest()
        self.manifest: dict[str, Any] = {
            **splits[0].manifest, "classes": list(self.classes), "fingerprint": fingerprint[:16],
            "sources": [str(s.root) for s in splits],
            "splits": {name: sum(s.manifest["splits"].get(name, 0) for s in splits) for name in splits[0].manifest["splits"]},
            "synthetic": None,  # no counterfactual twin across sources
            "intensity": reading,
        }

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        k = int(self.source[index])
        return k, int(index - self.offsets[k])

    def image(self, index: int) -> np.ndarray:
        k, i = self._locate(index)
        return self.parts[k].image(i)

    def masks(self, index: int) -> np.ndarray:
        """uint8 (C, S, S) over the union of classes; zeros for a class the row's source does not mask."""
        k, i = self._locate(index)
        out = np.zeros((len(self.classes), self.image_size, self.image_size), np.uint8)
        out[self.columns[k]] = self.parts[k].masks(i)
        return out


def _merged_metadata(splits: list[CachedSplit], names: list[str]) -> dict[str, list[str]]:
    """Every source's metadata columns over all rows ('' where a source lacks a column), plus 'source'."""
    columns = sorted({c for s in splits for c in s.metadata})
    merged = {c: [v for s in splits for v in (s.metadata.get(c) or [""] * len(s))] for c in columns}
    merged["source"] = [names[k] for k, s in enumerate(splits) for _ in range(len(s))]
    return merged


def pixel_digests(split: CachedSplit) -> list[bytes]:
    """One digest per image of ``split`` (its cached pixels), to find the same image in two caches."""
    return [hashlib.blake2b(np.ascontiguousarray(split.images[i]).tobytes(), digest_size=16).digest()
            for i in range(len(split))]


def check_no_leak_across(paths: list[Path]) -> None:
    """Several caches trained as one: no val or test image of one is a train image of another (the
    same pixels: one dataset prepared twice with other seeds, or copies of its images). Each cache's
    own splits are disjoint by `hegl prepare`; this is the check across them. One line names it."""
    if len(paths) < 2:
        return
    train: dict[bytes, tuple[Path, str]] = {}
    splits_of: dict[Path, dict] = {}
    for path in paths:
        split = CachedSplit(path, "train")
        splits_of[path] = split.manifest["splits"]
        for name, digest in zip(split.files, pixel_digests(split)):
            train.setdefault(digest, (path, name))
    for path in paths:
        for held_out in ("val", "test"):
            if held_out not in splits_of[path]:
                continue
            split = CachedSplit(path, held_out)
            for name, digest in zip(split.files, pixel_digests(split)):
                other = train.get(digest)
                if other is not None and other[0] != path:
                    raise UserError(f"{path}: {held_out} image {name} is also a train image of {other[0]} ({other[1]}, "
                                    "the same pixels); training on both would show it to the model: prepare the "
                                    "caches with one split of the images, or train on one")


def open_sources(paths: list[Path], split: str) -> CachedSplit | CombinedSplit:
    """``split`` of one cache, or of several combined."""
    if len(paths) == 1:
        return CachedSplit(paths[0], split)
    return CombinedSplit([CachedSplit(p, split) for p in paths], source_names(paths))
