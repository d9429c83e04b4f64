"""`hegl export` (issue 35): ONNX parity per encoder family, predict from the ONNX file equal to predict from
the run, the model card's numbers, and a site's recalibration (fitted on its val only)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import expit
from typer.testing import CliRunner

from conftest import reseal
from hegl_cli.cli.app import app
from hegl_cli.data.images import INTENSITY_RULE
from hegl_cli.evaluation.calibration import fit_calibration, fit_temperature, reliability
from hegl_cli.evaluation.classification import auc_per_class

runner = CliRunner()
SWIN_TINY = "{depths: [1, 1, 1, 1], embed_dim: 24, num_heads: [1, 1, 1, 1]}"
FAMILIES = [
    pytest.param("vit_tiny_patch16_224", "{patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}", 32, id="vit"),
    pytest.param("swin_tiny_patch4_window7_224", SWIN_TINY, 64, id="swin-nhwc"),
    pytest.param("resnet18", "{}", 64, id="resnet"),
    pytest.param("convnext_atto", "{}", 64, id="convnext"),
]


def _model(encoder: str, kwargs: str, size: int):
    from hegl_cli.config import load_config
    from hegl_cli.models.model import build_model

    cfg = load_config(None, ["model.text_encoder=none", f"model.encoder={encoder}", f"model.encoder_kwargs={kwargs}",
                             "model.decoder_dim=32", "model.decoder_heads=2", "model.decoder_ffn=64",
                             "model.decoder_layers=2"])
    return build_model(["a", "b", "c"], cfg.model, size).eval()


@pytest.mark.parametrize("encoder,kwargs,size", FAMILIES)
def test_each_encoder_family_exports_with_a_dynamic_batch(encoder, kwargs, size):
    import onnx
    import onnxruntime as ort

    from hegl_cli.models.onnx_export import OPSET, ExportedForward, export_onnx, identity_calibration

    forward = ExportedForward(_model(encoder, kwargs, size), *identity_calibration(3))
    raw, how = export_onnx(forward, size, encoder)
    assert how["opset"] == OPSET and "dynamo=False" in how["exporter"]
    graph = onnx.load_from_string(raw).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    for batch in (3, 1):  # neither is the batch of 2 it was traced with
        images = torch.rand(batch, 1, size, size)
        with torch.inference_mode():
            logits, attention, probs = (t.numpy() for t in forward(images))
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images.numpy()})))
        assert got["attention"].shape == attention.shape == (batch, 3, *forward.model.grid)
        assert np.abs(got["logits"] - logits).max() < 1e-4
        assert np.abs(got["attention"] - attention).max() < 1e-4
        np.testing.assert_allclose(got["probabilities"], expit(logits.astype(np.float64)), atol=1e-5)
    assert not forward.model.training  # the exporter gave the model back in eval mode


@pytest.mark.slow
def test_where_the_torchscript_exporter_fails_the_torch_export_one_takes_over(monkeypatch):
    import onnxruntime as ort

    from hegl_cli.models.onnx_export import DYNAMO_OPSET, ExportedForward, export_onnx, identity_calibration

    original = torch.onnx.export

    def no_torchscript(*args, dynamo=True, **kwargs):
        if not dynamo:
            raise RuntimeError("the TorchScript-based exporter is gone")
        return original(*args, dynamo=True, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_torchscript)
    forward = ExportedForward(_model(*FAMILIES[0].values), *identity_calibration(3))
    raw, how = export_onnx(forward, 32, "vit_tiny_patch16_224")
    assert how["opset"] == DYNAMO_OPSET and "dynamo=True" in how["exporter"]
    images = torch.rand(3, 1, 32, 32)
    with torch.inference_mode():
        logits, attention, _ = forward(images)
    got = ort.InferenceSession(raw, providers=["CPUExecutionProvider"]).run(["logits", "attention"],
                                                                            {"images": images.numpy()})
    assert np.abs(got[0] - logits.numpy()).max() < 1e-4 and np.abs(got[1] - attention.numpy()).max() < 1e-4


def test_an_encoder_that_does_not_export_is_named_in_one_line(monkeypatch):
    from hegl_cli.errors import UserError
    from hegl_cli.models.onnx_export import ExportedForward, export_onnx, identity_calibration

    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::fancy_op' to ONNX opset version 17 is not supported.\nmore")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    forward = ExportedForward(_model(*FAMILIES[0].values), *identity_calibration(3))
    with pytest.raises(UserError, match=r"encoder 'vit_tiny_patch16_224' does not export to ONNX: .*aten::fancy_op") as err:
        export_onnx(forward, 32, "vit_tiny_patch16_224")
    assert "\n" not in str(err.value)


def _images(folder: Path) -> Path:
    """PNGs of other sizes and depths, an RGB JPEG and one unreadable file."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40 + 9 * i, 50), dtype=np.uint8)).save(folder / f"g{i}.png")
    Image.fromarray(rng.integers(0, 65535, (70, 60), dtype=np.uint16)).save(folder / "deep.png")
    Image.fromarray(rng.integers(0, 255, (45, 45, 3), dtype=np.uint8)).save(folder / "colour.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {Path(r["file"]).name: r for r in csv.DictReader(handle)}


def assert_same_predictions(a: Path, b: Path, classes: list[str]) -> None:
    """Same files and columns, probabilities within 1e-4, decisions equal."""
    assert a.read_text().splitlines()[0] == b.read_text().splitlines()[0]
    rows_a, rows_b = _rows(a), _rows(b)
    assert rows_a.keys() == rows_b.keys() and len(rows_a) == 7
    for name in rows_a:
        for c in classes:
            assert abs(float(rows_a[name][f"p_{c}"]) - float(rows_b[name][f"p_{c}"])) <= 1e-4
            assert rows_a[name][f"positive_{c}"] == rows_b[name][f"positive_{c}"]


@pytest.mark.slow
def test_export_then_predict_from_the_onnx_file_equals_predict_from_the_run(trained_run, tmp_path):
    import onnx

    out = tmp_path / "deploy" / "tiny.onnx"
    result = runner.invoke(app, ["export", str(trained_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    parity = re.search(r"logits ([0-9.e+-]+), maps ([0-9.e+-]+)", result.output)
    assert parity and float(parity[1]) <= 1e-4 and float(parity[2]) <= 1e-4, result.output
    assert "opset 17" in result.output
    contract_file, card = out.with_name("tiny.preprocessing.json"), out.with_name("tiny.card.md")
    description = json.loads(contract_file.read_text())
    meta = json.loads((trained_run / "best.json").read_text())
    props = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert props["hegl"] == description
    assert props["classes"] == meta["classes"] and props["thresholds"] == pytest.approx(meta["thresholds"])
    contract = props["preprocessing"]
    assert contract["image_size"] == 32 and contract["input"]["shape"] == ["N", 1, 32, 32]
    assert contract["intensity_rule"] == INTENSITY_RULE and contract["intensity"] == "stored_range" and contract["frames"] == "first"
    assert description["outputs"]["attention"] == ["N", 4, 4, 4] and description["parity"]["source"].endswith("(test)")
    assert "## Exported model" in card.read_text()

    inbox = _images(tmp_path / "inbox")
    from_run, from_onnx = tmp_path / "run.csv", tmp_path / "onnx.csv"
    first = runner.invoke(app, ["predict", str(inbox), "--run", str(trained_run), "--out", str(from_run)])
    second = runner.invoke(app, ["predict", str(inbox), "--model", str(out), "--out", str(from_onnx)])
    assert first.exit_code == second.exit_code == 2, (first.output, second.output)  # broken.png skipped
    assert "broken.png" in second.output and "wrote 7 row(s)" in second.output
    assert_same_predictions(from_run, from_onnx, meta["classes"])

    again = runner.invoke(app, ["export", str(trained_run), "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    strict = runner.invoke(app, ["export", str(trained_run), "--out", str(tmp_path / "strict.onnx"), "--tolerance", "0"])
    assert strict.exit_code == 2 and "over --tolerance 0" in strict.output and "nothing was written" in strict.output
    assert not (tmp_path / "strict.onnx").exists() and not (tmp_path / "strict.card.md").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's notice
def test_a_model_file_that_is_not_a_hegl_onnx_model_is_one_line(trained_run, tmp_path):
    picture = tmp_path / "x.png"
    Image.new("L", (40, 40), 90).save(picture)
    bare = tmp_path / "bare.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2).eval(), (torch.rand(1, 2),), str(bare), dynamo=False)
    for model, message in ((picture, "not an ONNX model onnxruntime can load"),
                           (trained_run / "best.safetensors", "not an ONNX model onnxruntime can load"),
                           (bare, "not one `hegl export` wrote"), (tmp_path / "none.onnx", "model file not found")):
        result = runner.invoke(app, ["predict", str(picture), "--model", str(model), "--out", str(tmp_path / "p.csv")])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    both = runner.invoke(app, ["predict", str(picture), "--model", str(bare), "--run", str(trained_run)])
    assert both.exit_code == 2 and "not both" in both.output
    assert not (tmp_path / "p.csv").exists()


def test_an_export_whose_metadata_does_not_fit_its_graph_is_one_line(trained_run, tmp_path):
    """Tampered metadata gave CSVs with 3 class columns over 4 probabilities (exit 0), truncated
    positive columns, or an "unexpected error" (exit 1)."""
    import onnx

    out = tmp_path / "m.onnx"
    assert runner.invoke(app, ["export", str(trained_run), "--out", str(out)]).exit_code == 0
    picture = tmp_path / "x.png"
    Image.new("L", (40, 40), 90).save(picture)
    original = onnx.load(str(out))
    hegl = json.loads(next(p.value for p in original.metadata_props if p.key == "hegl"))
    for change, said in ((lambda d: d.update(classes=d["classes"][:3]), "3 class names for a graph of 4 logits"),
                         (lambda d: d.update(thresholds=[0.5]), "'thresholds' is not one finite number per class"),
                         (lambda d: d.update(classes="abcd"), "'classes' is not a list"),
                         (lambda d: d["preprocessing"].update(image_size="abc"), "'preprocessing.image_size' is 'abc'"),
                         (lambda d: d.update(trained_intensity_rule="x"), "'trained_intensity_rule' is 'x'"),
                         (lambda d: d.update(trained_intensity_containers=5), "'trained_intensity_containers'")):
        damaged = json.loads(json.dumps(hegl))
        change(damaged)
        model = onnx.load(str(out))
        next(p for p in model.metadata_props if p.key == "hegl").value = json.dumps(damaged)
        onnx.save(model, str(tmp_path / "bad.onnx"))
        result = runner.invoke(app, ["predict", str(picture), "--model", str(tmp_path / "bad.onnx"),
                                     "--out", str(tmp_path / "p.csv")])
        assert result.exit_code == 2 and said in result.output and "metadata is damaged" in result.output, result.output
        assert not (tmp_path / "p.csv").exists()


def _card_number(text: str, pattern: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, pattern
    return [float(v) for v in match.groups()]


def _card_table(text: str, header: str) -> dict[str, list[str]]:
    """The rows of the Markdown table whose header row starts with ``header``, by first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def close(card_value: str | float, value: float | None) -> bool:
    """A number the card printed with 3 decimals is the report's number."""
    return value is None and card_value == "–" or abs(float(card_value) - value) <= 5e-4 + 1e-12


def test_model_card_numbers_are_the_evaluation_s(trained_run):
    from hegl_cli.apps.card import model_card
    from hegl_cli.apps.evaluate import evaluate_run

    before = model_card(trained_run)
    assert f"Not measured: run `hegl evaluate {trained_run}`" in before
    report = evaluate_run(trained_run, "test", faithfulness=False)
    result = runner.invoke(app, ["report", str(trained_run), "--card", "--gallery", "0"])
    assert result.exit_code == 0, result.output
    card = (trained_run / "MODEL_CARD.md").read_text()
    stored = json.loads((trained_run / "eval" / "test.json").read_text())
    m, ci = stored["macro"], stored["macro_ci95"]
    for key, label in (("auc", "AUC"), ("f1", "F1"), ("mcc", "MCC")):
        value, low, high = _card_number(card, rf"- Macro {label} (-?[\d.]+) \[(-?[\d.]+), (-?[\d.]+)\]")
        assert close(value, m[key]) and close(low, ci[key][0]) and close(high, ci[key][1]), key
    per_class = _card_table(card, "| class | AUC |")
    assert list(per_class) == list(stored["per_class"])
    for name, row in stored["per_class"].items():
        auc, f1, mcc, threshold, positives, n = per_class[name]
        assert all(close(v, row[k]) for v, k in ((auc, "auc"), (f1, "f1"), (mcc, "mcc"), (threshold, "threshold")))
        assert (int(positives), int(n)) == (row["positives"], row["n"])
    calibration = _card_table(card, "| class | known pairs |")
    for name, row in {**stored["calibration"]["per_class"], "all pairs": stored["calibration"]}.items():
        pairs, brier, ece = calibration[name]
        assert int(pairs) == row["pairs"] and close(brier, row["brier"]) and close(ece, row["ece"])
    images = _card_number(card, r"`: (\d+) images")
    assert images == [stored["images"]] and report["macro"] == stored["macro"]
    assert f"Not measured: run `hegl robustness {trained_run}`" in card
    assert f"Not measured: run `hegl evaluate {trained_run} --methods all`" in card
    assert "## Training data" in card and "| Nodule |" in card and f"intensity rule {INTENSITY_RULE}, stored_range, frames first, containers PNG/JPEG/TIFF/BMP" in card


# --- recalibration ------------------------------------------------------------------------------------------
def _synthetic(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a calibrated model times ``temperature`` (> 1: overconfident), and labels drawn from it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, 2))
    return z * temperature, (rng.random((n, 2)) < expit(z)).astype(np.float64)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(temperature):
    logits, labels = _synthetic(20_000, temperature, seed=1)
    assert fit_temperature(logits[:, 0], labels[:, 0]) == pytest.approx(temperature, rel=0.05)
    calibration = fit_calibration(logits, labels, ["a", "b"], "temperature", "mcc", np.full(2, 0.5))
    assert calibration.temperature == pytest.approx([temperature] * 2, rel=0.05) and all(calibration.fitted)


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_recalibration_lowers_ece_on_a_miscalibrated_model(method):
    val_logits, val_labels = _synthetic(3000, 3.0, seed=2)
    test_logits, test_labels = _synthetic(3000, 3.0, seed=3)
    calibration = fit_calibration(val_logits, val_labels, ["a", "b"], method, "mcc", np.full(2, 0.5))
    before = reliability(expit(test_logits), test_labels, ["a", "b"])["ece"]
    after = reliability(calibration.probabilities(test_logits), test_labels, ["a", "b"])["ece"]
    assert after < before / 2, (before, after)
    if method == "temperature":  # a temperature keeps each class's ranking: AUC unchanged
        assert auc_per_class(calibration.probabilities(test_logits), test_labels) == auc_per_class(
            expit(test_logits), test_labels)


def test_the_exported_graph_calibrates_as_numpy_does():
    from hegl_cli.models.onnx_export import ExportedForward

    logits, labels = _synthetic(500, 2.0, seed=4)
    wide = np.random.default_rng(5).normal(0.0, 6.0, (4000, 2))
    for method in ("temperature", "isotonic"):
        calibration = fit_calibration(logits, labels, ["a", "b"], method, "mcc", np.full(2, 0.5))
        graph = ExportedForward(torch.nn.Identity(), calibration.temperature, *calibration.padded_knots())
        got = graph.calibrate(torch.from_numpy(wide).float()).numpy()
        want = calibration.probabilities(wide.astype(np.float32))
        assert np.abs(got - want).max() < 5e-4, method  # float32 sigmoid on a steep isotonic piece
        assert ((got >= calibration.thresholds) == (want >= calibration.thresholds)).all(), method


@pytest.fixture()
def site(tmp_path, trained_run) -> Path:
    """Another site: a copy of the run's cache in another place (same classes, other val and test)."""
    meta = json.loads((trained_run / "best.json").read_text())
    return Path(shutil.copytree(meta["data"], tmp_path / "site"))


def test_fitting_a_site_calibration_never_opens_its_test_split(trained_run, site, monkeypatch):
    from hegl_cli.apps.recalibrate import fit_site_calibration
    from hegl_cli.data.cache import CachedSplit

    opened = []
    original = CachedSplit.__init__

    def guarded(self, cache, split):
        opened.append(split)
        if split != "val":
            raise AssertionError(f"split '{split}' opened while fitting")
        original(self, cache, split)

    monkeypatch.setattr(CachedSplit, "__init__", guarded)
    calibration = fit_site_calibration(trained_run, site, method="temperature", device="cpu")
    assert opened == ["val"] and calibration.facts["fitted_on"]["split"] == "val"
    assert calibration.facts["fitted_on"]["images"] == len(json.loads((site / "val" / "files.json").read_text()))


@pytest.mark.slow
def test_recalibrate_at_a_site_then_predict_and_export_with_it(trained_run, site, tmp_path):
    args = ["evaluate", str(trained_run), "--data", str(site), "--recalibrate"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ece" in result.output and "specificity" in result.output
    [calibration_file] = (trained_run / "eval" / "external").glob("*/calibration.json")
    report = json.loads(calibration_file.with_name("test-recalibration.json").read_text())
    fitted = json.loads(calibration_file.read_text())
    assert report["fitted_on"]["split"] == "val" and report["split"] == "test"
    n_val = report["fitted_on"]["images"]
    assert n_val < 100 and f"val split holds {n_val} images" in " ".join(result.output.split())
    assert any("holds" in w for w in report["warnings"])
    for side in ("before", "after"):
        assert set(report[side]["macro_ci95"]) >= {"auc", "f1", "mcc", "sensitivity", "specificity", "ece", "brier"}
    assert report["after"]["macro"]["auc"] == report["before"]["macro"]["auc"]  # a temperature keeps the ranking
    assert [r["auc"] for r in report["after"]["per_class"].values()] == [
        r["auc"] for r in report["before"]["per_class"].values()]

    labels = np.load(site / "test" / "labels.npy")  # the site's test labels never reach the calibration
    np.save(site / "test" / "labels.npy", 1.0 - labels)
    reseal(site)
    assert runner.invoke(app, args).exit_code == 0
    assert json.loads(calibration_file.read_text())["per_class"] == fitted["per_class"]
    refused = runner.invoke(app, ["evaluate", str(trained_run), "--recalibrate"])
    assert refused.exit_code == 2 and "--data" in refused.output

    inbox = _images(tmp_path / "inbox")
    from_run, from_onnx = tmp_path / "run.csv", tmp_path / "onnx.csv"
    assert runner.invoke(app, ["predict", str(inbox), "--run", str(trained_run), "--calibration",
                               str(calibration_file), "--out", str(from_run)]).exit_code == 2  # broken.png
    out = tmp_path / "site.onnx"
    exported = runner.invoke(app, ["export", str(trained_run), "--out", str(out), "--calibration", str(calibration_file)])
    assert exported.exit_code == 0, exported.output
    assert runner.invoke(app, ["predict", str(inbox), "--model", str(out), "--out", str(from_onnx)]).exit_code == 2
    classes = fitted["classes"]
    assert_same_predictions(from_run, from_onnx, classes)
    header = from_run.read_text().splitlines()[0].split(",")
    assert header == ["file", *[f"p_{c}" for c in classes], *[f"positive_{c}" for c in classes]]
    description = json.loads(out.with_name("site.preprocessing.json").read_text())
    assert description["thresholds"] == [fitted["per_class"][c]["threshold"] for c in classes]

    twice = runner.invoke(app, ["predict", str(inbox), "--model", str(out), "--calibration", str(calibration_file)])
    assert twice.exit_code == 2 and "already applies a site calibration" in twice.output
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**fitted, "model": {**fitted["model"], "weights_sha256": "0" * 64}}))
    wrong = runner.invoke(app, ["predict", str(inbox), "--run", str(trained_run), "--calibration", str(other)])
    assert wrong.exit_code == 2 and "fitted for another model" in wrong.output


def test_small_site_warnings_name_few_images_and_rare_classes():
    from hegl_cli.apps.recalibrate import small_site_warnings

    assert small_site_warnings({"images": 300, "positives": {"a": 40, "b": 0}}) == []
    lines = small_site_warnings({"images": 12, "positives": {"a": 3, "b": 25}})
    assert len(lines) == 2 and "12 images" in lines[0] and "a 3" in lines[1] and "b 25" not in lines[1]
