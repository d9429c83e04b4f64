"""`hegl predict` (hegl_cli.apps.predict): files, folders and lists to one CSV."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import shared_data
from hegl_cli.cli.app import app

runner = CliRunner()


def _inbox(tmp_path: Path) -> Path:
    """PNG, JPEG, a nested DICOM and a corrupt file."""
    folder = tmp_path / "inbox"
    (folder / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 50), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(folder / "b.jpg")
    shutil.copy(shared_data("cxr", "RG1_UNCR.dcm"), folder / "nested" / "c.dcm")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_predict_folder_matches_explain_and_skips_the_corrupt_file(trained_run, tmp_path):
    folder = _inbox(tmp_path)
    out = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", str(folder), "--run", str(trained_run), "--out", str(out),
                                 "--workers", "2", "--batch-size", "2"])
    assert result.exit_code == 2, result.output  # one file was skipped
    assert "broken.png" in result.output and "wrote 3 row(s)" in result.output
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(r["file"]).name for r in rows) == ["a.png", "b.jpg", "c.dcm"]
    meta = json.loads((trained_run / "best.json").read_text())
    explained = tmp_path / "explained"
    files = [Path(r["file"]) for r in rows]
    assert runner.invoke(app, ["explain", *map(str, files), "--run", str(trained_run), "--out",
                               str(explained)]).exit_code == 0
    for row in rows:
        record = json.loads((explained / Path(row["file"]).stem / "predictions.json").read_text())
        for c, name in enumerate(meta["classes"]):
            p = float(row[f"p_{name}"])
            assert p == pytest.approx(record["classes"][name]["probability"], abs=1e-5)
            assert int(row[f"positive_{name}"]) == int(p >= meta["thresholds"][c])


def test_predict_reads_a_csv_list_and_protects_existing_files(trained_run, tmp_path):
    folder = _inbox(tmp_path)
    listing = tmp_path / "list.csv"
    listing.write_text("path,site\ninbox/a.png,x\ninbox/nested/c.dcm,y\n")
    out = tmp_path / "p.csv"
    assert runner.invoke(app, ["predict", str(listing), "--run", str(trained_run), "--out", str(out)]).exit_code == 0
    assert len(out.read_text().splitlines()) == 3
    again = runner.invoke(app, ["predict", str(listing), "--run", str(trained_run), "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(app, ["predict", str(listing), "--run", str(trained_run), "--out", str(out),
                               "--force"]).exit_code == 0
    mine = tmp_path / "notes.csv"
    mine.write_text("my,own\n1,2\n")
    refused = runner.invoke(app, ["predict", str(folder / "a.png"), "--run", str(trained_run), "--out", str(mine),
                                  "--force"])
    assert refused.exit_code == 2 and "not a predictions CSV" in refused.output
    assert mine.read_text() == "my,own\n1,2\n"


def test_ablation_table_keeps_labels_at_80_columns():
    from rich.console import Console

    from hegl_cli.apps.ablation import METRICS
    from hegl_cli.cli.common import fitted_table

    label = "alpha=1, beta=1, data.augment=background_swap"
    rows = [[label, *["0.812 ± 0.013"] * len(METRICS)], ["alpha=0, beta=0", *["0.700 ± 0.020"] * len(METRICS)]]
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=False)
    console.print(fitted_table("ablation x", ["cell", *[lab for _, lab in METRICS]], rows, console, "abl/results.md"))
    text = buffer.getvalue()
    assert "…" not in text and "..." not in text
    assert all(line.__len__() <= 80 for line in text.splitlines())
    flat = " ".join(text.split())
    assert "background_swap" in text.replace("│", "").replace(" ", "") or "background_swap" in flat
    assert "test macro AUC" in flat and "more column(s) in abl/results.md" in flat


def test_a_folder_from_a_hospital_gives_one_row_or_one_named_refusal_per_file(trained_run, tmp_path):
    """PNG, a JPEG tagged to be rotated, a DICOM named like a PACS export (no suffix), a multi-frame
    colour DICOM and one that cannot be decoded: predict and explain read or name every one (issue 20)."""
    import csv

    import pydicom
    from test_images import _dicom

    folder = tmp_path / "export"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / "a.png")
    rotated = Image.fromarray(rng.integers(0, 255, (30, 50), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(folder / "b.jpg", exif=exif.tobytes())
    _dicom(folder / "IM000001", rng.integers(0, 4096, (36, 36)).astype(np.uint16), bits_stored=12)
    _dicom(folder / "cine.dcm", rng.integers(0, 255, (3, 24, 24, 3)).astype(np.uint8))
    (folder / "JPEG-lossy.dcm").write_bytes((Path(pydicom.__file__).parent / "data" / "test_files" /
                                             "JPEG-lossy.dcm").read_bytes())
    (folder / "notes.txt").write_text("not an image: not a candidate")
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(folder), "--run", str(trained_run), "--out", str(out), "--workers", "0"])
    assert result.exit_code == 2, result.output  # one file could not be read
    rows = {Path(r["file"]).name for r in csv.DictReader(out.open())}
    assert rows == {"a.png", "b.jpg", "IM000001", "cine.dcm"}
    assert "JPEG-lossy.dcm" in result.output and "12-bit" in result.output
    explained = runner.invoke(app, ["explain", str(folder), "--run", str(trained_run), "--out", str(tmp_path / "x")])
    assert explained.exit_code == 2
    assert {p.name for p in (tmp_path / "x").iterdir() if p.is_dir()} == {"a", "b", "IM000001", "cine"}
