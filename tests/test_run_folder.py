"""The run folder as one object (hegl_cli.engine.run_folder): every file of a run is named there, and
nowhere else in the package."""

from __future__ import annotations

import os
import re
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from hegl_cli.cli.app import app
from hegl_cli.engine.run_folder import AblationFolder, RunFolder, robustness_files

runner = CliRunner()
PACKAGE = Path(__file__).resolve().parents[1] / "hegl_cli"
RUN_FILE_NAMES = (
    "hegl-run.json", ".hegl-lock", "config.yaml", "state.pt", "metrics.jsonl", "history.jsonl", "curves.png",
    "best.safetensors", "best.json", "last.safetensors", "last.json", "robustness.json", "robustness.png",
    "report.html", "cell.json", "hegl-ablation.json", "results.csv", "results.md", "results.png", "runs.json",
    "context_vs_twin.png", "hegl-family.json", "family.json", "family.md", "family.csv", "family.png",
    "methods.md", "methods.csv", "selection.json", "selection.csv", "selection.md", "selection.png", "MODEL_CARD.md", "calibration.json", "model.onnx",
)


def test_no_module_but_the_run_folder_spells_a_run_file_name():
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "run_folder.py":
            continue
        text = path.read_text()
        spelled += [f"{path.relative_to(PACKAGE)}: {name}" for name in RUN_FILE_NAMES
                    if re.search(rf"(?<![\w/.-]){re.escape(name)}", text)]
    assert not spelled, spelled


