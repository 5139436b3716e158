"""Streaming CSV exports of guarded queries: ClickHouse writes the CSV, we pass the bytes on.

A download can be millions of rows, so nothing here holds a result: the query
runs with its CSV output read in chunks of about `CHUNK_BYTES`, each chunk
handed to the caller (the HTTP API sends it and forgets it). Memory stays
flat whatever the size.

Decisions worth knowing:

- **Limits.** A download runs with its role's limits (sql/limits.py: time,
  rows and bytes read, memory, readonly) *except* `max_result_rows` and
  `max_result_bytes`: a month of CDRs is legitimately millions of rows and gigabytes, and the cost of a download is
  bounded by what it reads and how long it runs, not by how many rows it
  returns. `max_execution_time` stays the role's and counts the transfer
  too (a slow client holds the query open), so a download must finish
  within it (customer/carrier 30 s, tenant 120 s, admin 300 s): that bounds
  how long one download can hold a database client. A caller may pass
  tighter `limit_overrides` (including a `max_result_rows` cap).
- **Settings ride in the SQL text**, as a `SETTINGS` clause on an outer
  `SELECT * FROM (<query>)`. Per-call settings would make the embedded
  engine's driver materialize the whole result before the first byte
  (clickhouse-connect's chdb backend only streams a query without them), and
  a `SETTINGS` clause appended to a UNION applies to its last branch only —
  the wrapper makes the role's limits cover the whole query, whatever its
  shape. ClickHouse keeps the order of a sorted subquery under a plain
  outer `SELECT *`.
- **CSV, with our header.** Rows are ClickHouse's own `CSV` output; the
  header line is written here from the column names (for user SQL they come
  from `DESCRIBE`), because `CSVWithNames` is not streamed by the embedded
  driver either (it would buffer the whole result). The header is quoted as
  ClickHouse quotes strings, so the file is what `CSVWithNames` would give.
  NULL is an empty unquoted field (an empty string is `""`); times are UTC,
  `YYYY-MM-DD hh:mm:ss.fff`.
- **The query starts before the first chunk is returned**: `stream_csv`
  reads the first block of rows before yielding the header, so a query that
  fails at once (a limit, a bad cast) raises QueryFailed before anything was
  sent, and the API can still answer with a problem response.
- **Mid-stream failure** raises QueryFailed from the iterator; what was
  yielded before is a prefix of the result, never a complete-looking file —
  the caller must say so to its reader (the API writes a `#ERROR:` line and
  aborts the HTTP response). Over HTTP, ClickHouse reports a failure after
  the response started by ending the body with an exception block
  (`__exception__` … `__exception__`) and breaking the transfer; that block
  is held back here and its message raised, never passed on as rows.
- **Spreadsheet-safe by default** (OWASP "CSV injection"): a text cell that
  starts with `=`, `+`, `-`, `@`, TAB or CR is prefixed with `'`, so Excel,
  LibreOffice and Google Sheets show it as text instead of running it as a
  formula — except a `+` or `-` followed only by digits, spaces and dots
  (`+442079460000`, `+44 20 7946 0000`, `-12.5`): E.164 numbers stay as
  carriers expect them. A NUL becomes U+FFFD. Only text columns are touched
  (numbers, dates, enums cannot hold a formula: `-12.5` in a Decimal column
  is never prefixed); the header's names get the same rule (user SQL chooses
  them). The rule runs *in the query*, one expression per text column
  (`safe_text_sql`), so the bytes still stream from ClickHouse's CSV writer;
  `neutralise` is the same rule in Python (CLI output, the header). `raw`
  turns it off for programs that want the stored bytes.
- **Cancellation**: the query carries the same log_comment tag as every
  guarded query (engine.query.query_tag), so `engine.query.cancel` with the
  principal and query id kills it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import zstandard
from clickhouse_connect.driver.exceptions import ClickHouseError

from cdrhouse.engine import query as q
from cdrhouse.engine.db import Database
from cdrhouse.sql.archive import with_archive
from cdrhouse.sql.limits import limits_for
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import ViewRequest, compile_view

#: About how many bytes each chunk of a download holds.
CHUNK_BYTES = 256 * 1024
#: Lines held back while deciding whether they are a ClickHouse exception block.
_MAX_HELD_BYTES = 1024 * 1024

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXCEPTION_MARK = b"__exception__\r\n"
_BLANK_CRLF = b"\r\n"

#: Output settings of every download (see the module docstring). A tuple is one
#: cell (`('a',1)`), not one cell per element: the header has one name per column.
CSV_SETTINGS: dict[str, Any] = {
    "format_csv_null_representation": "",
    "output_format_csv_serialize_tuple_into_separate_columns": 0,
}

#: First characters that make a spreadsheet read a cell as a formula (OWASP).
FORMULA_STARTS = "=+-@\t\r"
#: … unless the cell is a signed number or phone number: sign, digits, spaces, dots.
_SIGNED_NUMBER = re.compile(r"[+-][0-9][0-9 .]*\Z")
#: the same two tests for ClickHouse's match() (RE2: `$` is the end of the text)
_SQL_FORMULA_START = r"'^[-=+@\\t\\r]'"
_SQL_SIGNED_NUMBER = r"'^[+-][0-9][0-9 .]*$'"
#: Column types whose CSV cells cannot start a formula: numbers are not text (`-12.5`
#: stays), dates, UUIDs, IPs and enums have fixed shapes, and arrays, maps and tuples
#: (one cell each, CSV_SETTINGS) start with `[`, `{` or `(`.
_SAFE_TYPES = re.compile(r"^(U?Int\d+|Float\d+|BFloat16|Decimal|Date|DateTime|Bool|UUID|IPv[46]"
                         r"|Enum|Array|Map|Tuple|Nested|Nothing|Interval|Point|Ring|Polygon"
                         r"|MultiPolygon|LineString|MultiLineString|Time)")
_STRING_TYPES = re.compile(r"^(String|FixedString)")


def neutralise(text: str) -> str:
    """`text` as a spreadsheet-safe CSV cell (the rule in the module docstring)."""
    text = text.replace("\0", "\ufffd")
    if text[:1] and text[:1] in FORMULA_STARTS and not _SIGNED_NUMBER.match(text):
        return "'" + text
    return text


def _base_type(type_: str) -> str:
    """`type_` without its LowCardinality / Nullable wrappers."""
    while True:
        for wrapper in ("LowCardinality(", "Nullable("):
            if type_.startswith(wrapper) and type_.endswith(")"):
                type_ = type_[len(wrapper):-1]
                break
        else:
            return type_


def safe_text_sql(expr: str, type_: str) -> str:
    """`expr` (of ClickHouse type `type_`) as a spreadsheet-safe CSV value: the rule of
    `neutralise`, in SQL, for text; any other type unchanged."""
    base = _base_type(type_)
    if _SAFE_TYPES.match(base):
        return expr
    if not _STRING_TYPES.match(base):  # Variant, Dynamic, JSON…: their text is what counts
        expr = f"toString({expr})"
    text = f"replaceAll({expr}, '\\0', '\\xEF\\xBF\\xBD')"  # NUL -> U+FFFD
    return (f"if(match({text}, {_SQL_FORMULA_START}) AND NOT match({text}, "
            f"{_SQL_SIGNED_NUMBER}), concat('''', {text}), {text})")


def spreadsheet_safe(sql: str, types: Sequence[str]) -> str:
    """`sql` with every text column neutralised (`safe_text_sql`). Columns are taken
    by position: a result's names may repeat or not be identifiers (the header is ours)."""
    if all(_SAFE_TYPES.match(_base_type(t)) for t in types):
        return sql
    cells = ", ".join(safe_text_sql(f"tupleElement(__row, {i})", t)
                      for i, t in enumerate(types, start=1))
    return f"SELECT {cells}\nFROM (SELECT tuple(*) AS __row FROM (\n{sql}\n))"


