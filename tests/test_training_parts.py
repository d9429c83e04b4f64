"""Pieces of training and faithfulness that 0.1.0 left untested: schedule, early stopping,
background swap, deletion/insertion."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_OVERRIDES


def test_warmup_then_cosine_schedule_hand_values():
    from hegl_cli.config import load_config
    from hegl_cli.engine.train import make_scheduler

    cfg = load_config(None, ["train.epochs=4", "train.warmup_epochs=1", "train.lr=1.0"])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, cfg, steps_per_epoch=2)  # 2 warm-up steps, 6 cosine steps
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert lrs == pytest.approx(expected)
    constant = load_config(None, ["train.epochs=4", "train.warmup_epochs=0", "train.schedule=constant"])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_scheduler(opt, constant, steps_per_epoch=3)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_early_stopping_counts_epochs_without_improvement():
    from hegl_cli.engine.train import EarlyStopping

    stopper = EarlyStopping(patience=2)
    flags = [stopper.update(v, e) for e, v in enumerate([0.5, 0.6, 0.6, float("nan"), 0.7, 0.65, 0.6])]
    assert flags == [True, True, False, False, True, False, False]
    assert stopper.best == 0.7 and stopper.best_epoch == 4 and stopper.should_stop
    assert not EarlyStopping(patience=0, bad_epochs=100).should_stop  # 0 = never stop early


def test_training_stops_early_on_validation_auc(tiny_cache, tmp_path, monkeypatch):
    from hegl_cli.config import load_config
    from hegl_cli.engine import train as engine

    scores = iter([0.7, 0.6, 0.65, 0.9, 0.9])
    monkeypatch.setattr(engine, "macro_auc", lambda probs, labels: next(scores))
    monkeypatch.setattr(engine, "_val_context_swap", lambda val, cfg: None)  # one val AUC per epoch
    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.epochs=5", "train.patience=2"])
    result = engine.train(cfg, name="es", runs_dir=tmp_path, progress=False, log=lambda *_: None)
    assert result.epochs_run == 3 and result.stopped_early and result.best_epoch == 1
    assert result.best_val_auc == 0.7


def test_background_swap_keeps_the_masks_and_takes_the_rest_from_a_finding_free_image(tiny_cache):
    from hegl_cli.data.cache import CachedSplit
    from hegl_cli.data.dataset import XrayDataset

    split = CachedSplit(tiny_cache, "train")
    data = XrayDataset(split, "background_swap", seed=3, swap_prob=1.0)
    plain = XrayDataset(split, "none")
    donors = [split.image(int(d)) for d in data.donors]
    assert len(donors) > 0
    swapped = 0
    for i in range(len(split)):
        sample, original = data[i], plain[i]
        keep = split.masks(i).max(0).astype(bool)
        image, before = sample["image"][0].numpy(), original["image"][0].numpy()
        assert torch.equal(sample["labels"], original["labels"]) and torch.equal(sample["masks"], original["masks"])
        if not data.swappable[i]:
            np.testing.assert_array_equal(image, before)
            continue
        np.testing.assert_allclose(image[keep], before[keep], atol=1e-6)  # the finding stays
        outside = ~keep
        assert any(np.allclose(image[outside], d[outside], atol=1e-6) for d in donors)  # the rest is a donor's
        swapped += int(not np.allclose(image, before))
    assert swapped > 0
    data.set_epoch(0)
    first = data[0]["image"]
    data.set_epoch(0)
    assert torch.equal(first, data[0]["image"])  # drawn from (seed, epoch, index): resumable


class TextureModel(nn.Module):
    """p = sigmoid(k * (std of the top-left quadrant - 0.25)): reads fine texture that a blur removes."""

    grid = (4, 4)

    def forward(self, images, all_layers=False):
        b = images.shape[0]
        s = images.shape[-1]
        logit = 20 * (images[:, 0, : s // 2, : s // 2].flatten(1).std(1) - 0.25)
        attention = torch.zeros(b, 1, 4, 4)
        attention[:, :, :2, :2] = 0.25
        return {"logits": logit.unsqueeze(1), "attention": attention}


def test_deletion_and_insertion_reward_a_map_that_points_at_the_evidence():
    from hegl_cli.evaluation.faithfulness import deletion_insertion, patch_masks

    image = torch.zeros(1, 32, 32)
    image[:, :16, :16] = (torch.arange(16).view(-1, 1) + torch.arange(16).view(1, -1)) % 2  # checkerboard
    model, device = TextureModel(), torch.device("cpu")
    faithful = np.zeros((4, 4))
    faithful[:2, :2] = 0.25
    wrong = np.full((4, 4), 1 / 12)
    wrong[:2, :2] = 0.0  # the evidence comes last
    rng = np.random.default_rng(0)
    good = deletion_insertion(model, image, 0, faithful, 8, device, rng)
    bad = deletion_insertion(model, image, 0, wrong, 8, device, np.random.default_rng(0))
    assert good["deletion_attention"] < good["deletion_random"] < bad["deletion_attention"]
    assert good["insertion_attention"] > good["insertion_random"] > bad["insertion_attention"]
    masks = patch_masks(np.arange(16), 4, (4, 4), 32)
    assert masks.shape == (5, 1, 32, 32)
    assert [int(m.sum().item()) // 64 for m in masks] == [0, 4, 8, 12, 16]  # 64 pixels per 8x8 patch


def test_gradient_accumulation_equals_the_full_batch(tiny_cache, tmp_path):
    """Two half batches with train.accumulate=2 give the gradient of the whole batch; one optimizer
    step per group, also for a short last group."""
    from hegl_cli.config import load_config
    from hegl_cli.engine.train import Trainer

    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "model.dropout=0", "loss.alpha=0",
                                              "loss.beta=0", "train.batch_size=8", "train.accumulate=2"])
    trainer = Trainer(cfg, tmp_path, resume=False, progress=False, log=lambda *_: None)
    batch = next(iter(torch.utils.data.DataLoader(trainer.dataset, batch_size=16)))
    half = [{k: v[s] for k, v in batch.items()} for s in (slice(0, 8), slice(8, 16))]
    trainer.net.train()
    trainer.optimizer.zero_grad()
    trainer._forward_backward(batch, 0, 0)
    whole = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    trainer.optimizer.zero_grad()
    for part in half:
        trainer._forward_backward(part, 0, 0, scale=0.5)
    parts = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    assert len(whole) == len(parts) > 10
    for a, b in zip(whole, parts):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    trainer.optimizer.zero_grad()
    assert len(trainer.loader) == 5  # 41 images in batches of 8
    trainer._train_epoch(0)
    assert trainer.scheduler.last_epoch == 3  # groups of 2, 2 and 1 batches


@pytest.mark.slow
def test_gpu_benchmark_script_runs_its_whole_flow_on_cpu(tmp_path):
    """benchmarks/gpu.sh, in its tiny CPU form: cache, timed window, ratios, train, evaluate, explain, predict."""
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path / "bench"), "HEGL_GPU_TINY": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(repo / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench" / "train.json").read_text())
    assert result["images_per_s"] > 0 and result["gflop_per_image"] > 0
    ratios = json.loads((tmp_path / "bench" / "run.json").read_text())["configs"]["demo"]
    assert {"hegl_over_timm_step", "a1b1_over_a0b0_step", "mfu_hegl_over_timm", "loader_over_model_train",
            "predict_over_forward"} <= set(ratios)
    assert (tmp_path / "bench" / "predictions.csv").is_file() and (tmp_path / "bench" / "explain" / "grid.png").is_file()


def test_context_swap_keeps_the_masks_on_a_fixed_finding_free_donor(tiny_cache):
    from hegl_cli.data.cache import CachedSplit
    from hegl_cli.data.swap import context_swap, finding_free_pairing, swappable

    split = CachedSplit(tiny_cache, "train")
    perturb = context_swap(split, seed=5)
    donors = finding_free_pairing(split.labels, seed=5)
    index = np.arange(len(split))
    images = torch.from_numpy(np.stack([split.image(int(i)) for i in index]))[:, None]
    out = perturb(images, index)
    ok = swappable(split)
    assert ok.any() and torch.equal(perturb(images, index), out)  # fixed pairing
    for i in index:
        keep = split.masks(int(i)).max(0).astype(bool)
        got, before = out[i, 0].numpy(), images[i, 0].numpy()
        if not ok[i]:
            np.testing.assert_array_equal(got, before)
            continue
        donor = split.image(int(donors[i]))
        np.testing.assert_allclose(got[keep], before[keep], atol=1e-6)
        np.testing.assert_allclose(got[~keep], donor[~keep], atol=1e-6)


def test_select_on_val_swapped_selects_and_thresholds_on_swapped_val(tiny_cache, tmp_path, monkeypatch):
    from hegl_cli.config import load_config
    from hegl_cli.engine import train as engine

    seen = []
    real = engine.predict_split

    def spy(model, split, device, batch_size, indices=None, perturb=None, **kw):
        seen.append(perturb is not None)
        return real(model, split, device, batch_size, indices, perturb=perturb, **kw)

    monkeypatch.setattr(engine, "predict_split", spy)
    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.epochs=2",
                                              "train.select_on=val_swapped"])
    engine.train(cfg, name="sw", runs_dir=tmp_path, progress=False, log=lambda *_: None)
    assert seen == [False, True, False, True]  # each epoch: plain val, then the swapped val
    records = [json.loads(line) for line in (tmp_path / "sw" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val_auc"] == r["val_auc_swapped"] and "val_auc_plain" in r for r in records)
    best = json.loads((tmp_path / "sw" / "best.json").read_text())
    assert best["selected_on"] == "val_swapped" == best["thresholds_chosen_on"]


def test_select_on_val_swapped_needs_masks_and_finding_free_val_images(tiny_cache):
    from types import SimpleNamespace

    from hegl_cli.config import load_config
    from hegl_cli.engine.train import _val_context_swap
    from hegl_cli.errors import UserError

    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.select_on=val_swapped"])
    sick = SimpleNamespace(labels=np.ones((4, 2)), has_mask=np.ones((4, 2), bool))
    with pytest.raises(UserError, match="0 finding-free"):
        _val_context_swap(sick, cfg)
    unmasked = SimpleNamespace(labels=np.zeros((4, 2)), has_mask=np.zeros((4, 2), bool))
    with pytest.raises(UserError, match="0 masked"):
        _val_context_swap(unmasked, cfg)
    cfg.train.select_on = "val"
    assert _val_context_swap(sick, cfg) is None  # plain selection does not need it
