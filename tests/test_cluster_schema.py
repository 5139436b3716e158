"""The schema rendered per topology (pure, fast): golden DDL for one node, a sharded and a
replicated cluster, and the rules the rendering must keep whatever the files say.

The goldens are the reviewed output; after an intended change (a new schema file),
regenerate them with `python tests/test_cluster_schema.py` and review the diff.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from cdrhouse.sql.schema import migrations
from cdrhouse.sql.schema.topology import (SHARDED, SchemaRenderError, Topology, render,
                                          render_statement, replicated_engine)

GOLDEN = Path(__file__).parent / "golden"
TOPOLOGIES = {
    "single": Topology(),
    "sharded": Topology("cdr_cluster", replicated=False),
    "replicated": Topology("cdr_cluster", replicated=True),
}


def rendered(kind: str) -> str:
    out = []
    for mig in migrations():
        out.append(f"-- {mig.version:03d}_{mig.name}.sql")
        for st in render(mig.statements, TOPOLOGIES[kind], "cdrhouse"):
            out.append(f"-- where: {st.where}\n{st.sql};\n")
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("kind", list(TOPOLOGIES))
def test_golden_ddl(kind: str) -> None:
    assert rendered(kind) == (GOLDEN / f"schema_{kind}.sql").read_text()


def test_single_node_is_the_files_unchanged() -> None:
    for mig in migrations():
        assert [s.sql for s in render(mig.statements, Topology(), "x")] == mig.statements


def _creates(kind: str) -> dict[str, str]:
    found = {}
    for mig in migrations():
        for st in render(mig.statements, TOPOLOGIES[kind], "cdrhouse"):
            m = re.match(r"CREATE (?:TABLE|MATERIALIZED VIEW) IF NOT EXISTS (\w+)", st.sql)
            if m:
                found[m.group(1)] = st.sql
    return found


@pytest.mark.parametrize("kind", ["sharded", "replicated"])
def test_sharded_tables_are_distributed_over_local_tables(kind: str) -> None:
    creates = _creates(kind)
    for name, key in SHARDED.items():
        if name not in creates:  # the holding table is created by tiering, at run time
            continue
        assert f"ENGINE = Distributed('cdr_cluster', 'cdrhouse', '{name}_local', {key})" \
            in creates[name]
        engine = re.search(r"ENGINE = (\w+)", creates[f"{name}_local"]).group(1)
        assert engine.startswith("Replicated") == (kind == "replicated")
        assert engine.endswith("MergeTree")
    # every version of a call on one shard: the key is the call's identity, nothing else
    assert SHARDED["cdr_records"] == "cityHash64(tenant_id, call_id)"
    # the summary's view reads the local CDRs and writes the local summary
    mv = creates["cdr_daily_summary_mv"]
    assert "TO cdr_daily_summary_local" in mv and "FROM cdr_records_local" in mv
    assert not re.search(r"\bcdr_records\b", mv)
    # the time-ordered copy: placed by the same key, so each shard copies its own calls
    assert SHARDED["cdr_records_by_time"] == SHARDED["cdr_records"]
    mv = creates["cdr_records_by_time_mv"]
    assert "TO cdr_records_by_time_local" in mv and "FROM cdr_records_local" in mv


def test_replicated_paths_and_on_cluster() -> None:
    creates = _creates("replicated")
    assert ("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', "
            "'{replica}', version)") in creates["cdr_records_local"]
    # small tables: one copy per node, under one path for the whole cluster
    assert ("ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', "
            "'{shard}-{replica}', version)") in creates["api_keys"]
    assert "ReplicatedMergeTree('/clickhouse/tables/all/{database}/{table}', " \
           "'{shard}-{replica}')" in creates["ledger"]
    for mig in migrations():
        for st in render(mig.statements, TOPOLOGIES["replicated"], "cdrhouse"):
            assert st.where == "once"
            if st.sql.startswith("INSERT INTO "):
                # a one-time copy runs once between the Distributed tables, which place
                # every row on one replica of its shard (replication does the rest)
                assert not re.search(r"\w+_local\b", st.sql), st.sql
            else:
                assert " ON CLUSTER cdr_cluster" in st.sql


def test_sharded_small_tables_live_on_the_home_node() -> None:
    for mig in migrations():
        for st in render(mig.statements, TOPOLOGIES["sharded"], "cdrhouse"):
            assert "ON CLUSTER" not in st.sql
            touches_sharded = any(re.search(rf"\b{n}(_local)?\b", st.sql) for n in SHARDED)
            assert st.where == ("all" if touches_sharded else "home"), st.sql[:80]


@pytest.mark.parametrize("engine, expected", [
    ("ENGINE = ReplacingMergeTree(version)\nORDER BY k",
     "ENGINE = ReplicatedReplacingMergeTree('/p', 'r', version)\nORDER BY k"),
    ("ENGINE = ReplacingMergeTree\nORDER BY k",
     "ENGINE = ReplicatedReplacingMergeTree('/p', 'r')\nORDER BY k"),
    ("ENGINE = MergeTree ORDER BY k", "ENGINE = ReplicatedMergeTree('/p', 'r') ORDER BY k"),
    ("ENGINE = SummingMergeTree((a, b)) ORDER BY k",
     "ENGINE = ReplicatedSummingMergeTree('/p', 'r', (a, b)) ORDER BY k"),
])
def test_replicated_engine(engine: str, expected: str) -> None:
    assert replicated_engine(engine, "/p", "r") == expected


@pytest.mark.parametrize("sql, message", [
    ("DROP TABLE cdr_records", "cannot place this schema statement"),
    ("ALTER TABLE cdr_records FREEZE", "cannot place this schema statement"),
    ("CREATE TABLE IF NOT EXISTS x (a UInt8) ENGINE = Memory", "no MergeTree-family ENGINE"),
    ("CREATE MATERIALIZED VIEW IF NOT EXISTS v TO accounts AS SELECT * FROM cdr_records",
     "reads a sharded table but writes accounts"),
])
def test_unknown_statements_are_refused_on_a_cluster(sql: str, message: str) -> None:
    with pytest.raises(SchemaRenderError, match=message):
        render_statement(sql, TOPOLOGIES["replicated"], "cdrhouse")


def test_topology_is_checked() -> None:
    with pytest.raises(SchemaRenderError, match="need a cluster"):
        Topology(None, replicated=True)
    with pytest.raises(SchemaRenderError, match="invalid cluster name"):
        Topology("a b; DROP")


if __name__ == "__main__":
    for kind in TOPOLOGIES:
        (GOLDEN / f"schema_{kind}.sql").write_text(rendered(kind))
    sys.exit(0)
