"""Ingest CDR files into the hot table: validate, convert, deduplicate, set-based in ClickHouse.

A format adapter (engine.formats) turns a file into batches of raw values. For
each batch this module:

1. stages the raw values in a scratch Memory table;
2. converts every field in one INSERT … SELECT into a second scratch table,
   computing for each row either its typed values or the reason it cannot be
   used (`reason`): parsing, time zones, derived fields and account
   resolution are all ClickHouse expressions, so a million rows cost one
   query, whatever the format;
3. writes the usable rows that are not already stored (same tenant and
   call_id) to `cdr_records`, once each;
4. appends the rejected rows, with their line number and reason, to the
   reject file.

Nothing already stored is changed: duplicates are skipped, not replaced, so
ingesting the same file twice leaves every query result as it was.

Steps 1-2 (and 4) of batch N+1 run while step 3 of batch N writes, on a second
client of the same store: the write is the costliest step and leaves a core
idle on its own. Writes stay one after another, in file order, so each batch's
duplicate check sees every earlier batch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa

from cdrhouse.sql.errors import UserError
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import ratecards, rating, rebalance
from cdrhouse.engine.db import Database
from cdrhouse.engine.formats import detect
from cdrhouse.engine.formats.base import LINE, FormatError, RawBatch, RawReject
from cdrhouse.sql import catalogue
from cdrhouse.sql import ingest as conversion

#: Columns written to cdr_records besides the catalogue fields.
_INTERNAL = ("version", "source")


class IngestError(UserError):
    """The ingest request itself is wrong (unknown zone, unknown default account…)."""


@dataclass(frozen=True)
class IngestOptions:
    tenant: str
    format: str = "auto"
    source_tz: str = "UTC"
    default_customer: str | None = None
    default_carrier: str | None = None
    create_accounts: bool = False
    batch_rows: int = 500_000
    #: price every call from the rate cards, replacing charges that came with the CDR
    reprice: bool = False


@dataclass
class FileReport:
    path: Path
    format: str
    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    created_accounts: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Where the file itself is broken ("line N: why"): its good rows are stored,
    #: these lines are in the reject file, and the CLI ends with exit 2.
    damage: list[str] = field(default_factory=list)

    @property
    def usable(self) -> int:
        return self.accepted + self.duplicates


Progress = Callable[[int], None]


# -- running it ---------------------------------------------------------------------

def _check_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise IngestError(f"unknown time zone {name!r}: use an IANA name such as "
                          "Europe/Berlin or UTC") from None
    return name


def _account_id(db: Database, tenant: str, kind: str, code: str | None) -> int:
    if not code:
        return 0
    found = acc.find(db, tenant, kind, code)
    if not found:
        raise IngestError(f"--{kind} {code!r}: no such {kind} in tenant {tenant!r} "
                          "(add it with `cdrhouse accounts add`)")
    return found.account_id


class _RejectWriter:
    """Appends rejected rows to a CSV file, created on the first reject."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._fh = None
        self._writer = None

    def write(self, source: Path, line: int, reason: str, record: str) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._fh)
            self._writer.writerow(["file", "line", "reason", "record"])
        self._writer.writerow([str(source), line, reason, record])
        self.count += 1

    def close(self) -> None:
        if self._fh:
            self._fh.close()


# -- scratch tables and their owners -------------------------------------------------
#
# Each batch lives in Memory tables named `_ingest_<kind>_<host>_<pid>_<start>_<rand>`:
# the owner's host (a hash of its name), process id and process start time (so a
# reused pid is not mistaken for the owner). A killed ingest cannot drop its own
# tables, so every Ingestor drops, when it starts, the ones whose owner is gone
# (`drop_stale_scratch`). The name is the registry: nothing else to keep in sync.

_SCRATCH_RE = re.compile(r"^_ingest_(?:stage|norm|known)_([0-9a-f]{8})_(\d+)_(\d+)_[0-9a-f]{8}$")
#: Scratch tables of another host (whose processes cannot be seen from here), and
#: tables named before owners were recorded, are stale after this long: no
#: batch takes a day.
FOREIGN_SCRATCH_MAX_AGE = 24 * 3600
_HOST = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()
#: Scratch suffixes in use by Ingestors of this process.
_LIVE: set[str] = set()
_LIVE_LOCK = threading.Lock()


