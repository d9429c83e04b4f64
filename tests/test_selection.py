"""`hegl ablation --select`: the recipe chosen on val alone, its regret, and the chosen run opened."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.apps import evaluate as evaluate_module
from hegl_cli.apps.selection import choose, parse_recipes, recipe_from_file, regret, resolve_criterion
from hegl_cli.cli.app import app
from hegl_cli.config import load_config
from hegl_cli.data.cache import CachedSplit
from hegl_cli.engine.run_folder import RunFolder, resolve_run
from hegl_cli.errors import UserError

runner = CliRunner()


def _row(recipe, seed, swapped, plain=0.5, loss=0.7):
    return {"recipe": recipe, "cell": recipe, "seed": seed, "run": f"{recipe}_s{seed}",
            "val_auc_swapped": swapped, "val_auc_plain": plain, "val_loss": loss}


def test_choose_takes_the_best_mean_criterion_and_its_best_seed():
    rows = [_row("human", 0, 0.80, loss=0.5), _row("human", 1, 0.70, loss=0.9),
            _row("robust", 0, 0.74, loss=0.6), _row("robust", 1, 0.78, loss=0.6)]
    pick = choose(rows, "swap_val")  # means: human 0.75, robust 0.76
    assert (pick["recipe"], pick["run"]) == ("robust", "robust_s1")
    assert pick["criterion_means"] == pytest.approx({"human": 0.75, "robust": 0.76})
    loss_pick = choose(rows, "val_loss")  # lower is better: human 0.70, robust 0.60
    assert (loss_pick["recipe"], loss_pick["run"]) == ("robust", "robust_s0")
    tie = [_row("a", 0, 0.5), _row("b", 0, 0.5)]
    assert choose(tie, "swap_val")["recipe"] == "a"


def test_regret_by_hand():
    rows = [_row("human", 0, 0.80), _row("human", 1, 0.70), _row("robust", 0, 0.74), _row("robust", 1, 0.78)]
    test = {"human_s0": 0.90, "human_s1": 0.70, "robust_s0": 0.75, "robust_s1": 0.77}
    out = regret(rows, "swap_val", test)
    # chosen robust (mean test 0.76); best by test human (0.80): regret 0.04.
    assert out["chosen"] == "robust" and out["best_by_test"] == "human"
    assert out["regret"] == pytest.approx(0.04)
    # seed 0 alone picks human (0.80 > 0.74): test 0.90 is the best, regret 0; seed 1 picks robust
    # (0.78 > 0.70): 0.77 against human's 0.70, regret 0.
    assert out["per_seed"][0] == {"chosen": "human", "regret": 0.0}
    assert out["per_seed"][1]["chosen"] == "robust" and out["per_seed"][1]["regret"] == pytest.approx(0.0)
    test["robust_s1"] = 0.60
    assert regret(rows, "swap_val", test)["per_seed_worst"] == pytest.approx(0.10)


def test_criterion_auto_falls_back_to_plain_val_without_swapped_val():
    with_swap = [_row("a", 0, 0.7), _row("b", 0, 0.6)]
    assert resolve_criterion("auto", with_swap) == "swap_val"
    without = [_row("a", 0, None), _row("b", 0, 0.6)]
    assert resolve_criterion("auto", without) == "val"
    with pytest.raises(UserError, match="a_s0"):
        resolve_criterion("swap_val", without)
    neither = [_row("a", 0, None, plain=None), _row("b", 0, 0.6)]
    with pytest.raises(UserError, match="--criterion val: runs a_s0"):  # auto has nothing to fall back on
        resolve_criterion("auto", neither)


def test_a_damaged_record_never_wins_the_choice(tmp_path):
    """NaN, Infinity, null, text or a list where a criterion or a cell's AUC should be: Infinity won the
    choice, null was a TypeError (exit 1)."""
    from hegl_cli.apps.ablation import read_cell
    from hegl_cli.apps.selection import CRITERIA, Recipe, criterion_rows
    from hegl_cli.engine.run_folder import AblationFolder

    folder = AblationFolder(tmp_path / "abl")
    recipes = [Recipe(name, parse_recipes(name + ",hegl", load_config(None, []))[0].cell) for name in ("baseline", "human")]
    for recipe, value in zip(recipes, (float("inf"), 0.7)):
        run = folder.run(f"{recipe.cell.name}_s0")
        run.path.mkdir(parents=True)
        record = {"epoch": 3, "best": True, "val_auc_plain": value, "val_auc_swapped": "x", "val_loss": None}
        run.metrics.write_text(json.dumps(record) + "\n")
    rows = criterion_rows(folder, recipes, 1)
    assert [r[CRITERIA["val"].key] for r in rows] == [None, 0.7] and all(r["val_auc_swapped"] is None for r in rows)
    with pytest.raises(UserError, match="runs a0_b0_s0 have no val_auc_plain"):
        resolve_criterion("auto", rows)
    for auc in ("x", None, [1], float("nan")):
        (tmp_path / "cell.json").write_text(json.dumps({"cell": "a0_b0", "seed": 0, "auc": auc}))
        with pytest.raises(UserError, match="'auc' is"):
            read_cell(tmp_path / "cell.json")


def test_recipes_builtin_and_from_a_file(tmp_path):
    base = load_config(None, [])
    recipes = parse_recipes("baseline,human,hegl,robust", base)
    assert [(r.name, r.cell.alpha, r.cell.beta) for r in recipes] == [
        ("baseline", 0, 0), ("human", 1, 0), ("hegl", 1, 1), ("robust", 1, 1)]
    # robust is robust.yaml's keys, in the same cell a plain --grid of them makes (so folders are shared).
    assert recipes[3].cell.name == "a1_b1-ha_layers=all-augment=background_swap-select_on=val_swapped"
    mine = tmp_path / "mine.yaml"
    mine.write_text("loss:\n  alpha: 2\n  ha_layers: all\ntrain:\n  lr: 0.0002\n")
    recipe = recipe_from_file(mine, base)
    assert (recipe.name, recipe.cell.alpha, recipe.cell.beta) == ("mine", 2.0, base.loss.beta)
    assert recipe.cell.overrides == ["loss.ha_layers=all", "train.lr=0.0002"]
    for bad in ("human", "human,nosuch", "human,human"):
        with pytest.raises(UserError, match="--recipes"):
            parse_recipes(bad, base)
    mine.write_text("loss:\n  alpha: true\n")  # read as alpha 1 before
    with pytest.raises(UserError, match="loss.alpha and loss.beta must be numbers"):
        recipe_from_file(mine, base)


def test_a_recipes_own_data_path_is_checked_before_any_cell_trains(tiny_cache, tmp_path):
    """A recipe YAML with `data: {path: /etc}` trained the first cell, then failed on the second."""
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(f"data:\n  path: {tmp_path / 'nothing'}\nloss:\n  alpha: 1\n  beta: 1\n")
    args = _select_args(tiny_cache, tmp_path)
    args[args.index("human,hegl")] = f"human,{elsewhere}"
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "no prepared dataset at" in result.output and "nothing" in result.output, result.output
    assert not (tmp_path / "sel" / "runs").exists()


def _select_args(cache, tmp_path, *extra):
    args = ["ablation", "--select", "--recipes", "human,hegl", "--seeds", "2", "--name", "sel",
            "--out-root", str(tmp_path), *extra]
    for item in TINY_OVERRIDES + [f"data.path={cache}", "train.epochs=2", "eval.robustness_draws=1"]:
        args += ["--set", item]
    return args


def test_select_chooses_on_val_alone_and_evaluate_opens_the_chosen_run(tiny_cache, tmp_path, monkeypatch):
    """Test AUCs are poisoned to rank the runs against their criterion, and the test split refuses to
    open while the choice is made: the choice must still be the val-best one."""
    from hegl_cli.apps import selection as selection_module

    original_evaluate = evaluate_module.evaluate_run

    def poisoned(run, split="test", *args, **kwargs):
        report = original_evaluate(run, split, *args, **kwargs)
        record = [r for r in RunFolder(run).read_metrics() if r.get("best")][-1]
        report["macro"]["auc"] = 1.0 - record["val_auc_swapped"]  # best on val = worst on test
        return report

    monkeypatch.setattr(evaluate_module, "evaluate_run", poisoned)
    choosing = {"on": False}
    original_init = CachedSplit.__init__

    def guarded(self, cache, split):
        if choosing["on"] and split == "test":
            raise AssertionError("the test split was opened while the recipe was chosen")
        original_init(self, cache, split)

    monkeypatch.setattr(CachedSplit, "__init__", guarded)
    original_select = selection_module.select_recipe

    def select_guarded(*args, **kwargs):
        choosing["on"] = True
        try:
            return original_select(*args, **kwargs)
        finally:
            choosing["on"] = False

    monkeypatch.setattr(selection_module, "select_recipe", select_guarded)
    result = runner.invoke(app, _select_args(tiny_cache, tmp_path))
    assert result.exit_code == 0, result.output
    folder = tmp_path / "sel"
    record = json.loads((folder / "selection.json").read_text())
    assert record["criterion"] == "swap_val" and "no test number enters the choice" in record["statement"]
    criteria = {}
    for name, cell in (("human", "a1_b0"), ("hegl", "a1_b1")):
        for seed in range(2):
            best = [r for r in RunFolder(folder / "runs" / f"{cell}_s{seed}").read_metrics() if r.get("best")][-1]
            criteria[(name, seed)] = best["val_auc_swapped"]
    means = {n: (criteria[(n, 0)] + criteria[(n, 1)]) / 2 for n in ("human", "hegl")}
    expected = max(means, key=means.get) if means["human"] != means["hegl"] else "human"
    assert record["recipe"] == expected
    seed = max(range(2), key=lambda s: criteria[(expected, s)])
    assert record["run"] == f"{'a1_b0' if expected == 'human' else 'a1_b1'}_s{seed}"
    with open(folder / "selection.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["recipe"] for r in rows] == ["human", "human", "hegl", "hegl"]
    assert sum(r["chosen"] == "True" for r in rows) == 1
    for r in rows:  # the poisoned test AUCs reached the table, after the choice
        assert float(r["test_auc"]) == pytest.approx(1.0 - float(r["criterion"]))
    if means["human"] != means["hegl"]:
        assert record["regret"]["regret"] == pytest.approx(abs(means["human"] - means["hegl"]))
    assert (folder / "selection.png").is_file() and "Regret" in (folder / "selection.md").read_text()
    assert "no test number enters the choice" in result.output
    assert resolve_run(folder) == folder / "runs" / record["run"]

    page = tmp_path / "report.html"
    reported = runner.invoke(app, ["report", str(folder), "--out", str(page)])
    assert reported.exit_code == 0, reported.output
    html = page.read_text()
    assert f"Recipe selection: {record['recipe']}" in html and record["run"] in html

    evaluated = runner.invoke(app, ["evaluate", str(folder), "--no-faithfulness", "--set", "eval.bootstrap=0"])
    assert evaluated.exit_code == 0, evaluated.output
    assert record["run"] in evaluated.output.replace("\n", "")


def test_an_ablation_without_selection_is_named_not_opened(tiny_cache, tmp_path):
    args = ["ablation", "--grid", "0,0", "--seeds", "1", "--name", "plain", "--out-root", str(tmp_path)]
    for item in TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.epochs=1", "eval.robustness_draws=1"]:
        args += ["--set", item]
    assert runner.invoke(app, args).exit_code == 0
    with pytest.raises(UserError, match="without a recipe selection"):
        resolve_run(tmp_path / "plain")
    (tmp_path / "plain" / "selection.json").mkdir()  # was taken for "no selection"
    with pytest.raises(UserError, match="selection.json is a folder"):
        resolve_run(tmp_path / "plain")
    refused = runner.invoke(app, _select_args(tiny_cache, tmp_path, "--criterion", "test_auc"))
    assert refused.exit_code == 2 and "--criterion" in refused.output
