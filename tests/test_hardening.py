"""Regression tests for the hostile review (issue 12): the archive splice, what engine
errors may say, result size limits — on both engine interfaces (`store`)."""

from __future__ import annotations

import pytest

from cdrhouse.engine.db import Database
from cdrhouse.engine.query import run_sql
from cdrhouse.sql import catalogue
from cdrhouse.sql.archive import with_archive
from cdrhouse.sql.guard import compile_user_sql
from cdrhouse.sql.principal import Principal

CUSTOMER = Principal.customer("acme", 1)
HOT_WORDS = "FROM cdr_records FINAL"


def _load(db: Database) -> None:
    """acme customer 1: 3 hot calls; customer 2: 2; globex: 4. A `warm_rows` table
    stands in for an archived month (any SELECT of the catalogue fields will do)."""
    insert = ("INSERT INTO {table} (tenant_id, call_id, start_time, end_time, duration, "
              "billsec, customer_id, disposition, version) SELECT {tenant}, "
              "concat({prefix}, toString(number)), toDateTime64('2026-03-01', 3, 'UTC') + number, "
              "toDateTime64('2026-03-01', 3, 'UTC') + number + 10, 10, 5, {customer}, "
              "'ANSWERED', 1 FROM numbers({n})")
    for tenant, customer, n in (("'acme'", "1", 3), ("'acme'", "2", 2), ("'globex'", "1", 4)):
        db.command(insert.format(table="cdr_records", tenant=tenant, prefix=f"'h{customer}-'",
                                 customer=customer, n=n))
    db.command("CREATE TABLE warm_rows AS cdr_records ENGINE = MergeTree ORDER BY call_id")
    for tenant, customer, n in (("'acme'", "1", 5), ("'globex'", "1", 7)):
        db.command(insert.format(table="warm_rows", tenant=tenant, prefix=f"'w{customer}-'",
                                 customer=customer, n=n))


WARM = (f"SELECT {', '.join(catalogue.NAMES)} FROM warm_rows",)

#: user SQL that names the hot read's words where a text splice would rewrite them
ADVERSARIAL = [
    # a quoted alias: the column must keep its name, not become internal SQL
    (f'SELECT count() AS "{HOT_WORDS}" FROM cdrs', [HOT_WORDS], [(8,)]),
    # a string literal: its value must come back as written
    (f"SELECT '{HOT_WORDS}' AS lit, count() AS n FROM cdrs", ["lit", "n"], [(HOT_WORDS, 8)]),
    # a comment (the guard drops comments; the count still includes the archive)
    (f"SELECT count() AS n /* {HOT_WORDS} */ FROM cdrs -- {HOT_WORDS}", ["n"], [(8,)]),
    # backquoted alias, nested subquery and a join of two reads
    (f"SELECT count() AS `{HOT_WORDS} x` FROM (SELECT call_id FROM cdrs) AS s "
     f"JOIN cdrs AS t USING (call_id) WHERE '{HOT_WORDS}' != ''", [f"{HOT_WORDS} x"], [(8,)]),
    # the words in a LIKE pattern and a parameter-free IN list
    (f"SELECT countIf(call_id LIKE '%{HOT_WORDS}%') AS c, count() AS n FROM cdrs "
     f"WHERE call_id NOT IN ('{HOT_WORDS}')", ["c", "n"], [(0, 8)]),
]


@pytest.mark.parametrize("sql, columns, rows", ADVERSARIAL)
def test_archive_splice_leaves_user_text_alone(store: Database, sql: str, columns: list,
                                               rows: list) -> None:
    _load(store)
    res = run_sql(store, CUSTOMER, sql, archive=WARM)
    assert res.columns == columns
    assert res.rows == rows


@pytest.mark.parametrize("sql, columns, rows", ADVERSARIAL)
def test_archive_splice_is_an_ast_substitution(sql: str, columns: list, rows: list) -> None:
    """Pure: every guard read gets the union, the user's words stay as compiled."""
    compiled = compile_user_sql(sql, CUSTOMER).sql
    out = with_archive(compiled, WARM)
    reads = compiled.count("(SELECT call_id, start_time")  # one per guarded cdrs read
    assert out.count("FROM warm_rows") == reads >= 1
    # the user's own text (outside the guard subqueries) is unchanged
    for word in (f"'{HOT_WORDS}'", f'"{HOT_WORDS}"', f"`{HOT_WORDS} x`", f"'%{HOT_WORDS}%'"):
        assert out.count(word) == compiled.count(word)
    # nothing of the archive's branch leaks into names or literals
    assert HOT_WORDS + " UNION" not in out.split("FROM (SELECT")[0]
