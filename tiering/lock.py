"""One run at a time per object store: tiering runs per archive, backup operations per
backup location (backup/ops.py).

The lock is an object in the store itself (`_lock.json`), created only if absent (S3
`If-None-Match: *`, `O_EXCL` for a directory), so two processes on two machines sharing
a bucket cannot both run. A run that died leaves its lock behind; the next run takes it
over when the holder is provably gone (same host, process not alive) or when the lock
has expired.

Why a heartbeat: a run lasts as long as its months take (minutes to hours), but a
holder that died on another machine (a restarted container has a new host name) can
only be recognised by its lock expiring. So the lock is short-lived (`ttl`, ten
minutes) and the holder renews it every quarter of that while it runs: a live run
keeps it however long it takes, and a dead one stops blocking the store within ten
minutes, not twelve hours.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from cdrhouse.tiering.layout import LOCK_KEY
from cdrhouse.tiering.store import ArchiveError, ObjectStore

DEFAULT_TTL = dt.timedelta(minutes=10)
#: how long a lock written before locks were renewed (no `expires_at`) may be held
LEGACY_TTL = dt.timedelta(hours=12)

log = logging.getLogger("cdrhouse.lock")

#: tiering runs inside this process (the scheduler and an API-started run share a process)
_in_process = threading.Lock()


class TierLocked(ArchiveError):
    """Another tiering run holds the archive."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _expires(holder: dict) -> dt.datetime:
    if "expires_at" in holder:
        return dt.datetime.fromisoformat(holder["expires_at"])
    return dt.datetime.fromisoformat(holder["started_at"]) + LEGACY_TTL


def _stale(holder: dict, now: dt.datetime) -> bool:
    try:
        if now >= _expires(holder):
            return True
        pid = int(holder.get("pid", 0))
    except (KeyError, ValueError, TypeError):
        return True
    return holder.get("host") == socket.gethostname() and not _alive(pid)


def _body(token: str, what: str, started: dt.datetime, now: dt.datetime,
          ttl: dt.timedelta) -> bytes:
    return json.dumps({"token": token, "what": what, "host": socket.gethostname(),
                       "pid": os.getpid(), "started_at": started.isoformat(),
                       "renewed_at": now.isoformat(),
                       "expires_at": (now + ttl).isoformat()}).encode()


def _read(store: ObjectStore, key: str) -> bytes | None:
    """The lock object. Retried briefly: a store may fail a read that races the holder's
    renewal of the same key (rclone answers such a GET with a 500)."""
    for attempt in range(3):
        try:
            return store.get_bytes(key)
        except Exception:
            if attempt == 2:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def _held_by(store: ObjectStore, key: str, token: str) -> bool:
    raw = _read(store, key)
    try:
        return bool(raw) and json.loads(raw).get("token") == token
    except ValueError:
        return False


class _Heartbeat(threading.Thread):
    """Renews the lock every `every` until stopped; stops renewing if the lock is no
    longer ours (taken over after an expiry: it is then the other run's to keep)."""

    def __init__(self, store: ObjectStore, key: str, token: str, what: str,
                 started: dt.datetime, ttl: dt.timedelta, every: dt.timedelta) -> None:
        super().__init__(name="store-lock-heartbeat", daemon=True)
        self.store, self.key, self.token, self.what = store, key, token, what
        self.started, self.ttl, self.every = started, ttl, every
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every.total_seconds()):
            try:
                if not _held_by(self.store, self.key, self.token):
                    log.warning("the lock of %s was taken by another run while this %s held "
                                "it; no longer renewing it", self.store.location, self.what)
                    return
                now = dt.datetime.now(dt.UTC)
                self.store.put_bytes(self.key, _body(self.token, self.what, self.started,
                                                     now, self.ttl))
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("could not renew the lock of %s: %s", self.store.location, exc)


@dataclass(frozen=True)
class Held:
    """A lock as this run holds it (what `store_lock` yields).

    The heartbeat keeps it while the run is alive; but a run that stops for longer
    than the lock's expiry (a paused VM or container, a stalled disk) finds on waking
    that another run has taken the lock over, and both would go on. `ensure` before an
    irreversible step (dropping a month, writing a manifest, deleting backups) stops the
    one that lost it there."""

    store: ObjectStore
    key: str
    token: str
    what: str
    locked: type[Exception]

    def ensure(self, step: str) -> None:
        """Raise `locked` unless the lock is still this run's."""
        if not _held_by(self.store, self.key, self.token):
            raise self.locked(
                f"this {self.what} lost the lock of {self.store.location} (another run took "
                f"it over after it expired: this one was stopped longer than the lock "
                f"lasts); it stopped before {step}, which was not done")


@contextmanager
def store_lock(store: ObjectStore, key: str, what: str, locked: type[Exception],
               here: threading.Lock, kind: str, ttl: dt.timedelta = DEFAULT_TTL,
               renew_every: dt.timedelta | None = None) -> Iterator[Held]:
    """Hold `store`'s lock object `key` for the duration of the block; yields it (`Held`).

    `locked` is raised when another run holds it; `here` keeps two runs of this process
    apart (any `kind` of run: "tiering run", "backup operation"). The lock expires `ttl`
    after its last renewal; it is renewed every `renew_every` (a quarter of `ttl` unless
    given) while the block runs."""
    if not here.acquire(blocking=False):
        raise locked(f"a {kind} is already in progress in this process")
    try:
        now = dt.datetime.now(dt.UTC)
        token = uuid.uuid4().hex
        body = _body(token, what, now, now, ttl)
        if not store.put_if_absent(key, body):
            raw = _read(store, key)
            holder = json.loads(raw) if raw else {}
            if raw is not None and not _stale(holder, now):
                raise locked(
                    f"another {holder.get('what', what)} holds {store.location} "
                    f"(host {holder.get('host')}, pid {holder.get('pid')}, "
                    f"since {holder.get('started_at')}); wait for it to finish. If that "
                    f"run is gone, its lock expires at {_expires(holder).isoformat()}")
            store.delete(key)  # the holder is gone: take over
            if not store.put_if_absent(key, body):
                raise locked(f"another run took the lock of {store.location} just now; "
                             "wait for it to finish")
        # a server that ignores If-None-Match lets the last writer win: read it back
        if not _held_by(store, key, token):
            raise locked(f"another run took the lock of {store.location} at the same "
                         "moment; wait for it to finish")
        beat = _Heartbeat(store, key, token, what, now, ttl, renew_every or ttl / 4)
        beat.start()
        try:
            yield Held(store, key, token, what, locked)
        finally:
            beat.stopped.set()
            beat.join()
            if _held_by(store, key, token):
                store.delete(key)
    finally:
        here.release()


def run_lock(store: ObjectStore, what: str = "tier run", ttl: dt.timedelta = DEFAULT_TTL,
             renew_every: dt.timedelta | None = None) -> AbstractContextManager[Held]:
    """The archive's run lock, held for the duration of a `with` block (yields `Held`)."""
    return store_lock(store, LOCK_KEY, what, TierLocked, _in_process, "tiering run", ttl,
                      renew_every)
