"""cdrhouse on a ClickHouse cluster: the topology, the nodes, and DDL sent to each.

With `--cluster NAME` (CDRHOUSE_CLUSTER) the store's sharded tables are
`Distributed` tables over per-shard `<name>_local` tables (the schema files
rendered by cdrhouse.sql.schema.topology). Queries keep naming the public
tables: ClickHouse's Distributed engine fans reads out and routes inserts by
the sharding key. What cannot go through a Distributed table goes to the
local tables of every node from here: partition moves and drops (tiering),
schema changes, and the parts statistics of every shard.

Nodes are found in `system.clusters` of the node cdrhouse talks to; each is
reached over HTTP at its `host_name` with the scheme, port and credentials of
cdrhouse's own DSN, as on any cluster whose servers share one configuration.
Without Keeper (`replicated` false) replicated DDL is not available, so DDL
is applied node by node; with it, once, `ON CLUSTER`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cdrhouse.engine.db import Database, DatabaseError, StoreError
from cdrhouse.sql.schema.topology import Topology, local_name

ON_CLUSTER = "{on_cluster}"


def has_keeper(db: Database) -> bool:
    """Do the servers have a Keeper (ZooKeeper) connection? Then tables can be replicated."""
    try:
        return int(db.scalar("SELECT count() FROM system.zookeeper_connection") or 0) > 0
    except DatabaseError:  # the table is missing where no Keeper is configured
        return False


def topology(db: Database) -> Topology:
    """The store's topology (one node unless the config names a cluster), checked once."""
    cached = getattr(db, "_topology", None)
    if cached is not None:
        return cached
    cfg = db.config
    if not cfg.cluster:
        topo = Topology()
    else:
        if not db.scalar("SELECT count() FROM system.clusters WHERE cluster = {c:String}",
                         {"c": cfg.cluster}):
            known = [r[0] for r in db.rows("SELECT DISTINCT cluster FROM system.clusters")]
            raise StoreError(f"cluster {cfg.cluster!r} is not defined in the server's "
                             f"remote_servers (it knows: {', '.join(known) or 'none'})")
        replicated = cfg.replicated if cfg.replicated is not None else has_keeper(db)
        if replicated and not has_keeper(db):
            raise StoreError(f"CDRHOUSE_REPLICATED is set but the servers of cluster "
                             f"{cfg.cluster!r} have no Keeper: replicated tables need one")
        topo = Topology(cfg.cluster, bool(replicated))
    db._topology = topo  # type: ignore[attr-defined]
    return topo


def local(db: Database, name: str) -> str:
    """The table holding `name`'s rows on each node (`name` itself on one node)."""
    return local_name(name, topology(db))


@dataclass(frozen=True)
class Node:
    shard: int
    replica: int
    host: str
    dsn: str
    home: bool

    @property
    def label(self) -> str:
        return f"shard {self.shard} replica {self.replica} ({self.host})"


def _node_dsn(dsn: str, host: str) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc
    auth, _, hostport = netloc.rpartition("@")
    port = hostport.rsplit(":", 1)[1] if ":" in hostport.rsplit("]", 1)[-1] else ""
    new = (f"{auth}@" if auth else "") + host + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=new))


def nodes(db: Database) -> list[Node]:
    """Every node of the cluster, in shard and replica order."""
    cluster = topology(db).cluster
    if not cluster:
        return []
    home_host = urlsplit(db.config.dsn).hostname or ""
    rows = db.rows("SELECT shard_num, replica_num, host_name, host_address, is_local "
                   "FROM system.clusters WHERE cluster = {c:String} "
                   "ORDER BY shard_num, replica_num", {"c": cluster})
    return [Node(int(s), int(r), h, _node_dsn(db.config.dsn, h),
                 bool(is_local) or home_host in (h, a))
            for s, r, h, a, is_local in rows]


def home(db: Database) -> Node:
    """The node cdrhouse talks to (it holds the small tables of a sharded cluster)."""
    for node in nodes(db):
        if node.home:
            return node
    raise StoreError(
        f"{urlsplit(db.config.dsn).hostname} is not a node of cluster {topology(db).cluster} "
        "as its remote_servers name them: point CDRHOUSE_CLICKHOUSE at one of its nodes, "
        "by the host name remote_servers uses")


@contextmanager
def open_node(db: Database, node: Node, *, create: bool = True) -> Iterator[Database]:
    """A Database on one node (same database name and settings as `db`)."""
    try:
        other = Database(replace(db.config, clickhouse=node.dsn), create=create)
    except StoreError as exc:
        raise StoreError(f"cluster {topology(db).cluster}: {node.label} is unreachable: "
                         f"{exc}") from None
    try:
        yield other
    finally:
        other.close()


def each_node(db: Database, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
    """Run DDL on every node: once with ON CLUSTER when replicated, else node by node.

    `sql` marks where `ON CLUSTER <name>` goes with `{on_cluster}`. Node by node
    stops at the first node that fails, naming it; the statements sent this way
    are idempotent, so running them again completes the rest.
    """
    topo = topology(db)
    if not topo.cluster:
        db.command(sql.replace(ON_CLUSTER, ""), parameters)
        return
    if topo.replicated:
        db.command(sql.replace(ON_CLUSTER, f" ON CLUSTER {topo.cluster}"), parameters)
        return
    for node in nodes(db):
        with open_node(db, node, create=False) as other:
            try:
                other.command(sql.replace(ON_CLUSTER, ""), parameters)
            except DatabaseError as exc:
                raise StoreError(f"cluster {topo.cluster}: {node.label}: {exc}") from None


def parts_table(db: Database) -> str:
    """`system.parts` of every node (every replica) on a cluster, of this one otherwise."""
    topo = topology(db)
    return f"clusterAllReplicas('{topo.cluster}', system.parts)" if topo.cluster else "system.parts"


__all__ = ["Node", "each_node", "has_keeper", "home", "local", "nodes", "open_node",
           "parts_table", "topology"]
