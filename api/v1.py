"""The /v1 endpoints for reading CDRs: fields, listing, search, SQL, one record, its recording.

Every endpoint takes its principal from the API key (`Service.caller`), never
from a parameter. An admin or a tenant operator may narrow to one tenant or
account explicitly (`tenant=`, `customer=`, `carrier=` — the Global view
drilling into an account); for anyone else those parameters are refused.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from cdrhouse.api.auth import Caller
from cdrhouse.api.errors import Problem
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import query as q
from cdrhouse.engine.db import Database
from cdrhouse.sql import catalogue
from cdrhouse.sql.builder import BuilderError
from cdrhouse.sql.guard import GuardError
from cdrhouse.sql.operators import operators_for
from cdrhouse.sql.usersql import UserSQLError
from cdrhouse.sql.viewer import RANGES, ViewerError, ViewRequest, resolve_range
from cdrhouse.tiering.reader import WarmSources

router = APIRouter(prefix="/v1")


def service(request: Request):
    return request.app.state.service


async def caller(request: Request) -> Caller:
    return await service(request).caller(request)


# -- JSON values ------------------------------------------------------------------

def jsonable(value: Any) -> Any:
    """Money stays exact (a string), times are ISO 8601 with their offset."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _rows(columns: list[str] | tuple[str, ...], rows: list[tuple]) -> list[dict]:
    return [{c: jsonable(v) for c, v in zip(columns, row)} for row in rows]


# -- requests ---------------------------------------------------------------------

class ViewParams(BaseModel):
    """The viewer's request: what to show, which calls, which page."""

    columns: list[str] | None = Field(None, description="Fields to show (default per role).")
    sort: list[str] = Field(["-start_time"], description="Fields, '-' for descending.")
    limit: int = Field(100, description="Page size, at most 1000.")
    cursor: str | None = Field(None, description="`next_cursor` of the previous page.")
    range: str | None = Field(None, description=f"One of {', '.join(RANGES)}.")
    date_from: str | None = Field(None, alias="from", description="Start, ISO 8601, inclusive.")
    date_to: str | None = Field(None, alias="to", description="End, ISO 8601, exclusive.")
    tz: str = Field("UTC", description="Display time zone (IANA).")
    connected_only: bool = False
    number: str | None = Field(None, description="Number search: 4420*, *1234, *555*, a,b, !x.")
    tenant: str | None = Field(None, description="Admin only: narrow to one tenant.")
    customer: str | None = Field(None, description="Operators: narrow to one customer (code).")
    carrier: str | None = Field(None, description="Operators: narrow to one carrier (code).")
    include_archive: bool = Field(False, description="Also read archived (warm) months in "
                                  "the range; slower, with stricter limits.")

    model_config = {"populate_by_name": True, "extra": "forbid"}


class SearchBody(ViewParams):
    rules: dict[str, Any] | None = Field(
        None, description="Query-builder tree: jQuery QueryBuilder or react-querybuilder JSON.",
        examples=[{"condition": "AND", "rules": [
            {"field": "billsec", "operator": "greater", "value": 30},
            {"field": "country", "operator": "in", "value": ["GB", "DE"]}]}])


class SQLBody(BaseModel):
    sql: str = Field(..., examples=["SELECT country, count() AS calls FROM cdrs "
                                    "WHERE start_time >= {since:DateTime64(3, 'UTC')} "
                                    "GROUP BY country ORDER BY calls DESC"])
    params: dict[str, Any] = Field(default_factory=dict,
                                   examples=[{"since": "2026-10-01 00:00:00"}])
    include_archive: bool = Field(False, description="`cdrs` also holds the archived (warm) "
                                  "months of your tenant; slower, with stricter limits.")

    model_config = {"extra": "forbid"}


# -- responses (for the OpenAPI docs) ---------------------------------------------------

