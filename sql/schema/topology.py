"""The schema files rendered for a topology: one node, a sharded cluster, a replicated one.

The .sql files stay the one source of the schema, written for one node. On a
cluster (pure text rewriting here; engine/migrate.py runs the result):

- the **sharded tables** (`SHARDED`: the CDRs, the daily summary and the tiering
  holding table) become a per-shard table `<name>_local` with the file's engine
  (`Replicated…` with the `{shard}`/`{replica}` macros when replicated), and a
  `Distributed` table under the public name in front of it, so every query in
  cdrhouse keeps naming `cdr_records`;
- materialized views read and write the local tables (each shard summarises its
  own calls; the summary is read with sum(), which adds the shards up);
- an `INSERT … SELECT` (a one-time copy between two sharded tables of the same
  sharding key) copies each node's local rows locally; replicated, it runs once
  between the public (Distributed) tables, which place every row by that key;
- ALTERs of a sharded table go to the local table (indexes, mutations) and, for
  columns, to the Distributed table as well; an OPTIMIZE goes to each node's local
  table (not run when replicated: the replicas' own merges apply);
- every **other table** (accounts, API keys, saved queries, preferences, jobs,
  rate cards, ledger, balances, recalc rows, warm months) is small and read
  whole by the application: when replicated, a copy on every node
  (`Replicated…` under one Keeper path for the whole cluster); when only sharded
  (no Keeper, so no replication), a plain table on the node cdrhouse talks to,
  the *home* node (ARCHITECTURE.md, "Running on a cluster", says why).

Replicated DDL is sent once with `ON CLUSTER`; without Keeper it is applied
node by node (`Statement.where` says to which nodes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from cdrhouse.sql.schema import Rebuild, parse_rebuild

#: public name -> sharding key of its Distributed table. Every version of a call
#: (tenant_id, call_id) lands on one shard, so ReplacingMergeTree deduplication,
#: FINAL and re-rating stay exact per shard (ARCHITECTURE.md).
SHARDED: dict[str, str] = {
    "cdr_records": "cityHash64(tenant_id, call_id)",
    # the time-ordered copy (016_by_time.sql): the same key, so each shard's view
    # copies its own calls and a call's versions meet on one shard here too
    "cdr_records_by_time": "cityHash64(tenant_id, call_id)",
    "cdr_tiering_hold": "cityHash64(tenant_id, call_id)",
    # rows here are deltas read with sum(): any placement is exact; the materialized
    # view writes each shard's own calls locally, rebuild's deltas go by this key
    "cdr_daily_summary": "cityHash64(tenant_id, day, customer_id)",
}
LOCAL_SUFFIX = "_local"
#: Keeper paths: per shard for sharded tables, one for the whole cluster otherwise
SHARD_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
GLOBAL_PATH = "/clickhouse/tables/all/{database}/{table}"
#: a replica name unique in the whole cluster, for tables with a copy on every node
GLOBAL_REPLICA = "{shard}-{replica}"

Where = Literal["all", "home", "once"]


class SchemaRenderError(Exception):
    """A schema statement this module does not know how to place on a cluster."""


@dataclass(frozen=True)
class Topology:
    """Where the tables live. `cluster=None` is one node (the default, unchanged)."""

    cluster: str | None = None
    replicated: bool = False

    @property
    def kind(self) -> str:
        if not self.cluster:
            return "single"
        return "replicated" if self.replicated else "sharded"

    def __post_init__(self) -> None:
        if self.cluster is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.cluster):
            raise SchemaRenderError(f"invalid cluster name {self.cluster!r}")
        if self.replicated and not self.cluster:
            raise SchemaRenderError("replicated tables need a cluster (CDRHOUSE_CLUSTER)")


@dataclass(frozen=True)
class Statement:
    """One statement and the nodes it runs on: every node (`all`), the home node
    only (`home`), or once on any node because it carries ON CLUSTER (`once`)."""

    sql: str
    where: Where


def local_name(name: str, topology: Topology) -> str:
    """The table that holds a sharded table's rows on each node (itself on one node)."""
    return name + LOCAL_SUFFIX if topology.cluster and name in SHARDED else name


_CREATE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\b(.*)$", re.S)
_ENGINE = re.compile(r"\bENGINE\s*=\s*(\w*MergeTree)\b(\s*\()?", re.S)
_MV = re.compile(r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+) TO (\w+)\b(.*)$", re.S)
_ALTER = re.compile(r"^ALTER TABLE (\w+) (.*)$", re.S)
_OPTIMIZE = re.compile(r"^OPTIMIZE TABLE (\w+)\b(.*)$", re.S)
_INSERT = re.compile(r"^INSERT INTO (\w+)\b(.*)$", re.S)
_COLUMN_ALTER = re.compile(r"^(ADD|DROP|MODIFY|RENAME|COMMENT) COLUMN\b", re.I)
_LOCAL_ALTER = re.compile(r"^(ADD INDEX|DROP INDEX|MATERIALIZE INDEX|CLEAR INDEX|"
                          r"ADD PROJECTION|DROP PROJECTION|MATERIALIZE PROJECTION|"
                          r"MODIFY TTL|MODIFY SETTING|UPDATE|DELETE)\b", re.I)


def _on_cluster(topology: Topology) -> str:
    return f" ON CLUSTER {topology.cluster}" if topology.replicated else ""


