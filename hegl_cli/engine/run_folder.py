"""Run folders and ablation folders: every file hegl keeps in them, named here and nowhere else.

``runs/<name>/`` holds the resolved config, the checkpoints and every output of one run, and
``runs/latest`` points at the newest. A run folder is marked as hegl's by ``hegl-run.json`` (written
when it is created); ``--force`` only ever deletes a folder that carries the marker and that no
process is using. A run name is one path component. ``history.jsonl`` records every start and resume
of the run with what changed. An ablation folder (``ablations/<name>/``) holds one run folder per
(cell, seed) under ``runs/`` and the tables and figures across them, marked by ``hegl-ablation.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TypeVar

from hegl_cli import __version__
from hegl_cli.errors import UserError
from hegl_cli.fs.atomic import append_line
from hegl_cli.fs.locks import FolderLock, is_locked
from hegl_cli.fs.outputs import RECORD, recorded_outputs, safe_name
from hegl_cli.fs.tables import read_json

RUNS_DIR = Path("runs")
LATEST = "latest"
CHECKPOINTS = ("best", "last")
LOCK = ".hegl-lock"
# Held exclusively by the process that trains a run (new or resumed); readers never take it, so they
# read a run that is still training (its last published checkpoint) without waiting for it.
TRAIN_LOCK = ".hegl-train-lock"
ROBUSTNESS_JSON, ROBUSTNESS_PNG = "robustness.json", "robustness.png"  # in a run folder or any --out folder


def write_marker(path: Path) -> None:
    """Write the small JSON file that marks a folder as hegl's (kept when it exists)."""
    if not path.is_file():
        path.write_text(json.dumps({"hegl": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}))


Folder = TypeVar("Folder", bound="HeglFolder")


class HeglFolder:
    """A folder hegl makes and marks as its own: its marker file and its lock."""

    MARKER = ""  # the marker's file name, per kind of folder
    KIND = ""  # how the lock names the folder to a second process

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def marker(self) -> Path:
        return self.path / self.MARKER

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    def lock(self, shared: bool = False) -> FolderLock:
        """Exclusive for the command that writes the folder; shared for the ones that read it."""
        return FolderLock(self.lock_file, f"{self.KIND} {self.path}", shared=shared)

    def write_marker(self) -> None:
        write_marker(self.marker)

    def _is_folder(self) -> bool:
        return not self.path.is_symlink() and self.path.is_dir()

    def is_ours(self) -> bool:
        """A folder of this kind that hegl made (its marker is there)."""
        return self._is_folder() and self.marker.is_file()

    def open_for_writing(self: Folder) -> Folder:
        """Create the folder (or reuse it, to resume) only when it is new, empty or of this kind and
        hegl's; then mark it. Anything else is one line and left alone."""
        out = self.path
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise UserError(f"{out} is not a folder; hegl cannot write the {self.KIND} there")
        if out.is_dir() and any(out.iterdir()) and not self.is_ours():
            raise UserError(f"{out} exists and is not a hegl {self.KIND} (no {self.marker.name}); it was left "
                            "alone: choose another --name or --out-root")
        out.mkdir(parents=True, exist_ok=True)
        self.write_marker()
        return self


