"""The audit trail over HTTP: one middleware records every authenticated request, and
`GET /v1/audit` reads the records back, guarded.

**Recording (`AuditTrail`)** is plain ASGI middleware around every route, so a route
added later is recorded without its author doing anything. It sees the request and
the response and builds one `engine.audit.Record` when the response has ended (for a
streamed download: when the stream ends, with its rows and bytes):

- *who*: `request.state.principal` and `key_id` (set by the auth path: api/service.py
  for keys, api/web/session.py for the web viewer's session, which also sets `user`);
  the tenant comes from the principal;
- *what*: the method and the route's path template (`POST /v1/queries/{query_id}`),
  and a summary of the parameters — path and query parameters and a JSON or form body
  (the SQL text of user SQL, a viewer's filters, a saved query) — with every secret
  replaced by `[redacted]` (fields named like a password, secret, token or key, and
  any value shaped like an API key's secret); other bodies (a rate card's CSV) are
  recorded by type and size only. A route can add details with `note(request, …)`;
- *how it ended*: the status, the error type (`request.state.error_kind`, set by the
  problem handlers), `request.state.rows`, the response bytes, the duration;
- *from where*: the client address after api/forwarded.py (the forwarded client only
  behind a trusted proxy) and the TCP peer.

Recorded: every request that authenticated (a principal was set), every
state-changing request (POST/PUT/PATCH/DELETE) even when it did not (failed
sign-ins, anonymous changes), and refused credentials (401/429 to a request that
carried a key or a session cookie). Not recorded: anonymous reads (health, metrics,
static files, the sign-in form).

The record goes to the app's `AuditWriter` (engine/audit.py: an in-memory buffer
written every second by a background thread, flushed at shutdown): the request pays
for a dict and a deque append, never for I/O.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Query, Request
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cdrhouse.api.auth import Caller
from cdrhouse.api.deps import caller, service, translate
from cdrhouse.api.errors import Problem
from cdrhouse.engine import audit as au
from cdrhouse.engine.db import Database
from cdrhouse.engine.keys import SECRET_PREFIX
from cdrhouse.sql.principal import PrincipalError, PrincipalRef

router = APIRouter(prefix="/v1", tags=["audit"])

REDACTED = "[redacted]"
#: field names whose values are never recorded
SECRET_NAME = re.compile(r"pass(word|wd|phrase)?|secret|token|api[_-]?key|^key$|authori[sz]ation|"
                         r"cookie|credential", re.I)
#: an API key's secret wherever it appears (a key pasted into SQL, a comment, a URL)
SECRET_VALUE = re.compile(rf"{re.escape(SECRET_PREFIX)}[0-9a-f]{{12}}_[A-Za-z0-9_-]+")
#: request bodies read for the summary (JSON and forms); larger ones are described only
BODY_CAP = 256 * 1024
#: the longest string value kept in a summary (SQL text is cut here, marked)
VALUE_CAP = 8192
#: the longest summary; beyond it, long values are cut harder
SUMMARY_CAP = 32 * 1024
_JSON_TYPES = ("application/json", "application/problem+json")
_FORM_TYPE = "application/x-www-form-urlencoded"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# -- the summary of parameters --------------------------------------------------------

def redact(value: Any, cap: int = VALUE_CAP) -> Any:
    """`value` with secrets removed: by field name (recursively) and by shape."""
    if isinstance(value, dict):
        return {str(k): REDACTED if SECRET_NAME.search(str(k)) else redact(v, cap)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, cap) for v in value]
    if isinstance(value, str):
        text = SECRET_VALUE.sub(REDACTED, value)
        if len(text) > cap:
            text = text[:cap] + f"… [{len(text) - cap} more characters]"
        return text
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value), cap)


def _pairs(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            out[k] = (out[k] if isinstance(out[k], list) else [out[k]]) + [v]
        else:
            out[k] = v
    return out


def summarize(path_params: dict, query: str, content_type: str, body: bytes,
              body_size: int, extra: dict | None = None) -> str:
    """The JSON summary of a request's parameters, secrets removed (module docstring)."""
    summary: dict[str, Any] = {}
    if path_params:
        summary["path"] = dict(path_params)
    if query:
        summary["query"] = _pairs(parse_qsl(query, keep_blank_values=True))
    if body_size:
        ctype = content_type.split(";")[0].strip().lower()
        complete = len(body) == body_size
        if complete and ctype in _JSON_TYPES:
            try:
                summary["body"] = json.loads(body)
            except ValueError:
                summary["body"] = {"type": ctype, "bytes": body_size, "invalid": True}
        elif complete and ctype == _FORM_TYPE:
            summary["body"] = _pairs(parse_qsl(body.decode("utf-8", "replace"),
                                               keep_blank_values=True))
        else:
            summary["body"] = {"type": ctype or "unknown", "bytes": body_size}
    if extra:
        summary.update(extra)
    text = json.dumps(redact(summary), ensure_ascii=False, separators=(",", ":"), default=str)
    if len(text) > SUMMARY_CAP:
        text = json.dumps(redact(summary, cap=512), ensure_ascii=False, separators=(",", ":"),
                          default=str)
        if len(text) > SUMMARY_CAP:
            text = json.dumps({"truncated": True, "chars": len(text)})
    return text


