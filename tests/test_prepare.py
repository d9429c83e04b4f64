"""`hegl prepare` (hegl_cli.apps.prepare, hegl_cli.data.build): skipping bad records, interrupted builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_fault_catalogue import RECORDS, make_source, write_png
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.cli.app import app
from hegl_cli.errors import UserError

runner = CliRunner()


def test_prepare_skips_bad_records_and_names_them_literally(tmp_path):
    """Non-strict prepare: bad records are named and skipped, the rest imported; '[...]' is printed as is."""
    src = make_source(tmp_path / "src")
    write_png(src / "train" / "[b]odd[/b].png", seed=9)
    records = [*RECORDS, {"file_name": "./a.png", "syms": [], "boxes": []}, {"file_name": "e.png"},
               {"file_name": "[b]odd[/b].png", "syms": ["Nodule"], "boxes": [[1, 1, float("nan"), 4]]}]
    (tmp_path / "train.json").write_text(json.dumps(records))
    result = runner.invoke(app, ["prepare", "--format", "chestxdet", "--annotations", f"train={tmp_path / 'train.json'}",
                                 "--images", f"train={src / 'train'}", "--out", str(tmp_path / "cache"),
                                 "--image-size", "32", "--workers", "1", "--set", "data.val_fraction=0.25"])
    assert result.exit_code == 0, result.output
    assert "duplicate file_name 'a.png'" in result.output and "no 'syms' or 'boxes' list" in result.output
    assert "([b]odd[/b].png): box 0 has a non-finite coordinate" in result.output
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert sum(manifest["splits"].values()) == 4 and manifest["skipped"] == 3


def test_a_killed_prepare_leaves_nothing_that_lasts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / "data" / f"synthetic.partial-{dead.pid}"
    stale.mkdir(parents=True)
    (stale / ".hegl-partial").write_text(str(dead.pid))  # what prepare writes first into its partial
    (stale / "images.npy").write_bytes(b"half")
    alive = tmp_path / "data" / f"synthetic.partial-{os.getpid()}x"  # not ours to judge: left alone
    alive.mkdir()
    users = tmp_path / "data" / f"synthetic.partial-{dead.pid + 100000}"  # named like one, without the marker
    users.mkdir()
    (users / "mine.txt").write_text("mine")
    result = runner.invoke(app, ["-q", "prepare", "--image-size", "32", "--workers", "1", "--set",
                                 "data.synthetic_train=16", "--set", "data.synthetic_test=4", "--set",
                                 "data.synthetic_source_size=64"])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and alive.exists() and (users / "mine.txt").read_text() == "mine"
    # the lock file stays (a lock file is never deleted: issue 21)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted([".synthetic.lock", "synthetic",
                                                                             alive.name, users.name])


def test_force_keeps_what_the_user_put_in_a_cache_or_a_run(tmp_path, monkeypatch, trained_run):
    """--force replaces what hegl made and nothing else: a user's file inside the folder is refused, kept."""
    monkeypatch.chdir(tmp_path)
    args = ["-q", "prepare", "--image-size", "32", "--workers", "1", "--set", "data.synthetic_train=16",
            "--set", "data.synthetic_test=4", "--set", "data.synthetic_source_size=64"]
    assert runner.invoke(app, args).exit_code == 0
    notes = tmp_path / "data" / "synthetic" / "train" / "notes.txt"
    notes.write_text("mine")
    again = runner.invoke(app, args + ["--force", "--set", "data.seed=3"])
    assert again.exit_code == 2 and "train/notes.txt, which hegl did not write" in again.output
    assert notes.read_text() == "mine"
    notes.unlink()
    assert runner.invoke(app, args + ["--force", "--set", "data.seed=3"]).exit_code == 0

    from hegl_cli.engine.run_folder import open_new_run

    (trained_run / "analysis").mkdir()
    (trained_run / "analysis" / "plot.py").write_text("print(1)")
    with pytest.raises(UserError, match="holds analysis, which hegl did not make"):
        open_new_run(trained_run.name, trained_run.parent, force=True)
    assert (trained_run / "analysis" / "plot.py").read_text() == "print(1)"
    assert (trained_run / "best.safetensors").is_file()


