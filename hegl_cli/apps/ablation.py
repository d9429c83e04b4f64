"""`hegl ablation`: train + evaluate + robustness for every (alpha, beta[, variant]) cell and seed.

A cell spec is ``ALPHA,BETA`` optionally followed by ``+section.key=value`` overrides, e.g.
``1,1+loss.ha_layers=all`` or ``1,0+loss.ha_type=l1``. A finished (cell, seed) run leaves its
numbers in its run folder (:attr:`RunFolder.cell`) and is skipped on the next call; an interrupted
one is restarted from scratch.
"""

from __future__ import annotations

import copy
import csv
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hegl_cli.config import Config, all_keys, apply_layer, parse_override
from hegl_cli.data.combined import data_paths
from hegl_cli.data.manifest import read_manifest
from hegl_cli.engine.run_folder import AblationFolder
from hegl_cli.errors import UserError
from hegl_cli.fs.atomic import atomic_write, atomic_write_json, atomic_write_text
from hegl_cli.fs.outputs import safe_name
from hegl_cli.fs.tables import read_json

METRICS: tuple[tuple[str, str], ...] = (
    ("auc", "test macro AUC"), ("val_test_gap", "val-test gap"), ("f1", "test macro F1"),
    ("mcc", "test macro MCC"), ("shortcut_reliance", "twin shortcut reliance"),
    ("context_reliance", "context reliance"), ("lesion_necessity", "lesion necessity"),
    ("energy_in_mask", "attention energy in mask"), ("pointing_game", "pointing game"),
    ("deletion_gain", "deletion gain over random order"), ("auc_noise", "AUC at sigma 0.05"),
    ("val_auc_swapped", "val AUC, context-swapped (selection-safe)"),
)


