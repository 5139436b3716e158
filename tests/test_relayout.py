"""Rebuilding cdr_records with new storage settings (engine/relayout.py, 014_granules.sql),
and settling partitions into one merged part (015_settled.sql).

A rebuild changes how rows are stored, never what a reader sees: every call as FINAL
shows it, the daily summary (not fed twice by the copy, still fed by the next ingest),
and it is safe to run again after a crash at any step. The copy is compared verbatim
(every version), so a write during it stops the rebuild with nothing changed; then
each copied partition is merged into one part, which keeps each call's newest version.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from cdrhouse.engine import cluster, generate, relayout
from cdrhouse.engine.db import Database, StoreError
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql.schema import Rebuild, migrations, parse_rebuild
from cdrhouse.sql.schema.topology import SchemaRenderError, Topology, render_statement

END = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
FINE = {"index_granularity": "1024", "min_compress_block_size": "8192",
        "max_compress_block_size": "65536"}
ALL_ROWS = ("SELECT _partition_id, count(), sum(cityHash64(tuple(*))) FROM cdr_records "
            "GROUP BY _partition_id ORDER BY _partition_id")
SEEN = "SELECT * FROM cdr_records FINAL ORDER BY tenant_id, call_id"
SUMMARY = ("SELECT tenant_id, day, customer_id, sum(calls), sum(billsec), sum(customer_charge) "
           "FROM cdr_daily_summary GROUP BY ALL ORDER BY ALL")


def _load(db: Database, tmp: Path) -> Database:
    generate.load(db, generate.GenSpec(rows=4_000, months=3, seed=5, tenants=("acme", "globex"),
                                       end=END), tmp)
    # newer versions of some calls, in their own parts: the rebuild must keep both
    db.command("INSERT INTO cdr_records SELECT * REPLACE (version + 1 AS version, billsec + 1 "
               "AS billsec) FROM cdr_records FINAL WHERE cityHash64(call_id) % 7 = 0")
    return db


def _state(db: Database) -> tuple[list, list, list]:
    return db.rows(ALL_ROWS), db.rows(SEEN), db.rows(SUMMARY)


def _parts(db: Database, table: str = "cdr_records") -> dict[str, list[int]]:
    """partition -> the levels of its active parts (a settled partition: one level > 0)."""
    return {p: sorted(levels) for p, levels in db.rows(
        "SELECT partition_id, groupArray(level) FROM system.parts WHERE active AND "
        "database = currentDatabase() AND table = {t:String} GROUP BY partition_id",
        {"t": table})}


def _settled(db: Database, table: str = "cdr_records") -> bool:
    parts = _parts(db, table)
    return bool(parts) and all(len(lv) == 1 and lv[0] > 0 for lv in parts.values())


def _tables(db: Database) -> set[str]:
    return {n for (n,) in db.rows("SELECT name FROM system.tables WHERE database = currentDatabase()")}


@pytest.mark.parametrize("statement, expected", [
    ("REBUILD TABLE cdr_records SETTINGS index_granularity = 1024",
     Rebuild("cdr_records", {"index_granularity": "1024"})),
    ("REBUILD TABLE t SETTINGS a=1,\n b = 2", Rebuild("t", {"a": "1", "b": "2"})),
    ("ALTER TABLE cdr_records MODIFY SETTING index_granularity = 1024", None),
    ("CREATE TABLE IF NOT EXISTS x (a UInt8) ENGINE = Log", None),
])
def test_rebuild_statements_are_read(statement: str, expected: Rebuild | None) -> None:
    assert parse_rebuild(statement) == expected


def test_a_rebuild_setting_it_cannot_read_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"REBUILD TABLE t: cannot read the setting \"a = 'x\""):
        parse_rebuild("REBUILD TABLE t SETTINGS a = 'x,y'")


@pytest.mark.parametrize("topology, expected", [
    (Topology(), ["REBUILD TABLE cdr_records SETTINGS index_granularity = 1024"]),
    (Topology("c"), ["REBUILD TABLE cdr_records_local SETTINGS index_granularity = 1024"]),
    (Topology("c", replicated=True), []),
])
def test_rebuild_is_placed_per_topology(topology: Topology, expected: list[str]) -> None:
    out = render_statement("REBUILD TABLE cdr_records SETTINGS index_granularity = 1024",
                           topology, "cdrhouse")
    assert [s.sql for s in out] == expected
    assert all(s.where == "all" for s in out)


def test_only_sharded_tables_are_rebuilt_on_a_cluster() -> None:
    with pytest.raises(SchemaRenderError, match="REBUILD TABLE accounts"):
        render_statement("REBUILD TABLE accounts SETTINGS index_granularity = 1024",
                         Topology("c"), "cdrhouse")


@pytest.mark.parametrize("definition, head, settings", [
    ("MergeTree ORDER BY a SETTINGS index_granularity = 8192", "MergeTree ORDER BY a",
     {"index_granularity": "8192"}),
    ("MergeTree ORDER BY a SETTINGS index_granularity = 1024, storage_policy = 'default'",
     "MergeTree ORDER BY a", {"index_granularity": "1024", "storage_policy": "'default'"}),
    ("MergeTree ORDER BY a", "MergeTree ORDER BY a", {}),
])
def test_a_definitions_settings_are_split_off(definition: str, head: str, settings: dict) -> None:
    assert relayout.split_settings(definition) == (head, settings)


def test_new_stores_have_fine_granules(store: Database) -> None:
    table = cluster.local(store, "cdr_records")
    assert {k: relayout.table_settings(store, table)[k] for k in FINE} == FINE
    assert [m.version for m in migrations()][-1] >= 14


def test_rebuild_keeps_what_final_shows_and_the_summary_and_settles(store: Database,
                                                                      tmp_path: Path) -> None:
    db = _load(store, tmp_path)
    before = _state(db)
    assert db.scalar("SELECT count() FROM cdr_records") > db.scalar(
        "SELECT count() FROM cdr_records FINAL")           # older versions in other parts
    assert not _settled(db)
    assert relayout.rebuild(db, Rebuild("cdr_records", {"index_granularity": "2048"}))
    assert relayout.table_settings(db, "cdr_records")["index_granularity"] == "2048"
    assert relayout.table_settings(db, "cdr_records")["max_compress_block_size"] == "65536"
    assert _state(db)[1:] == before[1:]
    # every partition is one merged part: FINAL has nothing left to merge when reading,
    # and the merge kept each call's newest version only
    assert _settled(db)
    assert db.scalar("SELECT count() FROM cdr_records") == len(before[1])
    assert "cdr_records__rebuild" not in _tables(db)
    # the summary's view follows the name: the next ingest is summarised, once
    calls = db.scalar("SELECT sum(calls) FROM cdr_daily_summary")
    db.command("INSERT INTO cdr_records SELECT * REPLACE (concat(call_id, '-new') AS call_id) "
               "FROM cdr_records FINAL WHERE tenant_id = 'acme' LIMIT 5")
    assert db.scalar("SELECT sum(calls) FROM cdr_daily_summary") == calls + 5
    # and a second run finds nothing to do
    assert not relayout.rebuild(db, Rebuild("cdr_records", {"index_granularity": "2048"}))


def test_rebuild_after_a_crash_at_any_step(embedded_db: Database, tmp_path: Path) -> None:
    db = _load(embedded_db, tmp_path)
    before = _state(db)
    step = Rebuild("cdr_records", {"index_granularity": "4096"})
    # crashed during the copy: a half-filled staging table
    db.command("CREATE TABLE cdr_records__rebuild AS cdr_records")
    db.command("INSERT INTO cdr_records__rebuild SELECT * FROM cdr_records LIMIT 10")
    assert relayout.rebuild(db, step)
    assert _state(db)[1:] == before[1:]
    after = _state(db)
    # crashed after the swap, before dropping the old table (now under the staging name)
    db.command("CREATE TABLE cdr_records__rebuild AS cdr_records")
    db.command("INSERT INTO cdr_records__rebuild SELECT * FROM cdr_records")
    assert not relayout.rebuild(db, step)
    assert _state(db) == after
    assert "cdr_records__rebuild" not in _tables(db)


class _WritesDuring(Database):
    """The store, with another writer's INSERT landing right after one of our statements."""

    def __init__(self, db: Database, after: str, insert: str) -> None:
        self.__dict__.update(db.__dict__)
        self._after, self._insert = after, insert

    def command(self, sql, parameters=None, settings=None):
        out = super().command(sql, parameters, settings)
        if self._insert and sql.startswith(self._after):
            insert, self._insert = self._insert, ""
            super().command(insert)
        return out


