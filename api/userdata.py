"""The /v1 endpoints for what users keep: saved queries, preferences, jobs.

Saved queries are stored requests of the three read endpoints — a viewer page
(`GET /v1/cdrs` parameters), a builder search (`POST /v1/cdrs/search` body) or
user SQL (`POST /v1/sql` body). Running one goes through exactly the code of
those endpoints **as the caller**: the stored text carries no principal, so a
tenant operator's shared query run by a customer user is guarded for that
customer. A body is compiled for its owner when saved, so a query the guard or
the viewer refuses is refused then, with the reason, not on every later run.

Who sees what is decided in engine.userdata (one WHERE clause for everyone):
own queries plus shared ones of the same tenant (an operator's shared query
for the whole tenant; a customer's or carrier's shared query for its operator
only; an admin's never). Ownership is by principal. Not visible → 404, the
same answer as a missing id, so private queries do not leak their existence;
visible but not yours (a shared query) → 403 on PUT / DELETE.

Preferences (display time zone, default columns) are per API key.
`apply_preferences` is the hook that lets a viewer endpoint use them when the
request does not say; saved viewer / search queries use it when run.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import BaseModel, Field, ValidationError

from cdrhouse.api import deps
from cdrhouse.api.deps import apply_preferences, caller, forget_preferences, store
from cdrhouse.api.models import SearchBody, SQLBody, ViewParams
from cdrhouse.api.auth import Caller
from cdrhouse.api.errors import Problem
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database
from cdrhouse.sql.builder import InvalidValue, zone
from cdrhouse.sql.guard import compile_user_sql
from cdrhouse.sql.viewer import ViewerError, compile_view, resolve_columns

T = TypeVar("T")

router = APIRouter(prefix="/v1")

#: The request model each kind of saved query stores, and whose endpoint runs it.
BODY_MODELS: dict[str, type[BaseModel]] = {
    "viewer": ViewParams, "search": SearchBody, "sql": SQLBody}


# -- plumbing ---------------------------------------------------------------------------

_WHERE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]]*: ")


def _at(where: str, message: str) -> str:
    """Say where a message applies: 'columns: …' inside the body becomes 'body.columns: …'."""
    if _WHERE.match(message):
        return f"{where}.{message}"
    return f"{where}: {message}"


def _validation_message(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{where}.{loc}: {err.get('msg')}" if loc else f"{where}: {err.get('msg')}")
    return "; ".join(parts)


def _iso(value: dt.datetime | None) -> str | None:
    return deps.jsonable(value) if value is not None else None


# -- saved queries ------------------------------------------------------------------------

class QueryIn(BaseModel):
    """A saved query as sent on create and on replace (PUT sends all of it)."""

    name: str = Field(..., min_length=1, max_length=200, examples=["Calls by country"])
    kind: Literal["viewer", "search", "sql"] = Field(
        ..., description="viewer: GET /v1/cdrs parameters; search: POST /v1/cdrs/search body; "
                         "sql: POST /v1/sql body.")
    body: dict[str, Any] = Field(..., examples=[{
        "sql": "SELECT country, count() AS calls FROM cdrs GROUP BY country ORDER BY calls DESC",
        "params": {}}])
    shared: bool = Field(False, description="Visible within the owner's tenant (see docs).")

    model_config = {"extra": "forbid"}


class RunIn(BaseModel):
    """What may change from one run of a saved query to the next."""

    cursor: str | None = Field(None, description="viewer/search: `next_cursor` of the last run.")
    params: dict[str, Any] | None = Field(
        None, description="sql: parameter values replacing the saved ones by name.")

    model_config = {"extra": "forbid"}


def parse_body(kind: str, raw: dict[str, Any]) -> BaseModel:
    """The stored body of a `kind` query as its endpoint's request model."""
    try:
        return BODY_MODELS[kind].model_validate(raw)
    except ValidationError as exc:
        raise Problem("invalid-request", _validation_message(exc, "body")) from None


