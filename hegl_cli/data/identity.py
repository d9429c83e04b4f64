"""What a cache was made from (``inputs``) and what those inputs held (``content``): the two
fingerprints that decide whether `hegl prepare` has anything to do (see :mod:`hegl_cli.data.build`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hegl_cli.data.manifest import MANIFEST, read_manifest
from hegl_cli.data.records import SplitSource
from hegl_cli.errors import UserError
from hegl_cli.fs.outputs import sha256_of

HASH_IMAGES_UP_TO = 512 << 20  # bytes of images under which the content fingerprint hashes them all



@dataclass(frozen=True)
class Identity:
    """What a cache was made from and how (``inputs``), and what those inputs held (``content``)."""

    inputs: str
    content: str

    @property
    def fingerprint(self) -> str:
        return fingerprint([self.inputs, self.content])



def fingerprint(parts: Iterable[Any]) -> str:
    """A stable hash of everything that determines the cache's content."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]



def image_paths(sources: list[SplitSource]) -> list[Path]:
    return [src.images / r.file_name for src in sources for r in (src.records or [])]



def content_fingerprint(sources: list[SplitSource], extra_files: Iterable[Path] = ()) -> tuple[str, str]:
    """(fingerprint, how) of what the inputs hold: the annotation files' bytes, and every image's size
    and modification time, or its bytes when all images together are at most :data:`HASH_IMAGES_UP_TO`."""
    files = sorted({str(p) for p in [*(s.annotations for s in sources), *extra_files] if Path(p).is_file()})
    parts: list[Any] = [[f, sha256_of(Path(f))] for f in files]
    stamps = []
    for path in image_paths(sources):
        try:
            stat = path.stat()
            stamps.append((str(path), stat.st_size, stat.st_mtime_ns))
        except OSError:
            stamps.append((str(path), None, None))
    total = sum(s[1] or 0 for s in stamps)
    how = "sha256" if total <= HASH_IMAGES_UP_TO else "size+mtime"
    if how == "sha256":
        stamps = [(name, sha256_of(Path(name)) if size is not None else None) for name, size, _ in stamps]
    return fingerprint([*parts, stamps]), how



def cache_identity(out: Path) -> Identity | None:
    """The identity recorded in the manifest of a cache at ``out`` (None when there is none)."""
    if not (Path(out) / MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(out)
    except UserError:
        return None
    identity = manifest.get("identity") or {}
    return Identity(identity.get("inputs", ""), identity.get("content", "")) if identity else None
