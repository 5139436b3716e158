"""Tiering benchmark: archive throughput, sizes, verify cost, restore, warm queries.

    python -m benchmarks.tier_bench [--rows 5000000] [--rounds 7] [--s3]

On a generated dataset (six months, the oldest three eligible under the default
policy), through cdrhouse's real code paths:

1. Export path, measured on the largest tenant-month: ClickHouse's own Parquet
   writer (what the job uses) against Arrow + pyarrow (fetch as Arrow, write
   with pyarrow), same rows, same zstd.
2. Sizes of the archived rows: the CSV of the same rows, the hot table's
   on-disk bytes for those partitions, the Parquet written.
3. The job end to end (export, read-back verify, publish, manifest, drop) to a
   directory archive — and, with `--s3`, to S3 served by moto on loopback (a
   Python server: it measures our S3 path, not S3's speed).
4. Verify cost: the read-back checks alone, repeated over the finished archive.
5. Restore of one month (every tenant) into the hot table, verified.
6. Warm queries: viewer pages and a SQL aggregate over an archived month, asked
   of the hot table before tiering and with include_archive after — medians of
   interleaved rounds, query condition cache off.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks import dataset
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import generate
from cdrhouse.engine import query as q
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import ViewRequest
from cdrhouse.tiering import verify, warm
from cdrhouse.tiering.archive import Tiering
from cdrhouse.sql.months import bounds, utc_bounds
from cdrhouse.tiering.policy import Policy, add_months, month_of
from cdrhouse.tiering.reader import WarmReader
from cdrhouse.tiering.store import LocalStore, ObjectStore, S3Store

RESULTS = Path(__file__).parent / "results"


def _dataset(rows: int) -> tuple[generate.GenSpec, list[int], dt.date]:
    today = dt.datetime.now(dt.UTC).date()
    first = add_months(month_of(today), -6)
    start = utc_bounds(first)[0]
    spec = generate.GenSpec(rows=rows, months=6, seed=11,
                            end=start + dt.timedelta(days=round(30.44 * 6)))
    return spec, [add_months(first, i) for i in range(3)], today


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _bytes(db: Database, months: list[int]) -> int:
    return int(db.scalar(
        "SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND database = currentDatabase() "
        "AND table = 'cdr_records' AND partition IN {p:Array(String)}",
        {"p": [str(m) for m in months]}) or 0)


def export_paths(db: Database, tmp: Path, tenant: str, month: int) -> dict:
    tier = Tiering(db, LocalStore(tmp))
    cols = tier._col_list()
    src = f"SELECT {tier._export_list()} FROM cdr_records FINAL WHERE tenant_id = {{t:String}} " \
          f"AND toYYYYMM(start_time) = {{m:UInt32}} ORDER BY customer_id, start_time, call_id"
    params = {"t": tenant, "m": month}
    rows = int(db.scalar(f"SELECT count() FROM (SELECT {cols} FROM cdr_records FINAL WHERE "
                         "tenant_id = {t:String} AND toYYYYMM(start_time) = {m:UInt32})", params))
    ch_path, arrow_path = tmp / "clickhouse.parquet", tmp / "pyarrow.parquet"
    _, ch_s = _timed(lambda: db.command(
        f"INSERT INTO FUNCTION file('{ch_path}', 'Parquet') {src}", params,
        settings={**tier._export_settings()}))

    def via_arrow() -> None:
        table = db.arrow(src, params)
        pq.write_table(table, arrow_path, compression="zstd", row_group_size=131_072)
    _, arrow_s = _timed(via_arrow)
    return {"tenant": tenant, "month": month, "rows": rows,
            "clickhouse": {"seconds": ch_s, "rows_per_s": rows / ch_s,
                           "bytes": ch_path.stat().st_size},
            "pyarrow": {"seconds": arrow_s, "rows_per_s": rows / arrow_s,
                        "bytes": arrow_path.stat().st_size}}


def csv_bytes(db: Database, tmp: Path, months: list[int]) -> int:
    path = tmp / "rows.csv"
    db.command(f"INSERT INTO FUNCTION file('{path}', 'CSVWithNames') SELECT * FROM cdr_records "
               "FINAL WHERE toYYYYMM(start_time) IN {m:Array(UInt32)}", {"m": months},
               settings={"engine_file_truncate_on_insert": 1})
    size = path.stat().st_size
    path.unlink()
    return size


def verify_cost(db: Database, store: ObjectStore) -> tuple[float, int]:
    tier = Tiering(db, store)
    t0, rows = time.perf_counter(), 0
    for manifest in warm.all_manifests(store):
        got = verify.per_file(db, store.clickhouse_source(db, manifest.keys), tier.columns)
        rows += sum(fp.rows for fp in got.values())
    return time.perf_counter() - t0, rows


def warm_queries(db: Database, month: int, rounds: int, reader: WarmReader | None,
                 number: str) -> dict:
    """Median ms of the viewer's and SQL's everyday questions about one archived month."""
    acme = Principal.operator("acme")
    customer_id = acc.find(db, "acme", "customer", "C001").account_id
    customer = Principal.customer("acme", customer_id)
    start, end = bounds(month)
    window = dict(range="custom", date_from=start.isoformat(), date_to=end.isoformat())
    cases = {
        "viewer page (customer, 100 newest)": (customer, ViewRequest(limit=100, **window)),
        "viewer page (operator, 100 newest)": (acme, ViewRequest(limit=100, **window)),
        "number search (operator)": (acme, ViewRequest(limit=100, number=number, **window)),
        "SQL: calls and minutes per day": (acme, None),
    }
    sql = ("SELECT toDate(start_time) AS d, count(), sum(billsec) / 60 FROM cdrs WHERE "
           "start_time >= {f:DateTime64(3, 'UTC')} AND start_time < {t:DateTime64(3, 'UTC')} "
           "GROUP BY d ORDER BY d")
    out = {}
    for name, (principal, request) in cases.items():
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            sources = reader.sources(db, principal.tenant, dt.datetime.combine(
                start, dt.time(), dt.UTC), dt.datetime.combine(end, dt.time(), dt.UTC)) \
                if reader else None
            archive = sources.selects if sources else ()
            if request is None:
                q.run_sql(db, principal, sql, {"f": f"{start} 00:00:00", "t": f"{end} 00:00:00"},
                          archive=archive)
            else:
                q.run_view(db, principal, request, archive=archive)
            times.append((time.perf_counter() - t0) * 1000)
        out[name] = {"median_ms": statistics.median(times), "min_ms": min(times)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--s3", action="store_true", help="also run the job against moto S3")
    args = parser.parse_args()
    spec, months, today = _dataset(args.rows)
    result: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "python": platform.python_version()},
                    "rows": args.rows, "months": months}
    with tempfile.TemporaryDirectory(prefix="cdrhouse-tier-bench-") as tmp_text:
        tmp = Path(tmp_text)
        db = Database(StoreConfig(tmp / "data"))
        migrate(db)
        _, load_s = _timed(lambda: dataset.load(db, spec))
        archived_rows = int(db.scalar("SELECT count() FROM cdr_records FINAL WHERE "
                                      "toYYYYMM(start_time) IN {m:Array(UInt32)}", {"m": months}))
        result["load_seconds"] = load_s
        result["archived_rows"] = archived_rows
        biggest = db.rows("SELECT tenant_id, toYYYYMM(start_time) AS m, count() AS n FROM "
                          "cdr_records WHERE m IN {m:Array(UInt32)} GROUP BY tenant_id, m "
                          "ORDER BY n DESC LIMIT 1", {"m": months})[0]
        result["export_paths"] = export_paths(db, tmp, biggest[0], int(biggest[1]))
        result["hot_bytes"] = _bytes(db, months)
        result["csv_bytes"] = csv_bytes(db, tmp, months)
        number = db.scalar("SELECT dst_number FROM cdr_records WHERE tenant_id = 'acme' AND "
                           "toYYYYMM(start_time) = {m:UInt32} LIMIT 1", {"m": months[1]})
        result["hot_queries"] = warm_queries(db, months[1], args.rounds, None, number)

        store = LocalStore(tmp / "warm")
        report, run_s = _timed(lambda: Tiering(db, store, Policy()).run(today=today))
        assert report.dropped == months, report.skipped
        result["archive"] = {"seconds": run_s, "rows": report.rows,
                             "rows_per_s": report.rows / run_s, "parquet_bytes": report.bytes,
                             "files": sum(len(m.files) for m in report.archived)}
        verify_s, verified = verify_cost(db, store)
        result["verify"] = {"seconds": verify_s, "rows": verified,
                            "share_of_run": verify_s / run_s}
        reader = WarmReader(store)
        result["warm_queries"] = warm_queries(db, months[1], args.rounds, reader, number)
        result["number_searched"] = number
        restored, restore_s = _timed(lambda: Tiering(db, store).restore(months[1]))
        rows = sum(r for _, r, _ in restored)
        result["restore"] = {"seconds": restore_s, "rows": rows, "rows_per_s": rows / restore_s}

        if args.s3:
            # the tests' loopback server (its helpers import each other as the tests do)
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from s3servers import MotoServer, s3_client
            server = MotoServer().start()
            try:
                s3_client(server.endpoint).create_bucket(Bucket="bench")
                s3 = S3Store("bench", "warm", endpoint=server.endpoint, access_key="test",
                             secret_key="test")
                Tiering(db, store).restore(months[0])
                Tiering(db, store).restore(months[2])
                report, s3_s = _timed(lambda: Tiering(db, s3, Policy()).run(today=today))
                result["archive_s3_moto"] = {"seconds": s3_s, "rows": report.rows,
                                             "rows_per_s": report.rows / s3_s}
            finally:
                server.stop()
        db.close()

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tier.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(render(result))


def render(r: dict) -> str:
    e = r["export_paths"]
    a, v, rs = r["archive"], r["verify"], r["restore"]
    mib = 1 << 20
    lines = [
        f"Dataset: {r['rows']:,} CDRs over six months; archived: {r['archived_rows']:,} rows "
        f"in months {', '.join(map(str, r['months']))}.",
        "",
        "| measure | value |", "|---|---:|",
        f"| archive end to end (export, verify, publish, drop), directory | "
        f"{a['rows_per_s']:,.0f} rows/s ({a['seconds']:.1f} s, {a['files']} files) |",
    ]
    if "archive_s3_moto" in r:
        s = r["archive_s3_moto"]
        lines.append(f"| archive end to end, S3 (moto on loopback) | {s['rows_per_s']:,.0f} rows/s "
                     f"({s['seconds']:.1f} s) |")
    lines += [
        f"| verify (read back + checksum) alone | {v['seconds']:.2f} s = "
        f"{100 * v['share_of_run']:.0f} % of the run |",
        f"| restore one month | {rs['rows_per_s']:,.0f} rows/s ({rs['rows']:,} rows, "
        f"{rs['seconds']:.1f} s) |",
        f"| CSV of the archived rows | {r['csv_bytes'] / mib:,.1f} MiB |",
        f"| hot table, those partitions on disk | {r['hot_bytes'] / mib:,.1f} MiB |",
        f"| Parquet (zstd) written | {a['parquet_bytes'] / mib:,.1f} MiB |",
        f"| CSV / Parquet | {r['csv_bytes'] / a['parquet_bytes']:.1f}x |",
        f"| hot / Parquet | {r['hot_bytes'] / a['parquet_bytes']:.2f}x |",
        "",
        f"Export path, largest tenant-month ({e['rows']:,} rows):",
        "",
        "| path | rows/s | MiB |", "|---|---:|---:|",
        f"| ClickHouse Parquet writer (used) | {e['clickhouse']['rows_per_s']:,.0f} | "
        f"{e['clickhouse']['bytes'] / mib:.1f} |",
        f"| Arrow to Python, pyarrow writer | {e['pyarrow']['rows_per_s']:,.0f} | "
        f"{e['pyarrow']['bytes'] / mib:.1f} |",
        "",
        "Queries over one archived month (median ms):",
        "",
        "| query | hot (before tiering) | warm (include_archive) | warm / hot |",
        "|---|---:|---:|---:|",
    ]
    for name, hot in r["hot_queries"].items():
        w = r["warm_queries"][name]
        lines.append(f"| {name} | {hot['median_ms']:.1f} | {w['median_ms']:.1f} | "
                     f"{w['median_ms'] / hot['median_ms']:.1f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
