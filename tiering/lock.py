"""One tiering run at a time, per archive.

The lock is an object in the archive itself (`_lock.json`), created only if
absent (S3 `If-None-Match: *`, `O_EXCL` for a directory), so two processes on
two machines sharing a bucket cannot both run. A run that died leaves its lock
behind; the next run takes it over when the holder is provably gone (same host,
process not alive) or when the lock is older than its time-to-live.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from cdrhouse.tiering.layout import LOCK_KEY
from cdrhouse.tiering.store import ArchiveError, ObjectStore

DEFAULT_TTL = dt.timedelta(hours=12)

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


@contextmanager
def run_lock(store: ObjectStore, what: str = "tier run",
             ttl: dt.timedelta = DEFAULT_TTL) -> Iterator[str]:
    """Hold the archive's run lock for the duration of the block; yields the token."""
    if not _in_process.acquire(blocking=False):
        raise TierLocked("a tiering run is already in progress in this process")
    try:
        now = dt.datetime.now(dt.UTC)
        token = uuid.uuid4().hex
        body = json.dumps({"token": token, "what": what, "host": socket.gethostname(),
                           "pid": os.getpid(), "started_at": now.isoformat(),
                           "expires_at": (now + ttl).isoformat()}).encode()
        if not store.put_if_absent(LOCK_KEY, body):
            raw = store.get_bytes(LOCK_KEY)
            holder = json.loads(raw) if raw else {}
            if raw is not None and not _stale(holder, now):
                raise TierLocked(
                    f"another {holder.get('what', 'tier run')} holds the archive "
                    f"{store.location} (host {holder.get('host')}, pid {holder.get('pid')}, "
                    f"since {holder.get('started_at')}); wait for it to finish")
            store.delete(LOCK_KEY)  # the holder is gone: take over
            if not store.put_if_absent(LOCK_KEY, body):
                raise TierLocked(f"another run took the archive lock of {store.location} "
                                 "just now; wait for it to finish")
        # a server that ignores If-None-Match lets the last writer win: read it back
        raw = store.get_bytes(LOCK_KEY)
        if not raw or json.loads(raw).get("token") != token:
            raise TierLocked(f"another run took the archive lock of {store.location} "
                             "at the same moment; wait for it to finish")
        try:
            yield token
        finally:
            raw = store.get_bytes(LOCK_KEY)
            if raw and json.loads(raw).get("token") == token:
                store.delete(LOCK_KEY)
    finally:
        _in_process.release()
