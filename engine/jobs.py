"""Long-running work — recalc jobs, tiering runs and restores — in one place.

A job is a row of the jobs table (engine/userdata.py: kind, principal, tenant,
params, state, progress, result, error); `cdrhouse jobs` and `GET /v1/jobs` show
every kind alike. This module holds what every kind of job needs beyond that row:

- **owner and liveness**: a running job's result names the process working on it
  (`owner()`: pid and host); `is_alive` says whether that process can still be
  working on it. A job whose process died, or which was marked `stopped` (it failed
  after it began changing data, or the service shut down under it), no longer
  holds anything and can be resumed.
- **claim** (`claim`): mark a job running as ours, then look for live jobs that
  conflict with it (the caller says what conflicts: recalc compares day ranges);
  the younger of two live jobs steps back, and a dead conflicting job blocks until
  it is resumed. The jobs table is the lease: no separate lock to leak.
- **resume** (`check_resumable`): a job may be taken over when it is unfinished and
  its owner is gone.
- **recorded runs** (`recorded`): run a function as a job — running, then
  succeeded with its result or failed with the error's first line.
- **the runner** (`JobRunner`): the threads the service runs long work in. The
  service knows every job it started, waits for them at shutdown and marks those
  that do not finish in time as stopped, so that they can be resumed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cdrhouse.engine import instances
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database

T = TypeVar("T")
log = logging.getLogger("cdrhouse.jobs")


# -- owner and liveness -------------------------------------------------------------

def owner() -> dict[str, Any]:
    """This process, as recorded in the result of the jobs it runs: pid and host, and
    its instance id when it writes heartbeats (a serving instance, engine/instances.py)."""
    me: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
    if instances.beating():
        me["instance"] = instances.instance_id()
    return me


def is_alive(result: Any, db: Database | None = None) -> bool:
    """Whether the process running a job (per its result) can still be working on it.

    On this machine the process table says; on another machine, the owner's
    heartbeat (with `db`, when the owner was a serving instance): alive while its
    last beat is recent (engine/instances.py). A CLI run on another machine writes
    no beats and is taken for alive until it marks its job itself.
    """
    if not isinstance(result, dict) or "pid" not in result:
        return True  # not started by a runner that records its owner: assume alive
    if result.get("stopped"):
        return False
    if result.get("host") != socket.gethostname():
        if db is not None and result.get("instance"):
            return instances.is_alive(db, str(result["instance"]))
        return True  # another machine's process: we cannot tell, so it holds its claim
    try:
        os.kill(int(result["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(db: Database, kind: str, tenant: str) -> list[ud.Job]:
    """The jobs of `kind` in `tenant` marked running (alive or not)."""
    return ud.list_jobs(db, tenant=tenant, kind=kind, state="running", limit=1000)


# -- claim and resume ---------------------------------------------------------------

def claim(db: Database, job: ud.Job, result: dict[str, Any],
          conflicts: Callable[[ud.Job], bool]) -> tuple[ud.Job, ud.Job | None]:
    """Mark `job` running as ours (with `result`), then find a live-or-dead job that wins.

    Returns (the job, None) when it holds its claim, or (the job, the blocker):
    a conflicting job that is dead (it must be resumed first) or older and alive
    (of two live jobs the younger steps back). The caller fails its job then.
    """
    job = ud.update_job(db, job.job_id, state="running",
                        result={**result, **owner(), "stopped": False})
    for other in running(db, job.kind, job.tenant_id):
        if other.job_id == job.job_id or not conflicts(other):
            continue
        if not is_alive(other.result, db) or (other.created_at, other.job_id) < (job.created_at,
                                                                           job.job_id):
            return job, other
    return job, None


class NotResumable(Exception):
    """The job is finished, or its owner is still working on it (`alive`)."""

    def __init__(self, message: str, alive: bool) -> None:
        super().__init__(message)
        self.alive = alive


def check_resumable(job: ud.Job, db: Database | None = None) -> None:
    """Raise NotResumable unless `job` is unfinished and its owner is gone.

    A queued job that no runner has claimed yet counts as alive (its runner may be
    about to start it): resuming it could run it twice.
    """
    if job.state in ud.FINISHED:
        raise NotResumable(f"job {job.job_id} is already {job.state}: nothing to resume",
                           alive=False)
    if is_alive(job.result, db):
        r = job.result if isinstance(job.result, dict) else {}
        where = f" (process {r['pid']} on {r.get('host')})" if "pid" in r else ""
        raise NotResumable(f"job {job.job_id} is still running{where}", alive=True)


def mark_stopped(db: Database, job_id: str, error: str) -> None:
    """Give up our claim on an unfinished job so that it can be resumed (keeps its state)."""
    job = ud.get_job(db, job_id)
    if job is None or job.state in ud.FINISHED:
        return
    ud.update_job(db, job_id, error=error[:2000],
                  result={**(job.result if isinstance(job.result, dict) else {}),
                          "stopped": True})


def orphans(db: Database, kind: str) -> list[ud.Job]:
    """Running jobs of `kind` (every tenant) whose owner died without a word — its
    process is gone, or its heartbeat stopped — so that nobody else will finish them.
    A job marked stopped (on an error, or by a service shutting down under it) is
    not one: its stop was recorded, and resuming it is the operator's call
    (`cdrhouse recalc resume`, the jobs panel)."""
    found = []
    for job in ud.list_jobs(db, kind=kind, state="running", limit=10_000):
        r = job.result if isinstance(job.result, dict) else {}
        if "pid" in r and not r.get("stopped") and not is_alive(r, db):
            found.append(job)
    return found


# -- recorded runs ------------------------------------------------------------------

def recorded(db: Database, *, kind: str, principal: str, tenant: str, params: dict,
             work: Callable[[str], T], result: Callable[[T], Any]) -> tuple[T, str]:
    """Run `work(job_id)` as a recorded job: running (as ours), then succeeded with
    `result(outcome)`, or failed with the error's first line (the error re-raised)."""
    job = ud.create_job(db, kind=kind, principal=principal, tenant=tenant, params=params)
    ud.update_job(db, job.job_id, state="running", result=owner())
    try:
        outcome = work(job.job_id)
    except Exception as exc:
        ud.update_job(db, job.job_id, state="failed", error=str(exc).split("\n")[0][:500])
        raise
    ud.update_job(db, job.job_id, state="succeeded", result=result(outcome))
    return outcome, job.job_id


