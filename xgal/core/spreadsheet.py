"""CSV cells a spreadsheet shows as text, never runs, and reads back unchanged.

A cell that begins with `=`, `+`, `-`, `@` (or a tab or carriage return) is a formula to Excel,
LibreOffice and Google Sheets: an ID like `=HYPERLINK(...)` in a request.csv a radiologist opens
would run (CSV injection, OWASP). Every cell xgal writes goes through `to_cell`, which puts a `'`
before such text (numbers such as `-0.5` stay numbers); `from_cell` takes it off again, so
reading answers back gives the original ID. Files are read as UTF-8 with or without the byte-order
mark that spreadsheets write when they save "CSV UTF-8".
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from pathlib import Path

from xgal.core.durable import atomic_write

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")  # as a spreadsheet reads one


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def to_cell(value: object) -> str:
    """`value` as a cell a spreadsheet shows as text (see the module doc)."""
    text = str(value)
    if text.startswith(FORMULA_START) and not _is_number(text):
        return _QUOTE + text
    if text.startswith(_QUOTE) and text[1:2] and text[1] in (*FORMULA_START, _QUOTE):
        return _QUOTE + text  # a text that itself starts like an escaped one keeps its quote
    return text


def from_cell(text: str) -> str:
    """The text `to_cell` was given."""
    if text.startswith(_QUOTE) and text[1:2] and text[1] in (*FORMULA_START, _QUOTE):
        return text[1:]
    return text


def write_rows(path: str | Path, header: Iterable[str], rows: Iterable[Iterable[object]]) -> None:
    """A CSV of `header` and `rows`, every cell through `to_cell`, written whole (`atomic_write`)."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow([to_cell(h) for h in header])
    w.writerows([to_cell(c) for c in row] for row in rows)
    atomic_write(Path(path), text.getvalue().encode("utf-8"))


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """A CSV's rows as dicts by header (a byte-order mark ignored), every cell through `from_cell`;
    a cell missing at the end of a short row is ''."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [
            {from_cell(k): from_cell(v or "") for k, v in row.items() if k is not None}
            for row in csv.DictReader(f)
        ]
