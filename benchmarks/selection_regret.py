"""Selection regret of `hegl ablation --select` across benchmarks, for each candidate criterion.

    python benchmarks/selection_regret.py \
        v2=examples/study/runs.json chestxdet13=ablations/chestxdet13 inmask=ablations/inmask ... \
        [--out examples/study/selection]

Each argument is ``LABEL=PATH``: an ablation folder (its ``runs.json``) or a ``runs.json`` file. Runs
are mapped to recipes by their cell (baseline ``a0_b0``, human ``a1_b0``, hegl ``a1_b1``, robust
robust.yaml's cell); other cells are left out. Only recipes with every seed present take part.

Per benchmark and criterion: the recipe chosen by the criterion's mean over seeds, its regret
(best recipe's mean test AUC minus the chosen one's), and the regret of a user running one seed
(mean and worst over seeds). Criteria: ``swap_val``, ``val``, ``val_loss`` (where the runs recorded
it) -- all on val -- and ``context_reliance``, the twin-free audit **as the ablation measures it, on
test**: not selection-safe, shown only to compare with what a test-side audit would have picked.
Then the same over **every candidate set** of two or more of a benchmark's recipes (a user who does
not include robust.yaml, say): mean and worst regret per criterion, over all (benchmark, set) pairs
and over those where the best recipe by test is not robust, the cases that test whether a criterion
steers away from the recipe that wins most often.
Writes ``regret.{csv,json,md,png}`` under ``--out`` when given.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
from pathlib import Path

import numpy as np

from hegl_cli.apps.selection import CRITERIA, Criterion, parse_recipes, regret
from hegl_cli.config import load_config

TEST_SIDE = {"context_reliance": Criterion("context_reliance", False, "twin-free context reliance, on test (not selection-safe)")}


def recipe_cells() -> dict[str, str]:
    """Cell name -> recipe name for the built-in recipes."""
    return {r.cell.name: r.name for r in parse_recipes("baseline,human,hegl,robust", load_config(None, []))}


def read_rows(path: Path) -> list[dict]:
    source = path / "runs.json" if path.is_dir() else path
    return json.loads(source.read_text())


def benchmark_rows(path: Path) -> list[dict]:
    """Rows of the built-in recipes, every seed of which is present (seed sets equal across recipes)."""
    cells = recipe_cells()
    rows = [{**r, "recipe": cells[r["cell"]], "run": f"{r['cell']}_s{r['seed']}"} for r in read_rows(path)
            if r["cell"] in cells]
    seeds = {name: {r["seed"] for r in rows if r["recipe"] == name} for name in {r["recipe"] for r in rows}}
    common = set.intersection(*seeds.values()) if seeds else set()
    return [r for r in rows if r["seed"] in common]


def analyse(rows: list[dict]) -> dict[str, dict]:
    """criterion -> regret record (chosen, regret, per seed), for criteria every row has."""
    test_auc = {r["run"]: float(r["auc"]) for r in rows}
    out = {}
    for name, spec in {**CRITERIA, **TEST_SIDE}.items():
        if all(isinstance(r.get(spec.key), (int, float)) for r in rows):
            out[name] = regret(rows, spec, test_auc)
    return out


def candidate_sets(recipes: list[str]) -> list[tuple[str, ...]]:
    """Every set of two or more of ``recipes``, in their order."""
    return [combo for k in range(2, len(recipes) + 1) for combo in itertools.combinations(recipes, k)]


def subset_regrets(results: dict[str, dict], rows_of: dict[str, list[dict]]) -> dict[str, dict]:
    """criterion -> regrets over every (benchmark, candidate set): all of them, and those whose best
    recipe by test is not robust."""
    out: dict[str, dict] = {}
    for name, spec in {**CRITERIA, **TEST_SIDE}.items():
        every, steering = [], []
        for label, rows in rows_of.items():
            if name not in results[label]["criteria"]:
                continue
            test_auc = {r["run"]: float(r["auc"]) for r in rows}
            for combo in candidate_sets(results[label]["recipes"]):
                rec = regret([r for r in rows if r["recipe"] in combo], spec, test_auc)
                every.append(rec["regret"])
                if rec["best_by_test"] != "robust":
                    steering.append(rec["regret"])
        if every:
            out[name] = {"sets": len(every), "mean": float(np.mean(every)), "worst": float(np.max(every)),
                         "steering_sets": len(steering),
                         "steering_mean": float(np.mean(steering)) if steering else None,
                         "steering_worst": float(np.max(steering)) if steering else None,
                         "steering_zero": int(sum(r == 0 for r in steering))}
    return out


def subset_table(subsets: dict[str, dict]) -> list[str]:
    lines = ["", "Every candidate set of two or more recipes:", "",
             "| criterion | (benchmark, set) pairs | mean regret | worst | pairs where robust is not best | "
             "their mean regret | worst | chose the best |", "|---|---|---|---|---|---|---|---|"]
    for name, s in subsets.items():
        steer = (f"{s['steering_mean']:.3f} | {s['steering_worst']:.3f} | {s['steering_zero']}/{s['steering_sets']}"
                 if s["steering_sets"] else "- | - | -")
        lines.append(f"| {name} | {s['sets']} | {s['mean']:.3f} | {s['worst']:.3f} | {s['steering_sets']} | {steer} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmarks", nargs="+", help="LABEL=PATH (ablation folder or runs.json)")
    parser.add_argument("--out", type=Path, help="write regret.{csv,json,md,png} here")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    rows_of: dict[str, list[dict]] = {}
    for item in args.benchmarks:
        label, path = item.split("=", 1)
        rows = benchmark_rows(Path(path))
        recipes = list(dict.fromkeys(r["recipe"] for r in rows))
        if len(recipes) < 2:
            print(f"{label}: fewer than two recipes with every seed ({', '.join(recipes) or 'none'}); left out")
            continue
        seeds = sorted({r["seed"] for r in rows})
        results[label] = {"recipes": recipes, "seeds": seeds, "criteria": analyse(rows),
                          "test_auc": {n: [float(r["auc"]) for r in rows if r["recipe"] == n] for n in recipes}}
        rows_of[label] = rows
    subsets = subset_regrets(results, rows_of)
    lines = table(results) + subset_table(subsets)
    print("\n".join(lines))
    if args.out:
        write({**results, "every_candidate_set": subsets}, lines, args.out)


def table(results: dict[str, dict]) -> list[str]:
    lines = ["| benchmark | recipes | seeds | criterion | chosen | best by test | regret | one seed: mean | one seed: worst |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, res in results.items():
        for name, rec in res["criteria"].items():
            lines.append(f"| {label} | {', '.join(res['recipes'])} | {len(res['seeds'])} | {name} | {rec['chosen']} | "
                         f"{rec['best_by_test']} | {rec['regret']:.3f} | {rec['per_seed_mean']:.3f} | "
                         f"{rec['per_seed_worst']:.3f} |")
    lines += ["", "| criterion | benchmarks | mean regret | worst regret | one seed: mean | one seed: worst |",
              "|---|---|---|---|---|---|"]
    for name in [*CRITERIA, *TEST_SIDE]:
        recs = [res["criteria"][name] for res in results.values() if name in res["criteria"]]
        if recs:
            lines.append(f"| {name} | {len(recs)} | {np.mean([r['regret'] for r in recs]):.3f} | "
                         f"{max(r['regret'] for r in recs):.3f} | {np.mean([r['per_seed_mean'] for r in recs]):.3f} | "
                         f"{max(r['per_seed_worst'] for r in recs):.3f} |")
    return lines


def write(results: dict[str, dict], lines: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "regret.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "regret.md").write_text("\n".join(lines) + "\n")
    with open(out / "regret.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["benchmark", "criterion", "chosen", "best_by_test", "regret", "one_seed_mean", "one_seed_worst"])
        for label, res in results.items():
            for name, rec in res.get("criteria", {}).items():
                writer.writerow([label, name, rec["chosen"], rec["best_by_test"], rec["regret"], rec["per_seed_mean"],
                                 rec["per_seed_worst"]])
    plot(results, out / "regret.png")


def plot(results: dict[str, dict], path: Path) -> None:
    """Per benchmark, each recipe's test AUC (mean ± std over seeds), the recipe swap_val chose marked."""
    from hegl_cli.plots import plt

    results = {label: res for label, res in results.items() if "recipes" in res}
    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.6), squeeze=False)
    for ax, (label, res) in zip(axes[0], results.items()):
        names = res["recipes"]
        means = [np.mean(res["test_auc"][n]) for n in names]
        stds = [np.std(res["test_auc"][n]) for n in names]
        pick = (res["criteria"].get("swap_val") or res["criteria"].get("val") or {}).get("chosen")
        colors = ["C3" if n == pick else "C0" for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0.4, 1.0)
        ax.set_title(f"{label} ({len(res['seeds'])} seeds); red: chosen", fontsize=9)
        ax.set_ylabel("test macro AUC")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
