"""Apache ZooKeeper on loopback, from Debian's `zookeeper` package, for tests.

The embedded engine cannot replicate (no interserver HTTP) and refuses `ON CLUSTER`,
but with a `<zookeeper>` section in its config it creates `Replicated*MergeTree`
tables for real: it checks the engine arguments, expands the macros and registers
each replica in ZooKeeper. That is what tests/test_replicated_ddl.py uses it for.

`ZooKeeper().start()` runs a standalone server on a free loopback port with its own
data directory (ready in well under a second) and `stop()` ends it. Without Java or
the package, `available()` says why; the tests then skip, unless
CDRHOUSE_REQUIRE_ZOOKEEPER=1 (CI), where that fails the run.
"""

from __future__ import annotations

import glob
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL = "apt-get install -y zookeeper"
JARS = "/usr/share/java"


def _classpath() -> str | None:
    jars = sorted(glob.glob(f"{JARS}/*.jar"))
    if not any(Path(j).name.startswith("zookeeper-3") for j in jars):
        return None
    return ":".join(jars)


def available() -> str | None:
    """None when ZooKeeper can run here, else what is missing."""
    if shutil.which("java") is None:
        return f"java is not installed ({INSTALL})"
    if _classpath() is None:
        return f"the ZooKeeper jars are not in {JARS} ({INSTALL})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ZooKeeper:
    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="cdrhouse-zk-")
        self.dir = Path(self._tmp.name)
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> ZooKeeper:
        self.port = _free_port()
        cfg = self.dir / "zoo.cfg"
        cfg.write_text(f"tickTime=2000\ndataDir={self.dir / 'data'}\nclientPort={self.port}\n"
                       "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
                       "4lw.commands.whitelist=ruok\n")
        self.log = open(self.dir / "zk.log", "ab")
        self.proc = subprocess.Popen(
            ["java", "-Xmx256m", "-cp", _classpath() or "", f"-Dzookeeper.log.dir={self.dir}",
             "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(cfg)],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._ok():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("ZooKeeper did not start: "
                                   + (self.dir / "zk.log").read_text()[-2000:])
            time.sleep(0.1)
        return self

    def _ok(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"ruok")
                return s.recv(4) == b"imok"
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        self._tmp.cleanup()
