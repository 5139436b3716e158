"""The replicated schema, accepted by a real engine that has ZooKeeper.

No ClickHouse server can run here, and the embedded engine cannot replicate (no
interserver HTTP) and refuses `ON CLUSTER` ("Replicated DDL queries are disabled").
But given a ZooKeeper it creates `Replicated*MergeTree` tables for real: it parses
the engine arguments, expands the `{shard}`/`{replica}`/`{database}`/`{table}` macros
and registers each replica's metadata in ZooKeeper. So this test renders every
schema file for a replicated cluster (sql/schema/topology.py), strips the one clause
the embedded engine refuses (`ON CLUSTER …`, which a real cluster needs), and applies
every statement in order to an embedded node configured as replica r1 of shard 01:

- every CREATE is accepted (a typo in an engine clause, a macro the server does not
  define, a Distributed table over a missing local table, fails here);
- every table the other topologies have exists, with the Replicated engine where the
  single-node schema has a MergeTree, and `Distributed` in front of the sharded ones;
- each replicated table has its own ZooKeeper path (two tables on one path would be
  one table's data on a real cluster), under the per-shard path for sharded tables and
  the one cluster-wide path for the small tables (so every node holds them).

What it cannot check, and why: the embedded engine cannot activate a replica (it has
no interserver HTTP port: "Parameter 'interserver_http(s)_port' required for
replication is not specified"), so its replicated tables stay read-only. An ALTER of a
replicated table is therefore refused here with TABLE_IS_READ_ONLY — after the engine
parsed it and resolved the table, which is all this test asserts for it — and so is a
materialized view over a column such an ALTER adds; the same ALTERs and views run for
real on the sharded cluster (tests/test_cluster.py), where the SQL differs only by the
engine clause. Replication itself and `ON CLUSTER` are not verified here (README,
"Running on a cluster", says so).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import zookeeper  # noqa: E402

from cdrhouse.sql.schema import migrations  # noqa: E402
from cdrhouse.sql.schema.topology import SHARDED, Topology, render  # noqa: E402

CLUSTER = "cdr_cluster"
DATABASE = "cdrhouse"

missing = zookeeper.available()
if missing:
    if os.environ.get("CDRHOUSE_REQUIRE_ZOOKEEPER") == "1":
        pytest.fail(f"CDRHOUSE_REQUIRE_ZOOKEEPER=1 but {missing}", pytrace=False)
    pytest.skip(f"ZooKeeper cannot run here: {missing}", allow_module_level=True)

CONFIG = """<clickhouse>
  <zookeeper><node><host>127.0.0.1</host><port>{port}</port></node></zookeeper>
  <macros><shard>01</shard><replica>r1</replica></macros>
  <remote_servers><{cluster}><shard><internal_replication>true</internal_replication>
    <replica><host>127.0.0.1</host><port>9000</port></replica>
  </shard></{cluster}></remote_servers>
</clickhouse>
"""

# Runs in its own process (one embedded engine per process), in the directory whose
# config.xml it reads: applies the statements, then reports what the engine made of them.
NODE = r"""
import json, os, sys
import chdb
statements = json.load(open(sys.argv[2]))
conn = chdb.connect(sys.argv[1])
out = {"errors": []}
conn.query("CREATE DATABASE IF NOT EXISTS cdrhouse")
for i, sql in enumerate(statements):
    try:
        conn.query("USE cdrhouse; " + sql)
    except Exception as exc:
        out["errors"].append([i, sql[:200], str(exc)[:500]])
def rows(q):
    return [line.split("\t") for line in str(conn.query(q, "TSV")).splitlines() if line]
out["tables"] = dict(rows("SELECT name, engine FROM system.tables WHERE database = 'cdrhouse'"))
out["replicas"] = rows("SELECT table, zookeeper_path, replica_name, is_readonly "
                       "FROM system.replicas WHERE database = 'cdrhouse'")
