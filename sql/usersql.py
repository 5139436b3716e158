"""User SQL: parse a ClickHouse SELECT and rewrite logical table names into real reads.

This is the operator (`--as admin`) path: one read-only query, logical tables
only, no table functions, settings or output clauses. Parsing uses sqlglot's
ClickHouse dialect; the rewrite is a pass over the AST, not text surgery, so
a table name inside a string literal or a comment is never touched.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from sql.logical import TABLES


class UserSQLError(ValueError):
    """The SQL cannot be run; the message says what to change."""


def parse_one_select(sql: str) -> exp.Expression:
    """Exactly one SELECT (or UNION of SELECTs) statement, or a UserSQLError."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="clickhouse") if s is not None]
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        where = f" at line {first.get('line')}, column {first.get('col')}" if first else ""
        raise UserSQLError(f"cannot parse the SQL{where}: {first.get('description', exc)}") from None
    if not statements:
        raise UserSQLError("the SQL is empty")
    if len(statements) > 1:
        raise UserSQLError("only one statement is allowed; remove the extra ';' statements")
    tree = statements[0]
    if not isinstance(tree, exp.Query):
        raise UserSQLError(f"only SELECT queries are allowed, not {tree.key.upper()}")
    return tree


def expand_logical_tables(sql: str) -> str:
    """Rewrite every reference to a logical table into its subquery (operator path)."""
    tree = parse_one_select(sql)
    if tree.args.get("settings") or list(tree.find_all(exp.QueryOption)):
        raise UserSQLError("SETTINGS are not allowed in user SQL; limits are set by cdrhouse")
    if tree.args.get("format"):
        raise UserSQLError("FORMAT is not allowed; choose the output format with --format")
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    for table in list(tree.find_all(exp.Table)):
        name = table.name
        if isinstance(table.this, exp.Anonymous) or isinstance(table.this, exp.Func):
            raise UserSQLError(f"table functions are not allowed: {table.this.sql('clickhouse')}")
        if not table.args.get("db") and name in ctes:
            continue
        logical = TABLES.get(name)
        if table.args.get("db") or logical is None:
            known = ", ".join(sorted(TABLES))
            raise UserSQLError(f"unknown table {table.sql('clickhouse')!r}; query one of: {known}")
        sub = sqlglot.parse_one(logical.select(), read="clickhouse")
        alias = table.alias or name
        table.replace(exp.Subquery(this=sub, alias=exp.TableAlias(this=exp.to_identifier(alias))))
    return tree.sql(dialect="clickhouse")