class StreamBroken(Exception):
    """The result stream ended in a way that is not a clean end (its text is safe to show)."""


@dataclass(frozen=True)
class Export:
    """A query ready to stream: guarded SQL, its bound parameters and its column names."""

    sql: str
    parameters: dict[str, Any]
    columns: tuple[str, ...]
    #: the UTC bounds a viewer download covers (None: unbounded); (None, None) for user SQL
    applied_range: tuple[datetime | None, datetime | None] = (None, None)
    #: reads archived months too (sql/archive.py): run with the warm limits
    warm: bool = False
    #: ClickHouse types of the columns, when known (user SQL: from DESCRIBE)
    types: tuple[str, ...] | None = None


# -- preparing ----------------------------------------------------------------------

def view_export(principal: Principal, request: ViewRequest, now: datetime,
                archive: Sequence[str] = ()) -> Export:
    """A viewer request as a download: same filters, every row (no page), UTC values.
    `archive`: SELECTs of archived months to read too (sql/archive.py)."""
    if not request.for_download or request.limit is not None:
        request = dataclasses.replace(request, for_download=True, limit=None)
    compiled = compile_view(request, principal, now)
    return Export(with_archive(compiled.sql, archive), dict(compiled.parameters),
                  tuple(compiled.output_columns), compiled.applied_range, bool(archive))


