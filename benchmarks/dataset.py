"""The benchmarks' dataset: generated CDRs loaded through the real ingest path."""

from __future__ import annotations

import tempfile
from pathlib import Path

from engine import generate
from engine.db import Database
from engine.ingest import IngestOptions, Ingestor


def load(db: Database, spec: generate.GenSpec) -> None:
    """Generate `spec` per tenant to Parquet, ingest it, and merge the parts."""
    generate.ensure_accounts(db, spec)
    with tempfile.TemporaryDirectory() as tmp:
        for tenant in spec.tenants:
            path = Path(tmp) / f"{tenant}.parquet"
            generate.write_parquet(db, spec, tenant, path)
            ingestor = Ingestor(db, IngestOptions(tenant=tenant), Path(tmp) / "rejects.csv")
            try:
                ingestor.ingest(path)
            finally:
                ingestor.close()
    db.command("OPTIMIZE TABLE cdr_records FINAL")
