"""The audit trail's table: writing records (batched), reading them (scoped), retention.

Records are written to `audit_log` (sql/schema/010_audit.sql), append-only.
Who produces them is not this module's concern: the HTTP service records every
authenticated request in one middleware (api/audit.py), the CLI its changing
commands (api/cli_audit.py). This module holds what both need:

- `Record` and `write` — one INSERT of many rows;
- `AuditWriter` — an in-process buffer flushed by a background thread every
  `flush_seconds` or `batch` records, and once more at `close()`. A request
  only appends to a deque (no I/O, no lock held across I/O), so recording
  costs it microseconds. Chosen over ClickHouse's `async_insert` because that
  is a server feature the embedded engine does not queue for us and each
  request would still pay a round trip; the buffer behaves the same on both
  interfaces. The price: records of the last second are lost if the process
  dies without a clean shutdown (a clean one flushes: `close()`);
- `Scope` / `scope_for` — which rows a principal may read (admins all,
  operators their tenant, customers and carriers their own key's);
- `search` — one page of records, newest first, with filters and a keyset cursor;
- `retention_days` / `set_retention` — the TTL (default 400 days).
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import datetime as dt
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

from cdrhouse.engine import cluster
from cdrhouse.engine.db import Database
from cdrhouse.sql.errors import UserError
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.schema.topology import render_statement

log = logging.getLogger("cdrhouse.audit")

TABLE = "audit_log"
DEFAULT_DAYS = 400
MAX_DAYS = 36500
MAX_LIMIT = 1000


class AuditError(UserError):
    """A request for audit records that cannot be honoured; the message says why."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Record:
    """One audited action. `params` is JSON text already stripped of secrets."""

    action: str
    principal: str = ""
    tenant: str = ""
    key_id: str = ""
    user: str = ""
    channel: str = "api"
    params: str = "{}"
    status: int = 0
    error: str = ""
    rows: int = 0
    bytes: int = 0
    duration_ms: int = 0
    client: str = ""
    peer: str = ""
    time: dt.datetime = field(default_factory=now)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def as_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["time"] = self.time.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")
        # summaries are written as JSON; one that is not (written by another tool) stays text
        with contextlib.suppress(ValueError):
            out["params"] = json.loads(self.params)
        return out


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Record))


def _clip(value: int, top: int) -> int:
    return max(0, min(int(value or 0), top))


def _row(r: Record) -> list:
    return [r.action, r.principal, r.tenant, r.key_id, r.user, r.channel, r.params,
            _clip(r.status, 65535), r.error, _clip(r.rows, 2**63), _clip(r.bytes, 2**63),
            _clip(r.duration_ms, 2**32 - 1), r.client, r.peer, r.time, r.event_id]


def write(db: Database, records: Iterable[Record]) -> int:
    """Insert `records` in one statement; the number written."""
    rows = [_row(r) for r in records]
    if rows:
        db.insert_rows(TABLE, rows, COLUMNS)
    return len(rows)


# -- the buffer -----------------------------------------------------------------------

@dataclass(frozen=True)
class AuditSettings:
    """How the service records: on or off, flush cadence, buffer bound, retention."""

    enabled: bool = True
    #: a flush at least this often…
    flush_seconds: float = 1.0
    #: …or as soon as this many records wait
    batch: int = 1000
    #: records kept while the store cannot be written (then the oldest are dropped, counted)
    max_buffered: int = 200_000
    #: retention in days applied at start-up (None: leave the table's TTL as it is)
    days: int | None = None


