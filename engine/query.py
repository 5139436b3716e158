"""Running guarded queries for a principal: compile (sql/), run with the role's limits, explain errors.

The CLI and the HTTP API both come through here, so the rules are the same on
every path: the SQL layer compiles (pure), this module adds the limits and a
cancellation tag, runs the query through engine.db, and turns limit errors
into messages that say which limit and how to narrow the query.

Cancellation: every query carries a comment `/* cdrhouse-query:<principal>:<id> */`
in front of its text; `cancel(db, principal, id)` kills only queries whose tag
has the same principal, on the embedded engine and on a server alike.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError

from cdrhouse.engine.db import Database
from cdrhouse.sql.errors import UserError
from cdrhouse.sql.archive import with_archive
from cdrhouse.sql.guard import compile_user_sql
from cdrhouse.sql.limits import explain_limit_error, limits_for
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import CompiledQuery, ViewRequest, compile_view, time_slices

_TAG_SAFE = re.compile(r"[^A-Za-z0-9:#/_.-]")


class QueryFailed(UserError):
    """A guarded query failed in ClickHouse; the message is safe to show the user."""

    def __init__(self, message: str, kind: str = "query") -> None:
        super().__init__(message)
        self.kind = kind  # "limit", "cancelled" or "query"


@dataclass
class Result:
    columns: list[str]
    types: list[str]
    rows: list[tuple]
    query_id: str


@dataclass
class ViewResult:
    compiled: CompiledQuery
    rows: list[tuple]
    next_cursor: str | None
    query_id: str


def _tag(principal: Principal, query_id: str) -> str:
    return f"cdrhouse-query:{_TAG_SAFE.sub('_', str(principal))}:{query_id}"


def _run(db: Database, principal: Principal, sql: str, parameters: Mapping[str, Any],
         query_id: str | None, limit_overrides: Mapping[str, int] | None,
         warm: bool = False) -> tuple[Any, str]:
    query_id = query_id or uuid.uuid4().hex
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", query_id):
        raise ValueError("query id: use 1-64 letters, digits, '-' or '_'")
    settings = limits_for(principal.role, warm, **dict(limit_overrides or {}))
    # The tag rides as the log_comment setting: system.processes shows it in
    # Settings on the embedded engine and on a server alike (comments in the
    # SQL text do not survive the driver).
    settings["log_comment"] = _tag(principal, query_id)
    try:
        return db.query(sql, parameters, settings), query_id
    except ClickHouseError as exc:
        raise query_failed(exc, settings) from None


def _user_message(exc: Exception) -> str:
    """ClickHouse's own message, first line, without the engine's stack or version trailer."""
    text = str(exc).strip().split("\n")[0]
    text = re.sub(r"\s*\(version [^)]*\)\s*$", "", text)
    text = re.sub(r"^.*?DB::Exception:\s*", "", text)
    return text[:1000]


def run_sql(db: Database, principal: Principal, sql: str,
            params: Mapping[str, Any] | None = None, *, query_id: str | None = None,
            limit_overrides: Mapping[str, int] | None = None,
            archive: Sequence[str] = ()) -> Result:
    """User SQL, guarded for `principal` (GuardError if refused, QueryFailed if it fails).
    `archive`: SELECTs of archived months the `cdrs` table includes (sql/archive.py)."""
    compiled = compile_user_sql(sql, principal, dict(params or {}))
    res, qid = _run(db, principal, with_archive(compiled.sql, archive), compiled.parameters,
                    query_id, limit_overrides, warm=bool(archive))
    return Result(list(res.column_names), [t.name for t in res.column_types],
                  list(res.result_rows), qid)


def run_view(db: Database, principal: Principal, request: ViewRequest,
             now: dt.datetime | None = None, *, query_id: str | None = None,
             limit_overrides: Mapping[str, int] | None = None,
             archive: Sequence[str] = ()) -> ViewResult:
    """A viewer page (ViewerError if the request is invalid, QueryFailed if it fails).

    A newest-first page over a long range first tries recent slices of it
    (sql.viewer.time_slices): a slice holding a full page gives exactly the
    page of the whole range, at the cost of reading the slice only.
    `archive`: SELECTs of archived months to read too (sql/archive.py).
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    compiled = compile_view(request, principal, now)
    query_id = query_id or uuid.uuid4().hex
    warm = bool(archive)
    for since in time_slices(request, principal, now):
        sliced = compile_view(request, principal, now, newer_than=since)
        res, qid = _run(db, principal, with_archive(sliced.sql, archive), sliced.parameters,
                        query_id, limit_overrides, warm=warm)
        if compiled.limit is not None and len(res.result_rows) > compiled.limit:
            page = compiled.page(res.result_rows)
            return ViewResult(compiled, list(page.rows), page.next_cursor, qid)
    res, qid = _run(db, principal, with_archive(compiled.sql, archive), compiled.parameters,
                    query_id, limit_overrides, warm=warm)
    page = compiled.page(res.result_rows)
    return ViewResult(compiled, list(page.rows), page.next_cursor, qid)


def cancel(db: Database, principal: Principal, query_id: str) -> bool:
    """Kill the running query `query_id` of `principal`; True if one was found."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", query_id):
        return False
    tag = _tag(principal, query_id)
    found = db.scalar("SELECT count() FROM system.processes WHERE Settings['log_comment'] = {t:String}",
                      {"t": tag})
    if not found:
        return False
    db.command("KILL QUERY WHERE Settings['log_comment'] = {t:String} SYNC", {"t": tag})
    return True


def query_tag(principal: Principal, query_id: str) -> str:
    """The log_comment tag a query of `principal` carries, the one `cancel` looks for.

    For queries run elsewhere than `_run` (engine.export streams its own).
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", query_id):
        raise ValueError("query id: use 1-64 letters, digits, '-' or '_'")
    return _tag(principal, query_id)


def query_failed(exc: BaseException, settings: Mapping[str, Any]) -> QueryFailed:
    """A ClickHouse error as the QueryFailed users see, as `_run` words it (limits explained).

    Without the server's address the HTTP driver appends ("(for url …)").
    """
    limit = explain_limit_error(exc, settings)
    if limit:
        return QueryFailed(limit, "cancelled" if "cancelled" in limit.lower() else "limit")
    return QueryFailed(re.sub(r"\s*\(for url [^)]*\)", "", _user_message(exc)))
