"""The service's shared state and the one way an endpoint runs a query.

`Service` holds the client pool, the failed-auth limiter, the fair admission
queue (api/admission.py: a cap per tenant below the pool, tenants served
round-robin, a cap per principal) and the job runner; it lives on `app.state`,
created by the app's lifespan — no module globals. `Service.run` is how every
endpoint reaches ClickHouse: off the event loop, admitted by the queue, and
cancelled in ClickHouse when the client goes away before the answer is ready.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
from fastapi import Request

from cdrhouse.api.admission import FairQueue, QueueTimeout
from cdrhouse.api.cache import TTLCache
from cdrhouse.api.auth import (Caller, FailureLimiter, StoreFailureLimiter, authenticate,
                               secret_from, verify)
from cdrhouse.api.errors import Problem
from cdrhouse.backup.location import BackupConfig
from cdrhouse.engine import query as q
from cdrhouse.engine.audit import AuditSettings
from cdrhouse.engine.alerts import AlertConfig
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.jobs import JobRunner
from cdrhouse.engine.pool import DatabasePool, PoolExhausted
from cdrhouse.sql.recordings import RecordingPolicy
from cdrhouse.tiering.policy import DEFAULT_KEEP_MONTHS
from cdrhouse.tiering.reader import WarmReader
from cdrhouse.tiering.store import ArchiveConfig, open_archive

T = TypeVar("T")

log = logging.getLogger("cdrhouse.api")


@dataclass
class ServiceConfig:
    store: StoreConfig
    pool_size: int = 4
    #: concurrent queries one tenant may have running (all its keys together); None:
    #: one less than the pool, so another tenant always finds a client soon
    per_tenant: int | None = None
    #: concurrent queries one principal may have running; more wait in line…
    per_principal: int = 4
    #: …for at most this long before getting 429
    queue_seconds: float = 10.0
    auth_failures_per_minute: int = 10
    auth_cache_seconds: float = 5.0
    #: how long a key's preferences are reused without reading them again (api/cache.py):
    #: a save through this process applies at once, through another one within this time
    prefs_cache_seconds: float = 2.0
    #: ETag / If-None-Match on viewer pages (api/conditional.py), CDRHOUSE_PAGE_ETAGS=on.
    #: Off by default: every tagged answer reads the data version first, which cost
    #: varied-parameter load up to half its throughput (benchmarks/README.md)
    page_etags: bool = field(
        default_factory=lambda: os.environ.get("CDRHOUSE_PAGE_ETAGS", "off").lower() == "on")
    #: where archived months live (default: <data-dir>/warm)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    #: when the tiering job runs inside the service (cron, UTC); None: never
    tier_cron: str | None = None
    keep_months: int = DEFAULT_KEEP_MONTHS
    #: which recording URLs /v1/cdrs/{id}/recording redirects to (sql/recordings.py)
    recordings: RecordingPolicy = field(default_factory=RecordingPolicy)
    #: where backups go (default: beside the archive) and when they run (None: never)
    backup: BackupConfig = field(default_factory=BackupConfig)
    backup_cron: str | None = None
    #: run scheduled exports and reports (api/scheduler.py) in this process, ticking
    #: every `schedule_tick_seconds`
    schedules: bool = False
    schedule_tick_seconds: float = 60.0
    #: cap on a JSON query answer (None: twice the role's max_result_bytes, sql/limits.py)
    max_response_bytes: int | None = None
    #: proxies whose X-Forwarded-For / -Proto are believed (addresses or networks; "*": any)
    forwarded_allow_ips: tuple[str, ...] = ()
    #: at shutdown, how long running jobs (recalc, tiering) get to finish before
    #: they are left marked for resume
    job_shutdown_seconds: float = 30.0
    #: the audit trail: on by default; its flush cadence and retention (engine/audit.py)
    audit: AuditSettings = field(default_factory=AuditSettings)
    #: anomaly alerts: seconds between evaluations inside the service (None: never),
    #: detector settings from configuration, and whether customer / carrier keys see
    #: the alerts about their own account
    alert_every: int | None = None
    alert_config: AlertConfig = field(default_factory=AlertConfig)
    alerts_for_accounts: bool = True
    #: after starting, move every object made so far out of the cyclic garbage
    #: collector's sight (`gc.freeze`): a serving process (`cdrhouse serve`) then no
    #: longer walks the app's, the drivers' and the parsers' objects in each full
    #: collection, which paused it 70-80 ms at a time under load (20-30 ms after).
    #: Off by default: a test process makes many apps, and frozen objects are never freed
    freeze_gc: bool = False
    #: this instance's name among several (default host:pid; engine/instances.py)
    instance_name: str | None = None
    #: set by `serve --workers N`: where the workers share their /metrics numbers, and
    #: how often each publishes them (api/workermetrics.py)
    metrics_dir: Path | None = None
    metrics_every: float = 5.0
    #: how often (s) an instance looks for jobs whose instance died (api/scaleout.py);
    #: 0: never
    sweep_seconds: float = 15.0


def tenant_cap(config: ServiceConfig) -> int:
    """Queries one tenant may run at once: below the pool unless the pool is one client."""
    if config.per_tenant is not None:
        return max(1, min(config.per_tenant, config.pool_size))
    return max(1, config.pool_size - 1)


def admission_tenant(caller: Caller) -> str:
    """The turn a caller's queries take: its tenant; the platform admin has its own."""
    return caller.principal.tenant or "\x00admin"


