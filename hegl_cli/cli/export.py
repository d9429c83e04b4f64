"""`hegl export`: a trained run as one ONNX file (dynamic batch), checked against PyTorch on real images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hegl_cli.cli.common import CheckpointOpt, choice_option, handles_errors, info, result_line


@handles_errors
def export(
    run: Annotated[Path | None, typer.Argument(help="Run folder (default: runs/latest).")] = None,
    fmt: Annotated[str, choice_option("export format", ("onnx",), "What to export to.", "--format")] = "onnx",
    out: Annotated[Path | None, typer.Option("--out", help="Model file (default: RUN/export/model.onnx).")] = None,
    checkpoint: CheckpointOpt = "best",
    calibration: Annotated[Path | None, typer.Option(help="A site calibration (`hegl evaluate --recalibrate`) to "
                                                          "build into the probabilities and thresholds.")] = None,
    tolerance: Annotated[float, typer.Option(help="Largest |ONNX - PyTorch| allowed on logits and maps.",
                                             min=0.0)] = 1e-4,
    runs_dir: Annotated[Path, typer.Option(help="Where run folders live.")] = Path("runs"),
    force: Annotated[bool, typer.Option("--force", help="Replace an exported model hegl wrote at --out.")] = False,
) -> None:
    """The graph takes images (N, 1, S, S) in [0, 1] and returns logits, attention maps and probabilities;
    the preprocessing contract, classes and thresholds go into its metadata and a JSON file beside it,
    with a model card. Parity with PyTorch is checked on the run's test images before anything is written."""
    from hegl_cli.apps.export import export_run
    from hegl_cli.engine.run_folder import resolve_run

    folder = resolve_run(run, runs_dir)
    result = export_run(folder, fmt, out, checkpoint, calibration, force, tolerance)
    for line in result.warnings:
        info(f"warning: {line}", style="yellow")
    p, x = result.parity, result.exporter
    result_line(f"exported {folder.name} ({checkpoint}) to {result.out}: ONNX opset {x['opset']}, {x['exporter']}")
    result_line(f"parity on {p['images']} images of {p['source']} (batch {' and '.join(map(str, p['batch_sizes']))}): "
                f"max |ONNX - PyTorch| logits {p['max_abs_logits']:.2e}, maps {p['max_abs_attention']:.2e}, "
                f"probabilities {p['max_abs_probabilities']:.2e} (tolerance {p['tolerance']:g})")
    info(f"wrote {result.description_file.name} and {result.card.name} beside it")