out["macros"] = dict(rows("SELECT macro, substitution FROM system.macros"))
print("RESULT " + json.dumps(out), flush=True)
os._exit(0)  # the engine's shutdown waits on its ZooKeeper session for minutes
"""


def replicated_statements() -> list[str]:
    """Every schema statement for a replicated cluster, in order, without `ON CLUSTER`."""
    topology = Topology(CLUSTER, replicated=True)
    out = []
    for mig in migrations():
        for st in render(mig.statements, topology, DATABASE):
            assert f" ON CLUSTER {CLUSTER}" in st.sql or not st.sql.lstrip().upper().startswith(
                ("CREATE", "ALTER", "DROP", "RENAME")), f"DDL without ON CLUSTER: {st.sql[:120]}"
            out.append(st.sql.replace(f" ON CLUSTER {CLUSTER}", ""))
    return out


@pytest.fixture(scope="module")
def engine_report(tmp_path_factory):
    zk = zookeeper.ZooKeeper().start()
    try:
        work = tmp_path_factory.mktemp("replica")
        (work / "config.xml").write_text(CONFIG.format(port=zk.port, cluster=CLUSTER))
        (work / "statements.json").write_text(json.dumps(replicated_statements()))
        done = subprocess.run([sys.executable, "-c", NODE, str(work / "data"),
                               str(work / "statements.json")],
                              cwd=work, capture_output=True, text=True, timeout=300)
        found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        assert found, f"the node failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        yield json.loads(found[-1][len("RESULT "):])
    finally:
        zk.stop()


def single_node_tables() -> dict[str, str]:
    """table -> engine family of the single-node schema (from the files)."""
    out = {}
    for mig in migrations():
        for st in render(mig.statements, Topology(), DATABASE):
            m = re.match(r"\s*CREATE (?:TABLE|MATERIALIZED VIEW) IF NOT EXISTS (\w+)", st.sql)
            if m:
                engine = re.search(r"ENGINE\s*=\s*(\w+)", st.sql)
                out[m.group(1)] = engine.group(1) if engine else "MaterializedView"
    return out


READ_ONLY = ("(TABLE_IS_READ_ONLY)", "Cannot assign mutation because shutdown called")


def _refused_only_for_want_of_a_writable_replica(sql: str, error: str,
                                                 replicated: set[str]) -> bool:
    alter = re.match(r"\s*ALTER TABLE (\w+)", sql)
    if alter:
        return alter.group(1) in replicated and any(r in error for r in READ_ONLY)
    # a one-time copy between Distributed tables (016): it reads through the cluster,
    # whose nodes this lone replica cannot reach (tests/test_cluster.py runs it for real
    # on the sharded cluster, where it copies each node's own rows)
    if sql.startswith("INSERT INTO ") and "(NETWORK_ERROR)" in error:
        return True
    # a view over a column that a refused ALTER adds
    return (sql.lstrip().startswith("CREATE MATERIALIZED VIEW")
            and "(UNKNOWN_IDENTIFIER)" in error)


def test_every_replicated_statement_is_accepted(engine_report) -> None:
    assert engine_report["macros"] == {"shard": "01", "replica": "r1"}
    replicated = {n for n, e in engine_report["tables"].items() if e.startswith("Replicated")}
    statements = replicated_statements()
    creates = [sql for sql in statements if re.match(r"\s*CREATE TABLE", sql)]
    assert len(creates) >= 15
    failed = {i for i, _, _ in engine_report["errors"]}
    assert not [statements[i][:100] for i in failed if statements[i] in creates]
    unexpected = [(sql[:100], error[:200]) for i, sql, error in engine_report["errors"]
                  if not _refused_only_for_want_of_a_writable_replica(
                      statements[i], error, replicated)]
    assert unexpected == []


def test_every_table_exists_with_the_replicated_engine(engine_report) -> None:
    tables = engine_report["tables"]
    for name, engine in single_node_tables().items():
        if engine == "MaterializedView":
            continue  # see the module docstring
        if name in SHARDED:
            assert tables[name] == "Distributed", name
            local = tables[f"{name}_local"]
            assert local == f"Replicated{engine}", (name, local)
        elif engine.endswith("MergeTree"):
            assert tables[name] == f"Replicated{engine}", (name, tables.get(name))
        else:
            assert tables[name] == engine, (name, tables.get(name))


def test_each_replicated_table_has_its_own_zookeeper_path(engine_report) -> None:
    replicas = engine_report["replicas"]
    replicated = {n for n, e in engine_report["tables"].items() if e.startswith("Replicated")}
    assert {r[0] for r in replicas} == replicated
    paths = [r[1] for r in replicas]
    assert len(set(paths)) == len(paths), "two tables share a ZooKeeper path"
    for table, path, replica, _readonly in replicas:
        if table.removesuffix("_local") in SHARDED:
            # each shard's replicas share one path; the replica is named by its macro
            assert path == f"/clickhouse/tables/01/{DATABASE}/{table}" and replica == "r1"
        else:
            # small tables: one path for the whole cluster, every node a replica of it
            assert path == f"/clickhouse/tables/all/{DATABASE}/{table}" and replica == "01-r1"
