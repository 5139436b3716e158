"""Recalc jobs: the reference product's billing maintenance, previewable and reversible.

Operations, on a UTC day range (inclusive) of one tenant, optionally one account:

1. `refresh-credit` — recompute balances from the summaries (engine.ledger);
2. `refresh-summaries` — rebuild the summaries of the range (engine.summary), then 1;
3. `rerate` — re-price calls with the current rate cards (optionally only those
   with given release reasons and/or given call ids), then 2 for the days touched;
4. `adjust-duration` — every call of at least `min_duration` seconds gets
   `new_duration` (and billsec capped at it), then 3;
and `undo` of a finished 3 or 4 (or of an undo).

How a changing job (3, 4, undo) runs, in phases recorded in the job's result,
so that each can be repeated after a crash:

- **stage**: copy the calls in scope (FINAL) to a scratch table, compute their
  new values in one set-based SELECT (engine.rating), keep only rows that
  change, and store both sides in `recalc_rows` (job_id, side old/new). No
  CDR is touched yet: a crash here leaves the old state; a rerun deletes the
  job's staged rows and stages again.
- **write**: insert the staged new rows into cdr_records with the job's
  version (fixed when the job was created) and source 'maint:recalc'.
  ReplacingMergeTree + FINAL make each call show either its old or its new
  version, and writing the same rows again is a no-op — so a crash halfway
  leaves some calls old and some new, and a rerun of the phase finishes it.
- **summaries**: engine.summary.rebuild for the days touched (convergent).
- **balances**: engine.ledger.refresh for the accounts touched.

A dry run stops after computing the changes and reports them; the job's
result has the same shape and numbers as the real run (the same SELECT).
Undo stages the target job's rows with the sides swapped (its 'old' rows
become the new versions), after checking every call still carries the
target's version (else it was superseded by a later job, named in the
refusal).

Locking: two changing jobs on overlapping ranges of one tenant cannot run at
once. A job claims itself running (engine/jobs.py), then looks for other running jobs of the
tenant on overlapping ranges; the younger of two steps back. A job whose
process is gone (same host, dead pid) or which stopped on an error after it
started writing no longer holds the lock; running the same command again
resumes it (same job id) instead of starting another.

Archived months (`warm_months` state verified or archived) are refused for
every operation that reads or writes calls: restore them first.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from cdrhouse.sql.errors import UserError
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import jobs
from cdrhouse.engine import ledger, ratecards, rebalance, summary
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database
from cdrhouse.engine.rating import RATED_COLUMNS, rated_select
from cdrhouse.sql import catalogue
from cdrhouse.sql.months import months_between
from cdrhouse.sql.principal import Principal, PrincipalError

KIND = "recalc"
OPS: tuple[str, ...] = ("refresh-credit", "refresh-summaries", "rerate", "adjust-duration")
CHANGING: frozenset[str] = frozenset({"rerate", "adjust-duration", "undo"})
MAX_DAYS = 400
MAX_CALL_IDS = 100_000
#: every column of cdr_records, in the order recalc_rows stores them
ALL_COLUMNS: tuple[str, ...] = catalogue.NAMES + ("version", "ingested_at", "source",
                                                  "rating_status", "customer_billsec")
#: columns a recalc may change (compared to decide whether a call changes)
MUTABLE: tuple[str, ...] = ("answer_time", "end_time", "duration", "billsec", "dst_prefix",
                            "currency", "customer_rate", "customer_charge", "carrier_rate",
                            "carrier_cost", "rating_status", "customer_billsec")
PHASES: tuple[str, ...] = ("stage", "write", "summaries", "balances", "done")
Progress = Callable[[float, str], None]


class RecalcError(UserError):
    """A recalc request that is refused; the message says why and what to do."""


class RecalcBusy(RecalcError):
    """Another recalc job holds an overlapping range of the same tenant."""


class RecalcNotFound(RecalcError):
    """No recalc job of that id that this principal may see."""


class RecalcStopped(RuntimeError):
    """A changing job stopped on an error after it started writing; it can be resumed."""


@dataclass(frozen=True)
class RecalcRequest:
    tenant: str
    op: str
    date_from: dt.date | None = None
    date_to: dt.date | None = None      #: inclusive
    account: str | None = None          #: CODE, customer:CODE or carrier:CODE
    release_reasons: tuple[str, ...] = ()
    min_duration: int | None = None
    new_duration: int | None = None
    call_ids: tuple[str, ...] = ()
    dry_run: bool = False
    target_job: str | None = None       #: undo only

    def params(self) -> dict[str, Any]:
        d = asdict(self)
        d["date_from"] = self.date_from.isoformat() if self.date_from else None
        d["date_to"] = self.date_to.isoformat() if self.date_to else None
        d["release_reasons"] = list(self.release_reasons)
        d["call_ids"] = list(self.call_ids)
        return d

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> RecalcRequest:
        known = {k: p.get(k) for k in cls.__dataclass_fields__}
        known["date_from"] = dt.date.fromisoformat(p["date_from"]) if p.get("date_from") else None
        known["date_to"] = dt.date.fromisoformat(p["date_to"]) if p.get("date_to") else None
        known["release_reasons"] = tuple(p.get("release_reasons") or ())
        known["call_ids"] = tuple(p.get("call_ids") or ())
        known["dry_run"] = bool(p.get("dry_run"))
        return cls(**known)


@dataclass
class _Plan:
    req: RecalcRequest
    first: dt.date
    last: dt.date
    account: acc.Account | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def lo(self) -> dt.datetime:
        return dt.datetime.combine(self.first, dt.time(), dt.timezone.utc)

    @property
    def hi(self) -> dt.datetime:
        return dt.datetime.combine(self.last + dt.timedelta(days=1), dt.time(), dt.timezone.utc)


# -- validation ---------------------------------------------------------------------

def check_not_archived(db: Database, tenant: str, first: dt.date, last: dt.date) -> None:
    """Refuse a range touching a month that sits in the archive (verified or archived)."""
    months = months_between(first, last)
    found = db.rows(
        "SELECT month, state FROM warm_months FINAL WHERE tenant_id = {t:String} "
        "AND month IN {m:Array(UInt32)} AND state IN ('verified', 'archived') ORDER BY month",
        {"t": tenant, "m": months})
    if found:
        month, state = found[0]
        listed = ", ".join(str(m) for m, _ in found)
        raise RecalcError(
            f"month {month} of tenant {tenant!r} is in the archive (state {state}); months "
            f"{listed} cannot be recalculated: restore the month first "
            f"(`cdrhouse tier restore --month {month}`), then run the recalc again")


def plan(db: Database, req: RecalcRequest) -> _Plan:
    """Validate a request against the store; raise RecalcError naming what is wrong."""
    try:
        acc.check_tenant(req.tenant)
    except acc.AccountError as exc:
        raise RecalcError(str(exc)) from None
    if req.op not in OPS and req.op != "undo":
        raise RecalcError(f"operation {req.op!r} is not one of {', '.join(OPS)}")
    changing = req.op in ("rerate", "adjust-duration")
    if req.release_reasons and not changing:
        raise RecalcError("--release-reason applies to rerate and adjust-duration only")
    if req.call_ids and not changing:
        raise RecalcError("call ids apply to rerate and adjust-duration only")
    if len(req.call_ids) > MAX_CALL_IDS:
        raise RecalcError(f"at most {MAX_CALL_IDS:,} call ids per job")
    if req.op == "adjust-duration":
        if req.min_duration is None or req.new_duration is None:
            raise RecalcError("adjust-duration needs --min-duration and --new-duration (seconds)")
        if req.min_duration < 1 or req.new_duration < 0 or req.new_duration > 86400:
            raise RecalcError("--min-duration must be at least 1 and --new-duration 0 to 86400 "
                              "seconds")
    elif req.min_duration is not None or req.new_duration is not None:
        raise RecalcError("--min-duration / --new-duration apply to adjust-duration only")
    first, last = req.date_from, req.date_to
    if first is None or last is None:
        if not req.call_ids:
            raise RecalcError("give the UTC day range: --from DATE --to DATE (both inclusive)")
        span = db.rows(
            "SELECT min(start_time), max(start_time), count() FROM cdr_records FINAL "
            "WHERE tenant_id = {t:String} AND call_id IN {ids:Array(String)}",
            {"t": req.tenant, "ids": list(req.call_ids)})[0]
        if not span[2]:
            raise RecalcError(f"none of the {len(req.call_ids)} call ids is a call of tenant "
                              f"{req.tenant!r}")
        first = first or span[0].date()
        last = last or span[1].date()
    if last < first:
        raise RecalcError(f"--to {last} is before --from {first}")
    if (last - first).days + 1 > MAX_DAYS:
        raise RecalcError(f"the range has {(last - first).days + 1} days; at most {MAX_DAYS} "
                          "per job: split it")
    account = None
    if req.account:
        try:
            account = ratecards.resolve_account(db, req.tenant, req.account)
        except (ratecards.RateCardError, acc.AccountError) as exc:
            raise RecalcError(f"--account: {exc}") from None
    if req.op != "refresh-credit":
        check_not_archived(db, req.tenant, first, last)
    return _Plan(req, first, last, account)


# -- the change set -------------------------------------------------------------------

def _scope(p: _Plan) -> tuple[str, dict[str, Any]]:
    req = p.req
    where = ["tenant_id = {tenant:String}", "start_time >= {lo:DateTime64(3, 'UTC')}",
             "start_time < {hi:DateTime64(3, 'UTC')}"]
    params: dict[str, Any] = {"tenant": req.tenant, "lo": p.lo, "hi": p.hi}
    if p.account is not None:
        where.append(f"{p.account.kind}_id = {{account:UInt32}}")
        params["account"] = p.account.account_id
    if req.release_reasons:
        where.append("release_reason IN {reasons:Array(String)}")
        params["reasons"] = list(req.release_reasons)
    if req.call_ids:
        where.append("call_id IN {ids:Array(String)}")
        params["ids"] = list(req.call_ids)
    if req.op == "adjust-duration":
        where.append("duration >= {min_duration:UInt32}")
        params["min_duration"] = req.min_duration
        params["new_duration"] = req.new_duration
    return " AND ".join(where), params


def _new_values_source(scratch: str, op: str) -> str:
    """The calls in scope with the operation applied (before pricing), old values as o_*.

    The old values are renamed in an inner SELECT: in ClickHouse an alias shadows
    the column of the same name in the whole SELECT, so `N AS duration` next to
    `duration AS o_duration` would copy N.
    """
    cols = {c: f"o_{c}" for c in RATED_COLUMNS}
    if op == "adjust-duration":
        n = "{new_duration:UInt32}"
        cols["duration"] = n
        cols["billsec"] = f"least(o_billsec, {n})"
        cols["end_time"] = f"o_start_time + toIntervalSecond({n})"
        cols["answer_time"] = (f"if(o_answer_time IS NULL, NULL, o_start_time + toIntervalSecond("
                               f"{n} - least(o_billsec, {n})))")
    select = ", ".join(f"{expr} AS {name}" for name, expr in cols.items())
    olds = ", ".join(f"{c} AS o_{c}" for c in ALL_COLUMNS)
    return (f"SELECT {select}, {', '.join(f'o_{c}' for c in ALL_COLUMNS)} "
            f"FROM (SELECT {olds} FROM {scratch})")


def _changed() -> str:
    return " OR ".join(f"NOT ifNull({c} = o_{c}, isNull({c}) AND isNull(o_{c}))" for c in MUTABLE)


def _carded(db: Database, tenant: str) -> dict[str, list[int]]:
    return {"customer_carded": ratecards.accounts_with_cards(db, tenant, "customer"),
            "carrier_carded": ratecards.accounts_with_cards(db, tenant, "carrier")}


def _build_changes(db: Database, p: _Plan, suffix: str) -> tuple[str, str]:
    """Scratch tables: the scope (old rows) and the changes (new values + o_* old values)."""
    where, params = _scope(p)
    scope_t, changes_t = f"_recalc_scope_{suffix}", f"_recalc_changes_{suffix}"
    db.command(f"CREATE TABLE {scope_t} ENGINE = Memory AS "
               f"SELECT {', '.join(ALL_COLUMNS)} FROM cdr_records FINAL WHERE {where}", params)
    source = _new_values_source(scope_t, p.req.op)
    cand = f"SELECT call_id, customer_id, carrier_id, dst_number, start_time FROM {scope_t}"
    rated = rated_select(source, cand, "reprice",
                         passthrough=tuple(f"o_{c}" for c in ALL_COLUMNS))
    db.command(f"CREATE TABLE {changes_t} ENGINE = Memory AS "
               f"SELECT * FROM ({rated}) WHERE {_changed()}",
               {**params, **_carded(db, p.req.tenant)})
    return scope_t, changes_t


def _drop(db: Database, *tables: str) -> None:
    for t in tables:
        db.command(f"DROP TABLE IF EXISTS {t}")


_IMPACT = """
SELECT kind, account_id, count() AS n, sum(before) AS sum_before, sum(after) AS sum_after,
       countIf(after IS NULL) AS unrated_after
