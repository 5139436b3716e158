"""Compile a CDR viewer request (columns, sort, page, date range, filters) into one guarded query.

`compile_view` is pure: the clock (`now`) and the principal are passed in, and
the result is SQL text with bound parameters plus what the caller needs to
render the page and ask for the next one. Nothing here touches a database.

The query reads `cdr_records FINAL` (a re-ingested or re-rated call counts
once) and its WHERE clause starts with the principal's guard, so whatever else
a request carries — a forged cursor, builder rules, a number search — can
only narrow the rows the principal may read, never widen them.

Decisions worth knowing:

- **Date ranges** are half-open `[from, to)` on `start_time`, as UTC bounds.
  Presets are calendar periods in the display time zone `tz`: "today" is from
  the first instant of the local date to the first instant of the next one,
  so on a DST day in Europe/Berlin it lasts 23 or 25 hours. `last_7_days` and
  `last_30_days` are the 7 / 30 local calendar days ending with today
  (today included); `this_week` is the ISO week (Monday first), `last_week`
  the one before it; `last_24h` is
  the rolling `[now - 24 h, now)`. Custom bounds are ISO 8601 (a date alone is
  that day's first instant, a naive time is wall time in `tz`); `date_to` is
  exclusive, so `date_to="2026-03-30"` ends when the 30th begins.
- **connected_only** keeps calls with `billsec > 0`: the reference's
  "connected" means answered (talk time), so a call that rang for a minute
  and was never answered (duration 60, billsec 0) is hidden.
- **Number search** matches the source OR the destination number. Items are
  comma-separated: `442079460000` (exact), `4420*` (prefix), `*1234` (suffix),
  `*555*` (contains); `!item` removes calls matching the item. A call is kept
  when it matches at least one plain item (if there are any) and no negated
  one, so a list of only negations means "all except". `+`, spaces, dashes,
  parentheses and dots are stripped, as ingest strips them from stored
  numbers.
- **Sorting** always ends with a unique tiebreaker — `call_id` (unique within
  a tenant), and for a platform admin also `tenant_id` — in the direction of
  the first sort key, so keyset pagination is stable when many calls share a
  start time. NULLs sort last in both directions.
- **Pages** use keyset pagination: the query fetches `limit + 1` rows; `page()`
  cuts the extra row and builds the cursor from the last row shown. The
  cursor is base64url JSON of the sort spec and the last row's sort values; on
  the way back every value is validated by its field's type and bound as a
  parameter, so a forged cursor is at worst a wrong position.
- **Time zones**: date-time columns are shown in `tz` (`toTimeZone(c, tz) AS c`
  in the SELECT; WHERE and ORDER BY name the stored UTC column, because the query
  runs with `prefer_column_name_to_alias = 1`, and a zone changes how an instant
  is shown, never which instant, so neither rows nor order could differ anyway);
  shown in UTC, the zone they are stored in, they are selected as they are;
  downloads (`for_download=True`) stay UTC.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field as dc_field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from cdrhouse.sql.errors import UserError
from cdrhouse.sql import catalogue
from cdrhouse.sql.builder import (
    DT_TYPE, ROLE_NAMES, BuilderError, InvalidValue, compile_rules, convert_value,
    day_start, format_instant, param_type, parse_instant, zone,
)
from cdrhouse.sql.catalogue import Field
from cdrhouse.sql.months import shift_first_day
from cdrhouse.sql.principal import Principal

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_NUMBER_ITEMS = 100
MAX_CURSOR = 4096
TABLE = "cdr_records"

PRESETS: tuple[str, ...] = ("today", "yesterday", "last_24h", "last_7_days", "last_30_days",
                            "this_week", "last_week", "this_month", "last_month")
#: `custom` takes date_from / date_to; `all` puts no bound on start_time.
RANGES: tuple[str, ...] = (*PRESETS, "custom", "all")

_NUMBER_NOISE = re.compile(r"[+\s\-().]")
_CURSOR_TEXT = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


class ViewerError(UserError):
    """The view request cannot be compiled; the message names the part and the problem.

    `rule_path` is set when the part is a rule of the builder tree (`rules[2].rules[0]`,
    `query` for its root group), so a client can show the message at that rule.
    """

    def __init__(self, message: str, rule_path: str | None = None) -> None:
        super().__init__(message)
        self.rule_path = rule_path


@dataclass(frozen=True)
class ViewRequest:
    """What the viewer asks for. Every part is optional; the defaults make a sane first page.

    `range` is a preset name, "custom" or "all"; left as None it is "custom"
    when `date_from` or `date_to` is given and "today" otherwise.
    """

    columns: Sequence[str] | None = None
    sort: Sequence[str] | str = ("-start_time",)
    limit: int | None = DEFAULT_LIMIT
    cursor: str | None = None
    range: str | None = None
    date_from: str | date | datetime | None = None
    date_to: str | date | datetime | None = None
    tz: str = "UTC"
    connected_only: bool = False
    number: str | None = None
    rules: Mapping[str, Any] | None = None
    for_download: bool = False
    #: the account an operator narrowed to, as builder rules of our own: compiled
    #: apart from `rules` so that an error in the user's tree names its own path
    account_rules: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class SortKey:
    field: str
    descending: bool = False

    @property
    def spec(self) -> str:
        return f"-{self.field}" if self.descending else self.field


class NumberItem(NamedTuple):
    """One item of a number search: digits, how they must match, and whether negated."""

    digits: str
    mode: str          # exact | prefix | suffix | contains
    negated: bool = False


class Page(NamedTuple):
    rows: list[Any]
    next_cursor: str | None


@dataclass(frozen=True)
class CompiledQuery:
    """The viewer query and what is needed to use its result.

    `columns` are the columns asked for; `output_columns` are the columns the
    query returns, in order: `columns` followed by any sort key not among them
    (the cursor needs its value; a renderer may hide it).
    """

    sql: str
    parameters: dict[str, Any]
    columns: tuple[str, ...]
    output_columns: tuple[str, ...]
    applied_range: tuple[datetime | None, datetime | None]
    sort: tuple[SortKey, ...]
    limit: int | None
    tz: str = "UTC"
    for_download: bool = False
    #: engine settings for this query (speed only, never results): see `page_settings`
    settings: Mapping[str, Any] = dc_field(default_factory=dict)

    def next_cursor_from(self, row: Sequence[Any] | Mapping[str, Any]) -> str:
        """The cursor for the page after `row` (a result row, by position or by name)."""
        values = []
        for key in self.sort:
            if isinstance(row, Mapping):
                value = row[key.field]
            else:
                value = row[self.output_columns.index(key.field)]
            values.append(_cursor_value(value))
        return encode_cursor([k.spec for k in self.sort], values)

    def page(self, rows: Sequence[Any]) -> Page:
        """The rows to show and the next page's cursor (None on the last page)."""
        rows = list(rows)
        if self.limit is None or len(rows) <= self.limit:
            return Page(rows, None)
        shown = rows[:self.limit]
        return Page(shown, self.next_cursor_from(shown[-1]))


