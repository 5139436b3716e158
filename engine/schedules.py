"""Scheduled exports and reports: what is scheduled, when it runs next, who it runs as.

Storage and rules only — SQL through a `Database`, no HTTP and no running of
queries (api/scheduler.py runs them; api/schedules.py is the HTTP side).

- A **schedule** (table `schedules`) belongs to the principal that created it,
  through one credential: an API key id, or `user:<id>` for a portal user
  (`owner_key`). It runs a saved query or a built-in report on a crontab (UTC)
  and writes a file. Only its owner changes it.
- Its **state** (table `schedule_state`) is the scheduler's: the slot (the cron
  time a run belongs to), the next time to act (the slot, or a retry after
  back-off), the attempt, the last job and error, and why it stopped. Kept apart
  so that a user's edit and a run never overwrite each other; an edit (a new
  definition version) restarts the state from the next cron time.
- **Runs as the owner, resolved at run time** (`resolve_owner`): a revoked key, a
  disabled or deleted user, or a deleted account stops the schedule, with the
  reason shown — it never falls back to another identity.
- **One run per slot, across processes** (`claim_run`): a run is a row of
  `jobs` (kind `export`) with (schedule, slot, attempt) in its params; it is
  claimed like every job (`engine.jobs.claim`: running, as ours; of two live
  runs of one schedule the younger steps back), then the (schedule, slot,
  attempt) itself is claimed in `schedule_claims` by insert deduplication, which
  exactly one process wins. So two processes ticking at once run a slot once,
  and a schedule never runs twice at the same time. (Comparing job timestamps
  alone is not enough: a job's time is taken before its row is written, so two
  processes can each miss the other's row; a test caught that.)
- **Files** (table `schedule_files`) expire after the schedule's retention and
  are then removed from the store by the scheduler (`expired_files`).

Crontab: five fields (minute hour day month weekday), UTC, with crontab's
weekday numbers (0 or 7 = Sunday). APScheduler's own numbering starts at Monday,
so numbers are translated to names before it sees them (`parse_cron`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from cdrhouse.engine import accounts as acc
from cdrhouse.engine import jobs as jobs_mod
from cdrhouse.engine import userdata as ud
from cdrhouse.engine import users
from cdrhouse.engine.db import Database
from cdrhouse.sql.errors import UserError
from cdrhouse.sql.principal import Principal, PrincipalRef
from cdrhouse.sql.viewer import PRESETS

JOB_KIND = "export"
FORMATS: tuple[str, ...] = ("csv", "parquet", "html")
COMPRESSIONS: tuple[str, ...] = ("zstd", "gzip")
REPORTS: tuple[str, ...] = ("daily", "monthly")
#: ranges a schedule may impose on its query (resolved at run time, UTC)
RANGES: tuple[str, ...] = (*PRESETS, "all")
DEFAULT_RETENTION_DAYS = 30
MAX_RETENTION_DAYS = 3650
#: attempts per slot (the first run and its retries) and the wait before each retry
MAX_ATTEMPTS = 4
BACKOFF = (dt.timedelta(minutes=1), dt.timedelta(minutes=5), dt.timedelta(minutes=25))
#: when a stopped schedule would run again: never (it waits for its owner's edit)
NEVER = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)


class ScheduleError(UserError):
    """A schedule request that cannot be honoured; the message names what and where."""


class OwnerGone(Exception):
    """The schedule's owner can no longer run anything; the message is the reason shown."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _version(current: int = 0) -> int:
    return max(time.time_ns(), current + 1)


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


# -- crontab ----------------------------------------------------------------------------

_CRON_FIELDS = ("minute", "hour", "day", "month", "weekday")
_TRIGGER_FIELDS = ("minute", "hour", "day", "month", "day_of_week")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_WEEKDAY_PART = re.compile(r"^(\*|\d+)(?:-(\d+))?(?:/(\d+))?$")


