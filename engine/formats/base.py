"""What every format adapter produces, and the errors it raises.

An adapter reads one file and yields `RawBatch`es: Arrow tables whose columns
are catalogue field names (plus the account aliases `customer_code` and
`carrier_code`, and `_line`, the line or record number in the file). Values
are left as the file wrote them, as strings (or Arrow timestamps for typed
formats): validation, type conversion, time zones and account resolution
happen once, for every format, in ClickHouse (see engine.ingest). An adapter
only knows its format's layout and vocabulary, for example how a FreeSWITCH
hangup cause maps to a disposition.

Rows an adapter cannot read at all (a CSV line with the wrong number of
columns, a JSON line that does not parse) are reported as `RawReject`s with
their line number; they never stop the file. A file that is not CDRs in the
format asked for raises `FormatError` before any batch is yielded.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from cdrhouse.sql.errors import UserError
from cdrhouse.sql import ingest as ingest_sql

#: Columns an adapter may emit besides catalogue fields.
ACCOUNT_ALIASES: tuple[str, ...] = ("customer_code", "carrier_code")
LINE = ingest_sql.LINE
#: Rows per batch: big enough for ClickHouse to work set-based, small enough
#: that memory stays flat whatever the file size.
BATCH_ROWS = 500_000


class FormatError(UserError):
    """The file is not CDRs in this format; the message names the file and why."""


@dataclass(frozen=True)
class RawReject:
    line: int
    reason: str
    raw: str


@dataclass
class RawBatch:
    table: pa.Table
    rejects: list[RawReject] = field(default_factory=list)
    #: Bytes of the file consumed so far (for progress bars).
    bytes_read: int = 0


class Reader(Protocol):
    """A format adapter: `name` is what `--format` accepts."""

    name: str

    def read(self, path: Path, batch_rows: int = BATCH_ROWS) -> Iterator[RawBatch]: ...


def columns_to_table(columns: dict[str, list[str | None]], lines: list[int]) -> pa.Table:
    """Build a batch table of string columns from Python lists (for the switch formats)."""
    arrays = {name: pa.array(values, type=pa.string()) for name, values in columns.items()}
    arrays[LINE] = pa.array(lines, type=pa.int64())
    return pa.table(arrays)


# --- headerless CSV plumbing (the Asterisk and FreeSWITCH CSV readers) -----------

#: Local timestamps as switches write them: `2024-01-27 15:07:24`,
#: `2020/2/10 22:41`, optionally with a `T` and fractional seconds.
TIMESTAMP_RE = re.compile(r"\d{4}[-/]\d{1,2}[-/]\d{1,2}[ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?")
_INT_RE = re.compile(r"\d+")



@dataclass(frozen=True)
class CsvLine:
    """One non-blank physical line: its fields, or why they could not be read."""

    number: int
    text: str
    fields: list[str] | None
    error: str | None
    bytes_read: int


def _decode(raw: bytes) -> str:
    """UTF-8 when it is; otherwise replace the bad bytes, so one odd CLID costs nothing."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace")


def iter_csv_lines(path: Path) -> Iterator[CsvLine]:
    """Stream a headerless CSV file line by line, skipping blank lines.

    Each physical line is parsed on its own: switch CDRs never span lines, and
    a broken quote must cost that one row, not swallow the rest of the file as
    a multi-line field.
    """
    consumed = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            consumed += len(raw)
            text = _decode(raw.rstrip(b"\r\n"))
            if number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            try:
                fields = next(csv.reader([text], strict=True))
            except csv.Error as exc:
                yield CsvLine(number, text, None, f"broken quoting: {exc}", consumed)
                continue
            yield CsvLine(number, text, fields, None, consumed)


def head_rows(head: bytes, limit: int = 10) -> list[list[str] | None]:
    """The first parsed non-blank rows of a file head (None where quoting is broken)."""
    rows: list[list[str] | None] = []
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(next(csv.reader([line], strict=True)))
        except csv.Error:
            rows.append(None)
        if len(rows) >= limit:
            break
    return rows


def is_timestamp(value: str) -> bool:
    return TIMESTAMP_RE.fullmatch(value.strip()) is not None


def is_int(value: str) -> bool:
    return _INT_RE.fullmatch(value.strip()) is not None


def none_if_empty(value: str | None) -> str | None:
    return value if value else None


class BatchBuilder:
    """Accumulates rows and rejects and turns them into RawBatches of bounded size."""

    def __init__(self, columns: tuple[str, ...], batch_rows: int) -> None:
        self.columns = columns
        self.batch_rows = max(1, batch_rows)
        self._reset()

    def _reset(self) -> None:
        self._values: dict[str, list[str | None]] = {c: [] for c in self.columns}
        self._lines: list[int] = []
        self._rejects: list[RawReject] = []

    def add(self, line: int, row: dict[str, str | None]) -> None:
        for column in self.columns:
            self._values[column].append(row.get(column))
        self._lines.append(line)

    def reject(self, line: int, reason: str, raw: str) -> None:
        self._rejects.append(RawReject(line, reason, raw))

    @property
    def full(self) -> bool:
        return len(self._lines) >= self.batch_rows or len(self._rejects) >= self.batch_rows

    @property
    def pending(self) -> bool:
        return bool(self._lines or self._rejects)

    def flush(self, bytes_read: int) -> RawBatch:
        batch = RawBatch(columns_to_table(self._values, self._lines), self._rejects, bytes_read)
        self._reset()
        return batch


def read_headerless_csv(
    path: Path,
    batch_rows: int,
    columns: tuple[str, ...],
    width: int,
    describe: str,
    to_row: Callable[[list[str]], dict[str, str | None] | str],
) -> Iterator[RawBatch]:
    """Turn each line of `width` fields into a row via `to_row` (a str result is a reject reason)."""
    builder = BatchBuilder(columns, batch_rows)
    bytes_read = 0
    for line in iter_csv_lines(path):
        bytes_read = line.bytes_read
        if line.fields is None:
            builder.reject(line.number, line.error or "unreadable line", line.text)
        elif len(line.fields) != width:
            builder.reject(
                line.number,
                f"expected {width} columns for {describe}, found {len(line.fields)}",
                line.text,
            )
        else:
            row = to_row(line.fields)
            if isinstance(row, str):
                builder.reject(line.number, row, line.text)
            else:
                builder.add(line.number, row)
        if builder.full:
            yield builder.flush(bytes_read)
    if builder.pending:
        yield builder.flush(bytes_read)
