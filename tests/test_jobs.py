"""engine/jobs.py: the runner the service runs long work on, liveness, claims and resume.

The runner tests use real threads and events (no sleeps, no timing thresholds: a
test waits on an event, or gives `shutdown` a timeout that the work can never meet
because it is blocked until the test releases it). The recalc tests use a real
engine: a job the service left behind at shutdown is resumable and finishes.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_recalc import OP, REPRICED, _load, money, req

from cdrhouse.api.app import create_app
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import jobs, keys, recalc
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.engine.recalc import RecalcBusy


def test_shutdown_waits_for_work_that_finishes() -> None:
    runner, release, abandoned = jobs.JobRunner(), threading.Event(), []
    runner.submit("a", release.wait, on_abandon=lambda: abandoned.append("a"))
    assert runner.active() == ["a"]
    out: list = []
    closer = threading.Thread(target=lambda: out.append(runner.shutdown(timeout=600)))
    closer.start()
    with pytest.raises(RuntimeError, match="shutting down"):
        # shutdown has begun (or is about to): wait until it refuses new work
        while True:
            runner.submit("late", lambda: None).wait()
    release.set()
    closer.join()
    assert out == [[]] and abandoned == [] and runner.active() == []


def test_shutdown_abandons_work_that_cannot_finish_in_time() -> None:
    runner, release, abandoned = jobs.JobRunner(), threading.Event(), []
    handle = runner.submit("b", release.wait, on_abandon=lambda: abandoned.append("b"))
    try:
        assert runner.shutdown(timeout=0.0) == ["b"]
        assert abandoned == ["b"] and not handle.done.is_set()
    finally:
        release.set()
    handle.wait()
    assert runner.active() == []


def test_a_failing_job_is_recorded_on_its_handle_and_frees_the_runner() -> None:
    runner = jobs.JobRunner()
    handle = runner.submit("c", lambda: int("x"))
    handle.wait()
    assert isinstance(handle.error, ValueError) and runner.active() == []
    assert runner.shutdown(timeout=0.0) == []


@pytest.mark.parametrize("result, alive", [
    (None, True),                                       # no owner recorded: be careful
    ({"phase": "stage"}, True),
    ({**jobs.owner()}, True),                           # this very process
    ({**jobs.owner(), "stopped": True}, False),         # gave up its claim
    ({"pid": 999_999_999, "host": jobs.owner()["host"]}, False),   # a dead process here
    ({"pid": 999_999_999, "host": "elsewhere.example"}, True),     # cannot tell: alive
])
def test_is_alive(result, alive: bool) -> None:
    assert jobs.is_alive(result) is alive


def test_a_job_left_at_shutdown_is_resumable_and_finishes(embedded_db: Database,
                                                          tmp_path: Path) -> None:
    db = _load(embedded_db, tmp_path)
    job = recalc.start(db, req(), OP)
    job = recalc.claim(db, job)                 # running, claimed by this (live) process
    with pytest.raises(RecalcBusy, match="still running"):
        recalc.resume(db, job.job_id, OP)
    recalc.abandon(db, job.job_id)              # what the service's runner does at shutdown
    left = ud.get_job(db, job.job_id)
    assert left.state == "running" and "recalc resume" in left.error
    done = recalc.resume(db, job.job_id, OP)
    assert done.state == "succeeded" and money(db) == REPRICED


def test_the_service_waits_for_a_recalc_job_at_shutdown(embedded_dsn: str, engine_dir: Path,
                                                        tmp_path: Path) -> None:
    """POST /v1/recalc runs on the service's runner: leaving the app waits for the job."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    store = StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn, database=name)
    db = Database(store)
    try:
        migrate(db)
        _load(db, tmp_path)
        secret = keys.create_key(db, "tenant:acme")[1]
        app = create_app(ServiceConfig(store=store, pool_size=2, job_shutdown_seconds=600))
        with TestClient(app) as client:
            r = client.post("/v1/recalc", json={"op": "rerate", "from": "2026-03-01",
                                                "to": "2026-03-31"},
                            headers={"Authorization": f"Bearer {secret}"})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
        # the lifespan has ended: the job was waited for, not cut off
        assert ud.get_job(db, job_id).state == "succeeded"
        assert money(db) == REPRICED
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{name}` SYNC")
        db.close()