class AuditWriter:
    """Records buffered in memory and written in batches by one background thread.

    `add` is what a request calls: an append under a lock held for nanoseconds.
    The thread wakes every `flush_seconds`, or early when `batch` records wait,
    and writes everything buffered in one INSERT on its own client (`connect`),
    so audit writes never take a client from the query pool. A failed write
    keeps the records for the next attempt (bounded by `max_buffered`, oldest
    dropped first and counted in `dropped`). `close()` stops the thread and
    flushes what is left: a clean shutdown loses nothing.
    """

    def __init__(self, connect: Callable[[], Database], settings: AuditSettings = AuditSettings()
                 ) -> None:
        self.settings = settings
        self._connect = connect
        self._db: Database | None = None
        self._buffer: collections.deque[Record] = collections.deque()
        self._lock = threading.Lock()          # the buffer
        self._write_lock = threading.Lock()    # one flush at a time, in order
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._loop, name="cdrhouse-audit", daemon=True)
        self._thread.start()

    def add(self, record: Record) -> None:
        with self._lock:
            self._buffer.append(record)
            over = len(self._buffer) - self.settings.max_buffered
            for _ in range(max(0, over)):
                self._buffer.popleft()
                self.dropped += 1
            full = len(self._buffer) >= self.settings.batch
        if full:
            self._wake.set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def flush(self) -> int:
        """Write everything buffered now (also called by tests and at close); raises if the
        store refuses, keeping the records for the next attempt."""
        with self._write_lock:
            with self._lock:
                batch = list(self._buffer)
                self._buffer.clear()
            if not batch:
                return 0
            try:
                if self._db is None:
                    self._db = self._connect()
                n = write(self._db, batch)
            except BaseException:
                self.failures += 1
                self._discard_client()
                with self._lock:   # back in front, in order, for the next attempt
                    self._buffer.extendleft(reversed(batch))
                raise
            self.written += n
            return n

    def _discard_client(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except Exception:  # noqa: BLE001 - a broken client is being dropped anyway
                log.debug("closing the audit client", exc_info=True)

    def _loop(self) -> None:
        delay = self.settings.flush_seconds
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
                delay = self.settings.flush_seconds
            except Exception:  # noqa: BLE001 - kept and retried; the service goes on
                log.warning("could not write %d audit record(s); retrying", self.buffered,
                            exc_info=True)
                delay = min(30.0, delay * 2)

    def close(self) -> None:
        """Stop the thread and write what is left (a clean shutdown loses nothing)."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - nothing more can be done; say how much is lost
            log.error("audit: %d record(s) could not be written at shutdown", self.buffered,
                      exc_info=True)
        finally:
            self._discard_client()


# -- who sees what --------------------------------------------------------------------

@dataclass(frozen=True)
class Scope:
    """The rows a reader may see: None means no restriction on that column."""

    tenant: str | None = None
    principal: str | None = None
    key_id: str | None = None


def scope_for(principal: Principal, principal_text: str, key_id: str | None) -> Scope:
    """Admins: every record; tenant operators: their tenant's; customers and carriers:
    their own key's (or web user's) — `key_id` None (the CLI acting for them): every
    record of that principal. Fails closed for a role without a rule."""
    role = principal.role
    if role == "admin":
        return Scope()
    if not principal.tenant:
        raise AuditError("this principal has no tenant; it cannot read the audit trail")
    if role == "tenant":
        return Scope(tenant=principal.tenant)
    if role in ("customer", "carrier"):
        return Scope(tenant=principal.tenant, principal=principal_text, key_id=key_id)
    raise AuditError(f"a {role} cannot read the audit trail")


# -- reading --------------------------------------------------------------------------

OUTCOMES = ("ok", "error")
_STATUS = re.compile(r"^[1-5][0-9]{2}$")
_SLUG = re.compile(r"^[a-z][a-z0-9-]{0,63}$")


@dataclass(frozen=True)
class Filters:
    """What a reader asks for, within its scope. Times are UTC; `until` is exclusive.

    `principal` and `action` match exactly, or as a prefix when they end in `*`
    (`tenant:acme/*`, `POST /v1/recalc*`). `outcome` is `ok` (status below 400),
    `error` (400 and above), a status such as `403`, or an error type
    (`forbidden`, `bad-sql`, `sign-in-refused`, …).
    """

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    principal: str | None = None
    action: str | None = None
    outcome: str | None = None
    tenant: str | None = None
    limit: int = 100
    cursor: str | None = None


@dataclass(frozen=True)
class Page:
    records: list[Record]
    next_cursor: str | None


def parse_time(value: str | None, name: str) -> dt.datetime | None:
    """An ISO 8601 date or time (naive = UTC) for the filter `name`."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(f"{name}: not an ISO 8601 date or time: {text!r} "
                         "(e.g. 2026-11-01 or 2026-11-01T08:00:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc)


