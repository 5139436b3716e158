"""The benchmarks' dataset: generated CDRs loaded through the real ingest path."""

from __future__ import annotations

import tempfile

from cdrhouse.engine import generate
from cdrhouse.engine.db import Database


def load(db: Database, spec: generate.GenSpec) -> None:
    """Generate `spec` per tenant to Parquet, ingest it, and merge the parts of the CDRs
    and of their time-ordered copy: every month one merged part, as a store's months are
    six hours after their last write (sql/schema/015_settled.sql)."""
    with tempfile.TemporaryDirectory() as tmp:
        generate.load(db, spec, tmp)
    for table in ("cdr_records", "cdr_records_by_time"):
        if db.table_exists(table):
            db.command(f"OPTIMIZE TABLE {table} FINAL")
