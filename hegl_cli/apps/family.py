"""`hegl ablation --family`: the same grid on every member of the benchmark family, shifted and
cue-free, and what holds across them.

Per member and cell (mean ± std over seeds, each seed paired with the same seed of the reference
cell and of the cue-free variant):

- **shifted AUC**: test macro AUC, the cues independent of the labels in test;
- **ceiling**: the same recipe and seed trained on the cue-free variant (no shortcut to learn);
- **shortcut cost**: ceiling minus shifted AUC; near 0 for a recipe the shortcuts do not move;
- **margin**: shifted AUC minus the reference cell's (human-only by default), with a paired t-test
  across seeds; a margin whose p-value is 0.05 or more, or whose mean is within one std of 0, is
  called inside the seed noise;
- **val-test gap** and **twin reliance**.

Across members: the mean and the worst-case margin and cost of every cell, and the recipe chosen
by validation alone: the cell with the highest mean (over members and seeds) of ``--select``'s
criterion (:mod:`hegl_cli.apps.selection`): the val AUC on context-swapped val images. Test numbers never take part in the choice.
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hegl_cli.apps.ablation import CellSpec, cell_config, run_ablation
from hegl_cli.config import Config, apply_layer
from hegl_cli.data.benchmark.family import MEMBERS
from hegl_cli.engine.run_folder import FamilyFolder
from hegl_cli.errors import UserError
from hegl_cli.fs.atomic import atomic_write, atomic_write_json, atomic_write_text
from hegl_cli.fs.tables import read_json

NOISE_P = 0.05


def parse_members(text: str) -> list[str]:
    """``"all"`` or ``"v2,inmask"`` -> member names, in the family's order."""
    asked = list(MEMBERS) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [m for m in asked if m not in MEMBERS]
    if unknown or not asked:
        raise UserError(f"--family {text!r}: members are {', '.join(MEMBERS)} (or all)")
    return [m for m in MEMBERS if m in asked]


def member_config(base: Config, member: str, cue_free: bool, data_root: Path) -> Config:
    """``base`` pointed at the member's cache under ``data_root`` (its own folder per variant)."""
    from hegl_cli.data.formats.synthetic import default_synthetic_folder, synthetic_spec

    cfg = copy.deepcopy(base)
    apply_layer(cfg, f"--family {member}", {"data.benchmark": member, "data.cue_free": cue_free})
    folder = Path(default_synthetic_folder(synthetic_spec(cfg))).name
    apply_layer(cfg, f"--family {member}", {"data.path": str(data_root / folder)})
    return cfg


def ensure_cache(cfg: Config, progress: bool) -> None:
    """Prepare the member's cache unless it is there and up to date."""
    from hegl_cli.apps.prepare import prepare
    from hegl_cli.data.options import PrepareOptions

    options = PrepareOptions.from_config(cfg.data, workers=1, progress=progress)
    try:
        prepare("synthetic", cfg, options, out=Path(cfg.data.path))
    except UserError as exc:
        if "pass --force" not in str(exc):
            raise
        flag = " --set data.cue_free=true" if cfg.data.cue_free else ""
        raise UserError(f"{cfg.data.path} holds a cache of member {cfg.data.benchmark} prepared with other settings; "
                        f"replace it with `hegl prepare --set data.benchmark={cfg.data.benchmark}{flag} --out "
                        f"{cfg.data.path} --force` (and the same --set keys as this ablation), or choose another "
                        "--data-root") from None