class RunFolder(HeglFolder):
    """One run's folder; ``RunFolder(path).metrics`` and the like are its files."""

    MARKER = "hegl-run.json"
    KIND = "run folder"

    @property
    def train_lock_file(self) -> Path:
        return self.path / TRAIN_LOCK

    def hold_for_training(self) -> list[FolderLock]:
        """The locks a training process holds: the training lock (no second trainer) and the folder's
        lock shared (readers may read what it has published; nothing may replace the folder)."""
        training = FolderLock(self.train_lock_file, f"{self.KIND} {self.path} (training)").acquire()
        try:
            return [training, self.lock(shared=True).acquire()]
        except BaseException:
            training.release()
            raise

    def has_work(self) -> bool:
        """Whether the run finished an epoch: its training state is written last, after the epoch's
        checkpoints, so a run without one (killed in its first epoch) has nothing to resume from."""
        return self.state.is_file()

    def is_training(self) -> bool:
        """Whether a process trains this run right now."""
        return is_locked(self.train_lock_file)

    # -- what training writes ---------------------------------------------------------------
    @property
    def config(self) -> Path:
        """The resolved config the run was trained with."""
        return self.path / "config.yaml"

    @property
    def state(self) -> Path:
        """Everything an exact resume needs (model, optimizer, RNGs, ...), rewritten every epoch."""
        return self.path / "state.pt"

    @property
    def metrics(self) -> Path:
        """One JSON line per finished epoch."""
        return self.path / "metrics.jsonl"

    @property
    def history(self) -> Path:
        """One JSON line per start or resume."""
        return self.path / "history.jsonl"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def weights(self, checkpoint: str) -> Path:
        return self.path / f"{checkpoint}.safetensors"

    def meta(self, checkpoint: str) -> Path:
        return self.path / f"{checkpoint}.json"

    # -- what the other commands write ------------------------------------------------------
    def eval_report(self, split: str) -> Path:
        return self.path / "eval" / f"{split}.json"

    def eval_table(self, split: str) -> Path:
        return self.path / "eval" / f"{split}.csv"

    def eval_reliability(self, split: str) -> Path:
        return self.path / "eval" / f"{split}-reliability.png"

    def eval_files(self, split: str, site: str | None = None) -> dict[str, Path]:
        """The report, per-class table, reliability diagram and (with ``--methods``) the explanation
        methods' table and figure of an evaluation: on the run's own cache, or on another site's
        (``site``: :func:`external_name` of its cache), each under ``eval/external/``."""
        folder = self.path / "eval" if site is None else self.path / "eval" / "external" / site
        return {"report": folder / f"{split}.json", "table": folder / f"{split}.csv",
                "reliability": folder / f"{split}-reliability.png",
                "methods_table": folder / f"{split}-methods.csv", "methods_figure": folder / f"{split}-methods.png"}

    def external_reports(self, split: str = "test") -> list[Path]:
        """Every evaluation of the run on another site's cache, for ``split``."""
        folder = self.path / "eval" / "external"
        return sorted(folder.glob(f"*/{split}.json")) if folder.is_dir() else []

    def site_calibration(self, site: str) -> Path:
        """A site's recalibration (``hegl evaluate --data SITE --recalibrate``): per-class temperatures or
        isotonic knots and the thresholds re-chosen on the site's val; ``predict/export --calibration``
        read it."""
        return self.path / "eval" / "external" / site / "calibration.json"

    def recalibration_report(self, split: str, site: str) -> Path:
        """Before/after the site's recalibration on its ``split``: ECE, Brier, AUC, F1, MCC, sensitivity,
        specificity with bootstrap intervals."""
        return self.path / "eval" / "external" / site / f"{split}-recalibration.json"

    def recalibration_reports(self, split: str = "test") -> list[Path]:
        """Every site recalibration of the run, for ``split``."""
        folder = self.path / "eval" / "external"
        return sorted(folder.glob(f"*/{split}-recalibration.json")) if folder.is_dir() else []

    @property
    def export_dir(self) -> Path:
        """``hegl export`` without ``--out``: the model file and what travels beside it."""
        return self.path / "export"

    @property
    def onnx_model(self) -> Path:
        return self.export_dir / "model.onnx"

    @property
    def model_card(self) -> Path:
        """``hegl report --card``: the run's model card (Markdown)."""
        return self.path / "MODEL_CARD.md"

    @property
    def explain_dir(self) -> Path:
        return self.path / "explain"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def outputs_record(self) -> Path:
        """What the commands wrote into the run (paths and SHA-256, :mod:`hegl_cli.fs.outputs`)."""
        return self.path / RECORD

    @property
    def cell(self) -> Path:
        """An ablation run's numbers, written when the (cell, seed) is done."""
        return self.path / "cell.json"

    # -- the folder as a whole --------------------------------------------------------------
    def top_level_names(self) -> set[str]:
        """Every name hegl puts directly in a run folder (files, and the folders it fills)."""
        files = [self.marker, self.lock_file, self.train_lock_file, self.config, self.state, self.metrics, self.history,
                 self.curves, self.tensorboard, self.explain_dir, self.report, self.outputs_record, self.cell, self.export_dir, self.model_card,
                 self.eval_report("test").parent,
                 *robustness_files(self.path), *(p for w in ("best", "last") for p in (self.weights(w), self.meta(w)))]
        return {p.name for p in files}

    def foreign_entries(self) -> list[Path]:
        """What lies in the run folder that hegl does not make there (a user's notes, a plot script),
        at the top or inside the folders hegl fills: ``--force`` keeps them, so it refuses while they
        are there. An unfinished atomic write (``.<name>.*.tmp``) is hegl's."""
        if not self._is_folder():
            return []
        known = self.top_level_names()
        top = [p for p in self.path.iterdir() if p.name not in known and not _is_partial_write(p)]
        return sorted(top + self._foreign_inside())

    def _foreign_inside(self) -> list[Path]:
        """Files in ``eval/``, ``export/``, ``explain/`` and ``tensorboard/`` that hegl did not write:
        the first three by the outputs record hegl keeps (:mod:`hegl_cli.fs.outputs`; a run from before
        it by hegl's names), the last by TensorBoard's event-file names. A link or a special file
        inside is never hegl's."""
        run_record, explain_record = recorded_outputs(self.path), recorded_outputs(self.explain_dir)
        checks: list[tuple[Path, Path, set[str] | None, Callable[[str], bool]]] = [
            (self.path / "eval", self.path, run_record, _is_eval_name),
            (self.export_dir, self.path, run_record, lambda rel: rel.startswith("export/model.")),
            (self.explain_dir, self.explain_dir, explain_record, lambda rel: rel.endswith((".png", ".json"))),
            (self.tensorboard, self.path, set(), lambda rel: Path(rel).name.startswith("events.out.tfevents.")),
        ]
        foreign = []
        for folder, base, record, legacy in checks:
            if folder.is_symlink() or not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.is_dir() and not path.is_symlink():
                    continue
                rel = path.relative_to(base).as_posix()
                ours = rel in record if record else legacy(rel)
                if path.is_symlink() or not path.is_file() or not (ours or _is_partial_write(path) or path.name == RECORD):
                    foreign.append(path)
        return foreign

    def is_hegl_run(self) -> bool:
        """A folder hegl made for a run (0.1.0 runs, made before the marker, have a config and a state)."""
        return self._is_folder() and (self.marker.is_file() or (self.config.is_file() and self.state.is_file()))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The finished epochs ([] when there is none); a damaged line is a UserError naming it."""
        if not self.metrics.is_file():
            return []
        epochs = []
        for number, line in enumerate(self.metrics.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                epoch = json.loads(line)
            except ValueError:
                epoch = None
            if not isinstance(epoch, dict) or "epoch" not in epoch:
                raise UserError(f"{self.metrics}: line {number} is not an epoch record (the file is damaged); "
                                "resume the run or train it again")
            epochs.append(epoch)
        return epochs

    def read_history(self) -> list[dict[str, Any]]:
        """Every start and resume of the run ([] when there is none; a torn line is skipped)."""
        if not self.history.is_file():
            return []
        records = []
        for line in self.history.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return [r for r in records if isinstance(r, dict)]

    def append_history(self, event: str, **fields: Any) -> None:
        """One line per start/resume: time, event, the command line and what changed."""
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "event": event, "argv": sys.argv[1:], **fields}
        append_line(self.history, json.dumps(record, default=str))


def external_name(cache: Path) -> str:
    """A folder name for evaluations on another cache: its name and a short hash of where it is."""
    where = str(Path(cache).resolve())
    return f"{safe_name(Path(cache).resolve().name, fallback='cache')}-{hashlib.sha1(where.encode()).hexdigest()[:8]}"


def _is_partial_write(path: Path) -> bool:
    """An unfinished atomic write of hegl's (``.<name>.*.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


