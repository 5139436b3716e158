"""Schema that cannot drift: what is written twice must stay the same (issue 13, item 6).

- `recalc_rows` holds a copy of every `cdr_records` column (plus job and side);
  `recalc.ALL_COLUMNS` names them for the copy statements.
- The daily aggregate exists as the materialized view (schema, for new calls)
  and as the rebuild query in engine/summary.py (for rewritten days).

Each pair is compared on a migrated store (so a later migration that changes
one side is caught too): a change to one side alone fails here.
"""

from __future__ import annotations

import sqlglot
from sqlglot import expressions as exp

from cdrhouse.engine import recalc, summary
from cdrhouse.engine.db import Database


def columns(db: Database, table: str) -> list[tuple[str, str]]:
    return db.rows("SELECT name, type FROM system.columns WHERE database = currentDatabase() "
                   "AND table = {t:String} ORDER BY position", {"t": table})


def test_recalc_rows_holds_every_cdr_records_column(store: Database) -> None:
    cdr = columns(store, "cdr_records")
    assert columns(store, "recalc_rows") == [
        ("job_id", "String"), ("side", "Enum8('old' = 1, 'new' = 2)"), *cdr]
    # (copied by name, so the order is free; each exactly once)
    assert sorted(recalc.ALL_COLUMNS) == sorted(name for name, _ in cdr)


def _shape(sql: str) -> tuple:
    """The parts of an aggregate query that decide its result, normalised.

    Parentheses ClickHouse adds when it stores a view are dropped; the WHERE
    clauses and the FROM target differ on purpose (the view reads each insert,
    the rebuild reads one tenant's days FINAL) and are not compared.
    """
    tree = sqlglot.parse_one(sql, read="clickhouse")
    tree = tree.transform(lambda n: n.this if isinstance(n, exp.Paren) else n)
    inner = tree.find(exp.Subquery).this
    return ([e.sql("clickhouse") for e in tree.expressions],
            [g.sql("clickhouse") for g in tree.args["group"].expressions],
            [e.sql("clickhouse") for e in inner.expressions],
            inner.find(exp.Table).name)


def test_the_rebuild_aggregates_exactly_as_the_materialized_view(store: Database) -> None:
    view = store.scalar("SELECT as_select FROM system.tables WHERE database = currentDatabase() "
                        "AND name = 'cdr_daily_summary_mv'")
    assert _shape(view) == _shape(summary._FROM_CDRS)
    # (the comparison sees a one-character change: it is not vacuous)
    changed = summary._FROM_CDRS.replace("countIf(bill_s > 0)", "countIf(bill_s >= 0)")
    assert _shape(view) != _shape(changed)


def test_summary_keys_and_sums_are_the_summary_table(store: Database) -> None:
    names = [n for n, t in columns(store, "cdr_daily_summary")]
    stored = store.rows("SELECT name FROM system.columns WHERE database = currentDatabase() "
                        "AND table = 'cdr_daily_summary' AND default_kind != 'ALIAS' "
                        "ORDER BY position")
    assert [n for (n,) in stored] == [*summary.KEYS, *summary.SUMS]
    assert {"asr", "acd", "margin"} <= set(names)
