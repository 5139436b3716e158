"""Today's sort key against a time-leading one, for operators' pages and for customers'
pages, including a small customer of a large tenant.

    python -m benchmarks.sort_key --data-dir STORE [--rounds 15]

STORE is a store built by `benchmarks.load_test` (5M CDRs: tenant acme, 2.86M calls over
12 customers of 4-32 % each). The script copies `cdr_records` twice into a scratch
database of the same engine — sorted as today, (tenant, customer, start_time, call_id),
and by (tenant, start_time, call_id) — adds to both copies a small customer (account 999:
every 1000th call of acme again under its own id, ~0.1 % of the tenant), merges both
(one part per month, as schema 015 leaves a store), and times viewer pages compiled by
`sql.viewer.compile_view` against each copy: the same SQL with the table name replaced,
the pages compared row by row every round. The store's own tables are only read; the
scratch database is dropped at the end. Single client, the embedded engine, the two
copies in a shuffled order each round. Prints median and minimum milliseconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import time
from pathlib import Path

from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.sql.limits import limits_for
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import ViewRequest, compile_view, time_slices

END = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)   # benchmarks.load_test's data end
NOW = dt.datetime(2026, 11, 29, tzinfo=dt.timezone.utc)
SCRATCH = "cdrhouse_sort_key_bench"
KEYS = {"by_customer": "(tenant_id, customer_id, start_time, call_id)",
        "by_time": "(tenant_id, start_time, call_id)"}
SMALL = 999


def build(db: Database) -> None:
    """The two sorted copies, the small customer in both, each month one merged part."""
    src = f"`{db.name}`.cdr_records"
    db.command(f"DROP DATABASE IF EXISTS {SCRATCH}")
    db.command(f"CREATE DATABASE {SCRATCH}")
    for name, key in KEYS.items():
        # the store's columns, indexes and storage settings (schema 014); only the key differs
        db.command(f"CREATE TABLE {SCRATCH}.{name} AS {src} ENGINE = ReplacingMergeTree(version) "
                   f"PARTITION BY toYYYYMM(start_time) ORDER BY {key} SETTINGS "
                   "index_granularity = 1024, min_compress_block_size = 8192, "
                   "max_compress_block_size = 65536")
        db.command(f"INSERT INTO {SCRATCH}.{name} SELECT * FROM {src}",
                   settings={"optimize_on_insert": 0})
        db.command(f"INSERT INTO {SCRATCH}.{name} SELECT * REPLACE ({SMALL} AS customer_id, "
                   f"concat(call_id, '-small') AS call_id) FROM (SELECT * FROM {src} FINAL "
                   "WHERE tenant_id = 'acme' AND cityHash64(call_id) % 1000 = 0)",
                   settings={"optimize_on_insert": 0})
        db.command(f"OPTIMIZE TABLE {SCRATCH}.{name} FINAL")


def request(i: int, days: int) -> ViewRequest:
    rng = random.Random(i)
    day = END - dt.timedelta(days=rng.randint(days + 1, 150))
    return ViewRequest(range="custom", date_from=day.strftime("%Y-%m-%d"),
                       date_to=(day + dt.timedelta(days=days)).strftime("%Y-%m-%d"), limit=100)


def page_sql(principal: Principal, req: ViewRequest, table: str):
    """The page as served on `table`: a tenant's page on today's key reads its recent
    slice (the slice fills on this data), on the time key the whole range in order."""
    if table == "by_customer":
        slices = time_slices(req, principal, NOW)
        compiled = compile_view(req, principal, NOW, newer_than=slices[0] if slices else None)
        settings = dict(compiled.settings)
    else:
        compiled = compile_view(req, principal, NOW)
        # read in key order, as a customer's page is today (sql.viewer.IN_ORDER)
        settings = {**compiled.settings, "max_threads": 1, "max_block_size": 1024,
                    "local_filesystem_read_method": "pread"}
    sql = compiled.sql.replace("FROM cdr_records", f"FROM {SCRATCH}.{table}")
    return sql, compiled.parameters, {**limits_for(principal.role), **settings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sort_key.json"))
    args = ap.parse_args()
    db = Database(StoreConfig(data_dir=args.data_dir))
    t0 = time.perf_counter()
    build(db)
    print(f"built both copies in {time.perf_counter() - t0:.1f} s")
    cases = {"tenant acme, 7 days": (Principal.operator("acme"), 7)}
    for account, share in ((1, "32 %"), (12, "4 %"), (SMALL, "0.1 %")):
        for days in (7, 30):
            cases[f"customer {account} ({share}), {days} days"] = (
                Principal.customer("acme", account), days)
    results: dict[str, dict[str, float]] = {}
    try:
        for name, (principal, days) in cases.items():
            times: dict[str, list[float]] = {t: [] for t in KEYS}
            for i in range(args.rounds):
                req = request(i, days)
                rows = {}
                for table in random.Random(i).sample(list(KEYS), len(KEYS)):
                    sql, params, settings = page_sql(principal, req, table)
                    t1 = time.perf_counter()
                    rows[table] = db.rows(sql, params, settings)
                    times[table].append((time.perf_counter() - t1) * 1000)
                if rows["by_customer"] != rows["by_time"]:
                    raise SystemExit(f"{name}, round {i}: the two copies gave different pages")
            line = []
            for table, ts in times.items():
                results[f"{name}: {table}"] = {"median_ms": round(statistics.median(ts), 2),
                                               "min_ms": round(min(ts), 2)}
                line.append(f"{table} {statistics.median(ts):6.1f} ({min(ts):5.1f})")
            print(f"{name:34s} " + "   ".join(line))
    finally:
        db.command(f"DROP DATABASE IF EXISTS {SCRATCH}")
        db.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