def note(request: Request, **details: Any) -> None:
    """Add details to this request's audit record (they go into its parameter summary,
    through the same redaction)."""
    extra = getattr(request.state, "audit", None)
    if extra is None:
        extra = {}
        request.state.audit = extra
    extra.update(details)


def tenant_of(principal: str) -> str:
    try:
        return PrincipalRef.parse(principal).tenant or ""
    except PrincipalError:
        return ""


# -- the middleware -------------------------------------------------------------------

def _carries_credentials(headers: dict[bytes, bytes]) -> bool:
    if b"authorization" in headers or b"x-api-key" in headers:
        return True
    return b"cdrhouse_session=" in headers.get(b"cookie", b"")


class AuditTrail:
    """ASGI middleware: one audit record per authenticated request (module docstring).

    Plain ASGI, like the access log (api.app.Observe), so that client disconnects
    and aborted downloads pass through unchanged.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        app = scope.get("app")
        writer = getattr(getattr(app, "state", None), "audit", None)
        if scope["type"] != "http" or writer is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        when = dt.datetime.now(dt.timezone.utc)
        status = 0
        sent = 0
        body = bytearray()
        body_size = 0

        async def receive_and_keep() -> dict:
            nonlocal body_size
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                body_size += len(chunk)
                if len(body) + len(chunk) <= BODY_CAP:
                    body.extend(chunk)
            return message

        async def send_and_count(message: dict) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        failed = False
        try:
            await self.app(scope, receive_and_keep, send_and_count)
        except BaseException:
            failed = True
            raise
        finally:
            try:
                record = self._record(scope, when, status, failed, sent, bytes(body), body_size,
                                      time.perf_counter() - started)
                if record is not None:
                    writer.add(record)
            except Exception:  # noqa: BLE001 - auditing must never break the answer
                au.log.exception("could not build the audit record of %s", scope.get("path"))

    @staticmethod
    def _record(scope: dict, when: dt.datetime, status: int, failed: bool, sent: int,
                body: bytes, body_size: int, elapsed: float) -> au.Record | None:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path is None:            # no route matched: nothing was done
            return None
        state = scope.get("state") or {}
        method = scope.get("method", "")
        principal = state.get("principal") or ""
        headers = dict(scope.get("headers") or [])
        if not principal and method in _SAFE_METHODS and not (
                status in (401, 429) and _carries_credentials(headers)):
            return None
        error = state.get("error_kind") or ""
        if failed:
            # an exception after the status line went out is an aborted download;
            # before it, the server answers 500
            error = error or ("download-failed" if status else "internal")
            status = status or 500
        elif status >= 400 and not error:
            error = state.get("audit_error") or ""
        client = scope.get("client")
        return au.Record(
            time=when,
            action=f"{method} {path}",
            principal=principal,
            tenant=tenant_of(principal),
            key_id=state.get("key_id") or "",
            user=state.get("user") or "",
            channel="api" if (b"authorization" in headers or b"x-api-key" in headers) else "web",
            params=summarize(scope.get("path_params") or {},
                             scope.get("query_string", b"").decode("latin-1"),
                             headers.get(b"content-type", b"").decode("latin-1"),
                             body, body_size, state.get("audit")),
            status=status,
            error=error,
            rows=int(state.get("rows") or 0),
            bytes=sent,
            duration_ms=round(elapsed * 1000),
            client=client[0] if client else "",
            peer=state.get("peer") or "")


# -- the writer's life and its metrics ------------------------------------------------

def start_writer(app: Any, settings: au.AuditSettings) -> au.AuditWriter | None:
    """The app's audit writer (None when auditing is off), on a client of its own, and the
    configured retention applied; called by the app's lifespan."""
    svc = app.state.service
    if not settings.enabled:
        app.state.audit = None
        return None
    if settings.days is not None:
        with svc.pool.acquire() as db:
            if au.set_retention(db, settings.days):
                au.log.info("audit retention set to %d days", settings.days)
    writer = au.AuditWriter(lambda: Database(svc.config.store, create=False), settings)
    app.state.audit = writer
    return writer


