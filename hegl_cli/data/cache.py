"""The prepared cache: one folder per split of memory-mappable arrays plus ``manifest.json``.

Layout of ``<cache>/<split>/``:
    images.npy      uint8 (N, S, S)           intensities, 0 = black
    labels.npy      float32 (N, C)            1 / 0, NaN = unknown
    has_mask.npy    bool (N, C)               whether (image, class) has an expert mask
    mask_index.npy  int32 (N,)                row of the image in masks.npy, -1 = no mask at all
    masks.npy       uint8 (M, C, ceil(S*S/8)) bit-packed masks of the M images that have one
    files.json      list of N file names (relative to the source's images folder)
    metadata.json   {column: N values}: what the data says of each image (sex, age, view, ...), if anything
    cue.npy         int8 (N,)                 synthetic data only: spurious cue present (1) or not

:class:`SplitWriter` streams images into preallocated memory-mapped arrays as they are decoded, so
a split never sits in RAM whole. Caches of 0.1.0 (masks.npy with a row per image, no mask_index)
still load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from hegl_cli.data.labels import annotated_positives, positive
from hegl_cli.data.manifest import MANIFEST, read_manifest
from hegl_cli.errors import UserError, first_line
from hegl_cli.fs.locks import FolderLock
from hegl_cli.fs.outputs import sha256_of
from hegl_cli.fs.tables import read_json

SKIPPED = "skipped.txt"  # one line per record or image the prepare left out, and why
METADATA = "metadata.json"  # per split: {column: one value per image} (sex, age, view, site, ...)
INVENTORY = "inventory.txt"  # every file prepare wrote into the cache, one relative path per line
CHECKSUMS = "checksums.json"  # {relative path: SHA-256} of every array and list: a damaged one is refused
PARTIAL_MARKER = ".hegl-partial"  # in <out>.partial-<pid> while prepare fills it


def write_inventory(folder: Path) -> None:
    """Record every file now in the cache ``folder`` (relative POSIX paths) as prepare's own."""
    folder = Path(folder)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    names = [n for n in names if n not in (INVENTORY, PARTIAL_MARKER, CHECKSUMS)]
    (folder / INVENTORY).write_text("".join(n + "\n" for n in names))
    sums = {n: sha256_of(folder / n) for n in names if "/" in n and not n.startswith("source/")}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=0))


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> digest, per process


def verify_split(cache: Path, split: str) -> None:
    """Refuse a split whose arrays or lists differ from what prepare wrote (a flipped bit, a truncated
    or replaced file), by the cache's checksums; caches from before them are not checked."""
    listed = Path(cache) / CHECKSUMS
    if not listed.is_file():
        return
    sums = read_json(listed, "cache checksums")
    if not isinstance(sums, dict):
        raise UserError(f"{listed}: not hegl's checksums of the cache (damaged); re-run `hegl prepare --force`")
    for name, expected in sums.items():
        if not str(name).startswith(f"{split}/"):
            continue
        path = Path(cache) / name
        try:
            info = path.stat()
        except OSError:
            raise UserError(f"{path}: missing from the cache; re-run `hegl prepare --force`") from None
        key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
        if key not in _VERIFIED:
            _VERIFIED[key] = sha256_of(path)
        if _VERIFIED[key] != expected:
            raise UserError(f"{path}: damaged (its content differs from what `hegl prepare` wrote: truncated, "
                            "altered or a flipped bit); re-run `hegl prepare --force`")


SPLIT_FILES = {"images.npy", "labels.npy", "has_mask.npy", "mask_index.npy", "masks.npy", "files.json",
               "metadata.json", "cue.npy"}