FROM (
    SELECT 'customer' AS kind, customer_id AS account_id, o_customer_charge AS before,
           customer_charge AS after FROM ({rows})
    UNION ALL
    SELECT 'carrier', carrier_id, o_carrier_cost, carrier_cost FROM ({rows})
)
GROUP BY kind, account_id ORDER BY kind DESC, account_id"""


def _impact(db: Database, tenant: str, rows_sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """Per account: calls changed, money before and after (charge for customers, cost for carriers)."""
    codes = {(a.kind, a.account_id): a.code for a in acc.list_accounts(db, tenant)}
    accounts, calls = [], 0
    for kind, aid, n, before, after, unrated in db.rows(_IMPACT.format(rows=rows_sql), params):
        before, after = Decimal(before or 0), Decimal(after or 0)
        accounts.append({"kind": kind, "account_id": int(aid),
                         "code": codes.get((kind, int(aid)), ""), "calls": int(n),
                         "before": str(before), "after": str(after),
                         "difference": str(after - before), "unrated_after": int(unrated)})
        if kind == "customer":
            calls += int(n)
    totals = {}
    for kind in ("customer", "carrier"):
        b = sum((Decimal(a["before"]) for a in accounts if a["kind"] == kind), Decimal(0))
        a_ = sum((Decimal(a["after"]) for a in accounts if a["kind"] == kind), Decimal(0))
        totals[kind] = {"before": str(b), "after": str(a_), "difference": str(a_ - b)}
    return {"calls_changed": calls, "charge": totals["customer"], "cost": totals["carrier"],
            "accounts": accounts}


def _staged_pairs(job_id: str) -> str:
    """recalc_rows of a job as one row per call: new values plus o_* old values."""
    return ("SELECT call_id, anyIf(cu, sd = 'new') AS customer_id, "
            "anyIf(ca, sd = 'new') AS carrier_id, "
            "anyIf(ch, sd = 'new') AS customer_charge, anyIf(ch, sd = 'old') AS o_customer_charge, "
            "anyIf(co, sd = 'new') AS carrier_cost, anyIf(co, sd = 'old') AS o_carrier_cost "
            "FROM (SELECT call_id, toString(side) AS sd, customer_id AS cu, carrier_id AS ca, "
            "customer_charge AS ch, carrier_cost AS co FROM recalc_rows FINAL "
            "WHERE job_id = {job:String}) GROUP BY call_id")


# -- jobs and locking (the mechanics are engine/jobs.py) -------------------------------

def _range_of(job: ud.Job) -> tuple[dt.date, dt.date]:
    r = (job.result or {}) if isinstance(job.result, dict) else {}
    return dt.date.fromisoformat(r["first"]), dt.date.fromisoformat(r["last"])


def _has_range(job: ud.Job) -> bool:
    return isinstance(job.result, dict) and "first" in job.result


def _running(db: Database, tenant: str) -> list[ud.Job]:
    return [j for j in jobs.running(db, KIND, tenant) if _has_range(j)]


def _overlaps(a: tuple[dt.date, dt.date], b: tuple[dt.date, dt.date]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _resumable(db: Database, req: RecalcRequest, first: dt.date, last: dt.date) -> ud.Job | None:
    """An interrupted job with exactly this request: a rerun resumes it."""
    for j in _running(db, req.tenant):
        mine = {k: v for k, v in (j.params or {}).items() if k != "version"}
        if not jobs.is_alive(j.result, db) and mine == _params_json(req):
            return j
    return None


def _params_json(req: RecalcRequest) -> dict[str, Any]:
    import json
    return json.loads(json.dumps(req.params(), sort_keys=True))


def _acquire(db: Database, job: ud.Job, first: dt.date, last: dt.date) -> ud.Job:
    """Claim `job` (running, ours) unless another job holds an overlapping range; else
    fail it and raise RecalcBusy. An interrupted job blocks until resumed; of two live
    ones the younger yields (jobs.claim)."""
    result = {**(job.result or {}), "first": first.isoformat(), "last": last.isoformat()}
    result.setdefault("phase", "stage")
    job, other = jobs.claim(db, job, result, lambda o: _has_range(o) and _overlaps(
        (first, last), _range_of(o)))
    if other is None:
        return _not_during_rebalance(db, job)
    if not jobs.is_alive(other.result, db):
        detail = (f"job {other.job_id} was interrupted on an overlapping range "
                  f"({other.result['first']} to {other.result['last']}); finish it "
                  f"first with `cdrhouse recalc resume {other.job_id}`")
    else:
        detail = (f"recalc job {other.job_id} is running on an overlapping range of "
                  f"tenant {job.tenant_id!r} ({other.result['first']} to "
                  f"{other.result['last']}); wait for it to finish")
    ud.update_job(db, job.job_id, state="failed", error=detail,
                  result={**job.result, "stopped": True})
    raise RecalcBusy(detail)


def _not_during_rebalance(db: Database, job: ud.Job) -> ud.Job:
    """`job`, marked running, unless a rebalance moves rows between shards: then it is
    failed and RecalcBusy raised. Why: during a rebalance a moved call is on two shards,
    and a re-rate would rebuild the summary from both (engine/rebalance.py)."""
    why = rebalance.refusal(db)
    if why is None:
        return job
    ud.update_job(db, job.job_id, state="failed", error=why,
                  result={**(job.result or {}), "stopped": True})
    raise RecalcBusy(why)


def _check_principal(principal: Principal, tenant: str) -> None:
    """Only an admin or the tenant's own operator recalculates it (Principal.operator_tenant)."""
    try:
        principal.operator_tenant(tenant)
    except PrincipalError as exc:
        raise RecalcError(str(exc)) from None


