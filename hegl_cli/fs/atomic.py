"""Durable atomic file writes: every file hegl publishes goes through :func:`atomic_write`.

A temporary file in the same folder (named after the target and this process), ``fsync`` of the
file, a rename into place (``os.replace``, or :func:`rename_no_replace` where nothing may be
replaced), then ``fsync`` of the folder: after a crash or a power cut the target is either the old
file or the whole new one, never an empty or torn file. Temporary files of a process that died
(killed inside a write) are removed the next time the same file is written. A full disk or a file
size limit is one line naming the file (exit 2), and leaves the target as it was.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hegl_cli.errors import UserError
from hegl_cli.fs.locks import pid_alive

# The kill-point harness's deliberate points (tests/crash_harness.py): ``HEGL_CRASH_AT=NAME`` or
# ``NAME@K`` (the K-th time) makes the process kill itself there, as a power cut or the OOM killer would.
CRASH_ENV = "HEGL_CRASH_AT"
_reached: dict[str, int] = {}

# A write that failed for want of room: one line naming the file, never "unexpected error".
NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
TMP_SUFFIX = ".tmp"


def crash_point(name: str) -> None:
    """SIGKILL this process at ``name`` when ``HEGL_CRASH_AT`` asks for it (otherwise one lookup)."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def temp_prefix(path: Path, pid: int | None = None) -> str:
    """``.<name>.<pid>.``: the start of every temporary file written for ``path`` by process ``pid``."""
    return f".{Path(path).name[:40]}.{os.getpid() if pid is None else pid}."


def remove_dead_temps(path: Path) -> list[Path]:
    """Delete the temporary files left beside ``path`` by writes of processes that are gone."""
    removed = []
    stem = f".{Path(path).name[:40]}."
    for leftover in Path(path).parent.glob(f"{glob_escape(stem)}*{TMP_SUFFIX}"):
        pid = leftover.name[len(stem):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)) and not leftover.is_symlink():
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (where the system allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename is still atomic
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def no_room(path: Path, exc: OSError, outcome: str = "nothing was replaced") -> UserError:
    """The one line for a write that ran out of room: the file, why, what was left as it was."""
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
           errno.EFBIG: "the file is over the size limit"}.get(exc.errno or 0, exc.strerror or "no room")
    return UserError(f"cannot write {path}: {why} ({exc.strerror}); {outcome}: make room (or raise the limit) and "
                     "run the command again")


def atomic_write(path: Path, write: Callable[[Path], None], replace: bool = True) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` only once it is complete and on disk.

    ``replace=False``: FileExistsError when something is at ``path`` when the file is moved there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        fsync_file(Path(tmp))
        crash_point(f"write:{path.name}:complete")
        if replace:
            os.replace(tmp, path)
        else:
            rename_no_replace(Path(tmp), path)
        crash_point(f"write:{path.name}:renamed")
        fsync_folder(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in NO_ROOM:
            raise no_room(path, exc) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_line(path: Path, line: str) -> None:
    """Add one whole line to a log hegl keeps (metrics, history, the outputs record), on disk before it
    returns; a full disk is one line naming the file (a torn last line is skipped by its readers)."""
    try:
        with open(path, "a") as handle:
            handle.write(line.rstrip("\n") + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        if exc.errno in NO_ROOM:
            raise no_room(Path(path), exc, "the line was not added") from None
        raise


def atomic_write_bytes(path: Path, data: bytes, replace: bool = True) -> None:
    """``data`` as the whole of ``path`` (the writer of files whose library writes raise their own
    errors: the bytes are made in memory, then written here, where a full disk is an OSError)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data), replace=replace)


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
