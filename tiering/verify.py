"""Fingerprints: a row count and a content checksum that ClickHouse computes the
same way on the hot table and on Parquet files read back from the archive.

The checksum is the sum, modulo 2^64, of cityHash64 over each row's columns. A
sum (not a XOR) so that a duplicated row changes it. Columns are hashed as
values of the hot table's type (a no-op cast on the hot side, a conversion on
the Parquet side), so the round trip — enums become strings, LowCardinality
disappears — does not change the hash; enums are hashed as their names, and a
NULL as a flag plus a zero, because cityHash64 of a NULL argument is NULL and
would silently drop the row from the sum. Hashing native values, not text,
keeps the checksum cheap enough to compute on every pass that needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdrhouse.engine.db import Database

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


def _unwrap(type_: str, wrapper: str) -> str:
    return type_[len(wrapper) + 1:-1] if type_.startswith(wrapper + "(") else type_


def canonical(name: str, type_: str) -> list[str]:
    """The hash arguments for one column (see the module docstring)."""
    col = f"`{name}`"
    base = _unwrap(type_, "LowCardinality")
    if base.startswith("Nullable("):
        inner = _unwrap(_unwrap(base, "Nullable"), "LowCardinality")
        if inner.startswith("Enum"):
            return [f"isNull({col})", f"ifNull(toString({col}), '')"]
        return [f"isNull({col})", f"ifNull(CAST({col} AS Nullable({inner})), CAST(0 AS {inner}))"]
    if base.startswith("Enum"):
        return [f"toString({col})"]
    return [f"CAST({col} AS {base})"]


def row_hash(columns: list[tuple[str, str]]) -> str:
    return "cityHash64(" + ", ".join(a for n, t in columns for a in canonical(n, t)) + ")"


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
