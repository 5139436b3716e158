"""`cdrhouse tier …` as operators run it: exit codes, messages — and real crashes.

Commands run in-process through the script's entry point (tests/cli_inproc.py),
except the runs that are killed and `serve` (which, if it did not refuse its
options, would start serving: a process can be stopped by its timeout).

The crash tests kill the CLI process (os._exit, no cleanup) at a step of the
job while it works on a ClickHouse server (the HTTP-served engine) and S3
(moto), then run it again and check that it converged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cli_inproc import Ran, run_cli
from s3servers import s3_client
from test_tiering import ARCHIVED, TODAY, hot_month_set, independent_totals, load, totals

from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.tiering import layout, warm
from cdrhouse.tiering.store import ArchiveConfig, S3Store, open_archive


def cdrhouse(env: dict, *args: str, crash_at: str | None = None,
             process: bool = False) -> subprocess.CompletedProcess | Ran:
    """The CLI in this process (tests/cli_inproc.py); in a subprocess with `process` or
    `crash_at` (through tests/crashing_cli.py, dying after that step)."""
    if crash_at is None and not process:
        return run_cli(*args, env=env)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CDRHOUSE_")}
    entry = ["-m", "cdrhouse.api.cli"] if crash_at is None else [
        str(Path(__file__).with_name("crashing_cli.py")), crash_at]
    return subprocess.run([sys.executable, *entry, *args], capture_output=True,
                          text=True, env={**inherited, "COLUMNS": "200", **env}, timeout=300)


@pytest.fixture
def served(http_server, tmp_path: Path):
    db = Database(StoreConfig(tmp_path, clickhouse=http_server.dsn,
                              database=f"t_{uuid.uuid4().hex[:10]}"))
    migrate(db)
    yield db
    db.command(f"DROP DATABASE IF EXISTS `{db.name}` SYNC")
    db.close()


@pytest.mark.parametrize("step", ["exported", "moved"])
def test_a_killed_run_converges_on_rerun(served: Database, moto_endpoint: str, tmp_path: Path,
                                         step: str) -> None:
    load(served, tmp_path, rows=1500)
    before, hot_before = totals(served, ARCHIVED), totals(served)
    bucket = f"kill-{uuid.uuid4().hex[:8]}"
    s3_client(moto_endpoint).create_bucket(Bucket=bucket)
    env = {"CDRHOUSE_DATA_DIR": str(tmp_path), "CDRHOUSE_CLICKHOUSE": served.config.dsn,
           "CDRHOUSE_DATABASE": served.name, "CDRHOUSE_ARCHIVE": f"s3://{bucket}/warm",
           "CDRHOUSE_S3_ENDPOINT": moto_endpoint, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "CDRHOUSE_KEEP_MONTHS": "3"}
    # the CLI's "today" is the real date, as is test_tiering's (its data ends two days ago)
    killed = cdrhouse(env, "tier", "run", crash_at=step)
    assert killed.returncode == 70, killed.stderr
    store = S3Store(bucket, "warm", endpoint=moto_endpoint, access_key="test", secret_key="test")
    assert store.get_bytes(layout.LOCK_KEY) is not None  # a dead run leaves its lock …
    # … which the rerun takes over; the installed CLI cannot be made to crash, not even
    # by the variable that once armed the hook (CDRHOUSE_TIER_FAULT, issue 13.7)
    rerun = cdrhouse({**env, "CDRHOUSE_TIER_FAULT": step}, "tier", "run")
    assert rerun.returncode == 0, rerun.stderr
    assert not hot_month_set(served) & set(ARCHIVED)
    assert totals(served) == [r for r in hot_before if r not in before]
    assert independent_totals(store, tmp_path) == before
    assert {w.state for w in warm.warm_months(served)} == {"archived"}
    assert not store.list(layout.STAGING) and store.get_bytes(layout.LOCK_KEY) is None


def test_dry_run_status_restore_and_errors(tmp_path: Path) -> None:
    env = {"CDRHOUSE_DATA_DIR": str(tmp_path / "data")}
    demo = cdrhouse(env, "demo", "--rows", "4000", "--months", "6", "--seed", "3")
    assert demo.returncode == 0, demo.stderr
    dry = cdrhouse(env, "tier", "run", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would move" in dry.stderr and "nothing was changed" in dry.stderr
    assert "stays hot: the policy keeps 3 full months" in dry.stdout
    assert not (tmp_path / "data" / "warm" / "cdrs").exists()

    run = cdrhouse(env, "tier", "run")
    assert run.returncode == 0, run.stderr
    assert "verified" in run.stderr and "dropped hot partition" in run.stderr
    status = cdrhouse(env, "tier", "status", "--format", "json")
    assert status.returncode == 0
    assert '"state": "archived"' in status.stdout and "last run:" in status.stderr
    month = next(line for line in status.stdout.splitlines() if '"warm month"' in line)
    label = month.split('"warm month": "')[1][:7]

    restored = cdrhouse(env, "tier", "restore", "--month", label)
    assert restored.returncode == 0 and "rows restored" in restored.stderr

    bad = cdrhouse(env, "tier", "restore", "--month", "2026-13")
    assert bad.returncode == 2 and "write it as YYYYMM" in bad.stderr
    nothing = cdrhouse(env, "tier", "restore", "--month", "199901")
    assert nothing.returncode == 1 and "nothing archived for month 199901" in nothing.stderr
    unreachable = cdrhouse({**env, "CDRHOUSE_ARCHIVE": "s3://b/p",
                            "CDRHOUSE_S3_ENDPOINT": "http://127.0.0.1:9",
                            "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"},
                           "tier", "run")
    assert unreachable.returncode == 1
    assert "cannot reach the S3 endpoint http://127.0.0.1:9" in unreachable.stderr


def test_serve_schedules_the_job_and_records_it(embedded_dsn: str, engine_dir: Path,
                                               tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from cdrhouse.api.app import create_app
    from cdrhouse.api.service import ServiceConfig
    from cdrhouse.engine import keys
    from cdrhouse.tiering.store import ArchiveConfig

    store = StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn,
                        database=f"t_{uuid.uuid4().hex[:10]}")
    db = Database(store)
    migrate(db)
    load(db, tmp_path, rows=1500)
    secret = keys.create_key(db, "admin")[1]
    app = create_app(ServiceConfig(store=store, pool_size=2, archive=ArchiveConfig(
        url=str(tmp_path / "warm")), tier_cron="0 3 1 1 *"))
    try:
        with TestClient(app) as client:
            job = app.state.scheduler.get_job("tiering")
            assert job.next_run_time.year >= TODAY.year and job.next_run_time.hour == 3
            job.func()  # what the scheduler does at 03:00 on 1 January
            jobs = client.get("/v1/jobs", headers={"Authorization": f"Bearer {secret}"}).json()
            run = next(j for j in jobs["jobs"] if j["kind"] == "tier-run")
            assert run["state"] == "succeeded" and run["params"]["trigger"] == "schedule"
            assert run["result"]["dropped"] == ARCHIVED
        assert not app.state.scheduler.running  # stopped with the service
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{db.name}` SYNC")
        db.close()


@pytest.mark.parametrize("cron", ["every day", "61 * * * *"])
def test_a_bad_schedule_is_refused_before_serving(tmp_path: Path, cron: str) -> None:
    proc = cdrhouse({"CDRHOUSE_DATA_DIR": str(tmp_path)}, "serve", "--tier-schedule", cron,
                    process=True)
    assert proc.returncode == 2 and "is not a crontab expression" in proc.stderr


@pytest.mark.parametrize("args, env, message", [
    (["--recording-hosts", "https://rec.example.com"], {}, "--recording-hosts"),
    (["--recording-hosts", "s3://Bad_Bucket"], {}, "not an S3 bucket name"),
    (["--presign-expiry", "0"], {}, "--presign-expiry"),
    (["--presign-expiry", "604801"], {}, "--presign-expiry"),
    ([], {"CDRHOUSE_PRESIGN_EXPIRY": "soon"}, "--presign-expiry"),
])
def test_bad_s3_and_recording_options_are_refused_before_serving(
        tmp_path: Path, args: list[str], env: dict, message: str) -> None:
    proc = cdrhouse({"CDRHOUSE_DATA_DIR": str(tmp_path), **env}, "serve", *args, process=True)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("env, explicit, region", [
    ({}, None, None),
    ({"AWS_DEFAULT_REGION": "eu-west-3"}, None, "eu-west-3"),
    ({"AWS_DEFAULT_REGION": "eu-west-3", "AWS_REGION": "eu-west-2"}, None, "eu-west-2"),
    ({"AWS_REGION": "eu-west-2", "CDRHOUSE_S3_REGION": "ap-south-1"}, None, "ap-south-1"),
    ({"CDRHOUSE_S3_REGION": "ap-south-1"}, "us-west-2", "us-west-2"),
])
def test_the_region_comes_from_the_option_then_the_environment(
        monkeypatch, env: dict, explicit: str | None, region: str | None) -> None:
    for name in ("CDRHOUSE_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", **env}.items():
        monkeypatch.setenv(name, value)
    config = ArchiveConfig.from_env("s3://b/p", region=explicit)
    assert config.region == region
    store = open_archive(config, Path("."))
    assert store.region == (region or "us-east-1") and store.presign_expiry == 900
    url = store.presign("k")
    assert f"/{region or 'us-east-1'}/s3/aws4_request" in url.replace("%2F", "/")
