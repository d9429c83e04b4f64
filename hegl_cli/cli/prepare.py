"""`hegl prepare`: build the cache that training reads (the built-in benchmark or a public dataset)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hegl_cli.cli.common import (
    ConfigOpt,
    ForceOpt,
    SetOpt,
    State,
    handles_errors,
    info,
    out,
    resolve_config,
)
from hegl_cli.data.cache import SKIPPED
from hegl_cli.data.formats.registry import format_names
from hegl_cli.errors import UserError


def _pairs(values: list[str] | None, option: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for value in values or []:
        if "=" not in value:
            raise UserError(f"{option} {value!r}: expected SPLIT=PATH (e.g. train=ChestX_Det_train.json)")
        split, path = value.split("=", 1)
        out[split.strip()] = Path(path)
    return out


@handles_errors
def prepare(
    fmt: Annotated[str, typer.Option("--format", "-f", metavar="|".join(format_names()),
                                     help="Dataset layout (any registered format).")] = "synthetic",
    source: Annotated[Path | None, typer.Option(help="Unzipped official download (JSON files + train/ test/).")] = None,
    annotations: Annotated[list[str] | None, typer.Option(help="Per split: SPLIT=FILE.json (repeatable).")] = None,
    images: Annotated[list[str] | None, typer.Option(help="Per split: SPLIT=IMAGE_DIR (repeatable).")] = None,
    labels: Annotated[Path | None, typer.Option(help="--format table: the labels table (table.labels).")] = None,
    out: Annotated[Path | None, typer.Option(help="Cache folder (default data/<format>).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Side length of the cached images.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the validation split (and synthetic data).")] = None,
    workers: Annotated[int, typer.Option(help="Decoding processes (0 = one per core).")] = 0,
    strict: Annotated[bool, typer.Option(help="Make skipped records and unreadable images fatal.")] = False,
    force: ForceOpt = False,
    show_class_map: Annotated[bool, typer.Option(
        "--show-class-map", help="Print which classes each label name of --format feeds (PadChest: its terms), "
                                 "after data.classes and data.class_map, and stop.")] = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Validate annotations, decode images in parallel and write a memory-mappable cache."""
    from hegl_cli.apps.prepare import prepare as run_prepare
    from hegl_cli.data.options import PrepareOptions

    if workers < 0:
        raise UserError(f"--workers must be 0 (one per core) or more, got {workers}")
    cfg = resolve_config(config, overrides, data__image_size=image_size, data__seed=seed,
                         table__labels=str(labels) if labels else None)
    if show_class_map:
        print_class_map(fmt, cfg)
        return
    options = PrepareOptions.from_config(cfg.data, strict=strict, force=force, workers=workers,
                                         progress=not State.quiet)
    result = run_prepare(fmt, cfg, options, out, source, _pairs(annotations, "--annotations"),
                         _pairs(images, "--images"))
    print_summary(result)


def print_class_map(fmt: str, cfg) -> None:
    """One line per label name of the format: the name as the dataset writes it -> the classes it feeds."""
    from hegl_cli.apps.prepare import class_map

    rows, note = class_map(fmt, cfg)
    width = max(len(name) for name, _ in rows)
    for name, classes in rows:
        out.print(f"{name:<{width}}  -> {', '.join(classes) if classes else '(no class)'}", markup=False,
                  highlight=False, soft_wrap=True)
    if note:
        out.print(f"# {note}", markup=False, highlight=False, soft_wrap=True)


def print_summary(result) -> None:
    m = result.manifest
    if result.skipped:
        info(f"{result.out} is up to date ({m['format']}, {m['image_size']} px); nothing to do (--force rebuilds)")
        return
    if result.stale:
        info(f"{result.out}: {result.stale_reason}")
    splits = ", ".join(f"{k} {v}" for k, v in m["splits"].items())
    info(f"prepared {m['format']} -> {result.out}  [{splits}]  {len(m['classes'])} classes, "
         f"{m['image_size']} px, {result.seconds:.1f}s")
    counts, masks = m.get("class_counts", {}), m.get("mask_counts", {})
    for split, per_class in counts.items():
        with_mask = masks.get(split, {})
        info(f"  {split}: " + ", ".join(f"{c} {n}" + (f" ({with_mask[c]} with mask)" if c in with_mask else "")
                                       for c, n in per_class.items()))
    for line in result.warnings:
        info(f"warning: {line}", style="yellow")
    if result.clipped_boxes:
        info(f"clipped {result.clipped_boxes} box(es) that reached outside their image")
    if result.problems:
        info(f"skipped {len(result.problems)} record(s)/image(s):", style="yellow")
        for line in result.problems[:20]:
            info(f"  {line}")
        if len(result.problems) > 20:
            info(f"  ... and {len(result.problems) - 20} more (all in {result.out / SKIPPED})")
