"""The one way hegl writes a command's outputs, so that no file the user made is ever touched.

- Names derived from inputs (an image's stem, a class name) go through :func:`safe_name`: no path
  separators, no ``.``/``..``, no control characters, bounded length.
- An :class:`OutputFolder` keeps a record (``.hegl-outputs.jsonl``) of every file hegl wrote into
  it, with its SHA-256. An existing file is replaced only when the record says hegl wrote exactly
  these bytes, and only with ``--force``; a file hegl did not write (or that was changed since) is
  never replaced, ``--force`` included. Folders hegl owns (a run folder) are written freely.
- :func:`claim` checks every file a command will write before it starts, so a refusal costs nothing.
- A new file is moved into place without replacing whatever appeared there meanwhile
  (:func:`hegl_cli.fs.atomic.rename_no_replace`).
"""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from hegl_cli.errors import UserError
from hegl_cli.fs.atomic import append_line, atomic_write, json_text

RECORD = ".hegl-outputs.jsonl"
NAME_BYTES = 120  # a derived name's UTF-8 length at most (file systems allow 255)
UNSAFE = set('/\\<>:"|?*') | {"\0"}


def safe_name(text: str, fallback: str = "file", limit: int = NAME_BYTES) -> str:
    """One path component made from ``text``: separators and control characters become ``_``,
    leading and trailing dots and spaces go (so ``.``, ``..`` and ``...`` are never names), a leading
    ``-`` becomes ``_``, and the UTF-8 length is at most ``limit`` bytes; ``fallback`` when nothing
    is left."""
    text = unicodedata.normalize("NFC", str(text))
    cleaned = "".join("_" if ch in UNSAFE or not ch.isprintable() else ch for ch in text).strip(" .")
    if cleaned.startswith("-"):
        cleaned = "_" + cleaned[1:]
    encoded = cleaned.encode("utf-8")[:limit]
    cleaned = encoded.decode("utf-8", errors="ignore").rstrip(" .")
    return cleaned or fallback


