"""Rebuild a MergeTree table with storage settings ClickHouse will not ALTER.

Why: `index_granularity` (rows per granule, the unit ClickHouse reads) is fixed when a
table is created; `ALTER TABLE … MODIFY SETTING` refuses it. Finer granules made a
tenant's viewer page 2× cheaper (benchmarks/README.md, issue 17), so a schema file
asks for them with `REBUILD TABLE t SETTINGS …` (cdrhouse.sql.schema.Rebuild) and this
module carries it out on one node:

1. nothing to do if the table already has the settings (a leftover staging table of
   an interrupted run is dropped) — so running it again is always safe;
2. a staging table `<t>__rebuild` is created from the table's own CREATE statement
   (columns, indexes, engine, keys) with the settings added;
3. rows are copied partition by partition, verbatim (`optimize_on_insert = 0`, so no
   version is collapsed on the way and the copy can be compared), while the table's
   merges are paused so that its rows stay countable;
4. every partition is compared (rows and a checksum over all columns); a difference
   means something wrote to the table meanwhile: the staging table is dropped and the
   run fails, having changed nothing;
5. every partition of the copy is merged into one part (`OPTIMIZE … FINAL`), which
   keeps each call's newest version, as any merge would. Why: a partition that is one
   merged part needs no merging at read time, so `FINAL` costs a page nothing there
   (a copied partition is one *unmerged* part, which `FINAL` must merge on every read,
   and ClickHouse never merges a partition's only part by itself: measured on 5M CDRs,
   a customer's page 11 -> 7 ms; benchmarks/README.md, "Settled partitions");
6. `EXCHANGE TABLES` swaps the two atomically. Views attached by name (the daily
   summary's materialized view, a cluster's Distributed table) follow the name to the
   new table; the copy itself went into a table no view reads, so nothing is
   summarised twice. A write that reached the old table between the check and the
   swap is put back with `REPLACE PARTITION` (which fires no view: the summary
   already has it); then the old table is dropped.

Run it with writers stopped (it is a schema migration: `cdrhouse init`, or a service
starting); it needs free disk for one more copy of the table and takes about
4–7 s per million rows on two cores.
"""

from __future__ import annotations

import contextlib
import logging
import re

from cdrhouse.engine import cluster
from cdrhouse.engine.db import Database, StoreError
from cdrhouse.sql.schema import Rebuild

log = logging.getLogger("cdrhouse.migrate")

SUFFIX = "__rebuild"


def split_settings(definition: str) -> tuple[str, dict[str, str]]:
    """A definition without its trailing `SETTINGS k = v, ...` clause, and that clause."""
    head, sep, tail = definition.rpartition(" SETTINGS ")
    pairs = re.split(r",\s*(?=\w+\s*=)", tail.strip()) if sep else []
    if not pairs or not all(re.fullmatch(r"\w+\s*=\s*\S.*", p, re.S) for p in pairs):
        return definition, {}
    return head, {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}


def _definition(db: Database, table: str) -> tuple[str, str, str]:
    """The table's engine clause, its CREATE statement, and its database's engine."""
    row = db.rows("SELECT t.engine_full, t.create_table_query, d.engine FROM system.tables AS t "
                  "JOIN system.databases AS d ON d.name = t.database "
                  "WHERE t.database = currentDatabase() AND t.name = {t:String}", {"t": table})
    if not row:
        raise StoreError(f"cannot rebuild table {table}: it does not exist")
    return row[0]


def table_settings(db: Database, table: str) -> dict[str, str]:
    """The table's storage settings as written in its definition (name -> text)."""
    return split_settings(_definition(db, table)[0])[1]


def rebuild(db: Database, step: Rebuild) -> bool:
    """Carry out `step` on `db`'s node (module docstring). True if the table was rebuilt."""
    table, staging = step.table, step.table + SUFFIX
    engine_full, ddl, db_engine = _definition(db, table)
    current = split_settings(engine_full)[1]
    if all(current.get(k) == v for k, v in step.settings.items()):
        db.command(f"DROP TABLE IF EXISTS {staging} SYNC")     # an interrupted run's old table
        return False
    if db_engine != "Atomic":
        log.warning("not rebuilding %s with %s: database engine %s cannot EXCHANGE tables",
                    table, step.settings, db_engine)
        return False
    db.command(f"DROP TABLE IF EXISTS {staging} SYNC")         # a partial copy
    db.command(_staging_ddl(table, ddl, staging, {**current, **step.settings}))
    partitions = [p for (p,) in db.rows(
        f"SELECT DISTINCT _partition_id FROM {table} ORDER BY _partition_id")]
    paused = bool(partitions) and _pause_merges(db, table)
    try:
        expected = _copy(db, table, staging, partitions)
        db.command(f"EXCHANGE TABLES {table} AND {staging}")
    except BaseException:
        with contextlib.suppress(Exception):    # the original error is the one to report
            if paused:
                db.command(f"SYSTEM START MERGES {table}")
            db.command(f"DROP TABLE IF EXISTS {staging} SYNC")
        raise
    # `staging` is now the old table, its merges still paused: its rows stay countable
    late = {p for p, sums in _sums(db, staging).items() if sums != expected.get(p)}
    for partition in sorted(late):
        log.warning("rebuild of %s: partition %s was written during the swap; keeping that "
                    "version of it", table, partition)
        db.command(f"ALTER TABLE {table} REPLACE PARTITION ID {{p:String}} FROM {staging}",
                   {"p": partition})
    db.command(f"DROP TABLE {staging} SYNC")
    (log.info if expected else log.debug)("rebuilt %s with %s (%d partitions)", table,
                                          step.settings, len(expected))
    return True