def test_every_file_of_a_used_run_is_one_the_run_folder_names(trained_run, tmp_path):
    """Train (fixture), evaluate, robustness, explain and report one run: every file in it is a path
    of its RunFolder (or lies in the folders it names for explanations, evaluations and TensorBoard)."""
    for argv in (["evaluate", str(trained_run)], ["robustness", str(trained_run), "--sigma", "0.1"],
                 ["report", str(trained_run), "--gallery", "1"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, (argv, result.output)
    folder = RunFolder(trained_run)
    png = tmp_path / "x.png"
    Image.new("L", (40, 40), 90).save(png)
    assert runner.invoke(app, ["explain", str(png), "--run", str(trained_run)]).exit_code == 0
    named = {folder.marker, folder.lock_file, folder.train_lock_file, folder.config, folder.state, folder.metrics, folder.history,
             folder.curves, folder.report, folder.outputs_record, folder.eval_report("test"), folder.eval_table("test"),
             folder.eval_reliability("test"),
             *robustness_files(folder.path), *(p for w in ("best", "last") for p in (folder.weights(w), folder.meta(w)))}
    under = (folder.explain_dir, folder.tensorboard)
    stray = [p for p in folder.path.rglob("*") if p.is_file() and p not in named
             and not any(parent in p.parents for parent in under)]
    assert not stray, stray
    assert (folder.explain_dir / "x" / "predictions.json").is_file()
    assert folder.read_metrics() and all("epoch" in m for m in folder.read_metrics())


def test_one_rule_says_what_an_ablation_folder_is(tmp_path):
    from hegl_cli.apps.report import is_ablation

    marked = tmp_path / "marked"
    AblationFolder(marked).path.mkdir()
    AblationFolder(marked).write_marker()
    legacy = tmp_path / "legacy"
    (legacy / "runs").mkdir(parents=True)
    (legacy / "results.csv").write_text("cell\n")
    user = tmp_path / "user"
    user.mkdir()
    (user / "results.csv").write_text("my own table\n")
    for path, expected in ((marked, True), (legacy, True), (user, False), (tmp_path / "missing", False)):
        assert AblationFolder(path).is_ours() is expected and is_ablation(path) is expected, path
    assert AblationFolder(legacy).open_for_writing().is_ours()  # an ablation hegl made may be resumed
    try:
        AblationFolder(user).open_for_writing()
    except Exception as exc:  # noqa: BLE001 - the one-line refusal
        assert "is not a hegl ablation folder" in str(exc)
    else:
        raise AssertionError("a user's folder was taken for an ablation")
    assert (user / "results.csv").read_text() == "my own table\n"


def test_a_reader_named_a_folder_that_is_no_run_writes_nothing_there(tiny_cache, tmp_path):
    """`hegl evaluate CACHE` (a cache, not a run) used to leave .hegl-lock in the cache, after which
    `hegl prepare` refused to rebuild it, --force included ("holds .hegl-lock, which hegl did not write")."""
    import shutil

    cache, mine = tmp_path / "cache", tmp_path / "mine"
    shutil.copytree(tiny_cache, cache)
    mine.mkdir()
    Image.new("L", (32, 32), 90).save(mine / "x.png")
    before = {p: sorted(q.name for q in p.iterdir()) for p in (cache, mine, tmp_path)}
    for args in (["evaluate", str(cache)], ["robustness", str(cache)], ["export", str(cache)],
                 ["explain", str(mine / "x.png"), "--run", str(mine), "--out", str(tmp_path / "o")],
                 ["predict", str(mine), "--run", str(cache), "--out", str(tmp_path / "p.csv")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "is not a hegl run folder" in result.output, (args, result.output)
    assert {p: sorted(q.name for q in p.iterdir()) for p in (cache, mine, tmp_path)} == before


def test_train_force_keeps_a_users_file_inside_the_folders_hegl_fills(trained_run, tiny_cache, tmp_path):
    """`train --force` removed a run's eval/, tensorboard/, explain/ and export/ whole, with the user's
    files in them; now it refuses while one is there, and replaces what hegl wrote (recorded) freely."""
    from conftest import TINY_OVERRIDES

    Image.new("L", (32, 32), 90).save(tmp_path / "x.png")
    assert runner.invoke(app, ["evaluate", str(trained_run)]).exit_code == 0
    assert runner.invoke(app, ["explain", str(tmp_path / "x.png"), "--run", str(trained_run)]).exit_code == 0
    args = ["train", "--name", trained_run.name, "--runs-dir", str(trained_run.parent), "--force"]
    for item in [*TINY_OVERRIDES, f"data.path={tiny_cache}"]:
        args += ["--set", item]
    for mine in (trained_run / "eval" / "my_notes.txt", trained_run / "tensorboard" / "my_plot.py",
                 trained_run / "explain" / "x" / "notes.md", trained_run / "eval" / "external" / "siteb" / "a.txt"):
        mine.parent.mkdir(parents=True, exist_ok=True)
        mine.write_text("mine")
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and mine.name in result.output and "hegl did not make" in result.output, result.output
        assert mine.read_text() == "mine" and (trained_run / "best.safetensors").is_file()
        mine.unlink()
    result = runner.invoke(app, args)  # only hegl's files left: they are replaced
    assert result.exit_code == 0, result.output
    assert not (trained_run / "eval").exists() and not (trained_run / "explain").exists()


def test_a_runs_latest_link_hegl_did_not_make_is_refused_and_kept(tmp_path):
    """`train` replaced a user's `runs/latest -> ../precious` link; hegl's own link is a run's bare name."""
    from hegl_cli.engine.run_folder import check_runs_dir, mark_latest
    from hegl_cli.errors import UserError

    runs = tmp_path / "runs"
    (runs / "r1").mkdir(parents=True)
    (runs / "r1" / "hegl-run.json").write_text("{}")
    (tmp_path / "precious").mkdir()
    (runs / "notes").mkdir()
    mark_latest(runs / "r1")
    check_runs_dir(runs)  # hegl's link
    for target in ("../precious", str(tmp_path / "precious"), "notes"):
        (runs / "latest").unlink()
        (runs / "latest").symlink_to(target)
        try:
            check_runs_dir(runs)
        except UserError as exc:
            assert "hegl did not make it" in str(exc)
        else:
            raise AssertionError(f"latest -> {target} was taken for hegl's")
        assert os.readlink(runs / "latest") == target