def sql_export(db: Database, principal: Principal, sql: str, params: Mapping[str, Any] | None,
               query_id: str, limit_overrides: Mapping[str, int] | None = None,
               archive: Sequence[str] = ()) -> Export:
    """User SQL as a download (GuardError if refused, QueryFailed if ClickHouse cannot type it)."""
    compiled = q.compile_for(db, sql, principal, params)
    text = with_archive(compiled.sql, archive)
    columns, types = describe(db, principal, text, compiled.parameters, query_id,
                              limit_overrides, warm=bool(archive), user_sql=sql)
    return Export(text, dict(compiled.parameters), columns, warm=bool(archive), types=types)


def column_names(db: Database, principal: Principal, sql: str, parameters: Mapping[str, Any],
                 query_id: str, limit_overrides: Mapping[str, int] | None = None,
                 warm: bool = False, user_sql: str | None = None) -> tuple[str, ...]:
    """The result columns of `sql`, from ClickHouse's analysis of it (nothing is read)."""
    return describe(db, principal, sql, parameters, query_id, limit_overrides, warm, user_sql)[0]


def describe(db: Database, principal: Principal, sql: str, parameters: Mapping[str, Any],
             query_id: str, limit_overrides: Mapping[str, int] | None = None,
             warm: bool = False, user_sql: str | None = None
             ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Names and types of the result columns of `sql` (ClickHouse analyses it, reads
    nothing). `user_sql`: what the user wrote, for error messages about their text."""
    settings = download_settings(principal, query_id, limit_overrides, warm)
    try:
        rows = db.rows(f"DESCRIBE TABLE (\n{sql}\n)", parameters, settings)
    except ClickHouseError as exc:
        raise q.query_failed(exc, settings, sql, user_sql) from None
    return tuple(row[0] for row in rows), tuple(row[1] for row in rows)


def download_settings(principal: Principal, query_id: str,
                      limit_overrides: Mapping[str, int] | None = None,
                      warm: bool = False) -> dict[str, Any]:
    """The ClickHouse settings of a download: the role's limits without the result-rows cap."""
    overrides = dict(limit_overrides or {})
    limits = limits_for(principal.role, warm, **overrides)
    for name in ("max_result_rows", "max_result_bytes"):
        if name not in overrides:
            limits[name] = 0  # 0: no cap (see the module docstring)
    # the tag and output format first, the role's limits and the fixed settings
    # (readonly last) after them
    return {"log_comment": q.query_tag(principal, query_id), **CSV_SETTINGS, **limits}


def settings_clause(settings: Mapping[str, Any]) -> str:
    """`name = value, …` for a SETTINGS clause: names checked, text values quoted."""
    parts = []
    for name, value in settings.items():
        if not _SETTING_NAME.match(name):
            raise ValueError(f"invalid setting name {name!r}")
        if isinstance(value, bool):
            literal = "1" if value else "0"
        elif isinstance(value, int):
            literal = str(value)
        else:
            text = str(value).replace("\\", "\\\\").replace("'", "\\'")
            literal = f"'{text}'"
        parts.append(f"{name} = {literal}")
    return ", ".join(parts)


def with_settings(sql: str, settings: Mapping[str, Any]) -> str:
    """`sql` wrapped so that `settings` apply to all of it (see the module docstring)."""
    return f"SELECT * FROM (\n{sql}\n)\nSETTINGS {settings_clause(settings)}"


def csv_line(values: Sequence[str], raw: bool = False) -> bytes:
    """One CSV line of text values, quoted as ClickHouse's CSVWithNames quotes its header;
    spreadsheet-safe unless `raw` (user SQL chooses the names)."""
    buf = io.StringIO()
    csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n").writerow(
        values if raw else [neutralise(v) for v in values])
    return buf.getvalue().encode()


