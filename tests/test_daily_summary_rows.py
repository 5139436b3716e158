"""daily_summary keeps every day and account that had calls, whatever columns a query reads.

ClickHouse's FINAL on a SummingMergeTree drops a row whose summed columns, among
those the query reads, are all zero: a customer whose calls on a day were all
unanswered (billsec 0, no charge) would vanish from `SELECT day, customer_id,
sum(billsec) …`. The logical table always reads `calls` to prevent that.
"""

from __future__ import annotations

import pytest

from cdrhouse.engine.db import Database
from cdrhouse.engine.query import run_sql
from cdrhouse.sql.principal import Principal


def _call(db: Database, call_id: str, customer: int, billsec: int, charge: str | None) -> None:
    db.command(
        "INSERT INTO cdr_records (tenant_id, call_id, start_time, end_time, duration, billsec, "
        "customer_id, carrier_id, disposition, customer_charge, version) VALUES ('acme', "
        "{c:String}, '2026-03-01 10:00:00', '2026-03-01 10:01:00', 60, {b:UInt32}, {cu:UInt32}, "
        "7, if({b:UInt32} > 0, 'ANSWERED', 'NO ANSWER'), {ch:Nullable(Decimal(18, 6))}, 1)",
        {"c": call_id, "b": billsec, "cu": customer, "ch": charge})


@pytest.mark.parametrize("sql, expected", [
    ("SELECT customer_id, sum(billsec) FROM daily_summary GROUP BY customer_id "
     "ORDER BY customer_id", [(1, 60), (2, 0)]),
    ("SELECT customer_id, sum(customer_charge) FROM daily_summary GROUP BY customer_id "
     "ORDER BY customer_id", [(1, "0.1"), (2, "0")]),
    ("SELECT count() FROM daily_summary", [(2,)]),
    ("SELECT customer_id, sum(calls), sum(connected) FROM daily_summary GROUP BY customer_id "
     "ORDER BY customer_id", [(1, 1, 1), (2, 2, 0)]),
])
def test_accounts_with_only_unanswered_calls_are_not_dropped(store: Database, sql: str,
                                                              expected: list) -> None:
    _call(store, "answered", 1, 60, "0.1")
    _call(store, "unanswered-1", 2, 0, None)  # two inserts, two parts: FINAL has rows
    _call(store, "unanswered-2", 2, 0, None)  # of the same key to sum
    rows = run_sql(store, Principal.operator("acme"), sql).rows
    assert [tuple(str(v.normalize()) if hasattr(v, "normalize") else v for v in r)
            for r in rows] == [tuple(str(v) if isinstance(v, str) else v for v in e)
                               for e in expected]
