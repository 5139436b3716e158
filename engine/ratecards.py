"""Rate cards: what an account is charged (customer) or paid (carrier) per destination.

A card is a set of rows, one per (destination prefix, effective_from):
rate per minute, connect fee, billing increments (initial / next seconds),
minimum billable duration, currency, rounding (decimals of the charge) and an
optional effective_to (exclusive). Pricing itself happens in ClickHouse
(engine.rating); this module validates, stores, lists and exports cards.

CSV format (header required, columns in any order; `rounding` and
`effective_to` optional):

    prefix,rate_per_min,connect_fee,increment,min_duration,effective_from,effective_to,currency,rounding
    44,0.012,0,60/60,0,2026-01-01,,USD,4
    4420,0.010,0.005,1/1,0,2026-01-01,2026-07-01,USD,6

An import is all or nothing: if any line is bad, nothing is stored and the
error lists every bad line with its number and reason (like ingest's
rejects), so a half-loaded card never prices calls. Re-importing a row with
the same (prefix, effective_from) replaces it (ReplacingMergeTree version).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from cdrhouse.sql.errors import UserError
from cdrhouse.engine import accounts as acc
from cdrhouse.engine.db import Database

REQUIRED = ("prefix", "rate_per_min", "connect_fee", "increment", "min_duration",
            "effective_from", "currency")
OPTIONAL = ("effective_to", "rounding")
HEADER = ("prefix", "rate_per_min", "connect_fee", "increment", "min_duration",
          "effective_from", "effective_to", "currency", "rounding")
DEFAULT_ROUNDING = 6
_PREFIX = re.compile(r"^[0-9]{1,20}$")
_INCREMENT = re.compile(r"^\s*(\d{1,5})\s*(?:/\s*(\d{1,5}))?\s*$")
_MAX_MONEY = Decimal("999999999999")


class RateCardError(UserError):
    """A rate card that cannot be stored; the message names every bad line."""


@dataclass(frozen=True)
class Rate:
    prefix: str
    rate_per_min: Decimal
    connect_fee: Decimal
    increment_initial: int
    increment_next: int
    min_duration: int
    effective_from: dt.datetime
    effective_to: dt.datetime | None
    currency: str
    rounding: int = DEFAULT_ROUNDING

    @property
    def increment(self) -> str:
        return f"{self.increment_initial}/{self.increment_next}"


def _money(text: str, name: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{name}: not a decimal number: {text!r}") from None
    if not value.is_finite() or value < 0 or value > _MAX_MONEY:
        raise ValueError(f"{name}: must be a number from 0 to {_MAX_MONEY}: {text!r}")
    if value.as_tuple().exponent < -6:  # type: ignore[operator]
        raise ValueError(f"{name}: more than 6 decimals: {text!r}")
    return value


def _when(text: str, name: str) -> dt.datetime:
    text = text.strip()
    try:
        if len(text) == 10:
            value = dt.datetime.combine(dt.date.fromisoformat(text), dt.time())
        else:
            value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: not a date (YYYY-MM-DD) or ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)  # cards are in UTC, like CDRs
    return value.astimezone(dt.timezone.utc)


def parse_row(row: dict[str, str], default_currency: str) -> Rate:
    """One CSV row as a Rate, or ValueError naming the column and the reason."""
    get = {k: (v or "").strip() for k, v in row.items() if k is not None}
    prefix = get.get("prefix", "").lstrip("+")
    if not _PREFIX.match(prefix):
        raise ValueError(f"prefix: 1-20 digits expected: {get.get('prefix', '')!r}")
    m = _INCREMENT.match(get.get("increment", ""))
    if not m:
        raise ValueError(f"increment: use initial/next seconds like 60/60 or 1/1: "
                         f"{get.get('increment', '')!r}")
    initial = int(m.group(1))
    nxt = int(m.group(2) or m.group(1))
    if nxt < 1:
        raise ValueError(f"increment: the next increment must be at least 1 second: {m.group(0)!r}")
    try:
        min_duration = int(get.get("min_duration") or "0")
    except ValueError:
        raise ValueError(f"min_duration: not a whole number of seconds: "
                         f"{get.get('min_duration')!r}") from None
    if not 0 <= min_duration <= 86400:
        raise ValueError(f"min_duration: must be 0 to 86400 seconds: {min_duration}")
    rounding_text = get.get("rounding") or str(DEFAULT_ROUNDING)
    if not rounding_text.isdigit() or int(rounding_text) > 6:
        raise ValueError(f"rounding: decimals of the charge, 0 to 6: {rounding_text!r}")
    currency = (get.get("currency") or default_currency).upper()
    if not acc.CURRENCY.match(currency):
        raise ValueError(f"currency: not an ISO 4217 code: {currency!r}")
    if not get.get("effective_from"):
        raise ValueError("effective_from: missing")
    start = _when(get["effective_from"], "effective_from")
    end = _when(get["effective_to"], "effective_to") if get.get("effective_to") else None
    if end is not None and end <= start:
        raise ValueError("effective_to: must be after effective_from")
    return Rate(prefix, _money(get.get("rate_per_min", ""), "rate_per_min"),
                _money(get.get("connect_fee") or "0", "connect_fee"), initial, nxt,
                min_duration, start, end, currency, int(rounding_text))


def parse_csv(text: str, default_currency: str = "USD") -> list[Rate]:
    """All rows of a rate-card CSV, or RateCardError listing every bad line."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise RateCardError("the file is empty: expected a header line "
                            f"({','.join(HEADER)})")
    reader.fieldnames = header
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in HEADER]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown column(s) {', '.join(unknown)}")
        raise RateCardError(f"line 1 (header): {'; '.join(parts)}; expected {','.join(HEADER)}")
    rates, errors, seen = [], [], {}
    for row in reader:
        line = reader.line_num
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # blank line
        if None in row:
            errors.append(f"line {line}: more fields than the header has")
            continue
        try:
            rate = parse_row(row, default_currency)
        except ValueError as exc:
            errors.append(f"line {line}: {exc}")
            continue
        key = (rate.prefix, rate.effective_from)
        if key in seen:
            errors.append(f"line {line}: prefix {rate.prefix} effective "
                          f"{rate.effective_from:%Y-%m-%d %H:%M:%S} already on line {seen[key]}")
            continue
        seen[key] = line
        rates.append(rate)
    if errors:
        shown = errors[:50] + ([f"… and {len(errors) - 50} more"] if len(errors) > 50 else [])
        raise RateCardError(f"{len(errors)} bad line(s), nothing imported:\n  " + "\n  ".join(shown))
    if not rates:
        raise RateCardError("no rates in the file (only a header)")
    return rates