def start(db: Database, req: RecalcRequest, principal: Principal) -> ud.Job:
    """Validate `req` and create its job (queued); resume instead when it is an interrupted rerun.

    Runs nothing: call `execute` (the CLI runs it at once, the API in a worker thread).
    """
    _check_principal(principal, req.tenant)
    if req.op == "undo":
        target, first, last = _check_undo(db, req)
        req = RecalcRequest(req.tenant, "undo", first, last, target_job=target.job_id)
        p = _Plan(req, first, last)
    else:
        p = plan(db, req)
    if not req.dry_run and req.op in CHANGING:
        resumed = _resumable(db, req, p.first, p.last)
        if resumed is not None:
            return resumed
    params = {**req.params(), "version": time.time_ns()}
    job = ud.create_job(db, kind=KIND, principal=str(principal), params=params,
                        tenant=req.tenant)
    return ud.update_job(db, job.job_id, result={"phase": "stage", "first": p.first.isoformat(),
                                                 "last": p.last.isoformat()})


def claim(db: Database, job: ud.Job) -> ud.Job:
    """Take the tenant's recalc lock for a started job now (raises RecalcBusy).

    `execute` does this itself; the API calls it in the request so that a
    conflict is answered at once rather than seen later in the job.
    """
    req = RecalcRequest.from_params(job.params)
    if req.dry_run or req.op not in CHANGING:
        return job
    first, last = _range_of(job)
    return _acquire(db, job, first, last)


