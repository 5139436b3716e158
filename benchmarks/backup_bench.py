"""Backup benchmark: backup, verify and restore throughput, full and incremental.

    python -m benchmarks.backup_bench [--rows 5000000] [--s3]

On a generated store (six months of CDRs through the real ingest path, merged),
through cdrhouse's real code (backup/ops.py, ClickHouse's own BACKUP/RESTORE):

1. A full backup (fingerprints before and after included, as a run does them).
2. 1 % new calls ingested, then an incremental backup on the full one that reads
   every partition to fingerprint it (`reuse_fingerprints=False`, the code before
   part sets were recorded); another 1 %, and an incremental on that one that reads
   only partitions whose parts changed (the default): an A/B on the same store.
3. Verify of each: restore into a scratch database and compare every table.
4. Restore of the last incremental (with its chain of three) into a fresh data directory by the
   CLI in another process, as an operator runs it (process start, checks, RESTORE,
   comparison with the manifest, migration) — the RTO of this store on this host.

Targets: a directory (default) and, with `--s3`, `rclone serve s3` on loopback
(a real S3 server checking signatures; its speed is rclone's, not S3's). Numbers
are rows/s of the store and MB/s of bytes the backup stored.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import dataset
from cdrhouse.backup import ops
from cdrhouse.backup.location import BackupConfig, Location
from cdrhouse.engine import generate
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.tiering.store import LocalStore, S3Store

RESULTS = Path(__file__).parent / "results"


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds else 0.0


def _store_bytes(db: Database) -> int:
    return int(db.scalar("SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND "
                         "database = currentDatabase()") or 0)


def bench_target(db: Database, loc: Location, env: dict, tmp: Path, rows: int) -> dict:
    config = BackupConfig(keep_fulls=5)
    out: dict = {"location": loc.location}
    t0 = time.perf_counter()
    full = ops.run_backup(db, loc, config, full=True).record
    full_s = time.perf_counter() - t0
    out["full"] = {"seconds": full_s, "backup_seconds": full.backup_seconds,
                   "fingerprint_seconds": full.seconds - full.backup_seconds,
                   "partitions_read": full.partitions_read,
                   "rows": full.rows, "stored_bytes": full.size_bytes,
                   "rows_per_s": _rate(full.rows, full_s),
                   "mb_per_s": _rate(full.size_bytes / 1e6, full_s)}

    t0 = time.perf_counter()
    assert ops.verify_backup(db, loc, full.backup_id).result.ok
    verify_full_s = time.perf_counter() - t0
    out["full"]["verify_seconds"] = verify_full_s
    out["full"]["verify_rows_per_s"] = _rate(full.rows, verify_full_s)

    # 1 % new calls, as a day of traffic adds (new seed, same window); twice: the first
    # incremental reads every partition to fingerprint it (as before part sets were
    # recorded), the second reuses the base's figures for partitions whose parts are
    # the same — an A/B on the same store in the same session
    extra = max(rows // 100, 1000)
    inc = full
    for label, reuse in (("incremental_read_all", False), ("incremental", True)):
        work = tmp / f"extra-{len(str(loc.location))}-{label}"
        work.mkdir(exist_ok=True)
        spec = generate.GenSpec(rows=extra, months=1, seed=int(time.time()) % 100000)
        generate.load(db, spec, work)
        t0 = time.perf_counter()
        made = ops.run_backup(db, loc, config, reuse_fingerprints=reuse).record
        inc_s = time.perf_counter() - t0
        assert made.base_id == inc.backup_id
        inc = made
        out[label] = {"seconds": inc_s, "backup_seconds": inc.backup_seconds,
                      "fingerprint_seconds": inc.seconds - inc.backup_seconds,
                      "partitions_read": inc.partitions_read,
                      "partitions_reused": inc.partitions_reused,
                      "new_rows": extra, "rows": inc.rows,
                      "stored_bytes": inc.size_bytes,
                      "size_vs_full": inc.size_bytes / full.size_bytes,
                      "rows_per_s": _rate(inc.rows, inc_s)}
        t0 = time.perf_counter()
        assert ops.verify_backup(db, loc, inc.backup_id).result.ok
        out[label]["verify_seconds"] = time.perf_counter() - t0

    # restore into a fresh data directory, by the CLI in its own process
    new = tmp / f"restored-{len(out)}-{time.time_ns()}"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CDRHOUSE_")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cdrhouse.api.cli", "backup", "restore",
                           inc.backup_id, "--data-dir", str(new)], capture_output=True,
                          text=True, env={**inherited, **env})
    restore_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"restore failed: {proc.stderr}")
    chain_bytes = sum(out[k]["stored_bytes"]
                      for k in ("full", "incremental_read_all", "incremental"))
    out["restore"] = {"seconds": restore_s, "rows": inc.rows, "chain": 3,
                      "rows_per_s": _rate(inc.rows, restore_s),
                      "mb_per_s": _rate(chain_bytes / 1e6, restore_s)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--s3", action="store_true", help="also to rclone serve s3 on loopback")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdrhouse-backup-bench-") as tmp_name:
        tmp = Path(tmp_name)
        db = Database(StoreConfig(data_dir=tmp / "data"))
        migrate(db)
        t0 = time.perf_counter()
        dataset.load(db, generate.GenSpec(rows=args.rows, months=6, seed=11))
        load_s = time.perf_counter() - t0
        result: dict = {
            "rows": args.rows, "store_bytes_on_disk": _store_bytes(db), "load_seconds": load_s,
            "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                     "clickhouse": db.scalar("SELECT version()")},
            "targets": {}}
        root = tmp / "backups"
        result["targets"]["directory"] = bench_target(
            db, Location(LocalStore(root), str(root)), {"CDRHOUSE_BACKUP": str(root)}, tmp,
            args.rows)
        if args.s3:
            sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
            from s3servers import RcloneS3Server  # the test suite's server, started here
            server = RcloneS3Server(tmp / "rclone" / "root")
            (server.root / "bench").mkdir(parents=True)
            server.start()
            try:
                store = S3Store("bench", "backups", endpoint=server.endpoint,
                                access_key=server.access_key, secret_key=server.secret_key)
                env = {"CDRHOUSE_BACKUP": "s3://bench/backups",
                       "CDRHOUSE_S3_ENDPOINT": server.endpoint,
                       "AWS_ACCESS_KEY_ID": server.access_key,
                       "AWS_SECRET_ACCESS_KEY": server.secret_key}
                result["targets"]["s3 (rclone)"] = bench_target(
                    db, Location(store, "s3://bench/backups"), env, tmp, args.rows)
            finally:
                server.stop()
        db.close()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backup.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
