"""`hegl explain`: probabilities, decisions and attention overlays for X-ray files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hegl_cli.cli.common import handles_errors, info, out


@handles_errors
def explain(
    images: Annotated[list[Path], typer.Argument(help="PNG/JPEG/DICOM files or folders.")],
    run: Annotated[Path | None, typer.Option(help="Run folder (default: runs/latest).")] = None,
    classes: Annotated[list[str] | None, typer.Option("--classes", help="Only these classes (repeatable).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default: RUN/explain/<image>).")] = None,
    checkpoint: Annotated[str, typer.Option(help="best | last")] = "best",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    runs_dir: Annotated[Path, typer.Option(help="Where run folders live.")] = Path("runs"),
) -> None:
    """Write per-class overlays, a grid, predictions.json and raw maps (.npy) for each image."""
    from hegl_cli.engine.runs import resolve_run
    from hegl_cli.explain import explain as run_explain

    folder = resolve_run(run, runs_dir)
    results = run_explain(images, folder, checkpoint, classes, out_dir, device)
    for result in results:
        table = Table(title=str(result.image))
        table.add_column("class")
        table.add_column("probability", justify="right")
        table.add_column("decision")
        for name, p in result.probs.items():
            table.add_row(name, f"{p:.3f}", "positive" if result.decisions[name] else "negative")
        out.print(table)
        info(f"wrote {result.out_dir}")