@dataclass(frozen=True)
class CountQuery:
    sql: str
    parameters: dict[str, Any] = dc_field(default_factory=dict)
    applied_range: tuple[datetime | None, datetime | None] = (None, None)


# -- date ranges ------------------------------------------------------------------

def preset_range(name: str, now: datetime, tz: str) -> tuple[datetime, datetime]:
    """The UTC bounds `[from, to)` of preset `name` at instant `now`, in display zone `tz`."""
    z = _zone(tz)
    now = _now(now)
    today = now.astimezone(z).date()

    def days(first: date, last_exclusive: date) -> tuple[datetime, datetime]:
        return day_start(first, z), day_start(last_exclusive, z)

    if name == "today":
        return days(today, today + timedelta(days=1))
    if name == "yesterday":
        return days(today - timedelta(days=1), today)
    if name == "last_24h":
        return now - timedelta(hours=24), now
    if name == "last_7_days":
        return days(today - timedelta(days=6), today + timedelta(days=1))
    if name == "last_30_days":
        return days(today - timedelta(days=29), today + timedelta(days=1))
    if name == "this_week":
        monday = today - timedelta(days=today.weekday())
        return days(monday, monday + timedelta(days=7))
    if name == "last_week":
        monday = today - timedelta(days=today.weekday() + 7)
        return days(monday, monday + timedelta(days=7))
    first = today.replace(day=1)
    if name == "this_month":
        return days(first, shift_first_day(first, 1))
    if name == "last_month":
        return days(shift_first_day(first, -1), first)
    raise ViewerError(f"range: unknown preset {name!r}; use one of: {', '.join(RANGES)}")


