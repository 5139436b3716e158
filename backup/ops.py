"""Run, verify, restore and prune backups of the store's database.

One backup set is `BACKUP DATABASE <db>` — every table, one consistent set per
table — written by ClickHouse itself to the location; incrementals name the
previous backup of their chain as `base_backup`, so they store only new parts.

Crash safety comes from the order: the manifest (catalog.py) is written only
after ClickHouse reports the backup created and the tables were fingerprinted
again; a run killed before that leaves files without a manifest, which no
listing shows, no incremental builds on, and the next run deletes. Restores go
into a scratch database, are compared with the manifest's fingerprints, and
only then renamed into place — a live database is never dropped, it is renamed
aside (`<db>_before_restore_<time>`).

One table is left out and rebuilt instead (`REBUILT`): the time-ordered copy of the
CDRs (sql/schema/016_by_time.sql) holds nothing that `cdr_records` does not, every
version of every call, and is about as large, so storing it would nearly double every
backup (+520 MiB on 5M CDRs). The manifest records its definition; a restore creates
it from that and fills it from the restored `cdr_records` before the store goes live.
A backup made before this (the copy inside) restores as it was made.

On a sharded cluster (engine/cluster.py) one backup set is one `BACKUP DATABASE`
per node, started together, each into `<id>/<node>/` with its own incremental base
(`<base id>/<node>/`): each node holds its shard's rows, the home node also the small
tables. Fingerprints are kept per node (`<node>/<table>`), a verify restores every
node's part into a scratch database on that node, and a restore needs a cluster with
the same nodes. A replicated cluster is refused (see `_members`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import re
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field

from cdrhouse.backup import catalog
from cdrhouse.backup.catalog import BackupRecord, TableRecord, VerifyRecord
from cdrhouse.backup.location import BackupConfig, BackupError, Location
from cdrhouse.engine import cluster, rebalance, relayout
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import applied_versions, migrate
from cdrhouse.tiering.lock import Held, store_lock

#: (what, done, total) — total 0 when unknown
Progress = Callable[[str, int, int], None]
KIND_RUN = "backup-run"
KIND_VERIFY = "backup-verify"
#: A RESTORE that fails is run once more before its failure is reported. Reading a backup
#: from S3 can fail for a moment (a dropped connection; "Unexpected EOF" was seen from an
#: S3 server under load), and a verify would then call a sound backup damaged. A damaged
#: backup fails the same way twice; the restored copy is compared with the manifest anyway.
RESTORE_ATTEMPTS = 2
#: seconds between two looks at system.backups while a BACKUP or RESTORE runs ASYNC.
#: A run of a small store is over in a fraction of this; the tests, which make dozens,
#: set it shorter (read at each wait, so assigning the module attribute is enough).
POLL_SECONDS = 0.2
#: tables a backup leaves out and a restore rebuilds: name -> the table it is filled
#: from (its rows are exactly that table's, column for column; module docstring)
REBUILT = {"cdr_records_by_time": "cdr_records"}
_in_process = threading.Lock()
log = logging.getLogger("cdrhouse.backup")


class BackupLocked(BackupError):
    """Another backup operation holds the location."""


class RestoreRefused(BackupError):
    """A restore would replace a live database and --force was not given."""


def _no_fault(step: str) -> None:
    """Production: every step simply continues."""


#: called with the name of each step just after it completes. Only test code assigns
#: it, in its own process (tests/crashing_cli.py kills the CLI that way); nothing in
#: the environment or the options of the installed program can arm a crash.
default_fault: Callable[[str], None] = _no_fault


def _fault(step: str) -> None:
    default_fault(step)


def _quiet(_what: str, _done: int, _total: int) -> None:
    return None


def _new_id(now: dt.datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{4}$")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n")[0]
    m = re.search(r"DB::Exception: (.*?)(?: \([A-Z_]+\))?(?:\. Stack trace.*)?$", text)
    return (m.group(1) if m else text)[:500]


# -- the run lock -------------------------------------------------------------------------

def location_lock(location: Location, what: str) -> AbstractContextManager[Held]:
    """One backup operation per location: the same renewed lock object as tiering's
    (tiering/lock.py), so a dead holder on another host blocks for minutes."""
    return store_lock(location.store, catalog.LOCK_KEY, what, BackupLocked, _in_process,
                      "backup operation")


# -- run ------------------------------------------------------------------------------------

# -- the databases a backup set is made of -------------------------------------------------

def _sub(backup_id: str, key: str) -> str:
    """Where one node's part of a backup lives: `<id>` on one node, `<id>/<node>`."""
    return f"{backup_id}/{key}" if key else backup_id


