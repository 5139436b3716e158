"""The benchmarks' dataset: generated CDRs loaded through the real ingest path."""

from __future__ import annotations

import tempfile

from cdrhouse.engine import generate
from cdrhouse.engine.db import Database


def load(db: Database, spec: generate.GenSpec) -> None:
    """Generate `spec` per tenant to Parquet, ingest it, and merge the parts."""
    with tempfile.TemporaryDirectory() as tmp:
        generate.load(db, spec, tmp)
    db.command("OPTIMIZE TABLE cdr_records FINAL")
