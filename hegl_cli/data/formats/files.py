"""Finding the files of an official download; reading them goes through :mod:`hegl_cli.fs.tables`."""

from __future__ import annotations

from pathlib import Path

from hegl_cli.errors import UserError
from hegl_cli.fs.tables import read_table


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
