"""Finding and opening the files of an official download (plain, gzipped or zipped CSVs)."""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from pathlib import Path

from hegl_cli.errors import UserError


def open_text(path: Path) -> io.TextIOBase:
    return gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")


def find_file(source: Path, patterns: list[str], what: str, required: bool = True) -> Path | None:
    """The last match (sorted) of the first pattern that matches in ``source``; a UserError when none
    does and ``required``."""
    for pattern in patterns:
        found = sorted(source.glob(pattern))
        if found:
            return found[-1]  # Data_Entry_2017_v2020.csv sorts after Data_Entry_2017.csv
    if required:
        raise UserError(f"{source}: no {what} ({' or '.join(patterns)})")
    return None


def read_rows(path: Path, required: set[str]) -> list[dict[str, str]]:
    """Rows of a CSV (plain, .gz, or a .zip holding one CSV) with the ``required`` columns."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            text = archive.read(archive.namelist()[0]).decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
    else:
        with open_text(path) as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
    if not reader.fieldnames or not required <= set(reader.fieldnames):
        raise UserError(f"{path}: expected the columns {', '.join(sorted(required))}")
    return rows
