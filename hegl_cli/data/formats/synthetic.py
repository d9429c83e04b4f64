"""The built-in benchmark as a format: generated inside the cache, then read as ChestX-Det JSON.

The generator lives in :mod:`hegl_cli.data.benchmark`; this module is how `hegl prepare` (the
default ``--format synthetic``) reads it: which member and sizes the ``data`` config asks for, the
cache folder it goes to by default, and the ``data.*`` keys its manifest records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hegl_cli.config import Config
from hegl_cli.data.benchmark.family import MEMBERS
from hegl_cli.data.benchmark.generator import SyntheticSpec, write_synthetic_source
from hegl_cli.data.formats.chestxdet import parse_records
from hegl_cli.data.formats.registry import DatasetFormat, FormatRead, ReadRequest, register
from hegl_cli.data.records import SplitSource

# data.* keys of the built-in benchmark's prepare, by the generator's own names in the manifest
SYNTHETIC_KEYS = {"benchmark": "benchmark", "cue_free": "cue_free", "synthetic_train": "n_train",
                  "synthetic_test": "n_test", "synthetic_source_size": "size", "cue_strength": "cue_strength"}
SPLITS = ("train", "test", "test_counterfactual")


def synthetic_spec(cfg: Config) -> SyntheticSpec:
    """The built-in benchmark the ``data`` config asks for: its member's sizes unless set."""
    member = MEMBERS[cfg.data.benchmark]
    n_train = cfg.data.synthetic_train if cfg.was_set("data.synthetic_train") else member.n_train
    n_test = cfg.data.synthetic_test if cfg.was_set("data.synthetic_test") else member.n_test
    return SyntheticSpec(n_train=n_train, n_test=n_test, size=cfg.data.synthetic_source_size, seed=cfg.data.seed,
                         cue_strength=cfg.data.cue_strength, member=member.name, cue_free=cfg.data.cue_free)


def default_synthetic_folder(spec: SyntheticSpec) -> str:
    """``data/synthetic`` for v2 with its shortcuts; ``data/synthetic-<member>[-cuefree]`` otherwise."""
    suffix = ("" if spec.member == "v2" else f"-{spec.member}") + ("-cuefree" if spec.cue_free else "")
    return f"data/synthetic{suffix}"


def read(request: ReadRequest) -> FormatRead:
    """The benchmark the ``data`` config asks for (:func:`read_spec`)."""
    return read_spec(synthetic_spec(request.cfg), request.workers, request.progress)


def read_spec(spec: SyntheticSpec, workers: int = 0, progress: bool = True) -> FormatRead:
    """Nothing to read yet: the sources are generated into the cache's partial folder (``source/``)
    by ``generate``; the spec is the whole identity (the generator is deterministic)."""
    member = spec.benchmark
    found = FormatRead(sources=[], classes=list(member.classes), description="builtin:synthetic",
                       identity=[asdict(spec)])
    found.manifest = {"synthetic": {**asdict(spec), "benchmark": member.name, "about": member.about,
                                    "cues": list(member.cues), "positive_classes": list(member.positive),
                                    "counterfactual_of": {"test_counterfactual": "test"}}}

    def generate(partial: Path) -> None:
        written = write_synthetic_source(spec, partial / "source", workers, progress)
        for name in SPLITS:
            split = written[name]
            records = parse_records(split.annotations, member.classes, found.problems)
            found.sources.append(SplitSource(name, split.annotations, split.images, cue=split.cue, records=records))

    found.generate = generate
    return found


def settings_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    synthetic = manifest.get("synthetic")
    if not isinstance(synthetic, dict):
        return {}
    return {key: synthetic[name] for key, name in SYNTHETIC_KEYS.items() if synthetic.get(name) is not None}


register(DatasetFormat(
    "synthetic", read, about=__doc__.splitlines()[0], inputs="generated",
    default_out=lambda cfg: Path(default_synthetic_folder(synthetic_spec(cfg))),
    settings=tuple(SYNTHETIC_KEYS), settings_of=settings_of))
