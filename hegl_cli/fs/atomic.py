"""Atomic file writes: a temporary file in the same folder, then a rename (``os.replace``, or
:func:`rename_no_replace` where nothing may be replaced)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], None], replace: bool = True) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` only once it is complete.

    ``replace=False``: FileExistsError when something is at ``path`` when the file is moved there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        if replace:
            os.replace(tmp, path)
        else:
            rename_no_replace(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def json_text(data: Any) -> str:
    """``data`` as indented JSON (numpy scalars and arrays, paths included)."""
    return json.dumps(data, indent=2, default=_json_default)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json_text(data))


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- renaming without replacing --------------------------------------------------------------------------
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return getattr(libc, "renameat2", None)
    except OSError:  # pragma: no cover - no C library to ask
        return None


def rename_no_replace(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` only if nothing is at ``dst``; FileExistsError otherwise, whatever appeared
    there in the meantime (a plain rename would replace an empty folder or a file)."""
    function = _renameat2()
    if function is not None:
        if function(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):  # the file system or kernel lacks the flag: fall back
            raise FileExistsError(err, os.strerror(err), str(dst)) if err == errno.EEXIST else OSError(
                err, os.strerror(err), str(dst))
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)
