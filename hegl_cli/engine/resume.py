"""Exact resume: the RNG and training state a run saves each epoch, and the checks that a resumed run
continues the same experiment (its stored config, the same cache)."""

from __future__ import annotations

import io
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hegl_cli.config import Config, changed_keys, config_from_dict, get_value, read_yaml
from hegl_cli.data.cache import CachedSplit
from hegl_cli.engine.run_folder import RunFolder
from hegl_cli.errors import UserError
from hegl_cli.fs.sealed import read_sealed, write_sealed

RESUME_SAFE_KEYS: tuple[str, ...] = (
    "train.epochs", "train.patience", "train.workers", "train.device", "eval.batch_size",
)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}



def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])



def write_state(path: Path, state: dict[str, Any]) -> None:
    """The training state, sealed with its digest (:mod:`hegl_cli.fs.sealed`), durably and atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_sealed(path, buffer.getvalue())


def load_state(path: Path) -> dict[str, Any]:
    """Read a training state without unpickling arbitrary objects; a foreign, damaged or corrupt file is
    named in one line."""
    payload = read_sealed(path, "training state", "the run cannot resume from it: start it over with --force, or "
                                                  "train a new run")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols before refusing them
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise UserError(f"{path}: not a hegl training state, refusing to load it ({reason})") from exc
    needed = ("epoch", "model", "optimizer", "scheduler", "rng", "stopper", "history")
    if not isinstance(state, dict) or any(k not in state for k in needed):
        raise UserError(f"{path}: not a hegl training state (missing keys)")
    return state



def stored_config(run: Path) -> Config:
    """The config a run was trained with."""
    path = RunFolder(run).config
    if not path.is_file():
        raise UserError(f"{run} has no {path.name}; it cannot be resumed")
    return config_from_dict(read_yaml(path), source=str(path))



def check_resume_config(run: Path, cfg: Config) -> dict[str, list[Any]]:
    """Refuse a resume whose config differs from the run's in any key not in :data:`RESUME_SAFE_KEYS`.

    Returns ``{key: [old, new]}`` for the safe keys that change.
    """
    stored = stored_config(run)
    changed = changed_keys(stored, cfg)
    unsafe = [k for k in changed if k not in RESUME_SAFE_KEYS]
    if unsafe:
        detail = ", ".join(f"{k} {get_value(stored, k)!r} -> {get_value(cfg, k)!r}" for k in unsafe[:4])
        raise UserError(f"--resume would change {detail} of {RunFolder(run).config} mid-run; a run trains with one "
                        f"config (only {', '.join(RESUME_SAFE_KEYS)} may change on resume): start a new run instead")
    return {k: [get_value(stored, k), get_value(cfg, k)] for k in changed}



def data_facts(split: CachedSplit) -> dict[str, Any]:
    """What a run's history records of the cache it trains on (to refuse a resume on another one)."""
    manifest = split.manifest
    return {"data": str(split.root), "data_fingerprint": manifest.get("fingerprint"),
            "data_classes": list(split.classes), "data_image_size": split.image_size,
            "data_splits": manifest.get("splits")}



def check_resume_data(run: Path, split: CachedSplit) -> None:
    """Refuse to resume on a cache other than the one the run started with, naming what changed."""
    started = next((r for r in reversed(RunFolder(run).read_history()) if r.get("event") == "start"), None)
    if started is None or started.get("data_fingerprint") is None:
        return  # a run from before the history recorded its cache
    now = data_facts(split)
    if started.get("data_fingerprint") == now["data_fingerprint"]:
        return
    changed = [f"{key[5:]} {started[key]!r} -> {now[key]!r}" for key in ("data_classes", "data_image_size", "data_splits")
               if key in started and started[key] != now[key]]
    detail = "; ".join(changed) if changed else "its images or annotations changed (fingerprint " \
        f"{started['data_fingerprint']} -> {now['data_fingerprint']})"
    raise UserError(f"--resume: the cache {split.root} is not the one {run} started with ({detail}); a run trains "
                    "on one dataset: start a new run")
