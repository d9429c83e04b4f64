"""How a cache is built: the ``data`` options that shape it and what a prepare run did."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hegl_cli.config import DataConfig

# The intensity rule in a cache's fingerprint stays at 2, the rule caches were fingerprinted under
# when it changed last for every container; later rules are checked per container against the
# manifest (:func:`hegl_cli.data.manifest.outdated_reading`), so a rule that changes how DICOMs are
# read rebuilds a DICOM cache and leaves a cache of PNGs up to date.
FINGERPRINTED_RULE = 2


@dataclass
class PrepareOptions:
    """How to build a cache: the ``data`` keys that shape it (their defaults are the config's) and how to run."""

    image_size: int = DataConfig.image_size
    seed: int = DataConfig.seed
    val_fraction: float = DataConfig.val_fraction
    mask_source: str = DataConfig.mask_source
    strict: bool = False
    force: bool = False
    workers: int = 0  # 0 = one per CPU core
    progress: bool = True
    max_pixels: int = DataConfig.max_pixels  # larger images are skipped and reported
    patient_overlap: str = DataConfig.patient_overlap
    intensity: str = DataConfig.intensity
    frames: str = DataConfig.frames
    class_map: dict = field(default_factory=dict)
    views: list = field(default_factory=list)

    @classmethod
    def from_config(cls, data: DataConfig, **run: Any) -> PrepareOptions:
        """The options of the ``data`` config section, plus how to run (strict, force, workers, progress)."""
        return cls(image_size=data.image_size, seed=data.seed, val_fraction=data.val_fraction,
                   mask_source=data.mask_source, max_pixels=data.max_pixels, patient_overlap=data.patient_overlap,
                   intensity=data.intensity, frames=data.frames, class_map=dict(data.class_map),
                   views=list(data.views), **run)

    def shaping(self) -> list[Any]:
        """The options that change what the cache holds (not how it is built)."""
        return [self.image_size, self.seed, self.val_fraction, self.mask_source, self.max_pixels, self.patient_overlap,
                self.intensity, self.frames, FINGERPRINTED_RULE, sorted(self.class_map.items()), sorted(self.views)]



@dataclass
class PrepareResult:
    """What a prepare run did, for the summary and for tests."""

    out: Path
    manifest: dict[str, Any]
    skipped: bool = False  # True when the cache was already up to date
    problems: list[str] = field(default_factory=list)
    clipped_boxes: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    stale: bool = False  # True when an existing cache of the same inputs was rebuilt because they changed
    stale_reason: str | None = None  # why, in a line: its source changed, or its images are read otherwise now
