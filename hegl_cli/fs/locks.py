"""Locks on folders that hegl writes and reads (a run, a prepared cache), held while in use.

A lock is an advisory ``flock`` on a small file that names its holder (pid, host, command), so a
process that is refused is told who holds it. Writers (train, ``--force``, ``--resume``, prepare)
take it exclusively; readers (evaluate, robustness, explain, predict, report, training reading a
cache) take it shared, so a reader never sees a folder a writer is replacing and a writer never
replaces a folder someone reads. The kernel releases a lock when its holder dies, however it dies:
a stale lock file never blocks anyone. Lock files are never deleted (a process waiting on the old
file and one locking a new file would both believe they hold the lock).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

from hegl_cli.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, nothing is locked
    fcntl = None  # type: ignore[assignment]

READ_ONLY_ERRORS = {errno.EROFS, errno.EACCES, errno.EPERM}
# Shared locks this process holds, by lock file: one flock each, counted (two readers of one folder in
# one process, such as a report that loads a run and its twin, must not need two flocks).
_SHARED: dict[str, list] = {}


class FolderLock:
    """``with FolderLock(path, what):`` holds ``path`` (the lock file) or raises a one-line UserError.

    ``shared=True`` is a reader's lock: any number of readers hold it together, no writer while they
    do. A reader whose lock file cannot be created (a read-only folder) reads without a lock: no
    writer can change that folder either.
    """

    def __init__(self, path: Path, what: str, shared: bool = False):
        self.path, self.what, self.shared = Path(path), what, shared
        self._handle = None

    def acquire(self) -> FolderLock:
        key = os.path.abspath(self.path)
        if self.shared and key in _SHARED:
            _SHARED[key][1] += 1
            self._handle = _SHARED[key][0]
            return self
        try:
            if not self.shared:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open_lock_file(self.path)
        except OSError as exc:
            if self.shared and (exc.errno in READ_ONLY_ERRORS or exc.errno == errno.ENOENT):
                return self
            raise
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = _describe(handle.read())
                handle.close()
                hint = "wait for it to finish" if self.shared else "wait for it to finish or choose another name"
                raise UserError(f"{self.what} is in use by {holder}; {hint}") from None
        _write_holder(handle)
        self._handle = handle
        if self.shared:
            _SHARED[key] = [handle, 1]
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        key = os.path.abspath(self.path)
        if self.shared and key in _SHARED:
            _SHARED[key][1] -= 1
            if _SHARED[key][1] > 0:
                self._handle = None
                return
            del _SHARED[key]
        self._handle.close()  # closing drops the flock
        self._handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def open_lock_file(path: Path):
    """Open (or create) the lock file at ``path`` for reading and writing, never through a symbolic
    link, and only when it is hegl's: empty, or naming a holder as :func:`_write_holder` does. Anything
    else there is the user's and is refused in one line, untouched."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or Path(path).is_symlink():
            raise UserError(f"{path} is a symbolic link where hegl keeps a lock file; hegl never writes "
                            "through one: remove it") from None
        raise
    handle = os.fdopen(fd, "r+")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{path} is not a file; hegl keeps a lock file there: move it")
        text = handle.read(4097)
        if text.strip() and not _is_holder(text):
            raise UserError(f"{path} is not a hegl lock file (it holds other data); it was left alone: move it")
    except BaseException:
        handle.close()
        raise
    return handle


def _is_holder(text: str) -> bool:
    """Whether ``text`` is what :func:`_write_holder` writes."""
    try:
        info = json.loads(text)
    except ValueError:
        return False
    return isinstance(info, dict) and {"pid", "host"} <= set(info)


def _write_holder(handle) -> None:
    """Name this process in the lock file (readers sharing a lock may overwrite each other: any of them
    is a fair answer to "who holds it")."""
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                                 "command": " ".join(sys.argv[:6])}))
        handle.flush()
    except OSError:
        pass


def is_locked(path: Path) -> bool:
    """Whether another process holds the lock at ``path`` (shared or exclusive) right now."""
    if fcntl is None or Path(path).is_symlink() or not Path(path).is_file():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} ({info.get('command', '').strip()})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
