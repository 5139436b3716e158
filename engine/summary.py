"""The daily summary: per UTC day, tenant, customer, carrier, destination and currency.

Why it stays exact (the pitfall: a materialized view counts every inserted
row, and a re-rated call is inserted again as a new version):

- `cdr_daily_summary` is a SummingMergeTree whose rows are *deltas*; its value
  for a key is the sum of its rows (read with FINAL or sum()).
- New calls reach it through the materialized view `cdr_daily_summary_mv`,
  which counts an inserted row only if its `source` does not start with
  'maint:'. Ingest inserts each call once (it skips stored calls), so that
  count is exact and costs nothing extra at query time.
- Everything that rewrites stored calls (recalc, undo) writes them with
  source 'maint:…', so the view ignores them, and then calls `rebuild` for the
  days it touched. `rebuild` inserts, per key, (aggregate of cdr_records FINAL)
  minus (current summary): after it, the summary equals the truth for those
  days, whatever it held before — double counts, a crash halfway through a
  previous rebuild, or a row version written but not yet summarised.
  Running it again inserts nothing. That makes every recalc step after the
  write idempotent, which is what crash safety needs.

Measured alternatives: rebuilding by deleting the slice and re-inserting is
not atomic in ClickHouse (a reader between the two sees a hole) and
lightweight deletes on the summary are mutations; sign/cancel rows written
with each new version are exact only if the cancel and the new version land
together, which an INSERT cannot promise. The delta rebuild needs neither.

Known limit: a rebuild racing an ingest of calls for the same days can
count a call twice or miss it (the two reads are not one snapshot); a later
rebuild of those days corrects it. Recalc jobs hold the tenant's lock, ingest
does not.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cdrhouse.engine.db import Database

KEYS = ("tenant_id", "day", "customer_id", "carrier_id", "country", "dst_prefix", "currency")
SUMS = ("calls", "connected", "duration", "billsec", "billed_sec", "customer_charge",
        "carrier_cost", "unrated")

_FROM_CDRS = """
SELECT tenant_id, d AS day, customer_id, carrier_id, country, dst_prefix, currency,
       toInt64(count()) AS calls,
       toInt64(countIf(bill_s > 0)) AS connected,
       toInt64(sum(dur_s)) AS duration,
       toInt64(sum(bill_s)) AS billsec,
       toInt64(sum(ifNull(cbill_s, bill_s))) AS billed_sec,
       toDecimal128(sum(ifNull(charge, toDecimal64(0, 6))), 6) AS customer_charge,
       toDecimal128(sum(ifNull(cost, toDecimal64(0, 6))), 6) AS carrier_cost,
       toInt64(countIf(charge IS NULL OR cost IS NULL)) AS unrated
FROM (
    SELECT tenant_id, toDate(start_time) AS d, customer_id, carrier_id, country, dst_prefix,
           currency, duration AS dur_s, billsec AS bill_s, customer_billsec AS cbill_s,
           customer_charge AS charge, carrier_cost AS cost
    FROM cdr_records FINAL
    WHERE tenant_id = {tenant:String}
      AND start_time >= {lo:DateTime64(3, 'UTC')} AND start_time < {hi:DateTime64(3, 'UTC')}
      AND toDate(start_time) IN {days:Array(Date)}
)
GROUP BY tenant_id, day, customer_id, carrier_id, country, dst_prefix, currency"""

_FROM_SUMMARY = """
SELECT tenant_id, day, customer_id, carrier_id, country, dst_prefix, currency,
       -sum(calls), -sum(connected), -sum(duration), -sum(billsec), -sum(billed_sec),
       toDecimal128(-sum(customer_charge), 6), toDecimal128(-sum(carrier_cost), 6), -sum(unrated)
FROM cdr_daily_summary
WHERE tenant_id = {tenant:String} AND day IN {days:Array(Date)}
GROUP BY tenant_id, day, customer_id, carrier_id, country, dst_prefix, currency"""


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def rebuild(db: Database, tenant: str, days: Sequence[dt.date]) -> int:
    """Make the summary of `tenant` exact for `days` (UTC); returns how many delta rows it wrote.

    Idempotent and convergent (module docstring). Works a month at a time so a
    long range never holds more than one month's keys in memory.
    """
    by_month: dict[tuple[int, int], list[dt.date]] = {}
    for d in sorted(set(days)):
        by_month.setdefault((d.year, d.month), []).append(d)
    written = 0
    keys = ", ".join(KEYS)
    sums = ", ".join(f"sum({c}) AS {c}" for c in SUMS)
    nonzero = " OR ".join(f"{c} != 0" for c in SUMS)
    for month_days in by_month.values():
        lo = dt.datetime.combine(month_days[0], dt.time(), dt.timezone.utc)
        hi = dt.datetime.combine(month_days[-1] + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
        params = {"tenant": tenant, "days": month_days, "lo": lo, "hi": hi}
        delta = (f"SELECT {keys}, {sums} FROM ({_FROM_CDRS}\nUNION ALL{_FROM_SUMMARY}) "
                 f"GROUP BY {keys} HAVING {nonzero}")
        n = int(db.scalar(f"SELECT count() FROM ({delta})", params) or 0)
        if n:
            db.command(f"INSERT INTO cdr_daily_summary ({keys}, {', '.join(SUMS)}) {delta}",
                       params)
        written += n
    return written


def rebuild_range(db: Database, tenant: str, first: dt.date, last: dt.date) -> int:
    """`rebuild` for every day from `first` to `last`, inclusive."""
    return rebuild(db, tenant, _days(first, last))


def totals(db: Database, tenant: str, first: dt.date, last: dt.date) -> list[tuple]:
    """Summary rows (summed per key) of a tenant for a day range: for tests and reports.

    Grouped rather than read with FINAL: on a cluster a key's deltas sit on several
    shards and FINAL sums per shard only."""
    return db.rows(
        f"SELECT {', '.join(KEYS)}, {', '.join(f'sum({c}) AS {c}' for c in SUMS)} "
        "FROM cdr_daily_summary "
        "WHERE tenant_id = {t:String} AND day BETWEEN {a:Date} AND {b:Date} "
        f"GROUP BY {', '.join(KEYS)} "
        f"HAVING ({' OR '.join(f'{c} != 0' for c in SUMS)}) ORDER BY {', '.join(KEYS)}",
        {"t": tenant, "a": first, "b": last})


def truth(db: Database, tenant: str, first: dt.date, last: dt.date) -> list[tuple]:
    """What `totals` must equal: the same aggregate straight from cdr_records FINAL."""
    lo = dt.datetime.combine(first, dt.time(), dt.timezone.utc)
    hi = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
    return db.rows(f"SELECT * FROM ({_FROM_CDRS}) ORDER BY {', '.join(KEYS)}",
                   {"tenant": tenant, "days": _days(first, last), "lo": lo, "hi": hi})