EVAL_SUFFIXES = (".json", ".csv", "-reliability.png", "-methods.csv", "-methods.png")


def _is_eval_name(rel: str) -> bool:
    """A name hegl writes under ``eval/`` (``RunFolder.eval_files`` and the site recalibration's)."""
    parts = rel.split("/")
    if len(parts) == 2:
        return parts[1].endswith(EVAL_SUFFIXES)
    return len(parts) == 4 and parts[1] == "external" and parts[3].endswith(EVAL_SUFFIXES)


def robustness_files(folder: Path) -> tuple[Path, Path]:
    """(``robustness.json``, ``robustness.png``) in ``folder`` (a run folder or the user's --out)."""
    return Path(folder) / ROBUSTNESS_JSON, Path(folder) / ROBUSTNESS_PNG


class AblationFolder(HeglFolder):
    """``ablations/<name>/``: a run folder per (cell, seed) under ``runs/``, tables and figures across them."""

    MARKER = "hegl-ablation.json"
    KIND = "ablation folder"


    @property
    def runs_dir(self) -> Path:
        return self.path / "runs"

    def run(self, name: str) -> RunFolder:
        return RunFolder(self.runs_dir / name)

    @property
    def results_csv(self) -> Path:
        return self.path / "results.csv"

    @property
    def results_md(self) -> Path:
        return self.path / "results.md"

    @property
    def results_png(self) -> Path:
        return self.path / "results.png"

    @property
    def runs_json(self) -> Path:
        return self.path / "runs.json"

    @property
    def plan_json(self) -> Path:
        """The (cell, seed) runs the last `hegl ablation` call set out to make, written before the first."""
        return self.path / "plan.json"

    @property
    def methods_md(self) -> Path:
        """``--methods``: every explanation method's numbers per cell, mean ± std over seeds."""
        return self.path / "methods.md"

    @property
    def methods_csv(self) -> Path:
        return self.path / "methods.csv"

    @property
    def context_vs_twin(self) -> Path:
        return self.path / "context_vs_twin.png"

    @property
    def selection_json(self) -> Path:
        """``--select``: the criterion, the chosen recipe and run, the regret (and every run's row)."""
        return self.path / "selection.json"

    @property
    def selection_csv(self) -> Path:
        return self.path / "selection.csv"

    @property
    def selection_md(self) -> Path:
        return self.path / "selection.md"

    @property
    def selection_png(self) -> Path:
        return self.path / "selection.png"

    def chosen_run(self) -> Path | None:
        """The run ``--select`` chose, or None when this folder holds no selection."""
        if not (self.selection_json.exists() or self.selection_json.is_symlink()):
            return None
        record = read_json(self.selection_json, "recipe selection")  # a folder or a dangling link is named
        name = record.get("run") if isinstance(record, dict) else None
        if not isinstance(name, str) or not self.run(validate_run_name(name)).path.is_dir():
            raise UserError(f"{self.selection_json}: names no run of this folder (damaged); run "
                            "`hegl ablation --select` again")
        return self.run(name).path

    def is_ours(self) -> bool:
        """The one rule: the marker (or, from before the marker, the results table next to runs/)."""
        return self._is_folder() and (self.marker.is_file() or (self.results_csv.is_file() and self.runs_dir.is_dir()))