# --- issue 21: a cache knows what it was made from -------------------------------------------------
def _chestxdet_source(root: Path, n: int = 12) -> Path:
    import numpy as np
    from PIL import Image

    records = []
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            name = f"{split}{i:02d}.png"
            Image.fromarray(np.full((40, 40), 30 + 10 * i, np.uint8)).save(root / split / name)
            rows.append({"file_name": name, "syms": ["Nodule"] if i % 2 else [], "boxes": [[5, 5, 20, 20]] if i % 2 else [],
                         "polygons": [[[5, 5], [20, 5], [20, 20]]] if i % 2 else []})
        (root / f"ChestX_Det_{split}.json").write_text(json.dumps(rows))
        records.append(rows)
    return root


def test_a_replaced_source_image_makes_the_cache_stale_and_it_is_rebuilt(tmp_path):
    import numpy as np
    from PIL import Image

    from hegl_cli.data.cache import CachedSplit

    source = _chestxdet_source(tmp_path / "src")
    args = ["-q", "prepare", "--format", "chestxdet", "--source", str(source), "--out", str(tmp_path / "c"),
            "--image-size", "16", "--workers", "1"]
    assert runner.invoke(app, args).exit_code == 0
    index = CachedSplit(tmp_path / "c", "test").files.index("test03.png")
    before = CachedSplit(tmp_path / "c", "test").image(index).copy()
    again = runner.invoke(app, [*args[1:]])
    assert again.exit_code == 0 and "up to date" in again.output
    Image.fromarray(np.full((40, 40), 250, np.uint8)).save(source / "test" / "test03.png")  # same size, new pixels
    rebuilt = runner.invoke(app, [*args[1:]])
    assert rebuilt.exit_code == 0 and "source changed" in rebuilt.output, rebuilt.output
    after = CachedSplit(tmp_path / "c", "test").image(index)
    assert before.mean() < 0.5 < after.mean()
    other = runner.invoke(app, [*args, "--set", "data.mask_source=box"])  # other inputs: a new dataset
    assert other.exit_code == 2 and "pass --force" in other.output


def test_patient_overlap_can_be_refused(tmp_path):
    from hegl_cli.data.options import PrepareOptions
    from hegl_cli.data.records import Record, SplitSource
    from hegl_cli.data.split_plan import one_split_per_patient
    from hegl_cli.errors import UserError

    src = SplitSource("train", tmp_path / "a.json", tmp_path)
    plan = [("train", src, [Record("a.png", patient="p1"), Record("b.png", patient="p2")]),
            ("test", src, [Record("c.png", patient="p1")])]
    problems: list[str] = []
    moved = one_split_per_patient(plan, "move", problems)
    assert [[r.file_name for r in recs] for _, _, recs in moved] == [["b.png"], ["c.png", "a.png"]]
    assert problems == ["train: a.png: patient 'p1' is also in split 'test'; moved there (data.patient_overlap=move)"]
    with pytest.raises(UserError, match="patient 'p1' has images in the splits test, train"):
        one_split_per_patient(plan, "refuse", [])
    assert PrepareOptions().patient_overlap == "move"


def test_the_builder_refuses_to_write_one_image_into_two_splits(tmp_path):
    """The invariant every cache keeps (checked inside every build, so for every cache the suite makes)."""
    import json

    from hegl_cli.data.records import SplitSource
    from hegl_cli.data.split_plan import check_disjoint

    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "files.json").write_text(json.dumps(["a.png", f"{split}.png"]))
    src = SplitSource("all", tmp_path / "x.json", tmp_path / "images")
    with pytest.raises(RuntimeError, match="a.png is in the splits train and test"):
        check_disjoint(tmp_path, {"train": src, "test": src}, set())
    check_disjoint(tmp_path, {"train": src, "test": src}, {"test"})  # a twin shows the same images on purpose


