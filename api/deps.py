"""Request plumbing shared by every endpoint module (and the web layer).

What an endpoint needs besides its own logic: the service and the caller of a
request, the viewer request from query parameters, the narrowing an operator
may ask for, running a viewer page or a small storage call off the event loop,
and the one mapping from our errors to problems (`translate`). Endpoint modules
import from here, never from each other.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import decimal
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import json

import anyio
from fastapi import Query, Request
from fastapi.responses import Response

from cdrhouse.api import conditional as cond
from cdrhouse.api.auth import Caller, secret_from
from cdrhouse.api.errors import Problem
from cdrhouse.api.models import SQLBody, ViewParams
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import query as q
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database
from cdrhouse.engine.pool import PoolExhausted
from cdrhouse.engine.versions import data_version
from cdrhouse.sql import catalogue
from cdrhouse.sql.errors import UserError
from cdrhouse.sql.limits import limits_for
from cdrhouse.sql.usersql import UserSQLError
from cdrhouse.sql.viewer import RANGES, ViewerError, ViewRequest, resolve_columns, resolve_range
from cdrhouse.tiering.reader import WarmSources

T = TypeVar("T")


def service(request: Request):
    return request.app.state.service


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def caller(request: Request) -> Caller:
    """Who is calling: the API key in the request's headers, or else the web viewer's
    session cookie — so the page's scripts use the same /v1 routes (and the same guard)
    as any client. A cookie is sent by the browser on its own, so a state-changing
    request on it must also prove it comes from our page (same Origin and the session's
    CSRF token in `X-CSRF-Token`); a key in the headers needs no such proof."""
    from cdrhouse.api.web import session as sess  # the web layer builds on this module

    if secret_from(request) is None and request.cookies.get(sess.COOKIE):
        try:
            web = await sess.current(request)
            if request.method not in SAFE_METHODS:
                sess.check_csrf(request, web.csrf, None)
        except sess.SignedOut as exc:
            raise Problem("unauthorized", f"{exc} (session cookie)") from None
        except sess.CSRFRefused as exc:
            raise Problem("forbidden", str(exc)) from None
        except sess.SignInRefused as exc:  # the pool is exhausted
            raise Problem("unavailable", str(exc)) from None
        return web.caller
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


#: values `jsonable` returns as they are (exact types: a subclass goes through `jsonable`)
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _iso_datetime(value: dt.datetime) -> str:
    text = value.isoformat(timespec="milliseconds")
    return text + "+00:00" if value.tzinfo is None else text   # naive: UTC, as `jsonable`


#: `jsonable` for one exact type, without its chain of checks
_BY_TYPE: dict[type, Callable[[Any], Any]] = {
    decimal.Decimal: str, dt.datetime: _iso_datetime, dt.date: dt.date.isoformat,
    dt.time: dt.time.isoformat}


def _json_column(values: tuple) -> tuple | list:
    """One result column through `jsonable`; strings and numbers (most of a page) as they are."""
    kinds = set(map(type, values))
    if kinds <= _PLAIN:
        return values
    kinds.discard(type(None))
    convert = _BY_TYPE.get(kinds.pop()) if len(kinds) == 1 else None
    if convert is None:                  # mixed, bytes or unusual types: the general path
        return list(map(jsonable, values))
    return [v if v is None else convert(v) for v in values]


def _json_columns(rows: list[tuple] | list[list]) -> list[tuple | list]:
    return [_json_column(column) for column in zip(*rows)]


def rows_json(columns: list[str] | tuple[str, ...], rows: list[tuple]) -> list[dict]:
    """Rows as JSON objects, values through `jsonable` — column by column: a page's
    values are mostly strings and numbers, and calling `jsonable` on each of them
    was most of the time a page spent in Python."""
    names = list(columns)
    if not rows:
        return []
    if len(set(names)) != len(names) or set(map(len, rows)) != {len(names)}:
        # a repeated name (the last value wins) or a ragged row: value by value
        return [{c: jsonable(v) for c, v in zip(names, row)} for row in rows]
    return [dict(zip(names, row)) for row in zip(*_json_columns(rows))]


def rows_json_lists(rows: list[tuple]) -> list[list]:
    """Rows as JSON arrays, values through `jsonable` (column by column, as `rows_json`)."""
    if len(set(map(len, rows))) > 1:
        return [[jsonable(v) for v in row] for row in rows]
    return [list(row) for row in zip(*_json_columns(rows))]


def _split(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out


async def view_params(
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
    # `async def` (as every dependency that does no I/O): FastAPI runs a plain `def`
    # dependency in a worker thread, a hop that costs more than the work itself
    return ViewParams(columns=_split(columns), sort=_split(sort) or ["-start_time"], limit=limit,
                      cursor=cursor, range=range, date_from=date_from, date_to=date_to, tz=tz,
                      connected_only=connected_only, number=number, tenant=tenant,
                      customer=customer, carrier=carrier, include_archive=include_archive)


def _query_names(dependant: Any) -> set[str]:
    """The query parameters an endpoint declares, its dependencies' included."""
    names = {getattr(f, "alias", None) or f.name for f in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def reject_unknown_query_params(request: Request) -> None:
    """400 for a query parameter the endpoint does not take, naming it and the accepted ones.

    A misspelt parameter silently ignored changes the answer (`preset=` for `range=`
    listed today's calls instead of the week's); saying so costs nothing. A router
    dependency: every /v1 endpoint gets it (app.py). `async def` although it does no
    I/O: a plain `def` dependency is run in a worker thread, on every request.
    """
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    accepted = _query_names(dependant)
    unknown = sorted(set(request.query_params.keys()) - accepted)
    if not unknown:
        return
    hints = [f"{u!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
        u, accepted, n=1)) else repr(u) for u in unknown]
    raise Problem("invalid-request",
                  f"unknown query parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                  f"{request.url.path} accepts: {', '.join(sorted(accepted)) or 'none'}")


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
    # the account narrowing is compiled apart: an error in `rules` names its own path
    narrow = narrowing_rules(db, who, p)
    return ViewRequest(columns=p.columns, sort=p.sort, limit=None if for_download else p.limit,
                       cursor=p.cursor, range=p.range, date_from=p.date_from, date_to=p.date_to,
                       tz=p.tz, connected_only=p.connected_only, number=p.number, rules=rules,
                       for_download=for_download, account_rules=tuple(narrow))


def translate(exc: Exception) -> Problem:
    """Our user-facing errors as problems; anything else is re-raised.

    Only `UserError`s (their messages are written to be shown) become 4xx
    answers. Any other exception — a bug, an internal invariant, an outage —
    propagates to the app's handler: a 500 with no detail, logged server-side.
    """
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, UserSQLError):
        return Problem("bad-sql", str(exc))
    if isinstance(exc, q.QueryFailed):
        slug = {"limit": "limit-exceeded", "cancelled": "query-cancelled"}.get(exc.kind, "query-failed")
        return Problem(slug, str(exc))
    if isinstance(exc, UserError):
        path = getattr(exc, "rule_path", None)
        # a builder error also names its rule on its own (`rule_path`) for the client
        return Problem("invalid-request", str(exc), **({"rule_path": path} if path else {}))
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


