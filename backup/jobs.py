"""Backups as jobs: recorded in the store's jobs table (so `/v1/jobs` and
`cdrhouse jobs` show them to admins) whether started from the CLI or the scheduler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from cdrhouse.backup import ops
from cdrhouse.backup.location import BackupConfig, BackupError, Location
from cdrhouse.engine import jobs, rebalance, userdata
from cdrhouse.engine.db import Database

KIND_RUN = ops.KIND_RUN
KIND_VERIFY = ops.KIND_VERIFY
PRINCIPAL = "admin"
T = TypeVar("T")


def _as_job(db: Database, kind: str, params: dict, work: Callable[[str], T],
            result: Callable[[T], Any]) -> tuple[T, str]:
    job = userdata.create_job(db, kind=kind, principal=PRINCIPAL, tenant="", params=params)
    # the owner, so that whether it still runs can be told (engine/jobs.is_alive)
    userdata.update_job(db, job.job_id, state="running", result=jobs.owner())
    try:
        # asked once marked running (engine/rebalance.py); a verification changes nothing
        busy = rebalance.refusal(db) if kind in rebalance.EXCLUSIVE_JOBS else None
        if busy is not None:
            raise BackupError(busy)
        outcome = work(job.job_id)
    except Exception as exc:
        userdata.update_job(db, job.job_id, state="failed", error=str(exc).split("\n")[0][:500])
        raise
    userdata.update_job(db, job.job_id, state="succeeded", progress=1.0, result=result(outcome))
    return outcome, job.job_id


def run_json(report: ops.RunReport) -> dict[str, Any]:
    r = report.record
    return {"backup_id": r.backup_id, "kind": r.kind, "base_id": r.base_id,
            "reason": report.reason, "tables": len(r.tables), "rows": r.rows,
            "size_bytes": r.size_bytes, "total_bytes": r.total_bytes, "seconds": r.seconds,
            "pruned": report.pruned, "orphans_removed": report.orphans}


def run(db: Database, location: Location, config: BackupConfig, *, full: bool = False,
        progress: ops.Progress = ops._quiet, trigger: str = "cli") -> ops.RunReport:
    """A backup run, recorded as a job (the job fails with the error's message)."""
    params = {"full": full, "location": location.location, "trigger": trigger,
              "full_every_days": config.full_every_days, "keep_fulls": config.keep_fulls}
    report, job_id = _as_job(db, KIND_RUN, params, lambda job_id: ops.run_backup(
        db, location, config, full=full, progress=progress, job_id=job_id), run_json)
    report.job_id = job_id
    return report


def verify(db: Database, location: Location, backup_id: str, *,
           progress: ops.Progress = ops._quiet, trigger: str = "cli") -> ops.VerifyReport:
    """A verification, recorded as a job: it *succeeds* when it could check the
    backup, whatever it found; a backup found bad makes the job fail, so it shows."""
    params = {"backup_id": backup_id, "location": location.location, "trigger": trigger}

    def work(_job_id: str) -> ops.VerifyReport:
        report = ops.verify_backup(db, location, backup_id, progress=progress)
        if not report.result.ok:
            raise ops.BackupError(f"backup {backup_id} failed verification: "
                                  + "; ".join(report.result.problems))
        return report

    report, _ = _as_job(db, KIND_VERIFY, params, work, lambda rep: {
        "backup_id": backup_id, "ok": rep.result.ok, "chain": rep.chain,
        "tables": rep.result.tables, "rows": rep.result.rows, "seconds": rep.result.seconds})
    return report
