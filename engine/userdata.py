"""What users keep between sessions: saved queries, preferences, and the jobs they started.

Storage only — SQL through a `Database`, no HTTP. Validation of what a body
*means* (does the saved SQL pass the guard, is the column visible) belongs to
the caller, which knows the principal; this module keeps the rows and decides
**which rows a principal may see**, because that rule is a WHERE clause and
must be the same for every caller (the API today, CLI and workers later).

All three tables are ReplacingMergeTree keyed by id and read with FINAL: an
update inserts the whole row again with a higher `version`, a delete inserts it
with `deleted = true`. Versions are nanosecond timestamps, bumped past the row's
current version when we read it first, so two quick updates never tie.

Visibility rules (see `visible_queries`, `job_scope`):

- A saved query belongs to its owner **principal** (not the key: keys are
  credentials and get rotated; the creating key is kept as `owner_key` for
  audit). Private queries are seen by the owner principal only.
- A *shared* query is seen within its tenant, never across tenants: a tenant
  operator's shared query by every principal of the tenant; a customer's or
  carrier's shared query by the tenant's operator only — customers and carriers
  of one tenant are different companies and do not see each other's queries or
  account codes. An admin's queries belong to no tenant and are never shared.
- Jobs: an admin sees all; a tenant operator its tenant's; a customer or
  carrier user only the jobs of its own principal.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from cdrhouse.sql.errors import UserError
from cdrhouse.engine.db import Database
from cdrhouse.sql.principal import PrincipalRef

QueryKind = Literal["viewer", "search", "sql"]
QUERY_KINDS: tuple[str, ...] = ("viewer", "search", "sql")

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
#: A job in one of these states is over: it is never changed again (a retry is a new job).
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class UserDataError(UserError):
    """A request on saved queries, preferences or jobs that cannot be honoured."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _new_id() -> str:
    return secrets.token_hex(8)


def _next_version(current: int = 0) -> int:
    return max(time.time_ns(), current + 1)


def _tenant_of(principal: str) -> str:
    """The principal's tenant, '' for admin (validates the principal text)."""
    return PrincipalRef.parse(principal).tenant or ""


def _loads(text: str) -> Any:
    return json.loads(text) if text else None


def _dumps(value: Any) -> str:
    return "" if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)


# -- saved queries -------------------------------------------------------------------

@dataclass(frozen=True)
class SavedQuery:
    query_id: str
    owner_key: str
    principal: str
    tenant_id: str
    name: str
    kind: str
    body: dict[str, Any]
    shared: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int = 0


_Q_COLUMNS = ["query_id", "owner_key", "principal", "tenant_id", "name", "kind", "body",
              "shared", "created_at", "updated_at", "deleted", "version"]
_Q_SELECT = ("SELECT query_id, owner_key, principal, tenant_id, name, toString(kind), body, "
             "shared, created_at, updated_at, version FROM saved_queries FINAL")


def _query_from(row: tuple) -> SavedQuery:
    qid, key, principal, tenant, name, kind, body, shared, created, updated, version = row
    return SavedQuery(qid, key, principal, tenant, name, kind, json.loads(body), bool(shared),
                      created, updated, int(version))


def _write_query(db: Database, q: SavedQuery, deleted: bool = False) -> None:
    db.insert_rows("saved_queries", [(
        q.query_id, q.owner_key, q.principal, q.tenant_id, q.name, q.kind, _dumps(q.body),
        q.shared, q.created_at, q.updated_at, deleted, q.version)], _Q_COLUMNS)


def _check_query(principal: str, kind: str, name: str, shared: bool) -> str:
    if kind not in QUERY_KINDS:
        raise UserDataError(f"kind: {kind!r} is not one of {', '.join(QUERY_KINDS)}")
    if not name.strip():
        raise UserDataError("name: give the query a name")
    tenant = _tenant_of(principal)
    if shared and not tenant:
        raise UserDataError("shared: an admin's queries belong to no tenant and cannot be shared")
    return tenant


def create_query(db: Database, *, owner_key: str, principal: str, name: str, kind: str,
                 body: dict[str, Any], shared: bool = False) -> SavedQuery:
    """Save a new query owned by `principal` (created through key `owner_key`)."""
    tenant = _check_query(principal, kind, name, shared)
    now = _now()
    q = SavedQuery(_new_id(), owner_key, principal, tenant, name.strip(), kind, body, shared,
                   now, now, _next_version())
    _write_query(db, q)
    return q


