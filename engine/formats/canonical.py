"""cdrhouse's own formats: CSV/TSV with a header of catalogue names, JSON lines, Parquet.

These are read by pyarrow, in C++, batch by batch: this is the volume path
(millions of rows from a billing export), so no Python loop touches rows.
Columns must be catalogue fields or the account aliases `customer_code` /
`carrier_code`; any other column is an error naming it, because a silently
ignored column is a silently lost field.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cdrhouse.engine.formats.base import (
    ACCOUNT_ALIASES,
    BARE_CR,
    BARE_LF,
    BATCH_ROWS,
    LINE,
    MAX_LINE_BYTES,
    DamagedFile,
    FormatError,
    InputStream,
    RawBatch,
    RawReject,
    iter_lines,
    open_input,
    preview,
)
from cdrhouse.sql import catalogue

ALLOWED = set(catalogue.NAMES) | set(ACCOUNT_ALIASES)
REQUIRED_ANY = (("call_id",), ("start_time",), ("duration", "end_time"))


def check_columns(path: Path, names: list[str]) -> None:
    """Refuse unknown columns and missing required ones, naming them."""
    unknown = [n for n in names if n not in ALLOWED and n != LINE]
    if unknown:
        # (bounded: a file of noise must not print itself on the terminal)
        shown = [repr(n if len(n) <= 40 else n[:40] + "…") for n in unknown[:5]]
        if len(unknown) > 5:
            shown.append(f"and {len(unknown) - 5} more")
        raise FormatError(
            f"{path}: unknown column(s) {', '.join(shown)}; "
            f"columns must be catalogue fields (see `cdrhouse fields`) or customer_code/carrier_code")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise FormatError(f"{path}: column(s) {', '.join(dup)} appear more than once")
    for group in REQUIRED_ANY:
        if not any(g in names for g in group):
            raise FormatError(f"{path}: missing required column {' or '.join(group)}")


def _stage_types(table: pa.Table, source_tz: str) -> pa.Table:
    """Normalise column types to what staging takes: text, int64, float64, decimal, UTC timestamps.

    Typed Parquet columns keep their meaning: a timestamp with a zone is an
    instant, a naive one is wall time in the source zone.
    """
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        t = col.type
        if name == LINE:
            cols[name] = col
        elif pa.types.is_timestamp(t):
            if t.tz is None:
                col = pc.assume_timezone(col, source_tz, ambiguous="earliest",
                                         nonexistent="earliest")
            cols[name] = pc.cast(col, pa.timestamp("ms", tz="UTC"))
        elif pa.types.is_date(t):
            cols[name] = pc.cast(pc.assume_timezone(pc.cast(col, pa.timestamp("ms")), source_tz),
                                 pa.timestamp("ms", tz="UTC"))
        elif pa.types.is_dictionary(t):
            cols[name] = pc.cast(col.cast(t.value_type), pa.string())
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            cols[name] = pc.cast(col, pa.string())
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
            cols[name] = col.cast(pa.binary())
        elif pa.types.is_integer(t):
            cols[name] = pc.cast(col, pa.int64())
        elif pa.types.is_floating(t):
            cols[name] = pc.cast(col, pa.float64())
        elif pa.types.is_decimal(t):
            cols[name] = col
        else:
            cols[name] = pc.cast(col, pa.string())
    return pa.table(cols)


def _header(line: str, delimiter: str) -> list[str]:
    """Column names of a header line, quoted or not."""
    try:
        row = next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter), [])
    except csv.Error:
        return [line]
    return [name.strip() for name in row]


def _nth(marks: np.ndarray, n: np.ndarray, first: int) -> np.ndarray:
    """The n-th (0-based) number counting from `first` that is not in sorted `marks`."""
    if not len(marks):
        return n + first
    shifted = marks - np.arange(len(marks), dtype=np.int64) - first
    return n + first + np.searchsorted(shifted, n, side="right")


class _CsvFeed:
    r"""What pyarrow's CSV parser reads: the data lines of a file, made safe to parse.

    pyarrow reads blocks of bytes in C++ and needs every line to fit in a block,
    takes CR, LF and CRLF alike as line ends, and skips blank lines without
    counting them. So the bytes pass through here first, a chunk at a time
    (numpy, no Python loop over lines):

    * the header line is taken off (`header`); the file's first line end decides
      whether lines end in LF/CRLF or, for the whole file, a bare CR;
    * in an LF file a bare CR is data: it becomes a NUL byte, so pyarrow keeps
      the line whole and the reader rejects that row (`bare_cr`);
    * a line longer than MAX_LINE_BYTES is dropped unread and reported as damage;
    * blank and dropped lines are remembered (`blank`) to turn pyarrow's row and
      invalid-row numbers back into the file's line numbers;
    * compressed data that breaks mid-file ends the data at the last whole line
      and is reported as damage on the line it cut.
    """

    def __init__(self, src: InputStream, path: Path, max_line: int = MAX_LINE_BYTES) -> None:
        self.src = src
        self.path = path
        self.max_line = max_line
        self.blank: list[int] = []
        self.damage: list[RawReject] = []
        self.bare_cr = False
        self.closed = False
        self._line = 1               # the last whole line passed on (the header is 1)
        self._out: list[bytes] = []     # bytes ready for pyarrow, joined on read
        self._out_len = 0
        self._carry = b""
        self._skipping = False
        self._eof = False
        self._cut: DamagedFile | None = None
        self.header = self._read_header()

    def _read_header(self) -> bytes:
        buf = b""
        while True:
            chunk = self._raw()
            buf += chunk
            cr, lf = buf.find(b"\r"), buf.find(b"\n")
            ends = [i for i in (cr, lf) if i >= 0]
            if ends:
                end = min(ends)
                if buf[end:end + 1] == b"\r" and end + 1 == len(buf) and chunk:
                    continue                # CR or CRLF: the next byte tells
                self.sep = b"\r" if (end == cr and buf[end + 1:end + 2] != b"\n") else b"\n"
                self._carry = buf[end + (2 if buf[end:end + 2] == b"\r\n" else 1):]
                return buf[:end]
            if len(buf) > self.max_line:
                raise FormatError(f"{self.path}: line 1 is longer than {self.max_line:,} "
                                  "bytes: not a header of field names")
            if not chunk:
                self.sep = b"\n"
                self._eof = True
                return buf

    def _raw(self) -> bytes:
        if self._eof:
            return b""
        try:
            chunk = self.src.read(4 << 20)
        except DamagedFile as exc:
            # The line being read is cut: it is the damage, and the end of the data.
            self._eof = True
            self._cut = exc
            if not hasattr(self, "sep"):
                raise FormatError(f"{exc} (in line 1, the header)") from None
            return b""
        self._eof = not chunk
        return chunk

    def read(self, size: int = -1) -> bytes:
        while (size < 0 or self._out_len < size) and not (self._eof and not self._carry):
            self._feed()
        data = b"".join(self._out)
        if size < 0:
            size = len(data)
        out, rest = data[:size], data[size:]
        self._out, self._out_len = ([rest] if rest else []), len(rest)
        return out

    def _emit(self, data: bytes) -> None:
        if data:
            self._out.append(data)
            self._out_len += len(data)

    def _feed(self) -> None:
        chunk = self._raw()
        data = self._carry + chunk
        self._carry = b""
        sep = self.sep
        partial = None
        if self._eof:
            if self._cut:
                # the last, partial line was cut by the damage: drop it
                cut = data.rfind(sep)
                data, partial = data[:cut + 1], data[cut + 1:]
            elif data and not data.endswith(sep):
                data += sep
        if self._skipping:
            end = data.find(sep)
            if end < 0:                         # still inside the long line
                if self._cut is not None:       # ... and the data breaks off in it
                    self.damage.append(RawReject(self._line, str(self._cut).removeprefix(
                        f"{self.path}: "), "", damage=True))
                    self._cut = None
                return
            self._skipping = False
            self._emit(sep)
            data = data[end + 1:]
        arr = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(arr == sep[0])
        last = int(ends[-1]) + 1 if len(ends) else 0
        if sep == b"\n" and last:
            # (a CR in a whole line always has a next byte: the LF at the latest)
            cr = np.flatnonzero(arr[:last] == 13)
            bare = cr[arr[cr + 1] != 10] if len(cr) else cr
            if len(bare):
                arr = arr.copy()
                arr[bare] = 0
                data = arr.tobytes()
                self.bare_cr = True
        elif last:
            # In a CR file a lone LF is data the same way (a CRLF is still one line
            # end; a line here always starts right after a CR, so index 0 is not lone)
            lf = np.flatnonzero(arr[1:last] == 10) + 1
            bare = lf[arr[lf - 1] != 13] if len(lf) else lf
            if len(bare):
                arr = arr.copy()
                arr[bare] = 0
                data = arr.tobytes()
                self.bare_cr = True
        self._carry = data[last:]
        if len(ends):
            starts = np.concatenate(([0], ends[:-1] + 1))
            lengths = ends - starts
            if sep == b"\n":   # a CRLF line end is not part of the line
                crlf = lengths > 0
                crlf[crlf] = arr[ends[crlf] - 1] == 13
                lengths = lengths - crlf
            else:              # nor, in a CR file, the LF of a CRLF
                lead = lengths > 0
                lead[lead] = arr[starts[lead]] == 10
                lengths = lengths - lead
            numbers = np.arange(self._line + 1, self._line + 1 + len(ends), dtype=np.int64)
            self.blank.extend(numbers[lengths == 0].tolist())
            long = np.flatnonzero(lengths > self.max_line)
            if len(long):
                pieces, at = [], 0
                for i in long.tolist():
                    start, end = int(starts[i]), int(ends[i])
                    pieces += [data[at:start], sep]
                    at = end + 1
                    self._report_long(int(numbers[i]), data[start:end], end - start)
                pieces.append(data[at:last])
                self._emit(b"".join(pieces))
            else:
                self._emit(data[:last])
            self._line += len(ends)
        if partial is not None and self._cut is not None:
            self.damage.append(RawReject(self._line + 1, str(self._cut).removeprefix(
                f"{self.path}: "), preview(partial), damage=True))
            self._carry = b""
            self._cut = None
            return
        if len(self._carry) > self.max_line:
            self._report_long(self._line + 1, self._carry, None)
            self._line += 1
            self._carry = b""
            self._skipping = True

    def _report_long(self, number: int, data: bytes, size: int | None) -> None:
        self.blank.append(number)
        found = f" ({size:,} bytes)" if size is not None else ""
        self.damage.append(RawReject(
            number, f"line is longer than {self.max_line:,} bytes{found}: not a CDR (a "
            "missing line end or a runaway field?); skipped", preview(data), damage=True))

    def take_damage(self) -> list[RawReject]:
        out, self.damage = self.damage, []
        return out

    def close(self) -> None:
        self.closed = True


class DelimitedReader:
    """CSV or TSV with a header line of catalogue names."""

    def __init__(self, name: str, delimiter: str) -> None:
        self.name = name
        self.delimiter = delimiter

    def read(self, path: Path, batch_rows: int = BATCH_ROWS,
             source_tz: str = "UTC") -> Iterator[RawBatch]:
        with open_input(path) as src:
            feed = _CsvFeed(src, path)
            header = feed.header.decode("utf-8", errors="replace").removeprefix("\ufeff")
            if not header.isprintable() and not header.replace("\t", " ").isprintable():
                raise FormatError(f"{path}: not a {self.name.upper()} file: line 1 is not a "
                                  "header of field names (it holds binary data or control "
                                  "characters)")
            names = _header(header, self.delimiter)
            check_columns(path, names)
            yield from self._batches(path, feed, names, batch_rows, source_tz)

    def _batches(self, path: Path, feed: _CsvFeed, names: list[str], batch_rows: int,
                 source_tz: str) -> Iterator[RawBatch]:
        invalid: list[int] = []            # pyarrow's numbers of the rows it skipped
        rejects: list[RawReject] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            invalid.append(row.number)
            text = row.text.replace("\x00", "\r" if feed.sep == b"\n" else "\n")
            rejects.append(RawReject(row.number, f"expected {row.expected_columns} columns, "
                                                 f"found {row.actual_columns}", text))
            return "skip"

        # Every column is read as bytes: a value that is not valid UTF-8 must
        # reject (or be repaired in) one row, not abort the whole file.
        read_opts = pacsv.ReadOptions(column_names=names, block_size=8 << 20,
                                      use_threads=False)
        parse_opts = pacsv.ParseOptions(delimiter=self.delimiter,
                                        invalid_row_handler=on_invalid,
                                        newlines_in_values=False)
        conv_opts = pacsv.ConvertOptions(column_types={n: pa.binary() for n in names},
                                         strings_can_be_null=False, quoted_strings_can_be_null=False)
        try:
            stream = pacsv.open_csv(pa.PythonFile(feed, mode="r"), read_options=read_opts,
                                    parse_options=parse_opts, convert_options=conv_opts)
        except pa.ArrowInvalid as exc:
            raise FormatError(f"{path}: not a readable {self.name.upper()} file: {exc}") from None
        rows_done = 0                       # rows passed on so far (for line numbers)
        pending: list[pa.RecordBatch] = []
        pending_rows = 0

        def flush() -> RawBatch:
            nonlocal rows_done, pending, pending_rows, rejects
            table = (pa.Table.from_batches(pending) if pending
                     else pa.table({n: pa.array([], pa.binary()) for n in names}))
            blank = np.sort(np.asarray(feed.blank, dtype=np.int64))
            marks = np.sort(np.asarray(invalid, dtype=np.int64))
            # row index -> pyarrow's count of non-blank lines -> line in the file
            nth = _nth(marks, np.arange(rows_done, rows_done + table.num_rows,
                                        dtype=np.int64), 1)
            lines = _nth(blank, nth - 1, 2)
            out_rejects = [RawReject(int(_nth(blank, np.asarray([r.line - 1]), 2)[0]),
                                     r.reason, r.raw) for r in rejects]
            rows_done += table.num_rows
            table = table.append_column(LINE, pa.array(lines, type=pa.int64()))
            if feed.bare_cr and table.num_rows:
                table, bad = _split_bare_cr(table, self.delimiter, feed.sep)
                out_rejects += bad
            out = RawBatch(_stage_types(table, source_tz), out_rejects + feed.take_damage(),
                           bytes_read=feed.src.consumed)
            pending, pending_rows, rejects = [], 0, []
            return out

        while True:
            try:
                batch = stream.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                # (the feed keeps lines block-sized, so this is pyarrow refusing
                # something else: report it where the reading stopped)
                feed.damage.append(RawReject(feed._line, f"cannot read the rest of the file: "
                                             f"{exc}", "", damage=True))
                break
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= batch_rows:
                yield flush()
        if pending or rejects or feed.damage:
            yield flush()


def _split_bare_cr(table: pa.Table, delimiter: str,
                   sep: bytes) -> tuple[pa.Table, list[RawReject]]:
    """Take out the rows where a lone CR (LF in a CR file), staged as NUL by _CsvFeed, sits."""
    bad = None
    for name in table.column_names:
        if name == LINE:
            continue
        hit = pc.fill_null(pc.match_substring(table.column(name), "\x00"), False)
        bad = hit if bad is None else pc.or_(bad, hit)
    if bad is None or not pc.any(bad).as_py():
        return table, []
    rows = table.filter(bad).to_pylist()
    rejects = [RawReject(
        row[LINE], BARE_CR if sep == b"\n" else BARE_LF,
        delimiter.join((v or b"").decode("utf-8", errors="replace")
                       for k, v in row.items() if k != LINE).replace("\x00", "\r" if sep == b"\n" else "\n"),
        damage=True) for row in rows]
    return table.filter(pc.invert(bad)), rejects


#: How many leading lines JSON lines may fail to parse before the file is
#: called "not JSON lines" rather than a file with broken lines.
_JSON_PROBE_LINES = 1000


class JsonLinesReader:
    """One JSON object per line, keys are catalogue names."""

    name = "jsonl"

    def read(self, path: Path, batch_rows: int = BATCH_ROWS,
             source_tz: str = "UTC") -> Iterator[RawBatch]:
        # Parsed line by line: a broken line must reject itself, not the file;
        # the stdlib parser is fast enough for what arrives as JSON lines.
        columns: dict[str, list] = {}
        lines: list[int] = []
        rejects: list[RawReject] = []
        checked = False
        bytes_read = 0
        with open_input(path) as src:
            for line in iter_lines(src):
                bytes_read = line.consumed
                if line.problem:
                    rejects.append(RawReject(line.number, line.problem, preview(line.data),
                                             damage=True))
                    continue
                text = line.data.decode("utf-8", errors="replace").removeprefix("\ufeff").strip()
                if not text:
                    continue
                try:
                    obj = json.loads(text)
                except ValueError as exc:
                    rejects.append(RawReject(line.number, f"invalid JSON: {exc}", text[:500]))
                    obj = None
                else:
                    if not isinstance(obj, dict):
                        rejects.append(RawReject(line.number, "expected a JSON object",
                                                 text[:500]))
                        obj = None
                if obj is None:
                    if not checked and len(rejects) >= _JSON_PROBE_LINES:
                        raise FormatError(f"{path}: not JSON lines: none of the first "
                                          f"{len(rejects):,} lines is a JSON object")
                    continue
                if not checked:
                    check_columns(path, list(obj))
                    checked = True
                reason = _object_problem(obj)
                if reason:
                    rejects.append(RawReject(line.number, reason, text[:500]))
                    continue
                n = len(lines)
                for key, value in obj.items():
                    col = columns.setdefault(key, [None] * n)
                    col.append(None if value is None else
                               (value if isinstance(value, str) else json.dumps(value)))
                lines.append(line.number)
                for col in columns.values():
                    if len(col) < len(lines):
                        col.append(None)
                if len(lines) >= batch_rows:
                    yield self._batch(columns, lines, rejects, bytes_read)
                    columns, lines, rejects = {k: [] for k in columns}, [], []
        if not checked:
            if not rejects:
                raise FormatError(f"{path}: no JSON objects found")
            if not any(r.damage for r in rejects):
                raise FormatError(f"{path}: not JSON lines: no line is a JSON object "
                                  f"(line {rejects[0].line}: {rejects[0].reason})")
        if lines or rejects:
            yield self._batch(columns, lines, rejects, bytes_read)

    @staticmethod
    def _batch(columns: dict[str, list], lines: list[int], rejects: list[RawReject],
               bytes_read: int) -> RawBatch:
        arrays = {k: pa.array([None if v is None else str(v) for v in vals], pa.string())
                  for k, vals in columns.items()}
        arrays[LINE] = pa.array(lines, pa.int64())
        return RawBatch(pa.table(arrays), list(rejects), bytes_read)


def _object_problem(obj: dict) -> str | None:
    """Why a JSON object cannot be a row: unknown keys, or an object/array as a value."""
    unknown = [k for k in obj if k not in ALLOWED]
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}"
    nested = [k for k, v in obj.items() if isinstance(v, (dict, list))]
    if nested:
        return "; ".join(f"{k}: a JSON {'object' if isinstance(obj[k], dict) else 'array'} "
                         "where a single value belongs" for k in nested)
    return None


class ParquetReader:
    name = "parquet"

    def read(self, path: Path, batch_rows: int = BATCH_ROWS,
             source_tz: str = "UTC") -> Iterator[RawBatch]:
        try:
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            groups = pf.metadata.num_row_groups
            group_rows = [pf.metadata.row_group(i).num_rows for i in range(groups)]
        except (pa.ArrowException, OSError, ValueError, IndexError) as exc:
            raise FormatError(f"{path}: not a readable Parquet file: {str(exc).strip()}") from None
        check_columns(path, names)
        nested = [f.name for f in pf.schema_arrow if pa.types.is_nested(f.type)]
        if nested:
            raise FormatError(f"{path}: column(s) {', '.join(nested)} hold lists or structs; "
                              "every CDR field takes a single value")
        total_rows = max(sum(group_rows), 1)
        size = path.stat().st_size
        done = 0
        # Row group by row group: a damaged group is one damage reject (its first
        # row number), and the groups around it are still read.
        for group, rows in enumerate(group_rows):
            first = done + 1
            try:
                for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group],
                                             use_threads=True):
                    table = pa.Table.from_batches([batch])
                    table = _stage_types(table, source_tz)
                    table = table.append_column(LINE, pa.array(
                        np.arange(done + 1, done + 1 + table.num_rows, dtype=np.int64)))
                    done += table.num_rows
                    yield RawBatch(table, [], bytes_read=int(size * done / total_rows))
            except (pa.ArrowException, OSError, ValueError) as exc:
                done = first - 1 + rows
                yield RawBatch(pa.table({LINE: pa.array([], pa.int64())}), [RawReject(
                    first, f"Parquet row group {group} (rows {first:,} to {done:,}) is "
                    f"damaged: {exc}", "", damage=True)], bytes_read=int(size * done / total_rows))


CSV_READER = DelimitedReader("csv", ",")
TSV_READER = DelimitedReader("tsv", "\t")
JSONL_READER = JsonLinesReader()
PARQUET_READER = ParquetReader()


def sniff_delimited(head: bytes) -> str | None:
    """'csv' or 'tsv' when the first line is a header naming call_id and start_time."""
    first = re.split(rb"\r|\n", head, maxsplit=1)[0].decode("utf-8-sig", errors="replace")
    for name, delim in (("tsv", "\t"), ("csv", ",")):
        if {"call_id", "start_time"} <= set(_header(first, delim)):
            return name
    return None


def sniff_jsonl(head: bytes) -> bool:
    """JSON lines whose first object has catalogue keys (call_id)."""
    first = re.split(rb"\r|\n", head.lstrip(), maxsplit=1)[0]
    try:
        obj = json.loads(first)
    except ValueError:
        return False
    return isinstance(obj, dict) and "call_id" in obj
