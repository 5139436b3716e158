"""Fair admission of queries to the client pool: tenants take turns.

Before this, each principal had its own cap (4) equal to the pool (4): one tenant
with two customer keys filled every client, and a different tenant's 5-row page
waited behind all of them (issue 12.6). `FairQueue` admits a query when

- fewer than `capacity` queries run (the pool's clients),
- its tenant has fewer than `per_tenant` running (below the pool, so one tenant
  can never hold every client: another tenant's request always finds one soon),
- its principal has fewer than `per_principal` running;

and, when several wait, it serves **tenants round-robin**: the next free slot goes
to the next tenant in turn that has an admissible waiter (within a tenant, first
come first served). A tenant that queues a hundred heavy queries therefore delays
another tenant's request by at most one query's turn, not by the whole queue.

Pure asyncio bookkeeping on the event loop (no threads, no I/O), so its order is
deterministic and tested directly (tests/test_admission.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field


class QueueTimeout(Exception):
    """The request waited `timeout` seconds without being admitted."""


@dataclass
class _Waiter:
    tenant: str
    principal: str
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FairQueue:
    def __init__(self, capacity: int, per_tenant: int, per_principal: int) -> None:
        if capacity < 1 or per_tenant < 1 or per_principal < 1:
            raise ValueError("capacity, per_tenant and per_principal must be at least 1")
        self.capacity = capacity
        self.per_tenant = per_tenant
        self.per_principal = per_principal
        self.running = 0
        self._by_tenant: dict[str, int] = {}
        self._by_principal: dict[str, int] = {}
        self._waiting: dict[str, deque[_Waiter]] = {}
        #: tenants with waiters, in the order they get their next turn
        self._turns: deque[str] = deque()

    # -- what a request does --------------------------------------------------------

    async def acquire(self, tenant: str, principal: str, timeout: float) -> None:
        """Wait for a slot (QueueTimeout after `timeout` s); pair with `release`."""
        waiter = _Waiter(tenant, principal)
        self._waiting.setdefault(tenant, deque()).append(waiter)
        if tenant not in self._turns:
            self._turns.append(tenant)
        self._dispatch()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.future.done() and not waiter.future.cancelled():
                # admitted at the last moment: give the slot back
                self.release(tenant, principal)
            else:
                waiter.future.cancel()
                self._forget(waiter)
            if isinstance(exc, TimeoutError):
                raise QueueTimeout(f"waited {timeout:g}s for a free slot") from None
            raise

    def release(self, tenant: str, principal: str) -> None:
        self.running -= 1
        self._by_tenant[tenant] -= 1
        self._by_principal[principal] -= 1
        if not self._by_tenant[tenant]:
            del self._by_tenant[tenant]
        if not self._by_principal[principal]:
            del self._by_principal[principal]
        self._dispatch()

    def set_caps(self, per_tenant: int, per_principal: int) -> None:
        """Change the caps (several instances share them out); on the event loop.
        Waiters a raised cap makes admissible are admitted now."""
        if per_tenant < 1 or per_principal < 1:
            raise ValueError("per_tenant and per_principal must be at least 1")
        self.per_tenant, self.per_principal = per_tenant, per_principal
        self._dispatch()

    # -- for tests and metrics ------------------------------------------------------

    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def running_of(self, tenant: str) -> int:
        return self._by_tenant.get(tenant, 0)

    # -- the scheduler --------------------------------------------------------------

    def _admissible(self, w: _Waiter) -> bool:
        return (self._by_tenant.get(w.tenant, 0) < self.per_tenant
                and self._by_principal.get(w.principal, 0) < self.per_principal)

    def _dispatch(self) -> None:
        """Hand free slots to waiters, one tenant's turn at a time."""
        while self.running < self.capacity and self._turns:
            for _ in range(len(self._turns)):
                tenant = self._turns[0]
                queue = self._waiting.get(tenant)
                chosen = next((w for w in queue or () if self._admissible(w)), None)
                if chosen is None:
                    self._turns.rotate(-1)     # blocked by its caps: the next tenant's turn
                    continue
                self._grant(chosen)
                if self._turns and self._turns[0] == tenant:
                    self._turns.rotate(-1)     # served: to the back of the line
                break
            else:
                return                         # nobody admissible now

    def _grant(self, w: _Waiter) -> None:
        self._forget(w)
        self.running += 1
        self._by_tenant[w.tenant] = self._by_tenant.get(w.tenant, 0) + 1
        self._by_principal[w.principal] = self._by_principal.get(w.principal, 0) + 1
        w.future.set_result(None)

    def _forget(self, w: _Waiter) -> None:
        queue = self._waiting.get(w.tenant)
        if queue is not None:
            with contextlib.suppress(ValueError):   # already admitted
                queue.remove(w)
            if not queue:
                del self._waiting[w.tenant]
                with contextlib.suppress(ValueError):   # not in the rotation
                    self._turns.remove(w.tenant)
