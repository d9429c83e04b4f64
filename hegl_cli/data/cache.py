"""The prepared cache: one folder per split of memory-mappable arrays plus ``manifest.json``.

Layout of ``<cache>/<split>/``:
    images.npy    uint8 (N, S, S)          intensities, 0 = black
    labels.npy    float32 (N, C)           1 / 0, NaN = unknown
    masks.npy     uint8 (N, C, ceil(S*S/8)) bit-packed expert masks (polygon or box)
    has_mask.npy  bool (N, C)              whether (image, class) has a mask
    files.json    list of N file names
    cue.npy       int8 (N,)                synthetic data only: spurious cue present (1) or not
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hegl_cli.errors import UserError

MANIFEST = "manifest.json"


@dataclass
class SplitArrays:
    """Everything one split stores, in memory."""

    images: np.ndarray  # uint8 (N, S, S)
    labels: np.ndarray  # float32 (N, C)
    masks: np.ndarray  # uint8 (N, C, S*S/8) packed
    has_mask: np.ndarray  # bool (N, C)
    files: list[str]
    cue: np.ndarray | None = None  # int8 (N,)

    def subset(self, index: np.ndarray) -> SplitArrays:
        return SplitArrays(
            self.images[index], self.labels[index], self.masks[index], self.has_mask[index],
            [self.files[i] for i in index], None if self.cue is None else self.cue[index],
        )


def write_split(folder: Path, arrays: SplitArrays) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", arrays.images)
    np.save(folder / "labels.npy", arrays.labels.astype(np.float32))
    np.save(folder / "masks.npy", arrays.masks)
    np.save(folder / "has_mask.npy", arrays.has_mask.astype(bool))
    (folder / "files.json").write_text(json.dumps(arrays.files))
    if arrays.cue is not None:
        np.save(folder / "cue.npy", arrays.cue.astype(np.int8))


def read_manifest(cache: Path) -> dict[str, Any]:
    """The manifest of a finished cache; a clear error if ``cache`` is not one."""
    path = Path(cache) / MANIFEST
    if not path.is_file():
        raise UserError(f"no prepared dataset at {cache} (missing {MANIFEST}); run `hegl prepare` first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: corrupt manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise UserError(f"{path}: not a hegl manifest (no 'splits')")
    return manifest


class CachedSplit:
    """Memory-mapped view of one split of a prepared cache."""

    def __init__(self, cache: Path | str, split: str):
        self.root = Path(cache)
        self.manifest = read_manifest(self.root)
        folder = self.root / split
        if split not in self.manifest["splits"] or not folder.is_dir():
            available = ", ".join(self.manifest["splits"])
            raise UserError(f"split '{split}' not in {self.root} (available: {available})")
        self.split = split
        try:
            self.classes: list[str] = list(self.manifest["classes"])
            self.image_size: int = int(self.manifest["image_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{self.root / MANIFEST}: not a hegl manifest (no valid {exc})") from exc
        self.images = _load_array(folder / "images.npy", mmap=True)
        self.labels = _load_array(folder / "labels.npy")
        self.packed_masks = _load_array(folder / "masks.npy", mmap=True)
        self.has_mask = _load_array(folder / "has_mask.npy")
        try:
            self.files: list[str] = json.loads((folder / "files.json").read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{folder / 'files.json'}: unreadable ({exc}); re-run `hegl prepare --force`") from exc
        cue_path = folder / "cue.npy"
        self.cue = _load_array(cue_path) if cue_path.is_file() else None
        self._check_shapes(folder)

    def _check_shapes(self, folder: Path) -> None:
        n, size, c = len(self.files), self.image_size, len(self.classes)
        expected = {"images.npy": (self.images, (n, size, size)), "labels.npy": (self.labels, (n, c)),
                    "masks.npy": (self.packed_masks, (n, c, (size * size + 7) // 8)),
                    "has_mask.npy": (self.has_mask, (n, c))}
        for name, (array, shape) in expected.items():
            if tuple(array.shape) != shape:
                raise UserError(f"{folder / name}: shape {tuple(array.shape)} does not match the manifest and "
                                f"files.json {shape}; the cache is damaged, re-run `hegl prepare --force`")

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> np.ndarray:
        """float32 (S, S) in [0, 1]."""
        return self.images[index].astype(np.float32) / 255.0

    def masks(self, index: int) -> np.ndarray:
        """uint8 (C, S, S) of 0/1."""
        size = self.image_size
        flat = np.unpackbits(self.packed_masks[index], axis=-1, count=size * size)
        return flat.reshape(len(self.classes), size, size)


def _load_array(path: Path, mmap: bool = False) -> np.ndarray:
    """np.load with the file named in one line when it is missing, truncated or not an array."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: missing from the cache; re-run `hegl prepare --force`") from None
    except (ValueError, OSError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: damaged or truncated ({reason}); re-run `hegl prepare --force`") from exc


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """(..., S, S) 0/1 -> (..., ceil(S*S/8)) uint8."""
    flat = masks.reshape(*masks.shape[:-2], -1).astype(bool)
    return np.packbits(flat, axis=-1)


def commit_folder(partial: Path, final: Path, force: bool) -> None:
    """Move a finished ``partial`` folder to ``final``; an old ``final`` is replaced only after."""
    if final.exists():
        if not force:
            shutil.rmtree(partial, ignore_errors=True)
            raise UserError(f"{final} already exists; pass --force to replace it")
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
