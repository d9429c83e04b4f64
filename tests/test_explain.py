"""`hegl explain` (hegl_cli.apps.explain): overlays, file layout, skip-and-go-on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from test_fault_catalogue import write_png
from typer.testing import CliRunner

from hegl_cli.cli.app import app

runner = CliRunner()


def test_explain_gives_same_named_files_their_own_folders(trained_run, tmp_path):
    """0.1.0 wrote a/x.png and b/x.png (and x.jpg) into one output folder."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for folder, suffix in (("a", ".png"), ("b", ".png"), ("a", ".jpg")):
        (tmp_path / folder).mkdir(exist_ok=True)
        path = tmp_path / folder / f"x{suffix}"
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(path)
        paths.append(path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", *map(str, paths), "--run", str(trained_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = {json.loads(p.read_text())["image"] for p in out.glob("*/predictions.json")}
    assert written == {str(p) for p in paths}
    record = json.loads(next(out.glob("*/predictions.json")).read_text())
    assert record["checkpoint"] == "best" and isinstance(record["epoch"], int)


def test_explain_goes_on_after_a_bad_image_and_exits_2(trained_run, tmp_path):
    folder = tmp_path / "inbox"
    write_png(folder / "good1.png", seed=1)
    (folder / "broken.png").write_text("not a png")
    write_png(folder / "good2.png", seed=2)
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(folder), "--run", str(trained_run), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert sorted(p.name for p in out.iterdir() if p.name != ".hegl-outputs.jsonl") == ["good1", "good2"]
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    assert "1 input(s) skipped, 2 explained" in result.output


def test_a_run_trained_under_another_intensity_rule_is_named_for_the_images_it_changed(trained_run, tmp_path):
    """A run whose training images were read under rule 1 (hegl 0.1) explains new images with a warning
    that says so (issue 20); a run trained on PNGs under rule 2 is not warned about PNGs, which rule 3
    reads alike, nor one trained on DICOMs about PNGs, but it is about DICOMs, which rule 3 reads otherwise."""
    import json

    from PIL import Image
    from test_field_datasets import dx_file

    from hegl_cli.data.images import INTENSITY_RULE

    meta = json.loads((trained_run / "best.json").read_text())
    assert meta["intensity_rule"] == INTENSITY_RULE and meta["intensity_containers"] == ["pillow"]
    Image.new("L", (32, 32), 100).save(tmp_path / "x.png")
    dicom = dx_file(tmp_path / "x.dcm", "MONOCHROME2", "INVERSE")

    def explain(path: Path, rule: int | None, containers: list[str] | None) -> str:
        record = {k: v for k, v in meta.items() if k not in ("intensity_rule", "intensity_containers")}
        record.update({} if rule is None else {"intensity_rule": rule})
        record.update({} if containers is None else {"intensity_containers": containers})
        (trained_run / "best.json").write_text(json.dumps(record))
        out = tmp_path / f"o-{path.suffix[1:]}-{rule}-{containers}"
        result = runner.invoke(app, ["explain", str(path), "--run", str(trained_run), "--out", str(out)])
        assert result.exit_code == 0, result.output
        return result.output

    try:
        old = explain(tmp_path / "x.png", None, None)  # rule 1, containers not recorded
        assert "intensity rule 1 and under rule 3 differ" in old and "PNG" in old
        assert "intensity rule" not in explain(tmp_path / "x.png", 2, ["pillow"])
        assert "intensity rule" not in explain(tmp_path / "x.png", 2, ["dicom"])
        shifted = explain(dicom, 2, ["dicom"])
        assert "DICOM images read under intensity rule 2 and under rule 3 differ" in shifted
        assert "DICOM" in explain(dicom, 2, None)  # not recorded: it may have trained on DICOMs
    finally:
        (trained_run / "best.json").write_text(json.dumps(meta))
