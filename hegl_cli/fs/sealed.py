"""Files that carry their own digest, so a damaged one is refused on load instead of trusted.

A sealed file is ``MAGIC``, the SHA-256 of the payload in hex, a newline, then the payload. A file
written before sealing existed (no ``MAGIC``) is read as it is: its format's own checks apply.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from hegl_cli.errors import UserError
from hegl_cli.fs.atomic import atomic_write_bytes

MAGIC = b"HEGL-SEALED-1\n"


def seal(payload: bytes) -> bytes:
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def write_sealed(path: Path, payload: bytes) -> None:
    """``payload`` sealed, written durably and atomically to ``path``."""
    atomic_write_bytes(path, seal(payload))


def read_sealed(path: Path, what: str, fix: str) -> bytes:
    """The payload of ``path``; a sealed file whose digest does not match (truncated, a bit flipped) is
    one line naming it, ``what`` it is and ``fix`` (what to do)."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        return data
    header_end = data.find(b"\n", len(MAGIC))
    digest, payload = data[len(MAGIC):header_end], data[header_end + 1:]
    if header_end < 0 or hashlib.sha256(payload).hexdigest().encode() != digest:
        raise UserError(f"{path}: not a hegl {what}: it is damaged (its content does not match the digest written "
                        f"with it: truncated or altered); {fix}")
    return payload