def _tkey(key: str, table: str) -> str:
    """A table's name in the manifest: `<node>/<table>` on a cluster."""
    return f"{key}/{table}" if key else table


def _keys(record: BackupRecord) -> list[str]:
    return record.nodes or [""]


@contextmanager
def _members(db: Database) -> Iterator[list[tuple[str, Database]]]:
    """(node key, client) for every database one backup set is made of: the store's
    own on one node ("" as key); every node of a sharded cluster, in shard order.

    A replicated cluster is refused: per node, every replica would hold a copy of
    its shard, and restoring replicated tables per node would fight replication;
    ClickHouse's `BACKUP … ON CLUSTER` is the tool there, and it cannot run here
    (the embedded engine refuses `ON CLUSTER`), so cdrhouse does not issue it
    untested. README ("Backups") says what to run instead."""
    topo = cluster.topology(db)
    if not topo.cluster:
        yield [("", db)]
        return
    if topo.replicated:
        raise BackupError(
            f"cluster {topo.cluster} is replicated: cdrhouse backup handles one node and "
            "sharded clusters; back up a replicated cluster with ClickHouse's own "
            "BACKUP DATABASE … ON CLUSTER (README, 'Backups')")
    with ExitStack() as stack:
        out = []
        for node in cluster.nodes(db):
            mdb = db if node.home else stack.enter_context(
                cluster.open_node(db, node, create=False))
            out.append((f"shard{node.shard}-replica{node.replica}", mdb))
        yield out


@dataclass
class RunReport:
    record: BackupRecord
    reason: str                       # why full or incremental
    pruned: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    job_id: str = ""
    #: per table (`<node>/<table>` on a cluster), the partitions whose rows were read to
    #: fingerprint it before the backup; None: all of them (no base record to reuse)
    fingerprinted: dict[str, list[str] | None] = field(default_factory=dict)


def plan_kind(records: list[BackupRecord], verifies: dict[str, VerifyRecord],
              config: BackupConfig, now: dt.datetime, force_full: bool
              ) -> tuple[BackupRecord | None, str]:
    """The base for the next backup (None: a full one) and why."""
    if force_full:
        return None, "full backup requested"
    if not records:
        return None, "no backup yet"
    last = records[-1]
    full = next((r for r in records if r.backup_id == last.full_id), None)
    if full is None:
        return None, f"the full backup {last.full_id} of the last chain is gone"
    age = now - full.finished
    if age >= dt.timedelta(days=config.full_every_days):
        return None, (f"the last full backup {full.backup_id} is {age.days} day(s) old "
                      f"(a full one every {config.full_every_days})")
    bad = [r.backup_id for r in records if r.full_id == full.backup_id
           and r.backup_id in verifies and not verifies[r.backup_id].ok]
    if bad:
        return None, f"backup {bad[-1]} of the current chain failed verification"
    return last, f"incremental on {last.backup_id}"


