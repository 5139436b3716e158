"""Running guarded queries: limits explained, cancellation by principal, recovery after errors."""

from __future__ import annotations

import threading
import time

import pytest

from cdrhouse.engine.db import Database
from cdrhouse.engine.query import QueryFailed, cancel, run_sql
from cdrhouse.sql.principal import Principal


def _load(db: Database) -> None:
    db.command("INSERT INTO cdr_records (tenant_id, call_id, start_time, end_time, duration, "
               "billsec, customer_id, disposition, version) SELECT if(number % 2, 'acme', 'globex'), "
               "toString(number), toDateTime64('2026-03-01', 3, 'UTC') + number, "
               "toDateTime64('2026-03-01', 3, 'UTC') + number + 10, 10, 5, 1 + number % 3, "
               "'ANSWERED', 1 FROM numbers(1000)")


def test_limit_errors_say_which_limit(store: Database) -> None:
    _load(store)
    with pytest.raises(QueryFailed, match="more rows than allowed \\(at most 10 rows read") as info:
        run_sql(store, Principal.operator("acme"), "SELECT count() FROM cdrs",
                limit_overrides={"max_rows_to_read": 10})
    assert info.value.kind == "limit"
    # the client is usable again right after the failure
    res = run_sql(store, Principal.operator("acme"), "SELECT count() FROM cdrs")
    assert res.rows == [(500,)]


def test_failed_result_stream_does_not_poison_the_next_query(store: Database) -> None:
    _load(store)
    with pytest.raises(QueryFailed, match="more rows than allowed \\(at most 10 rows;"):
        run_sql(store, Principal.admin(), "SELECT call_id FROM cdrs",
                limit_overrides={"max_result_rows": 10})
    assert run_sql(store, Principal.admin(), "SELECT count() FROM cdrs").rows == [(1000,)]


def test_a_running_query_is_cancelled_by_its_principal_only(store: Database) -> None:
    _load(store)
    me = Principal.operator("acme")
    other = Principal.operator("globex")
    slow = ("SELECT count() FROM cdrs AS a, (SELECT 1 FROM cdrs) AS b, (SELECT 1 FROM cdrs) AS c "
            "WHERE sipHash64(a.call_id, b.`1`, c.`1`) % 7 = 3")
    outcome: dict = {}
    runner = Database(store.config, create=False)

    def go() -> None:
        try:
            run_sql(runner, me, slow, query_id="q-slow-1")
            outcome["r"] = "finished"
        except QueryFailed as exc:
            outcome["r"] = exc.kind

    t = threading.Thread(target=go)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not store.scalar(
                "SELECT count() FROM system.processes WHERE Settings['log_comment'] LIKE '%q-slow-1'"):
            time.sleep(0.05)
        assert cancel(store, other, "q-slow-1") is False        # not theirs to cancel
        assert cancel(store, me, "q-slow-1") is True
        t.join(timeout=60)
        assert outcome["r"] == "cancelled"
    finally:
        t.join(timeout=60)
        runner.close()