def _staging_ddl(table: str, ddl: str, staging: str, settings: dict[str, str]) -> str:
    head = re.match(r"^CREATE TABLE \S+ ", ddl)
    if head is None:
        raise StoreError(f"cannot rebuild table {table}: unexpected definition {ddl[:80]!r}")
    body = split_settings(ddl[head.end():])[0]
    pairs = ", ".join(f"{k} = {v}" for k, v in settings.items())
    return f"CREATE TABLE {staging} {body} SETTINGS {pairs}"


def _sums(db: Database, table: str) -> dict[str, tuple[int, int]]:
    """Rows and a checksum of every column, per partition: equal means the same rows."""
    return {p: (int(n), int(h)) for p, n, h in db.rows(
        f"SELECT _partition_id, count(), sum(cityHash64(tuple(*))) FROM {table} "
        "GROUP BY _partition_id")}


def _copy(db: Database, table: str, staging: str,
          partitions: list[str]) -> dict[str, tuple[int, int]]:
    """Copy every partition verbatim, check it, then settle it; the sums as copied."""
    if not partitions:          # (a new store) nothing to copy or compare
        return {}
    for i, partition in enumerate(partitions, 1):
        db.command(f"INSERT INTO {staging} SELECT * FROM {table} WHERE _partition_id = {{p:String}}",
                   {"p": partition}, settings={"optimize_on_insert": 0})
        log.info("rebuild of %s: partition %s copied (%d of %d)", table, partition, i,
                 len(partitions))
    source, copied = _sums(db, table), _sums(db, staging)
    if source != copied:
        differ = sorted(p for p in source.keys() | copied.keys() if source.get(p) != copied.get(p))
        raise StoreError(
            f"rebuild of {table} stopped: partition {differ[0]} changed while it was copied "
            f"({copied.get(differ[0], (0, 0))[0]} rows copied, {source.get(differ[0], (0, 0))[0]} "
            "now). Nothing was changed; stop the processes writing to the store and run "
            "`cdrhouse init` again")
    for i, partition in enumerate(partitions, 1):
        settle_partition(db, staging, partition)
        log.info("rebuild of %s: partition %s merged (%d of %d)", table, partition, i,
                 len(partitions))
    return source


def settle_partition(db: Database, table: str, partition: str, *,
                     skip_merged: bool = False) -> None:
    """Merge one partition of `table` into a single part (module docstring, step 5);
    `skip_merged`: leave it as it is when it already is one merged part."""
    if not re.fullmatch(r"\w+", partition):
        raise StoreError(f"cannot merge partition {partition!r} of {table}: not a partition id")
    db.command(f"OPTIMIZE TABLE {table} PARTITION ID '{partition}' FINAL"
               + (" SETTINGS optimize_skip_merged_partitions = 1" if skip_merged else ""))


def settle_month(db: Database, table: str, month: int) -> None:
    """Merge month `month` (YYYYMM) of `table` into one part on every node of the store
    (local tables on a cluster), leaving a node where it already is one merged part:
    what a page's FINAL read needs (sql/schema/015_settled.sql)."""
    cluster.each_node(db, f"OPTIMIZE TABLE {cluster.local(db, table)}{{on_cluster}} "
                          f"PARTITION {int(month)} FINAL "
                          "SETTINGS optimize_skip_merged_partitions = 1")


def _pause_merges(db: Database, table: str) -> bool:
    """Stop background merges of `table` (they would collapse versions while it is being
    counted). In memory only: the old table is dropped or its merges restarted after."""
    try:
        db.command(f"SYSTEM STOP MERGES {table}")
        return True
    except Exception as exc:   # (a server user without SYSTEM rights) the check still guards
        log.info("rebuild of %s: cannot pause merges (%s); copying anyway", table, exc)
        return False
