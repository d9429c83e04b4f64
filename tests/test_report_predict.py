"""`hegl predict` (CSV for a folder of new images) and `hegl report` (one HTML page, checked in Chromium)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES, shared_data
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


def chromium() -> str:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium here (.ci/run installs the Debian package chromium-headless-shell)")


def render(html: Path, screenshot: Path | None = None) -> str:
    """The DOM after load, as headless Chromium sees it (and optionally a screenshot)."""
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--virtual-time-budget=10000", "--window-size=1280,2200"]
    if screenshot is not None:
        args.append(f"--screenshot={screenshot}")
    else:
        args.append("--dump-dom")
    proc = subprocess.run([*args, html.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture()
def evaluated_run(trained_run):
    for args in (["evaluate", str(trained_run)], ["robustness", str(trained_run), "--sigma", "0.1", "--draws", "1"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return trained_run


def _tiny_ablation(tiny_cache: Path, root: Path) -> Path:
    args = ["ablation", "--grid", "0,0 1,1", "--seeds", "1", "--name", "mini", "--out-root", str(root), "--epochs", "1"]
    for item in TINY_OVERRIDES + [f"data.path={tiny_cache}"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return root / "mini"


def test_report_is_one_self_contained_page_that_chromium_renders(evaluated_run, tiny_cache, tmp_path):
    ablation = _tiny_ablation(tiny_cache, tmp_path / "ablations")
    second = tmp_path / "runs" / "second"
    shutil.copytree(evaluated_run, second)
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(evaluated_run), str(second), str(ablation), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    for heading in ("Runs side by side", "Data", "Training", "Results", "Faithfulness", "Context audit", "Shortcut audit",
                    "Robustness under Gaussian noise", "Best aligned", "Worst aligned", "Most shortcut-driven",
                    "Ablation mini"):
        assert heading in page, heading
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from outside
    images = re.findall(r"<img src=\"([^\"]+)\"", page)
    assert len(images) >= 10 and all(src.startswith("data:image/png;base64,") for src in images)
    dom = render(out)
    state = re.search(r'<html[^>]*data-images="(\d+)/(\d+)"[^>]*>', dom)
    assert state and state.group(1) == state.group(2) == str(len(images)), dom[:300]
    assert re.search(r'data-errors=""', dom), "a script error on the page"
    refuse = runner.invoke(app, ["report", str(evaluated_run), "--out", str(out)])
    assert refuse.exit_code == 2 and "--force" in refuse.output
    notes = tmp_path / "notes.html"
    notes.write_text("<html>mine</html>")
    kept = runner.invoke(app, ["report", str(evaluated_run), "--out", str(notes), "--force"])
    assert kept.exit_code == 2 and notes.read_text() == "<html>mine</html>"


def test_report_without_evaluation_says_what_to_run(trained_run):
    result = runner.invoke(app, ["report", str(trained_run)])
    assert result.exit_code == 0, result.output
    page = (trained_run / "report.html").read_text()
    assert "not evaluated yet" in page and "no robustness.json" in page


def test_ablation_table_keeps_labels_at_80_columns():
    from rich.console import Console

    from hegl_cli.ablation import METRICS
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