# -- streaming ----------------------------------------------------------------------

def stop(db: Database, principal: Principal, query_id: str) -> None:
    """Ask ClickHouse to stop the download `query_id` of `principal`, without waiting.

    `engine.query.cancel` waits for the query to end (KILL … SYNC); a download
    whose reader has paused never ends on its own — its output waits for the
    reader — so a waiting kill would hang. Stop it, let the reader see the
    end, close the stream, and only then `cancel` whatever may still run.
    """
    db.command("KILL QUERY WHERE Settings['log_comment'] = {t:String} ASYNC",
               {"t": q.query_tag(principal, query_id)})


def stream_csv(db: Database, principal: Principal, sql: str, parameters: Mapping[str, Any],
               query_id: str, *, columns: Sequence[str] | None = None,
               limit_overrides: Mapping[str, int] | None = None,
               chunk_bytes: int = CHUNK_BYTES, warm: bool = False,
               types: Sequence[str] | None = None, raw: bool = False) -> Iterator[bytes]:
    """The CSV of guarded `sql` (header line, then rows), in chunks of about `chunk_bytes`.

    `sql` must already be guarded for `principal` (view_export / sql_export).
    `columns` names the header; without it the columns are asked of ClickHouse.
    The first chunk comes only once the query has produced rows (or ended):
    QueryFailed before it means nothing was sent; QueryFailed after it means
    the download is incomplete. Closing the iterator early closes the stream;
    the caller cancels the query by its tag if ClickHouse may still run it.
    Text cells and header names are spreadsheet-safe unless `raw` (the module
    docstring); `types` (else asked of ClickHouse) says which columns are text.
    """
    settings = download_settings(principal, query_id, limit_overrides, warm)
    if columns is None or (types is None and not raw):
        described, types = describe(db, principal, sql, parameters, query_id,
                                    limit_overrides, warm)
        columns = described if columns is None else columns
    header = csv_line(columns, raw)
    if not raw:
        sql = spreadsheet_safe(sql, types)
    try:
        with db.stream(with_settings(sql, settings), "CSV", parameters) as source:
            pieces = _chunks(source, chunk_bytes)
            first = next(pieces, b"")
            yield header + first
            yield from pieces
    except q.QueryFailed:
        raise
    except (ClickHouseError, StreamBroken) as exc:
        raise q.query_failed(exc, settings, sql) from None
    except Exception as exc:
        # the HTTP driver's own errors (urllib3, http.client, sockets) for a broken transfer
        if isinstance(exc, OSError) or type(exc).__module__.startswith(("urllib3", "http.")):
            raise q.QueryFailed("the connection to ClickHouse broke during the download") from None
        raise