def execute(db: Database, job_id: str, progress: Progress | None = None) -> ud.Job:
    """Run (or resume) a recalc job to its end; returns the finished job.

    Refusals raise RecalcError (the job is failed first); an error after the
    job started writing leaves it resumable and raises RecalcStopped.
    """
    job = ud.get_job(db, job_id)
    if job is None or job.kind != KIND:
        raise RecalcError(f"no recalc job {job_id!r}")
    if job.state in ud.FINISHED:
        raise RecalcError(f"job {job_id} is already {job.state}")
    req = RecalcRequest.from_params(job.params)
    report = progress or (lambda f, s: None)
    first, last = _range_of(job)
    if req.dry_run or req.op not in CHANGING:
        job = ud.update_job(db, job_id, state="running",
                            result={**job.result, **jobs.owner(), "stopped": False})
        if not req.dry_run:     # a refresh rebuilds the summary from the calls
            job = _not_during_rebalance(db, job)
    else:
        job = _acquire(db, job, first, last)
    try:
        if req.dry_run:
            result = _preview(db, req, report)
        elif req.op in CHANGING:
            return _run_changing(db, job, req, report)
        else:
            result = _run_refresh(db, job, req, first, last, report)
    except RecalcStopped:
        raise
    except Exception as exc:
        msg = str(exc) if isinstance(exc, RecalcError) else f"{type(exc).__name__}: {exc}"
        current = ud.get_job(db, job_id)
        if current is not None and current.state not in ud.FINISHED:
            ud.update_job(db, job_id, state="failed", error=msg[:2000],
                          result={**(current.result or {}), "stopped": True})
        raise
    return ud.update_job(db, job_id, state="succeeded",
                         result={**job.result, **result, "phase": "done", "stopped": False})


