"""Running scheduled exports and reports: one tick finds what is due and runs it.

`tick(db, store, now)` is the one function the scheduler calls (every minute
inside `cdrhouse serve`, or once from `cdrhouse schedules run-due`): it removes
expired files, then runs every due schedule (engine/schedules.py decides what is
due and holds the rules). Several processes may tick on one store: each run is
claimed in the jobs table first (`schedules.claim_run`), so a slot runs once
and a schedule never runs twice at the same time. That per-run claim, rather than
one lease for the whole tick (engine/leases.py, as tiering, backups and alerts
use), is deliberate: with a lease, one long export on one instance would hold up
every other schedule of every tenant; with claims, the instances share the due
runs between them and each run still happens once.

A run, as the schedule's **owner resolved now** (`schedules.resolve_owner`):

- a saved query is read as its owner may see it (a deleted or no longer visible
  query stops the schedule), compiled exactly as its download endpoint compiles
  it (`GET /v1/cdrs.csv`, `POST /v1/cdrs/search.csv`, `POST /v1/sql.csv`: the
  same `engine.export` plan, guard, limits and spreadsheet-safe cells), with its
  relative range resolved at the run's slot (the cron time, UTC: a retry covers
  the same range), and streamed into a temporary file — CSV compressed as it
  streams, or Parquet written by ClickHouse — then uploaded to the archive store
  under `exports/<tenant>/<schedule>/<slot>-<run><ext>`;
- a report (engine/reports.py) covers the UTC day or month before the slot.

A failure is recorded on the run's job (its error first line) and retried after
back-off (1, 5, 25 minutes) — except errors of the request itself (a refused
query, a bad field), which a retry cannot fix: those wait for the next slot.
No outbound calls are made: files go only to the configured archive store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from clickhouse_connect.driver.exceptions import ClickHouseError

from cdrhouse.api.auth import Caller
from cdrhouse.api.deps import to_request
from cdrhouse.api.errors import Problem
from cdrhouse.api.models import SearchBody, SQLBody, ViewParams
from cdrhouse.engine import export
from cdrhouse.engine import jobs as jobs_mod
from cdrhouse.engine import query as q
from cdrhouse.engine import rebalance
from cdrhouse.engine import reports
from cdrhouse.engine import schedules as sched
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database
from cdrhouse.engine.jobs import JobRunner
from cdrhouse.sql.errors import UserError
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import preset_range, resolve_range
from cdrhouse.tiering.reader import WarmReader
from cdrhouse.tiering.store import ObjectStore

log = logging.getLogger("cdrhouse.schedules")

PREFIX = "exports"
DEFAULT_TICK_SECONDS = 60
BODY_MODELS = {"viewer": ViewParams, "search": SearchBody, "sql": SQLBody}
MEDIA_TYPES = {".csv": "text/csv; charset=utf-8", ".csv.gz": "application/gzip",
               ".csv.zst": "application/zstd", ".html": "text/html; charset=utf-8",
               ".html.gz": "application/gzip", ".html.zst": "application/zstd",
               ".parquet": "application/vnd.apache.parquet"}
#: the SQL parameters a schedule's range binds
RANGE_PARAMS = ("range_from", "range_to")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class Stop(Exception):
    """The schedule cannot run any more until its owner changes it (the reason)."""


@dataclass(frozen=True)
class Outcome:
    """What one due schedule came to in a tick."""

    schedule_id: str
    #: succeeded, failed, stopped, or skipped (another process runs it)
    state: str
    job_id: str = ""
    rows: int = 0
    bytes: int = 0
    key: str = ""
    error: str = ""


# -- the tick -----------------------------------------------------------------------------

def tick(db: Database, store: ObjectStore, now: dt.datetime | None = None) -> list[Outcome]:
    """One scheduler step: remove expired files, then run what is due at `now` (UTC)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    expire(db, store, now)
    return run_due(db, store, now)


def run_due(db: Database, store: ObjectStore, now: dt.datetime) -> list[Outcome]:
    """Run every schedule due at `now`, one after another.

    Not while a cluster is being rebalanced (engine/rebalance.py): a moved call is on
    two shards until its copy's source is deleted, and a report would count it twice.
    The due runs are not claimed, so they stay due and run on the first tick after."""
    moving = rebalance.running(db)
    if moving is not None:
        log.info("scheduled runs wait: %s", rebalance.describe(moving))
        return []
    return [run_one(db, store, s, st, now) for s, st in sched.due(db, now)]


