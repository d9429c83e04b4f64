"""The format registry: each dataset layout declares itself where it is defined.

A format module ends with ``register(DatasetFormat(name, read, classes=..., ...))``; `hegl prepare
--format NAME` finds it here, hands its reader a :class:`ReadRequest` and builds the cache from the
:class:`FormatRead` it returns (``hegl_cli.apps.prepare``). Adding a format is one module in this
folder plus its import line in ``data/formats/__init__.py`` (or, from outside the package, a call to
:func:`register`: ``tests/test_formats.py`` registers a toy format that way).

What a format owns, all in one place: its name, its classes (or none when the source names its own),
its reader, which command-line inputs it takes, where its cache goes by default, the ``data.*``
keys only its `prepare` uses, and how to read those back from a cache's manifest (so `hegl train`
records, and refuses to contradict, what the cache was made with).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hegl_cli.config import Config
from hegl_cli.data.pathologies import canonical
from hegl_cli.data.records import SplitSource
from hegl_cli.errors import UserError

Inputs = Literal["generated", "source", "source-or-files"]


@dataclass(frozen=True)
class ReadRequest:
    """What `hegl prepare` hands a reader.

    ``classes`` are the classes to read: ``data.classes`` within the format's own (in the format's
    order), or ``data.classes`` as given when the format declares none (its source names them).
    """

    cfg: Config
    classes: tuple[str, ...]
    seed: int
    source: Path | None = None
    annotations: Mapping[str, Path] = field(default_factory=dict)  # --annotations SPLIT=FILE
    images: Mapping[str, Path] = field(default_factory=dict)  # --images SPLIT=DIR
    workers: int = 0
    progress: bool = True


@dataclass
class FormatRead:
    """What a reader returns: the splits to import and what the cache's identity and manifest need.

    - ``sources``: one :class:`SplitSource` per split, each with its records (or, for a generated
      source, filled in by ``generate`` inside the cache's partial folder before the import);
    - ``classes``: the cache's classes, in order;
    - ``files``: the annotation files read (their bytes are part of the cache's identity);
    - ``where``: the other inputs that decide what the cache holds (a folder, a setting);
    - ``description``: the manifest's ``source`` entry (None: each split's files);
    - ``manifest``: extra manifest keys of this format;
    - ``generate``: writes a generated source into the partial folder (the built-in benchmark);
    - ``identity``: the whole inputs of a generated source (its content is its spec);
    - ``original_names``: class -> the names the dataset spells it with, where they are not the class
      itself (a table's columns before they were made canonical, the PadChest terms a class gathers);
    - ``warnings``: what the user should know of the data as read (one line each; the manifest keeps them).
    """

    sources: list[SplitSource]
    classes: list[str]
    problems: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    where: list[Any] = field(default_factory=list)
    description: str | dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    generate: Callable[[Path], None] | None = None
    identity: list[Any] | None = None
    original_names: dict[str, list[str]] | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetFormat:
    """One dataset layout `hegl prepare --format NAME` reads."""

    name: str
    read: Callable[[ReadRequest], FormatRead]
    classes: tuple[str, ...] = ()  # empty: the source names its own classes
    about: str = ""
    inputs: Inputs = "source"
    source_help: str = "the unpacked official download"
    default_out: Callable[[Config], Path] | None = None  # default: data/<name>
    # data.* keys that only this format's prepare uses, read back from a manifest by ``settings_of``
    settings_of: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    settings: tuple[str, ...] = ()
    # (name as the dataset writes it, the classes it feeds) for `hegl prepare --show-class-map`; None:
    # each class is fed by its own name (made canonical)
    source_names: Callable[[], list[tuple[str, tuple[str, ...]]]] | None = None
    class_map_note: str = ""  # what --show-class-map adds under the map

    def out_folder(self, cfg: Config) -> Path:
        return self.default_out(cfg) if self.default_out is not None else Path("data") / self.name

    def class_sources(self) -> list[tuple[str, tuple[str, ...]]]:
        """Every name the dataset writes a label with and the classes (of :attr:`classes`) it feeds."""
        return self.source_names() if self.source_names is not None else [(c, (c,)) for c in self.classes]

    def prepared_settings(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """This format's ``data.*`` settings as the cache's manifest records them."""
        return self.settings_of(manifest) if self.settings_of is not None else {}


# The modules of this folder that register a format, in the order `hegl prepare --help` lists them.
BUILTIN_FORMATS = ("synthetic", "chestxdet", "nih", "rsna", "vindr", "siim", "chexpert", "mimic", "padchest",
                   "table")
FORMATS: dict[str, DatasetFormat] = {}  # read it through the functions below: they load the built-in ones


def _load_builtin() -> dict[str, DatasetFormat]:
    """Import the built-in format modules (each registers itself); later calls cost nothing."""
    for module in BUILTIN_FORMATS:
        importlib.import_module(f"{__package__}.{module}")
    return FORMATS


def register(fmt: DatasetFormat) -> DatasetFormat:
    """Add ``fmt`` (a name given twice is a programming error, not a user's)."""
    if fmt.name in FORMATS and FORMATS[fmt.name] is not fmt:
        raise ValueError(f"dataset format {fmt.name!r} is registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


def format_names() -> tuple[str, ...]:
    return tuple(_load_builtin())


def get_format(name: str) -> DatasetFormat:
    """The format ``name``; an unknown name is one line listing the known ones."""
    if name not in _load_builtin():
        raise UserError(f"unknown format '{name}' (valid: {', '.join(FORMATS)})")
    return FORMATS[name]


def settings_owners() -> dict[str, str]:
    """Every ``data.*`` key that some format's prepare owns -> the formats' names (``chexpert|mimic``
    for a key two formats share)."""
    owners: dict[str, list[str]] = {}
    for fmt in _load_builtin().values():
        for key in fmt.settings:
            owners.setdefault(key, []).append(fmt.name)
    return {key: "|".join(names) for key, names in owners.items()}


def prepared_settings(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The format-owned ``data.*`` settings a cache was made with (by its manifest's format)."""
    fmt = _load_builtin().get(str(manifest.get("format", "")))
    return fmt.prepared_settings(manifest) if fmt is not None else {}


def select_classes(fmt: DatasetFormat, wanted: list[str] | None) -> list[str]:
    """``data.classes`` (a subset, in the format's order) or every class of the format."""
    known = list(fmt.classes)
    if not wanted:
        return known
    asked = {canonical(c) for c in wanted}
    unknown = [c for c in wanted if canonical(c) not in {canonical(k) for k in known}]
    if unknown:
        raise UserError(f"config key 'data.classes': {unknown[0]!r} is not a class of --format {fmt.name} "
                        f"(classes: {', '.join(known)})")
    return [c for c in known if canonical(c) in asked]