def _preview(db: Database, req: RecalcRequest, report: Progress) -> dict[str, Any]:
    p = plan(db, req)
    if req.op not in ("rerate", "adjust-duration"):
        return {"dry_run": True, "calls_changed": 0,
                "note": f"{req.op} changes no calls; it recomputes from stored data"}
    report(0.1, "computing changes")
    suffix = uuid.uuid4().hex[:12]
    scope_t, changes_t = f"_recalc_scope_{suffix}", f"_recalc_changes_{suffix}"
    try:
        _build_changes(db, p, suffix)
        report(0.8, "summarising")
        out = _impact(db, req.tenant, f"SELECT * FROM {changes_t}", {})
    finally:
        _drop(db, scope_t, changes_t)
    return {"dry_run": True, **out}


def _run_refresh(db: Database, job: ud.Job, req: RecalcRequest, first: dt.date,
                 last: dt.date, report: Progress) -> dict[str, Any]:
    p = plan(db, req)
    out: dict[str, Any] = {}
    if req.op == "refresh-summaries":
        report(0.1, "rebuilding summaries")
        out["summary_rows_written"] = summary.rebuild_range(db, req.tenant, first, last)
        ud.update_job(db, job.job_id, progress=0.7)
    report(0.8, "refreshing balances")
    out["note"] = ("balances are whole-history totals (ledger − usage from the summaries); "
                   "the range limits only what refresh-summaries rebuilds")
    out["balances_refreshed"] = ledger.refresh(
        db, req.tenant, [p.account] if p.account else None, job.job_id)
    return out