def _account(db: Database, tenant: str, kind: str, code: str) -> acc.Account:
    acc.check_tenant(tenant)
    if kind not in acc.KINDS:
        raise RateCardError(f"kind: {kind!r} is not customer or carrier")
    found = acc.find(db, tenant, kind, code)
    if not found:
        raise RateCardError(f"no {kind} {code!r} in tenant {tenant!r} "
                            "(add it with `cdrhouse accounts add`)")
    return found


def resolve_account(db: Database, tenant: str, code: str,
                    kind: str | None = None) -> acc.Account:
    """The account named `code` (optionally `customer:CODE` / `carrier:CODE`)."""
    if kind is None and ":" in code and code.split(":", 1)[0] in acc.KINDS:
        kind, code = code.split(":", 1)
    if kind is not None:
        return _account(db, tenant, kind, code)
    acc.check_tenant(tenant)
    found = [a for a in acc.list_accounts(db, tenant) if a.code == code]
    if not found:
        raise RateCardError(f"no account {code!r} in tenant {tenant!r}")
    if len(found) > 1:
        raise RateCardError(f"{code!r} is both a customer and a carrier in tenant {tenant!r}: "
                            f"write customer:{code} or carrier:{code}")
    return found[0]


_COLUMNS = ["tenant_id", "kind", "account_id", "prefix", "effective_from", "effective_to",
            "rate_per_min", "connect_fee", "increment_initial", "increment_next",
            "min_duration", "rounding", "currency", "deleted", "version"]


def store_rates(db: Database, tenant: str, account: acc.Account, rates: Iterable[Rate],
                replace: bool = False) -> int:
    """Write `rates` for the account; `replace` retires the account's other rows first.

    One insert: the rows land together (and, with `replace`, the retirements of
    the rows not in the file are in the same block).
    """
    version = time.time_ns()
    rows = [(tenant, account.kind, account.account_id, r.prefix, r.effective_from,
             r.effective_to, r.rate_per_min, r.connect_fee, r.increment_initial,
             r.increment_next, r.min_duration, r.rounding, r.currency, False, version)
            for r in rates]
    if replace:
        keep = {(r[3], r[4]) for r in rows}
        for old in list_rates(db, tenant, account):
            if (old.prefix, old.effective_from) not in keep:
                rows.append((tenant, account.kind, account.account_id, old.prefix,
                             old.effective_from, old.effective_to, old.rate_per_min,
                             old.connect_fee, old.increment_initial, old.increment_next,
                             old.min_duration, old.rounding, old.currency, True, version))
    db.insert_rows("rate_cards", rows, _COLUMNS)
    return len(rows)


