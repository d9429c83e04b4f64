"""`hegl ablation --select`: choose the recipe on the user's own data, on validation only.

Every candidate recipe (a grid cell: built-in ``baseline``, ``human``, ``hegl``, ``robust``, or a
YAML file of config keys) is trained for every seed on the user's cache by the ordinary ablation
(:func:`hegl_cli.apps.ablation.run_ablation`). Then one criterion, the same for every candidate, is
read from each run's own validation record at its checkpoint epoch (its epoch records, written by
training, which never opens the test split):

- ``swap_val``: macro AUC on context-swapped val images (needs expert masks and finding-free val
  images; a model that reads the context loses it there);
- ``val``: macro AUC on val;
- ``val_loss``: binary cross-entropy on val (lower is better);
- ``auto`` (default): ``swap_val`` where every run has it, else ``val``.

The recipe with the best mean criterion over seeds is chosen, and within it the seed with the best
criterion is the chosen run, the one ``hegl evaluate <ablation folder>`` opens. Test numbers
(measured by the ablation for the record) are added to the table only after the choice and never
enter it. With them, the selection's **regret**: the best candidate's mean test AUC minus the chosen
candidate's (0 when the choice was the best one); and, per seed, the regret of a user who ran that
seed alone.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hegl_cli.apps.ablation import CellSpec, read_cell
from hegl_cli.config import Config, config_layers, packaged_config
from hegl_cli.engine.run_folder import AblationFolder
from hegl_cli.errors import UserError
from hegl_cli.fs.atomic import atomic_write, atomic_write_json, atomic_write_text

DEFAULT_RECIPES = "baseline,human,hegl,robust"
BUILTIN_CELLS = {"baseline": "0,0", "human": "1,0", "hegl": "1,1"}
BUILTIN_FILES = {"robust": "robust.yaml"}


@dataclass(frozen=True)
class Criterion:
    key: str  # the field of an epoch record (RunFolder.metrics)
    higher_is_better: bool
    description: str


CRITERIA: dict[str, Criterion] = {
    "swap_val": Criterion("val_auc_swapped", True, "macro AUC on context-swapped val images"),
    "val": Criterion("val_auc_plain", True, "macro AUC on val"),
    "val_loss": Criterion("val_loss", False, "binary cross-entropy on val (lower is better)"),
}
CRITERION_CHOICES = ("auto", *CRITERIA)
NO_TEST = ("Chosen on the val split alone: the criterion is read from each run's training record at its "
           "checkpoint epoch; no test number enters the choice. Test AUC is shown for the record.")


@dataclass(frozen=True)
class Recipe:
    name: str
    cell: CellSpec


def _override(key: str, value: Any) -> str:
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def recipe_from_file(path: Path, base: Config) -> Recipe:
    """A YAML file of config keys as a recipe (its loss.alpha/beta, else the base config's)."""
    layers = config_layers(path)
    values = dict(layers[0][1]) if layers else {}
    alpha = values.pop("loss.alpha", base.loss.alpha)
    beta = values.pop("loss.beta", base.loss.beta)
    if not all(_finite(v) for v in (alpha, beta)):  # true is no weight, and float(True) would read it as 1
        raise UserError(f"{path}: loss.alpha and loss.beta must be numbers (got {alpha!r}, {beta!r})")
    alpha, beta = float(alpha), float(beta)
    return Recipe(Path(path).stem, CellSpec(alpha, beta, [_override(k, v) for k, v in values.items()]))


def parse_recipes(text: str, base: Config) -> list[Recipe]:
    """``"baseline,human,hegl,robust,my.yaml"`` -> recipes: built-in names, or YAML files of config keys."""
    from hegl_cli.apps.ablation import parse_grid

    recipes: list[Recipe] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if token in BUILTIN_CELLS:
            recipes.append(Recipe(token, parse_grid(BUILTIN_CELLS[token], "--recipes")[0]))
        elif token in BUILTIN_FILES:
            recipes.append(Recipe(token, recipe_from_file(packaged_config(BUILTIN_FILES[token]), base).cell))
        elif Path(token).is_file():
            recipes.append(recipe_from_file(Path(token), base))
        else:
            known = ", ".join([*BUILTIN_CELLS, *BUILTIN_FILES])
            raise UserError(f"--recipes {token!r}: not a recipe ({known}) nor a YAML file of config keys")
    if len(recipes) < 2:
        raise UserError("--recipes: name at least two recipes to choose between")
    names = [r.name for r in recipes]
    cells = [r.cell.name for r in recipes]
    if len(set(names)) < len(names) or len(set(cells)) < len(cells):
        raise UserError(f"--recipes {text!r}: each recipe once, and no two with the same settings")
    return recipes


def resolve_criterion(name: str, rows: list[dict[str, Any]]) -> str:
    """``auto`` -> ``swap_val`` where every run has a swapped-val AUC (expert masks and finding-free
    val images), else ``val``; a named criterion every run must have."""
    if name == "auto":
        if rows and all(_finite(r.get("val_auc_swapped")) for r in rows):
            return "swap_val"
        name = "val"
    missing = [f"{r['cell']}_s{r['seed']}" for r in rows if not _finite(r.get(CRITERIA[name].key))]
    if missing:
        raise UserError(f"--criterion {name}: runs {', '.join(missing[:4])} have no {CRITERIA[name].key} "
                        "(swap_val needs expert masks and finding-free val images; val_loss runs trained "
                        "before hegl recorded it); choose another criterion")
    return name


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number_or_none(value: Any) -> float | None:
    """A criterion as recorded, or None when it is missing or not a finite number (a damaged or
    undefined record never wins a choice)."""
    return float(value) if _finite(value) else None


def criterion_rows(folder: AblationFolder, recipes: list[Recipe], seeds: int) -> list[dict[str, Any]]:
    """Per (recipe, seed): the val figures of the run's checkpoint epoch, read from its training record
    (its epoch records) only."""
    rows = []
    for recipe in recipes:
        for seed in range(seeds):
            run = folder.run(f"{recipe.cell.name}_s{seed}")
            records = run.read_metrics()
            best = [r for r in records if r.get("best")]
            if not best:
                raise UserError(f"{run.path}: no checkpoint epoch in {run.metrics.name}; run the ablation again")
            record = best[-1]
            rows.append({"recipe": recipe.name, "cell": recipe.cell.name, "seed": seed, "run": run.path.name,
                         "epoch": record["epoch"],
                         **{c.key: _number_or_none(record.get(c.key)) for c in CRITERIA.values()}})
    return rows


def choose(rows: list[dict[str, Any]], criterion: str | Criterion) -> dict[str, Any]:
    """The recipe with the best mean criterion over its seeds (ties: the first listed) and its run with
    the best criterion. ``rows``: :func:`criterion_rows` (val figures only); ``criterion``: a name of
    :data:`CRITERIA` or a :class:`Criterion`."""
    spec = criterion if isinstance(criterion, Criterion) else CRITERIA[criterion]
    criterion = spec.key if isinstance(criterion, Criterion) else criterion
    sign = 1.0 if spec.higher_is_better else -1.0
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    means = {name: float(np.mean([r[spec.key] for r in rows if r["recipe"] == name])) for name in recipes}
    recipe = max(recipes, key=lambda name: sign * means[name])
    runs = [r for r in rows if r["recipe"] == recipe]
    run = max(runs, key=lambda r: sign * r[spec.key])
    return {"criterion": criterion, "key": spec.key, "description": spec.description, "recipe": recipe,
            "run": run["run"], "seed": run["seed"], "criterion_means": means}


def regret(rows: list[dict[str, Any]], criterion: str | Criterion, test_auc: dict[str, float]) -> dict[str, Any]:
    """Test AUC lost by the choice: best candidate's mean test AUC minus the chosen one's, over all seeds,
    and per seed (a user who ran that seed alone chooses among that seed's runs)."""
    pick_all = choose(rows, criterion)
    chosen = pick_all["recipe"]
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    mean_test = {name: float(np.mean([test_auc[r["run"]] for r in rows if r["recipe"] == name])) for name in recipes}
    per_seed = {}
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed]
        pick = choose(mine, criterion)["recipe"]
        tests = {r["recipe"]: test_auc[r["run"]] for r in mine}
        per_seed[seed] = {"chosen": pick, "regret": max(tests.values()) - tests[pick]}
    seed_regrets = [v["regret"] for v in per_seed.values()]
    return {"criterion": pick_all["criterion"], "chosen": chosen, "best_by_test": max(recipes, key=lambda n: mean_test[n]),
            "regret": max(mean_test.values()) - mean_test[chosen], "mean_test_auc": mean_test,
            "per_seed": per_seed, "per_seed_mean": float(np.mean(seed_regrets)),
            "per_seed_worst": float(np.max(seed_regrets))}