def _set_phase(db: Database, job_id: str, phase: str, progress: float,
               extra: dict[str, Any] | None = None) -> ud.Job:
    job = ud.get_job(db, job_id)
    assert job is not None
    return ud.update_job(db, job_id, progress=progress,
                         result={**(job.result or {}), **(extra or {}), "phase": phase})


def _run_changing(db: Database, job: ud.Job, req: RecalcRequest, report: Progress) -> ud.Job:
    version = int(job.params["version"])
    jp = {"job": job.job_id}
    phase = job.result.get("phase", "stage")
    if phase == "stage":  # nothing written yet: an error here fails the job (in execute)
        report(0.05, "staging changes")
        db.command("DELETE FROM recalc_rows WHERE job_id = {job:String}", jp)
        _stage(db, job, req, version)
        impact = _impact(db, req.tenant, _staged_pairs(job.job_id), jp)
        job = _set_phase(db, job.job_id, "write", 0.4, impact)
        phase = "write"
    try:
        if phase == "write":
            report(0.45, "writing new versions")
            cols = ", ".join(ALL_COLUMNS)
            db.command(f"INSERT INTO cdr_records ({cols}) SELECT {cols} FROM recalc_rows FINAL "
                       "WHERE job_id = {job:String} AND side = 'new'", jp,
                       settings={"max_insert_threads": 2})
            job = _set_phase(db, job.job_id, "summaries", 0.6)
            phase = "summaries"
        if phase == "summaries":
            report(0.65, "rebuilding summaries")
            days = [d for (d,) in db.rows(
                "SELECT DISTINCT toDate(start_time) FROM recalc_rows WHERE job_id = {job:String} "
                "ORDER BY 1", jp)]
            written = summary.rebuild(db, req.tenant, days) if days else 0
            job = _set_phase(db, job.job_id, "balances", 0.85,
                             {"days": len(days), "summary_rows_written": written})
            phase = "balances"
        if phase == "balances":
            report(0.9, "refreshing balances")
            touched = {(k, int(a)) for k, a in db.rows(
                "SELECT DISTINCT 'customer', customer_id FROM recalc_rows WHERE job_id = {job:String} "
                "UNION DISTINCT SELECT DISTINCT 'carrier', carrier_id FROM recalc_rows "
                "WHERE job_id = {job:String}", jp)}
            accounts = [a for a in acc.list_accounts(db, req.tenant)
                        if (a.kind, a.account_id) in touched]
            n = ledger.refresh(db, req.tenant, accounts, job.job_id) if accounts else 0
            job = _set_phase(db, job.job_id, "done", 0.99, {"balances_refreshed": n})
    except Exception as exc:
        current = ud.get_job(db, job.job_id)
        msg = f"{type(exc).__name__}: {exc}"[:2000]
        if current is not None and current.state not in ud.FINISHED:
            ud.update_job(db, job.job_id, error=f"stopped in phase {phase}: {msg}; run "
                          f"`cdrhouse recalc resume {job.job_id}` (or the same command again) "
                          "to finish it",
                          result={**(current.result or {}), "stopped": True})
        raise RecalcStopped(f"job {job.job_id} stopped in phase {phase} ({msg}); the calls "
                            f"show their old or new values; run `cdrhouse recalc resume "
                            f"{job.job_id}` to finish it") from exc
    report(1.0, "done")
    return ud.update_job(db, job.job_id, state="succeeded",
                         result={**job.result, "phase": "done", "stopped": False})