def run_backup(db: Database, location: Location, config: BackupConfig, *,
               full: bool = False, progress: Progress = _quiet, job_id: str = "",
               now: dt.datetime | None = None, reuse_fingerprints: bool = True) -> RunReport:
    """One backup of `db`'s database: full or incremental on the previous one.

    An incremental reads only the partitions whose active parts changed since the base
    recorded them, and takes the others' figures from the base's manifest
    (`catalog.fingerprint_since`); `reuse_fingerprints=False` reads every partition
    (benchmarks/backup_bench.py measures the difference)."""
    location.check()
    with location_lock(location, "backup run") as held, _members(db) as members:
        _close_interrupted(db, job_id)
        records, verifies = catalog.read_all(location)
        started = now or dt.datetime.now(dt.UTC)
        base, reason = plan_kind(records, verifies, config, started, full)
        keys = [k for k, _ in members]
        if base is not None and _keys(base) != keys:
            base, reason = None, (f"the nodes changed since {base.backup_id} "
                                  f"({', '.join(_keys(base))} then): full backup")
        if base is not None and any(location.store.head(f"{_sub(base.backup_id, k)}/.backup")
                                    is None for k in keys):
            base, reason = None, f"the files of {base.backup_id} are missing: full backup"
        backup_id = _new_id(started)
        t0 = time.monotonic()
        database = db.name

        rebuilt = {key: _rebuilt_here(mdb, database) for key, mdb in members}
        progress("fingerprint tables", 0, 0)
        parts_before = {k: catalog.part_sets(mdb, database) for k, mdb in members}
        before: dict[str, dict[str, TableRecord]] = {}
        fingerprinted: dict[str, list[str] | None] = {}
        n_read = n_reused = 0
        for key, mdb in members:
            before[key] = {}
            for table, engine in catalog.data_tables(mdb, database).items():
                if table in rebuilt[key]:
                    continue
                prior = base.tables.get(_tkey(key, table)) \
                    if base is not None and reuse_fingerprints else None
                rec, read = catalog.fingerprint_since(
                    mdb, database, table, engine, parts_before[key].get(table, {}), prior)
                before[key][table] = rec
                fingerprinted[_tkey(key, table)] = read
                n_read += len(rec.partitions) if read is None else len(read)
                n_reused += 0 if read is None else len(rec.partitions) - len(
                    set(read) & set(rec.partitions))
                progress("fingerprint tables", len(fingerprinted), 0)

        progress("backup", 0, 0)
        t_backup = time.monotonic()
        # every node's BACKUP starts before any is waited for: the parts are as close
        # in time as the cluster allows
        for key, mdb in members:
            settings = [f"id = '{backup_id}'"]
            if base is not None:
                settings.append(f"base_backup = "
                                f"{location.target(mdb, _sub(base.backup_id, key))}")
            if config.max_bandwidth:
                settings.append(f"max_backup_bandwidth = {int(config.max_bandwidth)}")
            try:
                except_ = ", ".join(f"`{database}`.`{t}`" for t in rebuilt[key])
                mdb.command(f"BACKUP DATABASE `{database}` "
                            + (f"EXCEPT TABLES {except_} " if except_ else "") + "TO "
                            f"{location.target(mdb, _sub(backup_id, key))} "
                            f"SETTINGS {', '.join(settings)} ASYNC")
            except Exception as exc:
                raise _explain(exc, location) from None
        statuses = [_wait(mdb, backup_id, progress) for _, mdb in members]
        backup_seconds = time.monotonic() - t_backup

        _fault("backed-up")
        progress("fingerprint tables again", 0, 0)
        tables: dict[str, TableRecord] = {}
        for key, mdb in members:
            parts_after = catalog.part_sets(mdb, database)
            looked_again: dict[str, list[str]] = {}
            for table, rec in before[key].items():
                old, new = parts_before[key].get(table, {}), parts_after.get(table, {})
                touched = sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p))
                if touched:
                    # parts changed while the backup ran (a merge, or a write): look
                    # again at those partitions only
                    again = catalog.with_partitions(rec, catalog.fingerprint_table(
                        mdb, database, table, rec.engine, touched), touched)
                    changed = sorted(p for p in touched
                                     if rec.partitions.get(p) != again.partitions.get(p))
                    if changed:  # written to while the backup ran: it holds one of the states
                        again.exact, again.changed = False, changed
                    rec = again
                    looked_again[table] = touched
                tables[_tkey(key, table)] = rec
            # the part sets each partition's figures belong to, for the next incremental:
            # untouched partitions had the same parts before and after their rows were
            # read; a partition read again counts only if its parts still have not moved
            parts_last = catalog.part_sets(mdb, database) if looked_again else parts_after
            for table, rec in before[key].items():
                rec = tables[_tkey(key, table)]
                again_in = set(looked_again.get(table, ()))
                now = parts_after.get(table, {})
                rec.parts = {p: sorted(names) for p, names in now.items()
                             if p in rec.partitions and (
                                 parts_before[key].get(table, {}).get(p) == names
                                 if p not in again_in
                                 else parts_last.get(table, {}).get(p) == names)}
        stored = location.store.list(backup_id + "/")
        finished = dt.datetime.now(dt.UTC)
        record = BackupRecord(
            backup_id=backup_id, kind="full" if base is None else "incremental",
            base_id=base.backup_id if base else None,
            full_id=backup_id if base is None else base.full_id, database=database,
            started_at=started.isoformat(timespec="milliseconds"),
            finished_at=finished.isoformat(timespec="milliseconds"),
            seconds=round(time.monotonic() - t0, 3),
            size_bytes=sum(o.size for o in stored) + sum(
                _dot_sizes(location, _sub(backup_id, k)) for k in keys),
            files=sum(int(st.get("num_files") or 0) for st in statuses),
            total_bytes=sum(int(st.get("total_size") or 0) for st in statuses),
            tables=tables,
            schema_version=max(applied_versions(db) or {0: ""}),
            clickhouse_version=str(db.scalar("SELECT version()")),
            cdrhouse_version=_version(), job_id=job_id,
            backup_seconds=round(backup_seconds, 3), nodes=[k for k in keys if k],
            partitions_read=n_read, partitions_reused=n_reused,
            rebuilt={k: v for k, v in rebuilt.items() if v})
        progress("write manifest", 0, 0)
        held.ensure(f"writing the manifest of {backup_id}")
        catalog.write(location, record)          # the commit point
        catalog.mirror(db, record, location.location, state="completed")
        report = RunReport(record=record, reason=reason, fingerprinted=fingerprinted)
        report.pruned, report.orphans = _prune(db, location, config, held)
        return report


