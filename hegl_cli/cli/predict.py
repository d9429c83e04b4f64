"""`hegl predict`: probabilities and decisions for new images (files, folders, CSV lists) as one CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hegl_cli.cli.common import (
    CheckpointOpt,
    ConfigOpt,
    DeviceOpt,
    RunsDirOpt,
    SetOpt,
    State,
    error_line,
    eval_layers,
    handles_errors,
    info,
    result_line,
)
from hegl_cli.engine.run_folder import RUNS_DIR


@handles_errors
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files, folders (searched recursively) or CSV lists of paths.")],
    run: Annotated[Path | None, typer.Option(help="Run folder (default: runs/latest).")] = None,
    model: Annotated[Path | None, typer.Option(help="A model `hegl export` wrote (.onnx), run by onnxruntime on "
                                                    "the CPU instead of a run folder.")] = None,
    calibration: Annotated[Path | None, typer.Option(help="A site calibration (`hegl evaluate --recalibrate`): "
                                                          "its probabilities and thresholds.")] = None,
    out: Annotated[Path, typer.Option("--out", help="CSV to write.")] = Path("predictions.csv"),
    checkpoint: CheckpointOpt = "best",
    batch_size: Annotated[int, typer.Option(help="Images per batch.", min=1)] = 32,
    workers: Annotated[int, typer.Option(help="Loader processes that decode images.", min=0)] = 2,
    device: DeviceOpt = "auto",
    runs_dir: RunsDirOpt = RUNS_DIR,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing predictions CSV.")] = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """One CSV row per readable image: file, p_<class>, positive_<class> at the run's thresholds
    (or an exported model's, or a site calibration's).

    Unreadable files are listed and skipped; the exit code is 2 when any was.
    """
    from hegl_cli.apps.predict import predict as run_predict
    from hegl_cli.engine.run_folder import resolve_run
    from hegl_cli.errors import UserError

    if model is not None and run is not None:
        raise UserError("give --run (a run folder) or --model (an exported model), not both")
    folder = resolve_run(run, runs_dir) if model is None else None
    result = run_predict(inputs, folder, out, checkpoint, device, batch_size, workers, force,
                         progress=not State.quiet, eval_layers=eval_layers(config, overrides), model=model,
                         calibration=calibration)
    for line in result.warnings:
        info(f"warning: {line}", style="yellow")
    for line in result.failed:
        error_line(line)
    result_line(f"wrote {result.rows} row(s) for {len(result.classes)} classes to {result.out}")
    if result.failed:
        info(f"{len(result.failed)} input(s) skipped")
        raise typer.Exit(2)
