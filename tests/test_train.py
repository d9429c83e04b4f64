"""The training engine: whole CLI runs, exact resume after SIGKILL, DDP, NaN stop, atomic writes."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.cli.app import app
from hegl_cli.engine.checkpoint import load_model
from hegl_cli.errors import TrainingDiverged, UserError
from hegl_cli.fs.atomic import atomic_write

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def tiny_args(cache: Path, *extra: str) -> list[str]:
    args = []
    for item in TINY_OVERRIDES + [f"data.path={cache}", *extra]:
        args += ["--set", item]
    return args


def test_cli_train_writes_a_complete_run(tiny_cache, tmp_path):
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train", "--name", "one", "--runs-dir", str(runs), "--alpha", "1", "--beta", "1",
                                 *tiny_args(tiny_cache)])
    assert result.exit_code == 0, result.output
    run = runs / "one"
    for name in ("config.yaml", "best.safetensors", "best.json", "last.safetensors", "last.json", "state.pt",
                 "metrics.jsonl", "curves.png"):
        assert (run / name).is_file(), name
    assert (runs / "latest").resolve() == run.resolve()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "train_ce", "train_ha", "train_dal", "val_auc", "val_f1", "val_mcc"} <= set(records[0])
    assert "images/s" in result.output
    meta = json.loads((run / "best.json").read_text())
    assert meta["classes"] == ["Nodule", "Mass", "Effusion", "Consolidation"]
    assert len(meta["thresholds"]) == 4 and meta["config"]["loss"]["alpha"] == 1.0
    model, _, _ = load_model(run, "best")
    out = model(torch.rand(1, 1, 32, 32))
    assert out["logits"].shape == (1, 4)


def test_train_refuses_existing_run_without_force(tiny_cache, tmp_path):
    args = ["train", "--name", "x", "--runs-dir", str(tmp_path), *tiny_args(tiny_cache, "train.epochs=1")]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output and "--force" in again.output
    assert runner.invoke(app, args + ["--force"]).exit_code == 0


@pytest.mark.parametrize("extra,message", [
    (["--data", "/nonexistent/cache"], "run `hegl prepare` first"),
    (["--resume"], "--resume needs --name"),
    (["--resume", "--name", "nothing-here"], "nothing to resume"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], "cuda"),
    (["--set", "data.image_size=64"], "prepared at 32 px"),
    (["--set", "model.encoder=vit_tiny_patch16_22"], "closest: vit_tiny_patch16_224"),
    (["--set", "model.text_encoder=/nonexistent/bert"], "cannot load text encoder"),
    (["--set", "data.image_size=32", "--set", "model.encoder_kwargs={patch_size: 7}"], "not divisible by the patch size 7"),
])
def test_train_user_errors_exit_2_with_one_line(tiny_cache, tmp_path, extra, message):
    args = ["train", "--runs-dir", str(tmp_path), *tiny_args(tiny_cache), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def _subprocess_train(cwd: Path, cache: Path, name: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "hegl_cli", "-q", "train", "--name", name, "--runs-dir", str(cwd / "runs"),
           *tiny_args(cache, "train.epochs=4", "train.deterministic=true", "train.warmup_epochs=1"), *extra]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tiny_cache, tmp_path):
    reference = _subprocess_train(tmp_path, tiny_cache, "ref")
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out.decode()

    victim = _subprocess_train(tmp_path, tiny_cache, "killed")
    metrics = tmp_path / "runs" / "killed" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    from hegl_cli.engine.resume import load_state

    state = load_state(tmp_path / "runs" / "killed" / "state.pt")
    assert state["epoch"] < 3, "the run finished before it could be killed"

    resumed = _subprocess_train(tmp_path, tiny_cache, "killed", "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out.decode()
    a = load_file(str(tmp_path / "runs" / "ref" / "last.safetensors"))
    b = load_file(str(tmp_path / "runs" / "killed" / "last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    lines = (tmp_path / "runs" / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_with_gloo(tiny_cache, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "hegl_cli", "-q", "train", "--name", "ddp",
           "--runs-dir", str(tmp_path / "runs"), *tiny_args(tiny_cache)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "runs" / "ddp"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # written by rank 0 only
    assert (run / "best.safetensors").is_file()
    assert proc.stdout.count("done") + proc.stderr.count("done") == 1  # one rank logs


def test_non_finite_loss_stops_with_step_and_term_and_keeps_checkpoint(tiny_config, tmp_path, monkeypatch):
    from hegl_cli.engine import train as engine
    from hegl_cli.losses import HybridCriterion

    original = HybridCriterion.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2, step 1 (41 training images, batches of 16: 2 steps per epoch)
            terms["dal"] = terms["dal"] * float("nan")
        return terms

    monkeypatch.setattr(HybridCriterion, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"non-finite 'dal' loss at epoch 2, step 1"):
        engine.train(tiny_config, name="nan", runs_dir=tmp_path, progress=False, log=lambda *_: None)
    meta = json.loads((tmp_path / "nan" / "last.json").read_text())
    assert meta["epoch"] == 1
    load_model(tmp_path / "nan", "best")

    calls["n"] = 0
    result = runner.invoke(app, ["train", "--name", "nan2", "--runs-dir", str(tmp_path),
                                 *tiny_args(Path(tiny_config.data.path))])
    assert result.exit_code == 1 and "non-finite 'dal'" in result.output and "Traceback" not in result.output


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_atomic_write_gives_normal_permissions(tmp_path):
    target = tmp_path / "meta.json"
    atomic_write(target, lambda tmp: tmp.write_text("{}"))
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def one_error_line(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def _val_thresholds(run: Path, checkpoint: str) -> np.ndarray:
    from hegl_cli.engine.checkpoint import load_run
    from hegl_cli.evaluation.classification import choose_thresholds
    from hegl_cli.models.inference import predict_split

    loaded = load_run(run, checkpoint, split="val", device="cpu")
    preds = predict_split(loaded.model, loaded.split, loaded.device, 64)
    return choose_thresholds(preds.probs, loaded.split.labels, loaded.meta["threshold_metric"])


def _train(tmp_path: Path, cache: Path, *args: str):
    return runner.invoke(app, ["train", "--name", "r", "--runs-dir", str(tmp_path / "runs"), *args])


def test_training_without_val_split_is_refused(tmp_path):
    """0.1.0 silently validated on test: early stopping, best checkpoint and thresholds chosen on test."""
    cache = tmp_path / "noval"
    prep = runner.invoke(app, ["-q", "prepare", "--out", str(cache), "--image-size", "32", "--workers", "1",
                               "--set", "data.val_fraction=0", "--set", "data.synthetic_train=24",
                               "--set", "data.synthetic_test=8", "--set", "data.synthetic_source_size=64"])
    assert prep.exit_code == 0, prep.output
    assert "val" not in json.loads((cache / "manifest.json").read_text())["splits"]
    result = runner.invoke(app, ["train", "--runs-dir", str(tmp_path / "runs"), *tiny_args(cache)])
    one_error_line(result, "has no 'val' split")
    assert "data.val_fraction" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_last_checkpoint_carries_its_own_thresholds(tiny_cache, tmp_path):
    """0.1.0 wrote the best epoch's thresholds into last.json."""
    from hegl_cli.config import load_config
    from hegl_cli.engine.train import train

    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.epochs=4", "train.lr=3e-3"])
    run = train(cfg, name="t", runs_dir=tmp_path, progress=False, log=lambda *_: None).run
    best, last = (json.loads((run / f"{w}.json").read_text()) for w in ("best", "last"))
    assert last["epoch"] == 4
    np.testing.assert_allclose(last["thresholds"], _val_thresholds(run, "last"))
    np.testing.assert_allclose(best["thresholds"], _val_thresholds(run, "best"))
    assert last["thresholds_chosen_on"] == "val"


