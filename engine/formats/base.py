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
their line number; they never stop the file. Where the file itself is broken
(a line longer than `MAX_LINE_BYTES`, a bare carriage return inside a field,
compressed data that ends early) the reject is marked `damage`: the good rows
around it are still read, and the caller reports the damage as an error naming
the file and line. A file that is not CDRs in the format asked for raises
`FormatError` before any batch is yielded; `FormatError` is the only error a
reader raises, whatever the bytes (tests/test_formats_fuzz.py).

Every reader reads through `open_input`, so zstd and gzip files (recognised by
their magic bytes, not their names) are read like the plain ones.
"""

from __future__ import annotations

import csv
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import pyarrow as pa
import zstandard

from cdrhouse.sql.errors import UserError
from cdrhouse.sql import ingest as ingest_sql

#: Columns an adapter may emit besides catalogue fields.
ACCOUNT_ALIASES: tuple[str, ...] = ("customer_code", "carrier_code")
LINE = ingest_sql.LINE
#: Rows per batch: big enough for ClickHouse to work set-based, small enough
#: that memory stays flat whatever the file size.
BATCH_ROWS = 500_000
#: The longest line (or JSON record) any reader takes. No CDR needs more (the
#: longest field, recording_url, is capped at 4 KiB; see the catalogue); a longer
#: line is damage, rejected without being held in memory whole.
MAX_LINE_BYTES = 1 << 20
#: How much of a damaged line the reject file keeps.
PREVIEW_BYTES = 500


class FormatError(UserError):
    """The file is not CDRs in this format; the message names the file and why."""


class DamagedFile(FormatError):
    """The bytes of the file are broken here (raised by `open_input` streams mid-file)."""


@dataclass(frozen=True)
class RawReject:
    line: int
    reason: str
    raw: str
    #: The file itself is broken at this line, not just one value in it.
    damage: bool = False


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


# --- reading bytes: compression, lines, damage ------------------------------------

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
#: Compressed bytes read at a time (small: one read's output must stay small too).
_RAW_CHUNK = 256 << 10


class InputStream:
    """A file's bytes, decompressed when it is zstd or gzip (by magic bytes, not name).

    `consumed` counts bytes of the file itself, for progress bars. Damaged or cut
    compressed data raises DamagedFile from `read`, after every byte that did
    decode was returned: zstd's own stream reader ends quietly at a cut frame,
    so frames are followed here and a frame still open at the end is reported.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fh: BinaryIO = open(path, "rb")
        except OSError as exc:
            raise FormatError(f"{path}: cannot read: {exc.strerror}") from None
        magic = self._fh.read(4)
        self._fh.seek(0)
        self.compression = ("zstd" if magic.startswith(_ZSTD_MAGIC)
                            else "gzip" if magic.startswith(_GZIP_MAGIC) else None)
        self._buf = b""
        self._eof = False
        self._frame: Any = None       # the zstd/gzip decompressor of the frame being read

    @property
    def consumed(self) -> int:
        return self._fh.tell()

    def read(self, size: int = -1) -> bytes:
        while (size is None or size < 0 or len(self._buf) < size) and not self._eof:
            try:
                self._fill()
            except DamagedFile as exc:   # raised once what decoded before it is read
                self._error: DamagedFile | None = exc
                self._eof = True
        if not self._buf and getattr(self, "_error", None):
            error, self._error = self._error, None
            raise error
        if size is None or size < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:size], self._buf[size:]
        return out

    def _fill(self) -> None:
        if self.compression is None:
            raw = self._fh.read(_RAW_CHUNK * 4)
            self._eof = not raw
            self._buf += raw
            return
        raw = self._fh.read(_RAW_CHUNK)
        if not raw:
            self._eof = True
            if self._frame is not None:
                raise DamagedFile(f"{self.path}: the {self.compression} data ends early "
                                  "(a truncated file?); the rest of the file is lost")
            return
        out = []
        try:
            while raw:
                if self._frame is None:
                    self._frame = (zstandard.ZstdDecompressor().decompressobj()
                                   if self.compression == "zstd"
                                   else zlib.decompressobj(wbits=31))
                out.append(self._frame.decompress(raw))
                if self._frame.eof:
                    raw = self._frame.unused_data
                    self._frame = None
                else:
                    raw = b""
        except (zstandard.ZstdError, zlib.error) as exc:
            self._eof = True
            self._buf += b"".join(out)
            raise DamagedFile(f"{self.path}: the {self.compression} data is damaged "
                              f"({exc}); the rest of the file is lost") from None
        self._buf += b"".join(out)

    def close(self) -> None:
        self._fh.close()

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def __enter__(self) -> InputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_input(path: Path) -> InputStream:
    """The file's bytes, decompressed when needed (FormatError when it cannot be opened)."""
    return InputStream(path)


