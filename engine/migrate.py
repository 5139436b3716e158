"""Apply the schema files under sql/schema/ in order, recording what was applied.

Idempotent: a file already recorded is skipped; every statement is written
with IF NOT EXISTS so that a run interrupted halfway through a file can simply
be repeated. A recorded file whose text changed since it was applied is an
error: schema files are append-only, changes go in a new file.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdrhouse.engine.db import Database, StoreError
from cdrhouse.sql.schema import Migration, migrations

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


def migrate(db: Database) -> MigrationReport:
    db.command(_BOOKKEEPING)
    applied = []
    for mig in pending(db):
        for statement in mig.statements:
            db.command(statement)
        db.insert_rows("schema_migrations", [(mig.version, mig.name, mig.checksum)],
                       ["version", "name", "checksum"])
        applied.append(f"{mig.version:03d}_{mig.name}")
    all_migs = migrations()
    return MigrationReport(applied=applied, current=all_migs[-1].version if all_migs else 0)
