"""Built-in usage reports: a day's or a month's traffic and money of what a principal may see.

Every number comes through the user-SQL guard (`engine.query.run_sql`), as the
principal: totals, accounts and destinations from the logical `daily_summary`
(one row per UTC day x account x destination; cheap at any volume), release
reasons from `cdrs` (the summary does not keep them; one grouped read of the
period). So a customer's report holds only its own calls and its own side's
money, and a report can never show what the same principal could not query.

Columns (rounded only when written): calls, connected, minutes (talk time,
billsec / 60), ASR (connected / calls, %), ACD (seconds per connected call),
billed minutes (after the rate card's increments), charge — what the customer
pays; for a carrier user, what the carrier is paid. Operators also get cost
(paid to carriers) and margin (charge − cost). Money is kept per currency:
amounts in different currencies are never added.

Sections: `total` (per currency); for operators `customer` and `carrier` (per
account, by code); `destination` (the top 10 by minutes: country and prefix);
`release_reason` (the top 10 by calls: calls, connected, minutes, ASR, ACD).

Output: CSV (one table, a `section` column first) and a small self-contained
HTML page (inline style, no scripts or external assets, every value escaped).
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cdrhouse.engine import accounts as acc
from cdrhouse.engine.db import Database
from cdrhouse.engine.query import run_sql
from cdrhouse.sql.errors import UserError
from cdrhouse.sql.months import shift_first_day
from cdrhouse.sql.principal import Principal

PERIODS: tuple[str, ...] = ("daily", "monthly")
TOP = 10


class ReportError(UserError):
    """A report request that cannot be honoured; the message names the parameter."""


@dataclass(frozen=True)
class Period:
    kind: str
    start: dt.date
    end: dt.date  # exclusive

    @property
    def label(self) -> str:
        return (self.start.isoformat() if self.kind == "daily"
                else self.start.strftime("%Y-%m"))


def period_of(kind: str, day: str | None, now: dt.datetime) -> Period:
    """The UTC day (`YYYY-MM-DD`) or month (`YYYY-MM`) of a report; by default the last
    complete one before `now` (yesterday, last month), resolved in UTC."""
    if kind not in PERIODS:
        raise ReportError(f"period: {kind!r} is not one of {', '.join(PERIODS)}")
    today = now.astimezone(dt.timezone.utc).date()
    if kind == "daily":
        if day is None:
            start = today - dt.timedelta(days=1)
        else:
            try:
                start = dt.date.fromisoformat(day)
            except ValueError:
                raise ReportError(f"date: {day!r} is not a day; write YYYY-MM-DD") from None
        return Period(kind, start, start + dt.timedelta(days=1))
    if day is None:
        start = shift_first_day(today.replace(day=1), -1)
    else:
        try:
            start = dt.datetime.strptime(day, "%Y-%m").date()
        except ValueError:
            raise ReportError(f"date: {day!r} is not a month; write YYYY-MM") from None
    return Period(kind, start, shift_first_day(start, 1))


@dataclass
class UsageReport:
    period: Period
    scope: str
    operator: bool
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    generated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    def section(self, name: str) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows if r[0] == name]


def _money_columns(principal: Principal) -> list[tuple[str, str]]:
    """(report column, daily_summary expression) for the principal's side of the money."""
    if principal.role == "customer":
        return [("charge", "sum(customer_charge)")]
    if principal.role == "carrier":
        return [("charge", "sum(carrier_cost)")]
    return [("charge", "sum(customer_charge)"), ("cost", "sum(carrier_cost)"),
            ("margin", "sum(margin)")]


def _metrics(calls: int, connected: int, billsec: int, billed: int | None) -> list[Any]:
    return [int(calls), int(connected), Decimal(int(billsec)) / 60,
            Decimal(int(connected)) * 100 / int(calls) if calls else Decimal(0),
            Decimal(int(billsec)) / int(connected) if connected else Decimal(0),
            None if billed is None else Decimal(int(billed)) / 60]


