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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cdrhouse.engine.formats.base import (
    ACCOUNT_ALIASES,
    BATCH_ROWS,
    LINE,
    FormatError,
    RawBatch,
    RawReject,
)
from cdrhouse.sql import catalogue

ALLOWED = set(catalogue.NAMES) | set(ACCOUNT_ALIASES)
REQUIRED_ANY = (("call_id",), ("start_time",), ("duration", "end_time"))


def check_columns(path: Path, names: list[str]) -> None:
    """Refuse unknown columns and missing required ones, naming them."""
    unknown = [n for n in names if n not in ALLOWED and n != LINE]
    if unknown:
        raise FormatError(
            f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; "
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


def _with_lines(table: pa.Table, first_line: int,
                skipped: list[int] | None = None) -> pa.Table:
    """Number the rows from `first_line`, stepping over lines already rejected."""
    n = table.num_rows
    candidates = np.arange(first_line, first_line + n + len(skipped or ()), dtype=np.int64)
    if skipped:
        candidates = candidates[~np.isin(candidates, np.asarray(skipped, dtype=np.int64))]
    return table.append_column(LINE, pa.array(candidates[:n], type=pa.int64()))


def _header(line: str, delimiter: str) -> list[str]:
    """Column names of a header line, quoted or not."""
    row = next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter), [])
    return [name.strip() for name in row]


class DelimitedReader:
    """CSV or TSV with a header line of catalogue names."""

    def __init__(self, name: str, delimiter: str) -> None:
        self.name = name
        self.delimiter = delimiter

    def read(self, path: Path, batch_rows: int = BATCH_ROWS,
             source_tz: str = "UTC") -> Iterator[RawBatch]:
        with open(path, "rb") as fh:
            header = fh.readline().decode("utf-8-sig", errors="replace")
        names = _header(header, self.delimiter)
        check_columns(path, names)
        rejects: list[RawReject] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            line = row.number if row.number is not None else -1
            rejects.append(RawReject(line, f"expected {row.expected_columns} columns, "
                                           f"found {row.actual_columns}", row.text))
            return "skip"

        # Every column is read as bytes: a value that is not valid UTF-8 must
        # reject (or be repaired in) one row, not abort the whole file.
        read_opts = pacsv.ReadOptions(column_names=names, skip_rows=1,
                                      block_size=8 << 20, use_threads=False)
        parse_opts = pacsv.ParseOptions(delimiter=self.delimiter,
                                        invalid_row_handler=on_invalid,
                                        newlines_in_values=False)
        conv_opts = pacsv.ConvertOptions(column_types={n: pa.binary() for n in names},
                                         strings_can_be_null=False, quoted_strings_can_be_null=False)
        try:
            fh = pa.OSFile(str(path), "rb")
            stream = pacsv.open_csv(fh, read_options=read_opts, parse_options=parse_opts,
                                    convert_options=conv_opts)
        except pa.ArrowInvalid as exc:
            raise FormatError(f"{path}: not a readable {self.name.upper()} file: {exc}") from None
        # Line numbers: header is line 1; a skipped invalid row shifts the rest,
        # so count rows seen (kept + rejected) to keep numbers honest.
        next_line = 2
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        with fh:
            for batch in stream:
                pending.append(batch)
                pending_rows += batch.num_rows
                if pending_rows >= batch_rows:
                    table = pa.Table.from_batches(pending)
                    out = _with_lines(_stage_types(table, source_tz), next_line,
                                      [r.line for r in rejects])
                    next_line += table.num_rows + len(rejects)
                    yield RawBatch(out, rejects, bytes_read=fh.tell())
                    pending, pending_rows, rejects = [], 0, []
            if pending or rejects:
                table = (pa.Table.from_batches(pending) if pending
                         else pa.table({n: pa.array([], pa.binary()) for n in names}))
                out = _with_lines(_stage_types(table, source_tz), next_line,
                                  [r.line for r in rejects])
                yield RawBatch(out, rejects, bytes_read=fh.tell())


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
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                bytes_read += len(raw)
                text = raw.decode("utf-8", errors="replace").strip()
                if not text:
                    continue
                try:
                    obj = json.loads(text)
                except ValueError as exc:
                    rejects.append(RawReject(lineno, f"invalid JSON: {exc}", text[:500]))
                    continue
                if not isinstance(obj, dict):
                    rejects.append(RawReject(lineno, "expected a JSON object", text[:500]))
                    continue
                if not checked:
                    check_columns(path, list(obj))
                    checked = True
                unknown = [k for k in obj if k not in ALLOWED]
                if unknown:
                    rejects.append(RawReject(lineno, f"unknown field(s) {', '.join(unknown)}",
                                             text[:500]))
                    continue
                n = len(lines)
                for key, value in obj.items():
                    col = columns.setdefault(key, [None] * n)
                    col.append(None if value is None else
                               (value if isinstance(value, str) else json.dumps(value)))
                lines.append(lineno)
                for col in columns.values():
                    if len(col) < len(lines):
                        col.append(None)
                if len(lines) >= batch_rows:
                    yield self._batch(columns, lines, rejects, bytes_read)
                    columns, lines, rejects = {k: [] for k in columns}, [], []
        if not checked and not rejects:
            raise FormatError(f"{path}: no JSON objects found")
        if lines or rejects:
            yield self._batch(columns, lines, rejects, bytes_read)

    @staticmethod
    def _batch(columns: dict[str, list], lines: list[int], rejects: list[RawReject],
               bytes_read: int) -> RawBatch:
        arrays = {k: pa.array([None if v is None else str(v) for v in vals], pa.string())
                  for k, vals in columns.items()}
        arrays[LINE] = pa.array(lines, pa.int64())
        return RawBatch(pa.table(arrays), list(rejects), bytes_read)


class ParquetReader:
    name = "parquet"

    def read(self, path: Path, batch_rows: int = BATCH_ROWS,
             source_tz: str = "UTC") -> Iterator[RawBatch]:
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise FormatError(f"{path}: not a readable Parquet file: {exc}") from None
        names = pf.schema_arrow.names
        check_columns(path, names)
        total_rows = max(pf.metadata.num_rows, 1)
        size = path.stat().st_size
        done = 0
        for batch in pf.iter_batches(batch_size=batch_rows, use_threads=True):
            table = pa.Table.from_batches([batch])
            out = _with_lines(_stage_types(table, source_tz), done + 1)
            done += table.num_rows
            yield RawBatch(out, [], bytes_read=int(size * done / total_rows))


CSV_READER = DelimitedReader("csv", ",")
TSV_READER = DelimitedReader("tsv", "\t")
JSONL_READER = JsonLinesReader()
PARQUET_READER = ParquetReader()


def sniff_delimited(head: bytes) -> str | None:
    """'csv' or 'tsv' when the first line is a header naming call_id and start_time."""
    first = head.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
    for name, delim in (("tsv", "\t"), ("csv", ",")):
        if {"call_id", "start_time"} <= set(_header(first, delim)):
            return name
    return None


def sniff_jsonl(head: bytes) -> bool:
    """JSON lines whose first object has catalogue keys (call_id)."""
    first = head.lstrip().split(b"\n", 1)[0]
    try:
        obj = json.loads(first)
    except ValueError:
        return False
    return isinstance(obj, dict) and "call_id" in obj