def expire(db: Database, store: ObjectStore, now: dt.datetime) -> int:
    """Delete the files past their retention from the store; how many."""
    removed = 0
    for f in sched.expired_files(db, now):
        try:
            store.delete(f.key)
        except Exception:  # noqa: BLE001 - retried on the next tick
            log.warning("could not remove expired export %s", f.key, exc_info=True)
            continue
        sched.mark_removed(db, f)
        removed += 1
    return removed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n")[0] or type(exc).__name__
    return text[:500]


def run_one(db: Database, store: ObjectStore, s: sched.Schedule, st: sched.State,
            now: dt.datetime) -> Outcome:
    """Run the due slot of `s` (claimed first), record it, and move its state on."""
    try:
        principal = sched.resolve_owner(db, s)
    except sched.OwnerGone as exc:
        reason = f"stopped: {exc}"
        sched.save_state(db, sched.stopped(st, reason))
        log.warning("schedule %s %s", s.schedule_id, reason)
        return Outcome(s.schedule_id, "stopped", error=reason)
    job, winner = sched.claim_run(db, sched.create_run(db, s, st))
    if job is None:
        return _lost(db, s, st, now, winner)
    try:
        return _run_claimed(db, store, s, st, now, principal, job)
    finally:
        # if recording the outcome itself failed (the store went away), give up our
        # claim, or this live process would hold the schedule until it exits
        with contextlib.suppress(Exception):
            current = ud.get_job(db, job.job_id)
            if current is not None and current.state == "running":
                jobs_mod.mark_stopped(db, job.job_id, "the run ended without its outcome "
                                                      "being recorded")


def _lost(db: Database, s: sched.Schedule, st: sched.State, now: dt.datetime,
          winner: ud.Job | None) -> Outcome:
    """Another run holds this slot. If it has finished, its process moves the state
    on — unless it died first: then we do (else the slot would stay due for ever)."""
    if winner is None or winner.state not in ("succeeded", "failed"):
        return Outcome(s.schedule_id, "skipped")
    params = winner.params if isinstance(winner.params, dict) else {}
    if (params.get("slot"), params.get("attempt")) != (st.slot.isoformat(), st.attempt):
        return Outcome(s.schedule_id, "skipped")
    result = winner.result if isinstance(winner.result, dict) else {}
    retry = not ("retry_at" in result and result["retry_at"] is None)
    sched.save_state(db, sched.advanced(s, st, now, job_id=winner.job_id,
                                        error=winner.error if winner.state == "failed" else "",
                                        retry=retry))
    return Outcome(s.schedule_id, "skipped", winner.job_id, error=winner.error)


def _run_claimed(db: Database, store: ObjectStore, s: sched.Schedule, st: sched.State,
                 now: dt.datetime, principal: Principal, job: ud.Job) -> Outcome:
    try:
        # a rebalance that started after `run_due` looked: it refuses to start while
        # this run is live, so one of the two sees the other; this one is retried
        busy = rebalance.refusal(db)
        if busy is not None:
            raise RuntimeError(busy)
        made = produce(db, store, s, principal, st.slot, job.job_id)
    except Stop as exc:
        reason = f"stopped: {exc}"
        ud.update_job(db, job.job_id, state="failed", error=reason)
        sched.save_state(db, sched.stopped(st, reason, job.job_id))
        return Outcome(s.schedule_id, "stopped", job.job_id, error=reason)
    except Exception as exc:  # noqa: BLE001 - recorded on the job; the scheduler goes on
        error = _first_line(exc)
        # errors of the request itself: a retry would fail the same way
        retry = not isinstance(exc, UserError) or isinstance(exc, q.QueryFailed)
        if isinstance(exc, Problem):
            retry = exc.status >= 500
        after = sched.advanced(s, st, now, job_id=job.job_id, error=error, retry=retry)
        ud.update_job(db, job.job_id, state="failed", error=error, result={
            "attempt": st.attempt, "retry_at": after.next_run.isoformat()
            if after.attempt > st.attempt else None})
        sched.save_state(db, after)
        if not isinstance(exc, UserError):
            log.warning("schedule %s run %s failed", s.schedule_id, job.job_id, exc_info=True)
        return Outcome(s.schedule_id, "failed", job.job_id, error=error)
    expires = now + dt.timedelta(days=s.definition.retention_days)
    sched.record_file(db, sched.ExportFile(
        job.job_id, s.schedule_id, s.tenant_id, s.principal, made.key, made.name,
        made.media_type, made.rows, made.bytes, now, expires))
    ud.update_job(db, job.job_id, state="succeeded", result={
        "key": made.key, "file": made.name, "rows": made.rows, "bytes": made.bytes,
        "format": s.definition.format, "range": made.range, "expires_at": expires.isoformat(),
        "download": f"/v1/schedules/{s.schedule_id}/runs/{job.job_id}/file"})
    sched.save_state(db, sched.advanced(s, st, now, job_id=job.job_id))
    return Outcome(s.schedule_id, "succeeded", job.job_id, made.rows, made.bytes, made.key)


