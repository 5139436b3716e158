"""User SQL: parse a ClickHouse SELECT and rewrite logical table names into real reads.

`parse_one_select` is the shared front door (one SELECT/UNION statement, or a
UserSQLError); the rewrite itself lives in sql/guard.py, and
`expand_logical_tables` is the operator (`--as admin`) path through it.
Parsing uses sqlglot's ClickHouse dialect; the rewrite is a pass over the
AST, not text surgery, so a table name inside a string literal or a comment
is never touched.
"""

from __future__ import annotations

from cdrhouse.sql.errors import UserError

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError


class UserSQLError(UserError):
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
        # statements sqlglot does not model (SYSTEM, SHOW, GRANT, …) parse as a Command
        kind = tree.name if isinstance(tree, exp.Command) else tree.key
        raise UserSQLError(f"only SELECT queries are allowed, not {kind.upper()}")
    return tree


def expand_logical_tables(sql: str) -> str:
    """Rewrite every reference to a logical table into its subquery (operator path).

    Delegates to the tenant guard as the platform admin: no tenant predicate, every
    field visible, and all the guard's refusals (table functions, system tables,
    settings, …) still apply. Raises UserSQLError.
    """
    from cdrhouse.sql.guard import compile_user_sql  # the guard imports this module
    from cdrhouse.sql.principal import Principal

    return compile_user_sql(sql, Principal.admin()).sql
