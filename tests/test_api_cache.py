"""api/cache.py: expiry, forget, and one load for concurrent misses (pure, no engine)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cdrhouse.api.cache import TTLCache


def run(coro):
    """`asyncio.run` in a thread of its own: in a worker that ran a browser test first,
    Playwright's sync API leaves an event loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_values_expire_and_forget_drops_them() -> None:
    c: TTLCache[str] = TTLCache(0.05)
    c.put("k", "v")
    assert c.get("k") == "v"
    c.forget("k")
    assert c.get("k") is None
    c.put("k", "v")
    time.sleep(0.06)
    assert c.get("k") is None
    off: TTLCache[str] = TTLCache(0)
    off.put("k", "v")
    assert off.get("k") is None


def test_concurrent_misses_share_one_load() -> None:
    c: TTLCache[int] = TTLCache(10)
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.01)
        return 7

    async def main() -> list[int]:
        return await asyncio.gather(*(c.get_or_load("k", load) for _ in range(20)))
    assert run(main()) == [7] * 20 and loads == 1
    assert c.get("k") == 7


def test_a_load_overtaken_by_a_write_is_not_kept() -> None:
    c: TTLCache[str] = TTLCache(10)

    async def main() -> str:
        async def load() -> str:
            c.forget("k")          # a save lands while the old value is being read
            return "old"
        return await c.get_or_load("k", load)
    assert run(main()) == "old"
    assert c.get("k") is None, "a value read before a write was cached after it"


def test_a_failed_load_is_raised_to_every_waiter_and_not_kept() -> None:
    c: TTLCache[int] = TTLCache(10)

    async def load() -> int:
        await asyncio.sleep(0.01)
        raise RuntimeError("store down")

    async def main() -> list:
        return await asyncio.gather(*(c.get_or_load("k", load) for _ in range(3)),
                                    return_exceptions=True)
    out = run(main())
    assert all(isinstance(e, RuntimeError) for e in out) and c.get("k") is None
    with pytest.raises(RuntimeError):
        run(c.get_or_load("k", load))


class Loads:
    """A load that counts its calls, takes `delay` seconds and returns (or raises) in turn."""

    def __init__(self, *results: object, delay: float = 0.05) -> None:
        self.results = list(results)
        self.calls = 0
        self.delay = delay

    async def __call__(self) -> object:
        self.calls += 1
        await asyncio.sleep(self.delay)
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def test_a_fresh_value_is_served_without_a_load() -> None:
    c: TTLCache[str] = TTLCache(10, refresh_after=0.5)
    c.put("k", "v")
    load = Loads("other")
    assert run(c.get_or_load("k", load)) == "v" and load.calls == 0


def test_a_value_due_for_refresh_is_served_at_once_and_replaced_by_one_background_load() -> None:
    c: TTLCache[str] = TTLCache(1.0, refresh_after=0.1)
    c.put("k", "old")
    time.sleep(0.15)                      # due for a refresh, far from expiry
    load = Loads("new", delay=0.2)

    async def main() -> tuple[list[str], float, str | None]:
        started = time.monotonic()
        served = await asyncio.gather(*(c.get_or_load("k", load) for _ in range(20)))
        waited = time.monotonic() - started
        await asyncio.sleep(0.3)          # the background load lands
        return served, waited, c.get("k")
    served, waited, after = run(main())
    assert served == ["old"] * 20 and waited < 0.2, "a request waited for the refresh"
    assert load.calls == 1, "each request started its own refresh"
    assert after == "new"


def test_a_failed_refresh_keeps_the_value_until_it_expires() -> None:
    c: TTLCache[str] = TTLCache(0.4, refresh_after=0.1)
    c.put("k", "old")
    time.sleep(0.15)
    load = Loads(RuntimeError("store down"), RuntimeError("still down"), delay=0.01)

    async def main() -> str | None:
        assert await c.get_or_load("k", load) == "old"
        await asyncio.sleep(0.05)         # the refresh failed
        return c.get("k")
    assert run(main()) == "old"
    time.sleep(0.3)                       # past its expiry: never served older than `seconds`
    with pytest.raises(RuntimeError, match="still down"):
        run(c.get_or_load("k", load))
    assert c.get("k") is None


def test_a_refresh_overtaken_by_a_write_is_not_kept() -> None:
    c: TTLCache[str] = TTLCache(1.0, refresh_after=0.1)
    c.put("k", "old")
    time.sleep(0.15)

    async def main() -> str | None:
        async def load() -> str:
            await asyncio.sleep(0.02)
            c.forget("k")                 # a save lands while the refresh reads
            return "read before the save"
        assert await c.get_or_load("k", load) == "old"
        await asyncio.sleep(0.1)
        return c.get("k")
    assert run(main()) is None