# -- the runner ---------------------------------------------------------------------

@dataclass
class Handle:
    """One piece of work the runner runs; `wait()` blocks until it ends."""

    name: str
    #: called (with no arguments) if the runner shuts down before the work ends
    on_abandon: Callable[[], None] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)


class JobRunner:
    """The threads a service runs long work in (recalc jobs, scheduled tiering).

    Unlike a bare daemon thread, what runs here is known: `active()` lists it, and
    `shutdown` waits for it, then hands whatever did not finish to its
    `on_abandon` (recalc marks its job stopped, hence resumable). Work submitted
    after shutdown began is refused.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, tuple[Handle, threading.Thread]] = {}
        self._closing = False

    def submit(self, name: str, fn: Callable[[], Any],
               on_abandon: Callable[[], None] | None = None) -> Handle:
        handle = Handle(name, on_abandon)

        def body() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - recorded on the handle and logged
                handle.error = exc
                log.exception("job %s did not finish", name)
            finally:
                with self._lock:
                    self._active.pop(id(handle), None)
                handle.done.set()

        thread = threading.Thread(target=body, name=f"job-{name}", daemon=True)
        with self._lock:
            if self._closing:
                raise RuntimeError("the service is shutting down; no new jobs start")
            self._active[id(handle)] = (handle, thread)
        thread.start()
        return handle

    def active(self) -> list[str]:
        with self._lock:
            return [h.name for h, _ in self._active.values()]

    def shutdown(self, timeout: float) -> list[str]:
        """Wait up to `timeout` seconds in all for running work; abandon the rest.

        Returns the names of the work abandoned (each one's `on_abandon` was called).
        """
        with self._lock:
            self._closing = True
            pending = list(self._active.values())
        deadline = time.monotonic() + timeout
        for _handle, thread in pending:
            thread.join(max(0.0, deadline - time.monotonic()))
        abandoned = [h for h, t in pending if t.is_alive()]
        for handle in abandoned:
            log.warning("job %s still running at shutdown; it is left to be resumed", handle.name)
            if handle.on_abandon is not None:
                try:
                    handle.on_abandon()
                except Exception:  # noqa: BLE001 - shutting down: log and go on
                    log.exception("could not mark job %s for resume", handle.name)
        return [h.name for h in abandoned]
