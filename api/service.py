"""The service's shared state and the one way an endpoint runs a query.

`Service` holds the client pool, the failed-auth limiter and the per-principal
concurrency caps; it lives on `app.state`, created by the app's lifespan — no
module globals. `Service.run` is how every endpoint reaches ClickHouse: off
the event loop, under the principal's cap, and cancelled in ClickHouse when
the client goes away before the answer is ready.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from fastapi import Request

from api.auth import Caller, FailureLimiter, authenticate
from api.errors import Problem
from engine import query as q
from engine.db import Database, StoreConfig
from engine.pool import DatabasePool, PoolExhausted

T = TypeVar("T")


@dataclass
class ServiceConfig:
    store: StoreConfig
    pool_size: int = 4
    #: concurrent queries one principal may have running
    per_principal: int = 4
    auth_failures_per_minute: int = 10


@dataclass
class Service:
    config: ServiceConfig
    pool: DatabasePool
    limiter: FailureLimiter
    _running: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, config: ServiceConfig) -> Service:
        pool = DatabasePool(config.store, config.pool_size)
        return cls(config, pool, FailureLimiter(config.auth_failures_per_minute))

    def close(self) -> None:
        self.pool.close()

    # -- authentication ------------------------------------------------------------

    async def caller(self, request: Request) -> Caller:
        def work() -> Caller:
            with self._db() as db:
                return authenticate(db, request, self.limiter)
        caller = await anyio.to_thread.run_sync(work)
        request.state.principal = caller.principal_text
        return caller

    # -- running queries -------------------------------------------------------------

    def _db(self):
        try:
            return self.pool.acquire()
        except PoolExhausted as exc:
            raise Problem("unavailable", str(exc)) from None

    def _enter(self, caller: Caller) -> None:
        with self._lock:
            n = self._running.get(caller.principal_text, 0)
            if n >= self.config.per_principal:
                raise Problem("too-many-queries",
                              f"this principal already has {n} queries running; wait for one "
                              "to finish", headers={"Retry-After": "1"})
            self._running[caller.principal_text] = n + 1

    def _leave(self, caller: Caller) -> None:
        with self._lock:
            self._running[caller.principal_text] -= 1

    async def run(self, request: Request, caller: Caller,
                  fn: Callable[[Database, str], T]) -> T:
        """Run `fn(db, query_id)` in a worker thread; cancel the query if the client leaves."""
        query_id = uuid.uuid4().hex
        self._enter(caller)
        try:
            def work() -> T:
                with self.pool.acquire() as db:
                    return fn(db, query_id)

            task = asyncio.ensure_future(anyio.to_thread.run_sync(work))
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.2)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    await anyio.to_thread.run_sync(self.cancel, caller, query_id)
                    try:
                        await task
                    except Exception:  # noqa: BLE001 - the client is gone; nothing to report
                        pass
                    raise Problem("query-cancelled", "the client went away; the query was cancelled")
        finally:
            self._leave(caller)

    def cancel(self, caller: Caller, query_id: str) -> bool:
        with self.pool.acquire() as db:
            return q.cancel(db, caller.principal, query_id)
