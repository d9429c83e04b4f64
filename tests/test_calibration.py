"""Calibration and subgroups (hegl_cli.evaluation.calibration), by hand and on real NIH rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_datasets import nih_source  # noqa: F401 - the fixture
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.cli.app import app
from hegl_cli.evaluation.calibration import age_band, reliability, subgroup_scores

runner = CliRunner()


def test_brier_and_ece_by_hand():
    probs = np.array([[0.1, 0.9], [0.3, 0.8], [0.6, 0.2], [0.95, 0.5]])
    labels = np.array([[0, 1], [1, 1], [0, np.nan], [1, 0]])
    result = reliability(probs, labels, ["a", "b"], bins=2)
    known = [(0.1, 0), (0.3, 1), (0.6, 0), (0.95, 1), (0.9, 1), (0.8, 1), (0.5, 0)]
    assert result["brier"] == pytest.approx(np.mean([(p - y) ** 2 for p, y in known]))
    low = [(p, y) for p, y in known if p < 0.5]
    high = [(p, y) for p, y in known if p >= 0.5]
    ece = sum(len(g) / 7 * abs(np.mean([p for p, _ in g]) - np.mean([y for _, y in g])) for g in (low, high))
    assert result["ece"] == pytest.approx(ece) and result["pairs"] == 7
    assert result["per_class"]["b"]["pairs"] == 3
    assert [b["pairs"] for b in result["curve"]] == [len(low), len(high)]
    perfect = reliability(np.array([[0.0], [1.0]]), np.array([[0.0], [1.0]]), ["a"])
    assert perfect["brier"] == 0 and perfect["ece"] == 0


@pytest.mark.parametrize("value,band", [("58", "40-59"), ("058Y", "40-59"), ("7M", "<40"), ("80", "80+"),
                                        ("39.9", "<40"), ("old", None), ("", None)])
def test_age_bands_read_nih_and_dicom_ages(value, band):
    assert age_band(value) == band


def test_subgroups_score_each_group_and_the_gap():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (80, 2)).astype(float)
    probs = labels * 0.6 + rng.random((80, 2)) * 0.4  # separable: AUC 1
    probs[40:] = rng.random((40, 2))  # the second group's probabilities are noise
    metadata = {"sex": ["F"] * 40 + ["M"] * 40, "view": ["pa"] * 75 + ["AP"] * 5}
    out = subgroup_scores(probs, labels, metadata, ["a", "b"], bootstrap=20)
    assert set(out) == {"sex"}  # the AP group has 5 images: under the minimum, so view has one group only
    assert out["sex"]["groups"]["F"]["macro_auc"] == 1.0 and out["sex"]["groups"]["M"]["macro_auc"] < 0.8
    assert out["sex"]["gap"] == pytest.approx(1.0 - out["sex"]["groups"]["M"]["macro_auc"])


@pytest.mark.slow
def test_nih_subgroups_and_calibration_reach_the_evaluation_and_the_report(nih_source, tmp_path):  # noqa: F811
    """A tiny model trained on a cache of the real NIH rows (stand-in images): per-sex and per-view AUC
    and the calibration appear in eval/test.json and in the report."""
    root, _ = nih_source
    cache = tmp_path / "nih"
    assert runner.invoke(app, ["-q", "prepare", "--format", "nih", "--source", str(root), "--out", str(cache),
                               "--image-size", "32", "--workers", "1"]).exit_code == 0
    sets = [a for o in TINY_OVERRIDES + [f"data.path={cache}"] for a in ("--set", o)]
    assert runner.invoke(app, ["-q", "train", "--name", "n", "--runs-dir", str(tmp_path / "runs"), *sets]).exit_code == 0
    run = tmp_path / "runs" / "n"
    result = runner.invoke(app, ["-q", "evaluate", str(run), "--no-faithfulness"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval" / "test.json").read_text())
    assert {"sex", "view"} <= set(report["subgroups"]), report["subgroups"].keys()
    assert set(report["subgroups"]["sex"]["groups"]) == {"F", "M"}
    assert set(report["subgroups"]["view"]["groups"]) <= {"PA", "AP"}
    assert 0 <= report["calibration"]["ece"] <= 1 and (run / "eval" / "test-reliability.png").is_file()
    page = runner.invoke(app, ["-q", "report", str(run), "--gallery", "0"])
    assert page.exit_code == 0, page.output
    html = (run / "report.html").read_text()
    assert "By sex" in html and "By view" in html and "reliability diagram" in html
