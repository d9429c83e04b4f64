"""`hegl evaluate`, `hegl robustness`, `hegl explain` on tiny trained runs; shortcut reliance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES, shared_data
from hegl_cli.cli.app import app

runner = CliRunner()


def test_evaluate_writes_json_and_csv(trained_run):
    result = runner.invoke(app, ["evaluate", str(trained_run), "--split", "test"])
    assert result.exit_code == 0, result.output
    report = json.loads((trained_run / "eval" / "test.json").read_text())
    for key in ("macro", "per_class", "attention", "faithfulness", "thresholds"):
        assert key in report
    assert report["thresholds"]["chosen_on"].startswith("validation")
    assert "shortcut_reliance" in report["faithfulness"]
    assert report["faithfulness"]["pairs"] > 0
    assert (trained_run / "eval" / "test.csv").read_text().startswith("class,auc,f1,mcc")
    assert "macro AUC" in result.output and "shortcut reliance" in result.output


def test_thresholds_do_not_depend_on_test_labels(trained_run, tmp_path):
    import shutil

    from hegl_cli.evaluation.evaluate import evaluate_run

    meta = json.loads((trained_run / "best.json").read_text())
    cache = tmp_path / "cache"
    shutil.copytree(meta["data"], cache)
    first = evaluate_run(trained_run, "test", data=cache, threshold_metric="f1", faithfulness=False)
    labels = np.load(cache / "test" / "labels.npy")
    np.save(cache / "test" / "labels.npy", 1.0 - labels)  # flip every test label
    second = evaluate_run(trained_run, "test", data=cache, threshold_metric="f1", faithfulness=False)
    assert first["thresholds"] == second["thresholds"]
    assert first["macro"]["auc"] != second["macro"]["auc"]


def test_robustness_one_and_two_runs(trained_run, tmp_path):
    result = runner.invoke(app, ["robustness", str(trained_run), "--sigma", "0.05", "--draws", "2",
                                 "--out", str(tmp_path / "one")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "one" / "robustness.json").read_text())
    assert [r["sigma"] for r in data["records"]] == [0.0, 0.05]
    assert data["records"][1]["draws"] == 2 and data["records"][0]["draws"] == 1
    assert (tmp_path / "one" / "robustness.png").is_file()
    two = runner.invoke(app, ["robustness", str(trained_run), str(trained_run), "--sigma", "0.1", "--draws", "1",
                              "--out", str(tmp_path / "two")])
    assert two.exit_code == 0, two.output
    records = json.loads((tmp_path / "two" / "robustness.json").read_text())["records"]
    assert len(records) == 4
    # The same noise for every run: identical models get identical numbers.
    assert records[1]["auc"] == records[3]["auc"]


def test_robustness_plot_has_one_line_per_run(tmp_path):
    from hegl_cli.plots import plot_robustness, plt

    stats = {"mean": 0.8, "std": 0.0, "min": 0.8, "max": 0.8}
    records = [{"run": run, "sigma": s, **{k: stats for k in ("auc", "f1", "mcc", "energy_in_mask")}}
               for run in ("hegl", "baseline") for s in (0.0, 0.05)]
    captured = {}
    original = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        ax = fig.axes[0]
        captured["lines"] = len(ax.get_lines())
        captured["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
        return original(fig, *args, **kwargs)

    plt.Figure.savefig = spy
    try:
        plot_robustness(records, tmp_path / "r.png")
    finally:
        plt.Figure.savefig = original
    assert captured == {"lines": 2, "legend": ["hegl", "baseline"]}


def test_explain_png_dicom_and_folder(trained_run, tmp_path):
    png = shared_data("cxr", "00000001_000.png")
    dcm = shared_data("cxr", "RG1_UNCR.dcm")
    out = tmp_path / "x"
    result = runner.invoke(app, ["explain", str(png), str(dcm), "--run", str(trained_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for stem in ("00000001_000", "RG1_UNCR"):
        folder = out / stem
        pred = json.loads((folder / "predictions.json").read_text())
        assert set(pred["classes"]) == {"Nodule", "Mass", "Effusion", "Consolidation"}
        assert (folder / "grid.png").is_file() and (folder / "overlay_nodule.png").is_file()
        patch = np.load(folder / "attention_patch.npy")
        image = np.load(folder / "attention_image.npy")
        assert patch.shape == (4, 4, 4) and image.shape == (4, 32, 32)
        assert np.allclose(patch.sum((1, 2)), 1, atol=1e-5) and np.allclose(image.sum((1, 2)), 1, atol=1e-4)
    one = runner.invoke(app, ["explain", str(png), "--run", str(trained_run), "--classes", "Mass"])
    assert one.exit_code == 0, one.output
    assert (trained_run / "explain" / "00000001_000" / "overlay_mass.png").is_file()
    assert not (trained_run / "explain" / "00000001_000" / "overlay_nodule.png").exists()


def test_explain_and_evaluate_errors(trained_run, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    cases = [
        (["explain", str(bad), "--run", str(trained_run)], "cannot read image"),
        (["explain", str(tmp_path / "missing.png"), "--run", str(trained_run)], "image not found"),
        (["explain", str(shared_data("cxr", "00000001_000.png")), "--run", str(trained_run), "--classes", "Tumour"],
         "class 'Tumour' is not in the model"),
        (["evaluate", str(tmp_path)], "has no 'best' checkpoint"),
        (["explain", str(bad), "--run", str(tmp_path)], "has no 'best' checkpoint"),
        (["robustness", str(tmp_path / "nope")], "run folder not found"),
        (["evaluate", str(trained_run), "--split", "nosuch"], "split 'nosuch'"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], (args, result.output)


def test_latest_run_is_found_without_argument(trained_run, monkeypatch):
    monkeypatch.chdir(trained_run.parent.parent)
    result = runner.invoke(app, ["evaluate", "--runs-dir", str(trained_run.parent), "--no-faithfulness"])
    assert result.exit_code == 0, result.output


def _train_on(tmp_path: Path, name: str, **spec_kw) -> dict:
    from hegl_cli.config import load_config
    from hegl_cli.data.prepare import PrepareOptions
    from hegl_cli.data.synthetic import SyntheticSpec, prepare_synthetic
    from hegl_cli.engine.train import train
    from hegl_cli.evaluation.evaluate import evaluate_run

    cache = tmp_path / f"cache-{name}"
    prepare_synthetic(cache, PrepareOptions(image_size=64, progress=False, workers=1),
                      SyntheticSpec(n_train=160, n_test=48, size=64, **spec_kw))
    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("data.image_size", "train.epochs", "model.encoder"))]
    # A CNN picks up a corner marker within a few epochs; the tiny ViT needs far more steps.
    cfg = load_config(None, overrides + [f"data.path={cache}", "data.image_size=64", "train.epochs=8",
                                         "model.encoder=resnet18", "model.encoder_kwargs={}", "loss.alpha=0", "loss.beta=0", "train.patience=0"])
    run = train(cfg, name=name, runs_dir=tmp_path / "runs", progress=False, log=lambda *_: None).run
    return evaluate_run(run, "test", "last")["faithfulness"]["shortcut_reliance"]


@pytest.mark.slow
def test_shortcut_reliance_separates_cue_blind_and_cue_trained_models(tmp_path):
    blind = _train_on(tmp_path, "blind", cue_in_train=False)
    cued = _train_on(tmp_path, "cued", cue_strength=1.0, lesion_contrast=0.0)
    assert blind["mean"] < 0.03, blind
    assert cued["per_class"]["Nodule"] > 0.2, cued
    assert cued["mean"] > 3 * blind["mean"]
