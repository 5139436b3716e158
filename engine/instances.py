"""Which `cdrhouse serve` processes are alive: an instance id and a heartbeat row.

Several service processes (on one machine or many) share one store. Each one
names itself (`instance_id()`: a configured name, else `host:pid`) and, while it
serves, writes a beat into `service_instances` every `BEAT_SECONDS`. Another
process reads the beats to tell a dead owner of a job from a live one on another
machine (engine/jobs.py), and to share the per-tenant and per-principal caps out
among the live instances (api/service.py).

An instance is *alive* while its last beat is younger than `ALIVE_SECONDS`, by the
ClickHouse server's clock (every instance compares against the same clock, so the
instances' own clocks need not agree).
"""

from __future__ import annotations

import os
import socket
import threading
import time

from cdrhouse.engine.db import Database

BEAT_SECONDS = 5.0
#: an instance that has not beaten for this long is taken for dead (3 missed beats)
ALIVE_SECONDS = 15.0

_name: str | None = None
_STARTED = time.time()
_beating = False


def configure(name: str | None) -> None:
    """Set this process's instance name (`cdrhouse serve --instance-name`)."""
    global _name
    _name = name or None


def instance_id() -> str:
    """This process as other instances see it: the configured name, else host:pid."""
    return _name or f"{socket.gethostname()}:{os.getpid()}"


def beating() -> bool:
    """Whether this process writes heartbeats (only then do its jobs name it)."""
    return _beating


def beat(db: Database) -> None:
    """Record that this instance is alive now (server time)."""
    db.command(
        "INSERT INTO service_instances (instance_id, host, pid, started_at, beat_at) "
        "SELECT {i:String}, {h:String}, {p:UInt32}, fromUnixTimestamp64Milli({s:Int64}), "
        "now64(3)",
        {"i": instance_id(), "h": socket.gethostname(), "p": os.getpid(),
         "s": int(_STARTED * 1000)})


def alive(db: Database, ids: list[str] | None = None) -> set[str]:
    """The instances (of `ids`, or all) whose last beat is recent."""
    where = "AND instance_id IN {ids:Array(String)}" if ids is not None else ""
    rows = db.rows(
        f"SELECT instance_id FROM service_instances WHERE 1 {where} GROUP BY instance_id "
        f"HAVING max(beat_at) > now64(3) - toIntervalMillisecond({int(ALIVE_SECONDS * 1000)})",
        {"ids": ids or []})
    return {r[0] for r in rows}


def is_alive(db: Database, instance: str) -> bool:
    return instance in alive(db, [instance])


class Heartbeat:
    """A daemon thread calling `beat` every `BEAT_SECONDS` (and `also()` after it).

    A failed beat is skipped, not fatal: the store may be briefly unreachable,
    and three missed beats are what makes others take this instance for dead.
    """

    def __init__(self, database, also=None, interval: float = BEAT_SECONDS) -> None:
        self._database = database
        self._also = also
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="instance-heartbeat",
                                        daemon=True)

    def start(self) -> Heartbeat:
        global _beating
        self.beat_once()
        _beating = True
        self._thread.start()
        return self

    def beat_once(self) -> None:
        import logging
        try:
            with self._database() as db:
                beat(db)
                if self._also is not None:
                    self._also(db)
        except Exception:  # noqa: BLE001 - a missed beat; the next one may succeed
            logging.getLogger("cdrhouse.instances").exception("heartbeat failed")

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.beat_once()

    def stop(self) -> None:
        global _beating
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        _beating = False
