"""/v1/schedules (scheduled exports and reports) and /v1/reports/usage.

A schedule belongs to the principal whose key (or portal user) created it and
runs as that principal, resolved at each run (api/scheduler.py): its owner
changes, deletes and downloads it; the tenant's operator and an admin see it
and its runs (not its files: they are the owner's). Others get 404, as for a
missing id. What a schedule may run is checked when it is saved, for its owner:
the saved query must be visible to it, a report's account must exist and be
the operator's to name — and again at every run.

`GET /v1/reports/usage` computes a usage report on demand (engine/reports.py),
as CSV or a self-contained HTML page, for the caller.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from cdrhouse.api import deps
from cdrhouse.api.auth import Caller
from cdrhouse.api.deps import caller, store
from cdrhouse.api.errors import Problem
from cdrhouse.api.scheduler import RANGE_PARAMS
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import reports
from cdrhouse.engine import schedules as sched
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database

router = APIRouter(prefix="/v1", tags=["schedules"])

#: schedules one principal may have (each costs a run per slot)
MAX_PER_PRINCIPAL = 50


class ScheduleIn(BaseModel):
    """A schedule as sent on create and on replace (PUT sends all of it)."""

    name: str = Field(..., examples=["Yesterday's calls"])
    cron: str = Field(..., description="Five-field crontab, UTC (minute hour day month "
                                       "weekday; 0 and 7 are Sunday).", examples=["0 6 * * *"])
    query_id: str | None = Field(None, description="A saved query visible to you.")
    report: str | None = Field(None, description="Instead of a query: a usage report, "
                                                 "'daily' (the day before the run) or "
                                                 "'monthly' (the month before).")
    customer: str | None = Field(None, description="Operators, reports: one customer (code).")
    carrier: str | None = Field(None, description="Operators, reports: one carrier (code).")
    format: str = Field("csv", description="csv or parquet; reports: csv or html.")
    compression: str | None = Field("zstd", description="zstd, gzip or null (CSV/HTML only).")
    range: str | None = Field(None, description="Replaces the saved query's range, resolved at "
                                                "each run (UTC): yesterday, last_month, … "
                                                "SQL: binds {range_from} / {range_to}.")
    raw: bool = Field(False, description="CSV: text as stored (no spreadsheet-safe prefix).")
    retention_days: int = Field(sched.DEFAULT_RETENTION_DAYS,
                                description="Days a file is kept, then removed.")
    enabled: bool = True

    model_config = {"extra": "forbid"}

    def definition(self) -> sched.Definition:
        return sched.Definition(
            query_id=self.query_id, report=self.report, customer=self.customer,
            carrier=self.carrier, format=self.format, compression=self.compression,
            range=self.range, raw=self.raw, retention_days=self.retention_days,
            enabled=self.enabled)


async def _db(request: Request, fn):
    """A storage call whose UserErrors (schedule, report) become 400s naming the field."""
    def work(db: Database):
        try:
            return fn(db)
        except (sched.ScheduleError, reports.ReportError) as exc:
            raise Problem("invalid-request", str(exc)) from None
    return await store(request, work)


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return None if value >= sched.NEVER else deps.jsonable(value)


def schedule_json(s: sched.Schedule, st: sched.State, who: Caller) -> dict[str, Any]:
    d = s.definition
    return {
        "id": s.schedule_id, "name": s.name, "cron": s.cron, "owner": s.principal,
        "mine": s.principal == who.principal_text, **d.to_json(),
        "state": {
            "status": "stopped" if st.stopped else "disabled" if not d.enabled else "active",
            "stopped_reason": st.stopped or None,
            "next_run": None if st.stopped or not d.enabled else _iso(st.next_run),
            "slot": _iso(st.slot), "attempt": st.attempt, "last_run": st.last_job or None,
            "last_error": st.last_error or None},
        "created_at": _iso(s.created_at), "updated_at": _iso(s.updated_at),
    }


def check(db: Database, who: Caller, data: ScheduleIn) -> sched.Definition:
    """The definition if its owner may run it; a clear error naming the field otherwise."""
    d = data.definition().check()
    sched.parse_cron(data.cron)
    if d.query_id is not None:
        saved = ud.visible_query(db, who.principal_text, d.query_id)
        if saved is None:
            raise sched.ScheduleError(f"query_id: no saved query {d.query_id!r} visible to "
                                      "this key")
        if d.range is not None and saved.kind == "sql":
            params = (saved.body or {}).get("params") or {}
            if not any(p in params for p in RANGE_PARAMS):
                raise sched.ScheduleError(
                    "range: this SQL query has no {range_from:DateTime64(3, 'UTC')} or "
                    "{range_to:…} parameter for the range to fill in; write them in the SQL "
                    "(with sample values in its params), or leave range out")
            if d.range == "all":
                raise sched.ScheduleError("range: 'all' has no bounds to bind; leave range out")
    else:
        role = who.principal.role
        for kind, code in (("customer", d.customer), ("carrier", d.carrier)):
            if not code:
                continue
            if role != "tenant":
                raise sched.ScheduleError(
                    f"{kind}: only a tenant operator narrows a report to an account"
                    + ("; your report already covers only your account"
                       if role in ("customer", "carrier") else ""))
            if acc.find(db, who.principal.tenant or "", kind, code) is None:
                raise sched.ScheduleError(f"{kind}: no {kind} {code!r} in this tenant")
    return d


async def _visible(request: Request, who: Caller, schedule_id: str) -> sched.Schedule:
    s = await _db(request, lambda db: sched.get(db, schedule_id))
    if s is None or not sched.visible_to(s, who.principal_text):
        raise Problem("not-found", f"no schedule {schedule_id!r} visible to this key")
    return s


async def _owned(request: Request, who: Caller, schedule_id: str, action: str
                 ) -> sched.Schedule:
    s = await _visible(request, who, schedule_id)
    if s.principal != who.principal_text:
        raise Problem("forbidden", f"schedule {schedule_id!r} belongs to {s.principal}; only "
                                   f"its owner can {action} it")
    return s


@router.get("/schedules", summary="Schedules visible to this key (own; operators: the tenant's)")
async def list_schedules(request: Request, who: Caller = Depends(caller)) -> dict:
    def work(db: Database):
        st = sched.states(db)
        now = dt.datetime.now(dt.timezone.utc)
        return [(s, sched.current_state(s, st.get(s.schedule_id), now))
                for s in sched.listed(db, who.principal_text)]
    found = await _db(request, work)
    return {"schedules": [schedule_json(s, st, who) for s, st in found]}


@router.post("/schedules", status_code=201, summary="Schedule a saved query or a report")
async def create_schedule(request: Request, response: Response, data: ScheduleIn,
                          who: Caller = Depends(caller)) -> dict:
    def work(db: Database):
        d = check(db, who, data)
        mine = [s for s in sched.listed(db) if s.principal == who.principal_text]
        if len(mine) >= MAX_PER_PRINCIPAL:
            raise sched.ScheduleError(f"this principal already has {len(mine)} schedules, the "
                                      "most allowed; delete one first")
        s = sched.create(db, owner_key=who.key_id, principal=who.principal_text,
                         name=data.name, cron=data.cron, definition=d)
        return s, sched.state_of(db, s)
    s, st = await _db(request, work)
    response.headers["Location"] = f"/v1/schedules/{s.schedule_id}"
    return schedule_json(s, st, who)


@router.get("/schedules/{schedule_id}", summary="One schedule and its state")
async def get_schedule(request: Request, schedule_id: str, who: Caller = Depends(caller)) -> dict:
    s = await _visible(request, who, schedule_id)
    return schedule_json(s, await _db(request, lambda db: sched.state_of(db, s)), who)


@router.put("/schedules/{schedule_id}", summary="Replace a schedule (owner only; restarts a "
                                                "stopped one)")
async def replace_schedule(request: Request, schedule_id: str, data: ScheduleIn,
                           who: Caller = Depends(caller)) -> dict:
    current = await _owned(request, who, schedule_id, "change")

    def work(db: Database):
        d = check(db, who, data)
        s = sched.update(db, current, name=data.name, cron=data.cron, definition=d,
                         owner_key=who.key_id)
        return s, sched.state_of(db, s)
    s, st = await _db(request, work)
    return schedule_json(s, st, who)


@router.delete("/schedules/{schedule_id}", status_code=204,
               summary="Delete a schedule (owner only; its files expire as planned)")
async def delete_schedule(request: Request, schedule_id: str,
                          who: Caller = Depends(caller)) -> Response:
    current = await _owned(request, who, schedule_id, "delete")
    await _db(request, lambda db: sched.delete(db, current))
    return Response(status_code=204)


def run_json(job: ud.Job, f: sched.ExportFile | None, s: sched.Schedule,
             now: dt.datetime, mine: bool = True) -> dict[str, Any]:
    """A run as the API shows it; the file's URL only for the owner (who alone may fetch it)."""
    params = job.params if isinstance(job.params, dict) else {}
    result = job.result if isinstance(job.result, dict) else {}
    out: dict[str, Any] = {
        "id": job.job_id, "state": job.state, "slot": params.get("slot"),
        "attempt": params.get("attempt"), "error": job.error or None,
        "created_at": _iso(job.created_at), "updated_at": _iso(job.updated_at),
        "retry_at": result.get("retry_at"), "range": result.get("range"), "file": None}
    if f is not None:
        gone = f.removed or f.expires_at <= now
        out["file"] = {"name": f.name, "rows": f.rows, "bytes": f.bytes,
                       "expires_at": _iso(f.expires_at), "expired": gone,
                       "url": None if gone or not mine else
                       f"/v1/schedules/{s.schedule_id}/runs/{job.job_id}/file"}
    return out