def _process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None if there is none.

    Without /proc (not Linux) the start is 0 for any live process: liveness alone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0
        return 0
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])    # field 22, after the command name


def _owner() -> str:
    return f"{_HOST}_{os.getpid()}_{_process_start(os.getpid()) or 0}"


def scratch_is_stale(name: str, age_seconds: int) -> bool:
    """Whether a scratch table's owner is gone (see the comment above)."""
    m = _SCRATCH_RE.match(name)
    if m is None or m.group(1) != _HOST:
        return age_seconds > FOREIGN_SCRATCH_MAX_AGE
    pid, start = int(m.group(2)), int(m.group(3))
    if pid == os.getpid() and start == (_process_start(pid) or 0):
        with _LIVE_LOCK:    # this process's own: stale unless an Ingestor uses it
            return not any(name.endswith(suffix) for suffix in _LIVE)
    return _process_start(pid) != start


def drop_stale_scratch(db: Database) -> list[str]:
    """Drop the scratch tables left by ingests that died (kill -9, power loss…)."""
    rows = db.rows("SELECT name, dateDiff('second', metadata_modification_time, now()) "
                   "FROM system.tables WHERE database = currentDatabase() "
                   "AND startsWith(name, '_ingest_')")
    stale = [name for name, age in rows if scratch_is_stale(name, int(age))]
    for name in stale:
        db.command(f"DROP TABLE IF EXISTS `{name}`")
    return stale


@dataclass(frozen=True)
class _Scratch:
    """The Memory tables of one batch: raw values, converted rows, call ids already stored."""
    suffix: str

    @classmethod
    def new(cls) -> _Scratch:
        scratch = cls(f"{_owner()}_{uuid.uuid4().hex[:8]}")
        with _LIVE_LOCK:
            _LIVE.add(scratch.suffix)
        return scratch

    def release(self) -> None:
        with _LIVE_LOCK:
            _LIVE.discard(self.suffix)

    @property
    def stage(self) -> str:
        return f"_ingest_stage_{self.suffix}"

    @property
    def norm(self) -> str:
        return f"_ingest_norm_{self.suffix}"

    @property
    def known(self) -> str:
        return f"_ingest_known_{self.suffix}"

    @property
    def tables(self) -> tuple[str, ...]:
        return self.stage, self.norm, self.known