class RangeOut(BaseModel):
    from_: str | None = Field(None, alias="from", description="UTC start applied (inclusive).")
    to: str | None = Field(None, description="UTC end applied (exclusive).")
    timezone: str = "UTC"

    model_config = {"populate_by_name": True}


class ArchiveOut(BaseModel):
    included: bool = Field(..., description="Whether archived months were asked for.")
    months: list[str] = Field(..., description="Archived months (YYYY-MM) the answer read "
                                               "from the warm archive; the rest came from hot "
                                               "storage.", examples=[["2026-06", "2026-07"]])


class PageOut(BaseModel):
    columns: list[str] = Field(..., examples=[["start_time", "dst_number", "billsec", "call_id"]])
    rows: list[dict[str, Any]] = Field(..., examples=[[{
        "start_time": "2026-11-21T17:12:38.668+01:00", "dst_number": "442079460000",
        "billsec": 58, "call_id": "aaf2d4c6-5442-4249-adb8-8f653a2df57b"}]])
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; "
                                                       "null on the last page.")
    range: RangeOut
    timezone: str = Field(..., description="Zone the times are shown in.")
    archive: ArchiveOut


class SQLColumn(BaseModel):
    name: str
    type: str


class SQLOut(BaseModel):
    columns: list[SQLColumn] = Field(..., examples=[[{"name": "country", "type": "String"},
                                                     {"name": "calls", "type": "UInt64"}]])
    rows: list[list[Any]] = Field(..., examples=[[["GB", 1234], ["DE", 987]]])
    row_count: int
    archive: ArchiveOut


class OperatorOut(BaseModel):
    key: str
    rqb: str | None
    label: str


class FieldOut(BaseModel):
    name: str
    type: str
    kind: str
    label: str
    description: str
    filterable: bool
    sortable: bool
    values: list[str] | None
    operators: list[OperatorOut]


class FieldsOut(BaseModel):
    principal: str
    default_columns: list[str]
    fields: list[FieldOut]