def get_query(db: Database, query_id: str) -> SavedQuery | None:
    """The live (not deleted) query with this id, whoever owns it — check visibility after."""
    rows = db.rows(f"{_Q_SELECT} WHERE query_id = {{id:String}} AND NOT deleted",
                   {"id": query_id})
    return _query_from(rows[0]) if rows else None


def _visibility(principal: str) -> tuple[str, dict[str, Any]]:
    """The WHERE condition selecting the queries `principal` may see (module docstring)."""
    ref = PrincipalRef.parse(principal)
    cond = "principal = {me:String}"
    params: dict[str, Any] = {"me": str(ref)}
    if ref.tenant:
        params["tenant"] = ref.tenant
        params["operator"] = f"tenant:{ref.tenant}"
        shared = "shared AND tenant_id = {tenant:String}"
        if ref.role != "tenant":  # customers and carriers see only their operator's
            shared += " AND principal = {operator:String}"
        cond += f" OR ({shared})"
    return f"({cond})", params


def visible_queries(db: Database, principal: str) -> list[SavedQuery]:
    """The queries `principal` may see: its own and those shared with it, by name."""
    cond, params = _visibility(principal)
    return [_query_from(r) for r in db.rows(
        f"{_Q_SELECT} WHERE NOT deleted AND {cond} ORDER BY lower(name), created_at, query_id",
        params)]


def visible_query(db: Database, principal: str, query_id: str) -> SavedQuery | None:
    """The query if `principal` may see it; None whether it is missing or someone else's."""
    cond, params = _visibility(principal)
    rows = db.rows(f"{_Q_SELECT} WHERE query_id = {{id:String}} AND NOT deleted AND {cond}",
                   {**params, "id": query_id})
    return _query_from(rows[0]) if rows else None


def update_query(db: Database, current: SavedQuery, *, name: str, kind: str,
                 body: dict[str, Any], shared: bool) -> SavedQuery:
    """Replace name, kind, body and sharing of `current` (ownership is checked by the caller)."""
    _check_query(current.principal, kind, name, shared)
    q = SavedQuery(current.query_id, current.owner_key, current.principal, current.tenant_id, name.strip(),
                   kind, body, shared, current.created_at, _now(),
                   _next_version(current.version))
    _write_query(db, q)
    return q


def delete_query(db: Database, current: SavedQuery) -> None:
    """Mark `current` deleted (ownership is checked by the caller)."""
    q = SavedQuery(current.query_id, current.owner_key, current.principal, current.tenant_id, current.name,
                   current.kind, current.body, current.shared, current.created_at, _now(),
                   _next_version(current.version))
    _write_query(db, q, deleted=True)


# -- preferences ---------------------------------------------------------------------

@dataclass(frozen=True)
class Preferences:
    """Per API key. None means "not chosen": the endpoint's own default applies."""

    tz: str | None = None
    columns: tuple[str, ...] | None = None
    updated_at: dt.datetime | None = None


def get_preferences(db: Database, key_id: str) -> Preferences:
    """The key's preferences; all None when it never saved any."""
    rows = db.rows("SELECT body, updated_at FROM preferences FINAL WHERE key_id = {k:String}",
                   {"k": key_id})
    if not rows:
        return Preferences()
    body, updated = rows[0]
    data = json.loads(body) if body else {}
    cols = data.get("columns")
    return Preferences(data.get("tz"), tuple(cols) if cols is not None else None, updated)


def put_preferences(db: Database, key_id: str, tz: str | None,
                    columns: list[str] | tuple[str, ...] | None) -> Preferences:
    """Replace the key's preferences (validated by the caller, which knows the principal)."""
    now = _now()
    cols = list(columns) if columns is not None else None
    db.insert_rows("preferences", [(key_id, _dumps({"tz": tz, "columns": cols}), now,
                                    _next_version())],
                   ["key_id", "body", "updated_at", "version"])
    return Preferences(tz, tuple(cols) if cols is not None else None, now)


