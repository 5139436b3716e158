"""How a restore refills the time-ordered copy: per partition, two at once (now) against
one INSERT of the whole table and one OPTIMIZE (before), alternating.

    python -m benchmarks.restore_fill --data-dir STORE [--rounds 3]

STORE is a store built by `benchmarks.load_test` (5M CDRs). One full backup of it (the
copy left out, as every backup is) to a directory, then restored `--rounds` times with
each way of filling the copy, in turn, into a new database of the same embedded engine,
dropped after. Prints and writes the seconds of each whole restore (restore, compare,
refill, check, migrate) and of the refill alone (benchmarks/results/restore_fill.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from cdrhouse.backup import ops
from cdrhouse.backup.location import BackupConfig, Location
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.tiering.store import LocalStore


def whole_table(mdb: Database, database: str, table: str, source: str) -> None:
    """The fill before: one INSERT of the whole table, then one OPTIMIZE of every month."""
    mdb.command(f"INSERT INTO `{database}`.`{table}` SELECT * FROM `{database}`.`{source}`")
    mdb.command(f"OPTIMIZE TABLE `{database}`.`{table}` FINAL "
                "SETTINGS optimize_skip_merged_partitions = 1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/restore_fill.json"))
    args = ap.parse_args()
    config = StoreConfig(data_dir=args.data_dir)
    db = Database(config)
    ways = {"per partition, two at once (now)": ops._fill, "whole table (before)": whole_table}
    times: dict[str, dict[str, list[float]]] = {w: {"restore_s": [], "fill_s": []} for w in ways}
    with tempfile.TemporaryDirectory(prefix="cdrhouse-restore-fill-") as tmp:
        loc = Location(LocalStore(Path(tmp)), tmp)
        rec = ops.run_backup(db, loc, BackupConfig()).record
        real = ops._fill
        try:
            for r in range(args.rounds):
                for name in (list(ways) if r % 2 == 0 else list(reversed(ways))):
                    fill = ways[name]
                    spent: list[float] = []

                    def timed(*a, _fill=fill, _spent=spent) -> None:
                        t0 = time.perf_counter()
                        _fill(*a)
                        _spent.append(time.perf_counter() - t0)

                    ops._fill = timed
                    target = StoreConfig(data_dir=args.data_dir,
                                         database=f"restore_{uuid.uuid4().hex[:8]}")
                    t0 = time.perf_counter()
                    ops.restore_backup(target, loc, rec.backup_id)
                    times[name]["restore_s"].append(round(time.perf_counter() - t0, 2))
                    times[name]["fill_s"].append(round(sum(spent), 2))
                    db.command(f"DROP DATABASE `{target.database}` SYNC")
                    print(json.dumps({"round": r, name: {k: v[-1] for k, v in times[name].items()}}),
                          flush=True)
        finally:
            ops._fill = real
    rows = int(db.scalar("SELECT count() FROM cdr_records"))
    db.close()
    summary = {w: {k: statistics.median(v) for k, v in t.items()} for w, t in times.items()}
    for w, m in summary.items():
        print(f"| {w} | {m['restore_s']:.1f} s | {m['fill_s']:.1f} s |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows,
                                    "rounds": args.rounds, "runs": times, "median": summary},
                                   indent=1) + "\n")


if __name__ == "__main__":
    main()
