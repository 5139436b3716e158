"""Apply the schema files under sql/schema/ in order, recording what was applied.

Idempotent: a file already recorded is skipped; every statement is written
with IF NOT EXISTS so that a run interrupted halfway through a file can simply
be repeated. A recorded file whose text changed since it was applied is an
error: schema files are append-only, changes go in a new file.

On a cluster (engine/cluster.py) the same files are rendered for the topology
(cdrhouse.sql.schema.topology) and every node keeps its own `schema_migrations`:
a file is applied wherever a node lacks it, and recorded on each node once its
statements ran there, so a node added later is brought up to date by running
`cdrhouse init` again, and a run cut short by an unreachable node is finished
by the next one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from cdrhouse.engine import cluster, relayout
from cdrhouse.engine.db import Database, StoreError
from cdrhouse.sql.schema import Migration, migrations, parse_rebuild
from cdrhouse.sql.schema.topology import render

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


@dataclass(frozen=True)
class MigrationReport:
    applied: list[str]
    current: int


def applied_versions(db: Database) -> dict[int, str]:
    if not db.table_exists("schema_migrations"):
        return {}
    return {int(v): c for v, c in db.rows(
        "SELECT version, argMax(checksum, applied_at) FROM schema_migrations GROUP BY version")}


def pending(db: Database) -> list[Migration]:
    """Schema files not yet applied; raises if an applied one was edited."""
    done = applied_versions(db)
    todo = []
    for mig in migrations():
        if mig.version in done:
            if done[mig.version] != mig.checksum:
                raise StoreError(
                    f"schema file {mig.version:03d}_{mig.name}.sql changed after it was "
                    "applied to this store; schema changes belong in a new file")
            continue
        todo.append(mig)
    return todo


def is_current(db: Database) -> bool:
    try:
        return not pending(db)
    except StoreError:
        return False


def _execute(db: Database, sql: str) -> None:
    """One schema statement: ClickHouse SQL, or a `REBUILD TABLE` step cdrhouse runs itself."""
    step = parse_rebuild(sql)
    if step is None:
        db.command(sql)
    else:
        relayout.rebuild(db, step)


def migrate(db: Database) -> MigrationReport:
    if cluster.topology(db).cluster:
        return _migrate_cluster(db)
    db.command(_BOOKKEEPING)
    done: list[Migration] = []
    try:
        for mig in pending(db):
            for statement in mig.statements:
                _execute(db, statement)
            done.append(mig)
    except BaseException:
        with contextlib.suppress(Exception):   # the original error is the one to report
            _record(db, done)
        raise
    _record(db, done)
    all_migs = migrations()
    return MigrationReport(applied=[f"{m.version:03d}_{m.name}" for m in done],
                           current=all_migs[-1].version if all_migs else 0)


def _record(db: Database, done: list[Migration]) -> None:
    """Record applied files in one insert: an insert costs the embedded engine ~18 ms
    (a new part), 12 of them were most of a new store's creation. A run stopped by an
    error still records what it finished; one killed outright repeats those files
    next time, which is harmless (every statement is idempotent)."""
    if done:
        db.insert_rows("schema_migrations", [(m.version, m.name, m.checksum) for m in done],
                       ["version", "name", "checksum"])


def _migrate_cluster(db: Database) -> MigrationReport:
    """Apply pending files to every node of the cluster (module docstring).

    Node by node (no Keeper): each node runs the statements placed on every node,
    the home node also those of the small tables. Replicated: the statements carry
    ON CLUSTER and run once for every node that lacks the file; they are all
    idempotent (IF NOT EXISTS), so a node that already had them is unchanged.
    """
    topo = cluster.topology(db)
    nodes = cluster.nodes(db)
    if not topo.replicated:
        cluster.home(db)  # the small tables' node must be one of the cluster's
    applied: set[str] = set()
    done: dict[str, list[Migration]] = {}
    with contextlib.ExitStack() as stack:
        conns = [(node, stack.enter_context(cluster.open_node(db, node))) for node in nodes]
        todo: dict[int, tuple[Migration, list]] = {}
        for node, conn in conns:
            conn.command(_BOOKKEEPING)
            for mig in pending(conn):
                todo.setdefault(mig.version, (mig, []))[1].append((node, conn))
        try:
            for version in sorted(todo):
                mig, targets = todo[version]
                statements = render(mig.statements, topo, db.name)
                if topo.replicated:
                    for st in statements:
                        _execute(db, st.sql)
                else:
                    for node, conn in targets:
                        for st in statements:
                            if st.where == "all" or (st.where == "home" and node.home):
                                _execute(conn, st.sql)
                for node, _conn in targets:
                    done.setdefault(node.label, []).append(mig)
                applied.add(f"{mig.version:03d}_{mig.name}")
        except BaseException:
            for node, conn in conns:
                with contextlib.suppress(Exception):   # the original error is the one to report
                    _record(conn, done.get(node.label, []))
            raise
        for node, conn in conns:
            _record(conn, done.get(node.label, []))
    all_migs = migrations()
    return MigrationReport(applied=sorted(applied),
                           current=all_migs[-1].version if all_migs else 0)
