"""Small per-process caches for what every viewer request reads: short-lived by design.

Several service processes may share one store (issue 21), so a cache here can
only ever be a *short* copy of what the store holds: every entry expires after
a few seconds (`TTLCache.seconds`), and a write made through this process drops
its entry at once (`forget`). A write made through another process is seen
here within the TTL at the latest. Nothing in these caches decides *who* may
read what: keys are the API key id (one principal), never shared across keys.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")
log = logging.getLogger("cdrhouse.api")


class TTLCache(Generic[V]):
    """key → value for at most `seconds`; bounded (cleared when it grows past `max_entries`).

    A key asked for again after `refresh_after` × `seconds` is loaded again in the
    background while its value is still served (`get_or_load`): a key in steady use
    never expires in front of its requests. Why: at each expiry every request of the
    key waited for the one load (a query queued behind the pages of 32 clients); the
    value a request gets is still never older than `seconds`."""

    def __init__(self, seconds: float, max_entries: int = 10_000,
                 refresh_after: float = 0.5) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self.refresh_after = refresh_after
        #: key → (value, expires at, refresh from), times on the monotonic clock
        self._data: dict[Hashable, tuple[V, float, float]] = {}
        self._lock = threading.Lock()
        #: loads in progress (on the event loop): concurrent misses of one key share one load
        self._loading: dict[Hashable, asyncio.Future] = {}
        #: background refreshes running (a reference keeps each task alive)
        self._refreshes: set[asyncio.Task] = set()
        #: bumped by `forget`: a load that started before a forget is not kept
        self._generation = 0

    def _entry(self, key: Hashable) -> tuple[V, bool] | None:
        """(value, whether it is due for a refresh), or None if absent or expired."""
        if self.seconds <= 0:
            return None
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return None
            now = time.monotonic()
            if hit[1] <= now:
                self._data.pop(key, None)
                return None
            return hit[0], hit[2] <= now

    def get(self, key: Hashable) -> V | None:
        entry = self._entry(key)
        return None if entry is None else entry[0]

    def put(self, key: Hashable, value: V, read_at: float | None = None) -> None:
        """Keep `value` for `seconds` from `read_at` (monotonic; default now): the time
        the store was read, so a slow load does not serve it for longer."""
        if self.seconds <= 0:
            return
        with self._lock:
            if len(self._data) >= self.max_entries:
                self._data.clear()
            at = time.monotonic() if read_at is None else read_at
            self._data[key] = (value, at + self.seconds, at + self.seconds * self.refresh_after)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._generation += 1
            self._data.pop(key, None)

    async def get_or_load(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        """The cached value, else `load()` — once for all callers missing the same key at
        the same time (at expiry, 32 waiting requests of one key would otherwise each
        run the same lookup, each on a pooled client). A value loaded while the key was
        forgotten (a write in between) is returned to its callers but not kept. A value
        due for a refresh is returned at once, and one background `load()` replaces it."""
        entry = self._entry(key)
        if entry is not None:
            value, due = entry
            if due and key not in self._loading:
                task = asyncio.ensure_future(self._load(key, load, self._begin(key), True))
                self._refreshes.add(task)
                task.add_done_callback(self._refreshes.discard)
            return value
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        return await self._load(key, load, self._begin(key), False)  # type: ignore[return-value]

    def _begin(self, key: Hashable) -> tuple[asyncio.Future, int]:
        """Register the key's one load in progress (before any await: a request in the
        same turn of the loop must see it)."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        return future, self._generation

    async def _load(self, key: Hashable, load: Callable[[], Awaitable[V]],
                    begun: tuple[asyncio.Future, int], background: bool) -> V | None:
        """`load()` as the key's one load in progress: its value is kept (unless the key
        was forgotten meanwhile) and given to whoever waits for it. A failed background
        refresh is logged and leaves the current value to its expiry."""
        future, generation = begun
        started = time.monotonic()
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            if background and isinstance(exc, Exception):
                log.warning("refreshing a cached value failed: %s", exc)
                return None
            raise
        finally:
            self._loading.pop(key, None)
        if generation == self._generation:
            self.put(key, value, read_at=started)
        future.set_result(value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
