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
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError

from cdrhouse.engine import cluster
from cdrhouse.engine.db import Database
from cdrhouse.sql.errors import UserError
from cdrhouse.sql.archive import with_archive
from cdrhouse.sql.charts import ChartQuery
from cdrhouse.sql.guard import CompiledSQL, compile_user_sql
from cdrhouse.sql.limits import SETTING_NAMES, error_code, explain_limit_error, limits_for
from cdrhouse.sql.logical import PHYSICAL_TABLES, TABLES
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import (CompiledQuery, ViewRequest, compile_view, page_slices,
                                 reads_by_time)

_TAG_SAFE = re.compile(r"[^A-Za-z0-9:#/_.-]")
log = logging.getLogger("cdrhouse.query")


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
         warm: bool = False, user_sql: str | None = None,
         tuning: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """`tuning`: the compiler's speed-only settings (CompiledQuery.settings); the
    limits are applied after them, so a limit is never loosened by one."""
    query_id = query_id or uuid.uuid4().hex
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", query_id):
        raise ValueError("query id: use 1-64 letters, digits, '-' or '_'")
    settings = {**dict(tuning or {}),
                **limits_for(principal.role, warm, **dict(limit_overrides or {}))}
    # The tag rides as the log_comment setting: system.processes shows it in
    # Settings on the embedded engine and on a server alike (comments in the
    # SQL text do not survive the driver).
    settings["log_comment"] = _tag(principal, query_id)
    try:
        return db.query(sql, parameters, settings), query_id
    except ClickHouseError as exc:
        raise query_failed(exc, settings, sql, user_sql) from None


#: Every column of user SQL's result is materialized before it leaves ClickHouse:
#: `max_result_bytes` counts a constant column once per block, so `SELECT
#: range(1000) FROM cdrs` (the same array on every row) would otherwise pass it
#: at any size. The wrapper renames each column `materialize(<name>)`;
#: `_unwrapped` gives the names back.
_MATERIALIZE = "SELECT * APPLY(materialize) FROM (\n{}\n)"
_MATERIALIZED_NAME = re.compile(r"^materialize\((.*)\)$", re.S)


def _unwrapped(name: str) -> str:
    m = _MATERIALIZED_NAME.match(name)
    return m.group(1) if m else name


def compile_for(db: Database, sql: str, principal: Principal,
                params: Mapping[str, Any] | None) -> CompiledSQL:
    """User SQL guarded for `principal` as `db`'s topology reads it (a cluster reads the
    daily summary grouped, one node with FINAL: sql/logical.py)."""
    return compile_user_sql(sql, principal, dict(params or {}),
                            sharded=bool(cluster.topology(db).cluster))


def run_sql(db: Database, principal: Principal, sql: str,
            params: Mapping[str, Any] | None = None, *, query_id: str | None = None,
            limit_overrides: Mapping[str, int] | None = None,
            archive: Sequence[str] = ()) -> Result:
    """User SQL, guarded for `principal` (GuardError if refused, QueryFailed if it fails).
    `archive`: SELECTs of archived months the `cdrs` table includes (sql/archive.py)."""
    compiled = compile_for(db, sql, principal, params)
    text = _MATERIALIZE.format(with_archive(compiled.sql, archive))
    res, qid = _run(db, principal, text, compiled.parameters, query_id, limit_overrides,
                    warm=bool(archive), user_sql=sql)
    return Result([_unwrapped(n) for n in res.column_names], [t.name for t in res.column_types],
                  list(res.result_rows), qid)


def run_view(db: Database, principal: Principal, request: ViewRequest,
             now: dt.datetime | None = None, *, query_id: str | None = None,
             limit_overrides: Mapping[str, int] | None = None,
             archive: Sequence[str] = ()) -> ViewResult:
    """A viewer page (ViewerError if the request is invalid, QueryFailed if it fails).

    A page across a tenant's customers sorted by time reads the time-ordered copy
    of the CDRs (sql.viewer.reads_by_time), in order, from the end it needs. A
    newest-first page over a long range may first try recent slices of it
    (sql.viewer.page_slices): a slice holding a full page gives exactly the
    page of the whole range, at the cost of reading the slice only.
    `archive`: SELECTs of archived months to read too (sql/archive.py).
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    # the time-ordered copy holds hot months only: with archived ones, the hot table
    # and the archive are read together (sql/archive.py), sliced as before
    by_time = not archive and reads_by_time(request, principal)
    compiled = compile_view(request, principal, now, by_time=by_time)
    query_id = query_id or uuid.uuid4().hex
    warm = bool(archive)
    for since in page_slices(request, principal, now, by_time):
        sliced = compile_view(request, principal, now, newer_than=since, by_time=by_time)
        res, qid = _run(db, principal, with_archive(sliced.sql, archive), sliced.parameters,
                        query_id, limit_overrides, warm=warm, tuning=sliced.settings)
        if compiled.limit is not None and len(res.result_rows) > compiled.limit:
            page = compiled.page(res.result_rows)
            return ViewResult(compiled, list(page.rows), page.next_cursor, qid)
    res, qid = _run(db, principal, with_archive(compiled.sql, archive), compiled.parameters,
                    query_id, limit_overrides, warm=warm, tuning=compiled.settings)
    page = compiled.page(res.result_rows)
    return ViewResult(compiled, list(page.rows), page.next_cursor, qid)


def run_chart(db: Database, principal: Principal, chart: ChartQuery, *,
              query_id: str | None = None, archive: Sequence[str] = ()) -> Result:
    """One chart of a view (sql/charts.py): user SQL over the logical tables goes through
    the user-SQL guard (`run_sql`); the others are built on the viewer's guarded filter.
    Either way the role's limits apply, and `archive` adds archived months as for a page."""
    if chart.user_sql:
        return run_sql(db, principal, chart.sql, chart.parameters, query_id=query_id,
                       archive=archive)
    res, qid = _run(db, principal, with_archive(chart.sql, archive), chart.parameters,
                    query_id, None, warm=bool(archive))
    return Result(list(res.column_names), [t.name for t in res.column_types],
                  list(res.result_rows), qid)


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


