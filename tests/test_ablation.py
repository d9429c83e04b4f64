"""`hegl ablation`: cells, results files, and resuming without redoing finished cells."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.apps import ablation as ablation_module
from hegl_cli.apps.ablation import parse_grid
from hegl_cli.cli.app import app

runner = CliRunner()


def test_parse_grid_with_variants():
    cells = parse_grid("0,0 1,1+loss.ha_layers=all 1,0.5+loss.ha_type=l1+data.augment=background_swap")
    assert [(c.alpha, c.beta) for c in cells] == [(0, 0), (1, 1), (1, 0.5)]
    assert cells[1].name == "a1_b1-ha_layers=all"
    assert cells[2].overrides == ["loss.ha_type=l1", "data.augment=background_swap"]
    with pytest.raises(Exception, match="ALPHA,BETA"):
        parse_grid("1")


def _args(cache, tmp_path, grid="0,0 1,1"):
    args = ["ablation", "--grid", grid, "--seeds", "1", "--name", "t", "--out-root", str(tmp_path)]
    for item in TINY_OVERRIDES + [f"data.path={cache}", "train.epochs=1", "eval.robustness_draws=1"]:
        args += ["--set", item]
    return args


def test_ablation_runs_writes_results_and_resumes(tiny_cache, tmp_path, monkeypatch):
    result = runner.invoke(app, _args(tiny_cache, tmp_path))
    assert result.exit_code == 0, result.output
    out = tmp_path / "t"
    for name in ("results.csv", "results.md", "results.png", "runs.json"):
        assert (out / name).is_file()
    rows = json.loads((out / "runs.json").read_text())
    assert [r["cell"] for r in rows] == ["a0_b0", "a1_b1"]
    assert all(r["shortcut_reliance"] is not None and r["auc_noise"] is not None for r in rows)
    assert "alpha=1, beta=1" in (out / "results.md").read_text()
    assert all(r["val_test_gap"] == pytest.approx(r["val_auc"] - r["auc"]) for r in rows)
    assert all(r["context_reliance"] is not None and r["lesion_necessity"] is not None for r in rows)
    assert (out / "context_vs_twin.png").is_file()  # one point per run: context audit against the twin

    # Interrupt the next call inside its second (new) cell: the finished cells must not be redone.
    trained = []
    original = ablation_module.run_cell
    interrupt = {"on": True}

    def counting(cfg, run_name, *args, **kwargs):
        trained.append(run_name)
        if interrupt["on"] and run_name.startswith("a1_b0"):
            raise KeyboardInterrupt
        return original(cfg, run_name, *args, **kwargs)

    monkeypatch.setattr(ablation_module, "run_cell", counting)
    interrupted = runner.invoke(app, _args(tiny_cache, tmp_path, "0,0 1,1 1,0"))
    assert interrupted.exit_code != 0
    assert trained == ["a1_b0_s0"]
    assert "done already" in interrupted.output
    interrupt["on"] = False
    resumed = runner.invoke(app, _args(tiny_cache, tmp_path, "0,0 1,1 1,0 0,1"))
    assert resumed.exit_code == 0, resumed.output
    assert trained[1:] == ["a1_b0_s0", "a0_b1_s0"]
    assert len(json.loads((out / "runs.json").read_text())) == 4


def test_spearman_is_pearson_on_ranks():
    from hegl_cli.apps.ablation import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([0.1, 0.5, 0.2, 0.9], [1, 3, 2, 100]) == pytest.approx(1.0)  # monotone, not linear
    # ties take their average rank (2, 2, 2, 4, 5): Pearson on ranks = 8 / sqrt(8 * 10), whatever the order
    assert spearman([0, 0, 0, 1, 2], [1, 2, 3, 4, 5]) == pytest.approx(8 / 80**0.5)
    assert spearman([0, 2, 0, 1, 0], [3, 5, 1, 4, 2]) == pytest.approx(8 / 80**0.5)


def test_ablation_carries_the_explanation_methods_table(tiny_cache, tmp_path):
    args = _args(tiny_cache, tmp_path, "1,0") + ["--methods", "attention,saliency", "--seeds", "2",
                                                   "--set", "eval.method_pairs=4", "--set", "eval.sanity_pairs=2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "t"
    rows = json.loads((out / "runs.json").read_text())
    assert all(set(r["methods"]) == {"attention", "saliency"} for r in rows) and len(rows) == 2
    table = (out / "methods.md").read_text()
    assert "| alpha=1, beta=0 | attention | 2 |" in table and "| alpha=1, beta=0 | saliency | 2 |" in table
    header = (out / "methods.csv").read_text().splitlines()[0]
    assert header.startswith("cell,method,seeds,energy_in_mask_mean")


def test_family_ablation_summarises_shifted_ceiling_cost_and_margin(tmp_path):
    """Two members, two cells, two seeds, shifted and cue-free: the summary pairs seeds and says
    which cell validation chose; a member cache is prepared under --data-root."""
    args = ["ablation", "--family", "v2,chestxdet13", "--grid", "1,0 0,0", "--seeds", "2", "--name", "fam",
            "--out-root", str(tmp_path), "--data-root", str(tmp_path / "data")]
    for item in TINY_OVERRIDES + ["train.epochs=1", "eval.robustness_draws=1", "data.synthetic_train=40",
                                  "data.synthetic_test=16", "data.synthetic_source_size=64"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "fam"
    summary = json.loads((out / "family.json").read_text())
    assert summary["members"] == ["v2", "chestxdet13"] and summary["reference"] == "a1_b0"
    assert sorted(p.name for p in (tmp_path / "data").iterdir() if not p.name.startswith(".")) == [
        "synthetic", "synthetic-chestxdet13", "synthetic-chestxdet13-cuefree", "synthetic-cuefree"]
    for member in ("v2", "chestxdet13"):
        shifted = {(r["cell"], r["seed"]): r["auc"] for r in json.loads((out / member / "runs.json").read_text())}
        free = {(r["cell"], r["seed"]): r["auc"] for r in json.loads((out / f"{member}-cuefree" / "runs.json").read_text())}
        entry = summary["per_member"][member]["a0_b0"]
        costs = [free[("a0_b0", s)] - shifted[("a0_b0", s)] for s in (0, 1)]
        assert entry["shortcut_cost"]["mean"] == pytest.approx(sum(costs) / 2)
        margins = [shifted[("a0_b0", s)] - shifted[("a1_b0", s)] for s in (0, 1)]
        assert entry["margin"]["mean"] == pytest.approx(sum(margins) / 2)
        assert summary["per_member"][member]["a1_b0"]["margin"] is None  # the reference itself
    assert summary["chosen_by_validation"] in ("a0_b0", "a1_b0")
    assert set(summary["acceptance"]) == {"v2", "chestxdet13"}
    for name in ("family.md", "family.csv", "family.png"):
        assert (out / name).is_file()
    refused = runner.invoke(app, args[:1] + ["--family", "v3"] + args[3:])
    assert refused.exit_code == 2 and "members are" in refused.output


def test_messages_name_the_flag_and_the_fix(monkeypatch, tmp_path):
    """--reference's error names --reference; a member cache prepared otherwise tells how to replace it
    (ablation has no --force); source_weights with one cache says what is wrong."""
    import hegl_cli.apps.prepare as prepare_app
    from hegl_cli.apps.ablation import parse_grid
    from hegl_cli.apps.family import ensure_cache, member_config
    from hegl_cli.config import load_config
    from hegl_cli.engine.loader import source_sampling_weights
    from hegl_cli.errors import UserError

    with pytest.raises(UserError, match="^--reference cell 'foo'"):
        parse_grid("foo", "--reference")

    def refuse(*_, **__):
        raise UserError("data/x already holds a dataset prepared from other inputs or settings; pass --force to replace it")

    monkeypatch.setattr(prepare_app, "prepare", refuse)
    cfg = member_config(load_config(None, []), "tags", True, tmp_path)
    with pytest.raises(UserError, match=r"hegl prepare --set data.benchmark=tags --set data.cue_free=true --out .* --force"):
        ensure_cache(cfg, progress=False)

    class OneCache:
        pass

    with pytest.raises(UserError, match="data.path names one cache: leave data.source_weights unset"):
        source_sampling_weights(OneCache(), [0.0])
