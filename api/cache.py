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
import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class TTLCache(Generic[V]):
    """key → value for at most `seconds`; bounded (cleared when it grows past `max_entries`)."""

    def __init__(self, seconds: float, max_entries: int = 10_000) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._data: dict[Hashable, tuple[V, float]] = {}
        self._lock = threading.Lock()
        #: loads in progress (on the event loop): concurrent misses of one key share one load
        self._loading: dict[Hashable, asyncio.Future] = {}
        #: bumped by `forget`: a load that started before a forget is not kept
        self._generation = 0

    def get(self, key: Hashable) -> V | None:
        if self.seconds <= 0:
            return None
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return None
            if hit[1] <= time.monotonic():
                self._data.pop(key, None)
                return None
            return hit[0]

    def put(self, key: Hashable, value: V) -> None:
        if self.seconds <= 0:
            return
        with self._lock:
            if len(self._data) >= self.max_entries:
                self._data.clear()
            self._data[key] = (value, time.monotonic() + self.seconds)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._generation += 1
            self._data.pop(key, None)

    async def get_or_load(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        """The cached value, else `load()` — once for all callers missing the same key at
        the same time (at expiry, 32 waiting requests of one key would otherwise each
        run the same lookup, each on a pooled client). A value loaded while the key was
        forgotten (a write in between) is returned to its callers but not kept."""
        hit = self.get(key)
        if hit is not None:
            return hit
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        generation = self._generation
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            self._loading.pop(key, None)
        if generation == self._generation:
            self.put(key, value)
        future.set_result(value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
