"""Printing query results for people (a table) and for programs (CSV, JSON lines).

CSV is spreadsheet-safe unless `raw`: the rule of the HTTP downloads
(engine.export.neutralise) on every text value and header name. A table shows
values as plain text: rich markup in a value (`[link=…]`) is not interpreted
and control characters (terminal escapes) are dropped.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cdrhouse.engine.export import neutralise

FORMATS = ("table", "csv", "json")


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="milliseconds") if value.microsecond else \
            value.isoformat(sep=" ")
    if isinstance(value, (dt.date, decimal.Decimal)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _cell(value: Any, raw: bool) -> Any:
    value = _plain(value)
    if value is None:
        return ""
    return value if raw or not isinstance(value, str) else neutralise(value)


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str,
           out: TextIO | None = None, title: str | None = None, raw: bool = False) -> None:
    """Print `rows` as a table, CSV (spreadsheet-safe unless `raw`) or JSON lines."""
    out = out or sys.stdout
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow([_cell(c, raw) for c in columns])
        for row in rows:
            writer.writerow([_cell(v, raw) for v in row])
    elif fmt == "json":
        for row in rows:
            out.write(json.dumps({c: _plain(v) for c, v in zip(columns, row)},
                                 ensure_ascii=False, default=str) + "\n")
    else:
        table = Table(title=title, show_lines=False)
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*[Text("" if v is None else str(_plain(v))) for v in row])
        Console(file=out, width=None if out.isatty() else 220).print(table)
