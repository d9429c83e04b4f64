"""Shared fixtures: tiny configs, a tiny synthetic cache, a tiny trained run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# A ViT small enough to train in seconds: 32 px images, 8 px patches -> 4x4 grid.
TINY_OVERRIDES = [
    "data.image_size=32",
    "model.encoder_kwargs={patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}",
    "model.text_encoder=none",
    "model.decoder_dim=32",
    "model.decoder_layers=2",
    "model.decoder_heads=2",
    "model.decoder_ffn=64",
    "model.head=per_class",
    "train.batch_size=16",
    "train.epochs=2",
    "train.warmup_epochs=0",
    "train.lr=1e-3",
    "train.device=cpu",
    "eval.bootstrap=20",
    "eval.faithfulness_images=4",
    "eval.faithfulness_steps=4",
    "eval.batch_size=32",
]


def shared_data(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared reference data not found: {path}")
    return path


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A 48/16 image synthetic cache at 32 px (made once per session)."""
    from hegl_cli.apps.prepare import prepare_synthetic
    from hegl_cli.data.benchmark.generator import SyntheticSpec
    from hegl_cli.data.options import PrepareOptions

    out = tmp_path_factory.mktemp("cache") / "synthetic"
    prepare_synthetic(out, PrepareOptions(image_size=32, progress=False, workers=1),
                      SyntheticSpec(n_train=48, n_test=16, size=64))
    return out


@pytest.fixture()
def tiny_config(tiny_cache):
    from hegl_cli.config import load_config

    return load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}"])


@pytest.fixture(scope="session")
def _trained_master(tiny_cache, tmp_path_factory) -> Path:
    """A tiny run trained for 2 epochs through the engine, once per session; never handed out."""
    from hegl_cli.config import load_config
    from hegl_cli.engine.train import train

    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}"])
    runs = tmp_path_factory.mktemp("runs")
    return train(cfg, name="tiny", runs_dir=runs, progress=False, log=lambda *_: None).run


@pytest.fixture()
def trained_run(_trained_master, tmp_path) -> Path:
    """A private copy of the tiny trained run (tests write eval/, explain/ into it)."""
    from hegl_cli.engine.run_folder import mark_latest

    copy = tmp_path / "runs" / "tiny"
    shutil.copytree(_trained_master, copy)
    mark_latest(copy)
    return copy


def replace_weights(run: Path, tensors: dict, checkpoint: str = "best") -> None:
    """Put other weights into a run's checkpoint as hegl would (the metadata's digest follows them), for
    tests that need a second model; a file replaced behind hegl's back is refused (test_crash)."""
    import hashlib
    import json

    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()})
    (run / f"{checkpoint}.safetensors").write_bytes(data)
    meta = json.loads((run / f"{checkpoint}.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    (run / f"{checkpoint}.json").write_text(json.dumps(meta))


def reseal(cache: Path) -> None:
    """Seal a cache a test edited on purpose (to make a dataset it needs) as prepare seals what it writes:
    an edit hegl did not make is otherwise refused as damage (test_integrity)."""
    from hegl_cli.data.cache import write_inventory

    write_inventory(cache)
