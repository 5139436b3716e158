"""Ingest benchmark: rows/s and peak memory for generated CDRs from Parquet and from CSV.

    python -m benchmarks.ingest_bench [--rows 5000000] [--out benchmarks/results/ingest.json]

Generates one tenant's CDRs (all rows in one tenant, the worst case for one
ingest run) into a Parquet file and a CSV file, then ingests each into a fresh
embedded store with `cdrhouse ingest` in a subprocess, measuring wall time and
the subprocess's peak resident memory. Run at two sizes to see that memory
stays flat while the file grows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cdrhouse.engine import generate
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate


def _ingest(data_dir: Path, path: Path, tenant: str) -> dict:
    env = {**os.environ, "CDRHOUSE_DATA_DIR": str(data_dir)}
    env.pop("CDRHOUSE_CLICKHOUSE", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), tenant],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    peak_kib = int(proc.stdout.strip().splitlines()[-1])
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(peak_kib / 1024),
            "report": " ".join(proc.stderr.split())[-160:]}


# The CLI in a child that reports its own peak RSS: VmHWM belongs to the
# process image, so unlike ru_maxrss it does not inherit the parent's peak.
_CHILD = """
import re, sys
from cdrhouse.api.cli import main
path, tenant = sys.argv[1], sys.argv[2]
sys.argv = ["cdrhouse", "ingest", path, "--tenant", tenant]
try:
    main()
except SystemExit as exc:
    if exc.code:
        raise
print(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


def run(rows: int, workdir: Path) -> dict:
    spec = generate.GenSpec(rows=rows, months=6, seed=11, tenants=("acme",),
                            end=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc))
    gen_dir = workdir / "gen"
    db = Database(StoreConfig(data_dir=gen_dir))
    migrate(db)
    generate.ensure_accounts(db, spec)
    parquet, csv = workdir / "acme.parquet", workdir / "acme.csv"
    t0 = time.perf_counter()
    generate.write_parquet(db, spec, "acme", parquet)
    gen_parquet = time.perf_counter() - t0
    generate.write_csv(db, spec, "acme", csv)
    db.close()
    result = {"rows": rows, "generate_parquet_s": round(gen_parquet, 2),
              "parquet_mib": round(parquet.stat().st_size / 2**20, 1),
              "csv_mib": round(csv.stat().st_size / 2**20, 1)}
    for name, path in (("parquet", parquet), ("csv", csv)):
        store = workdir / f"store-{name}"
        # accounts first (ingest resolves customer/carrier codes)
        sdb = Database(StoreConfig(data_dir=store))
        migrate(sdb)
        generate.ensure_accounts(sdb, spec)
        sdb.close()
        r = _ingest(store, path, "acme")
        r["rows_per_s"] = round(rows / r["seconds"])
        result[name] = r
        shutil.rmtree(store)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ingest.json"))
    args = ap.parse_args()
    results = {"date": dt.date.today().isoformat(), "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "runs": []}
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix="cdrhouse-ingest-bench-") as tmp:
            r = run(n, Path(tmp))
            results["runs"].append(r)
            print(json.dumps(r), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| rows | format | file MiB | seconds | rows/s | peak RSS MiB |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in results["runs"]:
        for fmt in ("parquet", "csv"):
            print(f"| {r['rows']:,} | {fmt} | {r[fmt + '_mib']} | {r[fmt]['seconds']} | "
                  f"{r[fmt]['rows_per_s']:,} | {r[fmt]['peak_rss_mib']} |")


if __name__ == "__main__":
    main()