def _check_body(db: Database, who: Caller, kind: str, body: BaseModel) -> None:
    """Compile the body for the saving principal; raise a problem naming what is wrong.

    Only compilation (guard, fields, rules, range, tz): no query runs, so an
    error ClickHouse alone finds (a misspelt function) shows on the first run.
    """
    try:
        if isinstance(body, SQLBody):
            compile_user_sql(body.sql, who.principal, body.params)
            return
        assert isinstance(body, ViewParams)
        if body.cursor is not None:
            raise ViewerError("cursor: a saved query starts at the first page; "
                              "send the cursor when running it")
        rules = body.rules if isinstance(body, SearchBody) else None
        request = deps.to_request(db, who, body, rules)
        compile_view(request, who.principal, dt.datetime.now(dt.timezone.utc))
    except Exception as exc:  # noqa: BLE001 - translated or re-raised
        problem = deps.translate(exc)
        where = "body.sql" if kind == "sql" else "body"
        raise Problem(problem.slug, _at(where, problem.detail)) from None


def _stored(kind: str, body: BaseModel) -> dict[str, Any]:
    """What is kept: the fields the client gave, under their public names ('from', 'to')."""
    return body.model_dump(mode="json", by_alias=True, exclude_unset=True)


def query_json(q: ud.SavedQuery, who: Caller) -> dict[str, Any]:
    return {
        "id": q.query_id, "name": q.name, "kind": q.kind, "body": q.body, "shared": q.shared,
        "owner": q.principal, "mine": q.principal == who.principal_text,
        "created_at": _iso(q.created_at), "updated_at": _iso(q.updated_at),
    }


async def _visible(request: Request, who: Caller, query_id: str) -> ud.SavedQuery:
    q = await store(request, lambda db: ud.visible_query(db, who.principal_text, query_id))
    if q is None:
        # the same answer whether it does not exist or is someone else's private query
        raise Problem("not-found", f"no saved query {query_id!r} visible to this key")
    return q


async def _owned(request: Request, who: Caller, query_id: str, action: str) -> ud.SavedQuery:
    q = await _visible(request, who, query_id)
    if q.principal != who.principal_text:
        raise Problem("forbidden", f"saved query {query_id!r} is shared with you by {q.principal}; "
                                   f"only its owner can {action} it")
    return q


async def _validated(request: Request, who: Caller, data: QueryIn) -> dict[str, Any]:
    body = parse_body(data.kind, data.body)
    await store(request, lambda db: _check_body(db, who, data.kind, body))
    return _stored(data.kind, body)


@router.get("/queries", summary="Saved queries: this principal's own and those shared with it")
async def list_queries(request: Request, who: Caller = Depends(caller)) -> dict:
    found = await store(request, lambda db: ud.visible_queries(db, who.principal_text))
    return {"queries": [query_json(q, who) for q in found]}


@router.post("/queries", status_code=201, summary="Save a query (checked for this principal)")
async def create_query(request: Request, response: Response, data: QueryIn,
                       who: Caller = Depends(caller)) -> dict:
    body = await _validated(request, who, data)
    q = await store(request, lambda db: ud.create_query(
        db, owner_key=who.key_id, principal=who.principal_text, name=data.name, kind=data.kind,
        body=body, shared=data.shared))
    response.headers["Location"] = f"/v1/queries/{q.query_id}"
    return query_json(q, who)


@router.get("/queries/{query_id}", summary="One saved query")
async def get_query(request: Request, query_id: str, who: Caller = Depends(caller)) -> dict:
    return query_json(await _visible(request, who, query_id), who)


@router.put("/queries/{query_id}", summary="Replace a saved query (owner only)")
async def replace_query(request: Request, query_id: str, data: QueryIn,
                        who: Caller = Depends(caller)) -> dict:
    current = await _owned(request, who, query_id, "change")
    body = await _validated(request, who, data)
    q = await store(request, lambda db: ud.update_query(
        db, current, name=data.name, kind=data.kind, body=body, shared=data.shared))
    return query_json(q, who)


@router.delete("/queries/{query_id}", status_code=204, summary="Delete a saved query (owner only)")
async def delete_query(request: Request, query_id: str,
                       who: Caller = Depends(caller)) -> Response:
    current = await _owned(request, who, query_id, "delete")
    await store(request, lambda db: ud.delete_query(db, current))
    return Response(status_code=204)


