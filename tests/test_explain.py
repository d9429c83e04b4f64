"""`hegl explain` (hegl_cli.apps.explain): overlays, file layout, skip-and-go-on."""

from __future__ import annotations

import json

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


def test_a_run_trained_under_another_intensity_rule_is_named(trained_run, tmp_path):
    """A run whose training images were read under rule 1 (hegl 0.1) explains new images, read under
    rule 2, with a warning that says so (issue 20)."""
    import json

    from PIL import Image

    meta = json.loads((trained_run / "best.json").read_text())
    assert meta["intensity_rule"] == 2
    meta.pop("intensity_rule")
    (trained_run / "best.json").write_text(json.dumps(meta))
    Image.new("L", (32, 32), 100).save(tmp_path / "x.png")
    result = runner.invoke(app, ["explain", str(tmp_path / "x.png"), "--run", str(trained_run), "--out",
                                 str(tmp_path / "o")])
    assert result.exit_code == 0 and "intensity rule 1" in result.output and "rule 2" in result.output
