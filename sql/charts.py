"""The viewer's charts: calls, connected calls, minutes, ASR and ACD over time, and the
top countries, prefixes and release reasons — for exactly the rows a view shows.

Pure: this module decides how to answer (a `ChartPlan`) and compiles one query per
chart; `engine.query` runs them with the principal's limits. Two sources:

- **the daily summary** (`daily_summary`, per UTC day) when the view's range is whole
  UTC days (or unbounded), it has no number search and its rules name only fields the
  summary is keyed by (tenant, customer, carrier, country, prefix, currency). That is
  cheap at any range length. The query is *user SQL over the logical table*, compiled
  by the user-SQL guard (sql/guard.py) like any SQL a user writes, so it gets the same
  guard; the view's rules are compiled by the builder and ride in it as bound values.
- **the CDRs** otherwise: short ranges (at most `HOURLY_MAX`) by hour, longer ones by
  day, both in the display zone; the WHERE clause is the viewer's own
  (`viewer.view_filter`: guard, range, connected-only, number search, rules), so a
  chart counts exactly the calls the grid pages through.

Release reasons are not in the summary: that chart always reads the CDRs.

Definitions (the reference product's): a call is *connected* when billsec > 0;
minutes are talk minutes (billsec / 60); ASR = connected / calls; ACD = billsec /
connected, in seconds. With "connected only" every call counted is connected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from cdrhouse.sql import catalogue
from cdrhouse.sql.builder import compile_rules, day_start, zone
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import TABLE, ViewRequest, parse_number_search, resolve_range, view_filter

#: A range at most this long is charted by hour, a longer one by day.
HOURLY_MAX = timedelta(days=3)
#: Fields the daily summary is keyed by: rules on these alone can be answered from it.
SUMMARY_FIELDS = frozenset({"tenant_id", "customer_id", "carrier_id", "country",
                            "dst_prefix", "currency"})
#: The top-N charts: field → title.
DIMENSIONS: dict[str, str] = {"country": "Countries", "dst_prefix": "Prefixes",
                              "release_reason": "Release reasons"}
MAX_TOP = 50
#: Buckets are filled (empty hours/days as zeros) up to this many; beyond, only those seen.
MAX_FILLED = 4000

Bucket = Literal["hour", "day"]
Source = Literal["daily_summary", "cdrs"]


@dataclass(frozen=True)
class ChartPlan:
    """How a view's charts are answered."""

    bucket: Bucket
    source: Source
    #: the zone buckets start in: UTC for summary days, the display zone otherwise
    zone: str
    start: datetime | None
    end: datetime | None
    #: why this source, in a sentence a user can read
    why: str


@dataclass(frozen=True)
class ChartQuery:
    """One chart's query. `user_sql`: SQL over the logical tables, to be compiled by the
    user-SQL guard (engine.query.run_sql); otherwise guarded SQL from the viewer's filter
    (engine.query.run_chart)."""

    name: str
    sql: str
    parameters: dict[str, Any] = field(default_factory=dict)
    user_sql: bool = False


def rule_fields(tree: Any) -> set[str]:
    """Every field a builder tree names (rules, and fields compared to), at any depth."""
    out: set[str] = set()
    if not isinstance(tree, Mapping):
        return out
    for node in tree.get("rules") or ():
        if isinstance(node, Mapping) and "rules" in node:
            out |= rule_fields(node)
        elif isinstance(node, Mapping):
            name = node.get("field", node.get("id"))
            if isinstance(name, str):
                out.add(name)
            if node.get("valueSource") == "field":
                value = node.get("value")
                out.update(v for v in (value if isinstance(value, list) else [value])
                           if isinstance(v, str))
    return out


def _tree(request: ViewRequest) -> dict[str, Any] | None:
    """The request's rules and the operator's account narrowing, as one AND tree."""
    parts = [*request.account_rules, *([request.rules] if request.rules is not None else [])]
    return {"condition": "AND", "rules": parts} if parts else None


def _whole_utc_day(t: datetime | None) -> bool:
    return t is None or (t.astimezone(UTC).time() == datetime.min.time())


