"""Warm months as part of the CDR table a query reads (`include_archive=true`).

Every guarded read of CDRs — the viewer's query and each `cdrs` subquery the
user-SQL guard builds — reads `cdr_records FINAL`. With archived months in the
requested range, that read becomes the hot table *plus* the archived months'
Parquet files, as one relation with the hot table's name:

    FROM (SELECT <fields> FROM cdr_records FINAL
          UNION ALL SELECT <fields> FROM s3(…month 1…)
          UNION ALL …) AS cdr_records

so the guard predicate, the filters, the sort and the keyset cursor apply to
warm rows exactly as to hot ones (ClickHouse pushes the WHERE into every branch).
The archive SELECTs are built by the tiering package from manifests, never from
user input, and are spliced in *after* the guard has checked and printed the
user's query, so users still cannot name a table function. An archived month is
no longer in the hot table (its partition was dropped only after verification),
so no call is counted twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdrhouse.sql import catalogue

HOT_READ = "FROM cdr_records FINAL"


class ArchiveSourceError(RuntimeError):
    """The query has no hot read to extend: fail closed rather than guess."""


def union_read(archive_selects: Sequence[str]) -> str:
    """The FROM clause reading the hot table and the given archive SELECTs (which
    must produce `catalogue.NAMES`, in order, with the hot table's types)."""
    fields = ", ".join(catalogue.NAMES)
    branches = [f"SELECT {fields} {HOT_READ}", *archive_selects]
    return "FROM (" + " UNION ALL ".join(branches) + ") AS cdr_records"


def with_archive(sql: str, archive_selects: Sequence[str]) -> str:
    """`sql` (a compiled, guarded query) reading the archive too; unchanged without
    archive SELECTs."""
    if not archive_selects:
        return sql
    if HOT_READ not in sql:
        raise ArchiveSourceError("internal error: the compiled query has no hot CDR read "
                                 "to extend with the archive")
    return sql.replace(HOT_READ, union_read(archive_selects))
