"""The format registry: a format declared in one place (here, a test module) is a `--format` of
`hegl prepare`, end to end through the shared builder and into training, with nothing else to edit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.cli.app import app
from hegl_cli.data.formats import registry
from hegl_cli.data.formats.registry import DatasetFormat, FormatRead, ReadRequest, register
from hegl_cli.data.records import Finding, Record, SplitSource

runner = CliRunner()
TOY_CLASSES = ("Nodule", "Effusion")


def read_toy(request: ReadRequest) -> FormatRead:
    """``DIR/labels.json`` ({file: [classes]}) over ``DIR/*.png``; a positive image's finding covers
    its left half; test is every fifth image."""
    source = Path(request.source)
    labels = json.loads((source / "labels.json").read_text())
    records: dict[str, list[Record]] = {"train": [], "test": []}
    for k, (name, found) in enumerate(sorted(labels.items())):
        findings = [Finding(c, (0.0, 0.0, 16.0, 32.0)) for c in found if c in request.classes]
        records["test" if k % 5 == 0 else "train"].append(Record(name, findings, patient=f"p{k}"))
    return FormatRead(sources=[SplitSource(s, source / "labels.json", source, records=r) for s, r in records.items()],
                      classes=list(request.classes), files={"labels": source / "labels.json"},
                      where=[str(source.resolve())])


@pytest.fixture()
def toy_format():
    fmt = register(DatasetFormat("toy", read_toy, classes=TOY_CLASSES, about="a test's own layout"))
    yield fmt
    registry.FORMATS.pop("toy")


@pytest.fixture()
def toy_source(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    source = tmp_path / "toy"
    source.mkdir()
    labels = {}
    for k in range(40):
        name = f"img{k:02d}.png"
        found = [c for j, c in enumerate(TOY_CLASSES) if (k >> j) & 1]
        pixels = rng.integers(0, 60, (32, 32), dtype=np.uint8)
        if found:
            pixels[:, :16] += 120  # the finding is visible where its box is
        Image.fromarray(pixels).save(source / name)
        labels[name] = found
    (source / "labels.json").write_text(json.dumps(labels))
    return source


def test_a_format_registered_from_outside_prepares_and_trains(toy_format, toy_source, tmp_path):
    from hegl_cli.config import load_config
    from hegl_cli.data.cache import CachedSplit
    from hegl_cli.engine.train import train

    cache = tmp_path / "cache"
    result = runner.invoke(app, ["-q", "prepare", "--format", "toy", "--source", str(toy_source), "--out", str(cache),
                                 "--image-size", "32", "--workers", "1", "--set", "data.val_fraction=0.25"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["format"] == "toy" and manifest["classes"] == list(TOY_CLASSES)
    assert manifest["splits"]["test"] == 8 and manifest["splits"]["train"] + manifest["splits"]["val"] == 32
    train_split = CachedSplit(cache, "train")
    nodule = train_split.labels[:, 0] == 1
    assert nodule.any() and train_split.has_mask[nodule, 0].all()  # the reader's boxes became masks
    again = runner.invoke(app, ["prepare", "--format", "toy", "--source", str(toy_source), "--out", str(cache),
                                "--image-size", "32", "--workers", "1", "--set", "data.val_fraction=0.25"])
    assert again.exit_code == 0 and "up to date" in again.output  # the identity covers the format's inputs

    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={cache}", "train.epochs=1"])
    outcome = train(cfg, name="toy", runs_dir=tmp_path / "runs", progress=False, log=lambda *_: None)
    assert outcome.epochs_run == 1
    assert json.loads((tmp_path / "runs" / "toy" / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1


def test_an_unknown_format_names_the_registered_ones(toy_format):
    result = runner.invoke(app, ["prepare", "--format", "nosuch", "--source", "."])
    assert result.exit_code == 2
    assert "unknown format 'nosuch'" in result.output and "toy" in result.output and "nih" in result.output


def test_every_builtin_format_is_registered_by_its_own_module():
    names = registry.format_names()
    assert set(registry.BUILTIN_FORMATS) <= set(names) | {"chestxdet"}
    assert {"synthetic", "chestxdet", "chestxdet10", "nih", "rsna", "vindr", "siim", "table"} <= set(names)
    for name in names:
        fmt = registry.get_format(name)
        module = fmt.read.__module__
        assert module.startswith("hegl_cli.data.formats.") or name == "toy", (name, module)


def test_a_format_key_set_for_another_formats_cache_is_refused(tiny_cache):
    """data.label_fusion belongs to VinDr's prepare: training a v2 cache with it set is one line."""
    from hegl_cli.config import load_config
    from hegl_cli.data.cache import CachedSplit
    from hegl_cli.data.manifest import adopt_cache_facts
    from hegl_cli.errors import UserError

    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "data.label_fusion=majority"])
    with pytest.raises(UserError, match=r"data.label_fusion is a setting of `hegl prepare --format vindr`"):
        adopt_cache_facts(cfg, CachedSplit(tiny_cache, "train"))
    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "data.benchmark=tags"])
    with pytest.raises(UserError, match=r"prepared with data.benchmark=v2"):
        adopt_cache_facts(cfg, CachedSplit(tiny_cache, "train"))
