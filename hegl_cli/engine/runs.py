"""Run folders: ``runs/<name>/`` with the resolved config, checkpoints and outputs, and ``runs/latest``.

A run folder is marked as hegl's by ``hegl-run.json`` (written when it is created); ``--force``
only ever deletes a folder that carries the marker and that no process is using. A run name is one
path component. ``history.jsonl`` records every start and resume of the run with what changed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch

from hegl_cli import __version__
from hegl_cli.config import Config, apply_eval_layers
from hegl_cli.data.cache import CachedSplit
from hegl_cli.engine.checkpoint import load_model
from hegl_cli.engine.device import select_device
from hegl_cli.errors import UserError
from hegl_cli.locking import FolderLock, is_locked

RUNS_DIR = Path("runs")
LATEST = "latest"
RUN_MARKER = "hegl-run.json"
LOCK = ".hegl-lock"
HISTORY = "history.jsonl"


def validate_run_name(name: str) -> str:
    """A run name is one plain path component (no separators, not '.', '..' or 'latest')."""
    text = str(name)
    parts_posix, parts_windows = PurePosixPath(text).parts, PureWindowsPath(text).parts
    if (text.strip() in ("", ".", "..", LATEST) or "\0" in text or len(parts_posix) != 1
            or len(parts_windows) != 1 or text.startswith("-")):
        raise UserError(f"invalid run name {text!r}: a run name is one folder name such as 'baseline-1' "
                        "(no '/', '..' or absolute paths; use --runs-dir to choose where runs live)")
    return text


def is_hegl_run(folder: Path) -> bool:
    """A folder hegl made for a run (0.1.0 runs, made before the marker, have config.yaml + state.pt)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    return (folder / RUN_MARKER).is_file() or ((folder / "config.yaml").is_file() and (folder / "state.pt").is_file())


def run_lock(run: Path) -> FolderLock:
    return FolderLock(Path(run) / LOCK, f"run folder {run}")


def create_run_dir(name: str | None, runs_dir: Path = RUNS_DIR, force: bool = False) -> Path:
    """Make ``runs_dir/<name>`` (a timestamp when no name) for a new run and mark it as hegl's.

    An existing non-empty folder is refused, or with ``force`` replaced, but only when it is a hegl
    run that no process holds; anything else is never deleted.
    """
    run = Path(runs_dir) / validate_run_name(time.strftime("%Y%m%d-%H%M%S") if name is None else name)
    if run.is_symlink():
        raise UserError(f"{run} is a symbolic link; refusing to use it as a run folder")
    if run.exists() and not run.is_dir():
        raise UserError(f"{run} exists and is not a folder")
    if run.is_dir() and any(run.iterdir()):
        if not force:
            raise UserError(f"run folder {run} already exists; use --resume to continue it, --force to "
                            "start it over, or another --name")
        if not is_hegl_run(run):
            raise UserError(f"{run} is not a hegl run folder (no {RUN_MARKER}); --force only replaces "
                            "runs that hegl made, so it was left alone: choose another --name")
        if is_locked(run / LOCK):
            run_lock(run).acquire()  # raises, naming the holder
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    write_marker(run)
    return run


def write_marker(run: Path) -> None:
    marker = Path(run) / RUN_MARKER
    if not marker.is_file():
        marker.write_text(json.dumps({"hegl": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}))


def remove_if_unused(run: Path) -> None:
    """Remove a run folder that holds nothing but hegl's marker and lock (a run that never started)."""
    run = Path(run)
    if run.is_dir() and {p.name for p in run.iterdir()} <= {RUN_MARKER, LOCK}:
        shutil.rmtree(run)


def append_history(run: Path, event: str, **fields: Any) -> None:
    """One line per start/resume: time, event, the command line and what changed."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "event": event, "argv": sys.argv[1:], **fields}
    with open(Path(run) / HISTORY, "a") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


def mark_latest(run: Path) -> None:
    """Point ``<runs>/latest`` at ``run`` (a relative symlink, or a pointer file where links fail)."""
    link = run.parent / LATEST
    tmp = run.parent / f".{LATEST}.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run.name, tmp)
    except OSError:
        tmp.write_text(run.name)
    os.replace(tmp, link)


def resolve_run(run: Path | str | None, runs_dir: Path = RUNS_DIR) -> Path:
    """The run folder named, or the latest one; a clear error when there is none."""
    if run is None:
        link = Path(runs_dir) / LATEST
        if link.is_symlink():
            target = link.resolve()
        elif link.is_file():
            target = Path(runs_dir) / link.read_text().strip()
        else:
            raise UserError(f"no run given and no {link}; train one with `hegl train` or pass a run folder")
        run = target
    run = Path(run)
    if not run.is_dir():
        candidate = Path(runs_dir) / run
        if candidate.is_dir():
            run = candidate
        else:
            raise UserError(f"run folder not found: {run}")
    return run


def open_split(data: Path | str, split: str, classes: list[str], image_size: int) -> CachedSplit:
    """A cache split that matches the model's classes and input size (clear error otherwise)."""
    cached = CachedSplit(data, split)
    if cached.classes != list(classes):
        raise UserError(f"{data}: classes {cached.classes} differ from the model's {list(classes)}")
    if cached.image_size != image_size:
        raise UserError(f"{data}: images are {cached.image_size} px but the model expects {image_size} px")
    return cached


@dataclass
class LoadedRun:
    """A trained run ready to predict: its model, metadata, config, device and (optionally) a split."""

    folder: Path
    which: str
    model: torch.nn.Module
    meta: dict[str, Any]
    cfg: Config
    device: torch.device
    data: Path
    split: CachedSplit | None
    thresholds: np.ndarray  # (C,) chosen on validation during training

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])


def load_run(run: Path, which: str = "best", data: Path | None = None, device: str = "auto",
             split: str | None = None, eval_layers: list[tuple[str, dict[str, Any]]] | None = None,
             command: str = "hegl evaluate") -> LoadedRun:
    """Load a run's checkpoint, the cache it trained on (or ``data``) and, if asked, one split of it.

    ``eval_layers``: the user's ``--config/--set`` layers (see :func:`config_layers`); only ``eval.*``
    keys may change a trained run's config.
    """
    dev = select_device(device)
    model, meta, cfg = load_model(run, which, dev)
    apply_eval_layers(cfg, eval_layers or [], command)
    folder = Path(data or meta.get("data") or cfg.data.path)
    cached = open_split(folder, split, meta["classes"], int(meta["image_size"])) if split else None
    thresholds = np.asarray(meta.get("thresholds", [0.5] * len(meta["classes"])), dtype=np.float64)
    return LoadedRun(Path(run), which, model, meta, cfg, dev, folder, cached, thresholds)
