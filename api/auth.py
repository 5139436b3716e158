"""Authentication: API key → principal, and a limit on failed attempts per client.

The principal comes only from the key, never from a query parameter. A key is
sent as `Authorization: Bearer <secret>` or `X-API-Key: <secret>`. Failed
attempts are counted per client address in a sliding window — in the store, so
every service process shares the count (`StoreFailureLimiter`); past the limit
the client gets 429 with Retry-After until the window moves on.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from fastapi import Request

from cdrhouse.api.errors import Problem
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import keys
from cdrhouse.engine.db import Database
from cdrhouse.sql.principal import Principal


@dataclass(frozen=True)
class Caller:
    key_id: str
    principal: Principal
    principal_text: str


class FailureLimiter:
    """At most `limit` failed authentications per client per `window` seconds."""

    def __init__(self, limit: int = 10, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        q = self._fails.setdefault(client, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def check(self, client: str, db: Database | None = None) -> None:
        """429 when `client` is past the limit (`db`: unused here, see the subclass)."""
        now = time.monotonic()
        with self._lock:
            q = self._recent(client, now)
            if len(q) >= self.limit:
                retry = max(1, int(q[0] + self.window - now) + 1)
                raise Problem("rate-limited",
                              f"too many failed authentications from this client; retry in {retry}s",
                              headers={"Retry-After": str(retry)})

    def fail(self, client: str, db: Database | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent(client, now).append(now)


class StoreFailureLimiter(FailureLimiter):
    """The same limit, counted in the store (`auth_failures`, schema 013): shared by
    every service process, so a client cannot dodge it by landing on another one
    behind the load balancer. The window is judged by the server's clock.

    Without a database (`db=None`) it falls back to this process's own count.
    """

    def check(self, client: str, db: Database | None = None) -> None:
        if db is None:
            return super().check(client)
        count, wait_ms = db.rows(
            "SELECT count(), if(count() = 0, 0, toUnixTimestamp64Milli(min(at)) + {w:Int64} - "
            "toUnixTimestamp64Milli(now64(3))) FROM auth_failures WHERE client = {c:String} "
            "AND at > now64(3) - toIntervalMillisecond({w:Int64})",
            {"c": client, "w": int(self.window * 1000)})[0]
        if count >= self.limit:
            retry = max(1, int(wait_ms) // 1000 + 1)
            raise Problem("rate-limited",
                          f"too many failed authentications from this client; retry in {retry}s",
                          headers={"Retry-After": str(retry)})

    def fail(self, client: str, db: Database | None = None) -> None:
        if db is None:
            return super().fail(client)
        db.command("INSERT INTO auth_failures (at, client) SELECT now64(3), {c:String}",
                   {"c": client})


def secret_from(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


def authenticate(db: Database, request: Request, limiter: FailureLimiter) -> Caller:
    client = request.client.host if request.client else "unknown"
    limiter.check(client, db)
    secret = secret_from(request)
    if not secret:
        limiter.fail(client, db)
        raise Problem("unauthorized", "send an API key as 'Authorization: Bearer <key>' or "
                                      "'X-API-Key: <key>'", headers={"WWW-Authenticate": "Bearer"})
    try:
        return verify(db, secret)
    except Problem as exc:
        if exc.slug == "unauthorized":
            limiter.fail(client, db)
        raise


def verify(db: Database, secret: str) -> Caller:
    """The caller behind `secret` as the store has it now (401 if the key is unknown or
    revoked, 403 if its account is gone). No failure is counted here: `authenticate`
    counts a client's; a service re-checking a key it holds is not a client's attempt."""
    key = keys.authenticate(db, secret)
    if key is None:
        raise Problem("unauthorized", "the API key is not valid (unknown or revoked)",
                      headers={"WWW-Authenticate": "Bearer"})
    try:
        principal = acc.resolve_principal(db, key.principal)
    except acc.AccountError:
        # the key's account no longer exists: the key grants nothing
        raise Problem("forbidden", "the API key's account no longer exists") from None
    return Caller(key.key_id, principal, key.principal)