def _rebuilt_here(mdb: Database, database: str) -> dict[str, list[str]]:
    """The tables of `REBUILT` on this node (local names on a cluster), each with its
    source table and its CREATE statement as the node has it now."""
    out = {}
    for name, source in REBUILT.items():
        table = cluster.local(mdb, name)
        ddl = mdb.scalar("SELECT create_table_query FROM system.tables WHERE database = "
                         "{d:String} AND name = {t:String}", {"d": database, "t": table})
        if ddl:
            out[table] = [cluster.local(mdb, source), ddl]
    return out


def _in_database(ddl: str, old: str, new: str, table: str) -> str:
    """A recorded `CREATE TABLE old.table …` made to create `new`.table."""
    head = re.match(rf"CREATE TABLE `?{re.escape(old)}`?\.`?{re.escape(table)}`? ", ddl)
    if head is None:
        raise BackupError(f"the recorded definition of {table} is not a CREATE TABLE of "
                          f"{old}.{table}: {ddl[:80]!r}")
    return f"CREATE TABLE `{new}`.`{table}` " + ddl[head.end():]


#: partitions a restore fills at once per node (`_fill`)
FILL_THREADS = 2


def _fill(mdb: Database, database: str, table: str, source: str) -> None:
    """Fill `table` from `source` on one node, a partition at a time, two at once, each
    merged into one part (a page reads a settled month without merging: 015_settled.sql).

    Why per partition: one INSERT of the whole table writes blocks that span months, so
    every month ends in many parts, which OPTIMIZE then merges one month after another.
    A month's own INSERT writes it in few parts (one, below a million rows), merged at
    once while the other thread inserts the next month. 5M CDRs, six months: the refill
    31.5 s for the whole table, 9.9 s this way (benchmarks/README.md, *Without the
    time-ordered copy*)."""
    ids = [p for (p,) in mdb.rows(
        "SELECT DISTINCT partition_id FROM system.parts WHERE active AND database = "
        "{d:String} AND table = {t:String} ORDER BY partition_id",
        {"d": database, "t": source})]

    def fill(share: list[str]) -> None:
        conn = Database(mdb.config, create=False)
        try:
            for pid in share:
                conn.command(f"INSERT INTO `{database}`.`{table}` SELECT * FROM "
                             f"`{database}`.`{source}` WHERE _partition_id = {{p:String}}",
                             {"p": pid})
                relayout.settle_partition(conn, f"`{database}`.`{table}`", pid,
                                          skip_merged=True)
        finally:
            conn.close()

    with ThreadPoolExecutor(FILL_THREADS, thread_name_prefix="cdrhouse-restore") as pool:
        for done in [pool.submit(fill, ids[i::FILL_THREADS]) for i in range(FILL_THREADS)]:
            done.result()