def run_family(base: Config, members: list[str], cells: list[CellSpec], seeds: int, out: Path,
               reference: CellSpec, cue_free: bool = True, data_root: Path = Path("data"), sigma: float = 0.05,
               log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Run the grid on every member (and its cue-free variant), then summarise across members."""
    if reference.name not in {c.name for c in cells}:
        raise UserError(f"--reference {reference.label!r} is not a cell of --grid")
    variants = [(m, free) for m in members for free in ((False, True) if cue_free else (False,))]
    configs = {v: member_config(base, v[0], v[1], data_root) for v in variants}
    for cfg in configs.values():  # every cell's config checked before anything runs
        for cell in cells:
            cell_config(cfg, cell, 0)
    folder = FamilyFolder(out).open_for_writing()
    with folder.lock():
        for (member, free), cfg in configs.items():
            log(f"family member {member}{' (cue-free)' if free else ''}: {cfg.data.path}")
            ensure_cache(cfg, progress)
            run_ablation(cfg, cells, seeds, folder.member(member, free).path, sigma, log, progress)
        summary = summarize_family(folder, members, cells, reference, cue_free)
        write_summary(folder, summary)
    return summary


def member_rows(folder: FamilyFolder, member: str, cue_free: bool) -> list[dict[str, Any]]:
    path = folder.member(member, cue_free).runs_json
    return read_json(path, "ablation runs") if path.is_file() else []


def _by_seed(rows: list[dict[str, Any]], cell: str, key: str) -> dict[int, float]:
    return {int(r["seed"]): float(r[key]) for r in rows if r["cell"] == cell and r.get(key) is not None}


def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Mean, std and paired t-test p-value of a - b over the seeds both have."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diff = np.array([a[s] - b[s] for s in seeds])
    p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue) if len(seeds) > 1 else None
    if p is not None and math.isnan(p):  # identical differences: no spread to test against
        p = None
    std = float(diff.std(ddof=1)) if len(seeds) > 1 else None
    noise = p is None or p >= NOISE_P or (std is not None and abs(diff.mean()) <= std)
    return {"mean": float(diff.mean()), "std": std, "p": p, "seeds": seeds, "inside_noise": bool(noise)}


def _stats(values: dict[int, float]) -> dict[str, Any] | None:
    if not values:
        return None
    v = np.array(list(values.values()))
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None, "seeds": sorted(values)}


def summarize_family(folder: FamilyFolder, members: list[str], cells: list[CellSpec], reference: CellSpec,
              cue_free: bool) -> dict[str, Any]:
    """Per member and cell, then across members; see the module's docstring."""
    per_member: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}
    for member in members:
        shifted, free = member_rows(folder, member, False), member_rows(folder, member, True) if cue_free else []
        ref_auc = _by_seed(shifted, reference.name, "auc")
        key = keys[member] = selection_key(shifted, cells)
        entry = {}
        for cell in cells:
            auc, ceiling = _by_seed(shifted, cell.name, "auc"), _by_seed(free, cell.name, "auc")
            entry[cell.name] = {
                "label": cell.label, "shifted_auc": _stats(auc), "ceiling": _stats(ceiling),
                "shortcut_cost": paired(ceiling, auc),
                "margin": None if cell.name == reference.name else paired(auc, ref_auc),
                "val_test_gap": _stats(_by_seed(shifted, cell.name, "val_test_gap")),
                "twin_reliance": _stats(_by_seed(shifted, cell.name, "shortcut_reliance")),
                "selection": _stats(_by_seed(shifted, cell.name, key)),
            }
        per_member[member] = entry
    across = {}
    for cell in cells:
        margins = [per_member[m][cell.name]["margin"] for m in members]
        costs = [per_member[m][cell.name]["shortcut_cost"] for m in members]
        sel = [per_member[m][cell.name]["selection"] for m in members]
        across[cell.name] = {
            "label": cell.label,
            "mean_margin": _mean([x["mean"] for x in margins if x]), "worst_margin": _min([x["mean"] for x in margins if x]),
            "mean_cost": _mean([x["mean"] for x in costs if x]), "worst_cost": _max([x["mean"] for x in costs if x]),
            "selection": _mean([x["mean"] for x in sel if x]) if all(sel) else None,
        }
    scored = {c: a["selection"] for c, a in across.items() if a["selection"] is not None}
    chosen = max(scored, key=scored.get) if scored else None
    return {"members": members, "reference": reference.name, "cells": [c.name for c in cells],
            "selection_key": keys, "chosen_by_validation": chosen,
            "acceptance": acceptance(per_member, chosen, members) if chosen else None,
            "per_member": per_member, "across": across}


def selection_key(rows: list[dict[str, Any]], cells: list[CellSpec]) -> str:
    """The record key of ``--select``'s ``auto`` criterion over these cells' runs: the context-swapped val
    AUC where every run has it, else the plain val AUC; the summary says which."""
    from hegl_cli.apps.selection import CRITERIA, resolve_criterion

    mine = [r for r in rows if r["cell"] in {c.name for c in cells}]
    return CRITERIA[resolve_criterion("auto", mine)].key


def acceptance(per_member: dict[str, Any], chosen: str, members: list[str]) -> dict[str, Any]:
    """Per member: does the chosen recipe beat the reference by >= 0.03 beyond noise, with a
    val-test gap <= 0.05 and a shortcut cost <= 0.01?"""
    out = {}
    for member in members:
        e = per_member[member][chosen]
        margin, gap, cost = e["margin"], e["val_test_gap"], e["shortcut_cost"]
        out[member] = {
            "margin_ok": bool(margin and margin["mean"] >= 0.03 and not margin["inside_noise"]),
            "gap_ok": bool(gap and abs(gap["mean"]) <= 0.05),
            "cost_ok": bool(cost and cost["mean"] <= 0.01),
        }
        out[member]["holds"] = all(out[member].values())
    return out


def _mean(v: list[float]) -> float | None:
    return float(np.mean(v)) if v else None


def _min(v: list[float]) -> float | None:
    return float(np.min(v)) if v else None


