"""External validation (issue 22): a run evaluated on another site's cache scores the classes both
have, by canonical name, says which it scored and which not, and keeps its own val's thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import reseal, shared_data
from hegl_cli.cli.app import app
from hegl_cli.data.pathologies import canonical, match_classes

runner = CliRunner()


@pytest.fixture(scope="module")
def chestxdet_site(tmp_path_factory) -> Path:
    """A ChestX-Det cache at 32 px from the real annotation files (a subset) over stand-in images."""
    root = tmp_path_factory.mktemp("site")
    blank = root / "blank.png"
    Image.fromarray(np.full((1024, 1024), 80, np.uint8)).save(blank)
    data = blank.read_bytes()  # a file each: links to one file are one image to hegl
    for split, n in (("train", 80), ("test", 60)):
        records = json.loads(shared_data("chestxdet", f"ChestX_Det_{split}.json").read_text())[:n]
        (root / split).mkdir()
        for record in records:
            (root / split / record["file_name"]).write_bytes(data)
        (root / f"ChestX_Det_{split}.json").write_text(json.dumps(records))
    out = root.with_name(root.name + "-cache")  # beside the download: a cache is never written into it
    result = runner.invoke(app, ["-q", "prepare", "--format", "chestxdet", "--source", str(root), "--out", str(out),
                                 "--image-size", "32", "--workers", "1"])
    assert result.exit_code == 0, result.output
    return out


def test_classes_meet_by_canonical_name():
    match = match_classes(["Nodule", "Mass", "Pleural_Thickening", "Hernia"],
                          ["Effusion", "Pleural thickening", "Mass", "Nodule"])
    assert match.scored == ("Nodule", "Mass", "Pleural_Thickening") and match.model_index == (0, 1, 2)
    assert match.data_index == (3, 2, 1) and match.model_only == ("Hernia",) and match.data_only == ("Effusion",)
    assert canonical("pleural-effusion") == "Effusion" and canonical("  Odd   name ") == "Odd name"


@pytest.mark.slow
def test_a_model_trained_on_the_built_in_data_is_scored_on_chestxdet(trained_run, chestxdet_site):
    home = runner.invoke(app, ["-q", "evaluate", str(trained_run), "--no-faithfulness"])
    assert home.exit_code == 0, home.output
    result = runner.invoke(app, ["evaluate", str(trained_run), "--data", str(chestxdet_site)])
    assert result.exit_code == 0, result.output
    reports = list((trained_run / "eval" / "external").glob("*/test.json"))
    assert len(reports) == 1 and (trained_run / "eval" / "test.json").is_file()  # home kept apart
    report = json.loads(reports[0].read_text())
    assert report["external"] and report["scored_classes"] == ["Nodule", "Mass", "Effusion", "Consolidation"]
    assert report["not_scored"]["model_only"] == [] and len(report["not_scored"]["data_only"]) == 9
    assert set(report["per_class"]) == set(report["scored_classes"])
    stored = json.loads((trained_run / "best.json").read_text())["thresholds"]
    assert list(report["thresholds"]["values"].values()) == pytest.approx(stored)  # the run's own val's
    assert report["attention"]["overall"]["pairs"] > 0  # alignment on the other site's masks
    assert "context_audit" in report["faithfulness"]
    assert "not scored" in result.output and "Pneumothorax" in result.output
    page = runner.invoke(app, ["-q", "report", str(trained_run), "--gallery", "0"])
    assert page.exit_code == 0, page.output
    html = (trained_run / "report.html").read_text()
    assert "External validation" in html and str(chestxdet_site) in html and "AUC this site" in html


def test_a_cache_that_shares_no_class_or_no_size_is_refused(trained_run, tmp_path, tiny_cache):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_cache, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["classes"] = ["Cardiomegaly", "Hernia", "Fracture", "Emphysema"]
    (other / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["-q", "evaluate", str(trained_run), "--data", str(other)])
    assert result.exit_code == 2 and "none of its classes" in result.output
    from hegl_cli.apps.prepare import prepare_synthetic
    from hegl_cli.data.benchmark.generator import SyntheticSpec
    from hegl_cli.data.options import PrepareOptions

    small = tmp_path / "small"
    prepare_synthetic(small, PrepareOptions(image_size=16, progress=False, workers=1),
                      SyntheticSpec(n_train=8, n_test=4, size=32))
    result = runner.invoke(app, ["-q", "evaluate", str(trained_run), "--data", str(small)])
    assert result.exit_code == 2 and "prepare it with --image-size 32" in result.output


def test_another_site_is_scored_honestly_classes_subgroups_and_calibration(trained_run, tiny_cache, tmp_path):
    """At a site whose test split has no positive of one class and a sex group of four images: the macro
    leaves the class out and every output says so with the reason (it used to print 'not scored: none');
    the small group is listed with its size; the terminal summary and the HTML report carry the subgroups,
    the ECE and the reliability diagram."""
    import shutil

    site = tmp_path / "site"
    shutil.copytree(tiny_cache, site)
    labels = np.load(site / "test" / "labels.npy")
    classes = json.loads((site / "manifest.json").read_text())["classes"]
    labels[:, 0] = 0  # no positive of the first class at this site
    np.save(site / "test" / "labels.npy", labels)
    (site / "test" / "metadata.json").write_text(json.dumps({"sex": ["F"] * 12 + ["M"] * (len(labels) - 12)}))
    reseal(site)  # sealed as prepare seals what it writes (the cache's checksums)
    result = runner.invoke(app, ["evaluate", str(trained_run), "--data", str(site), "--no-faithfulness"])
    assert result.exit_code == 0, result.output
    report = json.loads(next((trained_run / "eval" / "external").glob("*/test.json")).read_text())
    assert classes[0] not in report["macro"]["classes"]
    assert report["unscored"] == {classes[0]: f"no positive in the split, {len(labels)} negatives"}
    output = " ".join(result.output.split())
    assert f"not scored: {classes[0]} (no positive in the split, {len(labels)} negatives)" in output
    assert "not scored: none" not in output
    assert f"M (n={len(labels) - 12}: fewer than 10 images)" in output and "by sex: F" in output
    assert "reliability: ECE" in output and "reliability diagram:" in output
    page = runner.invoke(app, ["-q", "report", str(trained_run), "--gallery", "0"])
    assert page.exit_code == 0, page.output
    html = (trained_run / "report.html").read_text()
    assert f"{classes[0]} (no positive in the split" in html and "not scored: fewer than 10 images" in html
    assert html.count("reliability diagram") >= 1 and "By sex" in html
