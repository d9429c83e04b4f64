"""`hegl report` (hegl_cli.apps.report): one self-contained page."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.cli.app import app

runner = CliRunner()


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