def _weekday_names(text: str) -> str:
    """Crontab weekday numbers (0/7 = Sunday) as names, which APScheduler reads the
    same way cron does (its numbers start at Monday)."""
    out: list[str] = []
    for part in text.split(","):
        m = _WEEKDAY_PART.match(part)
        if not m:
            out.append(part)          # names (mon-fri) mean the same to both
            continue
        start, end, step = m.groups()
        if start == "*":
            if end is not None:
                raise ValueError(f"{part!r} is not a weekday range")
            if step is None:
                out.append("*")
                continue
            lo, hi = 0, 6
        else:
            lo = int(start)
            hi = int(end) if end is not None else (6 if step else lo)
        if not (0 <= lo <= 7 and 0 <= hi <= 7) or lo > hi:
            raise ValueError(f"{part!r}: weekdays are 0-7 (0 and 7 are Sunday), low to high")
        days = sorted({d % 7 for d in range(lo, hi + 1, int(step or 1))})
        out.extend(_DAY_NAMES[d] for d in days)
    return ",".join(dict.fromkeys(out))


def parse_cron(text: str) -> CronTrigger:
    """A five-field crontab (UTC) as a trigger; ScheduleError naming the field otherwise."""
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"cron: {text!r} has {len(fields)} field{'s' if len(fields) != 1 else ''}; a crontab "
            "has five: minute hour day month weekday (UTC), e.g. '0 6 * * *' for 06:00 daily")
    values = dict(zip(_TRIGGER_FIELDS, fields))
    try:
        values["day_of_week"] = _weekday_names(values["day_of_week"])
    except ValueError as exc:
        raise ScheduleError(f"cron: weekday {fields[4]!r} is not valid: {exc}") from None
    for name, trig, value in zip(_CRON_FIELDS, _TRIGGER_FIELDS, fields):
        try:
            CronTrigger(**{trig: values[trig]}, timezone="UTC")
        except ValueError as exc:
            raise ScheduleError(f"cron: {name} {value!r} is not valid ({exc})") from None
    try:
        return CronTrigger(**values, timezone="UTC")
    except ValueError as exc:
        raise ScheduleError(f"cron: {text!r} is not valid ({exc})") from None


def next_fire(cron: str, after: dt.datetime) -> dt.datetime:
    """The first cron time strictly after `after` (UTC); NEVER if there is none (Feb 30)."""
    trigger = parse_cron(cron)
    nxt = trigger.get_next_fire_time(None, _utc(after) + dt.timedelta(seconds=1))
    return NEVER if nxt is None else _utc(nxt)


# -- definitions ------------------------------------------------------------------------

