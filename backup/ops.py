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
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import secrets
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cdrhouse.backup import catalog
from cdrhouse.backup.catalog import BackupRecord, TableRecord, VerifyRecord
from cdrhouse.backup.location import BackupConfig, BackupError, Location
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import applied_versions, migrate

#: (what, done, total) — total 0 when unknown
Progress = Callable[[str, int, int], None]
LOCK_TTL = dt.timedelta(hours=12)
KIND_RUN = "backup-run"
KIND_VERIFY = "backup-verify"
_in_process = threading.Lock()


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

@contextmanager
def location_lock(location: Location, what: str) -> Iterator[None]:
    """One backup operation per location (an object created only if absent; a dead
    holder's lock — same host, process gone, or older than 12 h — is taken over)."""
    if not _in_process.acquire(blocking=False):
        raise BackupLocked("a backup operation is already running in this process")
    store = location.store
    try:
        now = dt.datetime.now(dt.UTC)
        token = secrets.token_hex(8)
        body = json.dumps({"token": token, "what": what, "host": socket.gethostname(),
                           "pid": os.getpid(), "started_at": now.isoformat()}).encode()
        if not store.put_if_absent(catalog.LOCK_KEY, body):
            raw = store.get_bytes(catalog.LOCK_KEY)
            holder = json.loads(raw) if raw else {}
            if raw is not None and not _stale(holder, now):
                raise BackupLocked(
                    f"another backup operation ({holder.get('what')}) holds {location.location} "
                    f"(host {holder.get('host')}, pid {holder.get('pid')}, since "
                    f"{holder.get('started_at')}); wait for it to finish")
            store.delete(catalog.LOCK_KEY)
            if not store.put_if_absent(catalog.LOCK_KEY, body):
                raise BackupLocked(f"another backup operation took {location.location} just now")
        try:
            yield
        finally:
            raw = store.get_bytes(catalog.LOCK_KEY)
            if raw and json.loads(raw).get("token") == token:
                store.delete(catalog.LOCK_KEY)
    finally:
        _in_process.release()


def _stale(holder: dict, now: dt.datetime) -> bool:
    try:
        started = dt.datetime.fromisoformat(holder["started_at"])
    except (KeyError, ValueError):
        return True
    if now - started > LOCK_TTL:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


# -- run ------------------------------------------------------------------------------------

