"""Logical tables: the names users write in SQL, and what they read physically.

Users never name a physical table. `cdrs` is the CDR table deduplicated
(ReplacingMergeTree read with FINAL, so a re-ingested or re-rated call counts
once) and restricted to catalogue fields; internal columns (version, source,
ingested_at) do not exist for users.

Each logical table says which physical table it reads, which columns it
exposes, who may see each column (the field catalogue decides for catalogue
fields; other columns must declare their roles) and which column holds the
account id for customer and carrier users. The user-SQL guard (sql/guard.py)
turns every reference into a guarded subquery from this description, so adding
a table is one entry here. For example, once a `daily_summary` table exists in
sql/schema/:

    DAILY_SUMMARY = LogicalTable(
        "daily_summary", "cdr_daily_summary",
        ("day", "customer_id", "carrier_id", "country", "calls", "billsec",
         "customer_charge", "carrier_cost"),
        extra_roles=(("day", catalogue.ALL_ROLES), ("calls", catalogue.ALL_ROLES)),
        final=False)
    TABLES[DAILY_SUMMARY.name] = DAILY_SUMMARY
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cdrhouse.sql import catalogue
from cdrhouse.sql.schema import migrations

#: role → column holding that role's account id (what Principal.guard filters on).
DEFAULT_ACCOUNT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("customer", "customer_id"), ("carrier", "carrier_id"))


@dataclass(frozen=True)
class LogicalTable:
    name: str
    physical: str
    #: column names users may see, before role filtering
    columns: tuple[str, ...]
    final: bool = True
    #: (role, column) pairs: the account column a customer/carrier guard filters on
    account_columns: tuple[tuple[str, str], ...] = DEFAULT_ACCOUNT_COLUMNS
    #: (column, roles) for columns that are not catalogue fields (e.g. aggregates)
    extra_roles: tuple[tuple[str, frozenset[str]], ...] = ()
    #: a predicate every read carries, before any guard (see DAILY_SUMMARY)
    always: str = ""
    #: (column, aggregate) pairs: on a cluster the table is read grouped by its other
    #: columns, on one node with FINAL (see DAILY_SUMMARY); empty: read row by row
    aggregates: tuple[tuple[str, str], ...] = ()
    #: (column, expression over the aggregates) computed after the grouping (or FINAL)
    derived: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        extra = dict(self.extra_roles)
        for col in self.columns:
            if col not in catalogue.BY_NAME and col not in extra:
                # fail closed: a column nobody decided the visibility of is a bug
                raise ValueError(f"logical table {self.name}: column {col!r} is not a "
                                 "catalogue field and has no extra_roles entry")

    def roles_of(self, column: str) -> frozenset[str]:
        """The roles that may see `column` of this table."""
        extra = dict(self.extra_roles)
        if column in extra:
            return extra[column]
        return catalogue.BY_NAME[column].roles

    def visible_columns(self, role: str) -> tuple[str, ...]:
        """The columns a principal of `role` may see, in table order."""
        return tuple(c for c in self.columns if role in self.roles_of(c))

    def hidden_columns(self, role: str) -> tuple[str, ...]:
        return tuple(c for c in self.columns if role not in self.roles_of(c))

    def account_column_map(self) -> dict[str, str]:
        return dict(self.account_columns)

    def select(self, columns: tuple[str, ...] | None = None, where: str | None = None, *,
               sharded: bool = False) -> str:
        """The subquery that stands in for this table (optionally with a guard predicate).

        A table with `aggregates` is read grouped by its key when `sharded` (the store is
        a cluster: a key's rows may sit on several shards, and FINAL would merge them per
        shard only); on one node FINAL does the same merge, and on a month that is one
        merged part (schema 015) it has nothing to do: measured 10 against 179 ms for a
        tenant's six months by day (benchmarks/README.md, "Settled partitions")."""
        if self.aggregates and sharded:
            return self._grouped(", ".join(columns or self.columns), where)
        derived = dict(self.derived)
        cols = ", ".join(f"{derived[c]} AS {c}" if c in derived else c
                         for c in columns or self.columns)
        final = " FINAL" if self.final or self.aggregates else ""
        sql = f"SELECT {cols} FROM {self.physical}{final}"
        conditions = [c for c in (self.always, where) if c]
        if conditions:
            sql += " WHERE " + " AND ".join(f"({c})" if len(conditions) > 1 else c
                                            for c in conditions)
        return sql


    def _grouped(self, cols: str, where: str | None) -> str:
        """Grouped by the key columns with the aggregates over them, under the physical
        table's name, so the guard's predicate (which names it) applies as for a table.
        The predicate (on key columns: tenant and account ids) is applied below the
        grouping as well: on a cluster that part is what each shard runs, and a filter
        above it would not reach the shards (each would aggregate every tenant)."""
        computed = dict(self.aggregates) | dict(self.derived)
        keys = [c for c in self.columns if c not in computed]
        inner = (f"SELECT {', '.join(keys)}, "
                 f"{', '.join(f'{e} AS {c}' for c, e in self.aggregates)} "
                 f"FROM {self.physical}" + (f" WHERE {where}" if where else "")
                 + f" GROUP BY {', '.join(keys)}")
        outer = ", ".join([*keys, *(c for c, _ in self.aggregates),
                           *(f"{e} AS {c}" for c, e in self.derived)])
        sql = f"SELECT {cols} FROM (SELECT {outer} FROM ({inner})) AS {self.physical}"
        conditions = [c for c in (self.always, where) if c]
        if conditions:
            sql += " WHERE " + " AND ".join(f"({c})" if len(conditions) > 1 else c
                                            for c in conditions)
        return sql


