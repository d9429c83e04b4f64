"""Run folders: ``runs/<name>/`` with the resolved config, checkpoints and outputs, and ``runs/latest``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hegl_cli.errors import UserError

RUNS_DIR = Path("runs")
LATEST = "latest"


def new_run_dir(name: str | None, runs_dir: Path = RUNS_DIR, exist_ok: bool = False) -> Path:
    """``runs/<name>`` (a timestamp when no name); refuses to reuse a folder unless ``exist_ok``."""
    name = name or time.strftime("%Y%m%d-%H%M%S")
    if "/" in name or name in ("", ".", "..", LATEST):
        raise UserError(f"invalid run name '{name}'")
    run = Path(runs_dir) / name
    if run.exists() and any(run.iterdir()) and not exist_ok:
        raise UserError(f"run folder {run} already exists; use --resume to continue it, --force to "
                        "start it over, or another --name")
    run.mkdir(parents=True, exist_ok=True)
    return run


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
