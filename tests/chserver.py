"""A real ClickHouse HTTP server on loopback, for tests and benchmarks: the embedded engine served.

chdb's low-level `query(sql, fmt, path=…)` runs a full clickhouse-local that
reads config.xml from its working directory; `SYSTEM START LISTEN HTTP` opens
the HTTP interface for as long as that call runs. The call is kept running on
a read from a FIFO and ended by writing to it (then SIGTERM after a short grace:
`stop_served`). It runs in its own subprocess (one engine per process), bound to
127.0.0.1 on a free port.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ports import free_port

_SERVE = r"""
import sys
import chdb._chdb as chdb
data, fifo = sys.argv[1], sys.argv[2]
chdb.query("SYSTEM START LISTEN HTTP; SELECT * FROM file('" + fifo + "', 'LineAsString')",
           "TabSeparated", path=data)
"""


#: how long a served engine gets to leave by itself once its FIFO is written (seconds)
GRACE = 0.2


def stop_served(proc: subprocess.Popen, fifo: Path, grace: float = GRACE) -> None:
    """End a served engine (here or tests/chcluster.py) promptly: FIFO first, then SIGTERM.

    Writing to the FIFO ends the query that holds the listeners: the engine closes its
    listening sockets at once (nothing new gets in), then waits a fixed 5 s for open
    connections to go away (chdb's shutdown wait; `<shutdown_wait_unfinished>` in
    config.xml does not shorten it). Idle keep-alive connections — the tests' HTTP
    clients, the other nodes' `Distributed` pools — never go by themselves, so every
    stop after any work cost 5 s. After a short grace the process gets SIGTERM, which
    ends it at once (no handler). Nothing is lost by that: an INSERT or ALTER has
    written its parts to disk before it returned, and a restarted node reads them back
    (tests/test_cluster.py restarts nodes and counts every row).
    """
    if proc.poll() is None:
        # no reader on the FIFO: the engine is already on its way out (waited for below)
        with contextlib.suppress(OSError):
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"stop\n")
            os.close(fd)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class ClickHouseHTTPServer:
    """Start with `start()`, stop with `stop()`; `dsn` is the clickhouse-connect DSN."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="cdrhouse-chhttp-")
        self.workdir = Path(workdir or self._tmp.name)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.fifo = self.workdir / "stop.fifo"

    @property
    def dsn(self) -> str:
        return f"http://default:@127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ClickHouseHTTPServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config.xml").write_text(
            "<clickhouse>\n"
            "  <listen_host>127.0.0.1</listen_host>\n"
            f"  <http_port>{self.port}</http_port>\n"
            "</clickhouse>\n")
        if not self.fifo.exists():
            os.mkfifo(self.fifo)
        self.log = open(self.workdir / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(self.workdir / "data"), str(self.fifo)],
            cwd=self.workdir, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ClickHouse HTTP server exited: "
                                   f"{(self.workdir / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=1) as r:
                    if r.read().strip() == b"Ok.":
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("ClickHouse HTTP server did not start in time")

    def stop(self) -> None:
        if self.proc:
            stop_served(self.proc, self.fifo)
        if getattr(self, "log", None):
            self.log.close()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> ClickHouseHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
