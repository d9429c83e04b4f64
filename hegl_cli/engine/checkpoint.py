"""Self-describing checkpoints: ``<stem>.safetensors`` (weights) + ``<stem>.json`` (metadata).

The metadata holds the resolved config, class names, image size, chosen thresholds and versions;
the class embeddings are a buffer inside the weights. :func:`load_model` rebuilds the model from
these two files alone: no text encoder, no training data, no hub access.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hegl_cli import __version__
from hegl_cli.config import Config, config_from_dict
from hegl_cli.engine.io import atomic_write, atomic_write_json
from hegl_cli.errors import UserError
from hegl_cli.models.model import HEGLModel, build_model

CHECKPOINTS = ("best", "last")


def versions() -> dict[str, str]:
    import timm
    import transformers

    return {"hegl": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def save_checkpoint(run: Path, stem: str, model: HEGLModel, cfg: Config, extra: dict[str, Any]) -> None:
    """Write ``run/<stem>.safetensors`` then ``run/<stem>.json``, each atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(run / f"{stem}.safetensors", lambda tmp: save_file(state, str(tmp)))
    meta = {
        "config": cfg.to_dict(),
        "classes": model.classes,
        "image_size": model.image_size,
        "grid": list(model.grid),
        "text_embeddings": model.class_embeddings is not None,
        "versions": versions(),
        **extra,
    }
    atomic_write_json(run / f"{stem}.json", meta)


def checkpoint_paths(run: Path, which: str) -> tuple[Path, Path]:
    if which not in CHECKPOINTS:
        raise UserError(f"unknown checkpoint '{which}' (valid: {', '.join(CHECKPOINTS)})")
    weights, meta = run / f"{which}.safetensors", run / f"{which}.json"
    if not weights.is_file() or not meta.is_file():
        raise UserError(f"run folder {run} has no '{which}' checkpoint ({weights.name}); was it trained?")
    return weights, meta


def load_meta(run: Path, which: str = "best") -> dict[str, Any]:
    _, meta = checkpoint_paths(run, which)
    try:
        data = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{meta}: corrupt checkpoint metadata ({exc})") from exc
    missing = [k for k in ("config", "classes", "image_size") if not isinstance(data, dict) or k not in data]
    if missing:
        raise UserError(f"{meta}: not a hegl checkpoint description (missing {', '.join(missing)})")
    return data


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a corrupt or truncated file is named in one line."""
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type (and OSError) for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable safetensors file ({reason})") from exc


def load_model(run: Path, which: str = "best", device: str | torch.device = "cpu") -> tuple[HEGLModel, dict, Config]:
    """Rebuild the model of a run from its checkpoint alone; returns (model in eval mode, meta, config)."""
    weights, _ = checkpoint_paths(run, which)
    meta = load_meta(run, which)
    cfg = config_from_dict(meta["config"], source=str(run / f"{which}.json"))
    cfg.model.pretrained = False  # the checkpoint has the weights; never reach for the hub
    state = read_weights(weights)
    embeddings = state.get("class_embeddings")
    if embeddings is None and meta.get("text_embeddings"):
        raise UserError(f"{weights}: class embeddings missing from the checkpoint")
    if embeddings is None:
        cfg.model.text_encoder = "none"
    model = build_model(meta["classes"], cfg.model, int(meta["image_size"]), class_embeddings=embeddings)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise UserError(f"{weights}: these weights are not the model that {run / (which + '.json')} describes "
                        f"({detail})") from exc
    return model.to(device).eval(), meta, cfg
