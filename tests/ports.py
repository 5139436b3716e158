"""A free TCP port on loopback, for the servers tests and benchmarks start.

The one copy (tests import it as `ports`, the benchmarks as `tests.ports`). The
port is free when asked; the server binds it a moment later, which is the usual
accepted race for loopback test servers (each server start retries on failure
where it matters).
"""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
