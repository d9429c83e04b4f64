"""`hegl report`: one self-contained HTML page for one or more runs (and ablation folders)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hegl_cli.cli.common import CheckpointOpt, DeviceOpt, RunsDirOpt, handles_errors, info, result_line
from hegl_cli.engine.run_folder import RUNS_DIR


@handles_errors
def report(
    targets: Annotated[list[Path] | None, typer.Argument(help="Run or ablation folders (default: runs/latest).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="HTML file (default: the first run's report page).")] = None,
    checkpoint: CheckpointOpt = "best",
    gallery: Annotated[int, typer.Option(help="Images per gallery row (best, worst, most shortcut-driven).", min=0)] = 3,
    device: DeviceOpt = "auto",
    runs_dir: RunsDirOpt = RUNS_DIR,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file that hegl wrote.")] = False,
    partial: Annotated[bool, typer.Option("--partial", help="Report an unfinished ablation as far as it finished.")] = False,
    card: Annotated[bool, typer.Option("--card", help="Also write each run's model card (RUN/MODEL_CARD.md).")] = False,
) -> None:
    """Config, data, curves, metrics with CIs, alignment and faithfulness vs chance, robustness,
    shortcut audit and a gallery, in one HTML file with no outside links."""
    from hegl_cli.apps.card import write_card
    from hegl_cli.apps.report import build_report, is_ablation
    from hegl_cli.engine.run_folder import resolve_run

    folders = [t if (t is not None and is_ablation(t)) else resolve_run(t, runs_dir) for t in (targets or [None])]
    path = build_report(folders, out, checkpoint, device, gallery, log=info, force=force, partial=partial)
    result_line(f"wrote {path}")
    for folder in folders if card else []:
        if not is_ablation(folder):
            result_line(f"wrote {write_card(folder, checkpoint)}")