class FamilyFolder(HeglFolder):
    """``ablations/<name>/`` of ``hegl ablation --family``: an ablation folder per benchmark member
    (``<member>`` and its cue-free ``<member>-cuefree``), and the summary across them."""

    MARKER = "hegl-family.json"
    KIND = "family ablation folder"


    def member(self, name: str, cue_free: bool = False) -> AblationFolder:
        return AblationFolder(self.path / (name + ("-cuefree" if cue_free else "")))

    @property
    def summary_json(self) -> Path:
        return self.path / "family.json"

    @property
    def summary_md(self) -> Path:
        return self.path / "family.md"

    @property
    def summary_csv(self) -> Path:
        return self.path / "family.csv"

    @property
    def summary_png(self) -> Path:
        return self.path / "family.png"



MAX_NAME_BYTES = 255  # one path component on every common file system


def validate_run_name(name: str) -> str:
    """A run name is one plain path component (no separators, not '.', '..' or 'latest', at most 255 bytes)."""
    text = str(name)
    parts_posix, parts_windows = PurePosixPath(text).parts, PureWindowsPath(text).parts
    if (text.strip() in ("", ".", "..", LATEST) or "\0" in text or len(parts_posix) != 1
            or len(parts_windows) != 1 or text.startswith("-") or not text.isprintable()):
        raise UserError(f"invalid run name {text!r}: a run name is one folder name such as 'baseline-1' "
                        "(no '/', '..' or absolute paths; use --runs-dir to choose where runs live)")
    if len(text.encode("utf-8")) > MAX_NAME_BYTES:
        raise UserError(f"invalid run name {text[:40]!r}...: {len(text.encode('utf-8'))} bytes, over the "
                        f"{MAX_NAME_BYTES} a folder name may have")
    return text


def is_hegl_run(folder: Path) -> bool:
    return RunFolder(folder).is_hegl_run()


