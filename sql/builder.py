"""Compile a visual query builder's JSON into a guarded-ready SQL predicate with bound values.

Two JSON dialects are accepted, detected per group:

- jQuery QueryBuilder: `{"condition": "AND"|"OR", "not": bool, "rules": [...]}`,
  rules `{"id"|"field": name, "operator": "less", "value": ...}` (`field`
  wins over `id` when both are present);
- react-querybuilder: `{"combinator": "and"|"or", "not": bool, "rules": [...]}`,
  rules `{"field": name, "operator": "<", "value": ..., "valueSource":
  "value"|"field"}`. With `valueSource: "field"` the value names other
  fields and the rule compares columns (the fields must be of the same kind).

Operators come from the one table in sql/operators.py (either dialect's
spelling works). The result is a `Predicate`: SQL text whose values are
`{p0:Type}` placeholders plus the parameter dict. Field names come only from
the catalogue and values only ever travel as parameters, so nothing a user
sends becomes SQL text.

Values are validated and converted by the field's kind, here, before anything
runs: whole numbers within the column's type range, exact decimals that fit
Decimal(18, 6) (a value that would be rounded is refused, not rounded),
ISO 8601 date-times (with an offset, or naive = in the user's display time
zone `tz`; a date alone is that day's first instant) converted to UTC
milliseconds, enum labels, IP addresses (ipaddress module) and text.

Errors are `BuilderError`s naming where (`rules[2].rules[0]`) and what.
Limits keep a hostile or runaway tree cheap to reject: groups nest at most
`MAX_DEPTH` deep, a tree holds at most `MAX_RULES` rules and groups, and a
list operator takes at most `MAX_LIST` values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field as dc_field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cdrhouse.sql.errors import UserError
from cdrhouse.sql import catalogue
from cdrhouse.sql.catalogue import Field
from cdrhouse.sql.operators import JQUERY_KEYS, RQB_KEYS, Operator, Target, lookup
from cdrhouse.sql.principal import Principal

MAX_DEPTH = 8
MAX_RULES = 200
MAX_LIST = 1000
MAX_TEXT = 1000

DT_TYPE = "DateTime64(3, 'UTC')"
#: DateTime64's range; values outside it would be clamped by ClickHouse, so refuse them.
MIN_YEAR, MAX_YEAR = 1900, 2299

_INT_RANGES: dict[str, tuple[int, int]] = {
    "UInt8": (0, 2**8 - 1), "UInt16": (0, 2**16 - 1), "UInt32": (0, 2**32 - 1),
    "UInt64": (0, 2**64 - 1), "Int8": (-(2**7), 2**7 - 1), "Int16": (-(2**15), 2**15 - 1),
    "Int32": (-(2**31), 2**31 - 1), "Int64": (-(2**63), 2**63 - 1),
}
_INT_TEXT = re.compile(r"^[+-]?[0-9]{1,20}$")
_DATE_ONLY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_DECIMAL_TYPE = re.compile(r"^Decimal\((\d+),\s*(\d+)\)$")

ROLE_NAMES: dict[str, str] = {
    "admin": "a platform admin", "tenant": "a tenant operator",
    "customer": "a customer user", "carrier": "a carrier user",
}


class BuilderError(UserError):
    """The rule tree cannot be compiled; the message says where (`rules[1]`) and why.

    `path` is that place on its own (`query` for the root group,
    `rules[2].rules[0]` for a rule or group inside it) and `reason` the rest, so
    a visual builder can put the message at the rule it names.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class InvalidValue(ValueError):
    """A value does not fit its field; the caller adds where it was found."""


@dataclass(frozen=True)
class Predicate:
    """A SQL boolean expression with `{name:Type}` placeholders and their values."""

    sql: str
    params: dict[str, Any] = dc_field(default_factory=dict)


# -- time zones and instants --------------------------------------------------

def zone(tz: str) -> ZoneInfo:
    """The IANA zone called `tz`, or InvalidValue naming it."""
    if not isinstance(tz, str) or not tz or len(tz) > 64:
        raise InvalidValue(f"unknown time zone {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidValue(f"unknown time zone {tz!r}: use an IANA name such as "
                           "'Europe/Berlin' or 'UTC'") from None