def page_response(res: q.ViewResult, wanted: bool = False,
                   sources: WarmSources | None = None) -> dict:
    frm, to = res.compiled.applied_range
    return {
        "columns": list(res.compiled.output_columns),
        "rows": rows_json(res.compiled.output_columns, res.rows),
        "next_cursor": res.next_cursor,
        "range": {"from": jsonable(frm), "to": jsonable(to), "timezone": "UTC"},
        "timezone": res.compiled.tz,
        "archive": archive_json(wanted, sources or WarmSources()),
    }


_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def response_cap(request: Request, who: Caller) -> int:
    """The largest JSON answer to a query: configured, else twice the role's result-bytes
    limit (JSON spells values out: numbers, quotes, keys)."""
    configured = service(request).config.max_response_bytes
    return configured or 2 * limits_for(who.principal.role)["max_result_bytes"]


def capped_encode(body: dict, cap: int) -> bytes:
    """`body` as compact ASCII JSON (the bytes of `_ENCODER.encode(body)`), refused (422)
    past `cap` bytes. A list value (the rows) is encoded item by item, so an oversized
    answer stops at the cap instead of being built whole; each piece goes through the C
    encoder (`iterencode` of the whole body would run the pure-Python one, several
    times slower on every answer)."""
    encode = _ENCODER.encode
    parts: list[str] = []
    size = 0

    def add(piece: str) -> None:
        nonlocal size
        size += len(piece)  # ASCII-only: characters are bytes
        if size > cap:
            raise Problem("limit-exceeded", f"the response would be larger than allowed "
                                            f"(at most {cap:,} bytes of JSON); select fewer "
                                            "or smaller values, add LIMIT, or aggregate")
        parts.append(piece)

    add("{")
    for n, (key, value) in enumerate(body.items()):
        add(("," if n else "") + encode(str(key)) + ":")
        if isinstance(value, list):
            add("[")
            for i, item in enumerate(value):
                add(("," if i else "") + encode(item))
            add("]")
        else:
            add(encode(value))
    add("}")
    return "".join(parts).encode("ascii")


