"""Finding the files of an official download; reading them goes through :mod:`hegl_cli.fs.tables`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hegl_cli.data.formats.registry import FormatRead, ReadRequest
from hegl_cli.data.records import Record, SplitSource
from hegl_cli.errors import UserError
from hegl_cli.fs.tables import read_table

# (source, classes, seed) -> ({split: records}, problems, {role: annotation file})
OfficialReader = Callable[[Path, tuple[str, ...], int], tuple[dict[str, list[Record]], list[str], dict[str, Path]]]


def find_file(source: Path, patterns: list[str], what: str, required: bool = True) -> Path | None:
    """The last match (sorted) of the first pattern that matches in ``source``; a UserError when none
    does and ``required``."""
    for pattern in patterns:
        found = sorted(p for p in source.glob(pattern) if not p.is_dir())
        if found:
            return found[-1]  # Data_Entry_2017_v2020.csv sorts after Data_Entry_2017.csv
        folders = sorted(p for p in source.glob(pattern) if p.is_dir())
        if folders and required:
            raise UserError(f"{folders[-1]} is a folder, not the {what}")
    if required:
        raise UserError(f"{source}: no {what} ({' or '.join(patterns)})")
    return None


def read_rows(path: Path, required: set[str]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV (plain, .gz, or a .zip holding one CSV) with the ``required`` columns."""
    table = read_table(path, "CSV table", required)
    return list(zip(table.lines, table.dicts()))


def official_download(request: ReadRequest, read: OfficialReader) -> FormatRead:
    """The :class:`FormatRead` of a CSV-described official download (NIH, RSNA, VinDr, SIIM): each
    split's records over ``--source``, identified by the folder and the annotation files read.

    ``read(source, classes, seed) -> ({split: records}, problems, {role: file})``, the role
    ``labels`` being the main annotation file. ``data.label_fusion`` is part of every such cache's
    identity (it always was; dropping it would make existing caches look like others).
    """
    source = Path(request.source)  # type: ignore[arg-type]  # prepare checks a source was given
    records, problems, files = read(source, request.classes, request.seed)
    return FormatRead(
        sources=[SplitSource(name, files["labels"], source, records=recs) for name, recs in records.items()],
        classes=list(request.classes), problems=problems, files=files,
        where=[str(source.resolve()), request.cfg.data.label_fusion],
        description={"source": str(source.resolve()), **{k: str(v.resolve()) for k, v in files.items()}})