def _cursor(r: Record) -> str:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    ms = (r.time.astimezone(dt.timezone.utc) - epoch) // dt.timedelta(milliseconds=1)
    return base64.urlsafe_b64encode(f"{ms}:{r.event_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ms, event = text.split(":", 1)
        if not re.fullmatch(r"[0-9a-f]{32}", event):
            raise ValueError(event)
        return int(ms), event
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise AuditError("cursor: not a cursor from a previous page; start without it") from None


def _match(column: str, value: str, name: str, params: dict) -> str:
    if value.endswith("*"):
        params[name] = value[:-1]
        return f"startsWith({column}, {{{name}:String}})"
    params[name] = value
    return f"{column} = {{{name}:String}}"


def _conditions(scope: Scope, f: Filters) -> tuple[list[str], dict]:
    where: list[str] = []
    params: dict = {}
    # the scope first: bound parameters, never text, and AND-ed with whatever is asked
    if scope.tenant is not None:
        where.append("tenant = {s_tenant:String}")
        params["s_tenant"] = scope.tenant
    if scope.principal is not None:
        where.append("principal = {s_principal:String}")
        params["s_principal"] = scope.principal
    if scope.key_id is not None:
        where.append("key_id = {s_key:String}")
        params["s_key"] = scope.key_id
    if f.tenant is not None:
        where.append("tenant = {f_tenant:String}")
        params["f_tenant"] = f.tenant
    if f.since is not None:
        where.append("time >= {f_since:DateTime64(3, 'UTC')}")
        params["f_since"] = f.since
    if f.until is not None:
        where.append("time < {f_until:DateTime64(3, 'UTC')}")
        params["f_until"] = f.until
    if f.principal:
        where.append(_match("principal", f.principal, "f_principal", params))
    if f.action:
        where.append(_match("action", f.action, "f_action", params))
    if f.outcome:
        o = f.outcome.strip()
        if o == "ok":
            where.append("status < 400")
        elif o == "error":
            where.append("status >= 400")
        elif _STATUS.match(o):
            where.append("status = {f_status:UInt16}")
            params["f_status"] = int(o)
        elif _SLUG.match(o):
            where.append("error = {f_error:String}")
            params["f_error"] = o
        else:
            raise AuditError(f"outcome: use ok, error, a status such as 403, or an error type "
                             f"such as forbidden; not {o!r}")
    if f.cursor:
        ms, event = _decode_cursor(f.cursor)
        where.append("(time, event_id) < (fromUnixTimestamp64Milli({c_ms:Int64}, 'UTC'), "
                     "{c_event:String})")
        params.update(c_ms=ms, c_event=event)
    return where, params


def search(db: Database, scope: Scope, f: Filters) -> Page:
    """One page of `scope`'s records matching `f`, newest first."""
    if not 1 <= f.limit <= MAX_LIMIT:
        raise AuditError(f"limit: between 1 and {MAX_LIMIT}, not {f.limit}")
    if f.since and f.until and f.until <= f.since:
        raise AuditError("to: must be after from")
    where, params = _conditions(scope, f)
    sql = (f"SELECT {', '.join(COLUMNS)} FROM {TABLE}"
           + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY time DESC, event_id DESC LIMIT {f.limit + 1}")
    rows = db.rows(sql, params, settings={"readonly": 2, "max_execution_time": 30})
    records = [Record(*row) for row in rows[:f.limit]]
    for r in records:
        if r.time.tzinfo is None:
            r.time = r.time.replace(tzinfo=dt.timezone.utc)
    nxt = _cursor(records[-1]) if len(rows) > f.limit and records else None
    return Page(records, nxt)


# -- retention ------------------------------------------------------------------------

_TTL = re.compile(r"TTL\s+toDateTime\(time\)\s*\+\s*(?:toIntervalDay\((\d+)\)|INTERVAL\s+(\d+)\s+DAY)",
                  re.I)


def retention_days(db: Database) -> int | None:
    """The audit table's TTL in days, as ClickHouse reports it (None: no TTL)."""
    ddl = db.scalar("SELECT create_table_query FROM system.tables WHERE database = {d:String} "
                    "AND name = {t:String}", {"d": db.name, "t": TABLE})
    m = _TTL.search(ddl or "")
    return int(m.group(1) or m.group(2)) if m else None


def check_days(days: int) -> int:
    if not 1 <= int(days) <= MAX_DAYS:
        raise AuditError(f"audit retention: between 1 and {MAX_DAYS} days, not {days}")
    return int(days)


def set_retention(db: Database, days: int) -> bool:
    """Keep audit records `days` days. True when the TTL changed.

    `ALTER TABLE … MODIFY TTL` rewrites the table's TTL and (ClickHouse's default
    `materialize_ttl_after_modify`) recomputes it for the parts already written, as a
    background mutation: a shorter retention removes older records soon, a longer one
    keeps records the old TTL would have removed. Placed like every schema ALTER of a
    small table (the home node, or ON CLUSTER when replicated).
    """
    days = check_days(days)
    if retention_days(db) == days:
        return False
    sql = f"ALTER TABLE {TABLE} MODIFY TTL toDateTime(time) + INTERVAL {days} DAY"
    for st in render_statement(sql, cluster.topology(db), db.name):
        db.command(st.sql)
    return True


__all__ = ["AuditError", "AuditSettings", "AuditWriter", "COLUMNS", "DEFAULT_DAYS", "Filters",
           "Page", "Record", "Scope", "TABLE", "parse_time", "retention_days", "scope_for",
           "search", "set_retention", "write"]
