"""The archive's layout: keys, the per tenant-month manifest and the index.

Self-describing and readable without cdrhouse:

    cdrs/_index.json                                   every archived tenant-month
    cdrs/tenant=<T>/month=<YYYYMM>/part-<n>.parquet    the rows, zstd Parquet
    cdrs/tenant=<T>/month=<YYYYMM>/_manifest.json      rows, sizes, checksums, schema
    _staging/<run>/tenant=<T>/month=<YYYYMM>/…         a run's files before they are verified
    _lock.json                                         held while a run is going on

Hive-style `key=value` directories let DuckDB (`hive_partitioning`), pyarrow
datasets and Spark read `tenant` and `month` as columns. Names starting with
`_` are skipped by those readers, so manifests, staging files and the lock are
never mistaken for data. The manifest is written only after its files are
verified; a reader that wants a consistent view reads the manifest's file list.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from cdrhouse.sql import months

ROOT = "cdrs"
INDEX_KEY = f"{ROOT}/_index.json"
LOCK_KEY = "_lock.json"
STAGING = "_staging"
FORMAT = "cdrhouse-archive"
FORMAT_VERSION = 1

_MONTH_DIR = re.compile(rf"^{ROOT}/tenant=([^/]+)/month=(\d{{6}})/")


def month_prefix(tenant: str, month: int) -> str:
    return f"{ROOT}/tenant={tenant}/month={month}/"


def part_name(n: int) -> str:
    return f"part-{n:05d}.parquet"


def part_key(tenant: str, month: int, n: int) -> str:
    return month_prefix(tenant, month) + part_name(n)


def manifest_key(tenant: str, month: int) -> str:
    return month_prefix(tenant, month) + "_manifest.json"


def staging_key(run_id: str, tenant: str, month: int, n: int) -> str:
    return f"{STAGING}/{run_id}/tenant={tenant}/month={month}/{part_name(n)}"


def staging_prefix(run_id: str | None = None) -> str:
    return f"{STAGING}/{run_id}/" if run_id else f"{STAGING}/"


def parse_month_key(key: str) -> tuple[str, int] | None:
    """(tenant, month) of a key under `cdrs/tenant=…/month=…/`, else None."""
    m = _MONTH_DIR.match(key)
    return (m.group(1), int(m.group(2))) if m else None


def month_label(month: int) -> str:
    return months.label(month)


@dataclass(frozen=True)
class FileEntry:
    key: str
    rows: int
    bytes: int
    #: `count()` and checksum of this file, as ClickHouse computed them reading it back
    checksum: str


@dataclass(frozen=True)
class Manifest:
    """What one tenant-month of the archive holds, and how to check it."""

    tenant: str
    month: int
    rows: int
    bytes: int
    checksum: str
    files: tuple[FileEntry, ...]
    columns: tuple[tuple[str, str], ...]
    schema_version: int
    run_id: str
    archived_at: str
    sort_key: tuple[str, ...] = ("customer_id", "start_time", "call_id")
    checksum_method: str = ("sum over rows of cityHash64 of the column values as the hot "
                            "table's types (enums as names, NULL as a flag), modulo 2^64 "
                            "(tiering/verify.py)")
    compression: str = "zstd"
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [f.key for f in self.files]

    def to_json(self) -> bytes:
        body = asdict(self)
        body["columns"] = [{"name": n, "type": t} for n, t in self.columns]
        return json.dumps(body, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        body = json.loads(data)
        if body.get("format") != FORMAT:
            raise ValueError("not a cdrhouse archive manifest")
        if body.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"manifest format {body['format_version']} is newer than this "
                             f"cdrhouse understands ({FORMAT_VERSION}); upgrade cdrhouse")
        return cls(
            tenant=body["tenant"], month=int(body["month"]), rows=int(body["rows"]),
            bytes=int(body["bytes"]), checksum=body["checksum"],
            files=tuple(FileEntry(**f) for f in body["files"]),
            columns=tuple((c["name"], c["type"]) for c in body["columns"]),
            schema_version=int(body["schema_version"]), run_id=body["run_id"],
            archived_at=body["archived_at"], sort_key=tuple(body["sort_key"]),
            checksum_method=body["checksum_method"], compression=body["compression"],
            format=body["format"], format_version=int(body["format_version"]),
            extra=body.get("extra", {}))


def index_json(manifests: list[Manifest]) -> bytes:
    """The index of every archived tenant-month (rebuilt from the manifests, so it
    converges whatever a crashed run left)."""
    months = [{"tenant": m.tenant, "month": m.month, "rows": m.rows, "bytes": m.bytes,
               "files": len(m.files), "checksum": m.checksum,
               "manifest": manifest_key(m.tenant, m.month), "archived_at": m.archived_at}
              for m in sorted(manifests, key=lambda m: (m.tenant, m.month))]
    return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "table": ROOT,
                       "months": months}, indent=2, sort_keys=True).encode()