def _max(v: list[float]) -> float | None:
    return float(np.max(v)) if v else None


def format_stat(x: dict[str, Any] | None) -> str:
    if not x:
        return "-"
    text = f"{x['mean']:+.3f}" if "p" in x else f"{x['mean']:.3f}"
    if x.get("std") is not None:
        text += f" ± {x['std']:.3f}"
    if x.get("p") is not None:
        text += f" (p {x['p']:.2f}{', noise' if x['inside_noise'] else ''})"
    elif "inside_noise" in x:
        text += " (1 seed)"
    return text


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Benchmark family: {', '.join(summary['members'])}", "",
             f"Reference cell: {summary['reference']}. Mean ± std over seeds; p: paired t-test across seeds; "
             "'noise': p >= 0.05 or |mean| <= std.", ""]
    for member in summary["members"]:
        lines += [f"## {member}", "", "| cell | shifted AUC | ceiling (cue-free) | shortcut cost | margin over reference "
                  "| val-test gap | twin reliance | val AUC swapped (selection) |", "|---|---|---|---|---|---|---|---|"]
        for e in summary["per_member"][member].values():
            lines.append(f"| {e['label']} | {format_stat(e['shifted_auc'])} | {format_stat(e['ceiling'])} | {format_stat(e['shortcut_cost'])} "
                         f"| {format_stat(e['margin'])} | {format_stat(e['val_test_gap'])} | {format_stat(e['twin_reliance'])} "
                         f"| {format_stat(e['selection'])} |")
        lines.append("")
    lines += ["## Across members", "", "| cell | mean margin | worst margin | mean cost | worst cost | selection score |",
              "|---|---|---|---|---|---|"]
    for a in summary["across"].values():
        sel = "-" if a["selection"] is None else f"{a['selection']:.3f}"
        lines.append(f"| {a['label']} | {_num(a['mean_margin'])} | {_num(a['worst_margin'])} | {_num(a['mean_cost'])} "
                     f"| {_num(a['worst_cost'])} | {sel} |")
    chosen = summary["chosen_by_validation"]
    if chosen:
        used = ", ".join(f"{m}: {k}" for m, k in summary["selection_key"].items())
        lines += ["", f"Chosen by validation alone (highest mean selection score over members; {used}): **{chosen}**.",
                  "", "| member | margin >= 0.03 beyond noise | val-test gap <= 0.05 | shortcut cost <= 0.01 | holds |",
                  "|---|---|---|---|---|"]
        for member, ok in summary["acceptance"].items():
            lines.append(f"| {member} | {ok['margin_ok']} | {ok['gap_ok']} | {ok['cost_ok']} | {ok['holds']} |")
    return "\n".join(lines) + "\n"


def write_summary(folder: FamilyFolder, summary: dict[str, Any]) -> None:
    atomic_write_json(folder.summary_json, summary)
    atomic_write_text(folder.summary_md, summary_markdown(summary))

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            keys = ("shifted_auc", "ceiling", "shortcut_cost", "margin", "val_test_gap", "twin_reliance", "selection")
            writer.writerow(["member", "cell", "label"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")]
                            + ["margin_p", "margin_inside_noise"])
            for member, cells in summary["per_member"].items():
                for cell, e in cells.items():
                    values = [v for k in keys for v in ((e[k]["mean"], e[k]["std"]) if e[k] else ("", ""))]
                    m = e["margin"] or {}
                    writer.writerow([member, cell, e["label"], *values, m.get("p", ""), m.get("inside_noise", "")])

    atomic_write(folder.summary_csv, write_csv)
    plot_family(summary, folder.summary_png)


def plot_family(summary: dict[str, Any], path: Path) -> None:
    """Per member: each cell's shifted-test AUC (solid) next to its cue-free ceiling (hatched), ± std."""
    from hegl_cli.plots import plt

    members, cells = summary["members"], summary["cells"]
    fig, axes = plt.subplots(1, len(members), figsize=(4.5 * len(members), 4), squeeze=False)
    width = 0.38
    for ax, member in zip(axes[0], members):
        for k, cell in enumerate(cells):
            e = summary["per_member"][member][cell]
            for offset, key, hatch in ((-width / 2, "shifted_auc", None), (width / 2, "ceiling", "//")):
                s = e[key]
                if s:
                    ax.bar(k + offset, s["mean"], width, yerr=s["std"] or 0, capsize=3, color=f"C{k}",
                           hatch=hatch, alpha=0.6 if hatch else 1.0)
        ax.set_xticks(range(len(cells)), cells, rotation=30, ha="right", fontsize=6)
        ax.set_ylim(0.4, 1.0)
        ax.set_title(f"{member}: shifted test (solid), cue-free ceiling (hatched)", fontsize=8)
        ax.set_ylabel("macro AUC")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
