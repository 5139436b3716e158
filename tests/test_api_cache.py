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