def test_resume_keeps_the_run_config_and_refuses_conflicts(tiny_cache, tmp_path):
    """0.1.0 re-resolved the config from today's command line: resuming without --alpha 0 switched to 1."""
    first = _train(tmp_path, tiny_cache, "--alpha", "0", *tiny_args(tiny_cache, "train.epochs=1"))
    assert first.exit_code == 0, first.output
    run = tmp_path / "runs" / "r"
    # Resume with only a safe change: the run's alpha 0 stays, the change is recorded.
    resumed = runner.invoke(app, ["train", "--name", "r", "--runs-dir", str(tmp_path / "runs"), "--resume",
                                  "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["loss"]["alpha"] == 0.0 and stored["train"]["epochs"] == 2
    assert json.loads((run / "last.json").read_text())["config"]["loss"]["alpha"] == 0.0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[1]["changed"] == {"train.epochs": [1, 2]}
    # A change of what is trained is refused, naming the key; nothing is rewritten.
    before = (run / "config.yaml").read_bytes()
    for args, key in ((["--alpha", "1"], "loss.alpha"), (["--set", "model.decoder_dim=64"], "model.decoder_dim"),
                      (["--set", "data.augment=background_swap"], "data.augment")):
        result = runner.invoke(app, ["train", "--name", "r", "--runs-dir", str(tmp_path / "runs"), "--resume",
                                     "--epochs", "3", *args])
        one_error_line(result, key)
    assert (run / "config.yaml").read_bytes() == before


def test_every_rank_trains_at_least_one_step():
    """0.1.0 decided drop_last from the whole dataset: n=40, 4 ranks, batch 16 gave 0 batches per rank."""
    from hegl_cli.engine.loader import make_loader

    class Indices(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return i

    seen = []
    for rank in range(4):
        loader, sampler = make_loader(Indices(), batch_size=16, seed=3, rank=rank, world=4)
        sampler.set_epoch(2)
        batches = [b.tolist() for b in loader]
        assert len(batches) >= 1 and len(loader) == len(batches)
        seen += [i for b in batches for i in b]
    assert sorted(seen) == list(range(40))  # a partition: every image once per epoch
    big, _ = make_loader(Indices(), batch_size=16, seed=3)
    assert len(big) == 2  # 40 on one rank: two full batches, the short last one dropped


def test_sampler_order_depends_on_seed_and_epoch_only():
    from hegl_cli.engine.loader import make_loader

    def order(seed: int, epoch: int) -> list[int]:
        loader, sampler = make_loader(list(range(30)), batch_size=30, seed=seed)
        sampler.set_epoch(epoch)
        return [int(i) for b in loader for i in b]

    assert order(0, 1) == order(0, 1) and order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)


def test_divergence_in_the_first_epoch_promises_no_checkpoint(tiny_cache, tmp_path, monkeypatch):
    from hegl_cli.losses import HybridCriterion

    original = HybridCriterion.forward

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        terms["ce"] = terms["ce"] * float("inf")
        return terms

    monkeypatch.setattr(HybridCriterion, "forward", poisoned)
    args = ["train", "--name", "d", "--runs-dir", str(tmp_path)]
    for item in TINY_OVERRIDES + [f"data.path={tiny_cache}"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "epoch 1, step 1" in result.output and "no checkpoint was written" in result.output
    assert "is kept" not in result.output


@pytest.mark.slow
def test_two_trainings_of_one_name_at_once(tiny_cache, tmp_path):
    """One wins, the other exits 2 naming the holder; the run's metrics come from one process only."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = []
    for item in TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.epochs=3"]:
        args += ["--set", item]
    cmd = [sys.executable, "-m", "hegl_cli", "-q", "train", "--name", "same", "--runs-dir", str(tmp_path), *args]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    loser = next(err for p, (_, err) in zip(procs, outputs) if p.returncode == 2)
    assert ("is in use by pid" in loser or "already exists" in loser) and "Traceback" not in loser
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "same" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_warmup_then_cosine_schedule_hand_values():
    from hegl_cli.config import load_config
    from hegl_cli.engine.optim import make_scheduler

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
    from hegl_cli.engine.optim import EarlyStopping

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
    monkeypatch.setattr(engine, "val_context_swap", lambda val, cfg: None)  # one val AUC per epoch
    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.epochs=5", "train.patience=2"])
    result = engine.train(cfg, name="es", runs_dir=tmp_path, progress=False, log=lambda *_: None)
    assert result.epochs_run == 3 and result.stopped_early and result.best_epoch == 1
    assert result.best_val_auc == 0.7


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
    from hegl_cli.engine.train_data import val_context_swap
    from hegl_cli.errors import UserError

    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.select_on=val_swapped"])
    sick = SimpleNamespace(labels=np.ones((4, 2)), has_mask=np.ones((4, 2), bool))
    with pytest.raises(UserError, match="0 finding-free"):
        val_context_swap(sick, cfg)
    unmasked = SimpleNamespace(labels=np.zeros((4, 2)), has_mask=np.zeros((4, 2), bool))
    with pytest.raises(UserError, match="0 masked"):
        val_context_swap(unmasked, cfg)
    cfg.train.select_on = "val"
    assert val_context_swap(sick, cfg) is None  # plain selection does not need it


def test_metrics_log_the_loss_weights_in_effect_every_epoch(tiny_cache, tmp_path):
    """The criterion's weights, not only its terms, are the record: a warm-up ramps HA and DAL from 0."""
    from hegl_cli.config import load_config
    from hegl_cli.engine.run_folder import RunFolder
    from hegl_cli.engine.train import train

    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.epochs=3", "loss.alpha=2",
                                              "loss.weighting=warmup", "loss.weighting_warmup_epochs=2"])
    run = train(cfg, name="w", runs_dir=tmp_path, progress=False, log=lambda *_: None).run
    epochs = RunFolder(run).read_metrics()
    assert [(e["weight_ha"], e["weight_dal"]) for e in epochs] == [(0.0, 0.0), (1.0, 0.5), (2.0, 1.0)]
    assert all(e["train_loss"] == pytest.approx(e["train_ce"] + e["weight_ha"] * e["train_ha"]
                                                + e["weight_dal"] * e["train_dal"], rel=1e-5) for e in epochs)
    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "loss.weighting=uncertainty"])
    learned = RunFolder(train(cfg, name="u", runs_dir=tmp_path, progress=False, log=lambda *_: None).run).read_metrics()
    assert all(0 < e["weight_ha"] != 1.0 for e in learned) and "train_uncertainty" in learned[0]


