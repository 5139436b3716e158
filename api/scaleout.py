"""What one `cdrhouse serve` process does so that several can share a store.

Started by the app's lifespan (`start`), stopped at shutdown:

- the **heartbeat** (engine/instances.py): a beat every few seconds, after which
  the instance re-reads how many instances are alive and shares the per-tenant and
  per-principal caps out among them (`Service.share_caps`), and whether a cluster
  rebalance is moving rows (`Service.notice`, api/notice.py);
- the **sweeper**, every `sweep_seconds` under the `sweeper` lease (so one
  instance at a time): running jobs whose owner died — its process is gone or its
  heartbeat stopped — are taken over (a job marked stopped, on an error or at a
  shutdown, is left for the operator to resume, as before). A recalc job
  is claimed and resumed here (recalc is resumable: it continues from its phase,
  nothing doubled or lost); a tiering run is marked failed, since every tiering run
  starts by recovering what an interrupted one left (Tiering.recover) and the next
  scheduled run does that.

Scheduled tiering and backups run under their own leases (tiering/schedule.py,
backup/schedule.py, engine/leases.py `leased`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from cdrhouse.engine import instances, jobs, leases
from cdrhouse.engine import recalc as rec
from cdrhouse.engine import userdata as ud
from cdrhouse.api.notice import notice
from cdrhouse.engine.db import Database
from cdrhouse.tiering.jobs import KIND_RUN

if TYPE_CHECKING:
    from cdrhouse.api.service import Service

log = logging.getLogger("cdrhouse.scaleout")


def launch_recalc(service: Service, job_id: str) -> None:
    """Run a recalc job to its end on the service's runner (left resumable at shutdown)."""
    pool = service.pool

    def work() -> None:
        with pool.acquire() as db:
            rec.execute(db, job_id)

    def abandon() -> None:
        with pool.acquire(timeout=5) as db:
            rec.abandon(db, job_id)

    service.jobs.submit(f"recalc-{job_id}", work, on_abandon=abandon)


def sweep(db: Database, service: Service) -> list[str]:
    """Take over the orphaned jobs (see the module doc); returns their ids."""
    taken = []
    for job in jobs.orphans(db, rec.KIND):
        try:
            rec.claim(db, job)           # ours now: no other sweep picks it up again
        except rec.RecalcError as exc:
            log.warning("orphaned recalc job %s not resumed: %s", job.job_id, exc)
            continue
        log.warning("resuming recalc job %s, whose instance stopped", job.job_id)
        launch_recalc(service, job.job_id)
        taken.append(job.job_id)
    for job in jobs.orphans(db, KIND_RUN):
        log.warning("tiering run %s was interrupted: its instance stopped", job.job_id)
        ud.update_job(db, job.job_id, state="failed",
                      error="interrupted: the instance running it stopped; the next tiering "
                            "run recovers what it left (run `cdrhouse tier run` to do it now)")
        taken.append(job.job_id)
    return taken


def start(service: Service) -> Callable[[], None]:
    """Start the heartbeat and the sweeper; returns the function that stops them."""
    config = service.config
    instances.configure(config.instance_name)
    # a client of their own: the beat must not wait behind queries for a pool client
    # (three late beats make others take this instance for dead), nor take one from them
    own = Database(config.store, create=False)
    lock = threading.Lock()

    @contextmanager
    def database() -> Iterator[Database]:
        with lock:
            yield own

    def after_beat(db: Database) -> None:
        service.share_caps(max(1, len(instances.alive(db))))
        service.notice = notice(db)

    heartbeat = instances.Heartbeat(database, also=after_beat).start()
    scheduler = None
    if config.sweep_seconds:
        def body() -> None:
            with database() as db:
                sweep(db, service)

        run = leases.leased(database, leases.SWEEPER, max(30.0, 2 * config.sweep_seconds),
                            body)

        def guarded() -> None:
            try:
                run()
            except Exception:  # noqa: BLE001 - the next sweep tries again
                log.exception("job sweep failed")

        scheduler = BackgroundScheduler(timezone="UTC")
        scheduler.add_job(guarded, "interval", seconds=config.sweep_seconds, id="sweeper",
                          max_instances=1, coalesce=True)
        scheduler.start()

    def stop() -> None:
        if scheduler is not None:
            scheduler.shutdown(wait=True)
        heartbeat.stop()
        with lock:
            own.close()

    return stop


def with_instance_label(exposition: bytes, instance: str) -> bytes:
    """Prometheus text with `instance="…"` added to every sample: behind a load
    balancer a scrape reaches one instance, and its numbers must say which."""
    value = instance.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    out = []
    for line in exposition.decode().splitlines():
        if line and not line.startswith("#"):
            brace, space = line.find("{"), line.find(" ")
            if brace != -1 and (space == -1 or brace < space):
                rest = line[brace + 1:]
                sep = "" if rest.startswith("}") else ","
                line = f'{line[:brace]}{{instance="{value}"{sep}{rest}'

            else:
                line = f'{line[:space]}{{instance="{value}"}}{line[space:]}'
        out.append(line)
    return ("\n".join(out) + "\n").encode()