def unique_names(names: Iterable[str]) -> list[str]:
    """The names with ``-2``, ``-3``, ... added to repeats, compared case-insensitively (macOS and
    Windows file systems ignore case)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        key = name.casefold()
        seen[key] = seen.get(key, 0) + 1
        out.append(name if seen[key] == 1 else f"{name}-{seen[key]}")
    return out


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OutputFolder:
    """A folder one command writes into (``--out``, or a folder hegl owns).

    Args:
        root: the folder; made when missing. A symbolic link or a file there is refused.
        force: replace files hegl wrote here before (never a file it did not write).
        owned: the folder is hegl's own (a run folder): its files are replaced without a record.
        recognise: ``recognise(path)`` says a file without a record is one hegl wrote (a predictions
            CSV by its header, a report by its title), for files from before the record.
        kind: what the command writes, for the message that refuses a file that is not one.
    """

    def __init__(self, root: Path, force: bool = False, owned: bool = False,
                 recognise: Callable[[Path], bool] | None = None, kind: str = "file"):
        self.root, self.force, self.owned, self.recognise, self.kind = Path(root), force, owned, recognise, kind
        if self.root.is_symlink():
            raise UserError(f"{self.root} is a symbolic link; refusing to write through it (choose another --out)")
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root} exists and is not a folder; choose another --out")

    # -- what hegl wrote here ----------------------------------------------------------------
    def _recorded(self) -> dict[str, str]:
        path = self.root / RECORD
        if self.owned or not (path.exists() or path.is_symlink()):
            return {}
        if path.is_symlink() or not path.is_file():
            raise UserError(f"{path} is not hegl's record of its outputs; it was left alone: choose another --out")
        recorded: dict[str, str] = {}
        lines = path.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
                recorded[str(entry["path"])] = str(entry["sha256"])
            except (ValueError, KeyError, TypeError):
                if number < len(lines) or not recorded:  # only a last line after whole ones may be torn
                    raise UserError(f"{path} is not hegl's record of its outputs (line {number}); it was left "
                                    "alone: choose another --out") from None
        return recorded

    def _target(self, relative: str | Path) -> Path:
        rel = PurePosixPath(str(relative).replace("\\", "/"))
        if rel.is_absolute() or not rel.parts or any(part in ("", ".", "..") for part in rel.parts):
            raise UserError(f"{relative!r} is not a name hegl writes under {self.root} (it would leave the folder)")
        return self.root.joinpath(*rel.parts)

    def check(self, relative: str | Path, recorded: dict[str, str] | None = None) -> Path:
        """The path ``relative`` names, if writing it replaces nothing the user has; else a UserError."""
        target = self._target(relative)
        for parent in [p for p in target.parents if self.root in p.parents]:  # strictly inside root
            if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
                raise UserError(f"{parent} is in the way of {target.name} (not a folder hegl made); it was left alone: "
                                "choose another --out")
        if not (target.exists() or target.is_symlink()) or self.owned:
            if target.is_symlink():
                raise UserError(f"{target} is a symbolic link; refusing to write through it")
            if target.is_dir():
                raise UserError(f"{target} is a folder; it was left alone: choose another --out")
            return target
        if target.is_symlink() or not target.is_file():
            raise UserError(f"{target} exists and is not a file hegl wrote; it was left alone: choose another --out")
        rel = "/".join(PurePosixPath(str(relative).replace("\\", "/")).parts)
        recorded = self._recorded() if recorded is None else recorded
        ours = recorded.get(rel) == sha256_of(target) or (self.recognise is not None and self.recognise(target))
        if not ours:
            raise UserError(f"{target} exists and is not a {self.kind} hegl wrote (or it changed since); it was "
                            "left alone, --force included: choose another --out or move the file")
        if not self.force:
            raise UserError(f"{target} already exists (written by hegl); pass --force to replace it")
        return target

    def claim(self, relatives: Iterable[str | Path]) -> None:
        """Check every file a command will write, before it does any work."""
        recorded = self._recorded()
        for relative in relatives:
            self.check(relative, recorded)

    # -- writing -----------------------------------------------------------------------------
    def write(self, relative: str | Path, write: Callable[[Path], None]) -> Path:
        """``write(tmp)`` then move it to ``relative`` atomically (after :meth:`check`); recorded."""
        target = self.check(relative)
        new = not target.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write(target, write, replace=not new or self.owned)
        except FileExistsError:
            raise UserError(f"{target} appeared while hegl was writing it; it was left alone: choose another "
                            "--out") from None
        self._remember(relative, target)
        return target

    def write_text(self, relative: str | Path, text: str) -> Path:
        return self.write(relative, lambda tmp: tmp.write_text(text))

    def write_json(self, relative: str | Path, data: Any) -> Path:
        return self.write_text(relative, json_text(data))

    def _remember(self, relative: str | Path, target: Path) -> None:
        """Record the file, in a folder hegl owns too (a run's ``train --force`` keeps what is not recorded)."""
        if not self.owned:
            self._recorded()  # refuses a record that is not hegl's before appending to it
        rel = "/".join(PurePosixPath(str(relative).replace("\\", "/")).parts)
        line = json.dumps({"path": rel, "sha256": sha256_of(target), "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        append_line(self.root / RECORD, line)  # one short append: whole lines, whoever else appends


def recorded_outputs(root: Path) -> set[str] | None:
    """The paths (relative, POSIX) ``root``'s record says hegl wrote there; None when there is no
    record, or one that is not hegl's (a reader that must not guess treats both as "nothing known")."""
    path = Path(root) / RECORD
    if path.is_symlink() or not path.is_file():
        return None
    names: set[str] = set()
    for line in path.read_text(errors="replace").splitlines():
        try:
            names.add(str(json.loads(line)["path"]))
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line; the whole ones still count
    return names
