"""Leases: one holder at a time per kind of scheduled work, across every instance.

Several `cdrhouse serve` processes share a store; tiering, backups, reports and
alert evaluation must each run once, not once per process. A **lease** per kind
says who may run it: it has a holder, an expiry, is renewed by a heartbeat while
the work runs, and is taken over when the holder stops renewing (it died).

ClickHouse has no compare-and-set, so the claim uses the one atomic decision a
MergeTree makes: **insert deduplication**. The lease of a kind is a chain of
epochs in `leases` (schema 013); the current one is the highest epoch. To claim
a free or expired lease whose current epoch is N with token t, an instance
inserts the row of epoch N+1 with `insert_deduplication_token =
lease:<kind>:<N+1>:<t>`. Every instance that saw the same epoch N expire sends
the same token, and ClickHouse stores exactly one of those blocks (the first to
commit; the others are acknowledged and dropped). Each then reads epoch N+1 back:
the one whose token is there holds the lease. The previous token in the dedup
token makes it unique for all time, so an old entry of the deduplication log can
never swallow a new claim.

Expiry is judged by the **server's clock** (`now64()` in the queries), the one
clock every instance shares. The holder keeps a local deadline on its monotonic
clock, started *before* the claim or renewal was sent, so it always ends before
the server-side expiry; a renewal counts only if it was acknowledged (hence
visible) before the previous deadline — otherwise the holder takes the lease for
lost. So an instance that sees the lease expired (server time past expires_at)
cannot be racing a renewal that the holder still believes in. Limits, in
ARCHITECTURE.md: a holder paused longer than the TTL (GC, SIGSTOP) wakes up
believing in an expired lease until its next check — the work's own locks
(the archive's run lock, the backup location's lock, the jobs' claims) remain
the second line; and on a replicated cluster the clocks of the replicas must
agree to well within the TTL.

`leased(database, kind, ttl, fn, trigger=...)` is the one wrapper the schedulers
use: it claims the lease, skips the run when another instance already did this
cron fire time (`done_for`), renews the lease while `fn` runs and releases it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from cdrhouse.engine import instances
from cdrhouse.engine.db import Database

log = logging.getLogger("cdrhouse.leases")

#: the kinds of scheduled work (others may add theirs: any short name works)
TIERING, BACKUP, REPORTS, ALERTS, SWEEPER = "tiering", "backup", "reports", "alerts", "sweeper"
#: held by `cdrhouse cluster rebalance` while it moves rows between shards (engine/rebalance.py)
REBALANCE = "rebalance"
EPOCH0 = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

DatabaseFactory = Callable[[], AbstractContextManager[Database]]


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class LeaseState:
    """A kind's lease as the store says now (server clock)."""

    kind: str
    epoch: int
    token: str
    holder: str
    claimed_at: dt.datetime
    expires_at: dt.datetime
    #: the newest cron fire time whose run is done (EPOCH0: none)
    done_for: dt.datetime
    #: the server's time when read
    now: dt.datetime

    @property
    def held(self) -> bool:
        return bool(self.token) and self.expires_at > self.now

    def as_json(self, me: str | None = None) -> dict[str, Any]:
        return {"kind": self.kind, "held": self.held, "holder": self.holder if self.held else None,
                "mine": bool(self.held and me and self.holder == me), "epoch": self.epoch,
                "expires_in": round((self.expires_at - self.now).total_seconds(), 1)
                if self.held else None,
                "last_done_for": self.done_for.isoformat() if self.done_for > EPOCH0 else None}


@dataclass
class Lease:
    """A lease this process holds (until `deadline`, on its monotonic clock)."""

    kind: str
    epoch: int
    token: str
    holder: str
    ttl: float
    claimed_at: dt.datetime
    done_for: dt.datetime
    deadline: float
    version: int = 1
    lost: threading.Event = field(default_factory=threading.Event)

    def valid(self) -> bool:
        """Still ours by our own clock (the work may check this between steps)."""
        return not self.lost.is_set() and time.monotonic() < self.deadline


_STATE_SQL = """
SELECT kind, epoch, token, holder, claimed_at, expires_at,
       max(done_for) OVER (PARTITION BY kind) AS done, now64(3)
FROM leases FINAL
WHERE {where}
ORDER BY kind, epoch DESC
LIMIT 1 BY kind
"""


