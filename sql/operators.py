"""The query-builder operators: one table, one row per operator, in both JSON dialects.

A visual query builder sends rules such as `{"field": "duration", "operator":
"greater", "value": 60}`. jQuery QueryBuilder and react-querybuilder name the
same operators differently (`not_equal` vs `!=`, `begins_with` vs
`beginsWith`), so each row carries both keys; the two name sets never clash
(`in`, `between` and `contains` are spelled alike and mean the same thing), so
either spelling is accepted in either dialect.

Each row also carries the SQL template, how many values it takes, the field
kinds it applies to and a description for people, in the spirit of Datasette's
filter table: what an operator means is written once, here, and both the
compiler (sql/builder.py) and the API's field panel read it.

Templates use `{col}` for the column expression and `{v}`, `{v1}`/`{v2}` or
`{vs}` for bound parameters (`{p0:UInt32}`, …) — never for values. Text
operators use `position` / `startsWith` / `endsWith`, not LIKE, so `%` and `_`
in a value are plain characters.

Semantics (the rules the compiler implements and the tests check against a
plain Python evaluation):

- **A missing value never matches a comparison.** NULL in a Nullable column
  (answer_time, the money fields), and an empty or unparsable IP address for
  the address comparisons of `ip` fields, match no comparison operator — not
  `equal`, and not the negated ones either (`not_equal`, `not_in`,
  `not_between`, …). The compiler adds `col IS NOT NULL AND …` to every
  comparison on a nullable expression, so each rule is plainly true or false
  (never SQL's "unknown"), and a negated group (`"not": true`) is exactly the
  complement of the group.
- **`is_null` / `is_not_null`** test SQL NULL only. On a column that cannot be
  NULL they are the constants false / true (`0` / `1`).
- **`is_empty` / `is_not_empty`** test the field's "no value" state: `''` for
  text fields (string and ip kinds, stored as non-nullable String) and NULL for
  Nullable fields (the catalogue describes those as "empty when not rated").
  They do not apply to int, enum or non-nullable datetime fields.
- **Text operators** (`begins_with`, `contains`, `ends_with` and their
  negations) are case-sensitive and compare bytes of the stored text. On ip
  fields they look at the text as stored (e.g. `begins_with 10.1.`).
- **Address comparisons** on ip fields (`equal`, `not_equal`, `in`, `not_in`)
  compare addresses, not text: `2001:DB8::1` equals `2001:db8:0::1`, and an
  IPv4 address equals its IPv4-mapped IPv6 form (`::ffff:10.0.0.1`).
- **`between` / `not_between`** are inclusive at both ends; the lower value
  must come first.
- **Enums** compare by label with `equal`/`in`; they are not ordered.
- Ordering operators (`less`, …, `between`) apply to int, decimal and
  datetime fields only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cdrhouse.sql.catalogue import Field

Arity = Literal[0, 1, 2, "list"]
#: What a rule compares: the field's value (addresses for ip fields), its stored
#: text, or whether it has a value at all.
Target = Literal["value", "text", "presence"]

ALL_KINDS: frozenset[str] = frozenset({"string", "int", "decimal", "datetime", "enum", "ip"})
ORDERED: frozenset[str] = frozenset({"int", "decimal", "datetime"})
TEXT: frozenset[str] = frozenset({"string", "ip"})


@dataclass(frozen=True)
class Operator:
    """One builder operator: both keys, label, SQL template, arity, kinds, meaning."""

    key: str                  # jQuery QueryBuilder name; also cdrhouse's canonical name
    rqb: str | None           # react-querybuilder name (None: not offered there)
    label: str
    sql: str
    arity: Arity
    kinds: frozenset[str]
    target: Target
    description: str
    #: template used instead of `sql` when the column is Nullable (presence operators)
    sql_nullable: str | None = None
    #: also applies to any Nullable field whatever its kind (is_empty / is_not_empty)
    any_nullable: bool = False

    def applies_to(self, f: Field) -> bool:
        return f.kind in self.kinds or (self.any_nullable and f.nullable)

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,) if self.rqb in (None, self.key) else (self.key, self.rqb)


def _op(key: str, rqb: str | None, label: str, sql: str, arity: Arity, kinds: frozenset[str],
        target: Target, description: str, **kw: object) -> Operator:
    return Operator(key, rqb, label, sql, arity, kinds, target, description, **kw)  # type: ignore[arg-type]


OPERATORS: tuple[Operator, ...] = (
    _op("equal", "=", "equal", "{col} = {v}", 1, ALL_KINDS, "value",
        "The field equals the value. NULL (or no address) never matches."),
    _op("not_equal", "!=", "not equal", "{col} != {v}", 1, ALL_KINDS, "value",
        "The field has a value and it differs from the value. NULL never matches."),
    _op("in", "in", "in", "{col} IN ({vs})", "list", ALL_KINDS, "value",
        "The field equals one of the values. NULL never matches."),
    _op("not_in", "notIn", "not in", "{col} NOT IN ({vs})", "list", ALL_KINDS, "value",
        "The field has a value and it is none of the values. NULL never matches."),
    _op("less", "<", "less", "{col} < {v}", 1, ORDERED, "value",
        "The field is below the value. NULL never matches."),
    _op("less_or_equal", "<=", "less or equal", "{col} <= {v}", 1, ORDERED, "value",
        "The field is at most the value. NULL never matches."),
    _op("greater", ">", "greater", "{col} > {v}", 1, ORDERED, "value",
        "The field is above the value. NULL never matches."),
    _op("greater_or_equal", ">=", "greater or equal", "{col} >= {v}", 1, ORDERED, "value",
        "The field is at least the value. NULL never matches."),
    _op("between", "between", "between", "{col} BETWEEN {v1} AND {v2}", 2, ORDERED, "value",
        "low <= field <= high (both ends included). NULL never matches."),
    _op("not_between", "notBetween", "not between", "{col} NOT BETWEEN {v1} AND {v2}", 2,
        ORDERED, "value",
        "The field has a value below low or above high. NULL never matches."),
    _op("begins_with", "beginsWith", "begins with", "startsWith({col}, {v})", 1, TEXT, "text",
        "The text starts with the value (case-sensitive; % and _ are literal)."),
    _op("not_begins_with", "doesNotBeginWith", "doesn't begin with",
        "NOT startsWith({col}, {v})", 1, TEXT, "text",
        "The text does not start with the value."),
    _op("contains", "contains", "contains", "position({col}, {v}) > 0", 1, TEXT, "text",
        "The text contains the value (case-sensitive; % and _ are literal)."),
    _op("not_contains", "doesNotContain", "doesn't contain", "position({col}, {v}) = 0", 1,
        TEXT, "text", "The text does not contain the value."),
    _op("ends_with", "endsWith", "ends with", "endsWith({col}, {v})", 1, TEXT, "text",
        "The text ends with the value (case-sensitive; % and _ are literal)."),
    _op("not_ends_with", "doesNotEndWith", "doesn't end with", "NOT endsWith({col}, {v})", 1,
        TEXT, "text", "The text does not end with the value."),
    _op("is_empty", None, "is empty", "{col} = ''", 0, TEXT, "presence",
        "Text fields: the text is ''. Nullable fields: the value is NULL (not rated, "
        "never answered).", sql_nullable="{col} IS NULL", any_nullable=True),
    _op("is_not_empty", None, "is not empty", "{col} != ''", 0, TEXT, "presence",
        "Text fields: the text is not ''. Nullable fields: the value is not NULL.",
        sql_nullable="{col} IS NOT NULL", any_nullable=True),
    _op("is_null", "null", "is null", "0", 0, ALL_KINDS, "presence",
        "The value is SQL NULL. Always false on a field that cannot be NULL.",
        sql_nullable="{col} IS NULL"),
    _op("is_not_null", "notNull", "is not null", "1", 0, ALL_KINDS, "presence",
        "The value is not SQL NULL. Always true on a field that cannot be NULL.",
        sql_nullable="{col} IS NOT NULL"),
)

#: Every accepted spelling (jQuery QueryBuilder or react-querybuilder) → its operator.
BY_KEY: dict[str, Operator] = {k: op for op in OPERATORS for k in op.keys}

JQUERY_KEYS: tuple[str, ...] = tuple(op.key for op in OPERATORS)
RQB_KEYS: tuple[str, ...] = tuple(op.rqb for op in OPERATORS if op.rqb)


def lookup(key: str) -> Operator | None:
    """The operator spelled `key` in either dialect, or None."""
    return BY_KEY.get(key)


def operators_for(f: Field) -> tuple[Operator, ...]:
    """The operators a builder should offer for field `f` (for the API's field panel)."""
    return tuple(op for op in OPERATORS if op.applies_to(f))
