"""`hegl prepare`: read a dataset in one of the known layouts and build the cache training reads.

One function per kind of source: :func:`prepare_synthetic` (the built-in benchmark, generated inside
the cache), :func:`prepare_chestxdet` (ChestX-Det's JSON layout) and :func:`prepare_table` (CSV
annotations as downloaded); :func:`prepare` picks one by ``--format``. The readers live in
:mod:`hegl_cli.data.formats`, the cache builder in :mod:`hegl_cli.data.build`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from hegl_cli import __version__
from hegl_cli.config import Config, TableConfig
from hegl_cli.data.build import (
    Identity,
    PrepareOptions,
    PrepareResult,
    build_cache,
    content_fingerprint,
    fingerprint,
    up_to_date,
)
from hegl_cli.data.formats import CSV_FORMATS, FORMATS, JSON_FORMATS, format_classes
from hegl_cli.data.formats.chestxdet import find_source_layout, parse_records
from hegl_cli.data.formats.family import MEMBERS
from hegl_cli.data.formats.nih import read_nih
from hegl_cli.data.formats.rsna import read_rsna
from hegl_cli.data.formats.siim import read_siim
from hegl_cli.data.formats.synthetic import SyntheticSpec, write_synthetic_source
from hegl_cli.data.formats.table import read_table_dataset
from hegl_cli.data.formats.vindr import read_vindr
from hegl_cli.data.pathologies import canonical
from hegl_cli.data.records import SplitSource
from hegl_cli.errors import UserError


def prepare(fmt: str, cfg: Config, options: PrepareOptions, out: Path | None = None, source: Path | None = None,
            annotations: dict[str, Path] | None = None, images: dict[str, Path] | None = None) -> PrepareResult:
    """Build the cache of ``--format fmt`` at ``out`` (default ``data/<fmt>``) from the ``data`` config."""
    target = out or Path("data") / fmt
    if fmt == "synthetic":
        if source or annotations:
            raise UserError("--source/--annotations need --format chestxdet or chestxdet10")
        spec = synthetic_spec(cfg)
        return prepare_synthetic(out or Path(default_synthetic_folder(spec)), options, spec)
    if fmt in CSV_FORMATS:
        if annotations or images:
            raise UserError(f"--format {fmt} reads the official layout: pass --source DIR")
        return prepare_table(fmt, target, options, source, cfg.data.classes, cfg.data.label_fusion)
    if fmt == "table":
        if annotations or images:
            raise UserError("--format table reads its files from the table.* keys: pass --source DIR --labels FILE")
        return prepare_own_table(target, options, source, cfg.table, cfg.data.classes)
    return prepare_chestxdet(fmt, target, options, source, annotations, images, classes=cfg.data.classes)


def synthetic_spec(cfg: Config) -> SyntheticSpec:
    """The built-in benchmark the ``data`` config asks for: its member's sizes unless set."""
    member = MEMBERS[cfg.data.benchmark]
    n_train = cfg.data.synthetic_train if cfg.was_set("data.synthetic_train") else member.n_train
    n_test = cfg.data.synthetic_test if cfg.was_set("data.synthetic_test") else member.n_test
    return SyntheticSpec(n_train=n_train, n_test=n_test, size=cfg.data.synthetic_source_size, seed=cfg.data.seed,
                         cue_strength=cfg.data.cue_strength, member=member.name, cue_free=cfg.data.cue_free)


def default_synthetic_folder(spec: SyntheticSpec) -> str:
    """``data/synthetic`` for v2 with its shortcuts; ``data/synthetic-<member>[-cuefree]`` otherwise."""
    suffix = ("" if spec.member == "v2" else f"-{spec.member}") + ("-cuefree" if spec.cue_free else "")
    return f"data/synthetic{suffix}"


def select_classes(fmt: str, wanted: list[str] | None) -> list[str]:
    """``data.classes`` (a subset, in the format's order) or every class of the format."""
    known = list(format_classes(fmt))
    if not wanted:
        return known
    asked = {canonical(c) for c in wanted}
    unknown = [c for c in wanted if canonical(c) not in {canonical(k) for k in known}]
    if unknown:
        raise UserError(f"config key 'data.classes': {unknown[0]!r} is not a class of --format {fmt} "
                        f"(classes: {', '.join(known)})")
    return [c for c in known if canonical(c) in asked]


def prepare_table(fmt: str, out: Path, options: PrepareOptions, source: Path | None,
                  classes: list[str] | None = None, fusion: str = "any") -> PrepareResult:
    """Import a CSV-described dataset as downloaded: ``nih``, ``rsna``, ``vindr`` or ``siim`` (one
    module each in :mod:`hegl_cli.data.formats`)."""
    if source is None:
        raise UserError(f"--format {fmt} needs --source DIR (the unpacked official download)")
    chosen = select_classes(fmt, classes)
    readers = {"nih": read_nih, "rsna": read_rsna, "siim": read_siim,
               "vindr": lambda src, cls, seed: read_vindr(src, cls, seed, fusion)}
    records, problems, files = readers[fmt](Path(source), tuple(chosen), options.seed)
    sources = [SplitSource(name, files["labels"], Path(source), records=recs) for name, recs in records.items()]
    identity = identify(fmt, sources, options, chosen, [str(Path(source).resolve()), fusion], files.values())
    done = up_to_date(out, identity, options.force)
    if done is not None:
        return done
    description = {"source": str(Path(source).resolve()), **{k: str(v.resolve()) for k, v in files.items()}}
    return build_cache(fmt, sources, out, options, classes=chosen, source_description=description,
                       extra_manifest={"label_fusion": fusion} if fmt == "vindr" else None,
                       reader_problems=problems, identity=identity)


