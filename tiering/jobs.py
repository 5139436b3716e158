"""Tiering runs as jobs: recorded in the store's jobs table (so `/v1/jobs` and
`cdrhouse jobs` show them) whether started from the CLI or by the scheduler.
The job mechanics (recording, owner, the service's runner) are engine/jobs.py;
tiering's own crash recovery is `Tiering.recover`, run at the start of every run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from cdrhouse.engine import jobs, rebalance, userdata
from cdrhouse.engine.db import Database
from cdrhouse.tiering import layout
from cdrhouse.tiering.archive import Progress, RunReport, Tiering
from cdrhouse.tiering.policy import Policy
from cdrhouse.tiering.store import ArchiveError, ObjectStore

KIND_RUN = "tier-run"
KIND_RESTORE = "tier-restore"
PRINCIPAL = "admin"
T = TypeVar("T")


def report_json(report: RunReport) -> dict[str, Any]:
    return {
        "run_id": report.run_id,
        "archived": [{"tenant": m.tenant, "month": m.month, "rows": m.rows, "bytes": m.bytes,
                      "files": len(m.files)} for m in report.archived],
        "unchanged": [{"tenant": t, "month": m} for t, m in report.unchanged],
        "dropped": report.dropped,
        "merged": report.merged,
        "returned_rows": report.returned_rows,
        "skipped": report.skipped,
        "rows": report.rows,
        "bytes": report.bytes,
    }


def _progress(db: Database, job_id: str, inner: Progress | None) -> Progress:
    last = [0.0]

    def report(what: str, done: int, total: int) -> None:
        if inner:
            inner(what, done, total)
        fraction = done / total if total else 0.0
        if fraction - last[0] >= 0.05 or (fraction == 1.0 and last[0] < 1.0):
            last[0] = fraction
            userdata.update_job(db, job_id, progress=min(fraction, 1.0))

    return report


def _as_job(db: Database, kind: str, params: dict, work: Callable[[str], T],
            result: Callable[[T], Any]) -> tuple[T, str]:
    """A platform-wide admin job (engine/jobs.py records it). It fails at once while a
    rebalance moves rows between shards (engine/rebalance.py: it is asked once the job
    is marked running, so a rebalance starting meanwhile sees the job)."""
    def guarded(job_id: str) -> T:
        busy = rebalance.refusal(db)
        if busy is not None:
            raise ArchiveError(busy)
        return work(job_id)

    return jobs.recorded(db, kind=kind, principal=PRINCIPAL, tenant="", params=params,
                         work=guarded, result=result)


def run_tiering(db: Database, store: ObjectStore, policy: Policy, *,
                months: list[int] | None = None, tenants: list[str] | None = None,
                today: dt.date | None = None, progress: Progress | None = None,
                trigger: str = "cli", due: dt.datetime | None = None) -> RunReport:
    """One tiering run, recorded as a job; the job fails with the error's message.
    `due`: the scheduled fire time it runs for (engine/leases.py), kept in its params."""
    params = {"months": months, "tenants": tenants, "keep_months": policy.keep_months,
              "archive": store.location, "trigger": trigger}
    if due is not None:
        params["due"] = due.isoformat()
    report, job_id = _as_job(db, KIND_RUN, params, lambda job_id: Tiering(
        db, store, policy, progress=_progress(db, job_id, progress)).run(
        today=today, months=months, tenants=tenants), report_json)
    report.job_id = job_id
    return report


def run_restore(db: Database, store: ObjectStore, month: int, tenants: list[str] | None = None,
                progress: Progress | None = None) -> list[tuple[str, int, str]]:
    """A restore, recorded as a job."""
    params = {"month": month, "tenants": tenants, "archive": store.location}
    done, _ = _as_job(db, KIND_RESTORE, params, lambda job_id: Tiering(
        db, store, progress=_progress(db, job_id, progress)).restore(month, tenants),
        lambda done: {"month": layout.month_label(month), "tenants": [
            {"tenant": t, "rows": r, "outcome": o} for t, r, o in done]})
    return done


def last_run(db: Database) -> userdata.Job | None:
    found = userdata.list_jobs(db, kind=KIND_RUN, limit=1)
    return found[0] if found else None