@pytest.mark.parametrize("through_link", [False, True])
def test_out_inside_the_source_folder_is_refused_even_through_a_link(tiny_cache, tmp_path, through_link):
    """The dataset's root is an input: a cache is never written into it (a ChestX-Det download keeps
    its images in train/ and test/, so the image folders alone did not cover a sibling --out)."""
    import shutil

    source = tmp_path / "download"
    shutil.copytree(tiny_cache / "source", source)
    given = source
    if through_link:
        given = tmp_path / "link"
        given.symlink_to(source)
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    result = CliRunner().invoke(app, ["prepare", "--format", "chestxdet", "--source", str(given),
                                      "--out", str(given / "cache"), "--image-size", "16"])
    assert result.exit_code == 2 and "overlaps the input" in result.output, result.output
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before


# --- intensity rules compared by container ---------------------------------------------------------
def _as_older_rule(cache: Path, rule: int) -> None:
    """Make ``cache`` look prepared by an older hegl: its manifest says ``rule`` and records no containers."""
    path = cache / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["intensity"] = {k: v for k, v in manifest["intensity"].items() if k != "containers"} | {"rule": rule}
    path.write_text(json.dumps(manifest))


def test_reading_changes_compare_rules_by_container():
    from hegl_cli.data.images import (
        CONTAINERS,
        INTENSITY_RULE,
        container_by_name,
        reading_changes,
        trained_reading_shift,
    )

    assert INTENSITY_RULE == 3
    assert [container_by_name(n) for n in ("a.png", "b.JPG", "c.tiff", "d.dcm", "IM000001", "e.DICOM")] == [
        "pillow", "pillow", "pillow", "dicom", "dicom", "dicom"]  # no known suffix: maybe a DICOM by its marker
    assert reading_changes(2, 3, ["pillow"]) == [] and reading_changes(3, 2, CONTAINERS) == ["dicom"]
    assert reading_changes(1, 3, ["pillow"]) == ["pillow"] and reading_changes(1, 2, CONTAINERS) == ["dicom", "pillow"]
    assert reading_changes(3, 3, CONTAINERS) == [] and reading_changes(1, 3, []) == []
    assert reading_changes(3, 4, ["pillow"]) == ["pillow"]  # a newer hegl's rule: it may have changed anything
    assert trained_reading_shift(2, ["pillow"], ["dicom"]) is None  # it never saw a DICOM: nothing to shift
    assert "DICOM images read under intensity rule 2 and under rule 3" in trained_reading_shift(2, None, ["dicom"])