def select_recipe(folder: AblationFolder, recipes: list[Recipe], seeds: int, criterion: str = "auto"
                  ) -> dict[str, Any]:
    """Choose on val (:func:`choose`), then add the test AUCs the ablation measured and write
    ``selection.{csv,md,json,png}``. Returns the selection record, every run's row under ``runs``."""
    rows = criterion_rows(folder, recipes, seeds)
    criterion = resolve_criterion(criterion, rows)
    choice = choose(rows, criterion)
    test_auc = {r["run"]: float(read_cell(folder.run(r["run"]).cell)["auc"]) for r in rows}
    record = {**choice, "statement": NO_TEST, "recipes": {r.name: r.cell.label for r in recipes}, "seeds": seeds,
              "regret": regret(rows, criterion, test_auc),
              "alternatives": {name: regret(rows, name, test_auc) for name in CRITERIA
                               if name != criterion and all(_finite(r.get(CRITERIA[name].key)) for r in rows)}}
    table = [{**r, "criterion": r[CRITERIA[criterion].key], "test_auc": test_auc[r["run"]],
              "chosen": r["run"] == choice["run"], "chosen_recipe": r["recipe"] == choice["recipe"]} for r in rows]
    write_selection(folder, record, table)
    return {**record, "runs": table}


SELECTION_COLUMNS = ("recipe", "seed", "criterion", "val_auc_plain", "val_auc_swapped", "val_loss", "test_auc",
                     "chosen", "chosen_recipe", "run", "epoch")


