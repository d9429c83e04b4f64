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