@dataclass
class CellSpec:
    alpha: float
    beta: float
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The cell's run-folder name: alpha, beta and each override, by its key alone where no other
        section has a key of that name (``train.batch_size`` and ``eval.batch_size`` keep theirs)."""
        base = f"a{self.alpha:g}_b{self.beta:g}"
        extra = "".join("-" + re.sub(r"[^A-Za-z0-9_.=]", "", _short_key(o)) for o in self.overrides)
        return safe_name(base + extra, fallback=base)

    @property
    def label(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}" + "".join(f", {o}" for o in self.overrides)


def _short_key(override: str) -> str:
    """``section.key=value`` -> ``key=value`` when ``key`` names one config key only, else as given."""
    dotted = override.split("=", 1)[0].strip()
    key = dotted.split(".", 1)[-1]
    shared = sum(1 for k in all_keys() if k.split(".", 1)[1] == key) > 1
    return override.strip() if shared else override.split(".", 1)[-1]


def parse_grid(text: str, option: str = "--grid") -> list[CellSpec]:
    """``"0,0 1,0 0,1 1,1 1,1+loss.ha_layers=all"`` -> cells (``option`` names the flag in errors)."""
    cells = []
    for token in text.split():
        head, *overrides = token.split("+")
        try:
            alpha, beta = (float(v) for v in head.split(","))
        except ValueError:
            raise UserError(f"{option} cell {token!r}: expected ALPHA,BETA[+section.key=value...]") from None
        cells.append(CellSpec(alpha, beta, overrides))
    if not cells:
        raise UserError(f"{option} is empty")
    by_name: dict[str, CellSpec] = {}
    for cell in cells:
        other = by_name.setdefault(cell.name, cell)
        if other is not cell and other.label != cell.label:
            raise UserError(f"--grid cells {other.label!r} and {cell.label!r} would share the run folder "
                            f"{cell.name!r}; write their values so that they differ in letters or digits")
    return cells


def cell_config(base: Config, cell: CellSpec, seed: int) -> Config:
    """The config of one (cell, seed), every key validated (ranges and cross-key checks too)."""
    cfg = copy.deepcopy(base)
    source = f"--grid cell {cell.label!r}"
    layer = {"loss.alpha": cell.alpha, "loss.beta": cell.beta, **dict(parse_override(t) for t in cell.overrides),
             "train.seed": seed}
    apply_layer(cfg, source, layer)
    cfg.check()
    return cfg


def run_cell(cfg: Config, run_name: str, runs_dir: Path, sigma: float, log: Callable[[str], None],
             progress: bool, methods: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate on test (and score the explanation ``methods``) and measure AUC at ``sigma``;
    returns the cell's numbers."""
    from hegl_cli.apps.evaluate import evaluate_run
    from hegl_cli.apps.robustness import robustness_runs
    from hegl_cli.engine.train import train

    result = train(cfg, name=run_name, force=True, runs_dir=runs_dir, progress=progress, log=log)
    report = evaluate_run(result.run, "test", "best", device=cfg.train.device, methods=methods)
    noise = robustness_runs([result.run], [sigma], None, "test", cfg.eval.robustness_draws, 0, "best",
                            device=cfg.train.device, progress=False)
    at_sigma = next(r for r in noise if r["sigma"] == sigma)
    faith = report.get("faithfulness", {})
    audit = faith.get("context_audit") or {}
    best_record = next((r for r in result.history if r["epoch"] == result.best_epoch), {})
    return {
        "auc": report["macro"]["auc"], "f1": report["macro"]["f1"], "mcc": report["macro"]["mcc"],
        "energy_in_mask": report["attention"]["overall"]["energy_in_mask"],
        "pointing_game": report["attention"]["overall"]["pointing_game"],
        "deletion_auc": faith.get("deletion_attention"),
        "deletion_gain": faith.get("deletion_gain"),
        "shortcut_reliance": (faith.get("shortcut_reliance") or {}).get("mean"),
        "context_reliance": audit.get("context_reliance"), "lesion_necessity": audit.get("lesion_necessity"),
        "auc_noise": at_sigma["auc"]["mean"] if at_sigma.get("auc") else None,
        "val_test_gap": result.best_val_auc - report["macro"]["auc"],
        "best_epoch": result.best_epoch, "val_auc": result.best_val_auc, "train_seconds": result.seconds,
        "val_auc_plain": best_record.get("val_auc_plain"), "val_auc_swapped": best_record.get("val_auc_swapped"),
        "val_loss": best_record.get("val_loss"),
        "per_class_auc": {k: v["auc"] for k, v in report["per_class"].items()},
        "shortcut_reliance_per_class": (faith.get("shortcut_reliance") or {}).get("per_class"),
        "attention_per_class": report["attention"]["per_class"],
        **({"methods": method_numbers(report)} if methods else {}),
    }


METHOD_METRICS: tuple[tuple[str, str], ...] = (
    ("energy_in_mask", "energy in mask"), ("pointing_game", "pointing game"), ("dice_pixel", "Dice (pixels)"),
    ("deletion_gain", "deletion gain"), ("insertion_gain", "insertion gain"),
    ("sanity_similarity", "similarity after randomisation"),
)


def method_numbers(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per explanation method: the numbers the ablation's methods table carries."""
    sanity = (report.get("sanity") or {}).get("methods", {})
    return {m: {**{k: row.get(k) for k, _ in METHOD_METRICS[:-1]},
                "sanity_similarity": (sanity.get(m) or {}).get("final_similarity")}
            for m, row in (report.get("methods") or {}).get("methods", {}).items()}


def write_methods_table(out: AblationFolder, rows: list[dict[str, Any]], cells: list[CellSpec]) -> None:
    """The methods table (markdown and CSV, AblationFolder.methods_md/_csv): per cell and method, mean ± std over seeds of :data:`METHOD_METRICS`."""
    entries = []
    for cell in cells:
        mine = [r for r in rows if r["cell"] == cell.name and r.get("methods")]
        for method in dict.fromkeys(m for r in mine for m in r["methods"]):
            values = {k: [r["methods"][method][k] for r in mine if (r["methods"].get(method) or {}).get(k) is not None]
                      for k, _ in METHOD_METRICS}
            entries.append((cell, method, len(mine), {k: (float(np.mean(v)), float(np.std(v))) if v else None
                                                      for k, v in values.items()}))
    if not entries:
        return
    lines = ["| cell | method | seeds | " + " | ".join(label for _, label in METHOD_METRICS) + " |",
             "|" + "---|" * (len(METHOD_METRICS) + 3)]
    lines += [f"| {c.label} | {m} | {n} | " + " | ".join(format_mean_std(v[k]) for k, _ in METHOD_METRICS) + " |"
              for c, m, n, v in entries]
    atomic_write_text(out.methods_md, "\n".join(lines) + "\n")

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["cell", "method", "seeds"] + [f"{k}_{s}" for k, _ in METHOD_METRICS for s in ("mean", "std")])
            for c, m, n, v in entries:
                writer.writerow([c.name, m, n] + [x for k, _ in METHOD_METRICS for x in (v[k] or ("", ""))])

    atomic_write(out.methods_csv, write_csv)