def resolve_range(request: ViewRequest, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The request's UTC bounds on start_time (None: unbounded on that side)."""
    name = request.range
    custom = request.date_from is not None or request.date_to is not None
    if name is None:
        name = "custom" if custom else "today"
    if name not in RANGES:
        raise ViewerError(f"range: unknown range {name!r}; use one of: {', '.join(RANGES)}")
    if name != "custom":
        if custom:
            raise ViewerError(f"range: date_from/date_to need range 'custom', not {name!r}")
        if name == "all":
            return None, None
        return preset_range(name, now, request.tz)
    if not custom:
        raise ViewerError("range: a custom range needs date_from and/or date_to")
    z = _zone(request.tz)
    bounds = []
    for label, raw in (("date_from", request.date_from), ("date_to", request.date_to)):
        try:
            bounds.append(None if raw is None else parse_instant(raw, z))
        except InvalidValue as exc:
            raise ViewerError(f"{label}: {exc}") from None
    start, end = bounds
    if start is not None and end is not None and start >= end:
        raise ViewerError(f"range: date_from ({format_instant(start)} UTC) must be before "
                          f"date_to ({format_instant(end)} UTC)")
    return start, end


def _zone(tz: str) -> ZoneInfo:
    try:
        return zone(tz)
    except InvalidValue as exc:
        raise ViewerError(f"tz: {exc}") from None


def _now(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    now = now.astimezone(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# -- number search ------------------------------------------------------------------

def parse_number_search(text: str) -> list[NumberItem]:
    """The items of a number search (see the module docstring for the forms)."""
    if not isinstance(text, str) or len(text) > 4000:
        raise ViewerError("number: expected text of at most 4000 characters")
    items = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        negated = item.startswith("!")
        body = item[1:].strip() if negated else item
        lead, trail = body.startswith("*"), body.endswith("*") and len(body) > 1
        digits = _NUMBER_NOISE.sub("", body.strip("*"))
        if not digits.isascii() or not digits.isdigit():
            raise ViewerError(f"number: cannot search for {item!r}: use digits, with * at the "
                              "start and/or end (e.g. 4420*, *1234, *555*), ! to exclude")
        mode = ("contains" if lead and trail else "suffix" if lead
                else "prefix" if trail else "exact")
        items.append(NumberItem(digits, mode, negated))
    if len(items) > MAX_NUMBER_ITEMS:
        raise ViewerError(f"number: at most {MAX_NUMBER_ITEMS} items")
    return items


_NUMBER_SQL = {
    "exact": "{col} = {v}",
    "prefix": "startsWith({col}, {v})",
    "suffix": "endsWith({col}, {v})",
    "contains": "position({col}, {v}) > 0",
}


def number_predicate(items: Sequence[NumberItem], params: dict[str, Any]) -> str | None:
    """SQL for a number search (binding `num0`, … into `params`), or None when empty."""
    positives, negatives = [], []
    for i, item in enumerate(items):
        name = f"num{i}"
        params[name] = item.digits
        ph = f"{{{name}:String}}"
        one = " OR ".join(_NUMBER_SQL[item.mode].format(col=col, v=ph)
                          for col in ("src_number", "dst_number"))
        (negatives if item.negated else positives).append(one)
    parts = []
    if positives:
        parts.append("(" + " OR ".join(positives) + ")")
    parts.extend(f"NOT ({n})" for n in negatives)
    return " AND ".join(parts) if parts else None


# -- columns and sort -------------------------------------------------------------

def _field(name: Any, principal: Principal, what: str) -> Field:
    if not isinstance(name, str):
        raise ViewerError(f"{what}: expected a field name, got {name!r}")
    f = catalogue.BY_NAME.get(name)
    if f is None:
        raise ViewerError(f"{what}: unknown column {name!r}")
    if not f.visible_to(principal.role):
        raise ViewerError(f"{what}: column {name!r} is not visible to "
                          f"{ROLE_NAMES[principal.role]}")
    return f


def resolve_columns(columns: Sequence[str] | None, principal: Principal) -> tuple[str, ...]:
    if columns is None:
        return catalogue.DEFAULT_COLUMNS[principal.role]
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()]
    if not columns:
        raise ViewerError("columns: choose at least one column")
    seen: list[str] = []
    for name in columns:
        _field(name, principal, "columns")
        if name in seen:
            raise ViewerError(f"columns: column {name!r} is listed twice")
        seen.append(name)
    return tuple(seen)


def resolve_sort(sort: Sequence[str] | str | None, principal: Principal) -> tuple[SortKey, ...]:
    """The user's sort keys plus the unique tiebreakers that make keyset paging stable."""
    if isinstance(sort, str):
        sort = [s for s in sort.split(",")] if sort.strip() else None
    specs = [s.strip() if isinstance(s, str) else s for s in (sort or ["-start_time"])]
    keys: list[SortKey] = []
    for spec in specs:
        if not isinstance(spec, str) or spec in ("", "-", "+"):
            raise ViewerError(f"sort: expected a field name, optionally with '-', got {spec!r}")
        desc = spec.startswith("-")
        name = spec[1:] if spec[0] in "+-" else spec
        f = _field(name, principal, "sort")
        if not f.sortable:
            raise ViewerError(f"sort: column {name!r} cannot be sorted")
        if any(k.field == name for k in keys):
            raise ViewerError(f"sort: column {name!r} is listed twice")
        keys.append(SortKey(name, desc))
    tiebreak = ["call_id"] + (["tenant_id"] if principal.role == "admin" else [])
    for name in tiebreak:
        if not any(k.field == name for k in keys):
            keys.append(SortKey(name, keys[0].descending))
    return tuple(keys)


def _order_by(keys: Sequence[SortKey]) -> str:
    parts = []
    for k in keys:
        text = f"{k.field} {'DESC' if k.descending else 'ASC'}"
        if catalogue.BY_NAME[k.field].nullable:
            text += " NULLS LAST"
        parts.append(text)
    return ", ".join(parts)


def _limit(limit: Any, for_download: bool) -> int | None:
    if limit is None:
        if not for_download:
            raise ViewerError("limit: a page needs a size; only downloads may be unlimited")
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ViewerError(f"limit: expected a whole number, got {limit!r}")
    if limit < 1:
        raise ViewerError(f"limit: must be at least 1, got {limit}")
    if limit > MAX_LIMIT:
        raise ViewerError(f"limit: {limit} is above the maximum page size of {MAX_LIMIT}")
    return limit


# -- cursors ----------------------------------------------------------------------

def encode_cursor(spec: Sequence[str], values: Sequence[Any]) -> str:
    """Opaque cursor text: base64url (unpadded) of the sort spec and the last row's values."""
    raw = json.dumps({"s": list(spec), "v": list(values)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _cursor_value(value: Any) -> Any:
    """A result value as JSON: instants as UTC text, decimals as exact text."""
    if isinstance(value, datetime):
        return format_instant(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, Decimal):
        return str(value)
    return value


def decode_cursor(cursor: str, keys: Sequence[SortKey]) -> list[Any]:
    """The validated parameter values of `cursor` for sort `keys`, or ViewerError."""
    def bad(why: str) -> ViewerError:
        return ViewerError(f"cursor: invalid cursor ({why}); start again from the first page")

    if not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR \
            or not _CURSOR_TEXT.match(cursor):
        raise bad("not a cursor this viewer made")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        data = json.loads(text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad("not a cursor this viewer made") from None
    if not isinstance(data, dict) or not isinstance(data.get("s"), list) \
            or not isinstance(data.get("v"), list):
        raise bad("not a cursor this viewer made")
    if data["s"] != [k.spec for k in keys]:
        raise bad("it belongs to another sort order")
    if len(data["v"]) != len(keys):
        raise bad("wrong number of values")
    values = []
    for key, raw in zip(keys, data["v"]):
        f = catalogue.BY_NAME[key.field]
        if raw is None:
            if not f.nullable:
                raise bad(f"{key.field} cannot be empty")
            values.append(None)
            continue
        if f.kind == "int" and not isinstance(raw, int):
            raise bad(f"{key.field} must be a whole number")
        try:
            values.append(convert_value(f, raw, ZoneInfo("UTC"), _sort_target(f)))
        except InvalidValue as exc:
            raise bad(str(exc)) from None
    return values


def _sort_target(f: Field) -> str:
    return "text" if f.kind == "ip" else "value"  # ip columns sort by their stored text


def keyset_predicate(keys: Sequence[SortKey], values: Sequence[Any],
                     params: dict[str, Any]) -> str:
    """Rows strictly after the cursor row in the order of `keys` (NULLs last), binding `k0`, …"""
    holders = []
    for i, (key, value) in enumerate(zip(keys, values)):
        if value is None:
            holders.append(None)
            continue
        f = catalogue.BY_NAME[key.field]
        params[f"k{i}"] = value
        holders.append(f"{{k{i}:{param_type(f, _sort_target(f))}}}")  # type: ignore[arg-type]
    disjuncts = []
    for i, key in enumerate(keys):
        if holders[i] is None:
            continue                      # nothing sorts after NULL within this key
        conj = [f"{k.field} IS NULL" if h is None else f"{k.field} = {h}"
                for k, h in zip(keys[:i], holders[:i])]
        after = f"{key.field} {'<' if key.descending else '>'} {holders[i]}"
        if catalogue.BY_NAME[key.field].nullable:
            after = f"({after} OR {key.field} IS NULL)"
        conj.append(after)
        disjuncts.append(" AND ".join(conj))
    if not disjuncts:
        return "0"
    return "(" + " OR ".join(f"({d})" for d in disjuncts) + ")"


# -- the query ----------------------------------------------------------------------

def _filters(request: ViewRequest, principal: Principal, now: datetime,
             params: dict[str, Any]) -> tuple[list[str], tuple[datetime | None, datetime | None]]:
    """Guard first, then range, connected_only, number search and builder rules."""
    where = []
    guard, guard_params = principal.guard()
    if guard:
        where.append(f"({guard})")
        params.update(guard_params)
    start, end = resolve_range(request, now)
    if start is not None:
        params["range_from"] = format_instant(start)
        where.append(f"start_time >= {{range_from:{DT_TYPE}}}")
    if end is not None:
        params["range_to"] = format_instant(end)
        where.append(f"start_time < {{range_to:{DT_TYPE}}}")
    if request.connected_only:
        where.append("billsec > 0")
    if request.number is not None:
        pred = number_predicate(parse_number_search(request.number), params)
        if pred:
            where.append(pred)
    if request.account_rules:
        try:
            narrow = compile_rules({"condition": "AND", "rules": list(request.account_rules)},
                                   principal, tz=request.tz, param_prefix="acct")
        except BuilderError as exc:
            raise ViewerError(f"account: {exc.reason}") from None
        params.update(narrow.params)
        where.append(narrow.sql)
    if request.rules is not None:
        try:
            rules = compile_rules(request.rules, principal, tz=request.tz, param_prefix="p")
        except BuilderError as exc:
            raise ViewerError(f"rules: {exc}", rule_path=exc.path) from None
        params.update(rules.params)
        where.append(rules.sql)
    return where, (start, end)


def compile_view(request: ViewRequest, principal: Principal, now: datetime, *,
                 newer_than: datetime | None = None, by_time: bool = False) -> CompiledQuery:
    """The guarded, paged query for `request` as seen by `principal` at instant `now`.

    `newer_than` (from `time_slices`) adds `start_time >= newer_than`: the query
    then reads only that recent slice of the range. It can only narrow the rows.
    `by_time`: read the time-ordered copy of the CDRs where `reads_by_time` says it
    serves the page (same rows, another physical order); the caller says whether the
    copy can serve the request at all (it holds hot months only: not with archived
    months in the range).
    """
    _zone(request.tz)
    table = BY_TIME if by_time and reads_by_time(request, principal) else TABLE
    columns = resolve_columns(request.columns, principal)
    keys = resolve_sort(request.sort, principal)
    limit = _limit(request.limit, request.for_download)
    params: dict[str, Any] = {}
    where, applied = _filters(request, principal, now, params)
    if newer_than is not None:
        if not isinstance(newer_than, datetime) or newer_than.tzinfo is None:
            raise ValueError("newer_than must be a timezone-aware datetime")
        params["slice_from"] = format_instant(newer_than)
        where.append(f"start_time >= {{slice_from:{DT_TYPE}}}")
    if request.cursor is not None:
        if limit is None:
            raise ViewerError("cursor: an unlimited download has no pages")
        where.append(keyset_predicate(keys, decode_cursor(request.cursor, keys), params))
    output = columns + tuple(k.field for k in keys if k.field not in columns)
    order = _order_by(keys)
    inner = [f"SELECT {', '.join(output)}", f"FROM {table} FINAL"]
    if where:
        inner.append("WHERE " + "\n  AND ".join(where))
    inner.append(f"ORDER BY {order}")
    if limit is not None:
        inner.append(f"LIMIT {limit + 1}")
    # every date-time column is stored in UTC: shown in UTC it needs no conversion
    # (the common case; the wrapper cost ~0.25 ms of a page's engine CPU, 3 %)
    shown = [f"toTimeZone({c}, {{tz:String}}) AS {c}"
             if catalogue.BY_NAME[c].kind == "datetime" and request.tz != "UTC" else c
             for c in output]
    settings = (by_time_settings(request, sliced=newer_than is not None) if table == BY_TIME
                else page_settings(principal, keys, limit, request.account_rules,
                                   sliced=newer_than is not None))
    if table == TABLE and not _filters_numbers(request):
        settings.update(NO_SKIP_INDEXES)
    if request.for_download or shown == list(output):
        sql = "\n".join(inner)
    else:
        # One SELECT, not an outer SELECT converting the page of an inner one: the
        # subquery cost ~1 ms of a 7-9 ms page (benchmarks/README.md, "one SELECT
        # per page"); the setting keeps WHERE and ORDER BY on the stored column
        params["tz"] = request.tz
        sql = "\n".join([f"SELECT {', '.join(shown)}", *inner[1:]])
        settings["prefer_column_name_to_alias"] = 1
    return CompiledQuery(sql, params, columns, output, applied, keys, limit, request.tz,
                         request.for_download, settings)


#: a small read (see page_settings): one thread, reading on it
SMALL_READ: dict[str, Any] = {"max_threads": 1, "local_filesystem_read_method": "pread"}
#: a page read in sort-key order (see page_settings): also blocks of one granule
IN_ORDER: dict[str, Any] = {**SMALL_READ, "max_block_size": 1024}


def page_settings(principal: Principal, keys: Sequence[SortKey], limit: int | None,
                  account_rules: Sequence[Mapping[str, Any]] = (),
                  sliced: bool = False) -> dict[str, Any]:
    """Engine settings that make a page cheaper without changing its rows.

    A page of one customer sorted by time (a customer's own, or an operator's narrowed
    to one customer) is read in sort-key order (cdr_records is sorted by tenant,
    customer, start_time), from the newest end; but ClickHouse reads in blocks of
    `max_block_size` rows (65,409), so the first block already covered a week of a large
    customer's calls, and `FINAL` merged all of them to keep 101. Blocks of one granule
    (1,024 rows, schema 014) let the read stop near the page: the largest customer's
    page at 5M CDRs 16.6 -> 10.6 ms (benchmarks/README.md, "Finer granules").

    Such a read, and a recent slice of a page not in key order (`time_slices`), are
    small: a second thread and the read thread pool cost them more than they give
    (customer page alone 9.1 -> 7.8 ms; at 32 clients the server's CPU per page fell
    from ~15 to ~11 ms for customers and ~22 to ~19 ms for operators). The whole range
    of a page not in key order (number searches, other sorts, a slice that did not
    fill) keeps the default threads; downloads (no limit) keep everything default.
    """
    if limit is None:
        return {}
    if _one_customer(principal, _narrowed(account_rules)) and keys[0].field == "start_time":
        return dict(IN_ORDER)
    return dict(SMALL_READ) if sliced else {}


#: TABLE's skip indexes are on these columns only (sql/schema/005_physical.sql)
NUMBER_FIELDS = frozenset({"src_number", "dst_number"})
#: for a read that filters no number column (see _filters_numbers)
NO_SKIP_INDEXES: dict[str, Any] = {"use_skip_indexes": 0}


def _filters_numbers(request: ViewRequest) -> bool:
    """Does the page filter a column that has a skip index (a number search, or a rule
    on a number)?

    If not, the text indexes cannot drop a granule, yet ClickHouse still spends time on
    them: a customer's search page (rules on billsec and country) ~0.25 ms of its ~8.7
    (interleaved, 1,200 rounds; benchmarks/README.md, "Where the rest of a customer's
    page goes"). Turning them off changes no row: a skip index only ever chooses
    granules to read."""
    fields = _rule_fields(request.rules).union(*map(_rule_fields, request.account_rules))
    return request.number is not None or bool(fields & NUMBER_FIELDS)


def _narrowed(account_rules: Sequence[Mapping[str, Any]]) -> set[str]:
    """The fields an operator's account narrowing fixes to one value."""
    return {r.get("field") for r in account_rules if r.get("operator") == "equal"}


def _one_customer(principal: Principal, narrowed: set[str]) -> bool:
    """Does the page show one customer's calls (stored in time order in TABLE)?"""
    return (principal.role == "customer"
            or (principal.role == "tenant" and "customer_id" in narrowed)
            or (principal.role == "admin" and {"tenant_id", "customer_id"} <= narrowed))


def _rule_fields(rules: Mapping[str, Any] | None) -> set[str]:
    """Every field a builder rule tree names (the tree is validated by compile_rules)."""
    if not isinstance(rules, Mapping):
        return set()
    found = {rules["field"]} if isinstance(rules.get("field"), str) else set()
    for child in rules.get("rules") or ():
        found |= _rule_fields(child)
    return found


#: The time-ordered copy of TABLE (sql/schema/016_by_time.sql), sorted by (tenant,
#: start_time, call_id, customer): a tenant's newest page is read in order from its
#: newest end, as a customer's is from TABLE.
BY_TIME = "cdr_records_by_time"
#: filters that TABLE serves better: its key (one customer) and its text indexes (numbers)
_KEYED_FIELDS = frozenset({"customer_id", "src_number", "dst_number", "call_id"})


def reads_by_time(request: ViewRequest, principal: Principal) -> bool:
    """Is `request` a page that the time-ordered copy serves better than TABLE?

    A page sorted by start_time over one tenant's calls from many customers: TABLE
    holds them in one stretch per customer, so the page read a recent slice of every
    stretch and sorted it (`time_slices`); the copy reads them in order and stops at
    the page (operators' pages at 32 clients: 105-114 -> 145-169 req/s, benchmarks/
    README.md, "A time-ordered copy"). Not for one customer's page (in order in TABLE
    already), downloads (read whole), several tenants at once (the copy's key leads
    with the tenant), number searches and rules on numbers or accounts (TABLE's text
    indexes and key find those rows; in time order the read would walk the range).
    Pure: the answer depends on the request and the principal only.
    """
    if request.for_download or request.limit is None:
        return False
    narrowed = _narrowed(request.account_rules)
    if _one_customer(principal, narrowed):
        return False
    if principal.tenant is None and "tenant_id" not in narrowed:
        return False
    try:
        keys = resolve_sort(request.sort, principal)
        items = parse_number_search(request.number) if request.number is not None else []
    except ViewerError:
        return False                       # compile_view reports it
    if keys[0].field != "start_time" or any(not item.negated for item in items):
        return False
    return not (_rule_fields(request.rules) & _KEYED_FIELDS)


#: a filtered page read in time order (see by_time_settings): blocks of 8 granules, and
#: the default threads
FILTERED_IN_ORDER: dict[str, Any] = {"max_block_size": 8192}


def _filtered(request: ViewRequest) -> bool:
    """Does the page keep only some of the range's calls (beyond the guard)?"""
    return request.rules is not None or request.connected_only or request.number is not None


def by_time_settings(request: ViewRequest, sliced: bool = False) -> dict[str, Any]:
    """Engine settings for a page read from the time-ordered copy (never its rows).

    Unfiltered, or in a recent slice (`page_slices`), the page's rows are among the
    first the read meets: one thread, blocks of one granule (IN_ORDER), as for a
    customer's page. Over a filtered page's whole range the read walks back until
    enough rows match, up to the whole range when few or none do; there one thread and
    small blocks cost 2-3x (a tenant's 6 months with no match: 327 ms against 104
    through cdr_records), and 8-granule blocks on the default threads about what
    cdr_records did (103 vs 86-102 ms). Those settings on every filtered page cost the
    operators' searches at 32 clients 20 % of their throughput, hence the slice first
    (5M CDRs, benchmarks/README.md, "A time-ordered copy")."""
    return dict(FILTERED_IN_ORDER) if _filtered(request) and not sliced else dict(IN_ORDER)


def page_slices(request: ViewRequest, principal: Principal, now: datetime,
                by_time: bool) -> list[datetime]:
    """The recent slices to try before a page's whole range (see `time_slices`).

    Read from the time-ordered copy, an unfiltered page needs none (the read stops at
    the page); a filtered one tries its last day first (one thread, small blocks),
    which holds the page unless its filter is rare."""
    slices = time_slices(request, principal, now)
    if by_time:
        return slices[:1] if _filtered(request) else []
    return slices


#: The recent windows a newest-first page tries before its whole range (see time_slices).
SLICE_WINDOWS: tuple[timedelta, ...] = (timedelta(days=1), timedelta(days=8))


def time_slices(request: ViewRequest, principal: Principal, now: datetime) -> list[datetime]:
    """Lower bounds on start_time worth trying, in order, before the page's whole range.

    A page sorted newest first whose rows are not stored in that order reads
    its whole range to find the newest few: cdr_records is sorted by (tenant,
    customer, start_time), so that is every page but a customer's. Restricted
    to `start_time >= bound`, the query reads only a recent slice; when the
    slice holds a full page (`limit + 1` rows, the look-ahead included), those
    are exactly the rows the whole range would give, because every row
    outside the slice is older than every row in it (start_time is never
    NULL). `engine.query.run_view` tries the bounds in order and otherwise
    runs the full query, so the result never changes; only the cost does.

    Pure. Returns [] where slicing cannot help: downloads, other sorts,
    customer pages (read in sort-key order already), and number searches:
    their matches are few (a number, a 4-digit prefix or suffix), so a slice
    rarely fills a page and the slices only add queries (measured on 1M CDRs:
    prefix 23 -> 42 ms, suffix 28 -> 67 ms with slicing); exact numbers are
    served by the text indexes over the whole range instead.
    """
    if request.for_download or request.limit is None or principal.role == "customer":
        return []
    try:
        keys = resolve_sort(request.sort, principal)
        start, end = resolve_range(request, now)
        items = parse_number_search(request.number) if request.number is not None else []
        cursor = decode_cursor(request.cursor, keys) if request.cursor is not None else None
    except ViewerError:
        return []                          # compile_view reports it
    if keys[0].field != "start_time" or not keys[0].descending:
        return []
    if any(not item.negated for item in items):
        return []
    # slices end where the data does: a preset's range runs to the end of today
    top = min(end, _now(now)) if end is not None else _now(now)
    if cursor is not None and cursor[0] is not None:
        top = min(top, datetime.strptime(cursor[0], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC))
    return [top - w for w in SLICE_WINDOWS if start is None or top - w > start]


def compile_count(request: ViewRequest, principal: Principal, now: datetime) -> CountQuery:
    """How many rows the view matches (ignoring columns, sort, page and cursor)."""
    _zone(request.tz)
    params: dict[str, Any] = {}
    where, applied = _filters(request, principal, now, params)
    sql = f"SELECT count() FROM {TABLE} FINAL"
    if where:
        sql += "\nWHERE " + "\n  AND ".join(where)
    return CountQuery(sql, params, applied)


@dataclass(frozen=True)
class ViewFilter:
    """The WHERE conditions of a view (the guard first), for aggregates over exactly the
    rows its pages show (sql/charts.py): one definition of "the rows of this view"."""

    where: tuple[str, ...]
    parameters: dict[str, Any]
    applied_range: tuple[datetime | None, datetime | None]


def view_filter(request: ViewRequest, principal: Principal, now: datetime) -> ViewFilter:
    """The guarded conditions of `request` (columns, sort, page and cursor ignored)."""
    _zone(request.tz)
    params: dict[str, Any] = {}
    where, applied = _filters(request, principal, now, params)
    return ViewFilter(tuple(where), params, applied)