#: a new call in the oldest month: the partition the rebuild copies first
NEW_CALL = ("INSERT INTO {table} SELECT * REPLACE (concat(call_id, '-late') AS call_id) "
            "FROM cdr_records FINAL WHERE tenant_id = 'acme' ORDER BY start_time LIMIT 1")


def test_a_write_during_the_copy_stops_it_with_nothing_changed(embedded_db: Database,
                                                               tmp_path: Path) -> None:
    db = _load(embedded_db, tmp_path)
    before = _state(db)
    writer = _WritesDuring(db, "INSERT INTO cdr_records__rebuild",
                           NEW_CALL.format(table="cdr_records"))
    with pytest.raises(StoreError, match=r"rebuild of cdr_records stopped: partition \d{6} "
                                         r"changed while it was copied .* Nothing was changed"):
        relayout.rebuild(writer, Rebuild("cdr_records", {"index_granularity": "2048"}))
    assert relayout.table_settings(db, "cdr_records")["index_granularity"] == "1024"
    assert "cdr_records__rebuild" not in _tables(db)
    rows, seen, _ = _state(db)
    assert sum(n for _, n, _ in rows) == sum(n for _, n, _ in before[0]) + 1   # the write kept
    assert len(seen) == len(before[1]) + 1


def test_a_write_to_the_old_table_at_the_swap_is_kept(embedded_db: Database,
                                                      tmp_path: Path) -> None:
    db = _load(embedded_db, tmp_path)
    before = _state(db)
    # after EXCHANGE the old table carries the staging name: a write that reached it
    # just before the swap (as seen from here: just after) must end up in cdr_records
    writer = _WritesDuring(db, "EXCHANGE TABLES", NEW_CALL.format(table="cdr_records__rebuild"))
    assert relayout.rebuild(writer, Rebuild("cdr_records", {"index_granularity": "2048"}))
    seen = db.rows(SEEN)
    assert len(seen) == len(before[1]) + 1
    assert any(row[1].endswith("-late") for row in seen)
    assert "cdr_records__rebuild" not in _tables(db)


