"""Publishing a cache: the output folder checked (nothing of the user's is overwritten), the finished
partial folder moved into place without replacing what appeared meanwhile, and killed runs' leftovers removed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hegl_cli.data.cache import PARTIAL_MARKER, foreign_files
from hegl_cli.data.manifest import MANIFEST, outdated_reading, read_manifest
from hegl_cli.errors import UserError
from hegl_cli.fs.atomic import fsync_file, fsync_folder, rename_no_replace
from hegl_cli.fs.locks import pid_alive


def is_hegl_cache(folder: Path) -> bool:
    """A folder that `hegl prepare` wrote (its manifest names hegl's version)."""
    path = Path(folder) / MANIFEST
    if Path(folder).is_symlink() or not path.is_file():
        return False
    try:
        return "hegl_version" in json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, OSError):
        return False



def check_output_folder(out: Path, inputs: list[Path], replace_cache: bool) -> None:
    """Refuse an output that would overwrite the user's files: an input (or a folder holding or inside
    one), a link, or anything but an empty folder or a hegl cache; a hegl cache needs ``replace_cache``."""
    target = out.resolve()
    for path in inputs:
        src = Path(path).resolve()
        if target == src or target in src.parents or src in target.parents:
            raise UserError(f"--out {out} overlaps the input {path}; choose an output folder outside the dataset")
    if out.is_symlink():
        raise UserError(f"--out {out} is a symbolic link; refusing to write through it")
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not is_hegl_cache(out):
        raise UserError(f"{out} exists and is not a hegl cache (no {MANIFEST} from `hegl prepare`); it was "
                        "left alone, --force included: choose another --out")
    foreign = foreign_files(out)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UserError(f"{out} holds {foreign[0].relative_to(out)}{more}, which hegl did not write; it was left "
                        "alone, --force included: move it out of the cache, or choose another --out")
    if not replace_cache:
        shift = outdated_reading(read_manifest(out), out)
        why = f" (and {shift})" if shift else ""
        raise UserError(f"{out} already holds a dataset prepared from other inputs or settings{why}; pass --force "
                        "to replace it")



def commit_cache(partial: Path, out: Path, replace_cache: bool) -> None:
    """Move the finished ``partial`` to ``out`` without replacing anything that is not a hegl cache.

    Nothing there (or an empty folder): a no-replace rename, so a folder or file that appears at
    ``out`` in the meantime is refused and kept. A hegl cache (``replace_cache``): moved aside first,
    checked to be the cache it was, then removed once the new one is in place.
    """
    appeared = UserError(f"{out} appeared while prepare ran (someone else made it); it was left alone and "
                         "nothing was written: choose another --out")
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        try:
            out.rmdir()  # an empty folder: nothing to lose, and a rename cannot replace it without a race
        except OSError:
            raise appeared from None
    aside = None
    if out.exists() or out.is_symlink():
        if not (replace_cache and is_hegl_cache(out)):
            raise appeared
        aside = out.with_name(f"{out.name}.old-{os.getpid()}")
        rename_no_replace(out, aside)
        if not is_hegl_cache(aside):  # replaced by something else between the check and the move
            rename_no_replace(aside, out)
            raise appeared
    out.parent.mkdir(parents=True, exist_ok=True)
    fsync_tree(partial)  # every array and the manifest on disk before the cache appears under its name
    try:
        rename_no_replace(partial, out)
    except FileExistsError:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        raise appeared from None
    fsync_folder(out.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """``fsync`` every file under ``folder``, then each folder (so a power cut cannot leave a cache that
    names arrays it never wrote)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_folder(Path(root))



def remove_stale_partials(out: Path) -> list[Path]:
    """Delete ``<out>.partial-PID`` / ``<out>.old-PID`` folders whose process is gone (a killed prepare)."""
    removed = []
    for leftover in out.parent.glob(f"{out.name}.*-*"):
        kind, _, pid = leftover.name[len(out.name) + 1 :].partition("-")
        # a partial still being filled has prepare's marker; one killed between removing the marker and
        # its rename is a finished cache under the partial name: both are prepare's own
        ours = ((leftover / PARTIAL_MARKER).is_file() or is_hegl_cache(leftover)) if kind == "partial" \
            else is_hegl_cache(leftover)
        if (kind in ("partial", "old") and pid.isdigit() and leftover.is_dir() and not leftover.is_symlink()
                and ours and not pid_alive(int(pid))):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed
