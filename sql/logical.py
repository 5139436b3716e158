"""Logical tables: the names users write in SQL, and what they read physically.

Users never name a physical table. `cdrs` is the CDR table deduplicated
(ReplacingMergeTree read with FINAL, so a re-ingested or re-rated call counts
once) and restricted to catalogue fields; internal columns (version, source,
ingested_at) do not exist for users.
"""

from __future__ import annotations

from dataclasses import dataclass

from sql import catalogue


@dataclass(frozen=True)
class LogicalTable:
    name: str
    physical: str
    #: column names users may see, before role filtering
    columns: tuple[str, ...]
    final: bool = True

    def select(self, columns: tuple[str, ...] | None = None, where: str | None = None) -> str:
        """The subquery that stands in for this table (optionally with a guard predicate)."""
        cols = ", ".join(columns or self.columns)
        final = " FINAL" if self.final else ""
        sql = f"SELECT {cols} FROM {self.physical}{final}"
        if where:
            sql += f" WHERE {where}"
        return sql


CDRS = LogicalTable("cdrs", "cdr_records", catalogue.NAMES)

TABLES: dict[str, LogicalTable] = {CDRS.name: CDRS}
