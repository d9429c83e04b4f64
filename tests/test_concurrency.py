"""Readers and writers of one run or cache (issue 21): for every pair, one refuses and nothing is mixed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.cli.app import app
from hegl_cli.data.cache import cache_lock
from hegl_cli.engine.run_folder import RunFolder
from hegl_cli.fs.locks import FolderLock

runner = CliRunner()


def tiny(cache: Path, *extra: str) -> list[str]:
    return [a for item in TINY_OVERRIDES + [f"data.path={cache}", *extra] for a in ("--set", item)]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".hegl-lock"}


def refused(result, message: str = "is in use by") -> None:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


def test_train_force_refuses_while_a_reader_has_the_run(trained_run, tiny_cache):
    before = digest(trained_run)
    for reader in ("hegl evaluate", "hegl predict"):
        lock = RunFolder(trained_run).lock(shared=True).acquire()  # what `reader` holds while it runs
        try:
            result = runner.invoke(app, ["-q", "train", "--name", "tiny", "--runs-dir", str(trained_run.parent),
                                         "--force", *tiny(tiny_cache)])
        finally:
            lock.release()
        refused(result)
        assert digest(trained_run) == before, reader


def test_readers_refuse_while_a_run_trains(trained_run, tmp_path):
    png = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (32, 32), 80).save(png)
    lock = RunFolder(trained_run).lock().acquire()  # what `hegl train --force/--resume` holds
    try:
        for argv in (["evaluate", str(trained_run)], ["robustness", str(trained_run), "--out", str(tmp_path / "r")],
                     ["predict", str(png), "--run", str(trained_run), "--out", str(tmp_path / "p.csv")],
                     ["explain", str(png), "--run", str(trained_run), "--out", str(tmp_path / "e")],
                     ["report", str(trained_run), "--out", str(tmp_path / "r.html")]):
            refused(runner.invoke(app, ["-q", *argv]), "wait for it to finish")
    finally:
        lock.release()
    assert not RunFolder(trained_run).eval_report("test").exists()
    assert not [p for p in tmp_path.iterdir() if p.name not in ("x.png", "runs")]


def test_prepare_refuses_while_a_cache_is_read_and_training_while_it_is_written(tiny_cache, tmp_path):
    before = digest(tiny_cache)
    reader = cache_lock(tiny_cache, shared=True).acquire()  # what training or evaluate holds
    try:
        result = runner.invoke(app, ["-q", "prepare", "--out", str(tiny_cache), "--force", "--image-size", "32"])
    finally:
        reader.release()
    refused(result)
    assert digest(tiny_cache) == before
    writer = cache_lock(tiny_cache).acquire()  # what `hegl prepare --force` holds while it replaces the cache
    try:
        result = runner.invoke(app, ["-q", "train", "--name", "t", "--runs-dir", str(tmp_path), *tiny(tiny_cache)])
    finally:
        writer.release()
    refused(result)
    assert not (tmp_path / "t").exists()


def test_prepare_keeps_a_folder_the_user_makes_at_its_output_meanwhile(tmp_path, monkeypatch):
    import hegl_cli.data.build as build

    out = tmp_path / "data" / "syn"
    real = build._build_into

    def user_is_faster(*args, **kwargs):
        result = real(*args, **kwargs)
        out.mkdir(parents=True)
        (out / "thesis.txt").write_text("years of work")
        return result

    monkeypatch.setattr(build, "_build_into", user_is_faster)
    result = runner.invoke(app, ["-q", "prepare", "--out", str(out), "--image-size", "16", "--workers", "1",
                                 "--set", "data.synthetic_train=8", "--set", "data.synthetic_test=4",
                                 "--set", "data.synthetic_source_size=32"])
    refused(result, "appeared while prepare ran")
    assert (out / "thesis.txt").read_text() == "years of work" and [p.name for p in out.iterdir()] == ["thesis.txt"]
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_prepare_force_keeps_what_replaced_the_cache_meanwhile(tiny_cache, tmp_path, monkeypatch):
    """Between the check that --out is a hegl cache and its replacement, a user swaps in a folder of
    theirs: it is put back, untouched."""
    import shutil

    import hegl_cli.data.build as build

    out = tmp_path / "cache"
    shutil.copytree(tiny_cache, out)
    real = build._build_into

    def user_swaps_the_folder(*args, **kwargs):
        result = real(*args, **kwargs)
        shutil.rmtree(out)
        out.mkdir()
        (out / "thesis.txt").write_text("years of work")
        return result

    monkeypatch.setattr(build, "_build_into", user_swaps_the_folder)
    result = runner.invoke(app, ["-q", "prepare", "--out", str(out), "--force", "--image-size", "16", "--workers", "1",
                                 "--set", "data.synthetic_train=8", "--set", "data.synthetic_test=4",
                                 "--set", "data.synthetic_source_size=32"])
    refused(result, "appeared while prepare ran")
    assert [p.name for p in out.iterdir()] == ["thesis.txt"]


@pytest.mark.slow
def test_a_real_evaluate_reads_a_run_that_is_still_training(tiny_cache, tmp_path):
    """Two processes: a training in a subprocess holds its run. Evaluate in this one does not wait: it
    reads the last published 'best' checkpoint and says which epoch that is; a second training of the
    same run (--force or --resume) is refused while the first goes on."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hegl_cli", "-q", "train", "--name", "long", "--runs-dir", str(tmp_path),
           *tiny(tiny_cache, "train.epochs=60", "train.patience=0")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "long"
    try:
        deadline = time.time() + 120
        while not (RunFolder(run).is_training() and RunFolder(run).weights("best").is_file()):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        result = runner.invoke(app, ["evaluate", str(run)])
        assert result.exit_code == 0, result.output
        assert "is still training: this reads its 'best' checkpoint, of epoch" in " ".join(result.output.split())
        assert json.loads(RunFolder(run).eval_report("test").read_text())["macro"]["auc"] is not None
        again = ["-q", "train", "--name", "long", "--runs-dir", str(tmp_path), *tiny(tiny_cache, "train.epochs=60")]
        refused(runner.invoke(app, [*again, "--force"]), "is in use by")
        refused(runner.invoke(app, [*again, "--resume"]), "is in use by")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert FolderLock(run / ".hegl-lock", "x").acquire()  # released when the training died
