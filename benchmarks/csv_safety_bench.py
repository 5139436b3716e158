"""What spreadsheet-safe CSV costs: the same download streamed raw and neutralised.

    python -m benchmarks.csv_safety_bench [--rows 1000000] [--rounds 7]

A tenant operator's CSV download of every generated CDR (every column its role
sees: 11 text columns, numbers, money, times), through the real streaming path
(engine.export.stream_csv on the embedded engine, chunks read and dropped),
once with `raw=True` (ClickHouse's CSV as stored) and once neutralised (one
SQL expression per text column, engine/export.py). Rounds interleave the two;
medians are reported, with the ratio safe/raw. A second pair does the same for
a text-only user SQL query whose every number carries a leading `+` (the
E.164 case, where each cell runs both regular expressions).
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
from cdrhouse.engine import export, generate
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql import catalogue
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import ViewRequest

END = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
E164_SQL = ("SELECT concat('+', src_number) AS src, concat('+', dst_number) AS dst, "
            "sip_reason, codec, country, recording_url FROM cdrs")


def _drain(db: Database, principal: Principal, plan: export.Export, raw: bool) -> tuple[float, int]:
    started = time.perf_counter()
    size = 0
    for chunk in export.stream_csv(db, principal, plan.sql, plan.parameters, "bench",
                                   columns=plan.columns, types=plan.types, raw=raw,
                                   limit_overrides={"max_execution_time": 3600}):
        size += len(chunk)
    return time.perf_counter() - started, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/csv_safety.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(StoreConfig(data_dir=Path(tmp)))
        migrate(db)
        load_started = time.perf_counter()
        dataset.load(db, generate.GenSpec(rows=args.rows, months=6, seed=11, end=END))
        print(f"loaded {args.rows:,} rows in {time.perf_counter() - load_started:.1f} s")
        tenant = db.scalar("SELECT tenant_id FROM cdr_records GROUP BY tenant_id "
                           "ORDER BY count() DESC LIMIT 1")
        principal = Principal("tenant", tenant, label=f"tenant:{tenant}")
        columns = [f.name for f in catalogue.visible_fields("tenant")]
        view = export.view_export(principal, ViewRequest(
            columns=columns, sort=["start_time", "call_id"], range="all", tz="UTC",
            for_download=True, limit=None), dt.datetime.now(dt.timezone.utc))
        names, types = export.describe(db, principal, view.sql, view.parameters, "bench")
        view = export.Export(view.sql, view.parameters, names, types=types)
        e164 = export.sql_export(db, principal, E164_SQL, None, "bench")
        results = {}
        for label, plan in (("viewer download, every column", view),
                            ("text-only SQL, +E.164 numbers", e164)):
            times: dict[bool, list[float]] = {True: [], False: []}
            sizes: dict[bool, int] = {}
            _drain(db, principal, plan, True)  # warm the caches
            for _ in range(args.rounds):
                for raw in (True, False):
                    seconds, sizes[raw] = _drain(db, principal, plan, raw)
                    times[raw].append(seconds)
            raw_s, safe_s = statistics.median(times[True]), statistics.median(times[False])
            results[label] = {
                "rows": int(db.scalar("SELECT count() FROM cdr_records WHERE tenant_id = {t:String}",
                                      {"t": tenant})),
                "raw_s": round(raw_s, 3), "safe_s": round(safe_s, 3),
                "raw_mib_s": round(sizes[True] / raw_s / 2**20, 1),
                "safe_mib_s": round(sizes[False] / safe_s / 2**20, 1),
                "ratio": round(safe_s / raw_s, 3), "raw_bytes": sizes[True],
                "safe_bytes": sizes[False], "rounds": args.rounds}
        db.close()
    print("| download | raw s | safe s | raw MiB/s | safe MiB/s | safe/raw |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r['raw_s']} | {r['safe_s']} | {r['raw_mib_s']} | "
              f"{r['safe_mib_s']} | {r['ratio']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": dt.date.today().isoformat(), "machine": platform.platform(),
        "cpus": os.cpu_count(), "rows": args.rows, "results": results}, indent=2))


if __name__ == "__main__":
    main()
