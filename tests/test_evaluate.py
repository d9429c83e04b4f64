"""`hegl evaluate`, `hegl robustness`, `hegl explain` on tiny trained runs; shortcut reliance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES, reseal, shared_data
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

    from hegl_cli.apps.evaluate import evaluate_run

    meta = json.loads((trained_run / "best.json").read_text())
    cache = tmp_path / "cache"
    shutil.copytree(meta["data"], cache)
    first = evaluate_run(trained_run, "test", data=cache, threshold_metric="f1", faithfulness=False)
    labels = np.load(cache / "test" / "labels.npy")
    np.save(cache / "test" / "labels.npy", 1.0 - labels)  # flip every test label
    reseal(cache)
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


def test_robustness_feeds_every_run_the_same_noisy_images(trained_run, tmp_path, monkeypatch):
    """Two different runs (other weights) see exactly the same noisy inputs at each sigma and draw."""
    import shutil

    from safetensors.torch import load_file

    from conftest import replace_weights
    from hegl_cli.models import inference as predict

    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    weights = load_file(str(other / "best.safetensors"))
    replace_weights(other, {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                            for k, v in weights.items()})
    seen: dict[str, list] = {}
    original = predict.predict_images

    def spy(model, images, device, amp=True):
        seen.setdefault(str(id(model)), []).append(images.clone())
        return original(model, images, device, amp)

    monkeypatch.setattr(predict, "predict_images", spy)
    result = runner.invoke(app, ["robustness", str(trained_run), str(other), "--sigma", "0.1", "--draws", "2",
                                 "--out", str(tmp_path / "two")])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "two" / "robustness.json").read_text())["records"]
    assert [(r["run"], r["sigma"]) for r in records] == [("tiny", 0.0), ("tiny", 0.1), ("other", 0.0), ("other", 0.1)]
    first, second = seen.values()
    assert len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second))
    assert records[1]["auc"] != records[3]["auc"]  # the models differ, the inputs did not


def test_robustness_defaults_come_from_eval_config(trained_run, tmp_path):
    result = runner.invoke(app, ["robustness", str(trained_run), "--out", str(tmp_path / "d"),
                                 "--set", "eval.sigmas=[0.02, 0.2]", "--set", "eval.robustness_draws=2"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "d" / "robustness.json").read_text())
    assert data["sigmas"] == [0.0, 0.02, 0.2] and data["draws"] == 2


def test_evaluate_takes_eval_keys_and_refuses_others(trained_run):
    result = runner.invoke(app, ["evaluate", str(trained_run), "--no-faithfulness", "--set", "eval.bootstrap=0",
                                 "--set", "eval.top_share=0.5"])
    assert result.exit_code == 0, result.output
    report = json.loads((trained_run / "eval" / "test.json").read_text())
    assert report["macro_ci95"] == {"auc": None, "f1": None, "mcc": None}
    assert report["attention"]["overall"]["top_share"] == 0.5 and report["eval_config"]["bootstrap"] == 0
    assert report["ci_method"] == "no intervals (eval.bootstrap=0)" and "intervals: no intervals" in result.output
    with_ci = runner.invoke(app, ["evaluate", str(trained_run), "--no-faithfulness", "--set", "eval.bootstrap=30"])
    assert with_ci.exit_code == 0, with_ci.output
    method = json.loads((trained_run / "eval" / "test.json").read_text())["ci_method"]
    assert "30 resamples" in method and "percentile bootstrap" in method and "30 resamples" in with_ci.output
    refused = runner.invoke(app, ["evaluate", str(trained_run), "--set", "loss.alpha=0"])
    assert refused.exit_code == 2 and "only set eval.* keys" in refused.output


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
        (["evaluate", str(tmp_path)], "is not a hegl run folder"),
        (["explain", str(bad), "--run", str(tmp_path)], "is not a hegl run folder"),
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


def test_evaluate_on_a_chestxdet_cache_without_twin_reports_the_context_audit(tmp_path):
    """Real-format data has no counterfactual twin: the audit comes from its expert boxes alone."""
    from PIL import Image


    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        rows = []
        for i in range(40 if split == "train" else 16):
            name = f"{split}{i:03d}.png"
            pixels = rng.integers(60, 120, (64, 64)).astype(np.uint8)
            if i % 2:  # a bright "nodule" in a box
                x, y = (int(v) for v in rng.integers(8, 40, 2))
                pixels[y:y + 12, x:x + 12] = 220
                rows.append({"file_name": name, "syms": ["Nodule"], "boxes": [[x, y, x + 12, y + 12]],
                             "polygons": [[[x, y], [x + 12, y], [x + 12, y + 12], [x, y + 12]]]})
            else:
                rows.append({"file_name": name, "syms": [], "boxes": [], "polygons": []})
            Image.fromarray(pixels).save(root / split / name)
        (root / f"ChestX_Det_{split}.json").write_text(json.dumps(rows))
    cache = tmp_path / "cache"
    result = runner.invoke(app, ["prepare", "--format", "chestxdet", "--source", str(root), "--out", str(cache),
                                 "--image-size", "32", "--set", "data.val_fraction=0.25"])
    assert result.exit_code == 0, result.output
    sets = [a for o in TINY_OVERRIDES for a in ("--set", o)]
    result = runner.invoke(app, ["train", "--data", str(cache), "--name", "cxd", "--runs-dir", str(tmp_path / "runs"),
                                 *sets, "--set", "data.classes=[Nodule]"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "runs" / "cxd"), "--set", "eval.faithfulness_images=2"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "cxd" / "eval" / "test.json").read_text())
    audit = report["faithfulness"]["context_audit"]
    assert audit["images"] == 8 and audit["pairs"] == 8
    assert {"context_reliance", "context_reliance_chance", "lesion_necessity", "lesion_necessity_chance",
            "context_reliance_per_class", "lesion_necessity_per_class"} <= set(audit)
    assert "shortcut_reliance" not in report["faithfulness"]  # no twin, no twin-based number
    assert "context reliance" in result.output and "lesion necessity" in result.output


def test_evaluate_reports_the_context_audit(trained_run):
    result = runner.invoke(app, ["evaluate", str(trained_run), "--set", "eval.faithfulness_images=2"])
    assert result.exit_code == 0, result.output
    report = json.loads((trained_run / "eval" / "test.json").read_text())
    audit = report["faithfulness"]["context_audit"]
    assert 0 <= audit["context_reliance"] <= 1 and -1 <= audit["lesion_necessity"] <= 1
    assert "context reliance" in result.output and "lesion necessity" in result.output


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES", "ENAMETOOLONG"])
def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing_that_looks_complete(trained_run, monkeypatch, code):
    """An OSError the user can fix, raised while the report is being written: exit 2, one line naming the
    path, and no eval file that looks finished (the writes are atomic)."""
    import errno
    import os

    import hegl_cli.fs.atomic as atomic

    def full(src, dst):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(dst))

    monkeypatch.setattr(atomic.os, "replace", full)
    result = runner.invoke(app, ["-q", "evaluate", str(trained_run), "--no-faithfulness"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "test.json" in lines[0] and os.strerror(getattr(errno, code)) in lines[0]
    assert not (trained_run / "eval" / "test.json").exists()
    assert not list((trained_run / "eval").glob("*.tmp")) if (trained_run / "eval").exists() else True
