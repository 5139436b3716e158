"""Fingerprints: a row count and a content checksum that ClickHouse computes the
same way on the hot table and on Parquet files read back from the archive.

The checksum is the sum, modulo 2^64, of cityHash64 over each row's canonical
column values. A sum (not a XOR) so that a duplicated row changes it; over
canonical values (timestamps as epoch milliseconds, everything else as text,
NULL as a marker no text can equal) so that the Parquet round trip — enums
become strings, LowCardinality disappears — does not change it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.db import Database

_NULL = "'\\0NULL'"


@dataclass(frozen=True)
class Fingerprint:
    rows: int
    checksum: str

    def __str__(self) -> str:
        return f"{self.rows} rows, checksum {self.checksum}"


def hot_columns(db: Database, table: str = "cdr_records") -> list[tuple[str, str]]:
    """The columns a row is stored with (computed columns are left out: they are
    recomputed when rows come back)."""
    return [(n, t) for n, t in db.rows(
        "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
        "AND table = {t:String} AND default_kind NOT IN ('MATERIALIZED', 'ALIAS', 'EPHEMERAL') "
        "ORDER BY position", {"t": table})]


def canonical(name: str, type_: str) -> str:
    col = f"`{name}`"
    if "DateTime64" in type_:
        expr = f"toString(toUnixTimestamp64Milli({col}))"
    elif "DateTime" in type_:
        expr = f"toString(toUnixTimestamp({col}))"
    else:
        expr = f"toString({col})"
    return f"ifNull({expr}, {_NULL})" if type_.startswith("Nullable") else expr


def row_hash(columns: list[tuple[str, str]]) -> str:
    return "cityHash64(" + ", ".join(canonical(n, t) for n, t in columns) + ")"


def fingerprint_sql(source: str, columns: list[tuple[str, str]]) -> str:
    return f"SELECT count(), toString(sum({row_hash(columns)})) FROM {source}"


def fingerprint(db: Database, source: str, columns: list[tuple[str, str]],
                params: dict | None = None) -> Fingerprint:
    rows, checksum = db.rows(fingerprint_sql(source, columns), params or {})[0]
    return Fingerprint(int(rows), str(checksum) if rows else "0")


def per_file(db: Database, source: str,
             columns: list[tuple[str, str]]) -> dict[str, Fingerprint]:
    """Fingerprint of each file a table function reads (by file name)."""
    rows = db.rows(f"SELECT _file, count(), toString(sum({row_hash(columns)})) "
                   f"FROM {source} GROUP BY _file")
    return {f: Fingerprint(int(n), str(c)) for f, n, c in rows}


def combine(parts: list[Fingerprint]) -> Fingerprint:
    return Fingerprint(sum(p.rows for p in parts),
                       str(sum(int(p.checksum) for p in parts) % (1 << 64)) if parts else "0")
