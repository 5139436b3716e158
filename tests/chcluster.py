"""A sharded ClickHouse cluster on loopback, for tests and benchmarks: embedded engines served.

Each node is the embedded engine in its own subprocess (one engine per
process), with its own data directory and a config.xml in its working
directory that declares its ports, its `{shard}`/`{replica}` macros and a
`remote_servers` cluster naming every node (see /work/shared/DESIGN.md, "A
cluster of embedded nodes", and tests/chserver.py for the single-node variant).

Every node listens on its own loopback address (127.x.y.1, 127.x.y.2, …) with
the same HTTP and TCP ports, as the servers of a real cluster do: cdrhouse then
finds every node's HTTP address from `system.clusters` by itself, with no
per-node configuration (engine/cluster.py).

What the embedded engine cannot do here: interserver HTTP, Keeper, `ON CLUSTER`.
So this cluster is sharded, not replicated; the replicated schema is checked
as rendered DDL (tests/test_cluster_schema.py).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from chserver import stop_served

_SERVE = r"""
import sys
import chdb._chdb as chdb
data, fifo = sys.argv[1], sys.argv[2]
chdb.query("SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
           "SELECT count() FROM file('" + fifo + "', 'LineAsString')",
           "TabSeparated", path=data)
"""

CLUSTER = "cdrhouse_test"


def _free_ports(hosts: list[str]) -> tuple[int, int]:
    """Two ports free on every one of `hosts`."""
    for _ in range(50):
        ports = []
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            ports.append(s.getsockname()[1])
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            ports.append(s.getsockname()[1])
        if ports[0] == ports[1]:
            continue
        try:
            for host in hosts[1:]:
                for port in ports:
                    with socket.socket() as s:
                        s.bind((host, port))
        except OSError:
            continue
        return ports[0], ports[1]
    raise RuntimeError("no free port pair on the loopback addresses")


class Node:
    def __init__(self, workdir: Path, host: str, shard: int, replica: int) -> None:
        self.workdir = workdir
        self.host = host
        self.shard = shard
        self.replica = replica
        self.proc: subprocess.Popen | None = None
        self.fifo = workdir / "stop.fifo"
        self.http_port = 0

    @property
    def dsn(self) -> str:
        return f"http://default:@{self.host}:{self.http_port}"

    def start(self, config: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config.xml").write_text(config)
        if not self.fifo.exists():
            os.mkfifo(self.fifo)
        self.log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(self.workdir / "data"), str(self.fifo)],
            cwd=self.workdir, stdout=self.log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"cluster node {self.host} exited: "
                               f"{(self.workdir / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/ping",
                                        timeout=1) as r:
                return r.read().strip() == b"Ok."
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_served(self.proc, self.fifo)
        if getattr(self, "log", None):
            self.log.close()
            self.log = None


class LocalCluster:
    """`shards` embedded nodes, one replica each, on 127.x.y.1…; `start()`, `stop()`.

    `dsn` is the first node's: cdrhouse talks to that one and reaches the others
    through the `Distributed` tables (and, for DDL, through their HTTP ports).
    A node can be stopped and started again (`stop_node`, `start_node`) to test
    what happens when a shard is unreachable, and a shard added (`add_shard`) as an
    operator grows a cluster. `weights`: each shard's `<weight>` (default 1).
    """

    def __init__(self, shards: int = 2, workdir: Path | None = None,
                 name: str = CLUSTER, weights: list[int] | None = None) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="cdrhouse-cluster-")
        self.workdir = Path(workdir or self._tmp.name)
        self.name = name
        net = f"127.{random.randint(2, 250)}.{random.randint(2, 250)}"
        self.nodes = [Node(self.workdir / f"node{i + 1}", f"{net}.{i + 1}", i + 1, 1)
                      for i in range(shards)]
        self.http_port, self.tcp_port = _free_ports([n.host for n in self.nodes])
        for node in self.nodes:
            node.http_port = self.http_port
        self.weights = list(weights or [1] * shards)

    @property
    def dsn(self) -> str:
        return self.nodes[0].dsn

    def _config(self, node: Node) -> str:
        shards = "".join(
            f"<shard><weight>{w}</weight><replica><host>{n.host}</host>"
            f"<port>{self.tcp_port}</port></replica></shard>"
            for n, w in zip(self.nodes, self.weights))
        return (
            "<clickhouse>\n"
            f"  <listen_host>{node.host}</listen_host>\n"
            f"  <http_port>{self.http_port}</http_port>\n"
            f"  <tcp_port>{self.tcp_port}</tcp_port>\n"
            # default 0 in the embedded engine: queued Distributed inserts would never leave
            "  <background_distributed_schedule_pool_size>4</background_distributed_schedule_pool_size>\n"
            f"  <macros><shard>{node.shard:02d}</shard><replica>r{node.replica}</replica>"
            f"<cluster>{self.name}</cluster></macros>\n"
            f"  <remote_servers><{self.name}>{shards}</{self.name}></remote_servers>\n"
            "</clickhouse>\n")

    def start(self, timeout: float = 60.0) -> LocalCluster:
        for node in self.nodes:
            node.start(self._config(node))
        self._wait(self.nodes, timeout)
        return self

    def _wait(self, nodes: list[Node], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(nodes)
        while waiting and time.monotonic() < deadline:
            waiting = [n for n in waiting if not n.ready()]
            if waiting:
                time.sleep(0.2)
        if waiting:
            self.stop()
            raise RuntimeError(f"cluster nodes {[n.host for n in waiting]} did not start in time")

    def stop_node(self, index: int) -> None:
        self.nodes[index].stop()

    def start_node(self, index: int, timeout: float = 60.0) -> None:
        node = self.nodes[index]
        node.start(self._config(node))
        self._wait([node], timeout)

    def add_shard(self, weight: int = 1, timeout: float = 60.0) -> None:
        """A new node as one more shard, as an operator adds one: every node's
        `remote_servers` gains it (the running nodes restart to read it), then it starts
        empty. Its address is the next one on the cluster's loopback network."""
        net, last = self.nodes[-1].host.rsplit(".", 1)
        node = Node(self.workdir / f"node{len(self.nodes) + 1}", f"{net}.{int(last) + 1}",
                    len(self.nodes) + 1, 1)
        node.http_port = self.http_port
        with socket.socket() as s:          # the cluster's ports must be free there too
            s.bind((node.host, self.http_port))
        with socket.socket() as s:
            s.bind((node.host, self.tcp_port))
        self.nodes.append(node)
        self.weights.append(weight)
        self._restart(len(self.nodes) - 1, timeout)
        node.start(self._config(node))
        self._wait([node], timeout)

    def set_weight(self, index: int, weight: int, timeout: float = 60.0) -> None:
        """Shard `index`'s weight in every node's `remote_servers` (0: it gets no more
        inserts, as an operator retires a shard); every node restarts to read it."""
        self.weights[index] = weight
        self._restart(len(self.nodes), timeout)

    def remove_last_shard(self, timeout: float = 60.0) -> None:
        """The last shard leaves the cluster: stopped, and gone from every other node's
        `remote_servers` (they restart to read it). Its data directory stays."""
        self.nodes.pop().stop()
        self.weights.pop()
        self._restart(len(self.nodes), timeout)

    def _restart(self, count: int, timeout: float) -> None:
        """The first `count` nodes stopped and started again with the current config."""
        for i in range(count):
            self.stop_node(i)
            self.start_node(i, timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._tmp:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