#: answers surely smaller than this are encoded on the event loop (`_surely_small`)
SMALL_ANSWER = 64 * 1024
_NUMBERS = frozenset({int, float, bool, type(None)})
_TEXTS = frozenset({str, type(None)})


def _surely_small(body: dict) -> bool:
    """Whether `body` (a user-SQL answer) is surely under `SMALL_ANSWER` bytes of JSON,
    judged without encoding it: numbers (at most 80 characters each: Int256), strings
    (at most 12 characters of JSON per character: a non-BMP one as two escapes), nothing
    else (arrays, maps: not judged, so not small). Cheap: column by column, in C."""
    rows = body.get("rows")
    if not isinstance(rows, list) or len(rows) > 4096 or len(set(map(len, rows))) > 1:
        return False                     # many rows, or ragged ones (zip would skip cells)
    size = 512 + 12 * sum(len(c.get("name", "")) + len(c.get("type", ""))
                          for c in body.get("columns", ()))
    size += 24 * len(body.get("archive", {}).get("months", ()))
    for column in zip(*rows):
        kinds = set(map(type, column))
        if kinds <= _NUMBERS:
            size += 81 * len(column)
        elif kinds <= _TEXTS:
            size += 12 * sum(map(len, filter(None, column))) + 7 * len(column)
        else:
            return False
        if size > SMALL_ANSWER:
            return False
    return size <= SMALL_ANSWER


async def capped_json(request: Request, who: Caller, body: dict) -> Response:
    """`body` as JSON, refused (422) past `response_cap` — encoded piece by piece
    (`capped_encode`), so an oversized answer stops at the cap instead of being built
    whole; in a worker thread unless the answer is surely small (then the hop to the
    thread would cost more than the encoding, and the event loop is not held long)."""
    cap = response_cap(request, who)
    if _surely_small(body):
        data = capped_encode(body, cap)
    else:
        data = await anyio.to_thread.run_sync(capped_encode, body, cap)
    return Response(data, media_type="application/json")


async def run_view(request: Request, who: Caller, p: ViewParams, rules: dict | None) -> dict:
    return (await _run_view(request, who, p, rules, dt.datetime.now(dt.UTC), False))[0]


async def _run_view(request: Request, who: Caller, p: ViewParams, rules: dict | None,
                    now: dt.datetime, want_version: bool) -> tuple[dict, str | None]:
    """The page, and (`want_version`) the store's data version read just before its query."""
    def work(db: Database, qid: str) -> tuple[q.ViewResult, WarmSources, str | None]:
        try:
            version = data_version(db) if want_version else None
            req = to_request(db, who, p, rules)
            sources = warm_sources(request, db, who, p.include_archive,
                                   *resolve_range(req, now))
            return q.run_view(db, who.principal, req, now, query_id=qid,
                              archive=sources.selects), sources, version
        except Exception as exc:  # noqa: BLE001 - translated or re-raised
            raise translate(exc) from None
    res, sources, version = await service(request).run(request, who, work)
    request.state.rows = len(res.rows)
    return page_response(res, p.include_archive, sources), version


async def view_response(request: Request, who: Caller, p: ViewParams,
                        rules: dict | None = None) -> Response:
    """A viewer page as the HTTP answer, conditional (api/conditional.py): tagged with an
    ETag, and a 304 without running the query when `If-None-Match` names the current tag.

    The check reads only the data version, on a pooled client outside the query
    admission (a lookup, not a query); the version is read before the page's query.
    """
    now = dt.datetime.now(dt.UTC)
    if p.include_archive or not service(request).config.page_etags:
        return cond.json_response((await _run_view(request, who, p, rules, now, False))[0])
    try:
        applied = resolve_range(ViewRequest(range=p.range, date_from=p.date_from,
                                            date_to=p.date_to, tz=p.tz), now)
    except Exception as exc:  # noqa: BLE001 - translated or re-raised
        raise translate(exc) from None
    version = None
    if request.headers.get("if-none-match"):
        version = await store(request, data_version)
        tag = cond.page_tag(request.url.path, who, p, rules, applied, version)
        if cond.matches(request, tag):
            request.state.rows = 0
            return cond.not_modified(tag)
        body, _ = await _run_view(request, who, p, rules, now, False)
    else:
        body, version = await _run_view(request, who, p, rules, now, True)
    assert version is not None
    return cond.json_response(body, cond.page_tag(request.url.path, who, p, rules, applied,
                                                  version))