def _rebuild(members: list[tuple[str, Database]], record: BackupRecord, database: str,
             progress: Progress, *, fill: bool = True) -> None:
    """Create the tables the backup left out (`REBUILT`) in the restored `database` on
    every node, and (`fill`) fill each from its restored source, merged, checked."""
    for key, mdb in members:
        for table, (source, ddl) in record.rebuilt.get(key, {}).items():
            progress(f"rebuild {table}", 0, 0)
            where = f"{table}" + (f" ({key})" if key else "")
            try:
                mdb.command(_in_database(ddl, record.database, database, table))
                if not fill:
                    continue
                _fill(mdb, database, table, source)
                counts = [int(mdb.scalar(f"SELECT count() FROM `{database}`.`{t}` FINAL"))
                          for t in (source, table)]
            except BackupError:
                raise
            except Exception as exc:  # noqa: BLE001 - named, and nothing goes live
                raise BackupError(f"rebuilding {where} failed: {_first_line(exc)}") from None
            if counts[0] != counts[1]:
                raise BackupError(f"rebuilding {where} from {source} gave {counts[1]} calls "
                                  f"for {counts[0]}")


def _close_interrupted(db: Database, current_job: str) -> None:
    """Backup jobs still 'running' while we hold the location's lock died with their
    process (killed, machine lost): say so instead of leaving them running forever."""
    from cdrhouse.engine import userdata
    for job in userdata.list_jobs(db, kind=KIND_RUN, state="running", limit=1000):
        if job.job_id != current_job:
            userdata.update_job(db, job.job_id, state="failed",
                                error="interrupted: the process ended before the backup "
                                      "finished; its files were removed by a later run")


def _dot_sizes(location: Location, where: str) -> int:
    info = location.store.head(f"{where}/.backup")
    if info is None:
        return 0
    # a directory store's listing skips dot files; S3's does not
    return info.size if not location.is_s3 else 0


def _wait(db: Database, backup_id: str, progress: Progress) -> dict:
    """Poll system.backups until the ASYNC operation ends; its row, or the error."""
    while True:
        result = db.query("SELECT status, error, num_files, total_size FROM system.backups "
                          "WHERE id = {id:String}", {"id": backup_id})
        rows = [dict(zip(result.column_names, r)) for r in result.result_rows]
        if not rows:
            raise BackupError(f"ClickHouse lost track of backup {backup_id}")
        row = rows[0]
        status = str(row["status"])
        if status in ("BACKUP_CREATED", "RESTORED"):
            return row
        if status.endswith("FAILED") or status.endswith("CANCELLED"):
            raise BackupError(f"ClickHouse could not complete {backup_id}: "
                              f"{_first_line(Exception(row['error']))}")
        progress("backup", int(row["total_size"] or 0), 0)
        time.sleep(POLL_SECONDS)


def _explain(exc: Exception, location: Location) -> BackupError:
    text = _first_line(exc)
    if "allowed_path" in text or "allowed_disk" in text:
        return BackupError(f"ClickHouse may not write backups to {location.location}: {text}. "
                           "A directory needs the embedded engine, or a ClickHouse server "
                           "whose configuration lists it under backups.allowed_path; use an "
                           "S3 location with a server")
    return BackupError(f"backup to {location.location} failed: {text}")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("cdrhouse")
    except Exception:  # not installed (a checkout on sys.path)
        return "0+unknown"


# -- checking what is stored ------------------------------------------------------------------

def check_files(location: Location, record: BackupRecord) -> list[str]:
    """Every file ClickHouse recorded as stored *in* this backup exists, at its size
    (on a cluster: in every node's part)."""
    problems = []
    for key in _keys(record):
        problems += _check_part(location, record, key)
    return problems


def _check_part(location: Location, record: BackupRecord, key: str) -> list[str]:
    where = _sub(record.backup_id, key)
    label = f"backup {record.backup_id}" + (f" ({key})" if key else "")
    raw = location.store.get_bytes(f"{where}/.backup")
    if raw is None:
        return [f"{label}: its ClickHouse metadata (.backup) is missing "
                f"from {location.location}"]
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        return [f"{label}: its .backup metadata is unreadable ({exc})"]
    have = {o.key[len(where) + 1:]: o.size for o in location.store.list(where + "/")}
    missing, wrong = [], []
    for node in root.iter("file"):
        name = node.findtext("name") or ""
        size = int(node.findtext("size") or 0)
        if (node.findtext("use_base") or "").lower() == "true" or size == 0:
            continue
        data_file = node.findtext("data_file") or name
        if data_file not in have:
            missing.append(data_file)
        elif have[data_file] != size and not node.findtext("base_size"):
            wrong.append(f"{data_file} ({have[data_file]:,} bytes, {size:,} recorded)")
    problems = []
    if missing:
        problems.append(f"{label}: {len(missing)} file(s) missing, e.g. "
                        f"{', '.join(missing[:3])}")
    if wrong:
        problems.append(f"{label}: {len(wrong)} file(s) of the wrong size, "
                        f"e.g. {', '.join(wrong[:3])}")
    return problems