@dataclass
class Service:
    config: ServiceConfig
    pool: DatabasePool
    limiter: FailureLimiter
    #: reads archived months (include_archive, /v1/archive)
    warm: WarmReader
    #: long-running work (recalc jobs, scheduled tiering): known, waited for at close
    jobs: JobRunner = field(default_factory=JobRunner)
    admission: FairQueue | None = None
    #: sha256 of a secret → (caller, expires at, re-check from), on the monotonic clock
    _auth_cache: dict[str, tuple[Caller, float, float]] = field(default_factory=dict)
    #: key lookups in progress (on the event loop), by the same hash as `_auth_cache`
    _auth_pending: dict[str, asyncio.Future] = field(default_factory=dict)
    #: background re-checks of cached keys in progress (hashes), and their tasks
    _auth_rechecking: set[str] = field(default_factory=set)
    _auth_tasks: set[asyncio.Task] = field(default_factory=set)
    #: key id → Preferences (api/cache.py; see ServiceConfig.prefs_cache_seconds)
    prefs: TTLCache = field(default_factory=lambda: TTLCache(2.0))
    #: live instances sharing the caps (share_caps), and the event loop admission runs on
    instances: int = 1
    loop: asyncio.AbstractEventLoop | None = None
    #: what every answer says of the store now (api/notice.py: a rebalance moving rows),
    #: refreshed by the heartbeat; None while the store is exact
    notice: str | None = None

    @classmethod
    def start(cls, config: ServiceConfig) -> Service:
        pool = DatabasePool(config.store, config.pool_size)
        store = open_archive(config.archive, config.store.data_dir)
        return cls(config, pool, StoreFailureLimiter(config.auth_failures_per_minute),
                   WarmReader(store), admission=FairQueue(
                       config.pool_size, tenant_cap(config), config.per_principal),
                   prefs=TTLCache(config.prefs_cache_seconds))

    def share_caps(self, instances: int) -> None:
        """Take this instance's share of the caps when `instances` serve the store.

        The per-principal cap, and the per-tenant cap when one is configured
        (--per-tenant), are limits for the whole service: each instance takes
        ceil(cap / instances), at least 1, so across all of them a key (tenant) may
        run between the cap and cap + instances - 1 queries at once, and one whose
        requests all land on one instance gets only that instance's share. The
        default tenant cap (one less than the pool) protects this instance's own
        pool, so it stays whole."""
        queue = self.admission
        if queue is None:
            return
        def share(cap: int) -> int:
            return max(1, -(-cap // max(1, instances)))
        self.instances = instances
        tenant = (share(tenant_cap(self.config)) if self.config.per_tenant is not None
                  else tenant_cap(self.config))
        caps = tenant, share(self.config.per_principal)
        if (queue.per_tenant, queue.per_principal) == caps:
            return
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(queue.set_caps, *caps)
        else:
            queue.set_caps(*caps)

    def close(self) -> None:
        """Wait for running jobs (up to job_shutdown_seconds; the rest are left for
        resume), then close the clients."""
        self.jobs.shutdown(self.config.job_shutdown_seconds)
        self.pool.close()

    # -- authentication ------------------------------------------------------------

    async def caller(self, request: Request) -> Caller:
        """The caller behind the request's key. A verified key is remembered for
        `auth_cache_seconds` (a revocation takes effect within that time), which
        saves two lookups per request under load. A key in use is checked again in
        the background from half that time on (`_recheck`), so it does not expire in
        front of its requests."""
        secret = secret_from(request) or ""
        cache_key = hashlib.sha256(secret.encode()).hexdigest()
        hit = self._auth_cache.get(cache_key)
        now = time.monotonic()
        if hit and hit[1] > now:
            caller = hit[0]
            if hit[2] <= now and cache_key not in self._auth_rechecking:
                self._recheck(cache_key, secret)
        else:
            caller = await self._look_up(request, cache_key)
        request.state.principal = caller.principal_text
        request.state.key_id = caller.key_id
        return caller

    async def _look_up(self, request: Request, cache_key: str) -> Caller:
        """Verify the request's key in the store, once for all requests that miss the
        cache with the same key at the same time: at expiry, every waiting request of a
        busy key looked it up again (32 lookups, each on a pooled client, instead of 1).

        Only a success is shared, and it is what a cache hit would have given those
        requests a moment later. A failed lookup is not: each waiting request then
        makes its own, so the failed-attempt limit counts every request of its client
        as before."""
        pending = self._auth_pending.get(cache_key)
        if pending is not None:
            await asyncio.wait({pending})   # not cancelled with us; a failure is not raised
            if not pending.cancelled() and pending.exception() is None:
                return pending.result()

        def work() -> Caller:
            with self._db() as db:
                return authenticate(db, request, self.limiter)
        started = time.monotonic()
        # the lookup others wait for, unless one is already in progress (this request
        # then retries after its failure, on its own)
        future: asyncio.Future | None = None
        if cache_key not in self._auth_pending:
            future = asyncio.get_running_loop().create_future()
            self._auth_pending[cache_key] = future
        try:
            caller = await anyio.to_thread.run_sync(work)
        except BaseException as exc:
            if future is not None:
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                    future.exception()      # retrieved: no warning when nobody waited
                else:
                    future.cancel()
            raise
        finally:
            if future is not None:
                self._auth_pending.pop(cache_key, None)
        if future is not None:
            future.set_result(caller)
        self._remember(cache_key, caller, started)
        return caller

    def _remember(self, cache_key: str, caller: Caller, read_at: float) -> None:
        """Keep a verified key for `auth_cache_seconds` from when the store was read."""
        if len(self._auth_cache) > 10_000:
            self._auth_cache.clear()
        seconds = self.config.auth_cache_seconds
        self._auth_cache[cache_key] = (caller, read_at + seconds, read_at + seconds / 2)

    def _recheck(self, cache_key: str, secret: str) -> None:
        """Verify a cached key again in the background, while its requests go on with the
        cached caller (which stays no older than `auth_cache_seconds`). Why: at each
        expiry, every request of a busy key waited for the one lookup, queued behind the
        pages of all clients. A key found revoked (or its account gone) is dropped: the
        next request makes the full lookup, which refuses it and counts the failure.
        The failed-attempt limiter is not consulted here: it limits guesses, which
        always miss this cache and still meet it (`authenticate`)."""
        self._auth_rechecking.add(cache_key)

        def work() -> Caller:
            with self._db() as db:
                return verify(db, secret)

        async def run() -> None:
            started = time.monotonic()
            try:
                caller = await anyio.to_thread.run_sync(work)
            except Problem as exc:
                if exc.slug in ("unauthorized", "forbidden"):
                    self._auth_cache.pop(cache_key, None)
                # else (a full pool): the cached caller stays to its expiry
            except Exception as exc:           # the store unreachable: likewise
                log.warning("re-checking a cached API key failed: %s", exc)
            else:
                self._remember(cache_key, caller, started)
            finally:
                self._auth_rechecking.discard(cache_key)
        task = asyncio.ensure_future(run())
        self._auth_tasks.add(task)
        task.add_done_callback(self._auth_tasks.discard)

    # -- running queries -------------------------------------------------------------

    @contextmanager
    def _db(self) -> Iterator[Database]:
        """A pooled client; an exhausted pool is a 503, not a 500."""
        try:
            with self.pool.acquire() as db:
                yield db
        except PoolExhausted as exc:
            raise Problem("unavailable", str(exc)) from None

    async def enter_slot(self, caller: Caller) -> None:
        """Be admitted to run one query (waiting in line, tenants in turn; then 429).

        Pair with `leave_slot`, on the event loop. `run` holds one for a query;
        a download holds one for as long as it streams.
        """
        assert self.admission is not None
        tenant = admission_tenant(caller)
        try:
            await self.admission.acquire(tenant, caller.principal_text,
                                         self.config.queue_seconds)
        except QueueTimeout:
            running = self.admission.running_of(tenant)
            raise Problem("too-many-queries",
                          f"no query slot became free within {self.config.queue_seconds:g}s "
                          f"(this tenant has {running} queries running, at most "
                          f"{self.admission.per_tenant}; at most {self.admission.per_principal} "
                          f"per key on this instance); retry later",
                          headers={"Retry-After": "1"}) from None

    def leave_slot(self, caller: Caller) -> None:
        assert self.admission is not None
        self.admission.release(admission_tenant(caller), caller.principal_text)

    async def run(self, request: Request, caller: Caller,
                  fn: Callable[[Database, str], T]) -> T:
        """Run `fn(db, query_id)` in a worker thread; cancel the query if the client leaves."""
        query_id = uuid.uuid4().hex
        await self.enter_slot(caller)
        assert self.admission is not None
        # ClickHouse pauses lower-priority queries while higher ones run: a tenant's
        # first running query gets priority 1, its second 2, …, so one tenant's pile
        # of heavy queries yields the CPU to another tenant's single page
        priority = max(1, self.admission.running_of(admission_tenant(caller)))
        try:
            def work() -> T:
                with self._db() as db:
                    db.defaults = {"priority": priority}
                    try:
                        return fn(db, query_id)
                    finally:
                        db.defaults = {}

            task = asyncio.ensure_future(anyio.to_thread.run_sync(work))
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.2)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    await anyio.to_thread.run_sync(self.cancel, caller, query_id)
                    with contextlib.suppress(Exception):  # the client is gone: nothing to report
                        await task
                    raise Problem("query-cancelled", "the client went away; the query was cancelled")
        finally:
            self.leave_slot(caller)

    def cancel(self, caller: Caller, query_id: str) -> bool:
        with self.pool.acquire() as db:
            return q.cancel(db, caller.principal, query_id)
