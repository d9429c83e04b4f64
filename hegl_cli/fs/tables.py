"""One reader for the files users (and earlier hegl runs) hand to hegl: CSV/TSV tables (plain, ``.gz``
or a ``.zip`` holding one), text lists of names, and JSON files.

Whatever the file, the answer is its rows or one line naming the file and what is wrong with it: a
folder, a binary file, text that is not UTF-8, a field over :data:`MAX_FIELD` characters, no header,
a header that names a column twice or lacks a required one. A UTF-8 byte-order mark (Excel) and
CRLF line ends are read as nothing; a short row reads its missing cells as empty.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hegl_cli.errors import UserError, first_line

MAX_FIELD = 1 << 20  # characters in one cell: a path or a run-length mask is far shorter
BINARY_PROBE = 8192


def read_text(path: Path, what: str = "file") -> str:
    """The file's text (UTF-8, a BOM dropped; ``.gz`` and one-member ``.zip`` unpacked)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a {what}")
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        elif path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
                if len(names) != 1:
                    raise UserError(f"{path}: a zipped {what} must hold one file, it holds {len(names)}")
                data = archive.read(names[0])
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise UserError(f"{path}: not a readable {what} ({first_line(exc)})") from exc
    if b"\0" in data[:BINARY_PROBE]:
        raise UserError(f"{path}: a binary file, not a {what} (save it as UTF-8 text)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8") from None


@dataclass
class Table:
    """A table's header and rows; ``rows[i]`` is read from line ``lines[i]`` of the file."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]

    def dicts(self) -> list[dict[str, str]]:
        """Every row as ``{column: cell}``; a short row's missing cells are ``""``."""
        return [dict(zip(self.header, row + [""] * (len(self.header) - len(row)))) for row in self.rows]

    def column(self, name: str) -> int:
        return self.header.index(name)


def _delimiter(path: Path, first_line_text: str) -> str:
    suffixes = "".join(path.suffixes).lower()
    if ".tsv" in suffixes or ("\t" in first_line_text and "," not in first_line_text):
        return "\t"
    return ","


def read_table(path: Path, what: str = "table", required: set[str] | tuple[str, ...] = (),
               header: bool = True) -> Table:
    """Read a CSV/TSV; ``required`` columns must be in its header (``header=False``: every line is a
    row and the header is empty)."""
    path = Path(path)
    text = read_text(path, what)
    delimiter = _delimiter(path, text.split("\n", 1)[0])
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_FIELD)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows, lines = [], []
        for row in reader:
            if row and any(cell.strip() for cell in row):
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise UserError(f"{path}: line {reader.line_num}: not a readable {what} ({first_line(exc)})") from None
    finally:
        csv.field_size_limit(limit)
    names: list[str] = []
    if header:
        if not rows:
            raise UserError(f"{path}: empty {what} (no header row)")
        names = [cell.strip() for cell in rows.pop(0)]
        lines.pop(0)
        repeated = sorted({n for n in names if n and names.count(n) > 1})
        if repeated:
            raise UserError(f"{path}: the header names column {repeated[0]!r} twice")
        missing = [c for c in required if c not in names]
        if missing:
            raise UserError(f"{path}: expected the columns {', '.join(sorted(required))} (missing "
                            f"{', '.join(repr(c) for c in missing)}; found {', '.join(repr(n) for n in names[:12])})")
    return Table(path, names, rows, lines)


def read_lines(path: Path, what: str = "list") -> list[str]:
    """The non-empty lines of a text list, stripped."""
    return [line.strip() for line in read_text(path, what).splitlines() if line.strip()]


def read_json(path: Path, what: str = "JSON file", missing_ok: bool = False) -> Any:
    """A JSON file's value; one line naming the file for a folder, a missing file (None with
    ``missing_ok``), bytes that are not UTF-8 or text that is not JSON."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a {what}")
    if not path.is_file():
        if missing_ok:
            return None
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid JSON, a corrupt {what} (not UTF-8 text)") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON, a corrupt {what} ({first_line(exc)})") from None