def query_failed(exc: BaseException, settings: Mapping[str, Any], sql: str | None = None,
                 user_sql: str | None = None) -> QueryFailed:
    """A ClickHouse error as the QueryFailed users see (limits explained).

    ClickHouse's messages quote the query *as it ran*: the guard predicate with
    its values, physical tables, every setting, archive paths. None of that may
    reach the user, so the message is rebuilt from ClickHouse's first sentence
    (`user_message`) and the full text is logged here, server-side only.
    `sql` is the text that ran (before parameters), `user_sql` what the user wrote.
    """
    log.info("query failed (%s): %s", settings.get("log_comment", ""), str(exc).strip())
    limit = explain_limit_error(exc, settings)
    if limit:
        return QueryFailed(limit, "cancelled" if "cancelled" in limit.lower() else "limit")
    message = user_message(exc, sql, user_sql)
    # values too large to build (range() past its cap, huge arrays or strings) are limits too
    size = any(f"ClickHouse {n})" in message for n in _SIZE_LIMITS) and (
        "ARGUMENT_OUT_OF_BOUND" not in message or "allowed maximum" in message)
    return QueryFailed(message, "limit" if size else "query")


_SIZE_LIMITS = ("TOO_LARGE_ARRAY_SIZE", "TOO_LARGE_STRING_SIZE", "ARGUMENT_OUT_OF_BOUND")


# -- engine errors in the user's terms ---------------------------------------------------

#: Where ClickHouse starts quoting the query as it ran, or its execution plan.
_CONTEXT = re.compile(r"(?::|\.)?\s*(?:In scope|In query|[Ww]hile executing|While processing|"
                      r"while processing|\(for url)\b.*$", re.S)
_TRAILER = re.compile(r"\s*\(version [^)]*\)\s*$")
_ERROR_NAME = re.compile(r"[.:]?\s*\(([A-Z][A-Z0-9]*_[A-Z0-9_]+)\)")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|`([^`]*)`")
_TYPE_NAME = re.compile(
    r"^(?:(?:Nullable|LowCardinality|Array)\()*"
    r"(?:U?Int\d+|Float\d+|BFloat16|String|FixedString\(\d+\)|Date|Date32|DateTime"
    r"|DateTime64\(\d+(?:, ?'[A-Za-z_/+-]+')?\)|Decimal\d*\(\d+(?:, ?\d+)?\)|UUID|IPv4|IPv6"
    r"|Bool|Nothing|Enum(?:8|16)?\(.*\)|Map\(.*\)|Tuple\(.*\))\)*$")
_FUNCTION = re.compile(r"\bfunction '?`?([A-Za-z_][A-Za-z0-9_]*)")
#: Text that must never reach a user, whatever the message; its presence means "say less".
_INTERNAL = re.compile("|".join([
    *(rf"\b{re.escape(t)}\b" for t in sorted(PHYSICAL_TABLES | {t.physical for t in
                                                                   TABLES.values()})),
    *(rf"\b{re.escape(s)}\b" for s in sorted(SETTING_NAMES)),
    r"__guard", r"__table\d", r"\b_CAST\(", r"tenant_id\s*=", r"\bmax_\w+",
    r"\bSETTINGS\b", r"cdrhouse-query", r"\bFINAL\b", r"\b(?:file|s3|url|remote)\s*\(",
    r"(?<![\w.])/(?:[\w.+@-]+/)+", r"\bIn scope\b", r"DB::",
]), re.IGNORECASE)

