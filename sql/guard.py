"""The user-SQL tenant guard: turn a user's ClickHouse SELECT into one that only reads
what its principal may read.

User SQL names logical tables (sql/logical.py). The guard parses it with
sqlglot (ClickHouse dialect) and walks the whole AST once, failing closed in
the spirit of PostHog's HogQL: a node type, clause or function it does not
know is refused, naming it. Every reference to a logical table — in FROM,
JOIN, subqueries, CTE bodies, `IN (…)`, UNION branches, scalar subqueries —
is replaced by a guarded subquery over the physical table:

    (SELECT <columns the role may see> FROM cdr_records FINAL
     WHERE cdr_records.tenant_id = {__guard_tenant:String}
       [AND cdr_records.customer_id = {__guard_account:UInt32}]) AS cdrs

The predicate comes from `Principal.guard()` and its values are bound server
side, never spliced into SQL text. Its columns are qualified with the
physical table so that no alias the user defines (ClickHouse propagates
`WITH x AS name` into subqueries) can stand in for them.

Refused, each with a message that says what to change: anything but one
SELECT/UNION statement; table functions; other databases and `system.*`;
physical table names anywhere; unknown tables (including a CTE name used
outside its scope, which ClickHouse would resolve to a real table); CTE names
and aliases that reuse a table name; fields the role may not see, wherever
they are named; functions not in sql/functions.py; SETTINGS, FORMAT, INTO
OUTFILE, SAMPLE, PREWHERE, WITH RECURSIVE; reserved or `Identifier`-typed
query parameters. `FINAL` written by the user on a logical table is dropped:
the guard always reads it with FINAL.

The output is printed by sqlglot without comments, then parsed again and
checked a second time (it must print identically and every read must be a
guard subquery): what runs is exactly what was checked.
"""

from __future__ import annotations

import functools

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError

from cdrhouse.sql import catalogue, functions
from cdrhouse.sql.logical import PHYSICAL_TABLES, TABLES, LogicalTable
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.usersql import UserSQLError, parse_one_select

#: Query parameters whose names start with this belong to the guard.
RESERVED_PARAM_PREFIX = "__guard"
#: Longer SQL is refused before parsing: user queries are short, and the AST walk is recursive.
MAX_SQL_LENGTH = 100_000

# copy=False: printing without deep-copying the tree first (5.6 -> 3.9 ms a compile).
# Safe because what runs is the printed text, parsed and checked again from scratch.
_GEN: dict[str, Any] = {"dialect": "clickhouse", "comments": False, "copy": False,
                        "unsupported_level": ErrorLevel.RAISE}
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BARE_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CALL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_SYSTEM_DATABASES = frozenset({"system", "information_schema"})