@router.get("/schedules/{schedule_id}/runs", summary="A schedule's runs (jobs), newest first")
async def list_runs(request: Request, schedule_id: str, who: Caller = Depends(caller),
                    limit: int = Query(50, ge=1, le=500)) -> dict:
    s = await _visible(request, who, schedule_id)
    now = dt.datetime.now(dt.timezone.utc)

    def work(db: Database):
        return [(j, sched.file_of(db, j.job_id)) for j in sched.runs(db, s.schedule_id, limit)]
    found = await _db(request, work)
    mine = s.principal == who.principal_text
    return {"runs": [run_json(j, f, s, now, mine) for j, f in found]}


@router.get("/schedules/{schedule_id}/runs/{run_id}/file",
            summary="Download the file a run wrote (owner only)",
            response_class=StreamingResponse)
async def run_file(request: Request, schedule_id: str, run_id: str,
                   who: Caller = Depends(caller)):
    s = await _owned(request, who, schedule_id, "download the files of")
    f = await _db(request, lambda db: sched.file_of(db, run_id))
    if f is None or f.schedule_id != s.schedule_id:
        raise Problem("not-found", f"run {run_id!r} of schedule {schedule_id!r} has no file")
    if f.removed or f.expires_at <= dt.datetime.now(dt.timezone.utc):
        raise Problem("not-found", f"the file of run {run_id} expired at "
                                   f"{f.expires_at:%Y-%m-%d %H:%M} UTC and was removed")
    objects = deps.service(request).warm.store
    return StreamingResponse(objects.open(f.key), media_type=f.media_type, headers={
        "Content-Disposition": f'attachment; filename="{f.name}"', "Content-Length": str(f.bytes),
        "X-Timezone": "UTC", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


# -- reports on demand ------------------------------------------------------------------

@router.get("/reports/usage", summary="A daily or monthly usage report (CSV or HTML)")
async def usage_report(request: Request, who: Caller = Depends(caller),
                       period: str = Query("daily", description="daily or monthly"),
                       date: str | None = Query(None, description="YYYY-MM-DD (daily) or "
                                                "YYYY-MM (monthly); default: yesterday / "
                                                "last month (UTC)"),
                       format: str = Query("csv", description="csv or html"),
                       tenant: str | None = Query(None, description="Admin: the tenant, to "
                                                                    "narrow to an account"),
                       customer: str | None = Query(None, description="Operators: one customer"),
                       carrier: str | None = Query(None, description="Operators: one carrier")
                       ) -> Response:
    if format not in ("csv", "html"):
        raise Problem("invalid-request", f"format: {format!r} is not one of csv, html")
    now = dt.datetime.now(dt.timezone.utc)

    def work(db: Database, qid: str) -> tuple[bytes, str]:
        try:
            p = reports.period_of(period, date, now)
            rep = reports.usage_report(db, who.principal, p, tenant=tenant, customer=customer,
                                       carrier=carrier, now=now, label=who.principal_text)
        except Exception as exc:  # noqa: BLE001 - translated or re-raised
            raise deps.translate(exc) from None
        return (reports.to_html if format == "html" else reports.to_csv)(rep), p.label
    body, label = await deps.service(request).run(request, who, work)
    media = "text/html; charset=utf-8" if format == "html" else "text/csv; charset=utf-8"
    name = f"usage-{period}-{label}-utc.{format}"
    headers = {"X-Timezone": "UTC", "Cache-Control": "no-store",
               "X-Content-Type-Options": "nosniff",
               # the page is ours and static: nothing in it may run or load anything
               "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}
    if format == "csv":
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return Response(body, media_type=media, headers=headers)