def stop_writer(app: Any) -> None:
    """Flush and stop the writer (the lifespan's shutdown: nothing buffered is lost)."""
    writer = getattr(app.state, "audit", None)
    app.state.audit = None
    if writer is not None:
        writer.close()


class AuditCollector:
    """Prometheus: records written, buffered, dropped, failed flushes."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        writer = getattr(self.app.state, "audit", None)
        if writer is None:
            return
        yield CounterMetricFamily("cdrhouse_audit_records_written", "Audit records written",
                                  value=writer.written)
        yield CounterMetricFamily("cdrhouse_audit_records_dropped",
                                  "Audit records dropped (buffer full while the store refused)",
                                  value=writer.dropped)
        yield CounterMetricFamily("cdrhouse_audit_flush_failures", "Failed audit flushes",
                                  value=writer.failures)
        yield GaugeMetricFamily("cdrhouse_audit_records_buffered", "Audit records not yet written",
                                value=writer.buffered)


# -- GET /v1/audit --------------------------------------------------------------------

def reader_scope(who: Caller, tenant: str | None, principal: str | None) -> au.Scope:
    """The caller's scope; asking outright for rows outside it is a 403, not an empty page."""
    scope = au.scope_for(who.principal, who.principal_text, who.key_id)
    role = who.principal.role
    if tenant is not None and role != "admin" and tenant != who.principal.tenant:
        raise Problem("forbidden", f"a {role} user sees only its own tenant's audit records")
    if principal and role in ("customer", "carrier") and principal != who.principal_text:
        raise Problem("forbidden", f"a {role} user sees only its own actions "
                                   f"(principal={who.principal_text})")
    return scope


@router.get("/audit", summary="Audit records this key may see, newest first")
async def get_audit(
    request: Request,
    date_from: str | None = Query(None, alias="from", description="ISO 8601, inclusive (UTC)."),
    date_to: str | None = Query(None, alias="to", description="ISO 8601, exclusive (UTC)."),
    principal: str | None = Query(None, description="Exact, or a prefix ending in *."),
    action: str | None = Query(None, description="e.g. 'POST /v1/sql', or 'POST /v1/recalc*'."),
    outcome: str | None = Query(None, description="ok, error, a status (403) or an error type."),
    tenant: str | None = Query(None, description="Admins: one tenant."),
    limit: int = Query(100, description=f"At most {au.MAX_LIMIT}."),
    cursor: str | None = Query(None, description="next_cursor of the previous page."),
    who: Caller = Depends(caller),
) -> dict:
    try:
        scope = reader_scope(who, tenant, principal)
    except au.AuditError as exc:
        raise translate(exc) from None

    def work(db: Database, _qid: str) -> au.Page:
        try:
            f = au.Filters(since=au.parse_time(date_from, "from"),
                           until=au.parse_time(date_to, "to"), principal=principal,
                           action=action, outcome=outcome, tenant=tenant, limit=limit,
                           cursor=cursor)
            return au.search(db, scope, f)
        except Exception as exc:  # noqa: BLE001 - translated or re-raised
            raise translate(exc) from None
    page = await service(request).run(request, who, work)
    request.state.rows = len(page.records)
    return {"records": [r.as_json() for r in page.records], "next_cursor": page.next_cursor}