class _DropCommandFallbackWarning(logging.Filter):
    """sqlglot warns when it parses a statement it does not know (SYSTEM, SHOW, …) as a
    generic command; the guard refuses those with its own message, so the warning would
    only be noise on the CLI's stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_DropCommandFallbackWarning())


class GuardError(UserSQLError):
    """User SQL refused by the guard; the message names what is refused and why."""


@dataclass(frozen=True)
class CompiledSQL:
    """Guarded SQL ready to run: `db.query(c.sql, parameters=c.parameters, settings=…)`."""

    sql: str
    #: the user's parameters plus the guard's (tenant, account)
    parameters: dict[str, Any]
    #: logical tables the query reads, sorted (for logs and audit)
    tables: tuple[str, ...]


# -- what the walk accepts ---------------------------------------------------------------

#: Clause-bearing nodes: the only args they may have set. Anything else is refused by
#: name, so a clause sqlglot learns to parse later is refused until it is reviewed.
_ALLOWED_ARGS: dict[type[exp.Expression], frozenset[str]] = {
    exp.Select: frozenset({"with_", "expressions", "distinct", "from_", "joins", "where",
                           "group", "having", "qualify", "windows", "order", "limit",
                           "offset"}),
    exp.Union: frozenset({"with_", "this", "expression", "distinct", "order", "limit", "offset"}),
    exp.Intersect: frozenset({"with_", "this", "expression", "distinct", "order", "limit",
                              "offset"}),
    exp.Except: frozenset({"with_", "this", "expression", "distinct", "order", "limit",
                           "offset"}),
    exp.Subquery: frozenset({"this", "alias"}),
    exp.Table: frozenset({"this", "alias"}),
    exp.Join: frozenset({"this", "on", "side", "kind", "using", "method", "global_",
                         "expressions"}),
    exp.With: frozenset({"expressions"}),
    exp.CTE: frozenset({"this", "alias", "scalar"}),
    exp.Column: frozenset({"this", "table"}),
    exp.Star: frozenset({"except_", "replace"}),
    exp.Placeholder: frozenset({"this", "kind"}),
    exp.Window: frozenset({"this", "partition_by", "order", "spec", "alias", "over"}),
    exp.Limit: frozenset({"expression", "offset", "expressions", "limit_options"}),
    exp.Group: frozenset({"expressions", "rollup", "cube", "totals", "all", "grouping_sets"}),
    exp.In: frozenset({"this", "expressions", "query", "field", "is_global"}),
    exp.Final: frozenset({"this"}),
    exp.Lambda: frozenset({"this", "expressions"}),
}

#: Plain expression nodes: allowed, their children are checked like everything else.
_PLAIN_NODES: tuple[type[exp.Expression], ...] = (
    exp.From, exp.Where, exp.Having, exp.Qualify, exp.Order, exp.Ordered, exp.Offset,
    exp.Fetch, exp.LimitOptions, exp.TableAlias, exp.Alias, exp.Literal, exp.Null,
    exp.Boolean, exp.HexString, exp.RawString, exp.DataType, exp.DataTypeParam, exp.Paren,
    exp.Tuple, exp.Bracket, exp.Dot, exp.Distinct, exp.WindowSpec, exp.Interval, exp.Neg,
    exp.Not, exp.And, exp.Or, exp.Xor, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv,
    exp.Mod, exp.EQ, exp.NEQ, exp.NullSafeEQ, exp.NullSafeNEQ, exp.GT, exp.GTE, exp.LT,
    exp.LTE, exp.Is, exp.Between, exp.Like, exp.ILike, exp.Escape, exp.DPipe,
    exp.BitwiseAnd, exp.BitwiseOr, exp.BitwiseXor, exp.BitwiseNot, exp.BitwiseLeftShift,
    exp.BitwiseRightShift, exp.Rollup, exp.Cube, exp.GroupingSets, exp.WithFill,
)

#: Functions sqlglot prints as SQL syntax rather than `name(…)`.
_SYNTAX_FUNCS: tuple[type[exp.Expression], ...] = (
    exp.Case, exp.If, exp.Array, exp.Exists, exp.Cast, exp.TryCast)

#: Function nodes that carry the name as written (`sumIf`, `quantile(0.9)(x)`, `foo(…)`).
_NAMED_FUNCS: tuple[type[exp.Expression], ...] = (
    exp.Anonymous, exp.AnonymousAggFunc, exp.CombinedAggFunc, exp.ParameterizedAgg,
    exp.CombinedParameterizedAgg)

_CLAUSE_MESSAGES: dict[str, str] = {
    "settings": "SETTINGS are not allowed in user SQL; query limits are set by cdrhouse",
    "format": "FORMAT is not allowed in user SQL; choose the output format outside the query",
    "into": "INTO / INTO OUTFILE is not allowed; a query can only return rows",
    "sample": "SAMPLE is not allowed; cdrhouse decides how tables are read",
    "prewhere": "PREWHERE is not allowed; use WHERE (ClickHouse moves conditions itself)",
    "db": "names qualified with a database (db.table.column) are not allowed",
    "catalog": "names qualified with a database (db.table.column) are not allowed",
    "hint": "query hints are not allowed",
    "recursive": "WITH RECURSIVE is not allowed",
    "materialized": "MATERIALIZED CTEs are not allowed",
    "locks": "locking clauses are not allowed",
}


# -- the public API ----------------------------------------------------------------------

def compile_user_sql(sql: str, principal: Principal,
                     params: Mapping[str, Any] | None = None, *,
                     sharded: bool = False) -> CompiledSQL:
    """Check `sql` for `principal` and return it with every logical table guarded.

    Pure: no database. Raises GuardError (a UserSQLError) with a message naming
    what was refused. `params` are the user's `{name:Type}` values; each must be
    used by the SQL and none may use the reserved `__guard` prefix. `sharded`: the
    store is a cluster, which changes how the daily summary is read (never what the
    guard adds; sql/logical.py).
    """
    user_params = _check_param_names(params)
    out, placeholders, tables, guard_keys = _compile_text(sql, principal.role, sharded)
    missing = sorted(placeholders - user_params.keys())
    if missing:
        raise GuardError(f"no value given for query parameter(s): {', '.join(missing)}")
    unused = sorted(user_params.keys() - placeholders)
    if unused:
        raise GuardError(f"query parameter(s) not used in the SQL: {', '.join(unused)}; "
                         "write them as {name:Type}")
    guard_params = _guard_params(principal) if guard_keys else {}
    if set(guard_params) != guard_keys:  # fail closed if the text and the values disagree
        raise GuardError("internal error: guard parameters do not match the guarded SQL")
    return CompiledSQL(out, {**user_params, **guard_params}, tables)


_STAND_IN = {  # principals used to build the (value-free) guarded text for each role
    "admin": Principal.admin(),
    "tenant": Principal.operator("stand-in"),
    "customer": Principal.customer("stand-in", 1),
    "carrier": Principal.carrier("stand-in", 1),
}


def _guard_params(principal: Principal) -> dict[str, Any]:
    _, params = principal.guard()
    return params


@functools.lru_cache(maxsize=1024)
def _compile_text(sql: str, role: str, sharded: bool = False
                  ) -> tuple[str, frozenset[str], tuple[str, ...], frozenset[str]]:
    """The guarded SQL text for `role` — cached: it depends on the SQL, the role and
    the topology only.

    Guard values (tenant, account) are bound parameters, never text, so one
    compiled text serves every principal of a role; dashboards that repeat a
    query skip the parse entirely.
    """
    principal = _STAND_IN[role]
    tree = _parse(sql)
    checker = _Checker(principal, sharded=sharded)
    _guarded(checker.visit, tree)
    tree = _guarded(checker.rewrite, tree)
    out = _print(tree)

    # Second look at exactly what will run: it must parse back to itself and pass the
    # same checks, with physical reads allowed only as the guard subqueries built here.
    again = _parse(out)
    if _print(again) != out:
        raise GuardError("the SQL could not be rewritten safely (it does not print back "
                         "to itself); simplify the query")
    _guarded(_Checker(principal, verify=checker.guard_sql, sharded=sharded).visit, again)
    return (out, frozenset(checker.placeholders), tuple(sorted(checker.tables_read)),
            frozenset(checker.guard_params))


# -- internals ---------------------------------------------------------------------------

def _check_param_names(params: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in (params or {}).items():
        if not isinstance(name, str) or not _PARAM_NAME.match(name):
            raise GuardError(f"invalid query parameter name {name!r}: use letters, digits "
                             "and '_', starting with a letter or '_'")
        if name.lower().startswith(RESERVED_PARAM_PREFIX):
            raise GuardError(f"query parameter {name!r} is reserved: names starting with "
                             f"{RESERVED_PARAM_PREFIX!r} belong to the tenant guard")
        out[name] = value
    return out


def _parse(sql: str) -> exp.Expression:
    if not isinstance(sql, str):
        raise GuardError("the SQL must be text")
    if len(sql) > MAX_SQL_LENGTH:
        raise GuardError(f"the SQL is too long ({len(sql):,} characters; at most "
                         f"{MAX_SQL_LENGTH:,})")
    try:
        return _guarded(parse_one_select, sql)
    except GuardError:
        raise
    except UserSQLError as exc:
        raise GuardError(str(exc)) from None
    except SqlglotError as exc:  # tokenizer errors are not ParseErrors
        raise GuardError(f"cannot parse the SQL: {exc}") from None


def _print(tree: exp.Expression) -> str:
    try:
        return _guarded(tree.sql, **_GEN)
    except SqlglotError as exc:
        raise GuardError(f"the SQL uses something cdrhouse cannot run safely: {exc}") from None


def _guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except RecursionError:
        raise GuardError("the SQL is nested too deeply; simplify it") from None


def _function_name(node: exp.Func) -> str:
    """The ClickHouse name of a function node, as it will be printed."""
    if isinstance(node, _NAMED_FUNCS):
        return node.name
    try:
        text = node.sql(**_GEN)
    except SqlglotError:
        return node.key
    m = _CALL.match(text)
    return m.group(1) if m else node.key


class _Checker:
    """One pass over the AST: refuse what is not allowed, remember what to rewrite.

    With `verify` (the guard subqueries built by the first pass, as SQL text) it
    re-checks printed output: those subqueries are trusted, logical tables must be gone.
    """

    def __init__(self, principal: Principal, verify: set[str] | None = None,
                 sharded: bool = False) -> None:
        self.principal = principal
        self.sharded = sharded
        self.role = principal.role
        self.verify = verify
        self.logical: dict[str, LogicalTable] = dict(TABLES)
        self.logical_lower = {name.lower() for name in self.logical}
        physical = set(PHYSICAL_TABLES) | {t.physical for t in self.logical.values()}
        self.physical_lower = {name.lower() for name in physical}
        hidden = {f.name for f in catalogue.FIELDS if not f.visible_to(self.role)}
        for table in self.logical.values():
            hidden.update(table.hidden_columns(self.role))
        self.hidden: dict[str, str] = {name.lower(): name for name in hidden}
        self.reads: list[exp.Table] = []
        self.finals: list[exp.Final] = []
        self.placeholders: set[str] = set()
        self.tables_read: set[str] = set()
        self.guard_params: dict[str, Any] = {}
        self.guard_sql: set[str] = set()

    # -- the walk ---------------------------------------------------------------------

    def visit(self, node: exp.Expression, scope: frozenset[str] = frozenset()) -> None:
        """Check `node` and its subtree; `scope` holds the CTE names visible here."""
        if isinstance(node, exp.Query) and node.args.get("with_"):
            scope = self._with(node.args["with_"], scope)
        if isinstance(node, exp.Table):
            self._table(node, scope)
            return
        if isinstance(node, exp.Values):
            raise GuardError("VALUES lists and the values() table function are not allowed; "
                             f"query the logical tables: {self._known()}")
        self._check_args(node)

        if isinstance(node, exp.Subquery) and self.verify is not None:
            if node.this.sql(**_GEN) in self.verify:
                return  # one of the guard subqueries built by the first pass
        if isinstance(node, exp.Final):
            self._final(node, scope)
        elif isinstance(node, exp.Identifier):
            self._identifier(node)
        elif isinstance(node, exp.Var):
            self._var(node)
        elif isinstance(node, exp.Placeholder):
            self._placeholder(node)
            return
        elif isinstance(node, exp.In):
            self._in(node)
        elif isinstance(node, exp.Func) and not isinstance(node, (*_SYNTAX_FUNCS, *_PLAIN_NODES)):
            self._function(node)
        elif not isinstance(node, (*_ALLOWED_ARGS, *_PLAIN_NODES, *_SYNTAX_FUNCS)):
            raise GuardError(f"{_describe(node)} is not supported in user SQL")

        for key, value in node.args.items():
            if key == "with_":
                continue  # visited by _with, in definition order
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, exp.Expression):
                    self.visit(child, scope)

    def _check_args(self, node: exp.Expression) -> None:
        allowed = _ALLOWED_ARGS.get(type(node))
        if allowed is None:
            return
        for key, value in node.args.items():
            if key in allowed or value is None or value is False or (
                    isinstance(value, list) and not value):
                continue
            raise GuardError(_CLAUSE_MESSAGES.get(
                key, f"{key.upper().rstrip('_')} is not supported in user SQL "
                     f"(in {_describe(node)})"))

    def _with(self, with_: exp.Expression, scope: frozenset[str]) -> frozenset[str]:
        """Check the CTEs in order; each body sees the CTEs defined before it."""
        self._check_args(with_)
        names = set(scope)
        defined: set[str] = set()
        for cte in with_.expressions:
            if not isinstance(cte, exp.CTE):
                raise GuardError(f"{_describe(cte)} is not supported in WITH")
            self._check_args(cte)
            alias = cte.args.get("alias")
            if alias is not None:
                self.visit(alias, frozenset(names))  # name checks: not a table or hidden field
            name = cte.alias
            if name in defined:
                raise GuardError(f"WITH defines {name!r} twice")
            defined.add(name)
            self.visit(cte.this, frozenset(names))
            is_table = not cte.args.get("scalar") and isinstance(cte.this, (exp.Select,
                                                                            exp.SetOperation))
            if is_table:
                names.add(name)
        return frozenset(names)

    def _table(self, node: exp.Table, scope: frozenset[str]) -> None:
        db = node.args.get("catalog") or node.args.get("db")
        if db is not None:
            if db.name.lower() in _SYSTEM_DATABASES:
                raise GuardError(f"system tables ({db.name}.*) are not available to user SQL; "
                                 f"query the logical tables: {self._known()}")
            raise GuardError(f"tables of other databases are not allowed "
                             f"({node.sql(dialect='clickhouse')}); query the logical tables: "
                             f"{self._known()}")
        self._check_args(node)
        target = node.this
        if not isinstance(target, exp.Identifier):
            if isinstance(target, exp.Func):
                raise GuardError(f"table functions are not allowed: {_function_name(target)}(…); "
                                 f"query the logical tables: {self._known()}")
            if isinstance(target, exp.Placeholder):
                raise GuardError("a query parameter cannot name a table; query the logical "
                                 f"tables: {self._known()}")
            raise GuardError(f"{_describe(target)} cannot be used as a table")
        name = target.name
        if name.lower() in self.physical_lower:
            raise GuardError(f"unknown table {name!r}: {name} is a physical table and cannot "
                             f"be queried; query the logical tables: {self._known()}")
        if name in scope:
            pass  # a CTE defined in an enclosing WITH
        elif name in self.logical:
            if self.verify is not None:
                raise GuardError(f"internal error: {name} was not guarded")  # fail closed
            self.reads.append(node)
            self.tables_read.add(name)
        else:
            raise GuardError(f"unknown table {name!r} (table names are case-sensitive); "
                             f"query the logical tables: {self._known()}")
        alias = node.args.get("alias")
        if alias is not None:
            self.visit(alias, scope)

    def _final(self, node: exp.Final, scope: frozenset[str]) -> None:
        table = node.this
        if not (isinstance(table, exp.Table) and isinstance(table.this, exp.Identifier)
                and table.name in self.logical and table.name not in scope):
            raise GuardError("FINAL is only accepted on a logical table (where it is implied); "
                             "remove it")
        if self.verify is not None:
            raise GuardError("internal error: FINAL left in the output")
        self.finals.append(node)

    def _identifier(self, node: exp.Identifier) -> None:
        self._name(node.name, node)

    def _var(self, node: exp.Var) -> None:
        if not _BARE_WORD.match(node.name):
            raise GuardError(f"unexpected word {node.name!r} in the SQL")
        self._name(node.name, node)

    def _name(self, name: str, node: exp.Expression) -> None:
        """Names of hidden fields and tables are refused wherever they appear."""
        low = name.lower()
        if low in self.hidden:
            raise GuardError(f"field {self.hidden[low]} is not visible to {self.role} users; "
                             "remove it from the query")
        if low in self.physical_lower:
            raise GuardError(f"{name} is a physical table name and cannot be used in user SQL; "
                             f"query the logical tables: {self._known()}")
        if low in self.logical_lower:
            parent = node.parent
            as_table = isinstance(parent, exp.Table) and node.arg_key == "this"
            as_qualifier = isinstance(parent, exp.Column) and node.arg_key == "table"
            if not (as_table or as_qualifier):
                raise GuardError(f"{name} is a table name: use it after FROM or JOIN or as a "
                                 "column qualifier, not as an alias, CTE name or column")

    def _placeholder(self, node: exp.Placeholder) -> None:
        name = node.name
        if not _PARAM_NAME.match(name or ""):
            raise GuardError("unnamed query parameters are not supported; write {name:Type}")
        if name.lower().startswith(RESERVED_PARAM_PREFIX):
            raise GuardError(f"query parameter {{{name}}} is reserved for the tenant guard")
        kind = node.args.get("kind")
        if not isinstance(kind, exp.DataType):
            raise GuardError(f"query parameter {{{name}:{kind}}}: type {kind} is not allowed; "
                             "parameters carry values (String, UInt32, DateTime, …), not names")
        self.placeholders.add(name)

    def _in(self, node: exp.In) -> None:
        field = node.args.get("field")
        if field is not None and not isinstance(field, exp.Placeholder):
            raise GuardError(f"IN {field.sql(dialect='clickhouse')} is not allowed; write "
                             "IN (SELECT … FROM …) or IN (value, …)")

    def _function(self, node: exp.Func) -> None:
        name = _function_name(node)
        if not functions.is_allowed(name):
            raise GuardError(f"function {name} is not allowed in user SQL "
                             "(see the allowlist in sql/functions.py)")

    def _known(self) -> str:
        return ", ".join(sorted(self.logical))

    # -- the rewrite ------------------------------------------------------------------

    def rewrite(self, tree: exp.Expression) -> exp.Expression:
        """Drop user FINALs and replace each logical table read by its guard subquery."""
        for final in self.finals:
            final.replace(final.this)
        for table in self.reads:
            logical = self.logical[table.name]
            select = self._guard_select(logical)
            alias = table.args.get("alias")
            alias = alias.copy() if alias is not None else exp.TableAlias(
                this=exp.to_identifier(logical.name))
            sub = exp.Subquery(this=select, alias=alias)
            if table is tree:
                return sub
            table.replace(sub)
        return tree

    def _guard_select(self, table: LogicalTable) -> exp.Select:
        columns = table.visible_columns(self.role)
        if not columns:
            raise GuardError(f"{table.name} has no columns visible to {self.role} users")
        predicate, params = self.principal.guard(table.account_column_map())
        select = sqlglot.parse_one(table.select(columns, predicate, sharded=self.sharded),
                                   read="clickhouse")
        where = select.args.get("where")
        if where is not None:
            for col in where.find_all(exp.Column):
                col.set("table", exp.to_identifier(table.physical))
        elif self.role != "admin":
            raise GuardError(f"no guard predicate for role {self.role!r}")  # fail closed
        self.guard_params.update(params)
        self.guard_sql.add(select.sql(**_GEN))
        return select


def _describe(node: exp.Expression) -> str:
    """A short name for a node in messages: its SQL when short, else its kind."""
    try:
        text = node.sql(dialect="clickhouse", comments=False)
    except SqlglotError:
        text = ""
    if text and len(text) <= 60:
        return f"{node.key.upper()} ({text})"
    return node.key.upper()