def write_selection(folder: AblationFolder, record: dict[str, Any], table: list[dict[str, Any]]) -> None:
    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=SELECTION_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in table:
                writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in SELECTION_COLUMNS})

    atomic_write(folder.selection_csv, write_csv)
    atomic_write_json(folder.selection_json, {**record, "runs": table})
    atomic_write_text(folder.selection_md, selection_markdown(record, table))
    plot_selection(record, table, folder.selection_png)


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "-"


def summary_rows(record: dict[str, Any], table: list[dict[str, Any]]) -> list[list[str]]:
    """Per recipe: seeds, criterion and test AUC (mean ± std), and whether it was chosen."""
    rows = []
    for name in record["recipes"]:
        mine = [r for r in table if r["recipe"] == name]
        rows.append([name, str(len(mine)), _mean_std([r["criterion"] for r in mine]),
                     _mean_std([r["test_auc"] for r in mine]), "chosen" if name == record["recipe"] else ""])
    return rows


def selection_markdown(record: dict[str, Any], table: list[dict[str, Any]]) -> str:
    reg = record["regret"]
    lines = [f"# Recipe selection on {record['description']} ({record['criterion']})", "", record["statement"], "",
             f"| recipe | seeds | {record['criterion']} (val) | test AUC | |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(record, table)]
    lines += ["", f"Chosen: **{record['recipe']}**; its run {record['run']} (seed {record['seed']}) is what "
                  "`hegl evaluate` of this folder opens.",
              f"Regret (best candidate's mean test AUC minus the chosen one's): {reg['regret']:.3f}; "
              f"a user running one seed: mean {reg['per_seed_mean']:.3f}, worst {reg['per_seed_worst']:.3f}."]
    for name, alt in record["alternatives"].items():
        lines.append(f"Had {name} ({CRITERIA[name].description}) chosen: {alt['chosen']}, regret {alt['regret']:.3f} "
                     f"(one seed: mean {alt['per_seed_mean']:.3f}, worst {alt['per_seed_worst']:.3f}).")
    return "\n".join(lines) + "\n"


def plot_selection(record: dict[str, Any], table: list[dict[str, Any]], path: Path) -> None:
    """Each run's criterion (x) against its test AUC (y), one colour per recipe; the chosen run ringed."""
    from hegl_cli.plots import plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for k, name in enumerate(record["recipes"]):
        mine = [r for r in table if r["recipe"] == name]
        ax.scatter([r["criterion"] for r in mine], [r["test_auc"] for r in mine], color=f"C{k % 10}", label=name)
    chosen = next(r for r in table if r["chosen"])
    ax.scatter([chosen["criterion"]], [chosen["test_auc"]], s=260, facecolors="none", edgecolors="black",
               linewidths=1.5, label="chosen run")
    ax.set_xlabel(f"{record['criterion']}: {record['description']}")
    ax.set_ylabel("test macro AUC (not used to choose)")
    ax.set_title(f"chosen: {record['recipe']}; regret {record['regret']['regret']:.3f}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