def _states(db: Database, where: str, params: dict) -> list[LeaseState]:
    rows = db.rows(_STATE_SQL.format(where=where), params)
    return [LeaseState(r[0], int(r[1]), r[2], r[3], _utc(r[4]), _utc(r[5]), _utc(r[6]),
                       _utc(r[7])) for r in rows]


def state(db: Database, kind: str) -> LeaseState:
    """The current lease of `kind` (epoch 0, no holder, when never claimed)."""
    found = _states(db, "kind = {k:String}", {"k": kind})
    if found:
        return found[0]
    now = _utc(db.scalar("SELECT now64(3)"))
    return LeaseState(kind, 0, "", "", EPOCH0, EPOCH0, EPOCH0, now)


def states(db: Database) -> list[LeaseState]:
    """Every kind's current lease (for /readyz)."""
    return _states(db, "1", {})


def _write(db: Database, lease: Lease, expires_ms: int, dedup: str | None = None) -> None:
    """One row of `lease`'s epoch, expiring `expires_ms` after the server's now."""
    db.command(
        "INSERT INTO leases (kind, epoch, token, holder, claimed_at, expires_at, done_for, "
        "version) SELECT {k:String}, {e:UInt64}, {t:String}, {h:String}, "
        "if({c:Int64} = 0, now64(3), fromUnixTimestamp64Milli({c:Int64})), "
        "now64(3) + toIntervalMillisecond({x:Int64}), fromUnixTimestamp64Milli({d:Int64}), "
        "{v:UInt64}",
        {"k": lease.kind, "e": lease.epoch, "t": lease.token, "h": lease.holder,
         "c": int(lease.claimed_at.timestamp() * 1000) if lease.claimed_at > EPOCH0 else 0,
         "x": expires_ms, "d": int(lease.done_for.timestamp() * 1000), "v": lease.version},
        settings={"insert_deduplication_token": dedup} if dedup else None)


def acquire(db: Database, kind: str, ttl: float, holder: str | None = None) -> Lease | None:
    """Claim the lease of `kind` for `ttl` seconds if nobody holds it; None if someone does
    (or another instance claimed it at the same moment)."""
    if ttl <= 0:
        raise ValueError(f"a lease's ttl must be positive, not {ttl}")
    current = state(db, kind)
    if current.held:
        return None
    lease = Lease(kind, current.epoch + 1, uuid.uuid4().hex, holder or instances.instance_id(),
                  ttl, EPOCH0, current.done_for, deadline=0.0)
    started = time.monotonic()
    _write(db, lease, int(ttl * 1000), dedup=f"lease:{kind}:{lease.epoch}:{current.token}")
    back = db.rows("SELECT token, claimed_at FROM leases FINAL WHERE kind = {k:String} "
                   "AND epoch = {e:UInt64}", {"k": kind, "e": lease.epoch})
    if not back or back[0][0] != lease.token:
        return None            # another instance's claim of this epoch was stored
    lease.claimed_at = _utc(back[0][1])
    lease.deadline = started + ttl
    return lease


def renew(db: Database, lease: Lease) -> bool:
    """Extend `lease` by its ttl from now; False (and `lease.lost` set) when it is lost.

    Lost means: our own deadline passed, the store shows a newer epoch or an
    expired one, or the renewal was acknowledged only after the old deadline
    (another instance may have seen the lease expire in between).
    """
    if not lease.valid():
        lease.lost.set()
        return False
    current = state(db, lease.kind)
    if current.epoch != lease.epoch or current.token != lease.token or not current.held:
        lease.lost.set()
        return False
    started = time.monotonic()
    lease.version += 1
    _write(db, lease, int(lease.ttl * 1000))
    if time.monotonic() >= lease.deadline:
        lease.lost.set()
        return False
    lease.deadline = started + lease.ttl
    return True


def release(db: Database, lease: Lease, done_for: dt.datetime | None = None) -> None:
    """Give the lease up now (recording `done_for`, the fire time whose run is done)."""
    if done_for is not None and done_for > lease.done_for:
        lease.done_for = done_for
    lease.version += 1
    # a row of our own epoch: if the lease was taken over meanwhile it cannot move the
    # current (higher) epoch, and done_for is read across all epochs
    _write(db, lease, -1)
    lease.lost.set()


# -- the wrapper the schedulers use --------------------------------------------------