async def run_sql(request: Request, who: Caller, body: SQLBody) -> dict:
    """Run user SQL for the caller: the /v1/sql endpoint and saved SQL queries."""
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
            "rows": rows_json_lists(res.rows),
            "row_count": len(res.rows),
            "archive": archive_json(body.include_archive, sources)}


async def sql_response(request: Request, who: Caller, body: SQLBody) -> Response:
    """`run_sql` as the HTTP answer, within the response cap."""
    return await capped_json(request, who, await run_sql(request, who, body))


#: how many tenants an ambiguous call id is listed with (admin, no tenant=)
_AMBIGUOUS_LISTED = 100


async def one_record(request: Request, who: Caller, call_id: str,
                     tenant: str | None = None) -> dict:
    """One call visible to the caller. A call id is unique per tenant only: an admin
    without `tenant=` whose id exists in several tenants gets 409 naming them, never
    one of them picked arbitrarily."""
    cols = [f.name for f in catalogue.visible_fields(who.principal.role)]
    ambiguous_possible = who.principal.role == "admin" and not tenant
    p = ViewParams(columns=cols, range="all", limit=_AMBIGUOUS_LISTED if ambiguous_possible
                   else 2, tenant=tenant)
    rules = {"condition": "AND", "rules": [{"field": "call_id", "operator": "equal", "value": call_id}]}
    page = await run_view(request, who, p, rules)
    if not page["rows"]:
        # the same answer whether the call does not exist or belongs to someone else
        raise Problem("not-found", f"no call {call_id!r} visible to this key")
    tenants = sorted({r.get("tenant_id") for r in page["rows"]} - {None})
    if ambiguous_possible and len(tenants) > 1:
        more = " and more" if page["next_cursor"] else ""
        raise Problem("conflict", f"call {call_id!r} exists in {len(tenants)}{more} tenants "
                                  f"({', '.join(tenants)}{more}); add tenant=… to choose one",
                      tenants=tenants)
    return page["rows"][0]


async def store(request: Request, fn: Callable[[Database], T]) -> T:
    """Run a small storage call off the event loop on a pooled client.

    Not `Service.run`: these are key-value reads and writes, not user queries,
    so they do not count against the principal's concurrent-query cap.
    """
    pool = service(request).pool

    def work() -> T:
        try:
            with pool.acquire() as db:
                return fn(db)
        except PoolExhausted as exc:
            raise Problem("unavailable", str(exc)) from None
        except ud.UserDataError as exc:
            raise Problem("invalid-request", str(exc)) from None
    return await anyio.to_thread.run_sync(work)


async def apply_preferences(request: Request, who: Caller, p: ViewParams,
                            given: Iterable[str] | None = None) -> ViewParams:
    """`p` with the key's saved tz and columns where the request did not give them.

    The hook for viewer endpoints: `given` names the parameters the client
    sent (default: the request's query-string keys, right for GET /v1/cdrs;
    for a JSON body pass `body.model_fields_set`). Stored columns that are no
    longer valid for the principal (the catalogue changed) are ignored rather
    than failing a request that did not ask for them.
    """
    sent = set(request.query_params.keys() if given is None else given)
    if {"tz", "columns"} <= sent:
        return p
    prefs = await preferences(request, who.key_id)
    update: dict[str, Any] = {}
    if "tz" not in sent and prefs.tz is not None:
        update["tz"] = prefs.tz
    if "columns" not in sent and prefs.columns is not None:
        # remembered columns the key may no longer see: fall back to the defaults
        with contextlib.suppress(ViewerError):
            update["columns"] = list(resolve_columns(prefs.columns, who.principal))
    return p.model_copy(update=update) if update else p


async def preferences(request: Request, key_id: str) -> ud.Preferences:
    """The key's saved preferences, from the service's short cache (api/cache.py) or the
    store. Every viewer page needs them; reading them is a query of its own."""
    return await service(request).prefs.get_or_load(
        key_id, lambda: store(request, lambda db: ud.get_preferences(db, key_id)))


def forget_preferences(request: Request, key_id: str) -> None:
    """After saving a key's preferences: the next page reads them again."""
    service(request).prefs.forget(key_id)
