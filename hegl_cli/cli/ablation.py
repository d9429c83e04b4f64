"""`hegl ablation`: H-EGL vs human-only vs DAL-only vs baseline (and other EGL losses), one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hegl_cli.cli.common import (
    ConfigOpt,
    SetOpt,
    State,
    fitted_table,
    handles_errors,
    info,
    out,
    resolve_config,
    result_line,
)

DEFAULT_GRID = "0,0 1,0 0,1 1,1"


@handles_errors
def ablation(
    config: ConfigOpt = None,
    grid: Annotated[str, typer.Option(help="Cells 'ALPHA,BETA[+section.key=value]' separated by spaces.")] = DEFAULT_GRID,
    seeds: Annotated[int, typer.Option(help="Seeds per cell.")] = 3,
    name: Annotated[str, typer.Option(help="Results go to ablations/<name>/.")] = "default",
    sigma: Annotated[float, typer.Option(help="Noise sigma for the robustness column.")] = 0.05,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs per run (train.epochs).")] = None,
    data: Annotated[Path | None, typer.Option(help="Prepared cache folder (data.path).")] = None,
    out_root: Annotated[Path, typer.Option("--out-root", help="Parent folder of ablation results.")] = Path("ablations"),
    family: Annotated[str | None, typer.Option(help="Run the grid on these members of the built-in benchmark "
                                                    "family ('all' or 'v2,inmask,...'), each prepared under "
                                                    "--data-root.")] = None,
    cue_free: Annotated[bool, typer.Option("--cue-free/--no-cue-free",
                                           help="--family: also train on each member's cue-free variant "
                                                "(the no-shortcut ceiling).")] = True,
    reference: Annotated[str, typer.Option(help="--family: the cell margins are measured against.")] = "1,0",
    data_root: Annotated[Path, typer.Option("--data-root", help="--family: where member caches go.")] = Path("data"),
    methods: Annotated[str | None, typer.Option(help="Also score these explanation methods in every run "
                                                     "(hegl evaluate --methods); the ablation folder gets a methods table.")] = None,
    select: Annotated[bool, typer.Option("--select", help="Choose the recipe on this cache, on validation only: "
                                                         "train every --recipes candidate for every seed, pick by "
                                                         "--criterion, write selection.{csv,md,json,png}.")] = False,
    recipes: Annotated[str, typer.Option(help="--select: candidates, comma-separated: baseline, human, hegl, robust, "
                                              "or YAML files of config keys.")] = "baseline,human,hegl,robust",
    criterion: Annotated[str, typer.Option(help="--select: auto (swap_val where masks allow, else val), swap_val, "
                                                "val or val_loss; computed on val only.")] = "auto",
    overrides: SetOpt = None,
) -> None:
    """Train, evaluate and stress-test every cell and seed; resumable; prints and writes the table."""
    from hegl_cli.apps.ablation import METRICS, format_mean_std, parse_grid, run_ablation
    from hegl_cli.engine.run_folder import AblationFolder, validate_run_name
    from hegl_cli.errors import UserError

    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    if not 0 <= sigma <= 1:  # also false for NaN
        raise UserError(f"--sigma must be a number in [0, 1], got {sigma}")
    cfg = resolve_config(config, overrides, train__epochs=epochs, data__path=str(data) if data else None)
    from hegl_cli.models.explainers import parse_methods

    chosen = parse_methods(methods, "--methods") if methods is not None else None
    if select:
        run_select_command(cfg, recipes, criterion, seeds, out_root / validate_run_name(name), sigma, family, grid,
                           chosen)
        return
    cells = parse_grid(grid)
    target = out_root / validate_run_name(name)
    if family is not None:
        if data is not None:
            raise UserError("--family prepares each member's cache under --data-root; --data is for one cache")
        run_family_command(cfg, family, cells, seeds, target, parse_grid(reference, "--reference")[0], cue_free, data_root, sigma)
        return
    table = run_ablation(cfg, cells, seeds, target, sigma, log=info, progress=not State.quiet, methods=chosen)
    header = ["cell", *[label for _, label in METRICS]]
    rows = [[e["label"], *[format_mean_std(e[k]) for k, _ in METRICS]] for e in table]
    folder = AblationFolder(target)
    out.print(fitted_table(f"ablation {name} (mean ± std over {seeds} seed(s), test split)", header, rows, out,
                           str(folder.results_md)))
    info(f"wrote {folder.results_csv}, {folder.results_md.name} and {folder.results_png.name}")


def run_family_command(cfg, family: str, cells, seeds: int, target: Path, reference, cue_free: bool,
                       data_root: Path, sigma: float) -> None:
    from hegl_cli.apps.family import format_stat, parse_members, run_family
    from hegl_cli.engine.run_folder import FamilyFolder

    members = parse_members(family)
    summary = run_family(cfg, members, cells, seeds, target, reference, cue_free, data_root, sigma, log=info,
                         progress=not State.quiet)
    folder = FamilyFolder(target)
    header = ["member", "cell", "shifted AUC", "ceiling", "shortcut cost", "margin"]
    rows = [[m, e["label"], format_stat(e["shifted_auc"]), format_stat(e["ceiling"]), format_stat(e["shortcut_cost"]), format_stat(e["margin"])]
            for m in members for e in summary["per_member"][m].values()]
    out.print(fitted_table(f"family ablation (mean ± std over {seeds} seed(s))", header, rows, out,
                           str(folder.summary_md)))
    if summary["chosen_by_validation"]:
        info(f"chosen by validation alone: {summary['chosen_by_validation']}")
    info(f"wrote {folder.summary_md}, {folder.summary_csv.name}, {folder.summary_json.name} and {folder.summary_png.name}")


def run_select_command(cfg, recipes: str, criterion: str, seeds: int, target: Path, sigma: float,
                       family: str | None, grid: str, methods: list[str] | None) -> None:
    from hegl_cli.apps.ablation import run_ablation
    from hegl_cli.apps.selection import CRITERION_CHOICES, NO_TEST, parse_recipes, select_recipe, summary_rows
    from hegl_cli.engine.run_folder import AblationFolder
    from hegl_cli.errors import UserError

    if family is not None:
        raise UserError("--select chooses on one cache (--data); --family runs the grid on the benchmark family")
    if grid != DEFAULT_GRID:
        raise UserError("--select trains --recipes, not --grid; name the candidates with --recipes")
    if criterion not in CRITERION_CHOICES:
        raise UserError(f"--criterion {criterion!r}: one of {', '.join(CRITERION_CHOICES)}")
    chosen = parse_recipes(recipes, cfg)
    run_ablation(cfg, [r.cell for r in chosen], seeds, target, sigma, log=info, progress=not State.quiet,
                 methods=methods)
    folder = AblationFolder(target)
    record = select_recipe(folder, chosen, seeds, criterion)
    header = ["recipe", "seeds", f"{record['criterion']} (val)", "test AUC", "choice"]
    out.print(fitted_table(f"recipe selection {target.name} (mean ± std over {seeds} seed(s))", header,
                           summary_rows(record, record["runs"]), out, str(folder.selection_md)))
    result_line(NO_TEST)
    reg = record["regret"]
    result_line(f"chosen: {record['recipe']} (run {record['run']}); `hegl evaluate {target}` opens it. "
                f"Regret against the best candidate by test AUC: {reg['regret']:.3f}")
    info(f"wrote {folder.selection_csv}, {folder.selection_md.name}, {folder.selection_json.name} and "
         f"{folder.selection_png.name}")

