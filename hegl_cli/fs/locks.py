"""An exclusive lock on a folder that hegl writes (a run, a prepared cache), held while in use.

The lock is an advisory ``flock`` on a small file that names its holder (pid, host, command), so a
second process is told who holds it. The kernel releases it when the holder dies, however it dies:
a stale lock file never blocks anyone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from hegl_cli.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, nothing is locked
    fcntl = None  # type: ignore[assignment]


class FolderLock:
    """``with FolderLock(path, what):`` holds ``path`` (the lock file) or raises a one-line UserError."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what
        self._handle = None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = _describe(handle.read())
                handle.close()
                raise UserError(f"{self.what} is in use by {holder}; wait for it to finish or choose "
                                "another name") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                                 "command": " ".join(sys.argv[:6])}))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(path: Path) -> bool:
    """Whether another process holds the lock at ``path`` right now."""
    if fcntl is None or not Path(path).is_file():
        return False
    with open(path, "a+") as handle:
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