def run_ablation(base: Config, cells: list[CellSpec], seeds: int, out: Path, sigma: float = 0.05,
                 log: Callable[[str], None] = print, progress: bool = True,
                 methods: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every (cell, seed) not yet finished, then write the tables and figures across them; with
    ``methods``, every run's explanation methods too (the methods table)."""
    configs = {(cell.name, seed): cell_config(base, cell, seed) for cell in cells for seed in range(seeds)}
    folder = AblationFolder(out).open_for_writing()
    with folder.lock():
        to_train = [cfg for (name, seed), cfg in configs.items() if not folder.run(f"{name}_s{seed}").cell.is_file()]
        for data in {p for cfg in to_train for p in data_paths(cfg.data.path)}:
            read_manifest(data)  # a cell's own data.path (a recipe's) is checked before the first cell trains
        atomic_write_json(folder.plan_json, {"runs": [f"{cell.name}_s{seed}" for cell in cells for seed in range(seeds)],
                                             "cells": [cell.label for cell in cells], "seeds": seeds})
        return _run_cells(cells, seeds, folder, sigma, log, progress, configs, methods)



def _run_cells(cells: list[CellSpec], seeds: int, out: AblationFolder, sigma: float, log: Callable[[str], None],
               progress: bool, configs: dict[tuple[str, int], Config], methods: list[str] | None = None
               ) -> list[dict[str, Any]]:
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for cell in cells:
        for seed in range(seeds):
            run_name = f"{cell.name}_s{seed}"
            done_file = out.run(run_name).cell
            if done_file.is_file():
                log(f"cell {cell.label}, seed {seed}: done already, skipped")
                rows.append(read_cell(done_file))
                continue
            log(f"cell {cell.label}, seed {seed}: training")
            t0 = time.perf_counter()
            numbers = run_cell(configs[(cell.name, seed)], run_name, out.runs_dir, sigma, log, progress, methods)
            row = {"cell": cell.name, "label": cell.label, "alpha": cell.alpha, "beta": cell.beta,
                   "overrides": cell.overrides, "seed": seed, **numbers,
                   "wall_seconds": time.perf_counter() - t0}
            atomic_write_json(done_file, row)
            rows.append(row)
    table = aggregate(rows, cells)
    write_results(out, table, rows, sigma, time.perf_counter() - start)
    write_methods_table(out, rows, cells)
    return table


def read_cell(path: Path) -> dict[str, Any]:
    """A finished (cell, seed)'s numbers; a damaged file is one line saying how to run the cell again."""
    row = read_json(path, "ablation cell record")
    if not isinstance(row, dict) or not {"cell", "seed", "auc"} <= set(row):
        raise UserError(f"{path}: not a finished ablation cell (damaged); delete it to run that cell again")
    for key, _ in METRICS:
        value = row.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (value is not None and not number) or (key == "auc" and not (number and math.isfinite(value))):
            raise UserError(f"{path}: its '{key}' is {value!r}, not a number (damaged); delete it to run that "
                            "cell again")
    return row


def aggregate(rows: list[dict[str, Any]], cells: list[CellSpec]) -> list[dict[str, Any]]:
    """Mean and std over seeds per cell, in grid order."""
    table = []
    for cell in cells:
        mine = [r for r in rows if r["cell"] == cell.name]
        entry: dict[str, Any] = {"cell": cell.name, "label": cell.label, "seeds": len(mine)}
        for key, _ in METRICS:
            values = [r[key] for r in mine if r.get(key) is not None]
            entry[key] = (float(np.mean(values)), float(np.std(values))) if values else None
        table.append(entry)
    return table


def format_mean_std(value: tuple[float, float] | None) -> str:
    return "-" if value is None else f"{value[0]:.3f} ± {value[1]:.3f}"


def write_results(out: AblationFolder, table: list[dict[str, Any]], rows: list[dict[str, Any]], sigma: float,
                  seconds: float) -> None:
    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["cell", "label", "seeds"] + [f"{k}_{s}" for k, _ in METRICS for s in ("mean", "std")])
            for e in table:
                writer.writerow([e["cell"], e["label"], e["seeds"]] + [
                    v for k, _ in METRICS for v in (e[k] if e[k] is not None else ("", ""))])

    atomic_write(out.results_csv, write_csv)
    header = "| cell | seeds | " + " | ".join(label for _, label in METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 2)]
    for e in table:
        lines.append(f"| {e['label']} | {e['seeds']} | " + " | ".join(format_mean_std(e[k]) for k, _ in METRICS) + " |")
    cell_minutes = sum(r.get("wall_seconds", r.get("train_seconds", 0.0)) for r in rows) / 60
    note = (f"\nMean ± std over seeds; test split; AUC under Gaussian noise at sigma {sigma}. "
            f"Time of all {len(rows)} runs (train + evaluate + noise): {cell_minutes:.1f} min; "
            f"of this call: {seconds / 60:.1f} min.\n")
    atomic_write_text(out.results_md, "\n".join(lines) + "\n" + note)
    atomic_write_json(out.runs_json, rows)
    plot_ablation(table, out.results_png)
    plot_context_vs_twin(rows, out.context_vs_twin)


