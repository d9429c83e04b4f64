"""The cache's manifest (``manifest.json``): its one owner, which writes it and says what it means.

`hegl prepare` writes it last, into the partial folder (:func:`cache_manifest`); readers open it
with :func:`read_manifest`; what it records about how the cache was made (the prepare-only
``data.*`` keys, the intensity rule, the counterfactual twins) is interpreted here and nowhere else,
so `hegl train` can take those facts into the run's config (:func:`adopt_cache_facts`).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from hegl_cli import __version__
from hegl_cli.config import Config, DataConfig
from hegl_cli.data.formats.registry import prepared_settings, settings_owners
from hegl_cli.data.images import CONTAINERS, INTENSITY_RULE, container_by_name, reading_shift
from hegl_cli.errors import UserError
from hegl_cli.fs.tables import read_json

MANIFEST = "manifest.json"


class CacheFacts(Protocol):
    """What :func:`adopt_cache_facts` reads of a split (one cache's, or several combined)."""

    root: Path
    image_size: int
    classes: list[str]
    manifest: dict[str, Any]


def read_manifest(cache: Path) -> dict[str, Any]:
    """The manifest of a finished cache; a clear error if ``cache`` is not one."""
    path = Path(cache) / MANIFEST
    if not path.is_file() and not path.is_dir():
        raise UserError(f"no prepared dataset at {cache} (missing {MANIFEST}); run `hegl prepare` first")
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise UserError(f"{path}: not a hegl manifest (no 'splits')")
    problem = manifest_problem(manifest)
    if problem:
        raise UserError(f"{path}: {problem} (a damaged manifest); re-run `hegl prepare --force`")
    return manifest


_HINTS = typing.get_type_hints(DataConfig)
INTENSITY_SETTINGS = {"mode": typing.get_args(_HINTS["intensity"]), "frames": typing.get_args(_HINTS["frames"])}


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What in a manifest the readers would trip on (None: nothing): the entries they index by type,
    and the intensity settings a run adopts (a wrong one made every later use of the run fail)."""
    for key in ("intensity", "prepared_with", "identity"):
        if not isinstance(manifest.get(key, {}), dict):
            return f"'{key}' is not a mapping"
    classes = manifest.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return "'classes' is not a list of class names"
    synthetic = manifest.get("synthetic")
    if synthetic is not None and (not isinstance(synthetic, dict)
                                  or not isinstance(synthetic.get("counterfactual_of", {}), dict)):
        return "'synthetic' is not the generator's record (a mapping with 'counterfactual_of' a mapping)"
    for key, allowed in INTENSITY_SETTINGS.items():
        value = (manifest.get("intensity") or {}).get(key)
        if value is not None and value not in allowed:
            return f"'intensity.{key}' is {value!r} (valid: {', '.join(allowed)})"
    return None


def cache_manifest(*, fmt: str, classes: list[str], original_names: dict[str, list[str]], options: Any,
                   split_sizes: dict[str, int], counts: dict[str, tuple[dict, dict]], source: Any, clipped: int,
                   skipped: int, warnings: list[str], identity: Any, extra: dict[str, Any] | None,
                   containers: set[str]) -> dict[str, Any]:
    """The manifest of a cache about to be published (``options``: its :class:`PrepareOptions`;
    ``counts``: per split, (positives, with a mask) per class; ``identity``: its :class:`Identity`;
    ``containers``: how its images were read, ``dicom`` and/or ``pillow``)."""
    return {
        "format": fmt,
        "classes": classes,
        "original_names": original_names,
        "image_size": options.image_size,
        "splits": split_sizes,
        "class_counts": {name: c[0] for name, c in counts.items()},
        "mask_counts": {name: c[1] for name, c in counts.items()},
        "source": source,
        "mask_source": options.mask_source,
        "seed": options.seed,
        "val_fraction": options.val_fraction,
        "patient_overlap": options.patient_overlap,
        "prepared_with": {"val_fraction": options.val_fraction, "mask_source": options.mask_source,
                          "patient_overlap": options.patient_overlap, "class_map": dict(options.class_map),
                          "views": list(options.views)},
        "intensity": {"rule": INTENSITY_RULE, "mode": options.intensity, "frames": options.frames,
                      "containers": sorted(containers)},
        "clipped_boxes": clipped,
        "skipped": skipped,
        "warnings": warnings,
        "hegl_version": __version__,
        "fingerprint": identity.fingerprint,
        "identity": {"inputs": identity.inputs, "content": identity.content},
        **(extra or {}),
    }


def twin_splits(manifest: Mapping[str, Any] | None) -> dict[str, str]:
    """{twin split: the split it is the counterfactual of} (the built-in benchmark's; {} elsewhere)."""
    return dict(((manifest or {}).get("synthetic") or {}).get("counterfactual_of", {}))


def counterfactual_split(manifest: dict[str, Any], split: str) -> str | None:
    """Name of the split that is ``split`` with only the spurious cue toggled, if the dataset has one."""
    return next((name for name, of in twin_splits(manifest).items() if of == split and name in manifest["splits"]),
                None)


def intensity_rule_of(manifest: dict[str, Any]) -> int:
    """The intensity contract a cache's images were read under (1: caches from before it was recorded,
    and a value that is not a whole number, so such a cache counts as read under the oldest rule)."""
    rule = (manifest.get("intensity") or {}).get("rule", 1)
    return rule if isinstance(rule, int) and not isinstance(rule, bool) and rule >= 1 else 1


def containers_of(manifest: dict[str, Any], cache: Path) -> list[str]:
    """How a cache's images were read (``dicom``, ``pillow``): as its manifest records, or, for a cache
    from before that was recorded, as its files' names imply (:func:`container_by_name`)."""
    recorded = (manifest.get("intensity") or {}).get("containers")
    if isinstance(recorded, list):
        return sorted(str(c) for c in recorded)
    names: set[str] = set()
    for split in manifest.get("splits", {}):
        try:
            files = read_json(Path(cache) / split / "files.json", "file list")
        except UserError:
            files = None
        if not isinstance(files, list):
            return list(CONTAINERS)  # unreadable: assume the worst, so the cache is rebuilt or named
        names.update(container_by_name(str(n)) for n in files)
    return sorted(names)


def outdated_reading(manifest: dict[str, Any], cache: Path) -> str | None:
    """How this hegl reads a cache's images otherwise than its intensity rule did, in a line (None: the
    cache reads as it would today)."""
    return reading_shift(intensity_rule_of(manifest), INTENSITY_RULE, containers_of(manifest, cache))


def outdated_cache_note(manifest: dict[str, Any], cache: Path) -> str | None:
    """A line when this hegl reads a cache's images otherwise than its prepare did (None: alike)."""
    shift = outdated_reading(manifest, cache)
    return None if shift is None else (f"{cache} was prepared under another intensity rule ({shift}); "
                                       "`hegl prepare` with the same inputs rebuilds it")


def prepared_with(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The prepare-only ``data.*`` keys a cache was made with, as far as its manifest records them:
    the shared ones, and those its format owns (:mod:`hegl_cli.data.formats.registry`)."""
    read = manifest.get("intensity") or {}
    facts = {"intensity": read.get("mode"), "frames": read.get("frames"), **(manifest.get("prepared_with") or {}),
             **prepared_settings(manifest)}
    return {k: v for k, v in facts.items() if v is not None}


def adopt_cache_facts(cfg: Config, split: CacheFacts) -> None:
    """The cache owns what prepare decided (image size, classes, intensity rule, val fraction, class
    map, views, the format's own settings such as the benchmark member): ``cfg`` takes the cache's
    values, so the run's config records what was trained; a value the user set that differs is
    refused, naming both, and so is a key of another format's prepare set for this cache."""
    if cfg.data.image_size != split.image_size:
        if cfg.was_set("data.image_size"):
            raise UserError(f"{split.root} was prepared at {split.image_size} px but data.image_size is "
                            f"{cfg.data.image_size}; re-run `hegl prepare --image-size {cfg.data.image_size}` "
                            f"or leave data.image_size unset (the cache's size is used)")
        cfg.data.image_size = split.image_size
    cfg.data.classes = list(split.classes)  # data.classes chooses classes at prepare; a model learns the cache's
    facts = prepared_with(split.manifest)
    for key, cached in facts.items():
        if getattr(cfg.data, key) == cached:
            continue
        if cfg.was_set(f"data.{key}"):
            raise UserError(f"{split.root} was prepared with data.{key}={cached} but data.{key} is "
                            f"{getattr(cfg.data, key)}; data.{key} is a setting of `hegl prepare`: prepare a "
                            f"cache with it (and train on that), or leave data.{key} unset")
        setattr(cfg.data, key, cached)  # the config records the cache's; explain/predict read new images alike
    for key, owner in sorted(settings_owners().items()):
        if key not in facts and cfg.was_set(f"data.{key}"):
            raise UserError(f"data.{key} is a setting of `hegl prepare --format {owner}`, and {split.root} is a "
                            f"{split.manifest.get('format', 'other')} cache; leave data.{key} unset")