def _chunks(source: Any, size: int) -> Iterator[bytes]:
    """Chunks of about `size` bytes from what `Database.stream` yields.

    The embedded driver gives a file object (read it in blocks: iterating it
    would read line by line, a byte at a time); the HTTP driver gives the
    response's lines, which are gathered here, exception blocks held back.
    """
    read = getattr(source, "read", None)
    if read is not None:
        carry = b""
        while True:
            block = read(size)
            if not block:
                break
            # end chunks with whole lines, so that a failure after them never
            # leaves half a row in the file
            block = carry + block
            cut = block.rfind(b"\n") + 1
            carry = block[cut:]
            if cut:
                yield block[:cut]
        if carry:
            yield carry
        return
    buf: list[bytes] = []
    n = 0
    for line in _without_exception_block(source):
        buf.append(line)
        n += len(line)
        if n >= size:
            yield b"".join(buf)
            buf, n = [], 0
    if buf:
        yield b"".join(buf)


def _without_exception_block(lines: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of an HTTP result, minus the exception block ClickHouse ends a failed one with.

    After the response has started, a failing query ends the body with
    `\\r\\n__exception__\\r\\n<tag>\\r\\n<message>\\n<size> <tag>\\r\\n__exception__\\r\\n`
    and breaks the transfer, so the driver raises right after those lines.
    From a possible start of such a block (a line `\\r\\n`, which CSV output
    has only inside a quoted text value) lines are held back: if the stream
    then breaks, they were the block and its message is raised; if it goes on
    or ends cleanly, they were data and are passed on in order.
    """
    held: list[bytes] = []
    held_bytes = 0
    it = iter(lines)
    try:
        for line in it:
            if held:
                held.append(line)
                held_bytes += len(line)
                if (len(held) == 2 and line != _EXCEPTION_MARK) or held_bytes > _MAX_HELD_BYTES:
                    # not an exception block after all: pass the lines on, and
                    # look again from the last one
                    last = held.pop()
                    yield from held
                    held, held_bytes = [], 0
                    if last == _BLANK_CRLF:
                        held, held_bytes = [last], len(last)
                    else:
                        yield last
                continue
            if line == _BLANK_CRLF:
                held, held_bytes = [line], len(line)
                continue
            yield line
    except Exception as exc:  # noqa: BLE001 - the driver's error for the broken transfer
        if len(held) >= 2 and held[1] == _EXCEPTION_MARK:
            raise StreamBroken(_exception_text(held)) from exc
        raise
    yield from held


def _exception_text(held: list[bytes]) -> str:
    """The message of a held exception block (between the tag line and the size/tag line)."""
    body = held[3:]
    if body and body[-1] == _EXCEPTION_MARK:
        body = body[:-2]
    text = b"".join(body).decode("utf-8", errors="replace").strip()
    return text or "the query failed"


# -- compression ----------------------------------------------------------------------

#: name → (filename suffix, Content-Type)
COMPRESSIONS: dict[str, tuple[str, str]] = {
    "gzip": (".gz", "application/gzip"),
    "zstd": (".zst", "application/zstd"),
}


class Encoder:
    """Stream compression of a download: `compress` each chunk, `finish` once at the end.

    `flush` makes everything given so far decodable without ending the
    stream: a download that fails is flushed (its `#ERROR:` line readable)
    but never finished, so a decompressor also sees a truncated stream.
    """

    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""

    def finish(self) -> bytes:
        return b""


class _Gzip(Encoder):
    def __init__(self, level: int = 6) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _Zstd(Encoder):
    def __init__(self, level: int = 3) -> None:
        self._z = zstandard.ZstdCompressor(level=level).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


def encoder(compression: str | None) -> Encoder:
    """The encoder for `compression` (None: plain CSV); ValueError for an unknown one."""
    if compression is None:
        return Encoder()
    if compression == "gzip":
        return _Gzip()
    if compression == "zstd":
        return _Zstd()
    raise ValueError(f"compression: use one of {', '.join(COMPRESSIONS)}, not {compression!r}")


def error_line(message: str) -> bytes:
    """The last line of a download that failed: `#ERROR: <message>` on one line."""
    text = " ".join(str(message).split())
    return f"#ERROR: {text}\n".encode()