def test_the_cache_decides_the_image_size_unless_the_user_says_otherwise(tiny_cache, tmp_path):
    """A 32 px cache trains without --set data.image_size (the default is 128); the run records 32."""
    from hegl_cli.config import load_config
    from hegl_cli.engine.checkpoint import load_run
    from hegl_cli.engine.train import train

    overrides = [o for o in TINY_OVERRIDES if not o.startswith("data.image_size")] + [f"data.path={tiny_cache}"]
    cfg = load_config(None, overrides)
    assert cfg.data.image_size != 32 and not cfg.was_set("data.image_size")
    run = train(cfg, name="s", runs_dir=tmp_path, progress=False, log=lambda *_: None).run
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["image_size"] == 32
    assert "image_size" not in json.loads((run / "best.json").read_text())  # one fact, stored once
    with load_run(run, split="test") as loaded:
        assert loaded.image_size == 32
    with pytest.raises(UserError, match="prepared at 32 px but data.image_size is 64"):
        train(load_config(None, overrides + ["data.image_size=64"]), name="t", runs_dir=tmp_path,
              progress=False, log=lambda *_: None)


def test_resume_refuses_a_cache_prepared_again_from_other_data(tiny_cache, tmp_path):
    """The run started on one cache; the cache was re-prepared with other data since: --resume says what
    changed instead of continuing on other classes (issue 21)."""
    import shutil

    from hegl_cli.config import load_config
    from hegl_cli.engine.train import train

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={cache}", "train.epochs=1"])
    train(cfg, name="r", runs_dir=tmp_path / "runs", progress=False, log=lambda *_: None)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["classes"] = ["Nodule", "Mass", "Effusion", "Pneumothorax"]
    manifest["fingerprint"] = "0" * 32
    (cache / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["-q", "train", "--resume", "--name", "r", "--runs-dir", str(tmp_path / "runs"),
                                 "--epochs", "2"])
    assert result.exit_code == 2 and "is not the one" in result.output and "Pneumothorax" in result.output
    assert "'Consolidation'" in result.output  # the class it had