def plot_ablation(table: list[dict[str, Any]], path: Path) -> None:
    from hegl_cli.plots import plt

    fig, axes = plt.subplots(3, 4, figsize=(18, 10))
    for ax in axes.ravel()[len(METRICS):]:
        ax.axis("off")
    for ax, (key, label) in zip(axes.ravel(), METRICS):
        means = [e[key][0] if e[key] else np.nan for e in table]
        stds = [e[key][1] if e[key] else 0 for e in table]
        ax.bar(range(len(table)), means, yerr=stds, capsize=3, color=[f"C{i}" for i in range(len(table))])
        ax.set_xticks(range(len(table)), [e["cell"] for e in table], rotation=30, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation with tied values given their average rank (scipy's), so the answer
    does not depend on the order the runs are listed in."""
    from scipy import stats

    return float(stats.spearmanr(x, y).statistic)


def plot_context_vs_twin(rows: list[dict[str, Any]], path: Path) -> None:
    """Scatter of every run's twin-free context reliance against its twin shortcut reliance, with
    Spearman's rank correlation in the title; nothing is drawn unless two runs have both."""
    from hegl_cli.plots import plt

    pairs = [(r["shortcut_reliance"], r["context_reliance"], r["cell"]) for r in rows
             if r.get("shortcut_reliance") is not None and r.get("context_reliance") is not None]
    if len(pairs) < 2:
        return
    cells = sorted({c for _, _, c in pairs})
    fig, ax = plt.subplots(figsize=(7, 5))
    for k, cell in enumerate(cells):
        xs = [x for x, _, c in pairs if c == cell]
        ys = [y for _, y, c in pairs if c == cell]
        ax.scatter(xs, ys, color=f"C{k % 10}", marker="os^Dv<>ph*"[k // 10 % 10], label=cell)
    rho = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    ax.set_xlabel("twin shortcut reliance: mean |p(x) - p(twin)|")
    ax.set_ylabel("context reliance (no twin needed)")
    ax.set_title(f"{len(pairs)} runs, Spearman rho = {rho:.2f}", fontsize=10)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