@router.post("/queries/{query_id}/run", summary="Run a saved query as this key's principal")
async def run_query(request: Request, query_id: str, run: RunIn | None = Body(None),
                    who: Caller = Depends(caller)):
    """The answer of the query's endpoint (same shape), guarded for the caller, not the owner."""
    q = await _visible(request, who, query_id)
    run = run or RunIn()
    body = parse_body(q.kind, q.body)
    if isinstance(body, SQLBody):
        if run.cursor is not None:
            raise Problem("invalid-request", "cursor: an SQL query has no pages")
        if run.params:
            body = body.model_copy(update={"params": {**body.params, **run.params}})
        return await deps.sql_response(request, who, body)
    assert isinstance(body, ViewParams)
    if run.params:
        raise Problem("invalid-request", f"params: a {q.kind} query takes no parameters")
    given = set(body.model_fields_set)
    if run.cursor is not None:
        body = body.model_copy(update={"cursor": run.cursor})
    body = await apply_preferences(request, who, body, given)
    rules = body.rules if isinstance(body, SearchBody) else None
    return await deps.run_view(request, who, body, rules)


# -- preferences --------------------------------------------------------------------------

class PreferencesIn(BaseModel):
    """The whole set (PUT replaces it); null means "no preference", the default applies."""

    tz: str | None = Field(None, description="Display time zone (IANA), e.g. Europe/Berlin.")
    columns: list[str] | None = Field(None, description="Viewer columns when none are asked for.")

    model_config = {"extra": "forbid"}


def preferences_json(p: ud.Preferences) -> dict[str, Any]:
    return {"tz": p.tz, "columns": list(p.columns) if p.columns is not None else None,
            "updated_at": _iso(p.updated_at)}


def check_preferences(who: Caller, data: PreferencesIn) -> None:
    """Refuse an unknown zone or a column this key's principal may not see, naming it."""
    if data.tz is not None:
        try:
            zone(data.tz)
        except InvalidValue as exc:
            raise Problem("invalid-request", f"tz: {exc}") from None
    if data.columns is not None:
        try:
            resolve_columns(data.columns, who.principal)
        except ViewerError as exc:
            raise Problem("invalid-request", str(exc)) from None


@router.get("/preferences", summary="This key's preferences")
async def get_preferences(request: Request, who: Caller = Depends(caller)) -> dict:
    return preferences_json(await store(request, lambda db: ud.get_preferences(db, who.key_id)))


@router.put("/preferences", summary="Replace this key's preferences")
async def put_preferences(request: Request, data: PreferencesIn,
                          who: Caller = Depends(caller)) -> dict:
    check_preferences(who, data)
    prefs = await store(request, lambda db: ud.put_preferences(
        db, who.key_id, data.tz, data.columns))
    forget_preferences(request, who.key_id)
    return preferences_json(prefs)


# -- jobs ---------------------------------------------------------------------------------

#: Where a job runs (its server's host name and process id): for admins only.
_RUNNER_KEYS = frozenset({"host", "pid", "instance"})


def job_json(j: ud.Job, who: Caller | None = None) -> dict[str, Any]:
    """A job as the API shows it. The runner's host and pid (kept in the result so a
    dead job can be resumed) are internals of the server: only an admin `who` sees them."""
    result = j.result
    if isinstance(result, dict) and not (who is not None and who.principal.role == "admin"):
        result = {k: v for k, v in result.items() if k not in _RUNNER_KEYS}
    return {
        "id": j.job_id, "kind": j.kind, "tenant": j.tenant_id or None, "principal": j.principal,
        "state": j.state, "progress": j.progress, "params": j.params, "result": result,
        "error": j.error or None, "created_at": _iso(j.created_at),
        "updated_at": _iso(j.updated_at),
    }


@router.get("/jobs", summary="Jobs this key may see, newest first")
async def list_jobs(request: Request, who: Caller = Depends(caller),
                    state: str | None = Query(None, description="queued, running, succeeded, "
                                                                 "failed or cancelled"),
                    kind: str | None = Query(None),
                    limit: int = Query(100, ge=1, le=1000)) -> dict:
    if state is not None and state not in ud.JOB_STATES:
        raise Problem("invalid-request",
                      f"state: {state!r} is not one of {', '.join(ud.JOB_STATES)}")
    scope = ud.job_scope(who.principal_text)
    found = await store(request, lambda db: ud.list_jobs(
        db, tenant=scope.get("tenant"), principal=scope.get("principal"), state=state,
        kind=kind, limit=limit))
    return {"jobs": [job_json(j, who) for j in found]}


@router.get("/jobs/{job_id}", summary="One job")
async def get_job(request: Request, job_id: str, who: Caller = Depends(caller)) -> dict:
    job = await store(request, lambda db: ud.get_job(db, job_id))
    if job is None or not ud.job_visible_to(job, who.principal_text):
        raise Problem("not-found", f"no job {job_id!r} visible to this key")
    return job_json(job, who)
