"""Fair scheduling (issue 12.6): tenants take turns for the client pool; joins fail fast.

The admission queue is asyncio bookkeeping, so its order is tested directly and
exactly: which request is admitted when a slot frees, not how long anything took.
The join limit is tested on a real engine, on both interfaces.
"""

from __future__ import annotations

import asyncio

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from cdrhouse.api.admission import FairQueue, QueueTimeout
from cdrhouse.api.service import ServiceConfig, tenant_cap
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.sql.guard import compile_user_sql
from cdrhouse.sql.limits import explain_limit_error, limits_for
from cdrhouse.sql.principal import Principal


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    """Starts acquires as tasks and records the order in which they are admitted."""

    def __init__(self, queue: FairQueue) -> None:
        self.queue, self.order, self.tasks = queue, [], {}

    def ask(self, name: str, tenant: str, principal: str | None = None,
            timeout: float = 600) -> asyncio.Task:
        async def go() -> None:
            await self.queue.acquire(tenant, principal or f"{tenant}/key", timeout)
            self.order.append(name)
        self.tasks[name] = asyncio.ensure_future(go())
        return self.tasks[name]


def test_a_flooding_tenant_stays_below_the_pool_and_another_tenant_gets_in_at_once() -> None:
    async def scenario() -> None:
        q = FairQueue(capacity=4, per_tenant=3, per_principal=4)
        r = Recorder(q)
        for i in range(10):
            r.ask(f"a{i}", "acme", principal=f"acme/k{i % 2}")  # two keys of one tenant
        await _settle()
        assert q.running_of("acme") == 3 and q.waiting() == 7
        r.ask("b0", "globex")
        await _settle()
        assert r.order == ["a0", "a1", "a2", "b0"]      # no wait for acme's queue
        for t in r.tasks.values():
            t.cancel()
    asyncio.run(scenario())


def test_when_the_pool_is_full_tenants_are_served_round_robin() -> None:
    tenant_of = {"a": "acme", "b": "globex", "c": "initech"}

    async def scenario() -> None:
        q = FairQueue(capacity=2, per_tenant=2, per_principal=10)
        r = Recorder(q)
        for i in range(7):
            r.ask(f"a{i}", "acme")
        await _settle()
        r.ask("b0", "globex")
        r.ask("b1", "globex")
        r.ask("c0", "initech")
        await _settle()
        assert r.order == ["a0", "a1"]
        for finished in range(8):               # the oldest running query ends, one by one
            tenant = tenant_of[r.order[finished][0]]
            q.release(tenant, f"{tenant}/key")
            await _settle()
        # globex's and initech's requests came in behind five of acme's and were
        # admitted after one of them each, not after all of them (a FIFO would give
        # a0 … a6, b0, b1, c0)
        assert r.order == ["a0", "a1", "a2", "b0", "c0", "a3", "b1", "a4", "a5", "a6"]
    asyncio.run(scenario())


def test_a_key_at_its_cap_does_not_block_another_key_of_the_tenant() -> None:
    async def scenario() -> None:
        q = FairQueue(capacity=4, per_tenant=3, per_principal=1)
        r = Recorder(q)
        r.ask("k1-0", "acme", "acme/k1")
        r.ask("k1-1", "acme", "acme/k1")
        r.ask("k2-0", "acme", "acme/k2")
        await _settle()
        assert r.order == ["k1-0", "k2-0"] and q.waiting() == 1
        q.release("acme", "acme/k1")
        await _settle()
        assert r.order == ["k1-0", "k2-0", "k1-1"]
    asyncio.run(scenario())


def test_a_request_that_waits_too_long_leaves_the_queue_clean() -> None:
    async def scenario() -> None:
        q = FairQueue(capacity=1, per_tenant=1, per_principal=1)
        await q.acquire("acme", "acme/k", 1)
        with pytest.raises(QueueTimeout):
            await q.acquire("globex", "globex/k", 0.01)
        waiting = asyncio.ensure_future(q.acquire("initech", "initech/k", 600))
        await _settle()
        waiting.cancel()                        # the client went away while waiting
        await _settle()
        assert q.waiting() == 0 and q.running == 1
        q.release("acme", "acme/k")
        assert q.running == 0
        await q.acquire("globex", "globex/k", 1)  # the slot was not lost
        assert q.running == 1
    asyncio.run(scenario())


@pytest.mark.parametrize("pool, per_tenant, expected", [
    (4, None, 3), (2, None, 1), (1, None, 1), (8, None, 7), (4, 2, 2), (4, 9, 4), (4, 0, 1),
])
def test_the_tenant_cap_is_below_the_pool(pool: int, per_tenant: int | None,
                                          expected: int) -> None:
    config = ServiceConfig(store=StoreConfig(data_dir="."), pool_size=pool, per_tenant=per_tenant)
    assert tenant_cap(config) == expected


def test_a_hostile_self_join_fails_fast_on_the_join_limit(store: Database) -> None:
    store.command(
        "INSERT INTO cdr_records (tenant_id, call_id, start_time, end_time, duration, billsec, "
        "customer_id, carrier_id, disposition, src_number, dst_number, version) "
        "SELECT 'acme', toString(number), now64(3) - number, now64(3) - number, 1, 1, 1, 2, "
        "'ANSWERED', '4420', toString(number), 1 FROM numbers(20000)")
    who = Principal.customer("acme", 1)
    compiled = compile_user_sql(
        "SELECT count() FROM cdrs AS a JOIN cdrs AS b ON a.src_number = b.src_number", who)
    limits = limits_for("customer", max_bytes_in_join=64 * 1024)
    with pytest.raises(DatabaseError) as info:
        store.query(compiled.sql, parameters=compiled.parameters, settings=limits)
    explained = explain_limit_error(info.value, limits)
    assert explained.startswith("the JOIN's right side is larger than allowed (at most 65,536")
    assert "SET_SIZE_LIMIT_EXCEEDED" in explained and "join a smaller set" in explained
