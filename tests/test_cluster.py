"""cdrhouse on a sharded cluster of real (embedded) ClickHouse nodes: the schema on every
node, where the rows land, and what happens when a shard is unreachable.

The core suites run on the same cluster as a third `store` configuration (conftest.py);
this file covers what only a cluster has. The failure tests use a cluster of their own,
since they stop one of its nodes.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from conftest import _drop, _fresh
from chcluster import LocalCluster
from test_tiering import ARCHIVED, END, MIDDLE, TODAY, independent_totals, totals

from cdrhouse.engine import accounts as acc
from cdrhouse.engine import cluster, generate
from cdrhouse.engine.db import Database, StoreConfig, StoreError
from cdrhouse.engine.ingest import IngestOptions, Ingestor
from cdrhouse.engine.migrate import applied_versions, migrate
from cdrhouse.sql.schema import migrations
from cdrhouse.tiering import warm
from cdrhouse.tiering.archive import HOLD, HOT, Tiering
from cdrhouse.tiering.policy import Policy
from cdrhouse.tiering.store import LocalStore

SMALL_TABLES = ("accounts", "api_keys", "saved_queries", "preferences", "jobs", "warm_months",
                "rate_cards", "ledger", "balances", "recalc_rows", "backups")


def per_node(db: Database, sql: str) -> list[list[tuple]]:
    """`sql` run on each node by itself (its local tables), in shard order."""
    out = []
    for node in cluster.nodes(db):
        with cluster.open_node(db, node, create=False) as conn:
            out.append(conn.rows(sql))
    return out


def test_topology_is_detected(cluster_db: Database, local_cluster: LocalCluster) -> None:
    topo = cluster.topology(cluster_db)
    assert (topo.cluster, topo.replicated, topo.kind) == (local_cluster.name, False, "sharded")
    nodes = cluster.nodes(cluster_db)
    assert [(n.shard, n.home) for n in nodes] == [(1, True), (2, False)]
    assert [n.dsn for n in nodes] == [n.dsn for n in local_cluster.nodes]


def test_an_unknown_cluster_or_an_embedded_cluster_is_refused(local_cluster: LocalCluster,
                                                              tmp_path: Path) -> None:
    db = Database(StoreConfig(data_dir=tmp_path, clickhouse=local_cluster.dsn,
                              database="t_unknown", cluster="nope"))
    try:
        with pytest.raises(StoreError, match=f"'nope' is not defined.*{local_cluster.name}"):
            migrate(db)
    finally:
        db.command("DROP DATABASE IF EXISTS t_unknown SYNC")
        db.close()
    with pytest.raises(StoreError, match="needs the cluster's servers"):
        Database(StoreConfig(data_dir=tmp_path, cluster="c"))


def test_every_node_has_the_schema_and_a_wiped_node_is_brought_up_to_date(
        cluster_db: Database) -> None:
    versions = sorted(m.version for m in migrations())
    nodes = cluster.nodes(cluster_db)
    for node in nodes:
        with cluster.open_node(cluster_db, node, create=False) as conn:
            assert sorted(applied_versions(conn)) == versions
            for name in ("cdr_records", "cdr_records_local", "cdr_daily_summary",
                         "cdr_daily_summary_local", "cdr_daily_summary_mv"):
                assert conn.table_exists(name), (node.label, name)
            # the small tables live on the home node only (no Keeper: no replication)
            assert [conn.table_exists(t) for t in SMALL_TABLES] == [node.home] * len(SMALL_TABLES)
            assert conn.scalar("SELECT engine FROM system.tables WHERE database = "
                               "currentDatabase() AND name = 'cdr_records'") == "Distributed"
    cluster_db.insert_rows("cdr_records", [("acme", f"c{i}", dt.datetime(2026, 3, 1),
                                            dt.datetime(2026, 3, 1), 1) for i in range(50)],
                           ["tenant_id", "call_id", "start_time", "end_time", "version"])
    # node 2 loses its database (a new node, or a rebuilt one): init brings it up to date
    with cluster.open_node(cluster_db, nodes[1], create=False) as conn:
        conn.command(f"DROP DATABASE `{cluster_db.name}` SYNC")
    report = migrate(cluster_db)
    assert report.applied == [f"{m.version:03d}_{m.name}" for m in migrations()]
    with cluster.open_node(cluster_db, nodes[1], create=False) as conn:
        assert sorted(applied_versions(conn)) == versions
        assert conn.table_exists("cdr_records_local") and not conn.table_exists("accounts")
    # node 1 was not touched: its rows are all still there
    assert per_node(cluster_db, "SELECT count() FROM cdr_records_local")[0][0][0] > 0
    assert migrate(cluster_db).applied == []


def test_every_version_of_a_call_is_on_one_shard(cluster_db: Database) -> None:
    cols = ["tenant_id", "call_id", "start_time", "end_time", "customer_id", "version"]
    t = dt.datetime(2026, 3, 1, 12)
    for version in (1, 2, 3):
        cluster_db.insert_rows("cdr_records", [
            (tenant, f"call-{i}", t, t, i % 5, version)
            for tenant in ("acme", "globex") for i in range(300)], cols)
    counts = per_node(cluster_db, "SELECT tenant_id, call_id, count() FROM cdr_records_local "
                                  "GROUP BY tenant_id, call_id")
    assert all(counts), "both shards hold calls"
    on = [{(tn, c) for tn, c, _ in rows} for rows in counts]
    assert not on[0] & on[1] and len(on[0] | on[1]) == 600
    assert all(n == 3 for rows in counts for *_, n in rows)  # every version beside the others
    # so FINAL through the Distributed table is exact: one row per call, the last version
    assert cluster_db.rows("SELECT count(), min(version) FROM cdr_records FINAL") == [(600, 3)]


# -- an unreachable shard ---------------------------------------------------------------

@pytest.fixture(scope="module")
def own_cluster():
    """A cluster of its own: these tests stop one of its nodes."""
    c = LocalCluster(shards=2, name="cdrhouse_failing").start()
    yield c
    c.stop()


@pytest.fixture
def own_db(own_cluster: LocalCluster, engine_dir: Path):
    db = _fresh(own_cluster.dsn, engine_dir, own_cluster.name)
    yield db
    for i, node in enumerate(own_cluster.nodes):
        if not node.running:
            own_cluster.start_node(i)
    _drop(db)


def _calls_csv(path: Path, n: int) -> Path:
    lines = ["call_id,start_time,duration,billsec,customer_code,carrier_code,dst_number"]
    lines += [f"call-{i},2026-03-01 10:{i % 60:02d}:00,{60 + i},{i},C1,K1,44{i:08d}"
              for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _ingest(db: Database, path: Path, tmp_path: Path):
    ing = Ingestor(db, IngestOptions(tenant="acme"), tmp_path / "rejects.csv")
    try:
        return ing.ingest(path)
    finally:
        ing.close()


def test_ingest_with_a_shard_down_fails_clearly_and_a_rerun_converges(
        own_db: Database, own_cluster: LocalCluster, tmp_path: Path) -> None:
    acc.add_account(own_db, "acme", "C1", "customer")
    acc.add_account(own_db, "acme", "K1", "carrier")
    first = _calls_csv(tmp_path / "first.csv", 300)
    assert _ingest(own_db, first, tmp_path).accepted == 300
    second = tmp_path / "second.csv"
    second.write_text(first.read_text().replace("call-", "late-"))

    own_cluster.stop_node(1)
    with pytest.raises(DatabaseError) as failed:
        _ingest(own_db, second, tmp_path)
    # the error names the unreachable shard
    assert own_cluster.nodes[1].host in str(failed.value)
    own_cluster.start_node(1)

    # nothing stored was lost; whatever part of the batch reached shard 1 is not doubled
    again = _ingest(own_db, second, tmp_path)
    assert again.accepted + again.duplicates == 300
    stored = own_db.rows("SELECT countIf(startsWith(call_id, 'call-')), "
                         "countIf(startsWith(call_id, 'late-')), count() FROM cdr_records")
    assert stored == [(300, 300, 600)]  # no FINAL: not one row twice
    assert _ingest(own_db, second, tmp_path).duplicates == 300  # and a third run adds nothing
    # the summary counted every call once
    assert own_db.scalar("SELECT sum(calls) FROM cdr_daily_summary") == 600


def _load(db: Database, tmp_path: Path) -> None:
    # few accounts: each is two round trips to the cluster, and tiering does not look at them
    generate.load(db, generate.GenSpec(rows=3000, months=6, seed=3, end=END,
                                       customers_per_tenant=3, carriers_per_tenant=2), tmp_path)


def test_tiering_with_a_shard_down_fails_clearly_and_a_rerun_converges(
        own_db: Database, own_cluster: LocalCluster, tmp_path: Path) -> None:
    _load(own_db, tmp_path)
    before_all = totals(own_db)
    before = totals(own_db, ARCHIVED)
    store = LocalStore(tmp_path / "warm")
    stopped = []

    def fault(step: str) -> None:  # shard 2 goes away after the first tenant-month
        if step == "recorded" and not stopped:
            own_cluster.stop_node(1)
            stopped.append(step)

    with pytest.raises((DatabaseError, StoreError)) as failed:
        Tiering(own_db, store, Policy(max_part_rows=500), fault=fault).run(today=TODAY)
    assert own_cluster.nodes[1].host in str(failed.value)
    own_cluster.start_node(1)
    assert totals(own_db) == before_all  # nothing left the hot table

    report = Tiering(own_db, store, Policy(max_part_rows=500)).run(today=TODAY)
    assert set(report.dropped) == set(ARCHIVED)
    assert totals(own_db) == [r for r in before_all if r not in before]
    assert independent_totals(store, tmp_path) == before
    assert {w.state for w in warm.warm_months(own_db)} == {"archived"}
    # nothing left on any shard for the archived months, nothing held
    for rows in per_node(own_db, "SELECT count() FROM cdr_records_local WHERE "
                                 f"toYYYYMM(start_time) IN ({','.join(map(str, ARCHIVED))})"):
        assert rows == [(0,)]
    assert own_db.scalar(f"SELECT count() FROM {HOLD}") == 0


def test_a_run_that_died_between_the_shards_moves_is_finished_by_the_next(
        own_db: Database, own_cluster: LocalCluster, tmp_path: Path) -> None:
    _load(own_db, tmp_path)
    store = LocalStore(tmp_path / "warm")
    tier = Tiering(own_db, store, Policy(max_part_rows=500))
    tier.run(today=TODAY)
    tier.restore(MIDDLE)  # MIDDLE is hot again, and its archive is still there
    before = totals(own_db, [MIDDLE])
    assert before
    # as a run dying after shard 1 moved the month and before shard 2 did leaves it:
    tier._ensure_hold()
    nodes = cluster.nodes(own_db)
    with cluster.open_node(own_db, nodes[0], create=False) as conn:
        conn.command(f"ALTER TABLE {HOT}_local MOVE PARTITION {MIDDLE} TO TABLE {HOLD}_local")
    held = per_node(own_db, f"SELECT count() FROM {HOLD}_local")
    assert held[0][0][0] > 0 and held[1] == [(0,)]

    # what every run does first: finish the move on shard 2, check, drop, record
    tier.recover()
    assert MIDDLE not in {int(m) for (m,) in own_db.rows(
        "SELECT DISTINCT toYYYYMM(start_time) FROM cdr_records")}
    assert own_db.scalar(f"SELECT count() FROM {HOLD}") == 0
    assert {warm.warm_month(own_db, t, MIDDLE).state for t in ("acme", "globex", "initech")} \
        == {"archived"}
    assert [r for r in independent_totals(store, tmp_path)
            if r[1].startswith(f"{MIDDLE // 100}-{MIDDLE % 100:02d}")] == before
    assert tier.run(today=TODAY).dropped == []  # nothing left to do
