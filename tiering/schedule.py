"""The tiering job on a schedule, inside the process that holds the store.

The embedded engine lets one process open the data directory, so in embedded
mode the scheduled run must live in `cdrhouse serve`. APScheduler runs it on a
cron (UTC; daily by default) in a background thread; `max_instances=1` and
`coalesce` mean a run never overlaps the previous one or piles up after a pause,
and the archive's run lock (tiering/lock.py) keeps it from overlapping a run
started anywhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from cdrhouse.engine.db import Database
from cdrhouse.engine.jobs import JobRunner
from cdrhouse.tiering import jobs
from cdrhouse.tiering.lock import TierLocked
from cdrhouse.tiering.policy import Policy
from cdrhouse.tiering.store import ObjectStore

DEFAULT_CRON = "30 2 * * *"  # 02:30 UTC, daily
log = logging.getLogger("cdrhouse.tiering")


def parse_cron(text: str) -> CronTrigger:
    """A five-field crontab expression (UTC), or ValueError naming the problem."""
    try:
        return CronTrigger.from_crontab(text, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"tier schedule {text!r} is not a crontab expression "
                         f"(minute hour day month weekday): {exc}") from None


def start_scheduler(cron: str, store: ObjectStore, policy: Policy,
                    database: Callable[[], AbstractContextManager[Database]],
                    runner: JobRunner | None = None) -> BackgroundScheduler:
    """Start running the tiering job on `cron`; stop it with `.shutdown()`.

    With a `runner` (the service's), each run executes on it — so the service
    knows about it at shutdown — while the scheduler's thread waits for it, which
    keeps `max_instances=1` meaning one run at a time.
    """
    trigger = parse_cron(cron)

    def body() -> None:
        try:
            with database() as db:
                report = jobs.run_tiering(db, store, policy, trigger="schedule")
            log.info("scheduled tiering run: %s rows archived, months dropped: %s",
                     report.rows, report.dropped)
        except TierLocked as exc:
            log.warning("scheduled tiering run skipped: %s", exc)
        except Exception:  # the job is recorded as failed; keep the scheduler alive
            log.exception("scheduled tiering run failed")

    def run() -> None:
        if runner is None:
            body()
            return
        try:
            runner.submit("tier-run", body).wait()
        except RuntimeError as exc:  # the service is shutting down
            log.warning("scheduled tiering run not started: %s", exc)

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(run, trigger, id="tiering", max_instances=1, coalesce=True,
                      misfire_grace_time=3600)
    scheduler.start()
    return scheduler


__all__ = ["DEFAULT_CRON", "parse_cron", "start_scheduler"]