def read_head(path: Path, size: int) -> bytes:
    """The first `size` bytes of the (decompressed) file, for sniffing formats."""
    with open_input(path) as src:
        try:
            return src.read(size)
        except DamagedFile as exc:
            head = src.read()   # what decoded before the damage, if anything
            if not head:
                raise FormatError(f"{exc} (nothing before it could be read)") from None
            return head


@dataclass(frozen=True)
class Line:
    """One physical line (no terminator), or the damage that stands in its place."""

    number: int
    data: bytes
    #: Bytes of the file consumed so far.
    consumed: int
    #: Why this line is damage (too long, cut by broken compression); None if it is whole.
    problem: str | None = None


def preview(data: bytes) -> str:
    """The start of a damaged line, as text for the reject file."""
    return data[:PREVIEW_BYTES].decode("utf-8", errors="replace")


def iter_lines(src: InputStream, max_bytes: int = MAX_LINE_BYTES) -> Iterator[Line]:
    r"""Split a stream into lines ending in LF, CRLF or (for the whole file) a bare CR.

    The file's first line ending decides: files from old Mac tools end every
    line with CR alone; anywhere else a bare CR is data (and a CSV reader
    rejects it in an unquoted field). Memory stays bounded: a line longer than
    `max_bytes` comes out as one damage Line, its rest skipped unread.
    """
    buf = b""
    sep: bytes | None = None
    number = 0
    skipping = False   # inside a too-long line already reported
    while True:
        try:
            chunk = src.read(_RAW_CHUNK)
        except DamagedFile as exc:   # the line being read is cut off: that line is the damage
            if not skipping:
                number += 1
            yield Line(number, buf[:PREVIEW_BYTES], src.consumed,
                       str(exc).removeprefix(f"{src.path}: "))
            return
        if not chunk:
            break
        buf += chunk
        if sep is None:
            cr, lf = buf.find(b"\r"), buf.find(b"\n")
            if lf >= 0 and (cr < 0 or cr > lf or cr == lf - 1):
                sep = b"\n"
            elif cr >= 0 and cr + 1 < len(buf):
                sep = b"\r"
        if sep is not None:
            parts = buf.split(sep)
            buf = parts.pop()
            for part in parts:
                if skipping:
                    skipping = False
                    continue
                number += 1
                if sep == b"\n" and part.endswith(b"\r"):
                    part = part[:-1]
                elif sep == b"\r" and part.startswith(b"\n"):
                    part = part[1:]         # a CRLF in a CR file is one line end
                if len(part) > max_bytes:
                    yield Line(number, part[:PREVIEW_BYTES], src.consumed,
                               _too_long(len(part), max_bytes))
                else:
                    yield Line(number, part, src.consumed)
        if len(buf) > max_bytes:
            if not skipping:
                number += 1
                yield Line(number, buf[:PREVIEW_BYTES], src.consumed,
                           _too_long(None, max_bytes))
                skipping = True
            buf = b""
    if buf and not skipping:
        number += 1
        if sep == b"\n" and buf.endswith(b"\r"):
            buf = buf[:-1]
        yield Line(number, buf, src.consumed)


def _too_long(size: int | None, max_bytes: int) -> str:
    found = f" ({size:,} bytes)" if size is not None else ""
    return (f"line is longer than {max_bytes:,} bytes{found}: not a CDR (a missing line "
            "end or a runaway field?); skipped")


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
    #: The error is damage to the file (see RawReject.damage), not one bad row.
    damage: bool = False


def _decode(raw: bytes) -> str:
    """UTF-8 when it is; otherwise replace the bad bytes, so one odd CLID costs nothing."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace")


BARE_CR = ("a carriage return (CR) inside an unquoted field: only CRLF or LF may end a "
           "line in this file")
BARE_LF = ("a line feed (LF) inside an unquoted field: lines in this file end in a "
           "carriage return (CR)")


def iter_csv_lines(path: Path) -> Iterator[CsvLine]:
    """Stream a headerless CSV file line by line, skipping blank lines.

    Each physical line is parsed on its own: switch CDRs never span lines, and
    a broken quote must cost that one row, not swallow the rest of the file as
    a multi-line field.
    """
    with open_input(path) as src:
        for line in iter_lines(src):
            if line.problem:
                yield CsvLine(line.number, preview(line.data), None, line.problem,
                              line.consumed, damage=True)
                continue
            text = _decode(line.data)
            if line.number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            try:
                fields = next(csv.reader([text], strict=True))
            except csv.Error as exc:
                if "\r" in text and "new-line" in str(exc):
                    yield CsvLine(line.number, text, None, BARE_CR, line.consumed, damage=True)
                else:
                    yield CsvLine(line.number, text, None, f"broken quoting: {exc}",
                                  line.consumed)
                continue
            yield CsvLine(line.number, text, fields, None, line.consumed)


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

    def reject(self, line: int, reason: str, raw: str, damage: bool = False) -> None:
        self._rejects.append(RawReject(line, reason, raw, damage))

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
            builder.reject(line.number, line.error or "unreadable line", line.text, line.damage)
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
