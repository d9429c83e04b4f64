"""`hegl prepare`: read a dataset in one of the registered layouts and build the cache training reads.

One path for every format (:mod:`hegl_cli.data.formats.registry`): check the inputs the format
takes, choose its classes, hand its reader a request, identify the result (an up-to-date cache is
left as it is), and build the cache (:mod:`hegl_cli.data.build`).
"""

from __future__ import annotations

from pathlib import Path

from hegl_cli import __version__
from hegl_cli.config import Config
from hegl_cli.data.benchmark.generator import SyntheticSpec
from hegl_cli.data.build import build_cache, up_to_date
from hegl_cli.data.formats.registry import DatasetFormat, FormatRead, ReadRequest, get_format, select_classes
from hegl_cli.data.formats.synthetic import read_spec
from hegl_cli.data.identity import Identity, content_fingerprint, fingerprint
from hegl_cli.data.options import PrepareOptions, PrepareResult
from hegl_cli.data.record_filters import class_names
from hegl_cli.errors import UserError


def prepare(fmt: str, cfg: Config, options: PrepareOptions, out: Path | None = None, source: Path | None = None,
            annotations: dict[str, Path] | None = None, images: dict[str, Path] | None = None) -> PrepareResult:
    """Build the cache of ``--format fmt`` at ``out`` (default: the format's, ``data/<fmt>``) from the
    ``data`` config."""
    dataset = get_format(fmt)
    check_inputs(dataset, source, annotations or {}, images or {})
    classes = select_classes(dataset, cfg.data.classes) if dataset.classes else list(cfg.data.classes or [])
    request = ReadRequest(cfg=cfg, classes=tuple(classes), seed=options.seed, source=source,
                          annotations=annotations or {}, images=images or {}, workers=options.workers,
                          progress=options.progress)
    return publish(dataset.name, dataset.read(request), out or dataset.out_folder(cfg), options,
                   protected=(Path(source),) if source is not None else ())


def class_map(fmt: str, cfg: Config) -> tuple[list[tuple[str, list[str]]], str]:
    """(every name ``--format fmt`` reads a label under, with the cache classes it feeds, in order), and
    the format's note on the map: what `hegl prepare --show-class-map` prints. The names are made
    canonical and ``data.classes`` / ``data.class_map`` apply, as they will in the cache."""
    dataset = get_format(fmt)
    if not dataset.classes:
        raise UserError(f"--format {fmt} takes its classes from its source (for a table: table.class_columns or "
                        "the findings of table.labels_column); --show-class-map shows a format's own map")
    chosen = select_classes(dataset, cfg.data.classes)
    _, mapping = class_names(chosen, cfg.data.class_map)
    rows = [(name, list(dict.fromkeys(mapping[c] for c in feeds if c in mapping)))
            for name, feeds in dataset.class_sources()]
    return rows, dataset.class_map_note


def prepare_synthetic(out: Path, options: PrepareOptions, spec: SyntheticSpec) -> PrepareResult:
    """The built-in benchmark of ``spec`` at ``out`` (for code that holds a spec rather than a config)."""
    return publish("synthetic", read_spec(spec, options.workers, options.progress), out, options)


def publish(fmt: str, found: FormatRead, target: Path, options: PrepareOptions,
            protected: tuple[Path, ...] = ()) -> PrepareResult:
    """Build the cache of what a reader found at ``target``, unless an up-to-date one is there; never
    inside (or around) the ``protected`` folders (the dataset the user pointed at)."""
    identity = identify(fmt, found, options)
    done = up_to_date(target, identity, options.force)
    if done is not None:
        return done
    return build_cache(fmt, found.sources, target, options, classes=found.classes,
                       source_description=found.description, extra_manifest=found.manifest,
                       before_build=found.generate, reader_problems=found.problems, identity=identity,
                       protected=protected, original_names=found.original_names,
                       reader_warnings=found.warnings)


def check_inputs(dataset: DatasetFormat, source: Path | None, annotations: dict[str, Path],
                 images: dict[str, Path]) -> None:
    """One line when the command line gives inputs the format does not take, or lacks one it needs."""
    name = dataset.name
    if dataset.inputs == "generated":
        if source or annotations or images:
            raise UserError(f"--format {name} is generated: --source/--annotations need --format chestxdet or "
                            "chestxdet10 (or another dataset format)")
        return
    if dataset.inputs == "source":
        if annotations or images:
            raise UserError(f"--format {name} reads {dataset.source_help} from --source DIR, not "
                            "--annotations/--images")
        if source is None:
            raise UserError(f"--format {name} needs --source DIR ({dataset.source_help})")
        return
    if source is None and not annotations:
        raise UserError(f"--format {name} needs --source DIR (or --annotations/--images per split)")


def identify(fmt: str, found: FormatRead, options: PrepareOptions) -> Identity:
    """The cache's identity: its inputs (format, classes, options, where the data is) and their content;
    a generated source is identified by its spec alone."""
    if found.identity is not None:
        return Identity(fingerprint([__version__, fmt, *found.identity, options.shaping()]), "generated")
    inputs = fingerprint([__version__, fmt, found.classes, options.shaping(), found.where,
                          [[s.name, str(s.annotations.resolve())] for s in found.sources]])
    return Identity(inputs, content_fingerprint(found.sources, found.files.values())[0])
