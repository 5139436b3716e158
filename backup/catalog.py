"""The record of each backup: a manifest beside its files, mirrored into the store.

`_catalog/<id>.json` is written once, after ClickHouse finished the backup and
the tables were fingerprinted: it is the commit point. A backup that was killed
half-way has files but no manifest, so it is never listed, never used as a base
and is removed by the next run. `_catalog/<id>.verify.json` holds the last
verification. The store's `backups` table mirrors both for status and metrics.

Fingerprints are per table and partition: the row count and the sum (mod 2^64)
of cityHash64 over each row's tuple — a sum, so a duplicated row changes it;
NULLs hash differently from zeros inside a tuple. Tables of the Replacing /
Summing family are read with FINAL, so background merges (which collapse row
versions and sum rows) do not change the fingerprint of the same content.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cdrhouse.backup.location import BackupError, Location
from cdrhouse.engine.db import Database

CATALOG = "_catalog"
LOCK_KEY = "_lock.json"

#: partition id -> [rows, checksum]
Partitions = dict[str, list]


@dataclass
class TableRecord:
    engine: str
    rows: int
    checksum: str
    partitions: Partitions
    #: False when the table was written to while the backup ran: its partitions that
    #: changed are not compared by verify (`changed` lists them)
    exact: bool = True
    changed: list[str] = field(default_factory=list)
    #: partition id -> the sorted active parts (`<name>:<hash>`) its figures were taken
    #: from. Parts are immutable, so the next incremental reuses a partition's figures
    #: while its part set is the same (absent in manifests before this field: no reuse)
    parts: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class BackupRecord:
    backup_id: str
    kind: str                      # full | incremental
    base_id: str | None
    full_id: str                   # the full backup this chain starts from
    database: str
    started_at: str
    finished_at: str
    seconds: float
    size_bytes: int                # bytes this backup stored (its base's files not counted)
    files: int
    total_bytes: int               # the whole backup as ClickHouse sees it, base included
    tables: dict[str, TableRecord]
    schema_version: int
    clickhouse_version: str
    cdrhouse_version: str
    job_id: str = ""
    #: of `seconds`, the time ClickHouse's BACKUP itself took (the rest: fingerprints)
    backup_seconds: float = 0.0
    #: on a sharded cluster, the nodes whose parts make up this backup (`<id>/<node>/`;
    #: `tables` then names `<node>/<table>`); empty on one node
    nodes: list[str] = field(default_factory=list)
    #: partitions whose rows were read to fingerprint them before the backup, and those
    #: whose figures were taken from the base's record (same parts: same rows)
    partitions_read: int = 0
    partitions_reused: int = 0
    #: per node ("" on one node), the tables this backup left out because a restore
    #: rebuilds them (ops.REBUILT): table -> [the table it is filled from, its CREATE]
    rebuilt: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    @property
    def finished(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.finished_at)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> BackupRecord:
        data = json.loads(raw)
        # a newer cdrhouse may add fields: keep what this version knows
        known = {f.name for f in fields(cls)}
        table_known = {f.name for f in fields(TableRecord)}
        data = {k: v for k, v in data.items() if k in known}
        data["tables"] = {k: TableRecord(**{a: b for a, b in v.items() if a in table_known})
                          for k, v in data["tables"].items()}
        return cls(**data)


@dataclass
class VerifyRecord:
    backup_id: str
    ok: bool
    verified_at: str
    seconds: float
    problems: list[str]
    tables: int = 0
    rows: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()


def manifest_key(backup_id: str) -> str:
    return f"{CATALOG}/{backup_id}.json"


def verify_key(backup_id: str) -> str:
    return f"{CATALOG}/{backup_id}.verify.json"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


# -- the catalogue in the location -------------------------------------------------------

def read_all(location: Location) -> tuple[list[BackupRecord], dict[str, VerifyRecord]]:
    """Every catalogued backup, oldest first, and the last verification of each."""
    records, verifies = [], {}
    for obj in location.store.list(CATALOG + "/"):
        name = obj.key.rsplit("/", 1)[-1]
        raw = location.store.get_bytes(obj.key)
        if raw is None:
            continue
        try:
            if name.endswith(".verify.json"):
                v = VerifyRecord(**json.loads(raw))
                verifies[v.backup_id] = v
            elif name.endswith(".json"):
                records.append(BackupRecord.from_json(raw))
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupError(f"the catalogue entry {obj.key} in {location.location} is "
                              f"unreadable ({exc}); move it aside to go on") from None
    records.sort(key=lambda r: (r.finished_at, r.backup_id))
    return records, verifies


def read_one(location: Location, backup_id: str) -> BackupRecord | None:
    raw = location.store.get_bytes(manifest_key(backup_id))
    return BackupRecord.from_json(raw) if raw else None


def write(location: Location, record: BackupRecord) -> None:
    location.store.put_bytes(manifest_key(record.backup_id), record.to_json())


def write_verify(location: Location, result: VerifyRecord) -> None:
    location.store.put_bytes(verify_key(result.backup_id), result.to_json())


def chain(records: list[BackupRecord], backup_id: str) -> list[BackupRecord]:
    """The backup and every base it needs, newest first; a missing link is an error."""
    by_id = {r.backup_id: r for r in records}
    if backup_id not in by_id:
        known = ", ".join(r.backup_id for r in records[-5:]) or "none"
        raise BackupError(f"no backup {backup_id!r} in the catalogue (latest: {known})")
    out = [by_id[backup_id]]
    while out[-1].base_id:
        base = by_id.get(out[-1].base_id)
        if base is None:
            raise BackupError(f"backup {out[-1].backup_id} is incremental on "
                              f"{out[-1].base_id}, which is missing from the catalogue: the "
                              f"chain is broken and {backup_id} cannot be restored")
        out.append(base)
    return out


# -- fingerprints ---------------------------------------------------------------------------

def _needs_final(engine: str) -> bool:
    return engine.endswith("MergeTree") and engine != "MergeTree"


def data_tables(db: Database, database: str) -> dict[str, str]:
    """Tables holding data (name -> engine); views hold none of their own, and a
    Distributed table reads the other nodes' (each node's part is fingerprinted there)."""
    return {n: e for n, e in db.rows(
        "SELECT name, engine FROM system.tables WHERE database = {d:String} "
        "AND engine NOT IN ('View', 'MaterializedView', 'LiveView', 'WindowView', "
        "'Distributed') "
        "AND NOT is_temporary ORDER BY name", {"d": database})}


def part_sets(db: Database, database: str) -> dict[str, dict[str, frozenset[str]]]:
    """Active parts per table and partition, each as `<name>:<hash of its files'
    checksums>`. Parts are immutable (merges and mutations make new names), so an
    unchanged set means unchanged contents; the hash (from the checksums ClickHouse
    keeps in memory, no file is read) tells apart a part of the same name in a table
    dropped and created again, or truncated and refilled after a restart, whose
    block numbers start over."""
    out: dict[str, dict[str, set[str]]] = {}
    for table, pid, part, digest in db.rows(
            "SELECT table, partition_id, name, hash_of_all_files FROM system.parts "
            "WHERE database = {d:String} AND active", {"d": database}):
        out.setdefault(table, {}).setdefault(pid, set()).add(f"{part}:{digest}")
    return {t: {p: frozenset(v) for p, v in parts.items()} for t, parts in out.items()}


def fingerprint_table(db: Database, database: str, table: str, engine: str,
                      partitions: list[str] | None = None) -> TableRecord:
    """The table's fingerprint; with `partitions`, of those partitions only."""
    final = " FINAL" if _needs_final(engine) else ""
    where = " WHERE _partition_id IN {p:Array(String)}" if partitions is not None else ""
    rows = db.rows(f"SELECT _partition_id, count(), toString(sum(cityHash64(tuple(*)))) "
                   f"FROM `{database}`.`{table}`{final}{where} GROUP BY _partition_id",
                   {"p": partitions} if partitions is not None else None)
    parts = {str(p): [int(n), str(c)] for p, n, c in rows}
    total = sum(v[0] for v in parts.values())
    checksum = str(sum(int(v[1]) for v in parts.values()) % (1 << 64))
    return TableRecord(engine=engine, rows=total, checksum=checksum, partitions=parts)


