"""CSV text that is safe to open in a spreadsheet: every CSV birdshield writes goes through `csv_text`.

A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets (CSV injection: a file or species named ``=HYPERLINK(...)`` would run when
the table is opened). Such cells get a leading apostrophe, which spreadsheets show as text; plain numbers
such as ``-0.5`` are left as they are. Pure Python, no torch.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence

__all__ = ["csv_text", "spreadsheet_safe"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_safe(cell: object) -> str:
    """The cell as text, with a leading apostrophe if a spreadsheet would run it as a formula."""
    text = "" if cell is None else str(cell)
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_text(rows: Iterable[Sequence[object]]) -> str:
    """Rows (the header first) as CSV text with "\\n" line ends, every cell made spreadsheet-safe."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)
    return buf.getvalue()