def _split(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out


def view_params(
    columns: list[str] | None = Query(None, description="Fields, comma-separated or repeated."),
    sort: list[str] | None = Query(None, description="e.g. -start_time,call_id"),
    limit: int = Query(100), cursor: str | None = Query(None),
    range: str | None = Query(None, description=f"One of {', '.join(RANGES)}."),
    date_from: str | None = Query(None, alias="from"), date_to: str | None = Query(None, alias="to"),
    tz: str = Query("UTC"), connected_only: bool = Query(False), number: str | None = Query(None),
    tenant: str | None = Query(None), customer: str | None = Query(None),
    carrier: str | None = Query(None),
    include_archive: bool = Query(False, description="Also read archived (warm) months."),
) -> ViewParams:
    return ViewParams(columns=_split(columns), sort=_split(sort) or ["-start_time"], limit=limit,
                      cursor=cursor, range=range, date_from=date_from, date_to=date_to, tz=tz,
                      connected_only=connected_only, number=number, tenant=tenant,
                      customer=customer, carrier=carrier, include_archive=include_archive)


def narrowing_rules(db: Database, who: Caller, p: ViewParams) -> list[dict]:
    """Rules that narrow an operator's view to a tenant or account; refused for others."""
    role, tenant = who.principal.role, who.principal.tenant
    asked = {k: v for k, v in (("tenant", p.tenant), ("customer", p.customer),
                               ("carrier", p.carrier)) if v}
    if not asked:
        return []
    if role not in ("admin", "tenant"):
        raise Problem("forbidden", f"a {role} user cannot narrow to another account "
                                   f"({', '.join(asked)}); the key already scopes the view")
    rules: list[dict] = []
    if "tenant" in asked:
        if role != "admin":
            raise Problem("forbidden", "only an admin can choose the tenant")
        tenant = p.tenant
        rules.append({"field": "tenant_id", "operator": "equal", "value": tenant})
    for kind in ("customer", "carrier"):
        code = asked.get(kind)
        if not code:
            continue
        if not tenant:
            raise Problem("invalid-request", f"{kind}: an admin names the tenant too (tenant=…)")
        found = acc.find(db, tenant, kind, code)
        if found is None:
            raise Problem("not-found", f"no {kind} {code!r} in this tenant")
        rules.append({"field": f"{kind}_id", "operator": "equal", "value": found.account_id})
    return rules


def to_request(db: Database, who: Caller, p: ViewParams, rules: dict | None,
               for_download: bool = False) -> ViewRequest:
    narrow = narrowing_rules(db, who, p)
    if narrow:
        rules = {"condition": "AND", "rules": narrow + ([rules] if rules else [])}
    return ViewRequest(columns=p.columns, sort=p.sort, limit=None if for_download else p.limit,
                       cursor=p.cursor, range=p.range, date_from=p.date_from, date_to=p.date_to,
                       tz=p.tz, connected_only=p.connected_only, number=p.number, rules=rules,
                       for_download=for_download)


def translate(exc: Exception) -> Problem:
    """Our compile and query errors as problems (messages are already safe to show)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, (GuardError, UserSQLError)):
        return Problem("bad-sql", str(exc))
    if isinstance(exc, (ViewerError, BuilderError, ValueError)) and not isinstance(exc, q.QueryFailed):
        return Problem("invalid-request", str(exc))
    if isinstance(exc, q.QueryFailed):
        slug = {"limit": "limit-exceeded", "cancelled": "query-cancelled"}.get(exc.kind, "query-failed")
        return Problem(slug, str(exc))
    raise exc


def warm_sources(request: Request, db: Database, who: Caller, wanted: bool,
                 start: dt.datetime | None = None, end: dt.datetime | None = None
                 ) -> WarmSources:
    """The archived months a request reads (none unless it asked for them)."""
    if not wanted:
        return WarmSources()
    return service(request).warm.sources(db, who.principal.tenant, start, end)


def archive_json(wanted: bool, sources: WarmSources) -> dict:
    return {"included": wanted, "months": sources.labels()}


def _page_response(res: q.ViewResult, wanted: bool = False,
                   sources: WarmSources | None = None) -> dict:
    frm, to = res.compiled.applied_range
    return {
        "columns": list(res.compiled.output_columns),
        "rows": _rows(res.compiled.output_columns, res.rows),
        "next_cursor": res.next_cursor,
        "range": {"from": jsonable(frm), "to": jsonable(to), "timezone": "UTC"},
        "timezone": res.compiled.tz,
        "archive": archive_json(wanted, sources or WarmSources()),
    }


async def _view(request: Request, who: Caller, p: ViewParams, rules: dict | None) -> dict:
    def work(db: Database, qid: str) -> tuple[q.ViewResult, WarmSources]:
        try:
            now = dt.datetime.now(dt.UTC)
            req = to_request(db, who, p, rules)
            sources = warm_sources(request, db, who, p.include_archive,
                                   *resolve_range(req, now))
            return q.run_view(db, who.principal, req, now, query_id=qid,
                              archive=sources.selects), sources
        except Exception as exc:  # noqa: BLE001 - translated or re-raised
            raise translate(exc) from None
    res, sources = await service(request).run(request, who, work)
    request.state.rows = len(res.rows)
    return _page_response(res, p.include_archive, sources)


# -- endpoints ----------------------------------------------------------------------

@router.get("/fields", summary="The CDR fields this key may see, with operators and defaults",
            response_model=FieldsOut)
async def fields(who: Caller = Depends(caller)) -> dict:
    role = who.principal.role
    return {
        "principal": who.principal_text,
        "default_columns": list(catalogue.DEFAULT_COLUMNS[role]),
        "fields": [{
            "name": f.name, "type": f.ch_type, "kind": f.kind, "label": f.label,
            "description": f.description, "filterable": f.filterable, "sortable": f.sortable,
            "values": list(f.enum_values) or None,
            "operators": [{"key": op.key, "rqb": op.rqb, "label": op.label}
                          for op in operators_for(f)] if f.filterable else [],
        } for f in catalogue.visible_fields(role)],
    }


@router.get("/cdrs", summary="Viewer listing: one page of CDRs", response_model=PageOut)
async def list_cdrs(request: Request, p: ViewParams = Depends(view_params),
                    who: Caller = Depends(caller)) -> dict:
    from cdrhouse.api.userdata import apply_preferences  # the key's remembered tz and columns
    p = await apply_preferences(request, who, p)
    return await _view(request, who, p, None)


@router.post("/cdrs/search", summary="Viewer listing with a query-builder tree",
             response_model=PageOut)
async def search_cdrs(request: Request, body: SearchBody, who: Caller = Depends(caller)) -> dict:
    from cdrhouse.api.userdata import apply_preferences
    p = await apply_preferences(request, who, body, given=body.model_fields_set)
    return await _view(request, who, p, body.rules)


@router.post("/sql", summary="User SQL over the logical tables, guarded for this key",
             response_model=SQLOut)
async def run_sql(request: Request, body: SQLBody, who: Caller = Depends(caller)) -> dict:
    def work(db: Database, qid: str) -> tuple[q.Result, WarmSources]:
        try:
            sources = warm_sources(request, db, who, body.include_archive)
            return q.run_sql(db, who.principal, body.sql, body.params, query_id=qid,
                             archive=sources.selects), sources
        except Exception as exc:  # noqa: BLE001
            raise translate(exc) from None
    res, sources = await service(request).run(request, who, work)
    request.state.rows = len(res.rows)
    return {"columns": [{"name": n, "type": t} for n, t in zip(res.columns, res.types)],
            "rows": [[jsonable(v) for v in row] for row in res.rows],
            "row_count": len(res.rows),
            "archive": archive_json(body.include_archive, sources)}


async def _one(request: Request, who: Caller, call_id: str) -> dict:
    cols = [f.name for f in catalogue.visible_fields(who.principal.role)]
    p = ViewParams(columns=cols, range="all", limit=2)
    rules = {"condition": "AND", "rules": [{"field": "call_id", "operator": "equal", "value": call_id}]}
    page = await _view(request, who, p, rules)
    if not page["rows"]:
        # the same answer whether the call does not exist or belongs to someone else
        raise Problem("not-found", f"no call {call_id!r} visible to this key")
    return page["rows"][0]


@router.get("/cdrs/{call_id}", summary="One CDR")
async def get_cdr(request: Request, call_id: str, who: Caller = Depends(caller)) -> dict:
    return await _one(request, who, call_id)


@router.get("/cdrs/{call_id}/recording", summary="Redirect to the call's recording")
async def get_recording(request: Request, call_id: str, who: Caller = Depends(caller)):
    record = await _one(request, who, call_id)
    url = record.get("recording_url") or ""
    if not url:
        raise Problem("not-found", f"call {call_id!r} has no recording")
    return RedirectResponse(url, status_code=307)


health = APIRouter()


@health.get("/healthz", summary="Liveness")
async def healthz() -> dict:
    return {"status": "ok"}


@health.get("/readyz", summary="ClickHouse reachable and schema current")
async def readyz(request: Request):
    from cdrhouse.engine.migrate import is_current

    def work() -> bool:
        with service(request).pool.acquire(timeout=5) as db:
            db.scalar("SELECT 1")
            return is_current(db)
    try:
        current = await __import__("anyio").to_thread.run_sync(work)
    except Exception:  # noqa: BLE001 - readiness is a yes/no answer
        raise Problem("unavailable", "ClickHouse is not reachable") from None
    if not current:
        raise Problem("unavailable", "the schema is not current; run `cdrhouse init`")
    return {"status": "ready"}
