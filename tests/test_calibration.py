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
    assert out["sex"]["groups"]["F"]["macro_auc"] == 1.0 and out["sex"]["groups"]["M"]["macro_auc"] < 0.8
    assert out["sex"]["gap"] == pytest.approx(1.0 - out["sex"]["groups"]["M"]["macro_auc"])
    # the AP group has 5 images, under the minimum: listed with its size, not dropped; no gap with one group
    assert set(out["view"]["groups"]) == {"PA"} and out["view"]["gap"] is None
    assert out["view"]["unscored"] == {"AP": {"images": 5, "reason": "fewer than 10 images"}}
    assert out["sex"]["unscored"] == {} and out["sex"]["without_value"] == 0


def test_a_subgroup_without_a_class_to_score_and_images_without_a_value_are_named():
    labels = np.zeros((30, 2))
    labels[:10, 0] = 1  # only the first group holds positives
    probs = np.random.default_rng(1).random((30, 2))
    out = subgroup_scores(probs, labels, {"site": ["a"] * 15 + ["b"] * 12 + [""] * 3}, ["x", "y"], bootstrap=5)
    assert set(out["site"]["groups"]) == {"A"} and out["site"]["without_value"] == 3
    assert out["site"]["unscored"]["B"] == {"images": 12,
                                            "reason": "no class has both a positive and a negative in the group"}


def test_the_macro_names_each_class_it_leaves_out_and_why():
    from hegl_cli.evaluation.classification import summarize

    labels = np.array([[1, 0, np.nan, 1], [0, 0, np.nan, 1], [1, 0, np.nan, 1.0]])
    probs = np.full(labels.shape, 0.5)
    macro = summarize(probs, labels, np.full(4, 0.5), ["a", "b", "c", "d"])["macro"]
    assert macro["classes"] == ["a"]
    assert macro["not_scored"] == {"b": "no positive in the split, 3 negatives", "c": "no known label in the split",
                                   "d": "no negative in the split, 3 positives"}


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
