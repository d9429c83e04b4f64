"""One reader for the files users (and earlier hegl runs) hand to hegl: CSV/TSV tables (plain, ``.gz``
or a ``.zip`` holding one), text lists of names, and JSON files.

Whatever the file, the answer is its rows or one line naming the file and what is wrong with it: a
folder, a binary file, text that is not UTF-8, a field over :data:`MAX_FIELD` characters, no header,
a header that names a column twice or lacks a required one. A UTF-8 byte-order mark (Excel) and
CRLF line ends are read as nothing; a short row reads its missing cells as empty.

A table is read line by line (:func:`stream_table`): a dataset's 224k-row CSV or 377k-row ``.csv.gz``
is read in memory that does not grow with it; :func:`read_table` collects the rows of a small one.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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


@contextmanager
def _open_binary(path: Path, what: str) -> Iterator[IO[bytes]]:
    """The file's bytes as a stream: plain, ``.gz`` or the one member of a ``.zip`` (nothing is read yet)."""
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a {what}")
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
                if len(names) != 1:
                    raise UserError(f"{path}: a zipped {what} must hold one file, it holds {len(names)}")
                with archive.open(names[0]) as handle:
                    yield handle
        elif path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                yield handle
        else:
            with open(path, "rb") as handle:
                yield handle
    except zipfile.BadZipFile as exc:
        raise UserError(f"{path}: not a readable {what} ({first_line(exc)})") from exc


def _byte_lines(handle: IO[bytes], path: Path, what: str) -> Iterator[bytes]:
    """The stream's lines as bytes (each with its ``\\n``); a NUL in the first :data:`BINARY_PROBE`
    bytes is a binary file, a truncated or corrupt archive one line naming the file."""
    try:
        probe = handle.read(BINARY_PROBE)
        if b"\0" in probe:
            raise UserError(f"{path}: a binary file, not a {what} (save it as UTF-8 text)")
        *complete, tail = probe.split(b"\n")
        for part in complete:
            yield part + b"\n"
        line = tail + handle.readline()
        while line:
            yield line
            line = handle.readline()
    except (OSError, EOFError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise UserError(f"{path}: not a readable {what} ({first_line(exc)})") from None


def _text_lines(handle: IO[bytes], path: Path, what: str) -> Iterator[str]:
    """The stream's lines as text, one at a time: UTF-8 (a BOM dropped); bytes that are not UTF-8 are
    one line naming the file and the line."""
    for number, raw in enumerate(_byte_lines(handle, path, what), start=1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {number}); save it "
                            "as UTF-8") from None


class TableStream:
    """A CSV/TSV (plain, ``.gz`` or a ``.zip`` holding one) read row by row: the memory it takes does
    not grow with the file (a 377k-row ``.csv.gz`` is read one line at a time).

    The header is read when the stream opens (with the checks of :func:`read_table`); iterating gives
    ``(line number, {column: cell})`` for every row that is not blank, a short row's missing cells
    ``""``. Use it as a context manager (the file closes on leaving, or when the rows run out).
    """

    def __init__(self, path: Path, what: str = "table", required: set[str] | tuple[str, ...] = ()):
        self.path, self.what = Path(path), what
        self._files = _open_binary(self.path, what)
        handle = self._files.__enter__()
        try:
            self._lines = _text_lines(handle, self.path, what)
            first = next(self._lines, "")
            self._reader = csv.reader(itertools.chain([first], self._lines),
                                      delimiter=_delimiter(self.path, first.split("\n", 1)[0]))
            header = next(self._rows(), None)
            if header is None:
                raise UserError(f"{self.path}: empty {what} (no header row)")
            self.header = [cell.strip() for cell in header[1]]
            _check_header(self.path, what, self.header, required)
        except BaseException:
            self.close()
            raise

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        """(line, cells) of every row with a non-blank cell; a cell over :data:`MAX_FIELD` characters or
        broken quoting is one line naming the file and the line."""
        limit = csv.field_size_limit()
        try:
            while True:
                csv.field_size_limit(MAX_FIELD)
                try:
                    row = next(self._reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    raise UserError(f"{self.path}: line {self._reader.line_num}: not a readable {self.what} "
                                    f"({first_line(exc)})") from None
                finally:
                    csv.field_size_limit(limit)
                if row and any(cell.strip() for cell in row):
                    yield self._reader.line_num, row
        finally:
            csv.field_size_limit(limit)

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """(line number, cells) of each row after the header, as in the file."""
        try:
            yield from self._rows()
        finally:
            self.close()

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        width = len(self.header)
        for line, row in self.rows():
            yield line, dict(zip(self.header, row + [""] * (width - len(row))))

    def close(self) -> None:
        files, self._files = getattr(self, "_files", None), None
        if files is not None:
            files.__exit__(None, None, None)

    def __enter__(self) -> TableStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_header(path: Path, what: str, names: list[str], required: set[str] | tuple[str, ...]) -> None:
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        raise UserError(f"{path}: the header names column {repeated[0]!r} twice")
    missing = [c for c in required if c not in names]
    if missing:
        raise UserError(f"{path}: expected the columns {', '.join(sorted(required))} (missing "
                        f"{', '.join(repr(c) for c in missing)}; found {', '.join(repr(n) for n in names[:12])})")


def stream_table(path: Path, what: str = "table", required: set[str] | tuple[str, ...] = ()) -> TableStream:
    """A table read row by row (:class:`TableStream`); the header is checked now."""
    return TableStream(path, what, required)


def read_table(path: Path, what: str = "table", required: set[str] | tuple[str, ...] = (),
               header: bool = True) -> Table:
    """Read a CSV/TSV whole; ``required`` columns must be in its header (``header=False``: every line is
    a row and the header is empty). A large table is better read by :func:`stream_table`."""
    path = Path(path)
    if header:
        with stream_table(path, what, required) as stream:
            rows, lines = [], []
            for line, row in stream.rows():
                rows.append(row)
                lines.append(line)
            return Table(path, stream.header, rows, lines)
    with _open_binary(path, what) as handle:
        text_lines = _text_lines(handle, path, what)
        first = next(text_lines, "")
        reader = csv.reader(itertools.chain([first], text_lines), delimiter=_delimiter(path, first.split("\n", 1)[0]))
        rows, lines = [], []
        limit = csv.field_size_limit()
        csv.field_size_limit(MAX_FIELD)
        try:
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    rows.append(row)
                    lines.append(reader.line_num)
        except csv.Error as exc:
            raise UserError(f"{path}: line {reader.line_num}: not a readable {what} ({first_line(exc)})") from None
        finally:
            csv.field_size_limit(limit)
    return Table(path, [], rows, lines)


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
