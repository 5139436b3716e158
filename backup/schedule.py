"""Backups on a schedule inside `cdrhouse serve`, and the metric alerting watches.

Like the tiering job (tiering/schedule.py): APScheduler on a cron (UTC, daily by
default), never overlapping itself; the location's lock keeps it apart from a
run started elsewhere, and the `backup` lease (engine/leases.py) makes each fire
time run on one instance when several serve the store. Each scheduled run is verified right after it is made.

`BackupCollector` exports, on every scrape, from the store's `backups` table:

- `cdrhouse_backup_last_good_age_seconds` — since the newest backup that
  completed and did not fail verification (+Inf when there is none): alert when
  it exceeds a day and a bit, and a failed, missing or stuck backup pages someone;
- `cdrhouse_backup_last_verified_age_seconds` — since the newest verified one;
- `cdrhouse_backup_last_good_size_bytes`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from prometheus_client.core import GaugeMetricFamily

from cdrhouse.backup import jobs
from cdrhouse.backup.location import BackupConfig, Location
from cdrhouse.backup.ops import BackupLocked
from cdrhouse.engine import leases
from cdrhouse.engine.db import Database

DEFAULT_CRON = "0 1 * * *"  # 01:00 UTC daily, before the tiering job's 02:30
log = logging.getLogger("cdrhouse.backup")


#: how long the backup lease outlives a dead holder (renewed every third of it)
LEASE_SECONDS = 60.0


def parse_cron(text: str) -> CronTrigger:
    from cdrhouse.tiering.schedule import parse_cron as parse
    return parse(text, "backup schedule")


def scheduled_run(location: Location, config: BackupConfig,
                  database: Callable[[], AbstractContextManager[Database]]) -> None:
    """What the scheduler runs: a backup, then its verification (both recorded as jobs)."""
    try:
        with database() as db:
            report = jobs.run(db, location, config, trigger="schedule")
            log.info("scheduled backup %s (%s): %s rows, %s bytes stored",
                     report.record.backup_id, report.record.kind, report.record.rows,
                     report.record.size_bytes)
            verified = jobs.verify(db, location, report.record.backup_id, trigger="schedule")
            log.info("backup %s verified", verified.record.backup_id)
    except BackupLocked as exc:
        log.warning("scheduled backup skipped: %s", exc)
    except Exception:  # recorded as a failed job; keep the scheduler alive
        log.exception("scheduled backup failed")


def start_scheduler(cron: str, location: Location, config: BackupConfig,
                    database: Callable[[], AbstractContextManager[Database]]
                    ) -> BackgroundScheduler:
    trigger = parse_cron(cron)
    scheduler = BackgroundScheduler(timezone="UTC")
    # every instance's scheduler fires; the lease lets one of them run each fire time
    run = leases.leased(database, leases.BACKUP, LEASE_SECONDS,
                        lambda: scheduled_run(location, config, database), trigger=trigger)
    scheduler.add_job(run, trigger, id="backup",
                      max_instances=1, coalesce=True, misfire_grace_time=3600)
    scheduler.start()
    return scheduler


class BackupCollector:
    """Prometheus collector reading the store's `backups` table at scrape time."""

    def __init__(self, database: Callable[[], AbstractContextManager[Database] | None]) -> None:
        self._database = database

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # no samples at registration: the store may not be open yet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ctx = self._database()
        if ctx is None:
            return
        try:
            with ctx as db:
                if not db.table_exists("backups"):
                    return
                good, verified, size = db.rows(
                    "SELECT maxIf(toUnixTimestamp64Milli(finished_at), state IN "
                    "('completed', 'verified')), maxIf(toUnixTimestamp64Milli(finished_at), "
                    "state = 'verified'), argMaxIf(size_bytes, finished_at, state IN "
                    "('completed', 'verified')) FROM backups FINAL")[0]
        except Exception:  # a scrape must not fail because the store is busy
            log.exception("backup metrics unavailable")
            return
        now = time.time()

        def age(ms: int) -> float:
            return now - ms / 1000 if ms else math.inf

        yield GaugeMetricFamily("cdrhouse_backup_last_good_age_seconds",
                                "Seconds since the newest backup that completed and did not "
                                "fail verification (+Inf: none)", value=age(int(good)))
        yield GaugeMetricFamily("cdrhouse_backup_last_verified_age_seconds",
                                "Seconds since the newest verified backup (+Inf: none)",
                                value=age(int(verified)))
        yield GaugeMetricFamily("cdrhouse_backup_last_good_size_bytes",
                                "Bytes stored by the newest good backup", value=float(size or 0))
