"""Training on several caches (data.path: [a, b]): classes the union, NaN where a cache does not
label a class (no loss there: a gradient check), each cache's own val, val AUC per source."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def two_caches(tmp_path_factory):
    """v2 (4 classes) and chestxdet13 (13 classes, 4 of them v2's), tiny, at 32 px."""
    from hegl_cli.apps.prepare import prepare_synthetic
    from hegl_cli.data.benchmark.generator import SyntheticSpec
    from hegl_cli.data.options import PrepareOptions

    root = tmp_path_factory.mktemp("sources")
    options = PrepareOptions(image_size=32, progress=False, workers=1)
    prepare_synthetic(root / "v2", options, SyntheticSpec(n_train=40, n_test=12, size=64))
    prepare_synthetic(root / "cxd", options, SyntheticSpec(n_train=40, n_test=12, size=64, member="chestxdet13"))
    return root / "v2", root / "cxd"


def test_combined_split_takes_the_union_and_leaves_unlabelled_classes_unknown(two_caches):
    from hegl_cli.data.cache import CachedSplit
    from hegl_cli.data.combined import CombinedSplit

    v2, cxd = (CachedSplit(p, "train") for p in two_caches)
    both = CombinedSplit([v2, cxd], ["v2", "cxd"])
    assert both.classes[:4] == v2.classes and len(both.classes) == 13  # v2's four are among ChestX-Det's 13
    assert len(both) == len(v2) + len(cxd) and both.labels.shape == (len(both), 13)
    only_cxd = [both.classes.index(c) for c in cxd.classes if c not in v2.classes]
    assert np.isnan(both.labels[: len(v2)][:, only_cxd]).all()  # v2 does not label them
    assert not np.isnan(both.labels[len(v2):]).any()  # ChestX-Det-like labels all 13
    for i in (0, len(v2) + 3):
        k, j = (0, i) if i < len(v2) else (1, i - len(v2))
        source = (v2, cxd)[k]
        assert np.array_equal(both.image(i), source.image(j))
        cols = [both.classes.index(c) for c in source.classes]
        assert np.array_equal(both.masks(i)[cols], source.masks(j))
        assert both.masks(i).sum() == source.masks(j).sum()


def test_a_class_a_cache_does_not_label_gives_no_classification_loss(two_caches):
    """Gradient check: on v2's images, the logits of the classes only ChestX-Det labels get no gradient."""
    from hegl_cli.config import load_config
    from hegl_cli.data.cache import CachedSplit
    from hegl_cli.data.combined import CombinedSplit
    from hegl_cli.losses import HybridCriterion
    from hegl_cli.models.model import build_model

    both = CombinedSplit([CachedSplit(p, "train") for p in two_caches], ["v2", "cxd"])
    cfg = load_config(None, TINY_OVERRIDES + ["loss.alpha=0", "loss.beta=0"])
    model = build_model(both.classes, cfg.model, 32)
    rows = np.arange(8)  # v2's images
    images = torch.from_numpy(np.stack([both.image(int(i)) for i in rows])).float().div(255).unsqueeze(1)
    out = model(images)
    logits = out["logits"]
    logits.retain_grad()
    labels = torch.from_numpy(both.labels[rows])
    masks = torch.from_numpy(np.stack([both.masks(int(i)) for i in rows]))
    loss = HybridCriterion(cfg.loss)(out, labels, masks, torch.from_numpy(both.has_mask[rows]))["loss"]
    loss.backward()
    unknown = torch.isnan(labels)
    assert unknown.any() and (logits.grad[unknown] == 0).all()
    assert (logits.grad[~unknown] != 0).any()


def test_training_on_two_caches_logs_val_auc_per_source(two_caches, tmp_path):
    v2, cxd = two_caches
    args = ["train", "--name", "two", "--runs-dir", str(tmp_path)]
    for item in TINY_OVERRIDES + [f"data.path=[{v2}, {cxd}]", "data.source_weights=[0.7, 0.3]"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert all({"val_auc_v2", "val_auc_cxd"} <= set(r) for r in records)
    meta = json.loads((tmp_path / "two" / "best.json").read_text())
    assert meta["data_sources"] == [str(v2), str(cxd)] and len(meta["classes"]) == 13
    # each source is scored by the classes it labels
    done = runner.invoke(app, ["evaluate", str(tmp_path / "two"), "--data", str(v2), "--no-faithfulness"])
    assert done.exit_code == 0, done.output
    report = json.loads(next((tmp_path / "two" / "eval" / "external").glob("*/test.json")).read_text())
    assert report["scored_classes"] == ["Nodule", "Mass", "Effusion", "Consolidation"]
    # without --data: the first source, scored the same way (this was exit 1, a TypeError)
    first = runner.invoke(app, ["evaluate", str(tmp_path / "two"), "--no-faithfulness"])
    assert first.exit_code == 0, first.output
    assert "scored on" in first.output
    shown = runner.invoke(app, ["report", str(tmp_path / "two"), "--gallery", "0"])
    assert shown.exit_code == 0, shown.output
    html = (tmp_path / "two" / "report.html").read_text()
    assert "Val macro AUC per source" in html and ">v2<" in html and ">cxd<" in html


def test_source_weights_decide_each_sources_share(two_caches):
    from hegl_cli.data.cache import CachedSplit
    from hegl_cli.data.combined import CombinedSplit
    from hegl_cli.engine.loader import WeightedEpochSampler, source_sampling_weights
    from hegl_cli.errors import UserError

    both = CombinedSplit([CachedSplit(p, "train") for p in two_caches], ["v2", "cxd"])
    sampler = WeightedEpochSampler(source_sampling_weights(both, [0.8, 0.2]), seed=0)
    drawn = np.concatenate([list(sampler) for sampler.epoch in range(20)])
    share = float((both.source[drawn] == 0).mean())
    assert abs(share - 0.8) < 0.05
    with pytest.raises(UserError, match="2 cache"):
        source_sampling_weights(both, [1.0])


def test_caches_of_different_sizes_are_refused_in_one_line(two_caches, tmp_path):
    from hegl_cli.apps.prepare import prepare_synthetic
    from hegl_cli.data.benchmark.generator import SyntheticSpec
    from hegl_cli.data.options import PrepareOptions

    other = tmp_path / "big"
    prepare_synthetic(other, PrepareOptions(image_size=64, progress=False, workers=1), SyntheticSpec(n_train=16, n_test=4, size=64))
    args = ["train", "--name", "x", "--runs-dir", str(tmp_path / "runs")]
    for item in [o for o in TINY_OVERRIDES if not o.startswith("data.image_size")] + [f"data.path=[{two_caches[0]}, {other}]"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "different sizes" in result.output, result.output
    assert not (tmp_path / "runs" / "x").exists()


def test_the_same_images_split_otherwise_in_two_caches_are_refused(two_caches, tmp_path):
    """One dataset prepared twice with other seeds puts some of one cache's test images in the other's
    train: training on both is refused in one line naming an image (it used to train silently)."""
    from hegl_cli.apps.prepare import prepare_synthetic
    from hegl_cli.data.benchmark.generator import SyntheticSpec
    from hegl_cli.data.combined import check_no_leak_across
    from hegl_cli.data.options import PrepareOptions
    from hegl_cli.errors import UserError

    v2, cxd = two_caches
    check_no_leak_across([v2, cxd])  # different images: fine
    again = tmp_path / "v2-seed5"
    prepare_synthetic(again, PrepareOptions(image_size=32, progress=False, workers=1, seed=5),
                      SyntheticSpec(n_train=40, n_test=12, size=64))
    with pytest.raises(UserError, match=r"val image .* is also a train image of .*the same pixels"):
        check_no_leak_across([v2, again])
    args = ["train", "--name", "leak", "--runs-dir", str(tmp_path / "runs")]
    for item in TINY_OVERRIDES + [f"data.path=[{v2}, {again}]"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "the same pixels" in result.output


def test_caches_combine_when_their_rules_read_their_images_alike(two_caches, tmp_path):
    """A cache of PNGs prepared under rule 2 combines with one of rule 3 (rule 3 changed DICOM only);
    one that holds DICOMs read under rule 2 is refused in one line, naming it."""
    import json
    import re
    import shutil

    from hegl_cli.data.cache import CachedSplit
    from hegl_cli.data.combined import CombinedSplit
    from hegl_cli.data.images import INTENSITY_RULE
    from hegl_cli.errors import UserError

    old = tmp_path / "old"
    shutil.copytree(two_caches[1], old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["intensity"] = {"rule": 2, "mode": "stored_range", "frames": "first"}  # before containers were recorded
    (old / "manifest.json").write_text(json.dumps(manifest))
    both = CombinedSplit([CachedSplit(two_caches[0], "train"), CachedSplit(old, "train")], ["v2", "old"])
    assert both.manifest["intensity"]["rule"] == INTENSITY_RULE and both.manifest["intensity"]["containers"] == ["pillow"]

    manifest["intensity"]["containers"] = ["dicom", "pillow"]  # as if some of its images were DICOMs
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=re.escape(f"{old}: DICOM images read under intensity rule 2 and under rule 3 differ")):
        CombinedSplit([CachedSplit(two_caches[0], "train"), CachedSplit(old, "train")], ["v2", "old"])