@dataclass
class RunReport:
    record: BackupRecord
    reason: str                       # why full or incremental
    pruned: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    job_id: str = ""


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
               now: dt.datetime | None = None) -> RunReport:
    """One backup of `db`'s database: full or incremental on the previous one."""
    location.check()
    with location_lock(location, "backup run"):
        _close_interrupted(db, job_id)
        records, verifies = catalog.read_all(location)
        started = now or dt.datetime.now(dt.UTC)
        base, reason = plan_kind(records, verifies, config, started, full)
        if base is not None and location.store.head(f"{base.backup_id}/.backup") is None:
            base, reason = None, f"the files of {base.backup_id} are missing: full backup"
        backup_id = _new_id(started)
        t0 = time.monotonic()
        database = db.name

        progress("fingerprint tables", 0, 0)
        parts_before = catalog.part_sets(db, database)
        before = catalog.fingerprint_all(db, database)

        target = location.target(db, backup_id)
        settings = [f"id = '{backup_id}'"]
        if base is not None:
            settings.append(f"base_backup = {location.target(db, base.backup_id)}")
        if config.max_bandwidth:
            settings.append(f"max_backup_bandwidth = {int(config.max_bandwidth)}")
        progress("backup", 0, 0)
        t_backup = time.monotonic()
        try:
            db.command(f"BACKUP DATABASE `{database}` TO {target} "
                       f"SETTINGS {', '.join(settings)} ASYNC")
        except Exception as exc:
            raise _explain(exc, location) from None
        status = _wait(db, backup_id, progress)
        backup_seconds = time.monotonic() - t_backup

        _fault("backed-up")
        progress("fingerprint tables again", 0, 0)
        parts_after = catalog.part_sets(db, database)
        tables: dict[str, TableRecord] = {}
        for table, rec in before.items():
            old, new = parts_before.get(table, {}), parts_after.get(table, {})
            touched = sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p))
            if not touched:
                tables[table] = rec
                continue
            # parts changed while the backup ran (a merge, or a write): look again at
            # those partitions only
            again = catalog.with_partitions(rec, catalog.fingerprint_table(
                db, database, table, rec.engine, touched), touched)
            changed = sorted(p for p in touched
                             if rec.partitions.get(p) != again.partitions.get(p))
            if changed:  # written to while the backup ran: the backup holds one of the states
                again.exact, again.changed = False, changed
            tables[table] = again
        stored = location.store.list(backup_id + "/")
        finished = dt.datetime.now(dt.UTC)
        record = BackupRecord(
            backup_id=backup_id, kind="full" if base is None else "incremental",
            base_id=base.backup_id if base else None,
            full_id=backup_id if base is None else base.full_id, database=database,
            started_at=started.isoformat(timespec="milliseconds"),
            finished_at=finished.isoformat(timespec="milliseconds"),
            seconds=round(time.monotonic() - t0, 3),
            size_bytes=sum(o.size for o in stored) + _dot_sizes(location, backup_id),
            files=int(status.get("num_files") or 0),
            total_bytes=int(status.get("total_size") or 0), tables=tables,
            schema_version=max(applied_versions(db) or {0: ""}),
            clickhouse_version=str(db.scalar("SELECT version()")),
            cdrhouse_version=_version(), job_id=job_id,
            backup_seconds=round(backup_seconds, 3))
        progress("write manifest", 0, 0)
        catalog.write(location, record)          # the commit point
        catalog.mirror(db, record, location.location, state="completed")
        report = RunReport(record=record, reason=reason)
        report.pruned, report.orphans = _prune(db, location, config)
        return report


def _close_interrupted(db: Database, current_job: str) -> None:
    """Backup jobs still 'running' while we hold the location's lock died with their
    process (killed, machine lost): say so instead of leaving them running forever."""
    from cdrhouse.engine import userdata
    for job in userdata.list_jobs(db, kind=KIND_RUN, state="running", limit=1000):
        if job.job_id != current_job:
            userdata.update_job(db, job.job_id, state="failed",
                                error="interrupted: the process ended before the backup "
                                      "finished; its files were removed by a later run")


