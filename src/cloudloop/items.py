"""Items files: the rows a command job runs over, one task per row.

``--items`` names a ``.csv`` file (each row a dict of strings keyed by the
header), a ``.jsonl``/``.ndjson`` file (one JSON value a line, blank lines
skipped) or a ``.json`` file (one list). The file is read whole and checked
before anything is submitted, so a bad row is a message naming its file and
line, never a task that fails an hour in:

* the text must be UTF-8; a byte-order mark (Excel's "CSV UTF-8") is dropped,
  any other undecodable byte is named with its line;
* a CSV header names every column once, and every row has exactly one cell a
  column (a cell may be empty, but it must be there);
* JSON must parse (``file:line`` or ``file:line:column``), and a ``.json``
  file must hold a list;
* a file with no rows is refused: it would run nothing.

:class:`Table` keeps where each row starts, so that the later checks of a row
against the command template (:func:`cloudloop.commands.check_rows`: a missing
field, a NUL byte, a non-number where a number is needed) name the line too.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Table:
    """The rows of an items file, with where each starts (for error messages)."""

    name: str
    items: list[Any]
    starts: list[int]
    unit: str = "line"

    def where(self, i: int) -> str:
        return f"{self.name} {self.unit} {self.starts[i]}"


def read_table(path: str | Path) -> Table:
    """Rows of a ``.csv`` (dicts of strings), ``.jsonl`` or ``.json`` (a list) file.

    Raises ConfigError, naming the file and line, for anything that is not a
    clean table: not UTF-8, bad JSON, a CSV row with missing or extra cells,
    a duplicate column, no rows at all.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise ConfigError(f"items file {name!r} does not exist")
    suffix = path.suffix.lower()
    readers = {".csv": _read_csv, ".jsonl": _read_jsonl, ".ndjson": _read_jsonl}
    if suffix == ".json":
        table = _read_json(name, _decode(path))
    elif suffix in readers:
        table = readers[suffix](name, _decode(path))
    else:
        raise ConfigError(f"items file {name!r}: use .csv, .jsonl or .json")
    if not table.items:
        raise ConfigError(f"items file {name!r} has no rows: nothing to run (one task per row)")
    return table


def load_items(path: str | Path) -> Iterator[Any]:
    """The items of :func:`read_table`, one by one."""
    yield from read_table(path).items


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # Excel writes a byte-order mark
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
            "save the file as UTF-8 (in Excel: CSV UTF-8)"
        ) from None


_NUL_STANDIN = "\ue000"  # Python 3.10's csv refuses NUL outright: read it as a stand-in


def _read_csv(name: str, text: str) -> Table:
    standin = "\0" in text and _NUL_STANDIN not in text
    if standin:  # so the cell check below names the row and field on every Python
        text = text.replace("\0", _NUL_STANDIN)
    reader = csv.reader(io.StringIO(text, newline=""))
    items: list[Any] = []
    starts: list[int] = []
    try:
        header = next(reader, None)
        if not header:
            raise ConfigError(f"items file {name!r} is empty: it needs a header line of names")
        dup = sorted({c for c in header if header.count(c) > 1})
        if dup:
            raise ConfigError(f"{name}:1: column {dup[0]!r} is named twice in the header")
        last = reader.line_num
        for row in reader:
            start, last = last + 1, reader.line_num
            if row:
                if standin:
                    row = [c.replace(_NUL_STANDIN, "\0") for c in row]
                _check_cells(name, start, header, row)
                items.append(dict(zip(header, row)))
                starts.append(start)
    except csv.Error as e:
        raise ConfigError(f"{name}:{reader.line_num}: not valid CSV: {e}") from None
    return Table(name, items, starts)


def _check_cells(name: str, line: int, header: list[str], row: list[str]) -> None:
    if len(row) < len(header):
        raise ConfigError(
            f"{name} line {line}: no cell for column {header[len(row)]!r} ({len(row)} of "
            f"{len(header)} cells); add it, even empty (a trailing comma)"
        )
    if len(row) > len(header):
        raise ConfigError(
            f"{name} line {line}: {len(row)} cells but the header names {len(header)} "
            "columns; name the extra column in the header or remove the cell"
        )


def _read_jsonl(name: str, text: str) -> Table:
    items, starts = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except ValueError as e:
                raise ConfigError(f"{name}:{n}: not valid JSON: {e}") from None
            starts.append(n)
    return Table(name, items, starts)


def _read_json(name: str, text: str) -> Table:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, list):
        raise ConfigError(
            f"{name} holds a JSON {type(data).__name__}, not a list of items: write "
            "[{...}, {...}], or use .jsonl with one item per line"
        )
    return Table(name, data, list(range(1, len(data) + 1)), unit="item")
