"""Adding a shard: how long `cdrhouse cluster rebalance` takes, and that it stays exact.

    python -m benchmarks.rebalance_bench                 # 1M CDRs, 6 months, 2 -> 3 shards
    python -m benchmarks.rebalance_bench --rows 200000

A 2-shard cluster of embedded ClickHouse 26.9 nodes on loopback (tests/chcluster.py)
gets generated CDRs through the real ingest path, merged; then a third shard joins (the
nodes restart with it in `remote_servers`), `cdrhouse init` creates its tables, and
`engine.rebalance` moves every row its key now sends elsewhere. Timed: the placement
report, and the rebalance by step (from its progress calls). Checked before and after:
the calls (count and checksum of `cdr_records FINAL`), the daily summary against the
calls, the time-ordered copy against the hot table, no call on two shards. All three
nodes share this machine's cores. Results go to benchmarks/results/rebalance.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.peers import END, machine
from cdrhouse.engine import cluster, generate, rebalance, summary
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.ingest import IngestOptions, ingest_paths
from cdrhouse.engine.migrate import migrate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from chcluster import LocalCluster  # noqa: E402  (the test suite's server fixtures)

RESULTS = Path(__file__).parent / "results" / "rebalance.json"


def calls(db: Database) -> tuple[int, int]:
    """Count and checksum of every call as `FINAL` shows it."""
    n, h = db.rows("SELECT count(), sum(cityHash64(tuple(*))) FROM cdr_records FINAL")[0]
    return int(n), int(h)


def exact(db: Database, tenants: list[str], first: dt.date, last: dt.date) -> dict[str, bool]:
    copy = ("SELECT count(), sum(cityHash64(tuple(*))) FROM {t} FINAL")
    return {
        "summary_equals_calls": all(summary.totals(db, t, first, last)
                                    == summary.truth(db, t, first, last) for t in tenants),
        "copy_equals_calls": db.rows(copy.format(t="cdr_records"))
        == db.rows(copy.format(t="cdr_records_by_time")),
        "no_call_on_two_shards": int(db.scalar(
            "SELECT count() FROM (SELECT tenant_id, call_id FROM cdr_records GROUP BY "
            "tenant_id, call_id HAVING uniqExact(_shard_num) > 1)")) == 0,
    }


def run(rows: int, months: int, seed: int = 7) -> dict[str, Any]:
    spec = generate.GenSpec(rows=rows, months=months, seed=seed, end=END)
    first = (END - dt.timedelta(days=31 * months + 31)).date()
    last = END.date()
    out: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                           "rows": rows, "months": months, "machine": machine()}
    out["machine"]["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="cdrhouse-rebalance-") as tmp:
        work = Path(tmp)
        nodes = LocalCluster(shards=2, workdir=work / "cluster", name="bench_grow").start()
        try:
            config = StoreConfig(data_dir=work, clickhouse=nodes.dsn, database="bench",
                                 cluster=nodes.name)
            db = Database(config)
            migrate(db)
            generate.ensure_accounts(db, spec)
            t0 = time.perf_counter()
            for tenant in spec.tenants:
                path = work / f"{tenant}.parquet"
                generate.write_parquet(db, spec, tenant, path)
                ingest_paths(db, [path], IngestOptions(tenant=tenant), work / "rejects.csv")
            for table in rebalance.CALL_TABLES:     # settled, as a store's months are
                cluster.each_node(db, f"OPTIMIZE TABLE {table}_local{{on_cluster}} FINAL")
            out["load_s"] = round(time.perf_counter() - t0, 1)
            before = calls(db)
            db.close()

            t0 = time.perf_counter()
            nodes.add_shard()
            out["add_shard_s"] = round(time.perf_counter() - t0, 1)
            db = Database(config)
            t0 = time.perf_counter()
            migrate(db)
            out["init_s"] = round(time.perf_counter() - t0, 1)

            t0 = time.perf_counter()
            found = rebalance.placement(db)
            out["placement_s"] = round(time.perf_counter() - t0, 2)
            out["call_rows_misplaced"] = sum(m.rows for m in found if m.table == "cdr_records")
            steps: dict[str, float] = {}
            mark = [time.perf_counter(), ""]

            def progress(what: str, done: int, total: int) -> None:
                step = what.split(": ")[-1]
                if mark[1]:
                    steps[mark[1]] = steps.get(mark[1], 0.0) + time.perf_counter() - mark[0]
                mark[:] = [time.perf_counter(), step]

            t0 = time.perf_counter()
            report = rebalance.rebalance(db, progress=progress)
            out["rebalance_s"] = round(time.perf_counter() - t0, 1)
            out["by_step_s"] = {k: round(v, 1) for k, v in steps.items()}
            out["months_moved"] = len(report.months)
            out["rows_per_s"] = round(report.moved / out["rebalance_s"])
            after = calls(db)
            out["checks"] = {"calls_unchanged": before == after,
                             **exact(db, list(spec.tenants), first, last),
                             "nothing_left": rebalance.placement(db) == []}
            out["rows_per_shard"] = [int(n) for _, n in db.rows(
                "SELECT _shard_num, count() FROM cdr_records GROUP BY 1 ORDER BY 1")]
            db.close()
        finally:
            nodes.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--months", type=int, default=6)
    args = ap.parse_args()
    result = run(args.rows, args.months)
    print(json.dumps(result, indent=2))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if not all(result["checks"].values()):
        sys.exit(f"a check failed: {result['checks']}")


if __name__ == "__main__":
    main()