def local_to_utc(naive: datetime, z: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock time `naive` in zone `z`.

    A wall time the clocks skip (spring forward) does not exist and is refused
    rather than guessed; a wall time that happens twice (fall back) is taken at
    its first occurrence.
    """
    utc = naive.replace(tzinfo=z, fold=0).astimezone(UTC)
    if utc.astimezone(z).replace(tzinfo=None) != naive:
        raise InvalidValue(f"{naive.isoformat(sep=' ')} does not exist in {z.key} "
                           "(the clocks skip it); give a UTC offset")
    return utc


def day_start(d: date, z: ZoneInfo) -> datetime:
    """The first instant (UTC) of local date `d` in zone `z`.

    Usually local midnight; when midnight falls in a DST gap (e.g.
    America/Santiago) the day starts at the transition, found by bisection.
    """
    naive = datetime.combine(d, time())
    try:
        return local_to_utc(naive, z)
    except InvalidValue:
        pass
    a = int(naive.replace(tzinfo=z, fold=0).astimezone(UTC).timestamp())
    b = int(naive.replace(tzinfo=z, fold=1).astimezone(UTC).timestamp())
    lo, hi = min(a, b), max(a, b) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, z).date() >= d:
            hi = mid
        else:
            lo = mid + 1
    return datetime.fromtimestamp(lo, UTC)


def parse_instant(raw: Any, z: ZoneInfo) -> datetime:
    """An aware UTC datetime from an ISO 8601 string (or date/datetime object).

    With an offset or `Z` the offset wins; a naive value is wall time in `z`;
    a date alone is its first instant in `z`. The store keeps milliseconds, so
    finer values are refused (they could never compare equal).
    """
    if isinstance(raw, datetime):
        dt = raw.astimezone(UTC) if raw.tzinfo else local_to_utc(raw, z)
    elif isinstance(raw, date):
        dt = day_start(raw, z)
    elif isinstance(raw, str) and len(raw) <= 64:
        text = raw.strip()
        try:
            if _DATE_ONLY.match(text):
                dt = day_start(date.fromisoformat(text), z)
            else:
                parsed = datetime.fromisoformat(text)
                dt = parsed.astimezone(UTC) if parsed.tzinfo else local_to_utc(parsed, z)
        except (ValueError, OverflowError) as exc:
            if isinstance(exc, InvalidValue):
                raise
            raise InvalidValue(f"expects an ISO 8601 date-time such as "
                               f"'2026-03-29T10:00:00+02:00', got {raw!r}") from None
    else:
        raise InvalidValue(f"expects an ISO 8601 date-time, got {raw!r}")
    if dt.microsecond % 1000:
        raise InvalidValue(f"{raw!r} is finer than a millisecond; the store keeps milliseconds")
    if not MIN_YEAR <= dt.year <= MAX_YEAR:
        raise InvalidValue(f"{raw!r} is outside the years {MIN_YEAR}-{MAX_YEAR}")
    return dt


def format_instant(dt: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS.mmm` in UTC: how a DateTime64(3, 'UTC') parameter is sent.

    A string (not a datetime) because the client would format a datetime in the
    server's time zone and drop the milliseconds.
    """
    utc = dt.astimezone(UTC) if dt.tzinfo else dt
    return utc.strftime("%Y-%m-%d %H:%M:%S.") + f"{utc.microsecond // 1000:03d}"


# -- values by kind -------------------------------------------------------------

def base_type(ch_type: str) -> str:
    """`UInt32` from `Nullable(UInt32)` / `LowCardinality(String)` → `String`."""
    t = ch_type
    for wrapper in ("Nullable(", "LowCardinality("):
        if t.startswith(wrapper):
            t = t[len(wrapper):-1]
    return t


def param_type(f: Field, target: Target) -> str:
    """The ClickHouse type of a parameter compared with field `f`."""
    if target == "text" or f.kind in ("string", "enum"):
        return "String"
    if f.kind == "ip":
        return "IPv6"
    if f.kind == "datetime":
        return DT_TYPE
    return base_type(f.ch_type)


def column_expr(f: Field, target: Target) -> tuple[str, bool]:
    """The SQL expression a rule compares for `f`, and whether it can be NULL.

    Address comparisons on ip fields parse the stored text (`toIPv6OrNull`), so
    an empty or malformed address is NULL there and never matches.
    """
    if target == "value" and f.kind == "ip":
        return f"toIPv6OrNull({f.name})", True
    return f.name, f.nullable


def convert_value(f: Field, raw: Any, z: ZoneInfo, target: Target = "value") -> Any:
    """`raw` validated for field `f` and converted to what is bound as its parameter."""
    if isinstance(raw, bool) or raw is None or isinstance(raw, (list, tuple, dict)):
        raise InvalidValue(f"{f.name} expects {_expects(f, target)}, got {_show(raw)}")
    if target == "text" or f.kind == "string":
        return _text(f, raw)
    if f.kind == "int":
        return _int(f, raw)
    if f.kind == "decimal":
        return _decimal(f, raw)
    if f.kind == "datetime":
        try:
            return format_instant(parse_instant(raw, z))
        except InvalidValue as exc:
            raise InvalidValue(f"{f.name} {exc}") from None
    if f.kind == "enum":
        if raw not in f.enum_values:
            allowed = ", ".join(repr(v) for v in f.enum_values)
            raise InvalidValue(f"{f.name} expects one of {allowed}, got {_show(raw)}")
        return raw
    if f.kind == "ip":
        return _ip(f, raw)
    raise InvalidValue(f"{f.name} has unsupported kind {f.kind}")  # pragma: no cover


def _expects(f: Field, target: Target) -> str:
    if target == "text" or f.kind == "string":
        return "text"
    return {"int": "a whole number", "decimal": "a decimal number",
            "datetime": "an ISO 8601 date-time", "enum": "one of its values",
            "ip": "an IP address"}[f.kind]


def _show(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(f: Field, raw: Any) -> str:
    if isinstance(raw, int):
        raw = str(raw)
    if not isinstance(raw, str):
        raise InvalidValue(f"{f.name} expects text, got {_show(raw)}")
    if len(raw) > MAX_TEXT:
        raise InvalidValue(f"{f.name}: a value is longer than {MAX_TEXT} characters")
    return raw


def _int(f: Field, raw: Any) -> int:
    if isinstance(raw, str) and _INT_TEXT.match(raw.strip()):
        value = int(raw.strip())
    elif isinstance(raw, int):
        value = raw
    else:
        raise InvalidValue(f"{f.name} expects a whole number, got {_show(raw)}")
    low, high = _INT_RANGES[base_type(f.ch_type)]
    if not low <= value <= high:
        raise InvalidValue(f"{f.name} value {value} is out of range ({low}..{high})")
    return value


def _decimal(f: Field, raw: Any) -> Decimal:
    m = _DECIMAL_TYPE.match(base_type(f.ch_type))
    assert m, f.ch_type
    precision, scale = int(m.group(1)), int(m.group(2))
    try:
        if isinstance(raw, float):
            value = Decimal(repr(raw))      # the shortest text that round-trips: what was sent
        elif isinstance(raw, (int, Decimal)):
            value = Decimal(raw)
        elif isinstance(raw, str) and len(raw) <= 64:
            value = Decimal(raw.strip())
        else:
            raise InvalidOperation
    except InvalidOperation:
        raise InvalidValue(f"{f.name} expects a decimal number, got {_show(raw)}") from None
    if not value.is_finite():
        raise InvalidValue(f"{f.name} expects a decimal number, got {_show(raw)}")
    quantum = Decimal(1).scaleb(-scale)
    if abs(value) >= Decimal(10) ** (precision - scale):
        raise InvalidValue(f"{f.name} value {_show(raw)} is out of range "
                           f"(at most {precision - scale} digits before the point)")
    exact = value.quantize(quantum)
    if exact != value:
        raise InvalidValue(f"{f.name} value {_show(raw)} has more than {scale} decimal places")
    return exact


def _ip(f: Field, raw: Any) -> str:
    if not isinstance(raw, str):
        raise InvalidValue(f"{f.name} expects an IP address, got {_show(raw)}")
    try:
        addr = ipaddress.ip_address(raw.strip())
    except ValueError:
        raise InvalidValue(f"{f.name} expects an IP address, got {_show(raw)}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        raise InvalidValue(f"{f.name}: scoped IPv6 addresses are not supported ({raw!r})")
    return str(addr)


# -- the compiler ---------------------------------------------------------------

def compile_rules(tree: Mapping[str, Any], principal: Principal, *, tz: str = "UTC",
                  param_prefix: str = "p", max_depth: int = MAX_DEPTH,
                  max_rules: int = MAX_RULES) -> Predicate:
    """Compile a jQuery QueryBuilder or react-querybuilder tree into a Predicate.

    `tz` is the user's display time zone: naive date-times in rules are wall
    time there. `principal` decides which fields may be named (a customer may
    not filter on carrier-side fields). `param_prefix` names the parameters
    (`p0`, `p1`, …) so a caller can combine predicates without collisions.
    The predicate does not include the principal's guard: the caller ANDs it.
    """
    try:
        z = zone(tz)
    except InvalidValue as exc:
        raise BuilderError("query", str(exc)) from None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,15}", param_prefix):
        raise ValueError(f"invalid parameter prefix {param_prefix!r}")
    c = _Compiler(principal, z, param_prefix, max_depth, max_rules)
    sql = c.group(tree, "query", 1)
    return Predicate(sql, c.params)


class _Compiler:
    def __init__(self, principal: Principal, z: ZoneInfo, prefix: str, max_depth: int,
                 max_rules: int) -> None:
        self.principal = principal
        self.zone = z
        self.prefix = prefix
        self.max_depth = max_depth
        self.max_rules = max_rules
        self.params: dict[str, Any] = {}
        self.nodes = 0

    def bind(self, value: Any, ch_type: str) -> str:
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{ch_type}}}"

    # groups

    def group(self, node: Any, path: str, depth: int) -> str:
        if not isinstance(node, Mapping):
            raise BuilderError(path, f"expected a group object, got {_show(node)}")
        if depth > self.max_depth:
            raise BuilderError(path, f"groups nest at most {self.max_depth} deep")
        if "condition" in node:
            raw, dialect = node["condition"], "jquery"
        elif "combinator" in node:
            raw, dialect = node["combinator"], "rqb"
        else:
            raise BuilderError(path, "a group needs 'condition' (jQuery QueryBuilder) or "
                               "'combinator' (react-querybuilder)")
        if not isinstance(raw, str) or raw.upper() not in ("AND", "OR"):
            key = "condition" if dialect == "jquery" else "combinator"
            raise BuilderError(path, f"{key} must be AND or OR, got {_show(raw)}")
        combinator = raw.upper()
        negate = node.get("not", False)
        if not isinstance(negate, bool):
            raise BuilderError(path, f"'not' must be true or false, got {_show(negate)}")
        rules = node.get("rules")
        if not isinstance(rules, list):
            raise BuilderError(path, "'rules' must be a list")
        prefix = "" if path == "query" else f"{path}."
        parts = []
        for i, child in enumerate(rules):
            where = f"{prefix}rules[{i}]"
            self.nodes += 1
            if self.nodes > self.max_rules:
                raise BuilderError(where, f"the query has more than {self.max_rules} rules "
                                   "and groups; simplify it")
            if isinstance(child, Mapping) and "rules" in child:
                parts.append(self.group(child, where, depth + 1))
            elif isinstance(child, Mapping):
                parts.append(self.rule(child, where, dialect))
            else:
                raise BuilderError(where, f"expected a rule or a group object, got "
                                   f"{_show(child)}")
        if not parts:
            return "0" if negate else "1"   # an empty group places no condition
        inner = "(" + f" {combinator} ".join(parts) + ")"
        return f"NOT {inner}" if negate else inner

    # rules

    def field(self, name: Any, path: str, what: str = "field") -> Field:
        if not isinstance(name, str) or not name:
            raise BuilderError(path, f"a rule needs a {what} name, got {_show(name)}")
        f = catalogue.BY_NAME.get(name)
        if f is None:
            raise BuilderError(path, f"unknown {what} {name!r}")
        if not f.visible_to(self.principal.role):
            raise BuilderError(path, f"{what} {name!r} is not visible to "
                               f"{ROLE_NAMES[self.principal.role]}")
        if not f.filterable:
            raise BuilderError(path, f"{what} {name!r} cannot be filtered on")
        return f

    def rule(self, node: Mapping[str, Any], path: str, dialect: str) -> str:
        name = node.get("field")
        if name is None and dialect == "jquery":
            name = node.get("id")
        f = self.field(name, path)
        key = node.get("operator")
        op = lookup(key) if isinstance(key, str) else None
        if op is None:
            known = ", ".join(JQUERY_KEYS if dialect == "jquery" else RQB_KEYS)
            raise BuilderError(path, f"unknown operator {_show(key)}; use one of: {known}")
        if not op.applies_to(f):
            raise BuilderError(path, f"operator {key!r} does not apply to field "
                               f"{f.name} ({f.kind})")
        if op.target == "presence":
            return (op.sql_nullable if f.nullable and op.sql_nullable else op.sql).format(
                col=f.name)
        source = node.get("valueSource", "value")
        if source not in ("value", "field"):
            raise BuilderError(path, f"valueSource must be 'value' or 'field', got "
                               f"{_show(source)}")
        items = self.items(op, key, node.get("value"), path)
        col, nullable = column_expr(f, op.target)
        guards = [col] if nullable else []
        if source == "field":
            rendered = []
            for item in items:
                other = self.field(item, path, "value field")
                if other.kind != f.kind or (f.kind == "enum" and other.ch_type != f.ch_type):
                    raise BuilderError(path, f"cannot compare {f.name} ({f.kind}) with "
                                       f"field {other.name} ({other.kind})")
                expr, other_nullable = column_expr(other, op.target)
                if other_nullable and expr not in guards:
                    guards.append(expr)
                rendered.append(expr)
        else:
            values = []
            for item in items:
                if op.target == "text" and item == "":
                    raise BuilderError(path, f"operator {key!r} needs a non-empty value")
                try:
                    values.append(convert_value(f, item, self.zone, op.target))
                except InvalidValue as exc:
                    raise BuilderError(path, str(exc)) from None
            if op.arity == 2 and values[0] > values[1]:
                raise BuilderError(path, f"operator {key!r} needs the lower value first "
                                   f"(got {_show(items[0])} then {_show(items[1])})")
            ptype = param_type(f, op.target)
            rendered = [self.bind(v, ptype) for v in values]
        sql = _fill(op, col, rendered)
        if guards:
            checks = " AND ".join(f"{g} IS NOT NULL" for g in guards)
            sql = f"({checks} AND {sql})"
        return sql

    def items(self, op: Operator, key: str, value: Any, path: str) -> list[Any]:
        """The rule's values as a list of the operator's arity, from either dialect's form.

        react-querybuilder sends lists as arrays or comma-separated text; jQuery
        QueryBuilder as arrays (or text, with a value separator configured).
        """
        if op.arity == 1:
            if isinstance(value, (list, tuple)):
                raise BuilderError(path, f"operator {key!r} needs one value, got a list")
            if value is None:
                raise BuilderError(path, f"operator {key!r} needs a value")
            return [value]
        if isinstance(value, str):
            items: list[Any] = [part.strip() for part in value.split(",")]
            if value.strip() == "":
                items = []
            elif any(part == "" for part in items):
                raise BuilderError(path, f"operator {key!r}: empty item in "
                                   f"{_show(value)}")
        elif isinstance(value, (list, tuple)):
            items = list(value)
        elif value is None:
            items = []
        else:
            items = [value]
        if op.arity == 2:
            if len(items) != 2:
                raise BuilderError(path, f"operator {key!r} needs two values")
        elif not items:
            raise BuilderError(path, f"operator {key!r} needs at least one value")
        elif len(items) > MAX_LIST:
            raise BuilderError(path, f"operator {key!r} takes at most {MAX_LIST} values")
        return items


def _fill(op: Operator, col: str, rendered: Sequence[str]) -> str:
    if op.arity == 1:
        return op.sql.format(col=col, v=rendered[0])
    if op.arity == 2:
        return op.sql.format(col=col, v1=rendered[0], v2=rendered[1])
    return op.sql.format(col=col, vs=", ".join(rendered))