CDRS = LogicalTable("cdrs", "cdr_records", catalogue.NAMES)

#: Per UTC day x customer x carrier x destination (schema 004; kept by engine.summary).
#: The physical table is a SummingMergeTree of deltas; on one node it is read with
#: FINAL, which sums them. On a cluster a key's deltas sit on several shards (each
#: shard summarises its own calls) and FINAL, which runs per shard, would show a key
#: once per shard: there it is read grouped by its key with the sums, which adds the
#: shards up (`LogicalTable.select(sharded=True)`).
#: Catalogue names keep the catalogue's roles (customers never see carrier_id or
#: carrier_cost, carriers never customer_id or customer_charge); margin and the
#: unrated count (which reveals the other side) are for operators only.
DAILY_SUMMARY = LogicalTable(
    "daily_summary", "cdr_daily_summary",
    ("tenant_id", "day", "customer_id", "carrier_id", "country", "dst_prefix", "currency",
     "calls", "connected", "asr", "acd", "duration", "billsec", "billed_sec",
     "customer_charge", "carrier_cost", "margin", "unrated"),
    extra_roles=tuple((c, catalogue.ALL_ROLES) for c in
                      ("day", "calls", "connected", "asr", "acd", "billed_sec"))
    + (("margin", catalogue.OPERATORS), ("unrated", catalogue.OPERATORS)),
    # FINAL on a SummingMergeTree drops a row whose *read* summed columns are all
    # zero; a query that reads only charge and billsec would lose the days of a
    # customer whose calls were all unanswered. Reading `calls` keeps every key that
    # has calls (and a key without calls has nothing to show).
    always="calls != 0", final=False,
    aggregates=tuple((c, f"sum({c})") for c in (
        "calls", "connected", "duration", "billsec", "billed_sec", "customer_charge",
        "carrier_cost", "unrated")),
    derived=(("asr", "if(calls = 0, 0, connected / calls)"),
             ("acd", "if(connected = 0, 0, billsec / connected)"),
             ("margin", "customer_charge - carrier_cost")))

TABLES: dict[str, LogicalTable] = {CDRS.name: CDRS, DAILY_SUMMARY.name: DAILY_SUMMARY}

_CREATE = re.compile(r"CREATE\s+(?:TABLE|VIEW|MATERIALIZED\s+VIEW|DICTIONARY)\s+"
                     r"(?:IF\s+NOT\s+EXISTS\s+)?[`\"]?([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)


def _physical_tables() -> frozenset[str]:
    """Every table the schema files create, plus the migrator's own, plus each logical
    table's physical table: names user SQL may never write, in any position."""
    names = {"schema_migrations"} | {t.physical for t in TABLES.values()}
    for mig in migrations():
        names.update(_CREATE.findall(mig.sql))
    return frozenset(names)


PHYSICAL_TABLES: frozenset[str] = _physical_tables()