def plan(request: ViewRequest, principal: Principal, now: datetime) -> ChartPlan:
    """Which source and bucket answer `request`'s charts (ViewerError when the request is
    invalid — the same error, naming the same rule, as its page would give)."""
    view_filter(request, principal, now)   # the page's own checks, with the page's errors
    start, end = resolve_range(request, now)
    tree = _tree(request)
    numbers = parse_number_search(request.number) if request.number else []
    span = (end or now) - start if start is not None else None
    if span is not None and span <= HOURLY_MAX:
        return ChartPlan("hour", "cdrs", request.tz, start, end,
                         "a short range: hours from the call records")
    if not (_whole_utc_day(start) and _whole_utc_day(end)):
        why = "the range is not whole UTC days: days in your time zone from the call records"
    elif numbers:
        why = "a number search needs the call records: days in your time zone"
    elif not rule_fields(tree) <= SUMMARY_FIELDS:
        extra = sorted(rule_fields(tree) - SUMMARY_FIELDS)
        why = (f"a filter on {', '.join(extra)} needs the call records: days in your "
               "time zone")
    else:
        return ChartPlan("day", "daily_summary", "UTC", start, end,
                         "whole UTC days: from the daily summary")
    return ChartPlan("day", "cdrs", request.tz, start, end, why)


# -- the call records -------------------------------------------------------------------

#: aliases unlike the columns: ClickHouse lets an alias shadow a column in other expressions
_MEASURES = "count() AS n_calls, countIf(billsec > 0) AS n_connected, sum(billsec) AS n_billsec"


def _cdr_query(name: str, request: ViewRequest, principal: Principal, now: datetime,
               select: str, tail: str, extra: Mapping[str, Any] | None = None) -> ChartQuery:
    vf = view_filter(request, principal, now)
    params = {**vf.parameters, **(extra or {})}
    sql = f"SELECT {select}, {_MEASURES}\nFROM {TABLE} FINAL"
    if vf.where:
        sql += "\nWHERE " + "\n  AND ".join(vf.where)
    return ChartQuery(name, f"{sql}\n{tail}", params)


def series_from_cdrs(request: ViewRequest, principal: Principal, now: datetime,
                     p: ChartPlan) -> ChartQuery:
    """Calls, connected calls and billsec per hour or day (in `p.zone`) of the view."""
    fn = "toStartOfHour" if p.bucket == "hour" else "toStartOfDay"
    return _cdr_query("series", request, principal, now,
                      f"toUnixTimestamp({fn}(toDateTime(start_time), {{chart_zone:String}})) AS t",
                      "GROUP BY t ORDER BY t", {"chart_zone": p.zone})


def top_from_cdrs(request: ViewRequest, principal: Principal, now: datetime, dimension: str,
                  n: int) -> ChartQuery:
    """The `n` values of `dimension` with the most calls in the view."""
    _dimension(dimension, principal)
    return _cdr_query(dimension, request, principal, now, f"{dimension} AS key",
                      f"GROUP BY key ORDER BY n_calls DESC, key ASC LIMIT {_top(n)}")


def _dimension(name: str, principal: Principal) -> None:
    f = catalogue.BY_NAME.get(name)
    if name not in DIMENSIONS or f is None or not f.visible_to(principal.role):
        raise ValueError(f"no chart of {name!r} for {principal.role}")