class Ingestor:
    """Ingests files for one tenant into one store; one instance per command."""

    def __init__(self, db: Database, options: IngestOptions, rejects_path: Path) -> None:
        self.db = db
        self.options = options
        acc.check_tenant(options.tenant)
        _check_zone(options.source_tz)
        self.default_customer = _account_id(db, options.tenant, "customer", options.default_customer)
        self.default_carrier = _account_id(db, options.tenant, "carrier", options.default_carrier)
        #: Scratch tables of earlier ingests that died, dropped now.
        self.dropped_scratch = drop_stale_scratch(db)
        self.rejects = _RejectWriter(rejects_path)
        self.version = time.time_ns()
        # Calls are priced on the way in when the tenant has rate cards (engine.rating):
        # sides that arrive without charges, or every side with `reprice`.
        self.carded = {f"{kind}_carded": ratecards.accounts_with_cards(db, options.tenant, kind)
                       for kind in acc.KINDS}
        # The writes run on their own client, in one background thread (see the
        # module docstring); opened on the first write.
        self._writer_db: Database | None = None
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdrhouse-ingest-write")

    def close(self) -> None:
        self._writes.shutdown(wait=True)
        if self._writer_db is not None:
            self._writer_db.close()
            self._writer_db = None
        self.rejects.close()

    def ingest(self, path: Path, progress: Progress | None = None,
               on_detect: Callable[[str], None] | None = None) -> FileReport:
        started = time.monotonic()
        busy = rebalance.refusal(self.db)   # a cluster's shards are being re-placed
        if busy is not None:
            raise IngestError(f"{path}: not ingested: {busy}")
        reader = detect.reader_for(path, self.options.format)
        if on_detect:
            on_detect(reader.name)
        report = FileReport(path=path, format=reader.name)
        writing: tuple[Future, int] | None = None     # the write in flight, bytes read when done
        try:
            for batch in reader.read(path, self.options.batch_rows, self.options.source_tz):
                prepared = self._prepare(path, batch, report)
                try:
                    self._finish(writing, report, progress)
                except BaseException:
                    self._drop(prepared)
                    raise
                writing = None if prepared is None else (
                    self._writes.submit(self._write, self._writer(), prepared, reader.name),
                    batch.bytes_read)
                if prepared is None and progress:
                    progress(batch.bytes_read)
            self._finish(writing, report, progress)
        finally:
            if writing is not None:  # on an error, let the write in flight end first
                writing[0].exception()
        report.seconds = time.monotonic() - started
        return report

    @staticmethod
    def _finish(writing: tuple[Future, int] | None, report: FileReport,
                progress: Progress | None) -> None:
        """Wait for a batch's write, if any; count its rows (raises what the write raised)."""
        if writing is None:
            return
        future, bytes_read = writing
        accepted, duplicates = future.result()
        report.accepted += accepted
        report.duplicates += duplicates
        if progress:
            progress(bytes_read)

    def _writer(self) -> Database:
        if self._writer_db is None:
            self._writer_db = Database(self.db.config, create=False)
        return self._writer_db

    def _params(self) -> dict:
        custs = acc.list_accounts(self.db, self.options.tenant, "customer")
        carrs = acc.list_accounts(self.db, self.options.tenant, "carrier")
        return {
            "tenant": self.options.tenant,
            "source_tz": self.options.source_tz,
            "cust_codes": [a.code for a in custs], "cust_ids": [a.account_id for a in custs],
            "cust_currencies": [a.currency for a in custs],
            "carr_codes": [a.code for a in carrs], "carr_ids": [a.account_id for a in carrs],
            "default_customer": self.default_customer, "default_carrier": self.default_carrier,
        }

    def _prepare(self, path: Path, batch: RawBatch, report: FileReport) -> _Scratch | None:
        """Stage and convert a batch and write its rejects; None if nothing is left to store."""
        for rej in batch.rejects:
            self.rejects.write(path, rej.line, rej.reason, rej.raw)
            if rej.damage:
                report.damage.append(f"line {rej.line}: {rej.reason}")
        report.rejected += len(batch.rejects)
        report.read += len(batch.rejects) + batch.table.num_rows
        if batch.table.num_rows == 0:
            return None
        scratch = _Scratch.new()
        table, staged = _stage_table(batch.table)
        try:
            self.db.command(f"CREATE TABLE {scratch.stage} ({_stage_columns(table)}) ENGINE = Memory")
            self.db.insert_arrow(scratch.stage, table)
            if self.options.create_accounts:
                report.created_accounts += self._create_accounts(scratch.stage, staged)
            norm_cols = ", ".join(f"{f.name} {f.ch_type}" for f in catalogue.FIELDS)
            self.db.command(f"CREATE TABLE {scratch.norm} ({norm_cols}, {LINE} Int64, reason String) "
                            "ENGINE = Memory")
            self.db.command(conversion.conversion_sql(staged, scratch.norm, scratch.stage), self._params())
            self._write_rejects(path, scratch.stage, scratch.norm, report)
            self.db.command(f"DROP TABLE IF EXISTS {scratch.stage}")
        except BaseException:
            self._drop(scratch)
            raise
        return scratch

    def _drop(self, scratch: _Scratch | None, db: Database | None = None) -> None:
        if scratch is not None:
            for table in scratch.tables:
                (db or self.db).command(f"DROP TABLE IF EXISTS {table}")
            scratch.release()

    def _write(self, db: Database, scratch: _Scratch, fmt: str) -> tuple[int, int]:
        """Store a prepared batch (in the write thread); (accepted, duplicates)."""
        try:
            return self._store(db, scratch, fmt)
        finally:
            self._drop(scratch, db)

    def _create_accounts(self, stage: str, staged: dict[str, str]) -> list[str]:
        created = []
        for kind in acc.KINDS:
            col = f"{kind}_code"
            if col not in staged:
                continue
            codes = [r[0] for r in self.db.rows(
                f"SELECT DISTINCT {conversion.clean('r_' + col)} AS c FROM {stage} WHERE c IS NOT NULL")]
            valid = [c for c in codes if acc.ACCOUNT_CODE.match(c)]
            for new in acc.ensure_accounts(self.db, self.options.tenant, kind, valid):
                created.append(f"{kind} {new.code} (id {new.account_id})")
        return created

    def _write_rejects(self, path: Path, stage: str, norm: str, report: FileReport) -> None:
        bad = self.db.rows(f"SELECT {LINE}, reason FROM {norm} WHERE reason != '' ORDER BY {LINE}")
        if not bad:
            return
        raw = self.db.query(
            f"SELECT * FROM {stage} WHERE {LINE} IN (SELECT {LINE} FROM {norm} WHERE reason != '')")
        names = [n for n in raw.column_names]
        by_line = {}
        for row in raw.result_rows:
            rec = dict(zip(names, row))
            line = rec.pop(LINE)
            by_line[line] = json.dumps(
                {k[2:]: _jsonable(v) for k, v in rec.items() if v is not None}, ensure_ascii=False)
        for line, reason in bad:
            self.rejects.write(path, line, reason, by_line.get(line, ""))
        report.rejected += len(bad)

    def _store(self, db: Database, scratch: _Scratch, fmt: str) -> tuple[int, int]:
        norm, known = scratch.norm, scratch.known
        # A stored call with the same call_id within two days of the batch is the
        # same call (two days covers a file re-read with another --source-tz).
        bounds = db.rows(f"SELECT min(start_time), max(start_time), count(), "
                              f"uniqExact(cityHash64(call_id)) FROM {norm} WHERE reason = ''")
        lo, hi, valid, distinct_hashes = bounds[0]
        if not valid:
            return 0, 0
        # A call appearing twice in the batch keeps its first line; the rest
        # are duplicates. (Found by a GROUP BY rather than a sort of the batch:
        # usually there are none, and then the insert below streams in parallel.)
        # (Distinct hashes prove distinct ids, so the exact check runs only when needed.)
        later = [] if distinct_hashes == valid else [int(x) for (x,) in db.rows(
            f"SELECT arrayJoin(arraySlice(arraySort(groupArray({LINE})), 2)) FROM {norm} "
            "WHERE reason = '' GROUP BY call_id HAVING count() > 1")]
        # The batch's call ids already stored, looked up once into a scratch table
        # (the count and the insert below both need them; the lookup reads the
        # tenant's call ids over the batch's time range, the costly part).
        # The set built is the batch's own ids (bounded), not the stored table.
        db.command(f"CREATE TABLE {known} (call_id String) ENGINE = Memory")
        db.command(
            f"INSERT INTO {known} SELECT DISTINCT call_id FROM cdr_records "
            "WHERE tenant_id = {tenant:String}"
            "  AND start_time BETWEEN {lo:DateTime64(3, 'UTC')} - INTERVAL 2 DAY"
            "  AND {hi:DateTime64(3, 'UTC')} + INTERVAL 2 DAY"
            f"  AND call_id IN (SELECT call_id FROM {norm} WHERE reason = '')",
            {"tenant": self.options.tenant, "lo": lo, "hi": hi})
        fresh = (
            f"SELECT * FROM {norm} WHERE reason = ''"
            + (f" AND {LINE} NOT IN {{later:Array(Int64)}}" if later else "")
            + f" AND call_id NOT IN (SELECT call_id FROM {known})")
        params = {"tenant": self.options.tenant, "lo": lo, "hi": hi, "later": later,
                  "version": self.version, "source": fmt}
        # (usually nothing is stored yet: then the count needs no pass over the batch)
        stored = int(db.scalar(f"SELECT count() FROM {known}"))
        accepted = (int(valid) - len(later) if not stored
                    else int(db.scalar(f"SELECT count() FROM ({fresh})", params)))
        if accepted:
            cols = ", ".join(catalogue.NAMES)
            rows = fresh
            if any(self.carded.values()):
                cols = ", ".join(rating.RATED_COLUMNS)
                rows = rating.rated_select(
                    f"SELECT *, CAST(NULL, 'Nullable(UInt32)') AS customer_billsec, "
                    f"'' AS rating_status FROM ({fresh})",
                    # (in fill mode only calls missing a charge need a rate looked up)
                    f"SELECT call_id, customer_id, carrier_id, dst_number, start_time "
                    f"FROM {norm} WHERE reason = ''"
                    + ("" if self.options.reprice else
                       " AND (customer_charge IS NULL OR carrier_cost IS NULL)"),
                    "reprice" if self.options.reprice else "fill")
                params.update(self.carded)
            db.command(
                f"INSERT INTO cdr_records ({cols}, version, source) "
                f"SELECT {cols}, {{version:UInt64}}, {{source:String}} FROM ({rows})", params,
                settings={
                    # rows are deduplicated above, so skip the insert-time merge; two
                    # threads halve the write on two cores (measured 1.2 -> 0.6 s per 500k)
                    "optimize_on_insert": 0, "max_insert_threads": 2,
                    # every block also goes to the daily summary's view and the
                    # time-ordered copy's (schema 016): pushed to the views in parallel,
                    # not one after the other (1M rows, 2 runs each: Parquet 118-126k ->
                    # 131-142k rows/s, CSV 105-116k -> 115-131k)
                    "parallel_view_processing": 1,
                    # the number text indexes (schema 005) are built when parts merge,
                    # not per insert: the first merge rebuilds them anyway, so building
                    # them here was duplicate work (A/B, 2.86M-row file, 3 runs each:
                    # 13.9-14.3 s -> 12.9-13.9 s). Until its first merge a fresh part
                    # is searched by scanning, which is exact and cheap for a small
                    # part (tests/test_physical.py checks results on such parts).
                    "materialize_skip_indexes_on_insert": 0})
        return accepted, int(valid) - accepted


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (str, int, float)) or value is None:
        return value
    return str(value)


