"""Self-describing checkpoints: weights (safetensors) + metadata (JSON) per stem (``best``, ``last``),
and a trained run rebuilt from them (:func:`load_run`). The files are :class:`RunFolder`'s.

The metadata holds the resolved config (the image size is its ``data.image_size``), the class
names, the chosen thresholds, the versions with the CPU kernels in force, and the precision (asked,
in force, device, its bf16 units); the class embeddings are a buffer inside the weights.
:func:`load_model` rebuilds the model from these two files alone: no text encoder, no training
data, no hub access.
"""

from __future__ import annotations

import functools
import hashlib
import math
import platform
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from hegl_cli import __version__
from hegl_cli.config import Config, apply_eval_layers, config_from_dict
from hegl_cli.data.cache import CachedSplit, ClassView, cache_lock
from hegl_cli.data.combined import data_paths
from hegl_cli.data.images import CONTAINERS, INTENSITY_RULE, trained_reading_shift
from hegl_cli.data.pathologies import ClassMatch, match_classes
from hegl_cli.engine.device import select_device
from hegl_cli.engine.kernels import kernel_facts, settle_cpu_kernels
from hegl_cli.engine.precision import Precision, eval_precision
from hegl_cli.engine.run_folder import CHECKPOINTS, RunFolder
from hegl_cli.errors import UserError, first_line
from hegl_cli.fs.atomic import atomic_write_bytes, atomic_write_json, crash_point
from hegl_cli.fs.locks import FolderLock
from hegl_cli.fs.tables import read_json
from hegl_cli.models.model import ClassSubset, HEGLModel, build_model


def versions() -> dict[str, str]:
    import timm
    import transformers

    commit = source_commit()
    return {"hegl": __version__, **({"hegl_commit": commit} if commit else {}), "torch": torch.__version__,
            "timm": timm.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            **kernel_facts()}


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The git commit of the hegl source that is running (``git describe --always --dirty``) when it runs
    from a git checkout; None when installed from a wheel or when git cannot say (the model card states
    which)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def save_checkpoint(run: Path, stem: str, model: HEGLModel, cfg: Config, extra: dict[str, Any]) -> None:
    """Write the weights, then the metadata, of checkpoint ``stem`` into the run folder, each atomically
    and durably; the metadata carries the weights' SHA-256, so a reader knows the two belong together."""
    folder = RunFolder(run)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save_safetensors(state)
    atomic_write_bytes(folder.weights(stem), data)
    crash_point(f"checkpoint:{stem}:between-weights-and-meta")
    meta = {
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        "config": cfg.to_dict(),
        "classes": model.classes,
        "grid": list(model.grid),
        "text_embeddings": model.class_embeddings is not None,
        "versions": versions(),
        **extra,
    }
    atomic_write_json(folder.meta(stem), meta)


def checkpoint_paths(run: Path, checkpoint: str) -> tuple[Path, Path]:
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"unknown checkpoint '{checkpoint}' (valid: {', '.join(CHECKPOINTS)})")
    folder = RunFolder(run)
    weights, meta = folder.weights(checkpoint), folder.meta(checkpoint)
    if not weights.is_file() or not meta.is_file():
        if not RunFolder(run).is_ours():
            raise UserError(f"{run} is not a hegl run folder (no {RunFolder.MARKER} and no checkpoint); name a run "
                            "folder (runs/NAME) or an ablation folder with a selection")
        raise UserError(f"run folder {run} has no '{checkpoint}' checkpoint ({weights.name}); was it trained?")
    return weights, meta