def _top(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TOP:
        raise ValueError(f"top: expected 1 to {MAX_TOP}, got {n!r}")
    return n


# -- the daily summary ------------------------------------------------------------------

def _summary_where(request: ViewRequest, principal: Principal, p: ChartPlan,
                   excluded: Sequence[tuple[str, int]]) -> tuple[str, dict[str, Any]]:
    conds, params = [], {}
    if p.start is not None:
        conds.append("day >= {c_from:Date}")
        params["c_from"] = p.start.astimezone(UTC).date()
    if p.end is not None:
        conds.append("day < {c_to:Date}")
        params["c_to"] = p.end.astimezone(UTC).date()
    tree = _tree(request)
    if tree is not None:
        pred = compile_rules(tree, principal, tz=request.tz, param_prefix="r")
        conds.append(pred.sql)
        params.update(pred.params)
    if excluded:  # archived months the view does not read: the grid does not show them
        if principal.role == "admin":
            conds.append("concat(tenant_id, '/', toString(toYYYYMM(day))) NOT IN "
                         "{c_warm:Array(String)}")
            params["c_warm"] = sorted({f"{t}/{m}" for t, m in excluded})
        else:
            conds.append("toYYYYMM(day) NOT IN {c_warm:Array(UInt32)}")
            params["c_warm"] = sorted({m for _, m in excluded})
    return (" WHERE " + " AND ".join(conds)) if conds else "", params


def _summary_measures(request: ViewRequest) -> str:
    calls = "connected" if request.connected_only else "calls"
    return (f"toInt64(sum({calls})) AS n_calls, toInt64(sum(connected)) AS n_connected, "
            "toInt64(sum(billsec)) AS n_billsec")


def series_from_summary(request: ViewRequest, principal: Principal, p: ChartPlan,
                        excluded: Sequence[tuple[str, int]] = ()) -> ChartQuery:
    """Per UTC day from `daily_summary` (user SQL, for the guard to compile)."""
    where, params = _summary_where(request, principal, p, excluded)
    sql = (f"SELECT day AS t, {_summary_measures(request)} FROM daily_summary{where} "
           "GROUP BY t ORDER BY t")
    return ChartQuery("series", sql, params, user_sql=True)


def top_from_summary(request: ViewRequest, principal: Principal, p: ChartPlan, dimension: str,
                     n: int, excluded: Sequence[tuple[str, int]] = ()) -> ChartQuery:
    _dimension(dimension, principal)
    if dimension not in SUMMARY_FIELDS:
        raise ValueError(f"the daily summary has no {dimension!r}")
    where, params = _summary_where(request, principal, p, excluded)
    sql = (f"SELECT {dimension} AS key, {_summary_measures(request)} FROM daily_summary{where} "
           f"GROUP BY key HAVING n_calls > 0 ORDER BY n_calls DESC, key ASC LIMIT {_top(n)}")
    return ChartQuery(dimension, sql, params, user_sql=True)


def queries(request: ViewRequest, principal: Principal, now: datetime, p: ChartPlan, top: int,
            excluded: Sequence[tuple[str, int]] = ()) -> list[ChartQuery]:
    """Every chart's query for the plan: the series, then one per dimension."""
    out = []
    if p.source == "daily_summary":
        out.append(series_from_summary(request, principal, p, excluded))
    else:
        out.append(series_from_cdrs(request, principal, now, p))
    for dim in DIMENSIONS:
        if p.source == "daily_summary" and dim in SUMMARY_FIELDS:
            out.append(top_from_summary(request, principal, p, dim, top, excluded))
        else:
            out.append(top_from_cdrs(request, principal, now, dim, top))
    return out


# -- shaping the answer -----------------------------------------------------------------

def _epoch(value: Any) -> int:
    if isinstance(value, datetime):
        v = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(v.timestamp())
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp())
    return int(value)


def bucket_starts(p: ChartPlan, first: int | None, last: int | None, now: datetime) -> list[int]:
    """Every bucket start (epoch seconds) from the range's start to its end (or the data's
    first/last bucket where the range is open), so an hour without calls shows as 0."""
    z = zone(p.zone)
    lo = p.start.timestamp() if p.start is not None else first
    hi = p.end.timestamp() if p.end is not None else max(last or 0, now.timestamp())
    if lo is None or hi is None:
        return []
    if p.bucket == "hour":
        t0 = datetime.fromtimestamp(lo, UTC).astimezone(z).replace(minute=0, second=0,
                                                                   microsecond=0)
        t = int(t0.timestamp())
        out = []
        while t < hi and len(out) <= MAX_FILLED:
            out.append(t)
            t += 3600
        return out if len(out) <= MAX_FILLED else []
    d = datetime.fromtimestamp(lo, UTC).astimezone(z).date()
    out = []
    while len(out) <= MAX_FILLED:
        t = int(day_start(d, z).timestamp())
        if t >= hi:
            break
        out.append(t)
        d += timedelta(days=1)
    return out if len(out) <= MAX_FILLED else []


def _measures(calls: int, connected: int, billsec: int) -> dict[str, Any]:
    return {"calls": calls, "connected": connected, "billsec": billsec,
            "minutes": round(billsec / 60, 2),
            "asr": round(connected / calls, 4) if calls else None,
            "acd": round(billsec / connected, 1) if connected else None}


def series(p: ChartPlan, rows: Iterable[Sequence[Any]], now: datetime) -> dict[str, Any]:
    """The series as columns (uPlot's shape): `t` (epoch seconds of each bucket's start),
    `time` (ISO 8601 in the bucket zone), and one list per measure; plus the totals."""
    seen = {_epoch(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}
    starts = bucket_starts(p, min(seen, default=None), max(seen, default=None), now)
    ts = sorted(set(starts) | set(seen)) if starts else sorted(seen)
    z = zone(p.zone)
    out: dict[str, Any] = {"t": ts, "time": [datetime.fromtimestamp(t, UTC).astimezone(z)
                                             .isoformat() for t in ts]}
    for key in ("calls", "connected", "minutes", "asr", "acd"):
        out[key] = [_measures(*seen.get(t, (0, 0, 0)))[key] for t in ts]
    total = [sum(v[i] for v in seen.values()) for i in range(3)]
    return {"series": out, "totals": _measures(*total)}


def top(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    return [{"key": str(r[0]), **_measures(int(r[1]), int(r[2]), int(r[3]))} for r in rows]