def foreign_files(cache: Path) -> list[Path]:
    """Files in ``cache`` that prepare did not write (a user's notes, a renamed copy): what ``--force``
    must keep. By the cache's inventory; a cache from before it, by the layout prepare writes (the
    manifest, the split folders its manifest names with their arrays, a generated ``source/``)."""
    cache = Path(cache)
    listed = cache / INVENTORY
    files = [p for p in cache.rglob("*") if p.is_file() or p.is_symlink() or not p.is_dir()]
    if listed.is_file() and not listed.is_symlink():
        ours = set(listed.read_text(errors="replace").splitlines()) | {INVENTORY, CHECKSUMS}
        return sorted(p for p in files if p.relative_to(cache).as_posix() not in ours)
    try:
        manifest = json.loads((cache / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = None
    return sorted(p for p in files if p.is_symlink() or not _in_legacy_layout(manifest, p.relative_to(cache).parts))


def _in_legacy_layout(manifest: Any, parts: tuple[str, ...]) -> bool:
    """A file a prepare from before the inventory wrote at ``parts`` (relative to the cache whose
    parsed ``manifest`` this is; None when it could not be read: nothing is prepare's then)."""
    if not isinstance(manifest, dict):
        return False
    splits = manifest.get("splits")
    if len(parts) == 1:
        return parts[0] in (MANIFEST, SKIPPED, CHECKSUMS)
    if parts[0] == "source":
        return manifest.get("source") == "builtin:synthetic"  # the generated images and annotations
    return isinstance(splits, dict) and len(parts) == 2 and parts[0] in splits and parts[1] in SPLIT_FILES


def lock_path(cache: Path) -> Path:
    """The cache's lock file, beside it (the cache folder itself is replaced as a whole)."""
    cache = Path(cache)
    return cache.with_name(f".{cache.name}.lock")


def cache_lock(cache: Path, shared: bool = False) -> FolderLock:
    """Exclusive for `hegl prepare` writing ``cache``; shared for every command that reads it (only a
    folder that is a prepared cache: a reader leaves no lock file beside anything else)."""
    if shared and not (Path(cache) / MANIFEST).is_file():
        raise UserError(f"no prepared dataset at {cache} (missing {MANIFEST}); run `hegl prepare` first")
    return FolderLock(lock_path(cache), f"prepared cache {cache}" if shared else f"prepare output {cache}", shared)


class SplitWriter:
    """Append decoded images to a split folder, row by row, into preallocated ``.npy`` files.

    Images and masks go straight to disk with plain file writes (masks only for images that have
    one), so resident memory does not grow with the split; labels, flags and names are small and
    stay in memory. :meth:`close` trims the files to the rows written.
    """

    def __init__(self, folder: Path, capacity: int, size: int, n_classes: int, with_cue: bool = False):
        self.folder, self.capacity, self.size, self.n_classes = Path(folder), max(1, capacity), size, n_classes
        self.folder.mkdir(parents=True, exist_ok=True)
        n_bytes = (size * size + 7) // 8
        self.images = _RowFile(self.folder / "images.npy", (self.capacity, size, size))
        self.masks = _RowFile(self.folder / "masks.npy", (self.capacity, n_classes, n_bytes))
        self.labels = np.zeros((self.capacity, n_classes), np.float32)
        self.has_mask = np.zeros((self.capacity, n_classes), bool)
        self.mask_index = np.full(self.capacity, -1, np.int32)
        self.cue = np.zeros(self.capacity, np.int8) if with_cue else None
        self.files: list[str] = []
        self.meta: list[dict[str, str]] = []

    def __len__(self) -> int:
        return len(self.files)

    def append(self, image: np.ndarray, labels: np.ndarray, packed_masks: np.ndarray, has_mask: np.ndarray,
               file_name: str, cue: int = 0, meta: dict[str, str] | None = None) -> None:
        """image uint8 (S, S); labels (C,); packed_masks uint8 (C, ceil(S*S/8)); has_mask bool (C,);
        meta: what the data says of the image (sex, age, view, site, ...)."""
        i = len(self.files)
        self.meta.append(dict(meta or {}))
        self.images.write(image)
        self.labels[i], self.has_mask[i] = labels, has_mask
        if has_mask.any():
            self.mask_index[i] = self.masks.rows
            self.masks.write(packed_masks)
        if self.cue is not None:
            self.cue[i] = cue
        self.files.append(file_name)

    def close(self) -> None:
        """Trim the row files and write the small arrays and the file list."""
        n = len(self.files)
        self.images.close()
        self.masks.close()
        np.save(self.folder / "labels.npy", self.labels[:n])
        np.save(self.folder / "has_mask.npy", self.has_mask[:n])
        np.save(self.folder / "mask_index.npy", self.mask_index[:n])
        (self.folder / "files.json").write_text(json.dumps(self.files))
        if self.cue is not None:
            np.save(self.folder / "cue.npy", self.cue[:n])
        columns = sorted({k for m in self.meta for k in m})
        if columns:
            (self.folder / METADATA).write_text(json.dumps({k: [str(m.get(k, "")) for m in self.meta] for k in columns}))

    def counts(self, classes: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        """(images with each finding, images with an expert mask for it), per class name."""
        n = len(self.files)
        positives, masked = supervision_counts(self.labels[:n], self.has_mask[:n])
        return ({c: int(positives[i]) for i, c in enumerate(classes)},
                {c: int(masked[i]) for i, c in enumerate(classes)})


def supervision_counts(labels: np.ndarray, has_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """labels (N, C) with NaN, has_mask (N, C) -> per class (images with the finding, those with a mask)."""
    return positive(labels).sum(0), annotated_positives(labels, has_mask).sum(0)


class _RowFile:
    """A uint8 ``.npy`` of ``shape`` (capacity first) filled row by row with ordinary file writes."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape, self.rows = path, shape, 0
        self.row_bytes = int(np.prod(shape[1:]))
        self.offset = _write_header(path, shape)
        self.handle = open(path, "r+b")
        self.handle.seek(self.offset)

    def write(self, row: np.ndarray) -> None:
        self.handle.write(np.ascontiguousarray(row, dtype=np.uint8).tobytes())
        self.rows += 1

    def close(self, chunk: int = 64 << 20) -> None:
        """Keep only the rows written: a new file with the right header, the data copied in chunks."""
        self.handle.close()
        if self.rows == self.shape[0]:
            return
        tmp = self.path.with_name(self.path.name + ".trim")
        offset = _write_header(tmp, (self.rows, *self.shape[1:]))
        with open(self.path, "rb") as src, open(tmp, "r+b") as dst:
            src.seek(self.offset)
            dst.seek(offset)
            left = self.rows * self.row_bytes
            while left:
                block = src.read(min(chunk, left))
                dst.write(block)
                left -= len(block)
        os.replace(tmp, self.path)


def _write_header(path: Path, shape: tuple[int, ...]) -> int:
    """Create ``path`` as a (sparse) uint8 ``.npy`` of ``shape``; returns where the data starts."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|u1", "fortran_order": False, "shape": shape})
        offset = handle.tell()
        handle.truncate(offset + int(np.prod(shape)))
    return offset


class CachedSplit:
    """Memory-mapped view of one split of a prepared cache."""

    def __init__(self, cache: Path | str, split: str):
        self.root = Path(cache)
        self.roots = [self.root]  # the caches it reads, as a CombinedSplit has several
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
        index = folder / "mask_index.npy"  # absent in 0.1.0 caches: one mask row per image
        self.mask_index = _load_array(index) if index.is_file() else None
        try:
            self.files: list[str] = json.loads((folder / "files.json").read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{folder / 'files.json'}: unreadable ({exc}); re-run `hegl prepare --force`") from exc
        cue_path = folder / "cue.npy"
        self.cue = _load_array(cue_path) if cue_path.is_file() else None
        self.metadata = _load_metadata(folder / METADATA, len(self.files))
        self._check_shapes(folder)
        verify_split(self.root, split)  # after the checks that name what is wrong more plainly

    def _check_shapes(self, folder: Path) -> None:
        n, size, c = len(self.files), self.image_size, len(self.classes)
        m = n if self.mask_index is None else int(self.mask_index.max(initial=-1)) + 1
        expected = {"images.npy": (self.images, (n, size, size)), "labels.npy": (self.labels, (n, c)),
                    "masks.npy": (self.packed_masks, (m, c, (size * size + 7) // 8)),
                    "has_mask.npy": (self.has_mask, (n, c))}
        if self.mask_index is not None:
            expected["mask_index.npy"] = (self.mask_index, (n,))
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
        """uint8 (C, S, S) of 0/1 (all zero for an image without any expert mask)."""
        size = self.image_size
        row = index if self.mask_index is None else int(self.mask_index[index])
        if row < 0:
            return np.zeros((len(self.classes), size, size), np.uint8)
        flat = np.unpackbits(self.packed_masks[row], axis=-1, count=size * size)
        return flat.reshape(len(self.classes), size, size)


class ClassView:
    """A split seen through some of its classes, in a given order (external validation): labels, masks
    and has_mask of those classes only; images, files and everything else are the split's."""

    def __init__(self, split: CachedSplit, indices: list[int] | tuple[int, ...]):
        self.base, self.indices = split, np.asarray(indices, dtype=int)
        self.classes = [split.classes[i] for i in self.indices]
        self.labels = split.labels[:, self.indices]
        self.has_mask = split.has_mask[:, self.indices]

    def masks(self, index: int) -> np.ndarray:
        """uint8 (C', S, S) for the view's classes."""
        return self.base.masks(index)[self.indices]

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


def _load_metadata(path: Path, n: int) -> dict[str, list[str]]:
    """{column: one value per image} ({} for a cache without metadata)."""
    if not path.is_file():
        return {}
    columns = read_json(path, "metadata file")
    if not isinstance(columns, dict) or any(not isinstance(v, list) or len(v) != n for v in columns.values()):
        raise UserError(f"{path}: not one value per image for each column; re-run `hegl prepare --force`")
    return {str(k): [str(x) for x in v] for k, v in columns.items()}


def _load_array(path: Path, mmap: bool = False) -> np.ndarray:
    """np.load with the file named in one line when it is missing, truncated or not an array."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: missing from the cache; re-run `hegl prepare --force`") from None
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path}: damaged or truncated ({first_line(exc, 120)}); re-run `hegl prepare --force`") from exc


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """(..., S, S) 0/1 -> (..., ceil(S*S/8)) uint8."""
    flat = masks.reshape(*masks.shape[:-2], -1).astype(bool)
    return np.packbits(flat, axis=-1)


