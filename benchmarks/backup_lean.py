"""A full backup without the time-ordered copy (rebuilt by the restore) against one with it.

    python -m benchmarks.backup_lean --data-dir STORE

STORE is a store built by `benchmarks.load_test` (5M CDRs, with the copy of
sql/schema/016_by_time.sql). To a directory, through cdrhouse's own code: a full backup
as made now (`ops.REBUILT`: the copy left out, its definition in the manifest) and one
as made before (`REBUILT = {}`: the copy inside); each verified (restore into a scratch
database, compare) and restored by the CLI into a fresh data directory in another
process (restore, compare, rebuild the copy, migrate). One run of each, in turn.
Writes benchmarks/results/backup_lean.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cdrhouse.backup import ops
from cdrhouse.backup.location import BackupConfig, Location
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.tiering.store import LocalStore


def one(db: Database, work: Path, label: str, rebuilt: dict[str, str]) -> dict:
    root = work / label
    loc = Location(LocalStore(root), str(root))
    saved, ops.REBUILT = ops.REBUILT, rebuilt
    try:
        t0 = time.perf_counter()
        rec = ops.run_backup(db, loc, BackupConfig()).record
        backup_s = time.perf_counter() - t0
    finally:
        ops.REBUILT = saved
    t0 = time.perf_counter()
    ok = ops.verify_backup(db, loc, rec.backup_id).result.ok
    verify_s = time.perf_counter() - t0
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CDRHOUSE_")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cdrhouse.api.cli", "backup", "restore",
                           rec.backup_id, "--data-dir", str(work / f"restored-{label}")],
                          capture_output=True, text=True,
                          env={**inherited, "CDRHOUSE_BACKUP": str(root)})
    restore_s = time.perf_counter() - t0
    if proc.returncode != 0 or not ok:
        raise SystemExit(f"{label}: verify ok={ok}; restore: {proc.stderr[-2000:]}")
    return {"stored_mb": round(rec.size_bytes / 1e6, 1), "tables": len(rec.tables),
            "rows_in_manifest": rec.rows, "backup_s": round(backup_s, 1),
            "clickhouse_backup_s": round(rec.backup_seconds, 1),
            "verify_s": round(verify_s, 1), "restore_cli_s": round(restore_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/backup_lean.json"))
    args = ap.parse_args()
    db = Database(StoreConfig(data_dir=args.data_dir))
    result = {"loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
              "calls": int(db.scalar("SELECT count() FROM cdr_records"))}
    with tempfile.TemporaryDirectory(prefix="cdrhouse-backup-lean-", dir="/tmp") as tmp:
        work = Path(tmp)
        result["copy left out (now)"] = one(db, work, "lean", dict(ops.REBUILT))
        print(result["copy left out (now)"], flush=True)
        result["copy inside (before)"] = one(db, work, "whole", {})
        print(result["copy inside (before)"], flush=True)
    db.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