def test_the_sharded_cluster_rebuilds_each_nodes_table(cluster_db: Database) -> None:
    for node in cluster.nodes(cluster_db):
        with cluster.open_node(cluster_db, node, create=False) as conn:
            assert {k: relayout.table_settings(conn, "cdr_records_local")[k] for k in FINE} == FINE
            assert "cdr_records_local__rebuild" not in _tables(conn)
    # migrating again finds nothing to do
    assert migrate(cluster_db).applied == []


@pytest.mark.parametrize("topology, expected", [
    (Topology(), [("OPTIMIZE TABLE cdr_records FINAL", "all")]),
    (Topology("c"), [("OPTIMIZE TABLE cdr_records_local FINAL", "all")]),
    (Topology("c", replicated=True), []),
])
def test_optimize_is_placed_per_topology(topology: Topology, expected: list) -> None:
    out = render_statement("OPTIMIZE TABLE cdr_records FINAL", topology, "cdrhouse")
    assert [(s.sql, s.where) for s in out] == expected


def test_schema_015_settles_unmerged_partitions_and_lets_idle_ones_settle(
        embedded_db: Database, tmp_path: Path) -> None:
    """A store made before 015 whose months are each one unmerged part (as 014's copy
    left them): migrating merges each into one part, and nothing a reader sees changes.
    Both tables ask ClickHouse to merge a partition idle for six hours into one part."""
    db = embedded_db
    for table in ("cdr_records", "cdr_daily_summary"):    # the store as it was before 015
        db.command(f"ALTER TABLE {table} RESET SETTING min_age_to_force_merge_seconds, "
                   "min_age_to_force_merge_on_partition_only")
        assert "min_age_to_force_merge_seconds" not in relayout.table_settings(db, table)
    db.command("DELETE FROM schema_migrations WHERE version = 15")
    _load(db, tmp_path)
    db.command("CREATE TABLE copy AS cdr_records")
    db.command("INSERT INTO copy SELECT * FROM cdr_records", settings={"optimize_on_insert": 0})
    db.command("EXCHANGE TABLES copy AND cdr_records")
    db.command("DROP TABLE copy SYNC")
    assert set(map(len, _parts(db).values())) == {1} and not _settled(db)
    before = _state(db)
    assert "015_settled" in ", ".join(migrate(db).applied)
    assert _settled(db)
    assert _state(db)[1:] == before[1:]
    for table in ("cdr_records", "cdr_daily_summary"):
        settings = relayout.table_settings(db, table)
        assert settings["min_age_to_force_merge_seconds"] == "21600"
        assert settings["min_age_to_force_merge_on_partition_only"] == "1"


@pytest.mark.parametrize("kind", ["embedded", "cluster"])
def test_schema_016_fills_the_time_ordered_copy_of_an_existing_store(
        request, kind: str, embedded_dsn: str, engine_dir: Path, tmp_path: Path) -> None:
    """A store made before 016: migrating creates the time-ordered copy with every
    version of every stored call, merged (on a cluster, each shard its own calls), and
    from then on every write reaches it through its view."""
    from bytime import assert_copy_exact
    from conftest import _drop, fresh_db
    db = fresh_db(request, kind, embedded_dsn, engine_dir)
    try:
        cluster.each_node(db, "DROP VIEW cdr_records_by_time_mv{on_cluster} SYNC")
        for name in ("cdr_records_by_time", cluster.local(db, "cdr_records_by_time")):
            cluster.each_node(db, f"DROP TABLE IF EXISTS {name}{{on_cluster}} SYNC")
        cluster.each_node(db, "DELETE FROM schema_migrations WHERE version = 16")
        _load(db, tmp_path)
        assert "016_by_time" in ", ".join(migrate(db).applied)
        assert_copy_exact(db)
        copy = cluster.local(db, "cdr_records_by_time")
        if not db.config.cluster:
            assert _settled(db, copy)
        for node in cluster.nodes(db):
            with cluster.open_node(db, node) as there:
                assert _settled(there, copy), node.label
        db.command("INSERT INTO cdr_records SELECT * REPLACE (version + 1 AS version, 0 AS "
                   "billsec) FROM cdr_records FINAL WHERE cityHash64(call_id) % 5 = 0",
                   settings={"distributed_foreground_insert": 1})
        assert_copy_exact(db)
    finally:
        _drop(db)