def last_fire_time(trigger: Any, now: dt.datetime | None = None,
                   lookback: dt.timedelta = dt.timedelta(days=8)) -> dt.datetime | None:
    """The newest fire time of an APScheduler trigger at or before `now` (None: none
    within `lookback`). Every instance computes the same instant, whatever its clock
    is off by, so it names one scheduled run across them."""
    now = now or dt.datetime.now(dt.UTC)
    # walk back in growing steps to a point before the last fire time, then forward
    step = dt.timedelta(minutes=2)
    start = now - step
    while True:
        nxt = trigger.get_next_fire_time(None, start)
        if nxt is not None and nxt <= now:
            break
        if now - start >= lookback:
            return None
        step *= 2
        start = now - min(step, lookback)
    last = None
    while nxt is not None and nxt <= now:
        last = nxt
        nxt = trigger.get_next_fire_time(last, last + dt.timedelta(seconds=1))
    return last.astimezone(dt.UTC) if last else None


class _Renewer:
    """Renews a lease every ttl/3 in a thread while the work runs."""

    def __init__(self, database: DatabaseFactory, lease: Lease) -> None:
        self._database = database
        self._lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{lease.kind}",
                                        daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._lease.ttl / 3):
            try:
                with self._database() as db:
                    if not renew(db, self._lease):
                        log.error("lost the %s lease while its work ran", self._lease.kind)
                        return
            except Exception:  # noqa: BLE001 - retried at the next beat, until the deadline
                log.exception("could not renew the %s lease", self._lease.kind)

    def __enter__(self) -> _Renewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


_running = threading.local()


def current_due() -> dt.datetime | None:
    """The fire time of the leased run executing in this thread (None: none, or not
    scheduled), for the work to record which scheduled run it is."""
    return getattr(_running, "due", None)


def run_leased(database: DatabaseFactory, kind: str, ttl: float, fn: Callable[[], Any],
               *, due: dt.datetime | None = None, holder: str | None = None
               ) -> tuple[bool, Any]:
    """Run `fn()` once under the lease of `kind`: (True, its result), or (False, None)
    when another instance holds the lease or already ran the fire time `due`."""
    with database() as db:
        lease = acquire(db, kind, ttl, holder)
    if lease is None:
        log.info("%s: another instance holds the lease; not running here", kind)
        return False, None
    if due is not None and lease.done_for >= due:
        with database() as db:
            release(db, lease)
        log.info("%s: the run due at %s was done by another instance", kind, due.isoformat())
        return False, None
    _running.due = due
    try:
        with _Renewer(database, lease):
            return True, fn()
    finally:
        _running.due = None
        try:
            with database() as db:
                release(db, lease, done_for=due)
        except Exception:  # noqa: BLE001 - the lease then expires by itself
            log.exception("could not release the %s lease", kind)


def leased(database: DatabaseFactory, kind: str, ttl: float, fn: Callable[[], Any],
           *, trigger: Any = None, holder: str | None = None) -> Callable[[], Any]:
    """`fn` wrapped to run under the lease of `kind` — what a scheduler registers.

    With the job's APScheduler `trigger`, a run is also skipped when another instance
    already ran this fire time (so an instance whose tick comes late after the first
    one released the lease does not run it again): "due now runs exactly once".
    `ttl` is how long the lease survives its holder's death; it is renewed every
    ttl/3 while `fn` runs, so it need not cover the whole run. Give a cron trigger
    (tiering.schedule.parse_cron; a leading seconds field is allowed): an interval
    trigger's fire times depend on when each instance started, so they do not name
    one run across instances — without `trigger`, the lease alone keeps two runs
    from overlapping, but an instance whose tick comes after another's run ended
    runs again.

        scheduler.add_job(leased(pool.acquire, REPORTS, 60.0, tick, trigger=trigger),
                          trigger, max_instances=1, coalesce=True)
    """
    def run() -> Any:
        due = last_fire_time(trigger) if trigger is not None else None
        ran, result = run_leased(database, kind, ttl, fn, due=due, holder=holder)
        return result if ran else None
    run.__name__ = f"leased_{kind}"
    return run


__all__ = ["ALERTS", "BACKUP", "REBALANCE", "REPORTS", "SWEEPER", "TIERING", "Lease", "LeaseState",
           "acquire", "current_due", "last_fire_time", "leased", "release", "renew", "run_leased", "state",
           "states"]
