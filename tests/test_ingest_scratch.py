"""Scratch tables of a killed ingest are dropped by the next one (issue 12, item 10).

A batch lives in Memory tables named after their owner: host, process id and
process start time. A real `cdrhouse ingest` is killed with SIGKILL while its
scratch tables exist; the next ingest must drop them, on the embedded engine
(seen through the engine's metadata files, as the directory's lock keeps this
process out) and over HTTP (seen in system.tables). Tables of a live owner, or
of another host within a day, are left alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cli_inproc import run_cli

from cdrhouse.engine import ingest as ingest_mod
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.ingest import IngestOptions, Ingestor, drop_stale_scratch
from cdrhouse.engine.migrate import migrate


def _big_csv(path: Path, rows: int = 400_000) -> Path:
    with open(path, "w") as fh:
        fh.write("call_id,start_time,duration,src_number,dst_number\n")
        for i in range(rows):
            fh.write(f"k{i},2026-03-01 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d},"
                     f"{i % 900},4930{i:07d},4420{i:07d}\n")
    return path


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory) -> Path:
    """One large file for both killed ingests (only read): big enough to be killed mid-way."""
    return _big_csv(tmp_path_factory.mktemp("scratch") / "big.csv")


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CDRHOUSE_")}
    return subprocess.Popen([sys.executable, "-m", "cdrhouse.api.cli", *args],
                            env={**base, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, seen, timeout: float = 240) -> list[str]:
    """SIGKILL `proc` as soon as `seen()` finds scratch tables; return them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = seen()
        if found:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return found
        if proc.poll() is not None:
            pytest.fail(f"the ingest ended (exit {proc.returncode}) before any scratch table "
                        f"was seen: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no scratch table appeared")


def test_killed_cli_ingest_leaves_scratch_that_the_next_run_drops_embedded(
        tmp_path: Path, big_csv: Path) -> None:
    data = tmp_path / "data"
    env = {"CDRHOUSE_DATA_DIR": str(data)}
    meta = data / "clickhouse" / "metadata" / "cdrhouse"

    def scratch() -> list[str]:
        return sorted(p.stem for p in meta.glob("_ingest_*.sql")) if meta.exists() else []

    proc = _cli(env, "ingest", str(big_csv), "--tenant", "acme", "--rejects", str(tmp_path / "r1.csv"))
    leaked = _kill_when(proc, scratch)
    assert proc.returncode == -signal.SIGKILL
    assert scratch(), "the killed ingest left no scratch table: nothing to test"
    small = tmp_path / "small.csv"
    small.write_text("call_id,start_time,duration\ns1,2026-03-01 10:00:00,5\n")
    # the next ingest (the CLI's entry point, in this process, once the killed one is gone)
    again = run_cli("ingest", str(small), "--tenant", "acme", "--rejects",
                    str(tmp_path / "r2.csv"), env=env)
    assert again.returncode == 0, again.stderr
    assert "scratch table(s) left by an interrupted ingest" in again.stderr
    assert scratch() == [], (leaked, scratch())


def test_killed_cli_ingest_leaves_scratch_that_the_next_run_drops_http(
        http_server, engine_dir: Path, tmp_path: Path, big_csv: Path) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    db = Database(StoreConfig(data_dir=engine_dir, clickhouse=http_server.dsn, database=name))
    try:
        migrate(db)
        env = {"CDRHOUSE_DATA_DIR": str(tmp_path / "data"), "CDRHOUSE_CLICKHOUSE": http_server.dsn,
               "CDRHOUSE_DATABASE": name}

        def scratch() -> list[str]:
            return [t for (t,) in db.rows("SELECT name FROM system.tables WHERE database = "
                                          "currentDatabase() AND startsWith(name, '_ingest_')")]

        proc = _cli(env, "ingest", str(big_csv), "--tenant", "acme",
                    "--rejects", str(tmp_path / "r.csv"))
        _kill_when(proc, scratch)
        time.sleep(0.5)   # (a statement the killed client sent may still be finishing)
        leaked = scratch()
        assert leaked and all(f"_{proc.pid}_" in t for t in leaked)
        ing = Ingestor(db, IngestOptions(tenant="acme"), tmp_path / "r2.csv")
        ing.close()
        assert sorted(ing.dropped_scratch) == sorted(leaked)
        assert scratch() == []
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{name}` SYNC")
        db.close()


def test_only_scratch_whose_owner_is_gone_is_dropped(store: Database) -> None:
    host, me = ingest_mod._HOST, os.getpid()
    my_start = ingest_mod._process_start(me)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live_start = ingest_mod._process_start(sleeper.pid)
        mine = ingest_mod._Scratch.new()        # in use by an Ingestor of this process
        tables = {
            "live other process": (f"_ingest_stage_{host}_{sleeper.pid}_{live_start}_0000000a", False),
            "pid reused (other start)": (f"_ingest_norm_{host}_{sleeper.pid}_{live_start + 1}_0000000b", True),
            "dead process": (f"_ingest_known_{host}_{2**22 + 12345}_77_0000000c", True),
            "this process, not in use": (f"_ingest_stage_{host}_{me}_{my_start}_0000000d", True),
            "this process, in use": (mine.stage, False),
            "another host, fresh": ("_ingest_stage_0badc0de_1_1_0000000e", False),
            "before owners were named, fresh": ("_ingest_stage_0123456789ab", False),
        }
        for table, _ in tables.values():
            store.command(f"CREATE TABLE `{table}` (x UInt8) ENGINE = Memory")
        dropped = drop_stale_scratch(store)
        assert sorted(dropped) == sorted(t for t, stale in tables.values() if stale)
        left = {t for (t,) in store.rows("SELECT name FROM system.tables WHERE database = "
                                         "currentDatabase() AND startsWith(name, '_ingest_')")}
        assert left == {t for t, stale in tables.values() if not stale}
        mine.release()
        assert drop_stale_scratch(store) == [mine.stage]
        # a day later, foreign and unnamed leftovers count as stale too
        assert ingest_mod.scratch_is_stale("_ingest_stage_0badc0de_1_1_0000000e", 25 * 3600)
        assert ingest_mod.scratch_is_stale("_ingest_stage_0123456789ab", 25 * 3600)
    finally:
        sleeper.kill()
        sleeper.wait()
