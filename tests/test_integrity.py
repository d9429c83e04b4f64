"""A damaged file hegl wrote is refused on load in one line, never trusted: a checkpoint whose bytes are
not the ones its metadata recorded, a training state that is not what was sealed, a cache array that
is not what prepare wrote; and the run files hegl reads back are checked by type."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.cli.app import app

runner = CliRunner()


def flip_byte(path: Path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def one_line(result, *needles: str) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def test_a_checkpoint_with_a_flipped_bit_is_refused(trained_run):
    flip_byte(trained_run / "best.safetensors")  # in the tensors: safetensors itself reads it without a word
    one_line(runner.invoke(app, ["evaluate", str(trained_run)]), "best.safetensors",
             "are not the model best.json describes")


def test_a_truncated_checkpoint_is_refused(trained_run):
    path = trained_run / "last.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    one_line(runner.invoke(app, ["evaluate", str(trained_run), "--checkpoint", "last"]), "last.safetensors",
             "not a readable safetensors file")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_training_state_is_refused_on_resume(trained_run, tiny_cache, damage):
    path = trained_run / "state.pt"
    if damage == "flip":
        flip_byte(path)
    else:
        path.write_bytes(path.read_bytes()[:-100])
    args = [a for item in TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.epochs=3"] for a in ("--set", item)]
    result = runner.invoke(app, ["train", "--name", trained_run.name, "--runs-dir", str(trained_run.parent),
                                 "--resume", *args])
    one_line(result, "state.pt", "not a hegl training state", "damaged")


@pytest.mark.parametrize("name", ["images.npy", "labels.npy", "files.json"])
def test_a_cache_array_with_a_flipped_bit_is_refused(trained_run, tiny_cache, tmp_path, name):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    flip_byte(cache / "test" / name, at=0.9)
    result = runner.invoke(app, ["evaluate", str(trained_run), "--data", str(cache)])
    one_line(result, f"test/{name}", "damaged", "hegl prepare --force")


def test_checkpoint_metadata_of_the_wrong_type_is_one_line(trained_run):
    meta = json.loads((trained_run / "best.json").read_text())
    meta["val_auc"] = "high"
    (trained_run / "best.json").write_text(json.dumps(meta))
    one_line(runner.invoke(app, ["evaluate", str(trained_run)]), "best.json", "'val_auc' is 'high', not a number")


def test_a_latest_pointer_that_is_not_one_is_one_line(trained_run):
    latest = trained_run.parent / "latest"
    latest.unlink()
    latest.write_bytes(b"\x00\xff\xfe binary")
    result = runner.invoke(app, ["evaluate", "--runs-dir", str(trained_run.parent)])
    one_line(result, "latest", "not hegl's pointer to the latest run")


def test_a_temporary_file_of_a_dead_writer_is_removed_by_the_next_write(tmp_path):
    from hegl_cli.fs.atomic import atomic_write_text, temp_prefix

    target = tmp_path / "result.json"
    dead = tmp_path / f"{temp_prefix(target, pid=2**22 + 17)}abc.tmp"  # no such process
    alive = tmp_path / f"{temp_prefix(target)}def.tmp"  # this process: another write in progress
    dead.write_text("half")
    alive.write_text("half")
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}" and not dead.exists() and alive.exists()