def check_runs_dir(runs_dir: Path) -> None:
    """``runs_dir`` is a folder (or not there yet), and its ``latest`` is hegl's pointer or absent."""
    runs_dir = Path(runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise UserError(f"--runs-dir {runs_dir} is not a folder")
    latest = runs_dir / LATEST
    if latest.is_symlink():
        try:
            target = runs_dir / validate_run_name(os.readlink(latest))  # hegl's link: a run's bare name
            if not target.exists() or RunFolder(target).is_hegl_run():
                return
        except (UserError, OSError):
            pass
    elif not latest.exists():
        return
    elif latest.is_file() and latest.stat().st_size < 300:
        try:
            validate_run_name(latest.read_text().strip())
            return
        except (UserError, UnicodeDecodeError):
            pass
    raise UserError(f"{latest} is not hegl's pointer to the newest run (hegl did not make it); it was left "
                    "alone: rename it, or choose another --runs-dir")


def open_new_run(name: str | None, runs_dir: Path = RUNS_DIR, force: bool = False) -> tuple[Path, list[FolderLock]]:
    """Make ``runs_dir/<name>`` (a timestamp when no name) for a new run, mark it as hegl's, and hold
    its training locks (returned; release them when the run ends).

    An existing non-empty folder is refused, or with ``force`` emptied (keeping its lock file, so no
    reader can slip in), but only when it is a hegl run that no process uses; anything else is never
    deleted.
    """
    check_runs_dir(runs_dir)
    run = RunFolder(Path(runs_dir) / validate_run_name(time.strftime("%Y%m%d-%H%M%S") if name is None else name))
    path = run.path
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; refusing to use it as a run folder")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder")
    existed = path.is_dir() and any(p.name not in (LOCK, TRAIN_LOCK) for p in path.iterdir())
    # a run killed before its first epoch ended holds nothing worth keeping: it starts over by itself
    force = force or (existed and run.is_hegl_run() and not run.has_work())
    if existed and not force:
        raise UserError(f"run folder {path} already exists; use --resume to continue it, --force to "
                        "start it over, or another --name")
    if existed and not run.is_hegl_run():
        raise UserError(f"{path} is not a hegl run folder (no {RunFolder.MARKER}); --force only replaces "
                        "runs that hegl made, so it was left alone: choose another --name")
    path.mkdir(parents=True, exist_ok=True)
    lock = run.lock().acquire()  # raises, naming the holder, while any process writes or reads the run
    try:
        left = [p for p in path.iterdir() if p.name not in (LOCK, TRAIN_LOCK)]
        if left and not existed:
            raise UserError(f"run folder {path} already exists; use --resume to continue it, --force to "
                            "start it over, or another --name")
        foreign = run.foreign_entries()
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise UserError(f"run folder {path} holds {foreign[0].name}{more}, which hegl did not make; --force "
                            "never deletes what hegl did not make: move it out, or choose another --name")
        for entry in left:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        run.write_marker()
        training = FolderLock(run.train_lock_file, f"{run.KIND} {path} (training)").acquire()
    except BaseException:
        lock.release()
        raise
    lock.release()  # from here on readers may read what the run publishes; the training lock keeps writers out
    try:
        return path, [training, run.lock(shared=True).acquire()]
    except BaseException:
        training.release()
        raise


def remove_if_unused(run: Path) -> None:
    """Remove a run folder that holds nothing but hegl's marker and lock (a run that never started)."""
    folder = RunFolder(run)
    if folder.path.is_dir() and {p.name for p in folder.path.iterdir()} <= {RunFolder.MARKER, LOCK, TRAIN_LOCK}:
        shutil.rmtree(folder.path)


def mark_latest(run: Path) -> None:
    """Point ``<runs>/latest`` at ``run`` (a relative symlink, or a pointer file where links fail)."""
    check_runs_dir(run.parent)
    link = run.parent / LATEST
    tmp = run.parent / f".{LATEST}.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run.name, tmp)
    except OSError:
        tmp.write_text(run.name)
    os.replace(tmp, link)


def latest_pointer(link: Path) -> str:
    """The run name a ``latest`` pointer file holds (where links fail); anything else is one line."""
    data = link.read_bytes()[:1024]
    try:
        name = data.decode("utf-8").strip()
        return validate_run_name(name)
    except (UnicodeDecodeError, UserError):
        raise UserError(f"{link} is not hegl's pointer to the latest run (a link, or a file holding a run's "
                        "name); name the run instead, or remove it") from None


def resolve_run(run: Path | str | None, runs_dir: Path = RUNS_DIR) -> Path:
    """The run folder named, or the latest one; a clear error when there is none."""
    if run is None:
        link = Path(runs_dir) / LATEST
        if link.is_symlink():
            target = link.resolve()
        elif link.is_file():
            target = Path(runs_dir) / latest_pointer(link)
        else:
            raise UserError(f"no run given and no {link}; train one with `hegl train` or pass a run folder")
        run = target
    run = Path(run)
    if AblationFolder(run).is_ours():
        chosen = AblationFolder(run).chosen_run()
        if chosen is None:
            raise UserError(f"{run} is an ablation folder without a recipe selection; name one of its runs "
                            f"({run / 'runs'}/...), or choose one with `hegl ablation --select`")
        return chosen
    if not run.is_dir():
        candidate = Path(runs_dir) / run
        if candidate.is_dir():
            run = candidate
        else:
            raise UserError(f"run folder not found: {run}")
    return run
