"""One tiering run at a time, per archive.

The lock is an object in the archive itself (`_lock.json`), created only if
absent (S3 `If-None-Match: *`, `O_EXCL` for a directory), so two processes on
two machines sharing a bucket cannot both run. A run that died leaves its lock
behind; the next run takes it over when the holder is provably gone (same host,
process not alive) or when the lock has expired.

Why a heartbeat: a run lasts as long as its months take (minutes to hours), but a
holder that died on another machine (a restarted container has a new host name)
can only be recognised by its lock expiring. So the lock is short-lived (`ttl`, ten
minutes) and the holder renews it every quarter of that while it runs: a live run
keeps it however long it takes, and a dead one stops blocking the archive within
ten minutes, not twelve hours.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from cdrhouse.tiering.layout import LOCK_KEY
from cdrhouse.tiering.store import ArchiveError, ObjectStore

DEFAULT_TTL = dt.timedelta(minutes=10)

log = logging.getLogger("cdrhouse.tiering")

#: runs inside this process (the scheduler and an API-started run share a process)
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


def _stale(holder: dict, now: dt.datetime) -> bool:
    try:
        expires = dt.datetime.fromisoformat(holder["expires_at"])
    except (KeyError, ValueError):
        return True
    if now >= expires:
        return True
    return holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0)))


def _body(token: str, what: str, started: dt.datetime, now: dt.datetime,
          ttl: dt.timedelta) -> bytes:
    return json.dumps({"token": token, "what": what, "host": socket.gethostname(),
                       "pid": os.getpid(), "started_at": started.isoformat(),
                       "renewed_at": now.isoformat(),
                       "expires_at": (now + ttl).isoformat()}).encode()


def _held_by(store: ObjectStore, token: str) -> bool:
    raw = store.get_bytes(LOCK_KEY)
    try:
        return bool(raw) and json.loads(raw).get("token") == token
    except ValueError:
        return False


class _Heartbeat(threading.Thread):
    """Renews the lock every `every` until stopped; stops renewing if the lock is no
    longer ours (taken over after an expiry: it is then the other run's to keep)."""

    def __init__(self, store: ObjectStore, token: str, what: str, started: dt.datetime,
                 ttl: dt.timedelta, every: dt.timedelta) -> None:
        super().__init__(name="tier-lock-heartbeat", daemon=True)
        self.store, self.token, self.what, self.started = store, token, what, started
        self.ttl, self.every = ttl, every
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self.every.total_seconds()):
            try:
                if not _held_by(self.store, self.token):
                    self.lost = True
                    log.warning("the archive lock of %s was taken by another run while this "
                                "%s held it; no longer renewing it", self.store.location, self.what)
                    return
                now = dt.datetime.now(dt.UTC)
                self.store.put_bytes(LOCK_KEY, _body(self.token, self.what, self.started,
                                                     now, self.ttl))
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("could not renew the archive lock of %s: %s", self.store.location, exc)


@contextmanager
def run_lock(store: ObjectStore, what: str = "tier run",
             ttl: dt.timedelta = DEFAULT_TTL,
             renew_every: dt.timedelta | None = None) -> Iterator[str]:
    """Hold the archive's run lock for the duration of the block; yields the token.

    The lock expires `ttl` after its last renewal; it is renewed every `renew_every`
    (a quarter of `ttl` unless given) while the block runs."""
    if not _in_process.acquire(blocking=False):
        raise TierLocked("a tiering run is already in progress in this process")
    try:
        now = dt.datetime.now(dt.UTC)
        token = uuid.uuid4().hex
        body = _body(token, what, now, now, ttl)
        if not store.put_if_absent(LOCK_KEY, body):
            raw = store.get_bytes(LOCK_KEY)
            holder = json.loads(raw) if raw else {}
            if raw is not None and not _stale(holder, now):
                raise TierLocked(
                    f"another {holder.get('what', 'tier run')} holds the archive "
                    f"{store.location} (host {holder.get('host')}, pid {holder.get('pid')}, "
                    f"since {holder.get('started_at')}); wait for it to finish. If that "
                    f"run is gone, its lock expires at {holder.get('expires_at')}")
            store.delete(LOCK_KEY)  # the holder is gone: take over
            if not store.put_if_absent(LOCK_KEY, body):
                raise TierLocked(f"another run took the archive lock of {store.location} "
                                 "just now; wait for it to finish")
        # a server that ignores If-None-Match lets the last writer win: read it back
        if not _held_by(store, token):
            raise TierLocked(f"another run took the archive lock of {store.location} "
                             "at the same moment; wait for it to finish")
        beat = _Heartbeat(store, token, what, now, ttl, renew_every or ttl / 4)
        beat.start()
        try:
            yield token
        finally:
            beat.stopped.set()
            beat.join()
            if _held_by(store, token):
                store.delete(LOCK_KEY)
    finally:
        _in_process.release()