def usage_report(db: Database, principal: Principal, period: Period, *,
                 tenant: str | None = None, customer: str | None = None,
                 carrier: str | None = None, now: dt.datetime | None = None,
                 label: str | None = None) -> UsageReport:
    """The usage report of `period` as `principal` (operators may narrow to one account;
    an admin names the tenant for that)."""
    operator = principal.role in ("admin", "tenant")
    if (customer or carrier or tenant) and not operator:
        raise ReportError(f"customer / carrier: a {principal.role} user's report already covers "
                          "only its own account")
    if tenant and principal.role != "admin":
        raise ReportError("tenant: only an admin chooses the tenant")
    if customer and carrier:
        raise ReportError("customer / carrier: narrow to one account, not two")
    scope_tenant = principal.tenant or tenant
    where = ["day >= {p_from:Date}", "day < {p_to:Date}"]
    cdr_where = ["start_time >= {p_start:DateTime64(3, 'UTC')}",
                 "start_time < {p_end:DateTime64(3, 'UTC')}"]
    params: dict[str, Any] = {"p_from": period.start.isoformat(), "p_to": period.end.isoformat()}
    cdr_params: dict[str, Any] = {"p_start": f"{period.start.isoformat()} 00:00:00",
                                  "p_end": f"{period.end.isoformat()} 00:00:00"}
    scope = label or principal.label or principal.role
    if tenant:
        where.append("tenant_id = {p_tenant:String}")
        cdr_where.append("tenant_id = {p_tenant:String}")
        params["p_tenant"] = cdr_params["p_tenant"] = tenant
    for kind, code in (("customer", customer), ("carrier", carrier)):
        if not code:
            continue
        if not scope_tenant:
            raise ReportError(f"{kind}: an admin names the tenant too")
        found = acc.find(db, scope_tenant, kind, code)
        if found is None:
            raise ReportError(f"{kind}: no {kind} {code!r} in tenant {scope_tenant!r}")
        where.append(f"{kind}_id = {{p_acct:UInt32}}")
        cdr_where.append(f"{kind}_id = {{p_acct:UInt32}}")
        params["p_acct"] = cdr_params["p_acct"] = found.account_id
        scope = f"tenant:{scope_tenant}/{kind}:{code}"
    money = _money_columns(principal)
    columns = ["section", "key", "currency", "calls", "connected", "minutes", "asr_percent",
               "acd_seconds", "billed_minutes", *(m for m, _ in money)]
    report = UsageReport(period, scope, operator, columns, generated_at=now or
                         dt.datetime.now(dt.timezone.utc))
    # aliases differ from the columns: ClickHouse would read `sum(x) AS x` inside
    # another aggregate of x
    sums = ("sum(calls) AS r_calls, sum(connected) AS r_connected, sum(billsec) AS r_billsec, "
            "sum(billed_sec) AS r_billed, " + ", ".join(f"{e} AS r_{m}" for m, e in money))
    cond = " AND ".join(where)

    def add(section: str, sql: str, key_of) -> None:
        res = run_sql(db, principal, sql, params)
        for r in res.rows:
            key, currency, calls, connected, billsec, billed, *amounts = r
            report.rows.append([section, key_of(key), currency,
                                *_metrics(calls, connected, billsec, billed), *amounts])

    add("total", f"SELECT '', currency, {sums} FROM daily_summary WHERE {cond} "
                 "GROUP BY currency ORDER BY currency", lambda k: "")
    if operator:
        for kind in ("customer", "carrier"):
            codes = _codes(db, scope_tenant, kind)
            add(kind, f"SELECT {kind}_id, currency, {sums} FROM daily_summary WHERE {cond} "
                      f"GROUP BY {kind}_id, currency ORDER BY r_calls DESC, {kind}_id",
                lambda k, codes=codes: codes.get(int(k), str(k)))
    add("destination", f"SELECT concat(country, ' ', dst_prefix), currency, {sums} "
                       f"FROM daily_summary WHERE {cond} GROUP BY country, dst_prefix, currency "
                       f"ORDER BY r_billsec DESC, r_calls DESC, country, dst_prefix LIMIT {TOP}",
        lambda k: k.strip())
    res = run_sql(db, principal,
                  "SELECT release_reason, count() AS r_calls, countIf(billsec > 0) AS r_connected, "
                  f"sum(billsec) AS r_billsec FROM cdrs WHERE {' AND '.join(cdr_where)} "
                  "GROUP BY release_reason ORDER BY r_calls DESC, release_reason LIMIT "
                  f"{TOP}", cdr_params)
    for reason, calls, connected, billsec in res.rows:
        report.rows.append(["release_reason", reason or "(none)", "",
                            *_metrics(calls, connected, billsec, None),
                            *(None for _ in money)])
    return report


def _codes(db: Database, tenant: str | None, kind: str) -> dict[int, str]:
    if not tenant:
        return {}
    return {a.account_id: a.code for a in acc.list_accounts(db, tenant, kind)}


# -- rendering ----------------------------------------------------------------------------

def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        places = {"minutes": 2, "billed_minutes": 2, "asr_percent": 2, "acd_seconds": 1}.get(
            column, 6)
        return f"{value.quantize(Decimal(1).scaleb(-places)):f}"
    return str(value)


def to_csv(report: UsageReport) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(report.columns)
    for r in report.rows:
        w.writerow([_cell(c, v) for c, v in zip(report.columns, r)])
    return buf.getvalue().encode()


_TITLES = {"total": "Totals", "customer": "By customer", "carrier": "By carrier",
           "destination": f"Top {TOP} destinations (by minutes)",
           "release_reason": f"Top {TOP} release reasons (by calls)"}
_STYLE = ("body{font:14px system-ui,sans-serif;margin:2em;color:#222}"
          "table{border-collapse:collapse;margin:0 0 2em}"
          "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
          "th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
          "p.meta{color:#666}")


def to_html(report: UsageReport) -> bytes:
    """A small self-contained page: inline style, no scripts or links, values escaped."""
    e = html.escape
    title = f"{report.period.kind.capitalize()} usage {report.period.label}"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)} — {e(report.scope)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{e(title)}</h1>",
           f'<p class="meta">{e(report.scope)} · UTC {e(report.period.start.isoformat())} to '
           f"{e(report.period.end.isoformat())} (exclusive) · generated "
           f"{e(report.generated_at.strftime('%Y-%m-%d %H:%M'))} UTC</p>"]
    heads = report.columns[1:]
    for section, heading in _TITLES.items():
        rows = [r for r in report.rows if r[0] == section]
        if section in ("customer", "carrier") and not report.operator:
            continue
        out.append(f"<h2>{e(heading)}</h2><table><thead><tr>"
                   + "".join(f"<th>{e(h.replace('_', ' '))}</th>" for h in heads)
                   + "</tr></thead><tbody>")
        if not rows:
            out.append(f'<tr><td colspan="{len(heads)}">no calls</td></tr>')
        for r in rows:
            out.append("<tr>" + "".join(f"<td>{e(_cell(c, v))}</td>"
                                        for c, v in zip(heads, r[1:])) + "</tr>")
        out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out).encode()
