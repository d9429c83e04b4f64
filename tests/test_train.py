"""The training engine: whole CLI runs, exact resume after SIGKILL, DDP, NaN stop, atomic writes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.cli.app import app
from hegl_cli.engine.checkpoint import load_model
from hegl_cli.engine.io import atomic_write
from hegl_cli.errors import TrainingDiverged

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
    state = torch.load(tmp_path / "runs" / "killed" / "state.pt", weights_only=True)
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
