"""`hegl robustness`: metrics vs Gaussian noise sigma, for one or more runs, as JSON and a plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hegl_cli.cli.common import (
    CheckpointOpt,
    ConfigOpt,
    DeviceOpt,
    RunsDirOpt,
    SetOpt,
    State,
    cell,
    eval_layers,
    handles_errors,
    info,
    out,
)
from hegl_cli.engine.run_folder import RUNS_DIR


@handles_errors
def robustness(
    runs: Annotated[list[Path] | None, typer.Argument(help="Run folders (default: runs/latest).")] = None,
    sigma: Annotated[list[float] | None, typer.Option(help="Noise sigma on [0, 1] intensities (repeatable; default eval.sigmas).")] = None,
    draws: Annotated[int | None, typer.Option(help="Noise draws per sigma (default eval.robustness_draws).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    checkpoint: CheckpointOpt = "best",
    seed: Annotated[int, typer.Option(help="Noise seed.", min=0)] = 0,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default: the first run's folder).")] = None,
    data: Annotated[Path | None, typer.Option(help="Prepared cache (default: the one each run trained on).")] = None,
    device: DeviceOpt = "auto",
    runs_dir: RunsDirOpt = RUNS_DIR,
    force: Annotated[bool, typer.Option("--force", help="Replace robustness files hegl wrote before in --out.")] = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Add clipped Gaussian noise (sigma 0 always included) and report AUC/F1/MCC and attention energy."""
    from hegl_cli.apps.robustness import robustness_runs
    from hegl_cli.engine.run_folder import resolve_run, robustness_files
    from hegl_cli.errors import UserError

    folders = [resolve_run(r, runs_dir) for r in (runs or [None])]
    if sigma is not None and any(not math.isfinite(s) or not 0 <= s <= 1 for s in sigma):
        raise UserError(f"--sigma must be a number in [0, 1] (noise on [0, 1] intensities), got {sigma}")
    if draws is not None and draws < 1:
        raise UserError("--draws must be at least 1")
    target = out_dir or folders[0]
    records = robustness_runs(folders, sigma, out_dir, split, draws, seed, checkpoint, data, device,
                              progress=not State.quiet, eval_layers=eval_layers(config, overrides), force=force)
    table = Table(title=f"robustness on {split}")
    for col in ("run", "sigma", "AUC", "F1", "MCC", "energy in mask"):
        table.add_column(col)
    for r in records:
        cells = [f"{r[k]['mean']:.3f}" + (f" ± {r[k]['std']:.3f}" if r["draws"] > 1 else "") if r.get(k) else "-"
                 for k in ("auc", "f1", "mcc", "energy_in_mask")]
        table.add_row(cell(r["run"]), f"{r['sigma']:g}", *cells)
    out.print(table)
    info("wrote " + " and ".join(str(p) for p in robustness_files(target)))