def load_meta(run: Path, checkpoint: str = "best") -> dict[str, Any]:
    """A checkpoint's metadata, checked by type: a damaged or hand-edited file is one line naming it."""
    _, meta = checkpoint_paths(run, checkpoint)
    data = read_json(meta, "checkpoint metadata")
    missing = [k for k in ("config", "classes") if not isinstance(data, dict) or k not in data]
    if missing:
        raise UserError(f"{meta}: not a hegl checkpoint description (missing {', '.join(missing)})")
    problem = meta_problem(data)
    if problem:
        raise UserError(f"{meta}: not a hegl checkpoint description ({problem}); resume or retrain the run to "
                        "write it again")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def meta_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with checkpoint metadata read from disk (None: nothing)."""
    classes = data["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "'classes' is not a list of class names"
    if not isinstance(data["config"], dict):
        return "'config' is not a mapping"
    if "epoch" in data and (not isinstance(data["epoch"], int) or isinstance(data["epoch"], bool)):
        return f"'epoch' is {data['epoch']!r}, not a whole number"
    if "val_auc" in data and data["val_auc"] is not None and not _is_number(data["val_auc"]):
        return f"'val_auc' is {data['val_auc']!r}, not a number"
    thresholds = data.get("thresholds")
    if thresholds is not None and (not isinstance(thresholds, list) or len(thresholds) != len(classes)
                                   or not all(_is_number(t) for t in thresholds)):
        return f"'thresholds' is not one number per class ({len(classes)})"
    if "weights_sha256" in data and not isinstance(data["weights_sha256"], str):
        return "'weights_sha256' is not a digest"
    precision = data.get("precision")
    if precision is not None and (not isinstance(precision, dict) or precision.get("in_force") not in ("fp32", "bf16")):
        return "'precision' does not say fp32 or bf16 in force"
    return reading_problem(data) or source_problem(data)


def _is_whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def reading_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with how the metadata says the run's images were read and sized (None: nothing)."""
    if "intensity_rule" in data and not _is_whole(data["intensity_rule"], 1, 10**6):
        return f"'intensity_rule' is {data['intensity_rule']!r}, not a rule number"
    containers = data.get("intensity_containers")
    if containers is not None and (not isinstance(containers, list) or not all(isinstance(c, str) for c in containers)):
        return "'intensity_containers' is not a list of container names"
    if data.get("image_size") is not None and not _is_whole(data["image_size"], 8, 8192):
        return f"'image_size' is {data['image_size']!r}, not an image side in pixels (8-8192)"
    return None


def source_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with the metadata's record of the run's data and thresholds (None: nothing)."""
    if data.get("data") is not None and not isinstance(data["data"], str):
        return "'data' is not the path of the cache the run trained on"
    sources = data.get("data_sources")
    if sources is not None and (not isinstance(sources, list) or not all(isinstance(s, str) for s in sources)):
        return "'data_sources' is not a list of cache paths"
    if any(not math.isfinite(t) for t in data.get("thresholds") or []):
        return "'thresholds' holds a value that is not a finite number"
    return None


def image_size_of(meta: dict[str, Any]) -> int:
    """The model's input side in pixels: its config's ``data.image_size`` (checkpoints before 0.2 also
    stored it on its own, and that copy is the one they trained with)."""
    return int(meta.get("image_size") or meta["config"]["data"]["image_size"])


class MismatchedCheckpoint(UserError):
    """The weights are not the ones the metadata describes (written by different epochs, or altered)."""


def read_weights(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a corrupt or truncated file, or one whose digest is not
    ``sha256`` (the one its metadata recorded), is named in one line."""
    data = Path(path).read_bytes()
    try:
        tensors = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error type for bad files
        raise UserError(f"{path}: not a readable safetensors file ({first_line(exc, 10_000)})") from exc
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise MismatchedCheckpoint(
            f"{path}: these weights are not the model {Path(path).with_suffix('.json').name} describes (its "
            "recorded digest differs: a training killed between the two writes, or a replaced file); resume the "
            f"run (`hegl train --resume --name {Path(path).parent.name}`) to write them again, or use the other "
            "checkpoint")
    return tensors