def test_resume_applies_a_changed_patience(tiny_cache, tmp_path, monkeypatch):
    """train.patience is a key a resume may change; it must then be the one early stopping uses."""
    from hegl_cli.config import load_config
    from hegl_cli.engine import train as engine

    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.epochs=2", "train.patience=1"])
    engine.train(cfg, name="p", runs_dir=tmp_path, progress=False, log=lambda *_: None)
    seen = []
    original = engine.Trainer.fit

    def spy(self):
        seen.append(self.stopper.patience)
        return original(self)

    monkeypatch.setattr(engine.Trainer, "fit", spy)
    resumed = load_config(None, base=tmp_path / "p" / "config.yaml", overrides=["train.epochs=3", "train.patience=0"])
    engine.train(resumed, name="p", runs_dir=tmp_path, resume=True, progress=False, log=lambda *_: None)
    assert seen == [0]


def test_ablation_cells_that_differ_by_section_keep_their_own_run_folders():
    from hegl_cli.apps.ablation import parse_grid

    cells = parse_grid("1,1+train.batch_size=8 1,1+eval.batch_size=8 1,1+loss.ha_layers=all")
    assert len({c.name for c in cells}) == 3 and cells[2].name == "a1_b1-ha_layers=all"
    with pytest.raises(UserError, match="would share the run folder"):
        parse_grid("1,1+data.classes=[A,B] 1,1+data.classes=[A;B]")


@pytest.mark.parametrize("setting,message", [
    ("data.benchmark=inmask", "data.benchmark=v2 but data.benchmark is inmask"),
    ("data.cue_free=true", "data.cue_free=False but data.cue_free is True"),
    ("data.class_map={Nodule: Lump}", "data.class_map={} but data.class_map is {'Nodule': 'Lump'}"),
    ("data.views=[PA]", "data.views=[] but data.views is ['PA']"),
    ("data.val_fraction=0.3", "data.val_fraction=0.15 but data.val_fraction is 0.3"),
])
def test_a_prepare_setting_the_cache_was_not_made_with_is_refused_not_recorded(tiny_cache, tmp_path, setting, message):
    """config.yaml is what was trained: a prepare-only key set at train that differs from the cache's
    is refused in one line (it used to be recorded and ignored), and nothing is left behind."""
    args = ["train", "--name", "r", "--runs-dir", str(tmp_path)]
    for item in TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.epochs=1", setting]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "r").exists()