def check_chain(location: Location, records: list[BackupRecord], backup_id: str
                ) -> list[BackupRecord]:
    """The chain restoring `backup_id` needs, each link present and complete."""
    links = catalog.chain(records, backup_id)
    for link in links:
        problems = check_files(location, link)
        if problems:
            which = "" if link.backup_id == backup_id else \
                f" (a base that {backup_id} needs)"
            raise BackupError("; ".join(problems) + which)
    return links


def _restore_into(members: list[tuple[str, Database]], location: Location,
                  record: BackupRecord, database: str, progress: Progress) -> None:
    """Every node's part of `record` restored as `database` on that node."""
    have = [k for k, _ in members]
    if have != _keys(record):
        raise BackupError(f"backup {record.backup_id} was taken on "
                          f"{', '.join(_keys(record)) or 'one node'}; this store is "
                          f"{', '.join(have) or 'one node'}: restore it on the same nodes")
    for key, mdb in members:
        where = f"{record.backup_id}" + (f" ({key})" if key else "")
        for attempt in range(1, RESTORE_ATTEMPTS + 1):
            mdb.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
            op_id = f"{record.backup_id}-restore-{secrets.token_hex(3)}"
            progress("restore", 0, 0)
            try:
                mdb.command(f"RESTORE DATABASE `{record.database}` AS `{database}` FROM "
                            f"{location.target(mdb, _sub(record.backup_id, key))} "
                            f"SETTINGS id = '{op_id}' ASYNC")
                _wait(mdb, op_id, progress)
                break
            except Exception as exc:  # noqa: BLE001 - tried again, then reported
                why = str(exc) if isinstance(exc, BackupError) else _first_line(exc)
                if attempt == RESTORE_ATTEMPTS:
                    raise BackupError(f"restoring {where} failed: {why}") from None
                log.warning("restoring %s failed, trying once more: %s", where, why)


def _compare_restored(members: list[tuple[str, Database]], record: BackupRecord,
                      database: str, progress: Progress
                      ) -> tuple[list[str], dict[str, TableRecord]]:
    progress("compare tables", 0, len(record.tables))
    got: dict[str, TableRecord] = {}
    problems = []
    for key, mdb in members:
        for table, engine in catalog.data_tables(mdb, database).items():
            name = _tkey(key, table)
            try:
                got[name] = catalog.fingerprint_table(mdb, database, table, engine)
            except Exception as exc:
                problems.append(f"table {name}: reading the restored rows failed: "
                                f"{_first_line(exc)}")
                got[name] = record.tables.get(name, TableRecord(engine, 0, "0", {}))
            progress("compare tables", len(got), len(record.tables))
    return problems + catalog.compare(record.tables, got), got


def _drop_everywhere(members: list[tuple[str, Database]], database: str) -> None:
    for _, mdb in members:
        # the scratch copy is disposable; the caller reports the real outcome
        with contextlib.suppress(Exception):
            mdb.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")


# -- verify ------------------------------------------------------------------------------------

@dataclass
class VerifyReport:
    record: BackupRecord
    result: VerifyRecord
    chain: list[str]