def _stage(db: Database, job: ud.Job, req: RecalcRequest, version: int) -> None:
    cols = ", ".join(ALL_COLUMNS)
    jp = {"job": job.job_id, "version": version}
    if req.op == "undo":
        assert req.target_job
        # the target's 'new' rows are what the calls show now; its 'old' rows come back
        swap = {"old": "new", "new": "old"}
        for side, from_side in swap.items():
            values = cols if side == "old" else ", ".join(
                "{version:UInt64}" if c == "version" else "'maint:undo'" if c == "source" else c
                for c in ALL_COLUMNS)
            db.command(f"INSERT INTO recalc_rows (job_id, side, {cols}) SELECT {{job:String}}, "
                       f"'{side}', {values} FROM recalc_rows FINAL WHERE job_id = {{target:String}} "
                       f"AND side = '{from_side}'", {**jp, "target": req.target_job})
        return
    p = plan(db, req)
    suffix = uuid.uuid4().hex[:12]
    scope_t, changes_t = f"_recalc_scope_{suffix}", f"_recalc_changes_{suffix}"
    try:
        _build_changes(db, p, suffix)
        olds = ", ".join(f"o_{c}" for c in ALL_COLUMNS)
        db.command(f"INSERT INTO recalc_rows (job_id, side, {cols}) SELECT {{job:String}}, 'old', "
                   f"{olds} FROM {changes_t}", jp)
        news = ", ".join(
            "{version:UInt64}" if c == "version" else "o_ingested_at" if c == "ingested_at"
            else "'maint:recalc'" if c == "source" else c for c in ALL_COLUMNS)
        db.command(f"INSERT INTO recalc_rows (job_id, side, {cols}) SELECT {{job:String}}, 'new', "
                   f"{news} FROM {changes_t}", jp)
    finally:
        _drop(db, scope_t, changes_t)


# -- undo ---------------------------------------------------------------------------