def _dot_sizes(location: Location, backup_id: str) -> int:
    info = location.store.head(f"{backup_id}/.backup")
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
        time.sleep(0.2)


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
    """Every file ClickHouse recorded as stored *in* this backup exists, at its size."""
    raw = location.store.get_bytes(f"{record.backup_id}/.backup")
    if raw is None:
        return [f"backup {record.backup_id}: its ClickHouse metadata (.backup) is missing "
                f"from {location.location}"]
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        return [f"backup {record.backup_id}: its .backup metadata is unreadable ({exc})"]
    have = {o.key[len(record.backup_id) + 1:]: o.size
            for o in location.store.list(record.backup_id + "/")}
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
        problems.append(f"backup {record.backup_id}: {len(missing)} file(s) missing, e.g. "
                        f"{', '.join(missing[:3])}")
    if wrong:
        problems.append(f"backup {record.backup_id}: {len(wrong)} file(s) of the wrong size, "
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


def _restore_into(db: Database, location: Location, record: BackupRecord, database: str,
                  progress: Progress) -> None:
    db.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    op_id = f"{record.backup_id}-restore-{secrets.token_hex(3)}"
    progress("restore", 0, 0)
    try:
        db.command(f"RESTORE DATABASE `{record.database}` AS `{database}` FROM "
                   f"{location.target(db, record.backup_id)} SETTINGS id = '{op_id}' ASYNC")
        _wait(db, op_id, progress)
    except BackupError as exc:
        raise BackupError(f"restoring {record.backup_id} failed: {exc}") from None
    except Exception as exc:
        raise BackupError(f"restoring {record.backup_id} failed: {_first_line(exc)}") from None


def _compare_restored(db: Database, record: BackupRecord, database: str,
                      progress: Progress) -> tuple[list[str], dict[str, TableRecord]]:
    progress("compare tables", 0, len(record.tables))
    got: dict[str, TableRecord] = {}
    problems = []
    for i, (table, engine) in enumerate(catalog.data_tables(db, database).items()):
        try:
            got[table] = catalog.fingerprint_table(db, database, table, engine)
        except Exception as exc:
            problems.append(f"table {table}: reading the restored rows failed: "
                            f"{_first_line(exc)}")
            got[table] = record.tables.get(table, TableRecord(engine, 0, "0", {}))
        progress("compare tables", i + 1, len(record.tables))
    return problems + catalog.compare(record.tables, got), got


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
    with location_lock(location, "backup verify"):
        records, _ = catalog.read_all(location)
        t0 = time.monotonic()
        chain_ids: list[str] = []
        problems: list[str] = []
        record = next((r for r in records if r.backup_id == backup_id), None)
        scratch = f"{db.name}_verify_{secrets.token_hex(3)}"
        try:
            progress("check files", 0, 0)
            links = check_chain(location, records, backup_id)
            chain_ids = [r.backup_id for r in links]
            record = links[0]
            _restore_into(db, location, record, scratch, progress)
            found, _ = _compare_restored(db, record, scratch, progress)
            problems += found
        except BackupError as exc:
            if record is None:
                raise
            problems.append(str(exc))
        finally:
            try:
                db.command(f"DROP DATABASE IF EXISTS `{scratch}` SYNC")
            except Exception:  # the scratch copy is disposable; report the real outcome
                pass
        assert record is not None
        result = VerifyRecord(backup_id=backup_id, ok=not problems,
                              verified_at=catalog.now_iso(),
                              seconds=round(time.monotonic() - t0, 3), problems=problems,
                              tables=len(record.tables), rows=record.rows)
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
    current database is renamed aside, never dropped."""
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
        existing = live_tables(db, target.database)
        where = target.dsn if not target.embedded else str(target.data_dir / "clickhouse")
        if existing and not force:
            raise RestoreRefused(
                f"the database {target.database!r} at {where} already holds {existing} "
                "tables: restoring over a live store needs --force (the current database "
                f"is then kept, renamed to {target.database}_before_restore_<time>), or "
                "restore into a new --data-dir")
        staging = f"{target.database}_restoring"
        _restore_into(db, location, record, staging, progress)
        problems, got = _compare_restored(db, record, staging, progress)
        if problems:
            db.command(f"DROP DATABASE IF EXISTS `{staging}` SYNC")
            raise BackupError(f"the restored copy of {backup_id} differs from what was "
                              f"backed up; nothing was changed: {'; '.join(problems[:5])}")
        set_aside = None
        if existing:
            set_aside = f"{target.database}_before_restore_{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
            db.command(f"RENAME DATABASE `{target.database}` TO `{set_aside}`")
        else:
            db.command(f"DROP DATABASE IF EXISTS `{target.database}` SYNC")
        db.command(f"RENAME DATABASE `{staging}` TO `{target.database}`")
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

def _prune(db: Database, location: Location, config: BackupConfig
           ) -> tuple[list[str], list[str]]:
    """Delete chains older than the newest `keep_fulls` fulls, and files of backups
    that never finished (no manifest). Catalogue entries go first, so a backup
    being deleted is never listed as good."""
    records, _ = catalog.read_all(location)
    fulls = [r.backup_id for r in records if r.kind == "full"]
    keep = set(fulls[-config.keep_fulls:]) if config.keep_fulls > 0 else set(fulls)
    doomed = [r.backup_id for r in records if r.full_id not in keep]
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
    with location_lock(location, "backup prune"):
        return _prune(db, location, config)


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