def verify_backup(db: Database, location: Location, backup_id: str, *,
                  progress: Progress = _quiet) -> VerifyReport:
    """Restore `backup_id` (with its chain) into a scratch database next to `db`'s and
    compare every table and partition with the manifest. The result is recorded."""
    with location_lock(location, "backup verify") as held:
        records, _ = catalog.read_all(location)
        t0 = time.monotonic()
        chain_ids: list[str] = []
        problems: list[str] = []
        record = next((r for r in records if r.backup_id == backup_id), None)
        scratch = f"{db.name}_verify_{secrets.token_hex(3)}"
        with _members(db) as members:
            try:
                progress("check files", 0, 0)
                links = check_chain(location, records, backup_id)
                chain_ids = [r.backup_id for r in links]
                record = links[0]
                _restore_into(members, location, record, scratch, progress)
                found, _ = _compare_restored(members, record, scratch, progress)
                problems += found
                try:        # the left-out tables' recorded definitions still create them
                    _rebuild(members, record, scratch, progress, fill=False)
                except Exception as exc:  # noqa: BLE001 - reported as the verify's finding
                    problems.append(f"the left-out tables cannot be created again: "
                                    f"{_first_line(exc)}")
            except BackupError as exc:
                if record is None:
                    raise
                problems.append(str(exc))
            finally:
                _drop_everywhere(members, scratch)
        assert record is not None
        result = VerifyRecord(backup_id=backup_id, ok=not problems,
                              verified_at=catalog.now_iso(),
                              seconds=round(time.monotonic() - t0, 3), problems=problems,
                              tables=len(record.tables), rows=record.rows)
        held.ensure(f"recording the verification of {backup_id}")
        catalog.write_verify(location, result)
        catalog.mirror(db, record, location.location,
                       state="verified" if result.ok else "verify_failed",
                       verified_at=result.verified_at, error="; ".join(problems))
        return VerifyReport(record=record, result=result, chain=chain_ids)


# -- restore -----------------------------------------------------------------------------------

@dataclass
class RestoreReport:
    record: BackupRecord
    database: str
    set_aside: str | None
    tables: int
    rows: int
    seconds: float
    chain: list[str]


def live_tables(db: Database, database: str) -> int:
    return int(db.scalar("SELECT count() FROM system.tables WHERE database = {d:String}",
                         {"d": database}) or 0)


def restore_backup(target: StoreConfig, location: Location, backup_id: str, *,
                   force: bool = False, progress: Progress = _quiet) -> RestoreReport:
    """Restore `backup_id` as the database `target` names, verified before it goes live.

    A database that already holds tables is refused unless `force`; with it, the
    current database is renamed aside, never dropped. It holds the location's lock,
    as every other backup operation does: a prune elsewhere must not delete the files
    of the chain while they are being read."""
    busy = _rebalancing(target)
    if busy is not None:            # it would replace the tables a rebalance is moving
        raise RestoreRefused(busy)
    with location_lock(location, "backup restore") as held:
        records, _ = catalog.read_all(location)
        progress("check files", 0, 0)
        links = check_chain(location, records, backup_id)
        record = links[0]
        t0 = time.monotonic()
        # a client bound to `system`: the target database is dropped or renamed below, and
        # a client bound to it would fail every later request (the HTTP interface sends it)
        Database(target).close()  # creates the database if absent (and reports a held store)
        db = Database(dataclasses.replace(target, database="system"), create=False)
        try:
            with _members(db) as members:
                set_aside, got = _restore_members(members, target, location, record, force,
                                                  progress, held)
        finally:
            db.close()
        db = Database(target)
        try:
            migrate(db)
            _close_backup_job(db, record)
            catalog.mirror(db, record, location.location, state="completed")
        finally:
            db.close()
        return RestoreReport(record=record, database=target.database, set_aside=set_aside,
                             tables=len(got), rows=sum(t.rows for t in got.values()),
                             seconds=round(time.monotonic() - t0, 3),
                             chain=[r.backup_id for r in links])


def _rebalancing(target: StoreConfig) -> str | None:
    """Why `target` cannot be restored now (engine/rebalance.py `running`), or None: only
    a cluster's existing store can be in the middle of a rebalance."""
    if not target.cluster:
        return None
    db = Database(dataclasses.replace(target, database="system"), create=False)
    try:
        if not db.scalar("SELECT count() FROM system.tables WHERE database = {d:String} "
                         "AND name = 'leases'", {"d": target.database}):
            return None
    finally:
        db.close()
    db = Database(target, create=False)
    try:
        return rebalance.refusal(db)
    finally:
        db.close()