def read_checkpoint(run: Path, checkpoint: str, wait: float = 10.0) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, weights) of one checkpoint that belong together. While the run is still training, a
    pair caught between the two writes of an epoch is read again (up to ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    while True:
        meta = load_meta(run, checkpoint)
        try:
            return meta, read_weights(checkpoint_paths(run, checkpoint)[0], meta.get("weights_sha256"))
        except MismatchedCheckpoint:
            if not RunFolder(run).is_training() or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def load_model(run: Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> tuple[HEGLModel, dict, Config]:
    """Rebuild the model of a run from its checkpoint alone; returns (model in eval mode, meta, config)."""
    weights, meta_path = checkpoint_paths(run, checkpoint)
    meta, state = read_checkpoint(run, checkpoint)
    cfg = config_from_dict(meta["config"], source=str(meta_path))
    cfg.data.image_size = image_size_of(meta)
    cfg.model.pretrained = False  # the checkpoint has the weights; never reach for the hub
    embeddings = state.get("class_embeddings")
    if embeddings is None and meta.get("text_embeddings"):
        raise UserError(f"{weights}: class embeddings missing from the checkpoint")
    if embeddings is None:
        cfg.model.text_encoder = "none"
    model = build_model(meta["classes"], cfg.model, cfg.data.image_size, class_embeddings=embeddings)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise UserError(f"{weights}: these weights are not the model that {meta_path} describes "
                        f"({detail})") from exc
    return model.to(device).eval(), meta, cfg


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
    """A trained run ready to predict: its model, metadata, config, device and (optionally) a split.

    It holds reader locks on the run folder (and the cache, with a split) until :meth:`close`: no
    ``hegl train --force`` or ``hegl prepare --force`` replaces them while it reads. Use it in a
    ``with`` block, or close it.
    """

    folder: Path
    checkpoint: str
    model: torch.nn.Module
    meta: dict[str, Any]
    cfg: Config
    device: torch.device
    data: Path
    split: CachedSplit | None
    thresholds: np.ndarray  # (C,) chosen on validation during training
    locks: list[FolderLock] = field(default_factory=list, repr=False)
    match: ClassMatch | None = None  # set when ``data`` is another cache than the run's own (external validation)
    precision: Precision | None = None  # what the model computes in here (eval.precision on this device)

    @property
    def in_force(self) -> str:
        """The precision every forward pass of this load uses: ``fp32`` or ``bf16``."""
        return self.precision.in_force if self.precision is not None else "fp32"

    def close(self) -> None:
        for lock in reversed(self.locks):
            lock.release()
        self.locks.clear()

    def __del__(self) -> None:  # a caller that never closed it: its reader locks go with it
        if getattr(self, "locks", None):
            self.close()

    def __enter__(self) -> LoadedRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def classes(self) -> list[str]:
        """The classes the model answers for here: all of them, or on another cache those both have."""
        return list(self.match.scored) if self.match is not None else list(self.meta["classes"])

    @property
    def external(self) -> bool:
        return self.match is not None

    @property
    def home_data(self) -> Path:
        """The cache the run trained on."""
        return Path(self.meta.get("data") or data_paths(self.cfg.data.path)[0])

    @property
    def image_size(self) -> int:
        return self.cfg.data.image_size

    def training_note(self) -> str | None:
        """A line when the run is still training: which checkpoint, of which epoch, this reads."""
        if not RunFolder(self.folder).is_training():
            return None
        return (f"{self.folder} is still training: this reads its '{self.checkpoint}' checkpoint, of epoch "
                f"{self.meta.get('epoch', '?')}")

    def reading_shift(self, containers: Iterable[str] = CONTAINERS, rule: int = INTENSITY_RULE) -> str | None:
        """How images of ``containers`` read under ``rule`` are read otherwise than this run's training
        images (:func:`trained_reading_shift`); None when alike."""
        return trained_reading_shift(int(self.meta.get("intensity_rule", 1)), self.meta.get("intensity_containers"),
                                     containers, rule)

    def reading_warning(self, containers: Iterable[str] = CONTAINERS) -> str | None:
        """A line when the run is still training, and when new images of ``containers`` are read under
        another intensity rule than the run's training images were."""
        notes = [self.training_note()]
        shift = self.reading_shift(containers)
        if shift:
            notes.append(f"{self.folder} was trained on images read under another intensity rule: {shift}, so its "
                         "predictions on them may shift; prepare its data again and retrain to compare like with like")
        return "; ".join(n for n in notes if n) or None


def load_run(run: Path, checkpoint: str = "best", data: Path | None = None, device: str = "auto",
             split: str | None = None, eval_layers: list[tuple[str, dict[str, Any]]] | None = None,
             command: str = "hegl evaluate") -> LoadedRun:
    """Load a run's checkpoint, the cache it trained on (or ``data``) and, if asked, one split of it.

    ``eval_layers``: the user's ``--config/--set`` layers (see :func:`config_layers`); only ``eval.*``
    keys may change a trained run's config. The precision (``eval.precision``, by default the run's
    own) is settled, with the CPU kernels it needs, before the model is built.
    """
    dev = select_device(device)
    checkpoint_paths(run, checkpoint)  # a folder that is no run is named before a lock file is left in it
    locks = [RunFolder(run).lock(shared=True).acquire()]
    try:
        precision = settle_precision(run, checkpoint, dev, eval_layers, command)
        model, meta, cfg = load_model(run, checkpoint, dev)
        apply_eval_layers(cfg, eval_layers or [], command)
        home = Path(meta.get("data") or data_paths(cfg.data.path)[0])
        folder = Path(data) if data is not None else home
        # a run on several caches scores each of them by its own classes, like another site's cache
        external = split is not None and (not same_folder(folder, home) or bool(meta.get("data_sources")))
        if split:
            locks.append(cache_lock(folder, shared=True).acquire())
        thresholds = np.asarray(meta.get("thresholds", [0.5] * len(meta["classes"])), dtype=np.float64)
        cached, match = None, None
        if split and external:
            cached, match = open_external(folder, split, meta["classes"], cfg.data.image_size)
            model, thresholds = ClassSubset(model, match.model_index), thresholds[list(match.model_index)]
        elif split:
            cached = open_split(folder, split, meta["classes"], cfg.data.image_size)
    except BaseException:
        for lock in reversed(locks):
            lock.release()
        raise
    return LoadedRun(Path(run), checkpoint, model, meta, cfg, dev, folder, cached, thresholds, locks, match, precision)


def settle_precision(run: Path, checkpoint: str, device: torch.device, eval_layers: list | None, command: str) -> Precision:
    """What a loaded run computes in (``eval.precision``, by default the run's own) on ``device``, with
    the CPU kernels it needs settled; from the checkpoint's metadata alone, before any kernel runs."""
    _, meta_path = checkpoint_paths(run, checkpoint)
    meta = load_meta(run, checkpoint)
    cfg = config_from_dict(meta["config"], source=str(meta_path))
    apply_eval_layers(cfg, eval_layers or [], command)
    precision = eval_precision(cfg.eval.precision, meta, cfg.train.precision, device)
    settle_cpu_kernels(precision.in_force, device.type)
    return precision


def same_folder(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def open_external(data: Path, split: str, classes: list[str], image_size: int) -> tuple[CachedSplit | ClassView,
                                                                                          ClassMatch]:
    """Another cache's split seen through the classes the model and the cache share (canonical names)."""
    cached = CachedSplit(data, split)
    if cached.image_size != image_size:
        raise UserError(f"{data}: images are {cached.image_size} px but the model expects {image_size} px; prepare "
                        f"it with --image-size {image_size}")
    match = match_classes(list(classes), cached.classes)
    if not match.scored:
        raise UserError(f"{data}: none of its classes ({', '.join(cached.classes)}) is one of the model's "
                        f"({', '.join(classes)}), by canonical name")
    return (cached if list(match.data_index) == list(range(len(cached.classes))) else ClassView(cached, match.data_index),
            match)