def _stage_table(table: pa.Table) -> tuple[pa.Table, dict[str, str]]:
    """Prefix the batch's columns with r_ and say which are strings or timestamps."""
    staged: dict[str, str] = {}
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if name == LINE:
            cols[LINE] = col
            continue
        staged[name] = _staged_kind(col.type)
        cols[f"r_{name}"] = col
    return pa.table(cols), staged


def _staged_kind(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_decimal(t):
        return "decimal"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return "binary"


def _stage_columns(table: pa.Table) -> str:
    out = []
    for name in table.column_names:
        t = table.schema.field(name).type
        if name == LINE:
            out.append(f"{LINE} Int64")
        elif pa.types.is_timestamp(t):
            out.append(f"{name} Nullable(DateTime64(3, 'UTC'))")
        elif pa.types.is_integer(t):
            out.append(f"{name} Nullable(Int64)")
        elif pa.types.is_floating(t):
            out.append(f"{name} Nullable(Float64)")
        elif pa.types.is_decimal(t):
            out.append(f"{name} Nullable(Decimal({min(t.precision, 76)}, {t.scale}))")
        else:
            out.append(f"{name} Nullable(String)")
    return ", ".join(out)


def ingest_paths(db: Database, paths: Iterable[Path], options: IngestOptions,
                 rejects_path: Path) -> list[FileReport]:
    """Ingest several files (used by the demo and tests; the CLI drives Ingestor itself)."""
    ingestor = Ingestor(db, options, rejects_path)
    try:
        return [ingestor.ingest(p) for p in paths]
    finally:
        ingestor.close()


__all__ = ["FileReport", "FormatError", "IngestError", "IngestOptions", "Ingestor",
           "RawReject", "ingest_paths"]
