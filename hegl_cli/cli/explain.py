"""`hegl explain`: probabilities, decisions and attention overlays for X-ray files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from hegl_cli.cli.common import (
    CheckpointOpt,
    ConfigOpt,
    DeviceOpt,
    RunsDirOpt,
    SetOpt,
    error_line,
    eval_layers,
    handles_errors,
    info,
    out,
)
from hegl_cli.engine.run_folder import RUNS_DIR


@handles_errors
def explain(
    images: Annotated[list[Path], typer.Argument(help="PNG/JPEG/DICOM files or folders.")],
    run: Annotated[Path | None, typer.Option(help="Run folder (default: runs/latest).")] = None,
    classes: Annotated[list[str] | None, typer.Option("--classes", help="Only these classes (repeatable).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default: RUN/explain/<image>).")] = None,
    checkpoint: CheckpointOpt = "best",
    device: DeviceOpt = "auto",
    runs_dir: RunsDirOpt = RUNS_DIR,
    force: Annotated[bool, typer.Option("--force", help="Replace files hegl wrote before in --out (never others).")] = False,
    method: Annotated[str, typer.Option("--method", help="Explanation methods, comma-separated: attention, "
                                        "attention-heads, attention-layers, rollout, gradcam, hirescam, ig, saliency, "
                                        "occlusion (or all).")] = "attention",
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Write per-class overlays, a grid, predictions.json and raw maps (.npy) for each image.

    An unreadable image is reported and skipped; the exit code is 2 when any was.
    """
    from hegl_cli.apps.explain import explain as run_explain
    from hegl_cli.engine.run_folder import resolve_run
    from hegl_cli.models.explainers import parse_methods

    methods = parse_methods(method)
    folder = resolve_run(run, runs_dir)
    result = run_explain(images, folder, checkpoint, classes, out_dir, device,
                         eval_layers=eval_layers(config, overrides), force=force, methods=methods)
    for line in result.warnings:
        info(f"warning: {line}", style="yellow")
    for item in result.explained:
        table = Table(title=Text(str(item.image)))
        table.add_column("class")
        table.add_column("probability", justify="right")
        table.add_column("decision")
        for name, p in item.probs.items():
            table.add_row(Text(name), f"{p:.3f}", "positive" if item.decisions[name] else "negative")
        out.print(table)
        if len(item.seconds) > 1 or "attention" not in item.seconds:
            info("maps in " + ", ".join(f"{m} {t:.2f} s" for m, t in item.seconds.items()))
        info(f"wrote {item.out_dir}")
    if result.failed:
        for line in result.failed:
            error_line(line)
        if result.explained:
            info(f"{len(result.failed)} input(s) skipped, {len(result.explained)} explained")
        raise typer.Exit(2)
