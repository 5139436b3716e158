"""The ledger (payments, credits, adjustments) and account balances.

Balance of an account = sum of its ledger entries − its usage, where usage is
what the daily summary says it was charged (customers: customer_charge) or
what we owe for its traffic (carriers: carrier_cost). So for a customer a
positive balance is prepaid credit left; for a carrier it is what we paid in
advance, negative what we owe — the mirror. An opening balance is simply the
first ledger entry (type `opening`).

`refresh` (Refresh Credit) recomputes balances from the summaries and the
ledger and writes one row per account into `balances` (ReplacingMergeTree: the
latest computation wins). It reads whole histories, so it is exact and
idempotent; it is cheap because the summary has one row per account-day-destination.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from cdrhouse.sql.errors import UserError
from cdrhouse.engine import accounts as acc
from cdrhouse.engine.db import Database

ENTRY_TYPES: tuple[str, ...] = ("opening", "payment", "credit", "adjustment")


class LedgerError(UserError):
    """A ledger request that cannot be honoured; the message says why."""


@dataclass(frozen=True)
class Entry:
    entry_id: str
    tenant_id: str
    kind: str
    account_id: int
    account_code: str
    entry_type: str
    amount: Decimal
    currency: str
    at: dt.datetime
    note: str
    created_by: str


@dataclass(frozen=True)
class Balance:
    tenant_id: str
    kind: str
    account_id: int
    code: str
    currency: str
    ledger_total: Decimal
    usage_total: Decimal
    balance: Decimal
    calls: int
    computed_at: dt.datetime | None


def add_entry(db: Database, account: acc.Account, entry_type: str, amount: str | Decimal,
              note: str = "", created_by: str = "", at: dt.datetime | None = None) -> Entry:
    """Record a payment, credit, adjustment or opening balance, then refresh the balance."""
    if entry_type not in ENTRY_TYPES:
        raise LedgerError(f"type: {entry_type!r} is not one of {', '.join(ENTRY_TYPES)}")
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation:
        raise LedgerError(f"amount: not a decimal number: {amount!r}") from None
    if not value.is_finite() or abs(value) > Decimal("999999999999"):
        raise LedgerError(f"amount: out of range: {amount!r}")
    if value.as_tuple().exponent < -6:  # type: ignore[operator]
        raise LedgerError(f"amount: more than 6 decimals: {amount!r}")
    if value == 0:
        raise LedgerError("amount: a zero entry changes nothing")
    when = (at or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    entry = Entry(secrets.token_hex(8), account.tenant_id, account.kind, account.account_id,
                  account.code, entry_type, value, account.currency, when, note, created_by)
    db.insert_rows("ledger", [(entry.entry_id, entry.tenant_id, entry.kind, entry.account_id,
                               entry.entry_type, entry.amount, entry.currency, entry.at,
                               entry.note, entry.created_by)],
                   ["entry_id", "tenant_id", "kind", "account_id", "entry_type", "amount",
                    "currency", "at", "note", "created_by"])
    refresh(db, account.tenant_id, [account])
    return entry


def entries(db: Database, tenant: str, account: acc.Account | None = None) -> list[Entry]:
    where = "tenant_id = {t:String}"
    params: dict = {"t": tenant}
    if account is not None:
        where += " AND kind = {k:String} AND account_id = {a:UInt32}"
        params.update(k=account.kind, a=account.account_id)
    codes = {(a.kind, a.account_id): a.code for a in acc.list_accounts(db, tenant)}
    return [Entry(e, t, k, int(a), codes.get((k, int(a)), ""), ty, Decimal(am), cur, at, note, by)
            for e, t, k, a, ty, am, cur, at, note, by in db.rows(
                "SELECT entry_id, tenant_id, toString(kind), account_id, entry_type, amount, "
                f"currency, at, note, created_by FROM ledger WHERE {where} "
                "ORDER BY at, entry_id", params)]


def refresh(db: Database, tenant: str, accounts: list[acc.Account] | None = None,
            job_id: str = "") -> int:
    """Recompute balances of `accounts` (default: all of the tenant's) from summaries and ledger."""
    accounts = acc.list_accounts(db, tenant) if accounts is None else accounts
    if not accounts:
        return 0
    usage: dict[tuple[str, int], tuple[Decimal, int]] = {}
    for kind, col, idcol in (("customer", "customer_charge", "customer_id"),
                             ("carrier", "carrier_cost", "carrier_id")):
        ids = [a.account_id for a in accounts if a.kind == kind]
        if not ids:
            continue
        for aid, total, calls in db.rows(
                f"SELECT {idcol}, sum({col}), sum(calls) FROM cdr_daily_summary "
                f"WHERE tenant_id = {{t:String}} AND {idcol} IN {{ids:Array(UInt32)}} "
                f"GROUP BY {idcol}", {"t": tenant, "ids": ids}):
            usage[(kind, int(aid))] = (Decimal(total), int(calls))
    paid = {(k, int(a)): Decimal(s) for k, a, s in db.rows(
        "SELECT toString(kind), account_id, sum(amount) FROM ledger WHERE tenant_id = {t:String} "
        "GROUP BY kind, account_id", {"t": tenant})}
    now = dt.datetime.now(dt.timezone.utc)
    version = time.time_ns()
    rows = []
    for a in accounts:
        used, calls = usage.get((a.kind, a.account_id), (Decimal(0), 0))
        credit = paid.get((a.kind, a.account_id), Decimal(0))
        rows.append((tenant, a.kind, a.account_id, a.currency, credit, used, credit - used,
                     calls, now, job_id, version))
    db.insert_rows("balances", rows, ["tenant_id", "kind", "account_id", "currency",
                                      "ledger_total", "usage_total", "balance", "calls",
                                      "computed_at", "job_id", "version"])
    return len(rows)


def balances(db: Database, tenant: str | None = None, kind: str | None = None,
             account_id: int | None = None) -> list[Balance]:
    """Stored balances joined with account codes; accounts never computed show zero, no time."""
    where, params = [], {}
    if tenant is not None:
        where.append("a.tenant_id = {t:String}")
        params["t"] = tenant
    if kind is not None:
        where.append("a.kind = {k:String}")
        params["k"] = kind
    if account_id is not None:
        where.append("a.account_id = {a:UInt32}")
        params["a"] = account_id
    sql = (
        "SELECT a.tenant_id, toString(a.kind), a.account_id, a.code, a.currency, "
        "b.ledger_total, b.usage_total, b.balance, b.calls, b.computed_at, b.version "
        "FROM (SELECT * FROM accounts FINAL) AS a "
        "LEFT JOIN (SELECT * FROM balances FINAL) AS b "
        "ON b.tenant_id = a.tenant_id AND b.kind = a.kind AND b.account_id = a.account_id"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY a.tenant_id, a.kind, a.account_id")
    out = []
    for t, k, aid, code, cur, led, use, bal, calls, at, ver in db.rows(sql, params):
        out.append(Balance(t, k, int(aid), code, cur, Decimal(led), Decimal(use), Decimal(bal),
                           int(calls), at if ver else None))
    return out