# -- jobs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """Long-running work (tiering, recalculation …) and how far it got.

    `params` and `result` are JSON values chosen by the job's kind; `error` is
    a message safe to show the job's principal.
    """

    job_id: str
    kind: str
    tenant_id: str
    principal: str
    state: str
    progress: float
    params: Any
    result: Any
    error: str
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int = 0


_J_COLUMNS = ["job_id", "kind", "tenant_id", "principal", "state", "progress", "params",
              "result", "error", "created_at", "updated_at", "version"]
_J_SELECT = ("SELECT job_id, toString(kind), tenant_id, principal, toString(state), progress, "
             "params, result, error, created_at, updated_at, version FROM jobs FINAL")


def _job_from(row: tuple) -> Job:
    jid, kind, tenant, principal, state, progress, params, result, error, c, u, v = row
    return Job(jid, kind, tenant, principal, state, float(progress), _loads(params),
               _loads(result), error, c, u, int(v))


def _write_job(db: Database, j: Job) -> None:
    db.insert_rows("jobs", [(j.job_id, j.kind, j.tenant_id, j.principal, j.state, j.progress,
                             _dumps(j.params), _dumps(j.result), j.error, j.created_at,
                             j.updated_at, j.version)], _J_COLUMNS)


def _check_progress(progress: float) -> float:
    if not 0.0 <= progress <= 1.0:
        raise UserDataError(f"progress: {progress!r} is not between 0 and 1")
    return float(progress)


def create_job(db: Database, *, kind: str, principal: str, params: Any = None,
               tenant: str | None = None) -> Job:
    """A queued job started by `principal`; its tenant is the principal's unless given.

    `tenant` lets an admin start work on one tenant's data ('' = platform-wide).
    """
    if not kind.strip():
        raise UserDataError("kind: name the kind of job")
    own = _tenant_of(principal)
    if tenant is None:
        tenant = own
    elif own and tenant != own:
        raise UserDataError(f"tenant: a {principal} job cannot belong to tenant {tenant!r}")
    now = _now()
    job = Job(_new_id(), kind, tenant, principal, "queued", 0.0, params, None, "", now, now,
              _next_version())
    _write_job(db, job)
    return job


def get_job(db: Database, job_id: str) -> Job | None:
    rows = db.rows(f"{_J_SELECT} WHERE job_id = {{id:String}}", {"id": job_id})
    return _job_from(rows[0]) if rows else None


_KEEP: Any = object()


def update_job(db: Database, job_id: str, *, state: str | None = None,
               progress: float | None = None, result: Any = _KEEP,
               error: str | None = None) -> Job:
    """Record a job's progress or outcome; parts not given stay as they were.

    A finished job (succeeded, failed, cancelled) is final: updating it raises,
    so a worker that lost a race with a cancel cannot resurrect the job.
    Reaching `succeeded` sets progress to 1 unless given.
    """
    job = get_job(db, job_id)
    if job is None:
        raise UserDataError(f"no job {job_id!r}")
    if job.state in FINISHED:
        raise UserDataError(f"job {job_id} is already {job.state}; it cannot change")
    if state is not None and state not in JOB_STATES:
        raise UserDataError(f"state: {state!r} is not one of {', '.join(JOB_STATES)}")
    new_state = state or job.state
    if progress is None:
        progress = 1.0 if new_state == "succeeded" else job.progress
    updated = Job(job.job_id, job.kind, job.tenant_id, job.principal, new_state,
                  _check_progress(progress), job.params,
                  job.result if result is _KEEP else result,
                  job.error if error is None else error, job.created_at, _now(),
                  _next_version(job.version))
    _write_job(db, updated)
    return updated


def job_scope(principal: str) -> dict[str, str]:
    """The filters limiting jobs to what `principal` may see (module docstring)."""
    ref = PrincipalRef.parse(principal)
    if ref.role == "admin":
        return {}
    if ref.role == "tenant":
        return {"tenant": ref.tenant or ""}
    return {"tenant": ref.tenant or "", "principal": str(ref)}


def job_visible_to(job: Job, principal: str) -> bool:
    scope = job_scope(principal)
    return (job.tenant_id == scope.get("tenant", job.tenant_id)
            and job.principal == scope.get("principal", job.principal))


def list_jobs(db: Database, *, tenant: str | None = None, principal: str | None = None,
              state: str | None = None, kind: str | None = None, limit: int = 100) -> list[Job]:
    """Jobs, newest first, narrowed by any of the filters (`job_scope` gives a caller's)."""
    where, params = [], {}
    for column, value in (("tenant_id", tenant), ("principal", principal), ("state", state),
                          ("kind", kind)):
        if value is not None:
            where.append(f"{column} = {{{column}:String}}")
            params[column] = value
    sql = _J_SELECT + (" WHERE " + " AND ".join(where) if where else "")
    sql += f" ORDER BY created_at DESC, job_id LIMIT {int(limit)}"
    return [_job_from(r) for r in db.rows(sql, params)]
