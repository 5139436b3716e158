"""The tiering job on a schedule, inside the process that holds the store.

The embedded engine lets one process open the data directory, so in embedded
mode the scheduled run must live in `cdrhouse serve`. APScheduler runs it on a
cron (UTC; daily by default) in a background thread; `max_instances=1` and
`coalesce` mean a run never overlaps the previous one or piles up after a pause,
and the archive's run lock (tiering/lock.py) keeps it from overlapping a run
started anywhere else. With several service instances on one store, each fire
time runs on one of them: the run is wrapped in the `tiering` lease
(engine/leases.py `leased`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from cdrhouse.engine import leases
from cdrhouse.engine.db import Database
from cdrhouse.engine.jobs import JobRunner
from cdrhouse.tiering import jobs
from cdrhouse.tiering.lock import TierLocked
from cdrhouse.tiering.policy import Policy
from cdrhouse.tiering.store import ObjectStore

DEFAULT_CRON = "30 2 * * *"  # 02:30 UTC, daily
log = logging.getLogger("cdrhouse.tiering")


#: how long the tiering lease outlives a dead holder (renewed every third of it)
LEASE_SECONDS = 60.0


def parse_cron(text: str, what: str = "tier schedule") -> CronTrigger:
    """A five-field crontab expression (UTC) — or six, a leading seconds field — or
    ValueError naming the problem."""
    try:
        fields = text.split()
        if len(fields) == 6:
            second, minute, hour, day, month, weekday = fields
            return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                               day_of_week=weekday, timezone="UTC")
        return CronTrigger.from_crontab(text, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"{what} {text!r} is not a crontab expression "
                         f"([second] minute hour day month weekday): {exc}") from None


def start_scheduler(cron: str, store: ObjectStore, policy: Policy,
                    database: Callable[[], AbstractContextManager[Database]],
                    runner: JobRunner | None = None) -> BackgroundScheduler:
    """Start running the tiering job on `cron`; stop it with `.shutdown()`.

    With a `runner` (the service's), each run executes on it — so the service
    knows about it at shutdown — while the scheduler's thread waits for it, which
    keeps `max_instances=1` meaning one run at a time.
    """
    trigger = parse_cron(cron)

    def body(due) -> None:
        try:
            with database() as db:
                report = jobs.run_tiering(db, store, policy, trigger="schedule", due=due)
            log.info("scheduled tiering run: %s rows archived, months dropped: %s",
                     report.rows, report.dropped)
        except TierLocked as exc:
            log.warning("scheduled tiering run skipped: %s", exc)
        except Exception:  # the job is recorded as failed; keep the scheduler alive
            log.exception("scheduled tiering run failed")

    def run() -> None:
        due = leases.current_due()      # the fire time this run is for, in its job's params
        if runner is None:
            body(due)
            return
        try:
            runner.submit("tier-run", lambda: body(due)).wait()
        except RuntimeError as exc:  # the service is shutting down
            log.warning("scheduled tiering run not started: %s", exc)

    scheduler = BackgroundScheduler(timezone="UTC")
    # every instance's scheduler fires; the lease lets one of them run each fire time
    scheduler.add_job(leases.leased(database, leases.TIERING, LEASE_SECONDS, run,
                                    trigger=trigger), trigger, id="tiering", max_instances=1,
                      coalesce=True, misfire_grace_time=3600)
    scheduler.start()
    return scheduler


__all__ = ["DEFAULT_CRON", "parse_cron", "start_scheduler"]
