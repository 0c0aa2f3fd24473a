"""CSV cells a spreadsheet will not run: the OWASP neutralisation of CSV (formula) injection.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return may be read as a
formula by Excel, LibreOffice or Google Sheets. `neutralise` prefixes such a cell with a single
quote, which those programs show as text, as OWASP recommends. Every CSV export of jivocore and
its plugins writes its cells through `neutralise` (or `safe_row`), so they agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["TRIGGERS", "neutralise", "safe_row"]

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""The first characters that make a spreadsheet read a cell as a formula."""


def neutralise(value: Any) -> str:
    """The cell's text, with a leading single quote if it starts with one of `TRIGGERS`.

    None is the empty cell; numbers are written as they are (``-5`` stays a number: only text
    is quoted, so a report's figures remain figures)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    text = str(value)
    return "'" + text if text.startswith(TRIGGERS) else text


def safe_row(values: Iterable[Any]) -> list[str]:
    """Each value of a row through `neutralise`, for `csv.writer(...).writerow`."""
    return [neutralise(v) for v in values]
