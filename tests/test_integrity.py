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


@pytest.mark.parametrize(("key", "value", "said"), [
    ("intensity_rule", "abc", "'intensity_rule' is 'abc', not a rule number"),
    ("intensity_rule", [3], "'intensity_rule' is [3]"),
    ("intensity_containers", 5, "'intensity_containers' is not a list"),
    ("image_size", "abc", "'image_size' is 'abc'"),
    ("image_size", 10**6, "'image_size' is 1000000"),
    ("data", 5, "'data' is not the path"),
    ("thresholds", "nan", "'thresholds' holds a value that is not a finite number"),
])
def test_every_field_a_reader_uses_is_checked_before_use(trained_run, tmp_path, key, value, said):
    """Fields evaluate, explain, predict, export and the card read from best.json: each wrong type was
    an "unexpected error" (exit 1) naming neither the file nor the key."""
    from PIL import Image

    meta = json.loads((trained_run / "best.json").read_text())
    meta[key] = [float("nan")] * len(meta["classes"]) if value == "nan" else value
    (trained_run / "best.json").write_text(json.dumps(meta))
    Image.new("L", (32, 32), 90).save(tmp_path / "x.png")
    for argv in (["evaluate", str(trained_run)], ["predict", str(tmp_path / "x.png"), "--run", str(trained_run),
                                                  "--out", str(tmp_path / "p.csv")],
                 ["report", str(trained_run), "--card"]):
        one_line(runner.invoke(app, argv), "best.json", said)


def test_a_site_calibration_that_cannot_be_applied_is_one_line(trained_run, tmp_path):
    """NaN knots gave NaN probabilities and an export whose parity printed 'nan' and passed; a file
    without its 'model' record skipped the check that it was fitted for these weights."""
    from PIL import Image

    from hegl_cli.apps.recalibrate import read_calibration
    from hegl_cli.engine.run_folder import RunFolder
    from hegl_cli.errors import UserError
    from hegl_cli.evaluation.calibration import fit_calibration
    from hegl_cli.fs.outputs import sha256_of

    meta = json.loads((trained_run / "best.json").read_text())
    classes, sha = meta["classes"], sha256_of(RunFolder(trained_run).weights("best"))
    rng = __import__("numpy").random.default_rng(0)
    logits, labels = rng.normal(size=(40, len(classes))), (rng.random((40, len(classes))) < 0.4).astype(float)
    good = fit_calibration(logits, labels, classes, "isotonic", "mcc", [0.5] * len(classes),
                           {"model": {"run": str(trained_run), "checkpoint": "best", "weights_sha256": sha}}).to_dict()
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(good))
    read_calibration(path, classes, [0.5] * len(classes), sha)  # the untouched file is read
    nan_knots = json.loads(json.dumps(good))
    nan_knots["per_class"][classes[0]]["knots_y"][0] = float("nan")
    no_model = {k: v for k, v in good.items() if k != "model"}
    flat = json.loads(json.dumps(good))
    flat["per_class"][classes[0]]["knots_x"] = 0.5
    cold = json.loads(json.dumps(good))
    cold["per_class"][classes[1]]["temperature"] = 1e-320  # overflowed every logit, with numpy's warning on stderr
    for bad, said in ((nan_knots, f"class {classes[0]}"), (no_model, "no record of the model"),
                      (flat, f"class {classes[0]}"), (cold, f"class {classes[1]}")):
        path.write_text(json.dumps(bad))
        with pytest.raises(UserError, match=f"damaged site calibration \\({said}"):
            read_calibration(path, classes, [0.5] * len(classes), sha)
    Image.new("L", (32, 32), 90).save(tmp_path / "x.png")
    path.write_text(json.dumps(nan_knots))
    result = runner.invoke(app, ["predict", str(tmp_path / "x.png"), "--run", str(trained_run), "--calibration",
                                 str(path), "--out", str(tmp_path / "p.csv")])
    one_line(result, "cal.json", "damaged site calibration")
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize(("key", "value", "said"), [
    ("prepared_with", [1], "'prepared_with' is not a mapping"),
    ("identity", [1], "'identity' is not a mapping"),
    ("synthetic", [1], "'synthetic' is not the generator's record"),
    ("intensity", {"rule": 3, "mode": 5, "frames": "first"}, "'intensity.mode' is 5"),
    ("intensity", {"rule": 3, "mode": "stored_range", "frames": [1]}, "'intensity.frames' is [1]"),
])
def test_a_manifest_entry_of_the_wrong_type_is_one_line(tiny_cache, tmp_path, key, value, said):
    """Each was an "unexpected error" (exit 1) in train, prepare or evaluate, or (the intensity mode)
    trained on and then made every later use of the run fail on a config key."""
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest[key] = value
    (cache / "manifest.json").write_text(json.dumps(manifest))
    args = ["train", "--name", "t", "--runs-dir", str(tmp_path / "runs")]
    for item in [*TINY_OVERRIDES, f"data.path={cache}"]:
        args += ["--set", item]
    one_line(runner.invoke(app, args), "manifest.json", said, "hegl prepare --force")
    assert not (tmp_path / "runs" / "t").exists()


@pytest.mark.parametrize(("record", "key", "value"), [
    ("eval/test.json", "per_class", [1]), ("eval/test.json", "macro_ci95", "x"), ("eval/test.json", "attention", [1]),
    ("eval/test.json", "calibration", [1]), ("eval/test.json", "subgroups", [1]), ("eval/test.json", "thresholds", [1]),
    ("robustness.json", "records", [5]), ("robustness.json", "records", [{}]),
])
def test_report_and_card_of_a_damaged_record_name_it(trained_run, record, key, value):
    """Each was an "unexpected error" (exit 1) from `hegl report` or `report --card`."""
    assert runner.invoke(app, ["evaluate", str(trained_run)]).exit_code == 0
    if record == "robustness.json":
        (trained_run / record).write_text(json.dumps({"records": [], "sigma": [0.1]}))
    path = trained_run / record
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))
    for argv in (["report", str(trained_run), "--gallery", "0"], ["report", str(trained_run), "--card", "--gallery", "0"]):
        result = runner.invoke(app, argv)
        lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("warning")]
        assert result.exit_code == 2 and record in lines[-1] and "damaged" in lines[-1], result.output


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