@dataclass(frozen=True)
class Definition:
    """What a schedule runs and writes (the `body` column, as JSON)."""

    #: a saved query's id, or None for a report
    query_id: str | None = None
    #: a built-in report: daily or monthly usage
    report: str | None = None
    #: operators: the report or query narrowed to one account (code)
    customer: str | None = None
    carrier: str | None = None
    format: str = "csv"
    compression: str | None = "zstd"
    #: replaces the saved query's range (viewer / builder) or binds its
    #: {range_from}/{range_to} parameters (SQL) — resolved at run time, UTC
    range: str | None = None
    raw: bool = False
    retention_days: int = DEFAULT_RETENTION_DAYS
    enabled: bool = True

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Definition:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def check(self) -> Definition:
        """This definition if it is consistent; ScheduleError naming the field otherwise."""
        if (self.query_id is None) == (self.report is None):
            raise ScheduleError("query_id / report: give either a saved query's id or a report "
                                f"({', '.join(REPORTS)}), not both or neither")
        if self.report is not None and self.report not in REPORTS:
            raise ScheduleError(f"report: {self.report!r} is not one of {', '.join(REPORTS)}")
        if self.format not in FORMATS:
            raise ScheduleError(f"format: {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.format == "html" and self.report is None:
            raise ScheduleError("format: html is for reports; a saved query exports csv or "
                                "parquet")
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise ScheduleError(f"compression: {self.compression!r} is not one of "
                                f"{', '.join(COMPRESSIONS)} (or null for none)")
        if self.format == "parquet" and self.compression is None:
            raise ScheduleError("compression: a Parquet file is compressed inside; choose zstd "
                                "or gzip")
        if self.range is not None:
            if self.report is not None:
                raise ScheduleError("range: a report covers the day or month before its run; "
                                    "it takes no range")
            if self.range not in RANGES:
                raise ScheduleError(f"range: {self.range!r} is not one of {', '.join(RANGES)}")
        if (self.customer or self.carrier) and self.report is None:
            raise ScheduleError("customer / carrier: narrow a report this way; a saved query "
                                "carries its own narrowing")
        if self.customer and self.carrier:
            raise ScheduleError("customer / carrier: narrow to one account, not two")
        if not 1 <= int(self.retention_days) <= MAX_RETENTION_DAYS:
            raise ScheduleError(f"retention_days: {self.retention_days} is not between 1 and "
                                f"{MAX_RETENTION_DAYS}")
        return self

    @property
    def extension(self) -> str:
        if self.format == "parquet":
            return ".parquet"
        ext = "." + self.format
        if self.compression:
            ext += {"zstd": ".zst", "gzip": ".gz"}[self.compression]
        return ext


# -- schedules --------------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    schedule_id: str
    owner_key: str
    principal: str
    tenant_id: str
    name: str
    cron: str
    definition: Definition
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int = 0


_S_COLUMNS = ["schedule_id", "owner_key", "principal", "tenant_id", "name", "cron", "body",
              "created_at", "updated_at", "deleted", "version"]
_S_SELECT = ("SELECT schedule_id, owner_key, principal, tenant_id, name, cron, body, created_at, "
             "updated_at, version FROM schedules FINAL")


def _schedule_from(row: tuple) -> Schedule:
    sid, key, principal, tenant, name, cron, body, created, updated, version = row
    return Schedule(sid, key, principal, tenant, name, cron,
                    Definition.from_json(json.loads(body)), _utc(created), _utc(updated),
                    int(version))


def _write(db: Database, s: Schedule, deleted: bool = False) -> None:
    db.insert_rows("schedules", [(
        s.schedule_id, s.owner_key, s.principal, s.tenant_id, s.name, s.cron,
        json.dumps(s.definition.to_json(), sort_keys=True), s.created_at, s.updated_at, deleted,
        s.version)], _S_COLUMNS)


def _check(name: str, cron: str, definition: Definition) -> tuple[str, str]:
    if not name.strip():
        raise ScheduleError("name: give the schedule a name")
    if len(name) > 200:
        raise ScheduleError("name: at most 200 characters")
    parse_cron(cron)
    definition.check()
    return name.strip(), " ".join(cron.split())


def create(db: Database, *, owner_key: str, principal: str, name: str, cron: str,
           definition: Definition) -> Schedule:
    """A new schedule of `principal`, through credential `owner_key` (checked by the caller:
    the saved query must be visible to the principal, the accounts must exist)."""
    name, cron = _check(name, cron, definition)
    tenant = PrincipalRef.parse(principal).tenant or ""
    now = _now()
    s = Schedule(secrets.token_hex(8), owner_key, principal, tenant, name, cron, definition,
                 now, now, _version())
    _write(db, s)
    return s


def update(db: Database, current: Schedule, *, name: str, cron: str,
           definition: Definition, owner_key: str | None = None) -> Schedule:
    """Replace a schedule's definition. A new version restarts its state (a stopped
    schedule runs again: its owner acted). `owner_key`: the credential now behind it."""
    name, cron = _check(name, cron, definition)
    s = replace(current, name=name, cron=cron, definition=definition, updated_at=_now(),
                owner_key=owner_key or current.owner_key, version=_version(current.version))
    _write(db, s)
    return s


def delete(db: Database, current: Schedule) -> None:
    _write(db, replace(current, updated_at=_now(), version=_version(current.version)),
           deleted=True)


def get(db: Database, schedule_id: str) -> Schedule | None:
    rows = db.rows(f"{_S_SELECT} WHERE schedule_id = {{id:String}} AND NOT deleted",
                   {"id": schedule_id})
    return _schedule_from(rows[0]) if rows else None


def visible_to(s: Schedule, principal: str) -> bool:
    """Who sees a schedule: its owner, its tenant's operator, an admin (others: as missing)."""
    ref = PrincipalRef.parse(principal)
    return (ref.role == "admin" or s.principal == str(ref)
            or (ref.role == "tenant" and s.tenant_id == ref.tenant))


def listed(db: Database, principal: str | None = None) -> list[Schedule]:
    """Live schedules by name; only those `principal` may see when given."""
    found = [_schedule_from(r) for r in db.rows(
        f"{_S_SELECT} WHERE NOT deleted ORDER BY lower(name), created_at, schedule_id")]
    return [s for s in found if principal is None or visible_to(s, principal)]


# -- owner at run time ------------------------------------------------------------------

def resolve_owner(db: Database, s: Schedule) -> Principal:
    """The principal the schedule runs as, now; OwnerGone with the reason otherwise."""
    if s.owner_key.startswith("user:"):
        user = users.get_user(db, s.owner_key[len("user:"):])
        if user is None or user.deleted:
            raise OwnerGone("its owner's portal user was deleted")
        if not user.active:
            raise OwnerGone(f"its owner's portal user {user.name!r} is disabled")
        if user.principal != s.principal:
            raise OwnerGone(f"its owner's portal user {user.name!r} now acts as "
                            f"{user.principal}, not {s.principal}")
    else:
        rows = db.rows("SELECT principal, revoked_at FROM api_keys FINAL WHERE key_id = "
                       "{k:String}", {"k": s.owner_key})
        if not rows:
            raise OwnerGone(f"its owner's API key {s.owner_key} no longer exists")
        principal, revoked = rows[0]
        if revoked is not None:
            raise OwnerGone(f"its owner's API key {s.owner_key} was revoked at "
                            f"{_utc(revoked):%Y-%m-%d %H:%M} UTC")
        if principal != s.principal:
            raise OwnerGone(f"its owner's API key {s.owner_key} belongs to {principal}")
    try:
        return acc.resolve_principal(db, s.principal)
    except acc.AccountError as exc:
        raise OwnerGone(f"its owner's account no longer exists ({exc})") from None


# -- state ------------------------------------------------------------------------------

@dataclass(frozen=True)
class State:
    schedule_id: str
    #: the schedule version this state was computed for
    definition: int
    #: the cron time the next run belongs to (its relative range resolves at this time)
    slot: dt.datetime
    #: when to act next: the slot, or a retry after back-off; NEVER when stopped
    next_run: dt.datetime
    #: 0 for the first run of a slot, then 1, 2, … for retries
    attempt: int = 0
    #: why it no longer runs ('' while it does)
    stopped: str = ""
    last_job: str = ""
    last_error: str = ""
    updated_at: dt.datetime = field(default_factory=_now)
    version: int = 0


_T_COLUMNS = ["schedule_id", "definition", "slot", "next_run", "attempt", "stopped", "last_job",
              "last_error", "updated_at", "version"]


def _write_state(db: Database, st: State) -> State:
    st = replace(st, updated_at=_now(), version=_version(st.version))
    db.insert_rows("schedule_state", [tuple(getattr(st, c) for c in _T_COLUMNS)], _T_COLUMNS)
    return st


def states(db: Database) -> dict[str, State]:
    rows = db.rows(f"SELECT {', '.join(_T_COLUMNS)} FROM schedule_state FINAL")
    out = {}
    for r in rows:
        sid, definition, slot, nxt, attempt, stopped, last_job, last_error, upd, ver = r
        out[sid] = State(sid, int(definition), _utc(slot), _utc(nxt), int(attempt), stopped,
                         last_job, last_error, _utc(upd), int(ver))
    return out


def state_of(db: Database, s: Schedule) -> State:
    return current_state(s, states(db).get(s.schedule_id), _now())


def current_state(s: Schedule, st: State | None, now: dt.datetime) -> State:
    """The state that applies to this version of `s` (a fresh one after an edit; not
    written): the first slot is the first cron time after the edit."""
    if st is not None and st.definition == s.version:
        return st
    slot = next_fire(s.cron, s.updated_at)
    last = st
    return State(s.schedule_id, s.version, slot, slot, 0, "",
                 last.last_job if last else "", "", now, last.version if last else 0)


def save_state(db: Database, st: State) -> State:
    return _write_state(db, st)


def advanced(s: Schedule, st: State, now: dt.datetime, *, job_id: str, error: str = "",
             retry: bool = True) -> State:
    """The state after a run of `st.slot` ended (error '' = succeeded): a failed
    attempt is retried after its back-off until MAX_ATTEMPTS; otherwise the next slot
    is the first cron time after now (missed slots are not run one by one)."""
    if error and retry and st.attempt + 1 < MAX_ATTEMPTS:
        return replace(st, next_run=_utc(now) + BACKOFF[min(st.attempt, len(BACKOFF) - 1)],
                       attempt=st.attempt + 1, last_job=job_id, last_error=error)
    slot = next_fire(s.cron, max(_utc(now), st.slot))
    return replace(st, slot=slot, next_run=slot, attempt=0, last_job=job_id, last_error=error)


def stopped(st: State, reason: str, job_id: str = "") -> State:
    return replace(st, next_run=NEVER, stopped=reason, last_error=reason,
                   last_job=job_id or st.last_job)


def due(db: Database, now: dt.datetime) -> list[tuple[Schedule, State]]:
    """Enabled, running schedules whose next run is at or before `now`, oldest first."""
    st = states(db)
    out = []
    for s in listed(db):
        if not s.definition.enabled:
            continue
        cur = current_state(s, st.get(s.schedule_id), now)
        if not cur.stopped and cur.next_run <= _utc(now):
            out.append((s, cur))
    return sorted(out, key=lambda pair: (pair[1].next_run, pair[0].schedule_id))


# -- runs (jobs) ------------------------------------------------------------------------

def runs(db: Database, schedule_id: str, limit: int = 100) -> list[ud.Job]:
    """The export jobs of a schedule, newest first."""
    ids = [r[0] for r in db.rows(
        "SELECT job_id FROM jobs FINAL WHERE kind = {k:String} AND "
        "JSONExtractString(params, 'schedule') = {s:String} ORDER BY created_at DESC, job_id "
        f"LIMIT {int(limit)}", {"k": JOB_KIND, "s": schedule_id})]
    return [j for j in (ud.get_job(db, i) for i in ids) if j is not None]


def create_run(db: Database, s: Schedule, st: State) -> ud.Job:
    return ud.create_job(db, kind=JOB_KIND, principal=s.principal, tenant=s.tenant_id, params={
        "schedule": s.schedule_id, "name": s.name, "slot": st.slot.isoformat(),
        "attempt": st.attempt})


DIED = "the process running it ended before it finished"


def _claim_slot(db: Database, schedule_id: str, slot: dt.datetime, attempt: int,
                job_id: str) -> str:
    """Claim (schedule, slot, attempt) for `job_id`; the job id that holds it.

    Every claimant inserts with the same deduplication token: ClickHouse stores the
    first block and acknowledges and drops the others (schema 011), so all read back
    the same winner.
    """
    params = {"s": schedule_id, "slot": slot, "a": attempt, "j": job_id}
    db.command("INSERT INTO schedule_claims (schedule_id, slot, attempt, job_id, claimed_at) "
               "SELECT {s:String}, {slot:DateTime64(3, 'UTC')}, {a:UInt32}, {j:String}, "
               "now64(3)", params, settings={"insert_deduplication_token":
                                             f"export:{schedule_id}:{slot.isoformat()}:{attempt}"})
    rows = db.rows("SELECT job_id FROM schedule_claims WHERE schedule_id = {s:String} AND "
                   "slot = {slot:DateTime64(3, 'UTC')} AND attempt = {a:UInt32} "
                   "ORDER BY claimed_at, job_id LIMIT 1", params)
    return rows[0][0] if rows else job_id


def claim_run(db: Database, job: ud.Job) -> tuple[ud.Job | None, ud.Job | None]:
    """Claim `job` (a run) for this process: (the job, None) when it may run, else
    (None, the run that holds it instead) with `job` cancelled (module docstring).

    Two steps: no two live runs of one schedule at once (`engine.jobs.claim`: the
    younger steps back), then exactly one run per slot and attempt across processes
    (`_claim_slot`). A run whose process died is failed first, so it blocks nothing;
    the caller moves the state past a finished winner whose process never did.
    """
    sid, slot_text, attempt = (job.params["schedule"], job.params["slot"],
                               int(job.params["attempt"]))
    for other in jobs_mod.running(db, JOB_KIND, job.tenant_id):
        if (other.job_id != job.job_id and isinstance(other.params, dict)
                and other.params.get("schedule") == sid
                and not jobs_mod.is_alive(other.result)):
            ud.update_job(db, other.job_id, state="failed", error=DIED)
    job, blocker = jobs_mod.claim(db, job, {}, lambda other: (
        isinstance(other.params, dict) and other.params.get("schedule") == sid))
    if blocker is None:
        winner = _claim_slot(db, sid, dt.datetime.fromisoformat(slot_text), attempt,
                             job.job_id)
        if winner != job.job_id:
            blocker = ud.get_job(db, winner)
            if blocker is None:  # cannot happen: a claim names a job made before it
                blocker = replace(job, job_id=winner, state="running")
    if blocker is not None:
        ud.update_job(db, job.job_id, state="cancelled",
                      error=f"run {blocker.job_id} of this schedule ran or runs instead")
        return None, blocker
    return job, None


# -- files ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportFile:
    job_id: str
    schedule_id: str
    tenant_id: str
    principal: str
    key: str
    name: str
    media_type: str
    rows: int
    bytes: int
    created_at: dt.datetime
    expires_at: dt.datetime
    removed: bool = False
    version: int = 0


_F_COLUMNS = ["job_id", "schedule_id", "tenant_id", "principal", "file_key", "file_name",
              "media_type", "rows", "bytes", "created_at", "expires_at", "removed", "version"]


def _file_from(r: tuple) -> ExportFile:
    (jid, sid, tenant, principal, key, name, media, rows, size, created, expires, removed,
     version) = r
    return ExportFile(jid, sid, tenant, principal, key, name, media, int(rows), int(size),
                      _utc(created), _utc(expires), bool(removed), int(version))


def record_file(db: Database, f: ExportFile) -> ExportFile:
    f = replace(f, version=_version(f.version))
    db.insert_rows("schedule_files", [(
        f.job_id, f.schedule_id, f.tenant_id, f.principal, f.key, f.name, f.media_type, f.rows,
        f.bytes, f.created_at, f.expires_at, f.removed, f.version)], _F_COLUMNS)
    return f


def file_of(db: Database, job_id: str) -> ExportFile | None:
    rows = db.rows(f"SELECT {', '.join(_F_COLUMNS)} FROM schedule_files FINAL "
                   "WHERE job_id = {j:String}", {"j": job_id})
    return _file_from(rows[0]) if rows else None


def expired_files(db: Database, now: dt.datetime) -> list[ExportFile]:
    """Files past their expiry and still in the store."""
    return [_file_from(r) for r in db.rows(
        f"SELECT {', '.join(_F_COLUMNS)} FROM schedule_files FINAL WHERE NOT removed AND "
        "expires_at <= {now:DateTime64(3, 'UTC')} ORDER BY expires_at",
        {"now": _utc(now)})]


def mark_removed(db: Database, f: ExportFile) -> None:
    record_file(db, replace(f, removed=True))
