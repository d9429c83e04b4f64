"""`hegl prepare` (hegl_cli.apps.prepare, hegl_cli.data.build): skipping bad records, interrupted builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_fault_catalogue import RECORDS, make_source, write_png
from typer.testing import CliRunner

from hegl_cli.cli.app import app

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
    (stale / "images.npy").write_bytes(b"half")
    alive = tmp_path / "data" / f"synthetic.partial-{os.getpid()}x"  # not ours to judge: left alone
    alive.mkdir()
    result = runner.invoke(app, ["-q", "prepare", "--image-size", "32", "--workers", "1", "--set",
                                 "data.synthetic_train=16", "--set", "data.synthetic_test=4", "--set",
                                 "data.synthetic_source_size=64"])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and alive.exists()
    # the lock file stays (a lock file is never deleted: issue 21)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".synthetic.lock", "synthetic", alive.name]