def _record(engine: str, partitions: Partitions) -> TableRecord:
    return TableRecord(engine=engine, rows=sum(v[0] for v in partitions.values()),
                       checksum=str(sum(int(v[1]) for v in partitions.values()) % (1 << 64)),
                       partitions=partitions)


def fingerprint_since(db: Database, database: str, table: str, engine: str,
                      parts: dict[str, frozenset[str]], prior: TableRecord | None
                      ) -> tuple[TableRecord, list[str] | None]:
    """The table's fingerprint, reading only the partitions whose active parts differ
    from `prior`'s record of them (the base backup's); and which partitions were read
    (None: the whole table — no usable record, or an engine without parts).

    Why this is exact: a part never changes once written (inserts, merges and
    mutations all make parts with new names), so a partition made of the same parts
    holds the same rows as when `prior` read it. `parts` must be read before the rows
    are (a part set read later could include rows the figures miss)."""
    if prior is None or not prior.parts or not engine.endswith("MergeTree"):
        return fingerprint_table(db, database, table, engine), None
    same = [p for p, names in parts.items()
            if p in prior.partitions and p not in prior.changed
            and prior.parts.get(p) == sorted(names)]
    todo = sorted(set(parts) - set(same))
    fresh = fingerprint_table(db, database, table, engine, todo).partitions if todo else {}
    merged = {p: prior.partitions[p] for p in same}
    merged.update(fresh)
    return _record(engine, merged), todo