def _restore_members(members: list[tuple[str, Database]], target: StoreConfig,
                     location: Location, record: BackupRecord, force: bool,
                     progress: Progress, held: Held
                     ) -> tuple[str | None, dict[str, TableRecord]]:
    """Stage the backup on every node, compare, and only then swap it in everywhere."""
    existing = sum(live_tables(mdb, target.database) for _, mdb in members)
    where = target.dsn if not target.embedded else str(target.data_dir / "clickhouse")
    if existing and not force:
        raise RestoreRefused(
            f"the database {target.database!r} at {where} already holds {existing} "
            "tables: restoring over a live store needs --force (the current database "
            f"is then kept, renamed to {target.database}_before_restore_<time>), or "
            "restore into a new --data-dir")
    staging = f"{target.database}_restoring"
    try:
        _restore_into(members, location, record, staging, progress)
        problems, got = _compare_restored(members, record, staging, progress)
        if problems:
            raise BackupError(f"the restored copy of {record.backup_id} differs from what "
                              f"was backed up; nothing was changed: {'; '.join(problems[:5])}")
        _rebuild(members, record, staging, progress)
        held.ensure(f"putting the restored copy in place as {target.database}")
    except BackupError:       # a failed restore, a difference, the lock lost: no swap
        _drop_everywhere(members, staging)
        raise
    set_aside = None
    if existing:
        set_aside = f"{target.database}_before_restore_{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    for _, mdb in members:
        if live_tables(mdb, target.database):
            mdb.command(f"RENAME DATABASE `{target.database}` TO `{set_aside}`")
        else:
            mdb.command(f"DROP DATABASE IF EXISTS `{target.database}` SYNC")
        mdb.command(f"RENAME DATABASE `{staging}` TO `{target.database}`")
    return set_aside, got


def _close_backup_job(db: Database, record: BackupRecord) -> None:
    """The backup's own job was 'running' when its jobs table was copied: finish it."""
    if not record.job_id:
        return
    from cdrhouse.engine import userdata
    job = userdata.get_job(db, record.job_id)
    if job is not None and job.state not in userdata.FINISHED:
        userdata.update_job(db, record.job_id, state="succeeded", progress=1.0,
                            result={"backup_id": record.backup_id, "kind": record.kind,
                                    "note": "recorded at restore: this store was restored "
                                            "from this backup"})


# -- retention ----------------------------------------------------------------------------------

def _prune(db: Database, location: Location, config: BackupConfig, held: Held
           ) -> tuple[list[str], list[str]]:
    """Delete chains older than the newest `keep_fulls` fulls, and files of backups
    that never finished (no manifest). Catalogue entries go first, so a backup
    being deleted is never listed as good."""
    records, _ = catalog.read_all(location)
    fulls = [r.backup_id for r in records if r.kind == "full"]
    keep = set(fulls[-config.keep_fulls:]) if config.keep_fulls > 0 else set(fulls)
    doomed = [r.backup_id for r in records if r.full_id not in keep]
    held.ensure("deleting old backups")
    for backup_id in doomed:
        location.store.delete(catalog.manifest_key(backup_id))
        location.store.delete(catalog.verify_key(backup_id))
    for backup_id in doomed:
        location.delete_tree(backup_id)
    catalogued = {r.backup_id for r in records}
    running = {str(n) for (n,) in db.rows(
        "SELECT name FROM system.backups WHERE status IN ('CREATING_BACKUP', 'RESTORING')")}
    orphans = [name for name in location.top_level()
               if _ID.match(name) and name not in catalogued
               and not any(name in r for r in running)]
    for name in orphans:
        location.delete_tree(name)
    if doomed:
        records, verifies = catalog.read_all(location)
        catalog.sync_mirror(db, location, records, verifies)
    return doomed, sorted(orphans)


def prune(db: Database, location: Location, config: BackupConfig) -> tuple[list[str], list[str]]:
    with location_lock(location, "backup prune") as held:
        return _prune(db, location, config, held)


# -- status ---------------------------------------------------------------------------------------

@dataclass
class Listing:
    records: list[BackupRecord]
    verifies: dict[str, VerifyRecord]

    def state(self, backup_id: str) -> str:
        v = self.verifies.get(backup_id)
        return "completed" if v is None else ("verified" if v.ok else "verify_failed")

    def last_good(self) -> BackupRecord | None:
        good = [r for r in self.records if self.state(r.backup_id) != "verify_failed"]
        return good[-1] if good else None


def listing(location: Location, db: Database | None = None) -> Listing:
    """The catalogue (and, given the store, its mirror brought up to date)."""
    records, verifies = catalog.read_all(location)
    if db is not None:
        catalog.sync_mirror(db, location, records, verifies)
    return Listing(records, verifies)
