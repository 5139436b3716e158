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

The substitution is a pass over the **syntax tree** of the compiled query, never
a text replace: only `Table` nodes that read the physical table are replaced,
so the same words inside a string literal, a quoted alias or a comment of the
user's query are never touched. The compiled query was already checked by the
guard, which refuses the physical table's name anywhere in user SQL, so every
such node is one the guard (or the viewer) built. The result is checked once
more: parsed back, with each union put back to the plain hot read, it must be
the query we were given — what runs is what was checked, plus the archive.

The archive SELECTs are built by the tiering package from manifests, never
from user input, so users still cannot name a table function. An archived
month is no longer in the hot table (its partition was dropped only after
verification), so no call is counted twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from cdrhouse.sql import catalogue

#: The physical table whose guarded reads the archive extends.
HOT_TABLE = "cdr_records"
_GEN = {"dialect": "clickhouse", "comments": False}


class ArchiveSourceError(RuntimeError):
    """The query reads the hot table in an unexpected form, or the substitution would
    change what was checked: fail closed rather than guess (an internal error)."""


def union_sql(archive_selects: Sequence[str]) -> str:
    """The SELECT reading the hot table and the given archive SELECTs (which must
    produce `catalogue.NAMES`, in order, with the hot table's types)."""
    fields = ", ".join(catalogue.NAMES)
    branches = [f"SELECT {fields} FROM {HOT_TABLE} FINAL", *archive_selects]
    return " UNION ALL ".join(branches)


def _parse(sql: str, what: str) -> exp.Expression:
    try:
        tree = sqlglot.parse_one(sql, read="clickhouse")
    except SqlglotError as exc:
        raise ArchiveSourceError(f"internal error: cannot parse {what}: {exc}") from None
    if tree is None:
        raise ArchiveSourceError(f"internal error: {what} is empty")
    return tree


def _hot_reads(tree: exp.Expression) -> list[exp.Final]:
    """Every `cdr_records FINAL` node in `tree`; any other reference to the physical
    table (no FINAL, another database, an alias) is an error — fail closed."""
    reads: list[exp.Final] = []
    for table in tree.find_all(exp.Table):
        if table.name.lower() != HOT_TABLE:
            continue
        parent = table.parent
        if (table.args.get("db") is None and table.args.get("catalog") is None
                and table.args.get("alias") is None and table.name == HOT_TABLE
                and isinstance(parent, exp.Final) and table.arg_key == "this"):
            reads.append(parent)
        else:
            raise ArchiveSourceError("internal error: the compiled query reads the hot table "
                                     "in an unexpected form; refusing to extend it")
    return reads


def _union_subquery(union: exp.Expression) -> exp.Subquery:
    return exp.Subquery(this=union.copy(),
                        alias=exp.TableAlias(this=exp.to_identifier(HOT_TABLE)))


def with_archive(sql: str, archive_selects: Sequence[str]) -> str:
    """`sql` (a compiled, guarded query) reading the archive too; unchanged without
    archive SELECTs or without a CDR read (user SQL over `daily_summary` or constants
    only). Raises ArchiveSourceError if the hot table is read in any other form than
    the guard's `cdr_records FINAL` (fail closed: never silently skip the archive)."""
    if not archive_selects:
        return sql
    original = _parse(sql, "the compiled query")
    expected = original.sql(**_GEN)
    tree = original.copy()
    reads = _hot_reads(tree)
    if not reads:
        return sql
    union = _parse(union_sql(archive_selects), "the archive SELECTs")
    union_text = union.sql(**_GEN)
    for final in reads:
        final.replace(_union_subquery(union))
    out = tree.sql(**_GEN)

    # Check what will run: the unions are exactly where the hot reads were, and
    # everything else prints as the checked query did.
    again = _parse(out, "the extended query")
    found = [s for s in again.find_all(exp.Subquery)
             if s.alias == HOT_TABLE and s.this.sql(**_GEN) == union_text]
    if len(found) != len(reads):
        raise ArchiveSourceError("internal error: the archive reads did not land where the "
                                 "hot reads were")
    for sub in found:
        sub.replace(exp.Final(this=exp.to_table(HOT_TABLE)))
    if again.sql(**_GEN) != expected:
        raise ArchiveSourceError("internal error: extending the query with the archive would "
                                 "change it; refusing")
    return out