def replicated_engine(engine_clause: str, path: str, replica: str) -> str:
    """`ENGINE = ReplacingMergeTree(version)` -> `ENGINE = ReplicatedReplacingMergeTree(
    '<path>', '<replica>', version)`; the first MergeTree-family engine in the text."""
    def sub(m: re.Match) -> str:
        head = f"ENGINE = Replicated{m.group(1)}('{path}', '{replica}'"
        return head + (", " if m.group(2) else ")")
    out, n = _ENGINE.subn(sub, engine_clause, count=1)
    if not n:
        raise SchemaRenderError("no MergeTree-family ENGINE clause to replicate")
    return out


def _sharded_sql(text: str, topology: Topology) -> str:
    """`text` with every sharded table name replaced by its local table."""
    for name in SHARDED:
        text = re.sub(rf"\b{name}\b", local_name(name, topology), text)
    return text


def distributed_ddl(name: str, topology: Topology, database: str) -> str:
    """The Distributed table under the public name, in front of `<name>_local`."""
    local = local_name(name, topology)
    return (f"CREATE TABLE IF NOT EXISTS {name}{_on_cluster(topology)} AS {local}\n"
            f"ENGINE = Distributed('{topology.cluster}', '{database}', '{local}', "
            f"{SHARDED[name]})")


def local_ddl(name: str, body: str, topology: Topology) -> str:
    """CREATE TABLE of the per-shard table of `name`, from the file's `body`."""
    if topology.replicated:
        body = replicated_engine(body, SHARD_PATH, "{replica}")
    return (f"CREATE TABLE IF NOT EXISTS {local_name(name, topology)}"
            f"{_on_cluster(topology)}{body}")


def render_statement(sql: str, topology: Topology, database: str) -> list[Statement]:
    """One schema statement placed on `topology` (see the module docstring)."""
    if not topology.cluster:
        return [Statement(sql, "all")]
    once: Where = "once"
    every: Where = once if topology.replicated else "all"
    if step := parse_rebuild(sql):
        if step.table not in SHARDED:
            raise SchemaRenderError(f"REBUILD TABLE {step.table}: only sharded tables are rebuilt")
        if topology.replicated:
            # Each shard's replicas would have to copy once and swap together (Keeper
            # paths, ON CLUSTER EXCHANGE): not done; the table keeps its settings there.
            return []
        return [Statement(Rebuild(local_name(step.table, topology), step.settings).sql, "all")]
    if m := _CREATE.match(sql):
        name, body = m.groups()
        if name in SHARDED:
            return [Statement(local_ddl(name, body, topology), every),
                    Statement(distributed_ddl(name, topology, database), every)]
        if topology.replicated:
            body = replicated_engine(body, GLOBAL_PATH, GLOBAL_REPLICA)
            return [Statement(f"CREATE TABLE IF NOT EXISTS {name}{_on_cluster(topology)}{body}",
                              once)]
        return [Statement(sql, "home")]
    if m := _MV.match(sql):
        name, target, rest = m.groups()
        if target in SHARDED:
            return [Statement(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {name}"
                              f"{_on_cluster(topology)} TO {local_name(target, topology)}"
                              f"{_sharded_sql(rest, topology)}", every)]
        if any(re.search(rf"\b{s}\b", rest) for s in SHARDED):
            raise SchemaRenderError(
                f"materialized view {name} reads a sharded table but writes {target}, "
                "which is not sharded: on a cluster each shard sees only its own rows")
        return [Statement(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {name}"
                          f"{_on_cluster(topology)} TO {target}{rest}",
                          once if topology.replicated else "home")]
    if m := _INSERT.match(sql):
        # a one-time copy between sharded tables of the same sharding key (016): each
        # node copies its own rows into its own local table; replicated, once through
        # the Distributed tables, which place every row by that key on one replica of
        # its shard (internal_replication), so it lands where its call lives
        if m.group(1) not in SHARDED:
            raise SchemaRenderError(f"INSERT INTO {m.group(1)}: only sharded tables are filled "
                                    "by a schema file")
        if topology.replicated:
            return [Statement(sql, "once")]
        return [Statement(_sharded_sql(sql, topology), "all")]
    if m := _OPTIMIZE.match(sql):
        name, rest = m.groups()
        if topology.replicated:
            # each replica would merge on its own; ClickHouse's own merges (and their
            # settings) keep replicated tables merged: nothing to run
            return []
        if name in SHARDED:
            return [Statement(f"OPTIMIZE TABLE {local_name(name, topology)}{rest}", "all")]
        return [Statement(sql, "home")]
    if m := _ALTER.match(sql):
        name, action = m.groups()
        if name not in SHARDED:
            if topology.replicated:
                return [Statement(f"ALTER TABLE {name}{_on_cluster(topology)} {action}", once)]
            return [Statement(sql, "home")]
        local = Statement(f"ALTER TABLE {local_name(name, topology)}{_on_cluster(topology)} "
                          f"{action}", every)
        if _COLUMN_ALTER.match(action):
            return [local, Statement(f"ALTER TABLE {name}{_on_cluster(topology)} {action}", every)]
        if _LOCAL_ALTER.match(action):
            return [local]
    raise SchemaRenderError(
        "cannot place this schema statement on a cluster (teach "
        f"cdrhouse.sql.schema.topology about it): {sql.splitlines()[0][:120]}")


def render(statements: list[str], topology: Topology, database: str) -> list[Statement]:
    """Every statement of a schema file, rendered for `topology`."""
    out: list[Statement] = []
    for sql in statements:
        out.extend(render_statement(sql, topology, database))
    return out


__all__ = ["GLOBAL_PATH", "SHARDED", "SHARD_PATH", "SchemaRenderError", "Statement",
           "Topology", "distributed_ddl", "local_ddl", "local_name", "render",
           "render_statement", "replicated_engine"]
