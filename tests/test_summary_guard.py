"""The guarded logical table `daily_summary`: each principal sees only its own rows and fields.

Rows are written straight into the physical summary for two tenants with the
same account ids; every query that runs must return exactly the principal's
rows (computed here from ROWS, not by the guard), and hostile SQL is refused.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from cdrhouse.engine.db import Database
from cdrhouse.engine.query import run_sql
from cdrhouse.sql.guard import GuardError, compile_user_sql
from cdrhouse.sql.principal import Principal

# tenant, day, customer, carrier, calls, charge, cost
ROWS = [
    ("acme", "2026-03-01", 1, 3, 10, "1.5", "1.0"),
    ("acme", "2026-03-01", 2, 3, 20, "2.5", "2.0"),
    ("acme", "2026-03-02", 1, 4, 30, "3.5", "3.0"),
    ("globex", "2026-03-01", 1, 3, 40, "4.5", "4.0"),
]
WHO = {
    "admin": Principal.admin(),
    "acme": Principal.operator("acme"),
    "acme/c1": Principal.customer("acme", 1),
    "acme/k3": Principal.carrier("acme", 3),
    "globex/c1": Principal.customer("globex", 1),
}


def own(who: str) -> int:
    p = WHO[who]
    return sum(r[4] for r in ROWS if p.role == "admin" or (r[0] == p.tenant and (
        p.role == "tenant" or (p.role == "customer" and r[2] == p.account_id)
        or (p.role == "carrier" and r[3] == p.account_id))))


@pytest.fixture
def loaded(store: Database) -> Database:
    for t, day, cu, ca, calls, charge, cost in ROWS:
        # two delta rows per key: FINAL must sum them
        for part in (1, 2):
            store.command(
                "INSERT INTO cdr_daily_summary (tenant_id, day, customer_id, carrier_id, calls, "
                "connected, customer_charge, carrier_cost) VALUES ({t:String}, {d:Date}, "
                "{cu:UInt32}, {ca:UInt32}, {n:Int64}, {n:Int64}, {ch:Decimal(38, 6)}, "
                "{co:Decimal(38, 6)})",
                {"t": t, "d": day, "cu": cu, "ca": ca, "n": calls // 2,
                 "ch": Decimal(charge) / 2, "co": Decimal(cost) / 2})
    return store


QUERIES = [
    "SELECT sum(calls) FROM daily_summary",
    "SELECT sum(calls) FROM (SELECT * FROM daily_summary)",
    "SELECT sum(calls) FROM daily_summary WHERE 1 OR tenant_id != ''",
    "WITH x AS (SELECT calls FROM daily_summary) SELECT sum(calls) FROM x",
    "SELECT sum(calls) FROM daily_summary AS s WHERE s.day IN (SELECT day FROM daily_summary)",
    "SELECT sum(calls) FROM daily_summary FINAL",
]


@pytest.mark.parametrize("who", list(WHO))
@pytest.mark.parametrize("sql", QUERIES)
def test_each_principal_sums_only_its_own_rows(loaded: Database, who: str, sql: str) -> None:
    if "tenant_id" in sql and WHO[who].role != "admin":
        with pytest.raises(GuardError, match="tenant_id"):
            compile_user_sql(sql, WHO[who])
        return
    result = run_sql(loaded, WHO[who], sql)
    assert result.rows == [(own(who),)]


@pytest.mark.parametrize("who, field", [
    ("acme/c1", "carrier_cost"), ("acme/c1", "margin"), ("acme/c1", "carrier_id"),
    ("acme/c1", "unrated"), ("acme/k3", "customer_charge"), ("acme/k3", "customer_id"),
    ("acme/k3", "margin"), ("acme", "tenant_id"),
])
def test_hidden_fields_are_refused_by_name(who: str, field: str) -> None:
    with pytest.raises(GuardError, match=f"field {field} is not visible"):
        compile_user_sql(f"SELECT {field} FROM daily_summary", WHO[who])


@pytest.mark.parametrize("sql, message", [
    ("SELECT * FROM cdr_daily_summary", "cdr_daily_summary"),
    ("SELECT * FROM cdr_daily_summary_mv", "cdr_daily_summary_mv"),
    ("SELECT * FROM balances", "balances"),
    ("SELECT * FROM rate_cards", "rate_cards"),
    ("SELECT * FROM recalc_rows", "recalc_rows"),
    ("SELECT * FROM daily_summary SETTINGS final = 0", "SETTINGS"),
])
def test_physical_tables_are_refused(sql: str, message: str) -> None:
    with pytest.raises(GuardError, match=message):
        compile_user_sql(sql, WHO["acme/c1"])


def test_select_star_shows_the_role_columns(loaded: Database) -> None:
    result = run_sql(loaded, WHO["acme/c1"], "SELECT * FROM daily_summary ORDER BY day")
    assert result.columns == ["day", "customer_id", "country", "dst_prefix", "currency", "calls",
                              "connected", "asr", "acd", "duration", "billsec", "billed_sec",
                              "customer_charge"]
    assert [(r[0].isoformat(), r[5], r[12]) for r in result.rows] == [
        ("2026-03-01", 10, Decimal("1.5")), ("2026-03-02", 30, Decimal("3.5"))]


def test_operators_see_margin_and_asr(loaded: Database) -> None:
    result = run_sql(loaded, WHO["acme"], "SELECT day, customer_id, margin, asr FROM "
                                          "daily_summary ORDER BY day, customer_id")
    assert [(r[0].isoformat(), r[1], r[2], r[3]) for r in result.rows] == [
        ("2026-03-01", 1, Decimal("0.5"), 1.0), ("2026-03-01", 2, Decimal("0.5"), 1.0),
        ("2026-03-02", 1, Decimal("0.5"), 1.0)]


@pytest.mark.parametrize("sharded, expected", [
    (False, "SELECT day, calls, if(calls = 0, 0, connected / calls) AS asr FROM "
            "cdr_daily_summary FINAL WHERE (calls != 0) AND (tenant_id = {t:String})"),
    (True, "SELECT day, calls, asr FROM (SELECT tenant_id, day, customer_id, carrier_id, "
           "country, dst_prefix, currency, calls, connected, duration, billsec, billed_sec, "
           "customer_charge, carrier_cost, unrated, if(calls = 0, 0, connected / calls) AS asr, "
           "if(connected = 0, 0, billsec / connected) AS acd, customer_charge - carrier_cost AS "
           "margin FROM (SELECT tenant_id, day, customer_id, carrier_id, country, dst_prefix, "
           "currency, sum(calls) AS calls, sum(connected) AS connected, sum(duration) AS "
           "duration, sum(billsec) AS billsec, sum(billed_sec) AS billed_sec, "
           "sum(customer_charge) AS customer_charge, sum(carrier_cost) AS carrier_cost, "
           "sum(unrated) AS unrated FROM cdr_daily_summary WHERE tenant_id = {t:String} "
           "GROUP BY tenant_id, day, customer_id, carrier_id, country, dst_prefix, currency)) "
           "AS cdr_daily_summary WHERE (calls != 0) AND (tenant_id = {t:String})"),
])
def test_the_summary_is_read_with_final_on_one_node_and_grouped_on_a_cluster(
        sharded: bool, expected: str) -> None:
    """FINAL merges a key's deltas on one node (and costs nothing on a merged month);
    on a cluster it would merge them per shard only, so the rows are grouped instead."""
    from cdrhouse.sql.logical import DAILY_SUMMARY
    assert DAILY_SUMMARY.select(("day", "calls", "asr"), "tenant_id = {t:String}",
                                sharded=sharded) == expected
    compiled = compile_user_sql("SELECT day FROM daily_summary", WHO["acme"], sharded=sharded)
    assert ("GROUP BY" in compiled.sql) is sharded and ("FINAL" in compiled.sql) is not sharded


def test_each_key_is_one_summed_row(loaded: Database) -> None:
    """Two delta rows were written per key: every topology shows each key once, summed
    (FINAL on one node, the grouping on the cluster, whose shards each hold deltas)."""
    import datetime as dt
    result = run_sql(loaded, WHO["admin"], "SELECT tenant_id, day, customer_id, carrier_id, "
                     "calls, customer_charge FROM daily_summary ORDER BY ALL")
    assert result.rows == sorted((t, dt.date.fromisoformat(d), cu, ca, calls, Decimal(charge))
                                 for t, d, cu, ca, calls, charge, _ in ROWS)