def test_the_run_config_records_what_the_cache_was_prepared_with(trained_run, tiny_cache):
    manifest = json.loads((tiny_cache / "manifest.json").read_text())
    data = yaml.safe_load((trained_run / "config.yaml").read_text())["data"]
    assert data["val_fraction"] == manifest["prepared_with"]["val_fraction"]
    assert data["benchmark"] == manifest["synthetic"]["benchmark"] and data["cue_free"] is False


def test_background_swap_on_a_split_without_masks_is_refused():
    """Finding-free images count as swappable (nothing to keep), so a cache with no mask at all used
    to train "with" background swap that never changed an image."""
    from types import SimpleNamespace

    from hegl_cli.config import load_config
    from hegl_cli.engine.train_data import check_augmentation
    from hegl_cli.errors import UserError

    labels = np.array([[0, 0], [1, 0], [0, 0]], dtype=np.float32)
    no_masks = np.zeros((3, 2), dtype=bool)
    dataset = SimpleNamespace(donors=np.array([0, 2]), swappable=np.array([True, False, True]),
                              split=SimpleNamespace(has_mask=no_masks, labels=labels))
    cfg = load_config(None, ["data.augment=background_swap"])
    with pytest.raises(UserError, match="2 finding-free and 0 such images"):
        check_augmentation(dataset, cfg)
    dataset.split.has_mask = np.array([[False, False], [True, False], [False, False]])
    dataset.swappable = np.array([True, True, True])
    check_augmentation(dataset, cfg)


def test_a_new_loss_term_reaches_the_metrics_the_console_and_the_curves(tiny_cache, tmp_path, monkeypatch):
    """A term the criterion adds (with its weight in loss_weights) is logged, printed and plotted with no
    other change: nothing downstream spells the terms by hand."""
    import matplotlib.axes

    from hegl_cli.config import load_config
    from hegl_cli.engine import train as engine
    from hegl_cli.losses import HybridCriterion

    terms, weights = HybridCriterion.terms, HybridCriterion.loss_weights

    def with_sparsity(self, outputs, *args, **kwargs):
        return {**terms(self, outputs, *args, **kwargs), "sparsity": outputs["attention"].abs().mean()}

    monkeypatch.setattr(HybridCriterion, "terms", with_sparsity)
    monkeypatch.setattr(HybridCriterion, "loss_weights", lambda self: {**weights(self), "sparsity": 0.5})
    labels, plot = [], matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    lines: list[str] = []
    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.epochs=1"])
    engine.train(cfg, name="term", runs_dir=tmp_path, progress=False, log=lambda *a: lines.append(" ".join(map(str, a))))
    record = json.loads((tmp_path / "term" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["weight_sparsity"] == 0.5 and record["train_sparsity"] > 0
    assert any("sparsity=" in line and line.startswith("epoch") for line in lines)
    assert "sparsity" in labels and labels.index("loss") < labels.index("sparsity")


def test_a_val_split_no_epoch_can_be_scored_on_is_refused_before_training(tmp_path, monkeypatch):
    """A cache whose val split has no class with both a positive and a negative image: training "succeeded"
    with best val AUC -inf and no checkpoint; now it is refused in one line naming the cache."""
    monkeypatch.chdir(tmp_path)
    prepared = runner.invoke(app, ["-q", "prepare", "--image-size", "32", "--workers", "1", "--set", "data.synthetic_train=8",
                                   "--set", "data.synthetic_test=4", "--set", "data.synthetic_source_size=64"])
    assert prepared.exit_code == 0, prepared.output
    from hegl_cli.data.cache import CachedSplit

    val = CachedSplit(tmp_path / "data" / "synthetic", "val").labels
    assert not any((c == 1).any() and (c == 0).any() for c in np.asarray(val).T)  # the case this test is about
    result = runner.invoke(app, ["train", "--name", "a", "--runs-dir", str(tmp_path / "runs"),
                                 *tiny_args(tmp_path / "data" / "synthetic")])
    assert result.exit_code == 2 and "val split" in result.output and "no class with both" in result.output, result.output
    assert not (tmp_path / "runs" / "a").exists()
