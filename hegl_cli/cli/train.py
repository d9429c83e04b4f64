"""`hegl train`: train one run with L = CE + alpha*HA + beta*DAL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hegl_cli.cli.common import (
    ConfigOpt,
    RunsDirOpt,
    SetOpt,
    State,
    choice_option,
    handles_errors,
    info,
    resolve_config,
    result_line,
)
from hegl_cli.config import DEVICES
from hegl_cli.engine.run_folder import RUNS_DIR


@handles_errors
def train(
    config: ConfigOpt = None,
    data: Annotated[Path | None, typer.Option(help="Prepared cache folder (data.path).")] = None,
    alpha: Annotated[float | None, typer.Option(help="Weight of the human-alignment term (loss.alpha).")] = None,
    beta: Annotated[float | None, typer.Option(help="Weight of the discriminative-attention term (loss.beta).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (train.epochs).")] = None,
    device: Annotated[str | None, choice_option("device", DEVICES, "Where to train (train.device).")] = None,
    name: Annotated[str | None, typer.Option(help="Run name: runs/<name> (default: a timestamp).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue runs/<name> from its last finished epoch, with its own config.")] = False,
    runs_dir: RunsDirOpt = RUNS_DIR,
    overrides: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Start an existing hegl run of this name over.")] = False,
) -> None:
    """Train, validate every epoch, keep best/last checkpoints, stop early on validation macro AUC."""
    from hegl_cli.engine.run_folder import RunFolder, validate_run_name
    from hegl_cli.engine.train import train as run_training
    from hegl_cli.errors import UserError

    base = None
    if resume:
        if name is None:
            raise UserError("--resume needs --name of the run to continue")
        base = RunFolder(runs_dir / validate_run_name(name)).config
        if not base.is_file():
            base = None  # the engine says what is missing
        if force:
            raise UserError("--resume and --force contradict each other: --force starts the run over")
    cfg = resolve_config(config, overrides, base=base, data__path=str(data) if data else None, loss__alpha=alpha,
                         loss__beta=beta, train__epochs=epochs, train__device=device)
    result = run_training(cfg, name=name, resume=resume, force=force, runs_dir=runs_dir,
                          progress=not State.quiet, log=info)
    if not result.is_main:
        return
    stop = " (early stop)" if result.stopped_early else ""
    result_line(f"done{stop}: best val macro AUC {result.best_val_auc:.3f} at epoch {result.best_epoch}; "
                f"{result.epochs_run} epochs in {result.seconds:.0f}s ({result.images_per_second:.1f} images/s) "
                f"-> {result.run}")


