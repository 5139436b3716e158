"""SQL-layer benchmark: compile time, and the guard's overhead against hand-written SQL.

    python -m benchmarks.sql_bench [--rows 5000000] [--rounds 15]

1. Compile time (pure Python, no database): a typical query-builder tree
   (6 rules in 2 groups), a typical user SQL query, a viewer page.
2. Guard overhead: the same questions asked through cdrhouse's guarded path
   (compile + the guarded query) and written by hand against the physical
   table with the same predicate, on a generated dataset. Rounds interleave
   the two, parameters vary per round, the query condition cache is off;
   medians are reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import dataset
from cdrhouse.engine import generate
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql.builder import compile_rules
from cdrhouse.sql.guard import _compile_text, compile_user_sql
from cdrhouse.sql.limits import limits_for
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import ViewRequest, compile_view

END = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)

BUILDER_TREE = {
    "condition": "AND",
    "rules": [
        {"field": "disposition", "operator": "equal", "value": "ANSWERED"},
        {"field": "billsec", "operator": "greater", "value": 30},
        {"field": "country", "operator": "in", "value": ["GB", "DE", "FR"]},
        {"condition": "OR", "rules": [
            {"field": "dst_number", "operator": "begins_with", "value": "4420"},
            {"field": "codec", "operator": "equal", "value": "G729"},
            {"field": "customer_charge", "operator": "greater_or_equal", "value": "0.01"},
        ]},
    ],
}

USER_SQL = ("SELECT country, count() AS calls, sum(billsec) / 60 AS minutes, "
            "sum(customer_charge) AS charge FROM cdrs "
            "WHERE start_time >= {since:DateTime64(3, 'UTC')} "
            "GROUP BY country ORDER BY minutes DESC LIMIT 10")

HAND_SQL = ("SELECT country, count() AS calls, sum(billsec) / 60 AS minutes, "
            "sum(customer_charge) AS charge FROM cdr_records FINAL "
            "WHERE tenant_id = {t:String} AND customer_id = {c:UInt32} "
            "AND start_time >= {since:DateTime64(3, 'UTC')} "
            "GROUP BY country ORDER BY minutes DESC LIMIT 10")

HAND_PAGE = ("SELECT start_time, src_number, dst_number, country, duration, billsec, "
             "disposition, customer_rate, customer_charge, call_id FROM cdr_records FINAL "
             "WHERE tenant_id = {t:String} AND customer_id = {c:UInt32} "
             "AND start_time >= {lo:DateTime64(3, 'UTC')} AND start_time < {hi:DateTime64(3, 'UTC')} "
             "ORDER BY start_time DESC, call_id DESC LIMIT 101")


def _time(fn, n: int) -> float:
    """Median seconds of n calls."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def compile_times() -> dict:
    customer = Principal.customer("acme", 1)
    req = ViewRequest(range="last_7_days", number="4420*", rules=BUILDER_TREE)
    now = END
    for fn in (lambda: compile_rules(BUILDER_TREE, customer),):
        fn()  # warm imports
    return {
        "builder_tree_ms": round(_time(lambda: compile_rules(BUILDER_TREE, customer), 300) * 1e3, 3),
        "user_sql_cold_ms": round(_time(lambda: (_compile_text.cache_clear(), compile_user_sql(
            USER_SQL, customer, {"since": "2026-10-01 00:00:00"})), 300) * 1e3, 3),
        "user_sql_cached_ms": round(_time(lambda: compile_user_sql(
            USER_SQL, customer, {"since": "2026-10-01 00:00:00"}), 300) * 1e3, 3),
        "viewer_page_with_builder_ms": round(_time(lambda: compile_view(req, customer, now), 300) * 1e3, 3),
    }


def load(db: Database, rows: int) -> None:
    dataset.load(db, generate.GenSpec(rows=rows, months=6, seed=5,
                                      tenants=("acme", "globex", "initech"), end=END))


def overhead(db: Database, rounds: int) -> dict:
    customer = Principal.customer("acme", 1)
    settings = limits_for("customer")
    out = {}
    cases = {
        "user_sql_aggregate": (
            lambda i: (compile_user_sql(USER_SQL, customer, {"since": _since(i)}),),
            lambda c: db.rows(c[0].sql, c[0].parameters, settings),
            lambda i: db.rows(HAND_SQL, {"t": "acme", "c": 1, "since": _since(i)}, settings)),
        "viewer_page": (
            lambda i: (compile_view(ViewRequest(range="custom", date_from=_since(i),
                                                date_to=_until(i)), customer, END),),
            lambda c: db.rows(c[0].sql, c[0].parameters, settings),
            lambda i: db.rows(HAND_PAGE, {"t": "acme", "c": 1, "lo": _since(i), "hi": _until(i)},
                              settings)),
    }
    for name, (compile_fn, run_guarded, run_hand) in cases.items():
        guarded, hand = [], []
        run_guarded(compile_fn(0))
        run_hand(0)
        for i in range(rounds):
            pair = [("g", lambda: run_guarded(compile_fn(i))), ("h", lambda: run_hand(i))]
            if i % 2:
                pair.reverse()
            for kind, fn in pair:
                t0 = time.perf_counter()
                fn()
                (guarded if kind == "g" else hand).append(time.perf_counter() - t0)
        g, h = statistics.median(guarded), statistics.median(hand)
        out[name] = {"guarded_ms": round(g * 1e3, 2), "hand_ms": round(h * 1e3, 2),
                     "overhead_pct": round((g / h - 1) * 100, 1)}
    return out


def _since(i: int) -> str:
    return (END - dt.timedelta(days=30 + i)).strftime("%Y-%m-%d %H:%M:%S")


def _until(i: int) -> str:
    return (END - dt.timedelta(days=23 + i)).strftime("%Y-%m-%d %H:%M:%S")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sql.json"))
    args = ap.parse_args()
    result = {"date": dt.date.today().isoformat(), "rows": args.rows,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "compile": compile_times()}
    print(json.dumps(result["compile"]), flush=True)
    with tempfile.TemporaryDirectory(prefix="cdrhouse-sql-bench-") as tmp:
        db = Database(StoreConfig(data_dir=Path(tmp)))
        migrate(db)
        t0 = time.perf_counter()
        load(db, args.rows)
        result["load_s"] = round(time.perf_counter() - t0, 1)
        result["overhead"] = overhead(db, args.rounds)
        db.close()
    print(json.dumps(result["overhead"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