def _check_undo(db: Database, req: RecalcRequest) -> tuple[ud.Job, dt.date, dt.date]:
    target = ud.get_job(db, req.target_job or "")
    if target is None or target.kind != KIND or target.tenant_id != req.tenant:
        raise RecalcError(f"no recalc job {req.target_job!r} in tenant {req.tenant!r}")
    tp = target.params or {}
    if tp.get("dry_run"):
        raise RecalcError(f"job {target.job_id} was a preview (--dry-run): it changed nothing")
    if tp.get("op") not in CHANGING:
        raise RecalcError(f"job {target.job_id} ({tp.get('op')}) changed no calls: there is "
                          "nothing to undo; run it again to recompute")
    if target.state != "succeeded":
        raise RecalcError(f"job {target.job_id} is {target.state}, not succeeded: only a "
                          "finished job can be undone (resume it first if it was interrupted)")
    for j in ud.list_jobs(db, tenant=req.tenant, kind=KIND, limit=10_000):
        jp = j.params or {}
        if jp.get("op") == "undo" and jp.get("target_job") == target.job_id and \
                j.state in ("succeeded", "running", "queued"):
            word = "undone" if j.state == "succeeded" else "being undone"
            raise RecalcError(f"job {target.job_id} is already {word} by job {j.job_id}")
    # superseded = a call no longer shows what the job wrote (a later job changed it);
    # compared by value, so after that later job is undone the target is undoable again
    differs = " OR ".join(f"NOT ifNull(c.{m} = r.{m}, isNull(c.{m}) AND isNull(r.{m}))"
                          for m in MUTABLE)
    later = db.rows(
        "SELECT c.call_id, c.version FROM (SELECT * FROM cdr_records FINAL "
        "WHERE tenant_id = {t:String} AND call_id IN (SELECT call_id FROM recalc_rows "
        "WHERE job_id = {j:String} AND side = 'new')) AS c "
        "INNER JOIN (SELECT * FROM recalc_rows FINAL WHERE job_id = {j:String} AND side = 'new') "
        f"AS r ON r.call_id = c.call_id WHERE {differs} LIMIT 5",
        {"t": req.tenant, "j": target.job_id})
    if later:
        call_id, newer = later[0]
        by = db.rows("SELECT DISTINCT job_id FROM recalc_rows WHERE side = 'new' AND "
                     "version = {v:UInt64} AND tenant_id = {t:String} LIMIT 1",
                     {"v": int(newer), "t": req.tenant})
        who = f"job {by[0][0]}" if by else "a later write"
        raise RecalcError(f"job {target.job_id} is superseded: call {call_id} (and maybe others) "
                          f"was changed after it by {who}; undo that job first")
    first, last = _range_of(target)
    return target, first, last


def undo_state(db: Database, job: ud.Job) -> str | None:
    """'undone by JOB' when a succeeded undo targets `job`, else None (for listings)."""
    for j in ud.list_jobs(db, tenant=job.tenant_id, kind=KIND, state="succeeded", limit=10_000):
        if (j.params or {}).get("target_job") == job.job_id:
            return j.job_id
    return None


def run(db: Database, req: RecalcRequest, principal: Principal,
        progress: Progress | None = None) -> ud.Job:
    """`start` then `execute`: what the CLI does."""
    job = start(db, req, principal)
    return execute(db, job.job_id, progress)


def resumable(db: Database, job_id: str, principal: Principal) -> ud.Job:
    """The job, when `principal` may resume it now: RecalcNotFound when it cannot see
    it, RecalcBusy when its process still works on it, RecalcError when finished."""
    job = ud.get_job(db, job_id)
    if job is None or job.kind != KIND or not ud.job_visible_to(job, str(principal)):
        raise RecalcNotFound(f"no recalc job {job_id!r}")
    _check_principal(principal, job.tenant_id)
    try:
        jobs.check_resumable(job, db)
    except jobs.NotResumable as exc:
        raise (RecalcBusy if exc.alive else RecalcError)(str(exc)) from None
    return job


def resume(db: Database, job_id: str, principal: Principal,
           progress: Progress | None = None) -> ud.Job:
    """Finish an interrupted job (its process died or it stopped on an error)."""
    resumable(db, job_id, principal)
    return execute(db, job_id, progress)


def abandon(db: Database, job_id: str) -> None:
    """The service stops while the job runs: leave it stopped, for `resume`."""
    jobs.mark_stopped(db, job_id, f"the service stopped while the job ran; run `cdrhouse "
                                  f"recalc resume {job_id}` to finish it")
