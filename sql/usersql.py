"""User SQL: parse a ClickHouse SELECT and rewrite logical table names into real reads.

`parse_one_select` is the shared front door (one SELECT/UNION statement, or a
UserSQLError); the rewrite itself lives in sql/guard.py, which imports this module
(never the other way round: the admin path is `compile_user_sql(sql, Principal.admin())`).
Parsing uses sqlglot's ClickHouse dialect; the rewrite is a pass over the
AST, not text surgery, so a table name inside a string literal or a comment
is never touched.
"""

from __future__ import annotations

from cdrhouse.sql.errors import UserError

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError
from sqlglot.tokens import TokenType


class UserSQLError(UserError):
    """The SQL cannot be run; the message says what to change."""


#: Words that start a query; any other first word names a statement that is refused.
_QUERY_STARTS = frozenset({"SELECT", "WITH"})
#: Second words that belong to the statement's name ("KILL QUERY", "EXISTS TABLE", …).
_OBJECT_WORDS = frozenset({
    "TABLE", "TABLES", "QUERY", "MUTATION", "DATABASE", "DATABASES", "DICTIONARY", "DICTIONARIES",
    "VIEW", "USER", "USERS", "ROLE", "ROLES", "INTO", "FROM", "PROCESSLIST", "CREATE", "TEMPORARY",
    "SETTINGS", "GRANTS", "FUNCTION", "PARTITION", "POLICY", "QUOTA", "PROFILE", "COLUMNS",
    "TRANSACTION", "AST", "SYNTAX", "PLAN", "PIPELINE", "ESTIMATE"})


def _refuse_statement_kinds(sql: str) -> None:
    """Name what is not a query, before the parser gets a chance to say something obscure.

    Works on tokens (so words inside strings and comments do not count): the first word
    must start a query, and INTO (INTO OUTFILE, INSERT INTO) may appear nowhere.
    """
    try:
        all_tokens = sqlglot.Dialect.get_or_raise("clickhouse").tokenize(sql)
    except SqlglotError:
        return  # the parser reports it, with its position
    statements: list[list] = [[]]
    for t in all_tokens:
        if t.token_type == TokenType.SEMICOLON:
            statements.append([])
        else:
            statements[-1].append(t)
    statements = [st for st in statements if st]
    if len(statements) > 1:
        raise UserSQLError("only one statement is allowed; remove the extra ';' statements")
    tokens = statements[0] if statements else []
    words = [t for t in tokens if t.token_type not in (TokenType.L_PAREN,)]
    if not words:
        return
    first = words[0].text.upper()
    if first not in _QUERY_STARTS:
        kind = first
        # statements sqlglot knows as commands come as one token for the rest of the text
        second = (words[1].text.split() or [""])[0].upper() if len(words) > 1 else ""
        if second in _OBJECT_WORDS:
            kind += " " + second
        raise UserSQLError(f"only SELECT queries are allowed; {kind} is not")
    for i, token in enumerate(tokens):
        if token.token_type == TokenType.INTO or (
                token.token_type == TokenType.VAR and token.text.upper() == "INTO"):
            after = tokens[i + 1].text.upper() if i + 1 < len(tokens) else ""
            what = f"INTO {after}" if after in ("OUTFILE", "TABLE") else "INTO"
            raise UserSQLError(f"only SELECT queries are allowed; {what} is not (a query can "
                               "only return rows)")


def parse_one_select(sql: str) -> exp.Expression:
    """Exactly one SELECT (or UNION of SELECTs) statement, or a UserSQLError."""
    _refuse_statement_kinds(sql)
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

