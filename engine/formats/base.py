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

from cdrhouse.sql.errors import UserError

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa

#: Columns an adapter may emit besides catalogue fields.
ACCOUNT_ALIASES: tuple[str, ...] = ("customer_code", "carrier_code")
LINE = "_line"
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