def prepare_own_table(out: Path, options: PrepareOptions, source: Path | None, table: TableConfig,
                      classes: list[str] | None = None) -> PrepareResult:
    """Import a dataset in no public layout: a labels table and any boxes, COCO file or mask images
    (:mod:`hegl_cli.data.formats.table`), through the same builder as every public format."""
    if source is None:
        raise UserError("--format table needs --source DIR (the folder the table's image paths start from)")
    records, problems, files, found = read_table_dataset(Path(source), table, list(classes or []), options.seed)
    asked = {canonical(c) for c in classes or []}
    chosen = [c for c in found if not asked or c in asked]
    if asked - set(found):
        raise UserError(f"config key 'data.classes': {sorted(asked - set(found))[0]!r} is not a class of the table "
                        f"(classes: {', '.join(found)})")
    sources = [SplitSource(name, files["labels"], Path(source), records=recs) for name, recs in records.items()]
    identity = identify("table", sources, options, chosen, [str(Path(source).resolve()), asdict(table)], files.values())
    done = up_to_date(out, identity, options.force)
    if done is not None:
        return done
    description = {"source": str(Path(source).resolve()), **{k: str(Path(v).resolve()) for k, v in files.items()},
                   "table": asdict(table)}
    return build_cache("table", sources, out, options, classes=chosen, source_description=description,
                       reader_problems=problems, identity=identity)


def prepare_chestxdet(
    fmt: str, out: Path, options: PrepareOptions, source: Path | None = None,
    annotations: dict[str, Path] | None = None, images: dict[str, Path] | None = None,
    classes: list[str] | None = None,
) -> PrepareResult:
    """Import the official ChestX-Det / ChestX-Det10 download (folder layout or explicit files)."""
    if fmt not in JSON_FORMATS:
        raise UserError(f"unknown format '{fmt}' (valid: {', '.join(FORMATS)})")
    if annotations:
        missing = set(annotations) ^ set(images or {})
        if missing:
            raise UserError(f"--annotations and --images must name the same splits (mismatch: {', '.join(sorted(missing))})")
        layout = {split: (Path(annotations[split]), Path(images[split])) for split in annotations}  # type: ignore[index]
    elif source is not None:
        layout = find_source_layout(Path(source), fmt)
    else:
        raise UserError(f"--format {fmt} needs --source DIR (or --annotations/--images per split)")
    for annotation, _ in layout.values():
        if annotation.is_dir():
            raise UserError(f"{annotation} is a folder, not an annotation file (--annotations SPLIT=FILE.json)")
        if not annotation.is_file():
            raise UserError(f"annotation file not found: {annotation}")
    chosen = select_classes(fmt, classes)
    problems: list[str] = []
    sources = [SplitSource(name, ann, img, records=parse_records(ann, format_classes(fmt), problems))
               for name, (ann, img) in layout.items()]
    identity = identify(fmt, sources, options, chosen, [str(s.images.resolve()) for s in sources])
    done = up_to_date(out, identity, options.force)
    if done is not None:
        return done
    return build_cache(fmt, sources, out, options, classes=chosen, reader_problems=problems, identity=identity)


def identify(fmt: str, sources: list[SplitSource], options: PrepareOptions, classes: list[str], where: list[str],
             files: Iterable[Path] = ()) -> Identity:
    """The cache's identity: its inputs (format, classes, options, where the data is) and their content."""
    inputs = fingerprint([__version__, fmt, classes, options.shaping(), where,
                          [[s.name, str(s.annotations.resolve())] for s in sources]])
    return Identity(inputs, content_fingerprint(sources, files)[0])


def prepare_synthetic(out: Path, options: PrepareOptions, spec: SyntheticSpec) -> PrepareResult:
    """Generate the built-in dataset inside the cache folder (``source/``) and import it; its content is
    its spec (the generator is deterministic), so the inputs fingerprint is the whole identity."""
    identity = Identity(fingerprint([__version__, "synthetic", asdict(spec), options.shaping()]), "generated")
    done = up_to_date(out, identity, options.force)
    if done is not None:
        return done
    partial_sources: dict[str, SplitSource] = {}

    def generate(partial: Path) -> None:
        partial_sources.update(write_synthetic_source(spec, partial / "source", options.workers, options.progress))
        sources[:] = [partial_sources[name] for name in ("train", "test", "test_counterfactual")]

    sources: list[SplitSource] = []
    member = spec.benchmark
    extra = {"synthetic": {**asdict(spec), "benchmark": member.name, "about": member.about, "cues": list(member.cues),
                           "positive_classes": list(member.positive),
                           "counterfactual_of": {"test_counterfactual": "test"}}}
    return build_cache("synthetic", sources, out, options, classes=list(member.classes),
                       source_description="builtin:synthetic", extra_manifest=extra, before_build=generate,
                       identity=identity)