# -- producing a file ---------------------------------------------------------------------

@dataclass(frozen=True)
class Made:
    key: str
    name: str
    media_type: str
    rows: int
    bytes: int
    #: the UTC range the file covers, ISO texts (None: unbounded or not known)
    range: tuple[str | None, str | None] = (None, None)


def file_key(s: sched.Schedule, slot: dt.datetime, job_id: str) -> str:
    tenant = s.tenant_id or "_platform"
    return (f"{PREFIX}/{tenant}/{s.schedule_id}/{slot.strftime('%Y%m%dT%H%M%SZ')}-{job_id}"
            f"{s.definition.extension}")


def file_name(s: sched.Schedule, slot: dt.datetime) -> str:
    stem = _UNSAFE.sub("_", s.name.strip()).strip("_")[:80] or "export"
    return f"{stem}-{slot.strftime('%Y%m%dT%H%MZ')}-utc{s.definition.extension}"


def produce(db: Database, store: ObjectStore, s: sched.Schedule, principal: Principal,
            slot: dt.datetime, job_id: str) -> Made:
    """Write the file of `s` for `slot`, as `principal`, to `store`."""
    d = s.definition
    key, name = file_key(s, slot, job_id), file_name(s, slot)
    media = MEDIA_TYPES[d.extension]
    if d.report is not None:
        period = reports.period_of(d.report, None, slot)
        report = reports.usage_report(db, principal, period, customer=d.customer,
                                      carrier=d.carrier, now=slot, label=s.principal)
        data = reports.to_html(report) if d.format == "html" else reports.to_csv(report)
        enc = export.encoder(d.compression)
        data = enc.compress(data) + enc.finish()
        store.put_bytes(key, data)
        return Made(key, name, media, len(report.rows), len(data),
                    (period.start.isoformat(), period.end.isoformat()))
    plan = plan_query(db, store, s, principal, slot)
    qid = uuid.uuid4().hex
    fd, path = tempfile.mkstemp(prefix="cdrhouse-export-", suffix=d.extension)
    try:
        with os.fdopen(fd, "wb") as out:
            if d.format == "parquet":
                _write_parquet(db, principal, plan, qid, d.compression or "zstd", out)
                rows = -1
            else:
                rows = _write_csv(db, principal, plan, qid, d, out)
        if rows < 0:
            import pyarrow.parquet as pq
            rows = pq.read_metadata(path).num_rows
        size = os.path.getsize(path)
        store.put_file(key, path)
    finally:
        os.unlink(path)
    frm, to = plan.applied_range
    return Made(key, name, media, rows, size,
                (frm.isoformat() if frm else None, to.isoformat() if to else None))


def _body(s: sched.Schedule, db: Database) -> tuple[ud.SavedQuery, Any]:
    qid = s.definition.query_id or ""
    saved = ud.visible_query(db, s.principal, qid)
    if saved is None:
        raise Stop(f"the saved query {qid} was deleted or is no longer visible to its owner")
    try:
        return saved, BODY_MODELS[saved.kind].model_validate(saved.body)
    except Exception as exc:  # noqa: BLE001 - a stored body no longer valid: say so
        raise Stop(f"the saved query {qid} is no longer valid: {_first_line(exc)}") from None


def range_params(name: str, slot: dt.datetime) -> dict[str, str]:
    """`range_from` / `range_to` of preset `name` at `slot` (UTC), as ClickHouse text."""
    start, end = preset_range(name, slot, "UTC")
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    return {"range_from": start.strftime(fmt)[:-3], "range_to": end.strftime(fmt)[:-3]}