def with_partitions(record: TableRecord, fresh: TableRecord, partitions: list[str]
                    ) -> TableRecord:
    """`record` with `partitions` replaced by their values in `fresh` (absent: gone)."""
    merged = {p: v for p, v in record.partitions.items() if p not in partitions}
    merged.update({p: v for p, v in fresh.partitions.items() if p in partitions})
    return _record(record.engine, merged)


def fingerprint_all(db: Database, database: str) -> dict[str, TableRecord]:
    return {t: fingerprint_table(db, database, t, e) for t, e in data_tables(db, database).items()}


def compare(expected: dict[str, TableRecord], got: dict[str, TableRecord]) -> list[str]:
    """What differs between the backed-up and the restored tables, one line each."""
    problems = []
    for table in sorted(set(expected) - set(got)):
        problems.append(f"table {table}: missing from the restored database")
    for table in sorted(set(got) - set(expected)):
        problems.append(f"table {table}: restored but not in the backup's record")
    for table in sorted(set(expected) & set(got)):
        want, have = expected[table], got[table]
        for pid in sorted(set(want.partitions) | set(have.partitions)):
            if pid in want.changed:
                continue  # written to during the backup: no exact figure to compare with
            w = want.partitions.get(pid, [0, "0"])
            h = have.partitions.get(pid, [0, "0"])
            if w[0] != h[0]:
                problems.append(f"table {table} partition {pid}: {h[0]:,} rows restored, "
                                f"{w[0]:,} backed up")
            elif w[1] != h[1]:
                problems.append(f"table {table} partition {pid}: checksum {h[1]} restored, "
                                f"{w[1]} backed up (same row count, different contents)")
    return problems


# -- the store's mirror -------------------------------------------------------------------

def mirror(db: Database, record: BackupRecord, location: str, *, state: str,
           verified_at: str | None = None, error: str = "") -> None:
    """Write (a new version of) the backup's row in the store's `backups` table."""
    if not db.table_exists("backups"):
        return
    ts = dt.datetime.fromisoformat
    db.insert_rows("backups", [(
        record.backup_id, record.kind, record.base_id or "", location, ts(record.started_at),
        ts(record.finished_at), record.size_bytes, record.rows, len(record.tables), state,
        ts(verified_at) if verified_at else None, error[:2000], time.time_ns())],
        ["backup_id", "kind", "base_id", "location", "started_at", "finished_at",
         "size_bytes", "rows", "tables", "state", "verified_at", "error", "version"])


def mirrored(db: Database) -> dict[str, dict[str, Any]]:
    """The store's rows, by backup id."""
    if not db.table_exists("backups"):
        return {}
    result = db.query("SELECT * FROM backups FINAL ORDER BY finished_at")
    return {row[0]: dict(zip(result.column_names, row)) for row in result.result_rows}


def sync_mirror(db: Database, location: Location, records: list[BackupRecord],
                verifies: dict[str, VerifyRecord]) -> None:
    """Bring the store's table in line with the catalogue (after a restore, or when
    another process made backups): add what is missing, mark what is gone."""
    have = mirrored(db)
    for r in records:
        v = verifies.get(r.backup_id)
        state = "completed" if v is None else ("verified" if v.ok else "verify_failed")
        row = have.get(r.backup_id)
        if row is None or row["state"] != state:
            mirror(db, r, location.location, state=state,
                   verified_at=v.verified_at if v else None,
                   error="; ".join(v.problems)[:2000] if v and not v.ok else "")
    listed = {r.backup_id for r in records}
    for backup_id, row in have.items():
        if backup_id not in listed and row["state"] != "deleted" \
                and row["location"] == location.location:
            db.insert_rows("backups", [(backup_id, row["kind"], row["base_id"], row["location"],
                                        row["started_at"], row["finished_at"], row["size_bytes"],
                                        row["rows"], row["tables"], "deleted", row["verified_at"],
                                        "no longer in the catalogue", time.time_ns())],
                           ["backup_id", "kind", "base_id", "location", "started_at",
                            "finished_at", "size_bytes", "rows", "tables", "state",
                            "verified_at", "error", "version"])