def import_text(db: Database, tenant: str, code: str, text: str, kind: str | None = None,
                replace: bool = False, source: str = "the card") -> tuple[acc.Account, int]:
    """`import_csv` for CSV text already read (the HTTP API's request body)."""
    account = resolve_account(db, tenant, code, kind)
    try:
        rates = parse_csv(text, account.currency)
    except RateCardError as exc:
        raise RateCardError(f"{source}: {exc}") from None
    store_rates(db, tenant, account, rates, replace=replace)
    return account, len(rates)


def import_csv(db: Database, tenant: str, code: str, path: Path, kind: str | None = None,
               replace: bool = False) -> tuple[acc.Account, int]:
    """Validate and store a rate-card CSV for an account; returns (account, rows stored)."""
    account = resolve_account(db, tenant, code, kind)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RateCardError(f"{path}: cannot read: {exc}") from None
    try:
        rates = parse_csv(text, account.currency)
    except RateCardError as exc:
        raise RateCardError(f"{path}: {exc}") from None
    store_rates(db, tenant, account, rates, replace=replace)
    return account, len(rates)


def list_rates(db: Database, tenant: str, account: acc.Account) -> list[Rate]:
    rows = db.rows(
        "SELECT prefix, rate_per_min, connect_fee, increment_initial, increment_next, "
        "min_duration, effective_from, effective_to, currency, rounding FROM rate_cards FINAL "
        "WHERE tenant_id = {t:String} AND kind = {k:String} AND account_id = {a:UInt32} "
        "AND NOT deleted ORDER BY prefix, effective_from",
        {"t": tenant, "k": account.kind, "a": account.account_id})
    out = []
    for p, rate, fee, ini, nxt, mind, frm, to, cur, rnd in rows:
        out.append(Rate(p, Decimal(rate), Decimal(fee), int(ini), int(nxt), int(mind),
                        _utc(frm), _utc(to) if to else None, cur, int(rnd)))
    return out


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def _fmt_time(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    if value.hour == value.minute == value.second == 0 and value.microsecond == 0:
        return value.strftime("%Y-%m-%d")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(d: Decimal) -> str:
    text = format(d.normalize(), "f")
    return text if text != "-0" else "0"


def export_csv(rates: Iterable[Rate]) -> str:
    """The rates as CSV in the import format (an export re-imports to the same card)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(HEADER)
    for r in rates:
        w.writerow([r.prefix, _plain(r.rate_per_min), _plain(r.connect_fee), r.increment,
                    r.min_duration, _fmt_time(r.effective_from), _fmt_time(r.effective_to),
                    r.currency, r.rounding])
    return out.getvalue()


def accounts_with_cards(db: Database, tenant: str, kind: str) -> list[int]:
    """Ids of the tenant's accounts of `kind` that have at least one live rate."""
    return [int(a) for (a,) in db.rows(
        "SELECT DISTINCT account_id FROM rate_cards FINAL WHERE tenant_id = {t:String} "
        "AND kind = {k:String} AND NOT deleted ORDER BY account_id", {"t": tenant, "k": kind})]


def unrated(db: Database, tenant: str, first: dt.date, last: dt.date,
            limit: int = 50) -> list[tuple[str, str, int, str, int]]:
    """Calls of a UTC day range that could not be priced, grouped by why.

    Rows: (reason, account code, account id, destination prefix tried — the first
    four digits of the number —, calls), most calls first. `reason` is the
    call's rating_status part: customer:no_rate, carrier:no_card, …
    """
    codes = {(a.kind, a.account_id): a.code for a in acc.list_accounts(db, tenant)}
    rows = db.rows(
        "SELECT reason, if(startsWith(reason, 'customer'), customer_id, carrier_id) AS account, "
        "substring(dst_number, 1, 4) AS dst, count() AS calls FROM ("
        "  SELECT arrayJoin(splitByChar(';', rating_status)) AS reason, customer_id, carrier_id, "
        "         dst_number FROM cdr_records FINAL WHERE tenant_id = {t:String} "
        "  AND start_time >= {lo:DateTime64(3, 'UTC')} AND start_time < {hi:DateTime64(3, 'UTC')} "
        "  AND rating_status != '') "
        f"GROUP BY reason, account, dst ORDER BY calls DESC, reason, account, dst LIMIT {int(limit)}",
        {"t": tenant, "lo": dt.datetime.combine(first, dt.time(), dt.timezone.utc),
         "hi": dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.timezone.utc)})
    return [(reason, codes.get((reason.split(":")[0], int(a)), ""), int(a), dst, int(n))
            for reason, a, dst, n in rows]