def test_a_cache_from_an_older_rule_is_rebuilt_only_when_that_rule_read_its_images_otherwise(tmp_path):
    """Rule 3 changed DICOM only (Presentation LUT Shape INVERSE): a cache of PNGs prepared under rule 2
    stays up to date, one holding DICOMs is rebuilt by itself, says why, and then holds them inverted."""
    from test_field_datasets import dx_file

    from hegl_cli.data.cache import CachedSplit

    source = _chestxdet_source(tmp_path / "src")
    args = ["-q", "prepare", "--format", "chestxdet", "--source", str(source), "--image-size", "16", "--workers", "1"]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "png")]).exit_code == 0
    assert json.loads((tmp_path / "png" / "manifest.json").read_text())["intensity"]["containers"] == ["pillow"]
    _as_older_rule(tmp_path / "png", 2)
    kept = runner.invoke(app, [*args[1:], "--out", str(tmp_path / "png")])
    assert kept.exit_code == 0 and "up to date" in kept.output, kept.output

    rows = json.loads((source / "ChestX_Det_test.json").read_text())
    dx_file(source / "test" / "ramp.dcm", "MONOCHROME2", "INVERSE")  # stored 0 is white: inverted
    (source / "ChestX_Det_test.json").write_text(json.dumps([*rows, {"file_name": "ramp.dcm", "syms": [], "boxes": []}]))
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "dicom")]).exit_code == 0
    _as_older_rule(tmp_path / "dicom", 2)
    train = ["train", "--name", "old", "--runs-dir", str(tmp_path / "runs")]
    for item in [*(o for o in TINY_OVERRIDES if not o.startswith("data.image_size")), f"data.path={tmp_path / 'dicom'}"]:
        train += ["--set", item]
    trained = runner.invoke(app, train)  # trains (the user may no longer have the source), and says so
    assert trained.exit_code == 0, trained.output
    assert "was prepared under another intensity rule (DICOM images read under intensity rule 2" in trained.output
    rebuilt = runner.invoke(app, [*args[1:], "--out", str(tmp_path / "dicom")])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "DICOM images read under intensity rule 2 and under rule 3 differ" in rebuilt.output
    assert "rebuilt" in rebuilt.output and "PNG" not in rebuilt.output
    manifest = json.loads((tmp_path / "dicom" / "manifest.json").read_text())
    assert manifest["intensity"]["rule"] == 3 and manifest["intensity"]["containers"] == ["dicom", "pillow"]
    split = CachedSplit(tmp_path / "dicom", "test")
    ramp = split.image(split.files.index("ramp.dcm"))  # (16, 16): the 16 x 64 ramp in a zero-padded square
    middle = ramp[ramp.shape[0] // 2]
    assert middle[0] > 0.9 and middle[-1] < 0.1, middle  # stored 0 (left) is white: INVERSE applied

    other = runner.invoke(app, [*args[1:], "--out", str(tmp_path / "png"), "--set", "data.mask_source=box"])
    assert other.exit_code == 2 and "pass --force" in other.output and "intensity rule" not in other.output


def test_a_damaged_intensity_record_is_named_or_read_as_the_oldest_rule(tmp_path):
    from hegl_cli.data.manifest import intensity_rule_of

    assert [intensity_rule_of({"intensity": {"rule": r}}) for r in (3, "3", True, 0, None, 2.5)] == [3, 1, 1, 1, 1, 1]
    assert intensity_rule_of({}) == 1 and intensity_rule_of({"intensity": None}) == 1
    source = _chestxdet_source(tmp_path / "src")
    args = ["-q", "prepare", "--format", "chestxdet", "--source", str(source), "--out", str(tmp_path / "c"),
            "--image-size", "16", "--workers", "1"]
    assert runner.invoke(app, args).exit_code == 0
    path = tmp_path / "c" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "intensity": "stored_range"}))
    train = ["train", "--name", "t", "--runs-dir", str(tmp_path / "runs")]
    for item in [*(o for o in TINY_OVERRIDES if not o.startswith("data.image_size")), f"data.path={tmp_path / 'c'}"]:
        train += ["--set", item]
    for result in (runner.invoke(app, args[1:]), runner.invoke(app, train)):
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        assert f"{path}: 'intensity' is not a mapping" in result.output, result.output


def test_force_keeps_a_users_files_in_a_cache_from_before_the_inventory(tmp_path, monkeypatch):
    """A cache without inventory.txt (before it existed, or a folder with a copied manifest) had nothing
    to compare against, and `prepare --force` removed the user's files in it; now prepare's layout decides."""
    monkeypatch.chdir(tmp_path)
    args = ["-q", "prepare", "--image-size", "32", "--workers", "1", "--set", "data.synthetic_train=16",
            "--set", "data.synthetic_test=4", "--set", "data.synthetic_source_size=64"]
    assert runner.invoke(app, args).exit_code == 0
    cache = tmp_path / "data" / "synthetic"
    (cache / "inventory.txt").unlink()
    for mine in (cache / "NOTES.txt", cache / "train" / "mine.csv", cache / "sub" / "data.csv"):
        mine.parent.mkdir(exist_ok=True)
        mine.write_text("mine")
        again = runner.invoke(app, [*args, "--force", "--set", "data.seed=3"])
        assert again.exit_code == 2 and f"{mine.name}" in again.output and "hegl did not write" in again.output, again.output
        assert mine.read_text() == "mine"
        mine.unlink()
    (cache / "sub").rmdir()
    assert runner.invoke(app, [*args, "--force", "--set", "data.seed=3"]).exit_code == 0  # prepare's own files only

    fake = tmp_path / "mine"
    (fake / "sub").mkdir(parents=True)
    (fake / "manifest.json").write_text('{"hegl_version": "0.1.0", "splits": {}}')
    (fake / "thesis.txt").write_text("work")
    (fake / "sub" / "data.csv").write_text("1,2")
    refused = runner.invoke(app, [*args, "--out", str(fake), "--force"])
    assert refused.exit_code == 2 and (fake / "thesis.txt").read_text() == "work" and (fake / "sub" / "data.csv").is_file()