def plan_query(db: Database, store: ObjectStore, s: sched.Schedule, principal: Principal,
               slot: dt.datetime) -> export.Export:
    """The saved query of `s` as a download plan for `principal`, its range at `slot`."""
    saved, body = _body(s, db)
    who = Caller(s.owner_key, principal, s.principal)
    warm = WarmReader(store)
    if isinstance(body, SQLBody):
        params = dict(body.params)
        if s.definition.range is not None:
            params.update({k: v for k, v in range_params(s.definition.range, slot).items()
                           if k in params})
        selects = (warm.sources(db, principal.tenant).selects if body.include_archive else ())
        return export.sql_export(db, principal, body.sql, params, uuid.uuid4().hex,
                                 archive=selects)
    if s.definition.range is not None:
        # the schedule's range is a UTC one (the zone only places presets and naive
        # bounds; the file's times are UTC whatever it is)
        body = body.model_copy(update={"range": s.definition.range, "date_from": None,
                                       "date_to": None, "tz": "UTC"})
    rules = body.rules if isinstance(body, SearchBody) else None
    req = to_request(db, who, body, rules, for_download=True)
    selects = (warm.sources(db, principal.tenant, *resolve_range(req, slot)).selects
               if body.include_archive else ())
    return export.view_export(principal, req, slot, selects)


def _write_csv(db: Database, principal: Principal, plan: export.Export, qid: str,
               d: sched.Definition, out) -> int:
    enc = export.encoder(d.compression)
    rows = _RowCounter()
    for chunk in export.stream_csv(db, principal, plan.sql, plan.parameters, qid,
                                   columns=plan.columns, warm=plan.warm, types=plan.types,
                                   raw=d.raw):
        rows.feed(chunk)
        out.write(enc.compress(chunk))
    out.write(enc.finish())
    return max(rows.lines - 1, 0)  # the header is a line


class _RowCounter:
    """CSV records in a byte stream: newlines outside quoted fields (a quote inside a
    field is doubled, so the running parity of quotes says whether we are inside one)."""

    def __init__(self) -> None:
        self.lines = 0
        self._inside = False

    def feed(self, chunk: bytes) -> None:
        if b'"' not in chunk and not self._inside:
            self.lines += chunk.count(b"\n")
            return
        parts = chunk.split(b"\n")
        for part in parts[:-1]:
            if part.count(b'"') % 2:
                self._inside = not self._inside
            if not self._inside:
                self.lines += 1
        if parts[-1].count(b'"') % 2:
            self._inside = not self._inside


def _write_parquet(db: Database, principal: Principal, plan: export.Export, qid: str,
                   compression: str, out) -> None:
    settings = {**export.download_settings(principal, qid, None, plan.warm),
                "output_format_parquet_compression_method": compression}
    for name in export.CSV_SETTINGS:
        settings.pop(name, None)
    try:
        with db.stream(export.with_settings(plan.sql, settings), "Parquet",
                       plan.parameters) as chunks:
            for chunk in chunks:
                out.write(chunk)
    except ClickHouseError as exc:
        raise q.query_failed(exc, settings, plan.sql) from None


# -- inside `cdrhouse serve` ------------------------------------------------------------------

def start_scheduler(database: Callable[[], AbstractContextManager[Database]],
                    store: ObjectStore, runner: JobRunner | None = None,
                    tick_seconds: float = DEFAULT_TICK_SECONDS) -> BackgroundScheduler:
    """Tick every `tick_seconds` in a background thread; stop it with `.shutdown()`.

    `max_instances=1` and `coalesce`: a slow tick is never overlapped by the next
    one in this process (the jobs table keeps other processes apart). With a
    `runner` (the service's) each tick runs on it, so shutdown waits for it.
    """
    def body() -> None:
        try:
            with database() as db:
                for o in tick(db, store):
                    log.info("scheduled export %s: %s%s", o.schedule_id, o.state,
                             f" ({o.error})" if o.error else f", {o.rows} rows" if o.job_id else "")
        except Exception:  # noqa: BLE001 - keep the scheduler alive; the next tick retries
            log.exception("schedule tick failed")

    def run() -> None:
        if runner is None:
            body()
            return
        try:
            runner.submit("schedules-tick", body).wait()
        except RuntimeError as exc:  # shutting down
            log.warning("schedule tick not started: %s", exc)

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(run, IntervalTrigger(seconds=tick_seconds, timezone="UTC"),
                      id="schedules", max_instances=1, coalesce=True,
                      misfire_grace_time=int(max(tick_seconds, 1)))
    scheduler.start()
    return scheduler