#: ClickHouse error name → what to tell the user when its own words cannot be shown.
_HINTS: list[tuple[frozenset[str], str]] = [
    (frozenset({"ILLEGAL_TYPE_OF_ARGUMENT", "NUMBER_OF_ARGUMENTS_DOESNT_MATCH", "TYPE_MISMATCH",
                "NO_COMMON_TYPE", "ILLEGAL_COLUMN", "BAD_ARGUMENTS", "TOO_FEW_ARGUMENTS_FOR_FUNCTION",
                "TOO_MANY_ARGUMENTS_FOR_FUNCTION", "CANNOT_CONVERT_TYPE"}),
     "a function got arguments of the wrong type or number; check the functions in your query"),
    (frozenset({"CANNOT_PARSE_TEXT", "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_DATETIME",
                "CANNOT_PARSE_NUMBER", "CANNOT_PARSE_DATE", "CANNOT_PARSE_UUID",
                "CANNOT_READ_ARRAY_FROM_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE"}),
     "a value could not be converted; the OrNull/OrZero variants (toInt64OrNull, "
     "parseDateTimeBestEffortOrNull, …) skip values that do not convert"),
    (frozenset({"UNKNOWN_IDENTIFIER", "NOT_FOUND_COLUMN_IN_BLOCK", "NO_SUCH_COLUMN_IN_TABLE",
                "AMBIGUOUS_COLUMN_NAME", "AMBIGUOUS_IDENTIFIER", "MULTIPLE_EXPRESSIONS_FOR_ALIAS",
                "THERE_IS_NO_COLUMN"}),
     "a column or alias is unknown or ambiguous; check the names (`cdrhouse fields` and "
     "GET /v1/fields list the fields)"),
    (frozenset({"NOT_AN_AGGREGATE", "ILLEGAL_AGGREGATION", "UNKNOWN_AGGREGATE_FUNCTION"}),
     "every selected column must be aggregated or in GROUP BY"),
    (frozenset({"ILLEGAL_DIVISION", "DECIMAL_OVERFLOW", "ARGUMENT_OUT_OF_BOUND",
                "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE", "TOO_LARGE_ARRAY_SIZE",
                "TOO_LARGE_STRING_SIZE"}),
     "a value is out of range (division by zero, an overflow or a size too large)"),
    (frozenset({"SYNTAX_ERROR"}),
     "ClickHouse could not read an expression of the query; check function calls and "
     "their arguments"),
]


def _hint(name: str | None) -> str:
    for names, hint in _HINTS:
        if name in names:
            return hint
    return "check the query"


def _position(word: str, user_sql: str) -> str:
    """` (line L, column C)` of `word` as a whole name in the user's SQL, or ''."""
    m = re.search(rf"(?<![\w.]){re.escape(word)}(?![\w])", user_sql)
    if not m:
        return ""
    line = user_sql.count("\n", 0, m.start()) + 1
    col = m.start() - (user_sql.rfind("\n", 0, m.start()) + 1) + 1
    return f" (line {line}, column {col} of the query)"


def _written(value: str, known: str) -> bool:
    """Whether the user wrote `value`: a name (each part of a dotted one) as a whole
    word, anything else as a whole quoted literal."""
    if re.fullmatch(r"[\w.]+", value):
        return all(p and re.search(rf"(?<!\w){re.escape(p)}(?!\w)", known)
                   for p in value.split("."))
    return f"'{value}'" in known or f"`{value}`" in known


def user_message(exc: BaseException, sql: str | None = None, user_sql: str | None = None) -> str:
    """What a user may read of a ClickHouse error: its first sentence about *their* query.

    Kept: ClickHouse's head sentence ("Illegal types String and UInt8 of arguments of
    function plus"), quoted names and values that the user's SQL contains (or type
    names), the error name, and where in the user's text a named identifier or
    function is. Dropped: everything from "In scope" / "while executing" on (the
    rewritten query, the guard values, the settings). A quoted value the user did
    not write (it may come from stored rows ClickHouse read before filtering) is
    shown as '…'. If anything internal still shows, only the error name and a hint
    are given.
    """
    text = str(exc).strip().split("\n")[0]
    text = re.sub(r"\s*\(for url [^)]*\)", "", text)
    text = _TRAILER.sub("", text)
    names = list(_ERROR_NAME.finditer(text))
    name = names[-1].group(1) if names else None
    if names:
        text = text[:names[-1].start()]
    text = re.sub(r"^.*?DB::Exception:\s*", "", text)
    text = re.sub(r"^Code: \d+\.\s*", "", text)
    code = error_code(exc)
    if name is None:
        name = f"code {code}" if code is not None else None
    if code == 62:
        name = "SYNTAX_ERROR"
    text = _CONTEXT.sub("", text).strip().rstrip(":;,. ")
    known = user_sql if user_sql is not None else (sql or "")

    where = ""
    def keep(q: re.Match) -> str:
        nonlocal where
        value = q.group(1) if q.group(1) is not None else q.group(2)
        mark = "'" if q.group(1) is not None else "`"
        if value and (_written(value, known) or _TYPE_NAME.match(value)):
            if user_sql and not where and mark == "`":
                where = _position(value, user_sql)
            return f"{mark}{value}{mark}"
        return f"{mark}…{mark}"
    text = _QUOTED.sub(keep, text)
    if user_sql and not where:
        f = _FUNCTION.search(text)
        if f:
            where = _position(f.group(1), user_sql)
    suffix = f" (ClickHouse {name})" if name else ""
    if name == "SYNTAX_ERROR" or not text or _INTERNAL.search(text):
        return f"the query failed: {_hint(name)}{suffix}"
    return f"{text[:500]}{where}{suffix}"
