"""The viewer's state as it lives in the page's URL, and its translation to an API request.

Everything a user chose — range, zone, filters, columns, sort, search, the
account an operator narrowed to, the page — is a query parameter of `/`, so a
view is bookmarkable and shareable and Back/Forward walk through it. This
module is pure: it parses the parameters, writes them back (canonical URLs
for links), and builds the same `ViewParams` + builder rules the /v1 API takes.
Whatever the URL says is only a *request*: the engine's guard decides what the
signed-in principal gets, so a tampered URL can fail, never widen.

Parameters:

- `range` (a preset, `custom` or `all`), `from` / `to` (wall time in `tz`,
  custom only), `tz`, `connected=1`, `number`;
- `tenant` (admin), `customer`, `carrier` (codes, operators only);
- `columns` (comma-separated, in order), `sort` (comma-separated, `-` for
  descending);
- `f` (repeated): one header filter `field:operator:value`; list values
  (`in`, `between`) are comma-separated; `q`: a query-builder tree as JSON
  (saved searches; the builder of the next issue) — both are ANDed;
- `c` (repeated): the keyset cursors of the pages before this one, oldest
  first — "next" appends the page's `next_cursor`, "previous" drops the last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from cdrhouse.api.models import ViewParams
from cdrhouse.sql import catalogue
from cdrhouse.sql.operators import BY_KEY
from cdrhouse.sql.viewer import RANGES

#: Operators offered in a column's header filter, by field kind (first = default).
HEADER_OPERATORS: dict[str, tuple[str, ...]] = {
    "int": ("greater_or_equal", "less_or_equal", "between", "equal", "not_equal", "greater",
            "less"),
    "decimal": ("greater_or_equal", "less_or_equal", "between", "equal", "not_equal",
                "is_empty", "is_not_empty"),
    "datetime": ("greater_or_equal", "less", "between", "is_null", "is_not_null"),
    "string": ("contains", "begins_with", "ends_with", "equal", "not_equal", "in",
               "not_contains", "is_empty", "is_not_empty"),
    "ip": ("begins_with", "equal", "contains", "is_empty"),
    "enum": ("in", "not_in"),
}
LIST_OPERATORS = frozenset({"in", "not_in", "between", "not_between"})
MAX_CURSORS = 50
MAX_FILTERS = 30
PRESET_LABELS: dict[str, str] = {
    "today": "Today", "yesterday": "Yesterday", "last_24h": "Last 24 hours",
    "last_7_days": "Last 7 days", "last_30_days": "Last 30 days", "this_week": "This week",
    "last_week": "Last week", "this_month": "This month", "last_month": "Last month",
    "custom": "Custom range", "all": "All time",
}


@dataclass(frozen=True)
class Filter:
    field: str
    op: str
    value: str

    @property
    def text(self) -> str:
        return f"{self.field}:{self.op}:{self.value}"

    def rule(self) -> dict[str, Any]:
        """The builder rule (jQuery QueryBuilder form) this header filter stands for."""
        op = BY_KEY.get(self.op)
        arity = op.arity if op else 1
        if arity == 0:
            return {"field": self.field, "operator": self.op}
        if arity == 2 or arity == "list":
            return {"field": self.field, "operator": self.op,
                    "value": [v.strip() for v in self.value.split(",")]}
        return {"field": self.field, "operator": self.op, "value": self.value}

    def label(self) -> str:
        f = catalogue.BY_NAME.get(self.field)
        op = BY_KEY.get(self.op)
        name = f.label if f else self.field
        words = op.label if op else self.op
        if op is not None and op.arity == 0:
            return f"{name} {words}"
        if op is not None and op.arity == 2:
            lo, _, hi = self.value.partition(",")
            return f"{name} {words} {lo} and {hi}"
        return f"{name} {words} {self.value}"


class StateError(ValueError):
    """A URL parameter that is not even well-formed (the message names it)."""


@dataclass(frozen=True)
class ViewState:
    range: str = "today"
    date_from: str = ""
    date_to: str = ""
    tz: str | None = None
    connected: bool = False
    number: str = ""
    tenant: str = ""
    customer: str = ""
    carrier: str = ""
    columns: tuple[str, ...] | None = None
    sort: tuple[str, ...] = ("-start_time",)
    filters: tuple[Filter, ...] = ()
    rules_json: str = ""
    cursors: tuple[str, ...] = field(default_factory=tuple)

    # -- from and to the URL ------------------------------------------------------------

    @classmethod
    def parse(cls, params: Any) -> ViewState:
        """From a request's query parameters (a multi-dict with getlist)."""
        def one(name: str) -> str:
            return (params.get(name) or "").strip()

        rng = one("range") or ("custom" if one("from") or one("to") else "today")
        filters = []
        for raw in params.getlist("f")[:MAX_FILTERS]:
            fld, sep, rest = raw.partition(":")
            op, sep2, value = rest.partition(":")
            if not sep or not sep2 or not fld or not op:
                raise StateError(f"f: {raw!r} is not field:operator:value")
            filters.append(Filter(fld.strip(), op.strip(), value))
        columns = tuple(c.strip() for c in one("columns").split(",") if c.strip()) or None
        sort = tuple(s.strip() for s in one("sort").split(",") if s.strip())
        return cls(range=rng, date_from=one("from"), date_to=one("to"),
                   tz=one("tz") or None, connected=one("connected") in ("1", "true", "on"),
                   number=one("number"), tenant=one("tenant"), customer=one("customer"),
                   carrier=one("carrier"), columns=columns, sort=sort or ("-start_time",),
                   filters=tuple(filters), rules_json=one("q"),
                   cursors=tuple(c for c in params.getlist("c") if c)[-MAX_CURSORS:])

    def pairs(self, *, page: bool = True) -> list[tuple[str, str]]:
        """The URL parameters of this state (defaults left out), in a stable order."""
        out: list[tuple[str, str]] = [("range", self.range)]
        if self.range == "custom":
            out += [(k, v) for k, v in (("from", self.date_from), ("to", self.date_to)) if v]
        if self.tz:
            out.append(("tz", self.tz))
        if self.connected:
            out.append(("connected", "1"))
        for k in ("number", "tenant", "customer", "carrier"):
            if getattr(self, k):
                out.append((k, getattr(self, k)))
        if self.columns:
            out.append(("columns", ",".join(self.columns)))
        if self.sort != ("-start_time",):
            out.append(("sort", ",".join(self.sort)))
        out += [("f", f.text) for f in self.filters]
        if self.rules_json:
            out.append(("q", self.rules_json))
        if page:
            out += [("c", c) for c in self.cursors]
        return out

    def url(self, **changes: Any) -> str:
        """The viewer URL of this state with `changes`; any change but paging goes to page 1."""
        paging = set(changes) <= {"cursors"}
        state = replace(self, **changes)
        if not paging:
            state = replace(state, cursors=())
        query = urlencode(state.pairs())
        return "/?" + query if query else "/"

    def query(self) -> str:
        return urlencode(self.pairs(page=False))

    # -- moves the page offers ----------------------------------------------------------

    def sort_link(self, name: str) -> tuple[str, str]:
        """The URL a click on column `name`'s header goes to, and its aria-sort now.

        A click cycles the column: no sort → ascending → descending → no sort
        (which is the default, newest first: start_time descending).
        """
        first = self.sort[0] if self.sort else "-start_time"
        current = "descending" if first == f"-{name}" else "ascending" if first == name else "none"
        nxt = {"none": (name,), "ascending": (f"-{name}",),
               "descending": ("-start_time",)}[current]
        return self.url(sort=nxt), current

    def without_filter(self, index: int) -> str:
        return self.url(filters=self.filters[:index] + self.filters[index + 1:])

    def next_page(self, cursor: str) -> str:
        return self.url(cursors=(self.cursors + (cursor,))[-MAX_CURSORS:])

    def previous_page(self) -> str | None:
        return self.url(cursors=self.cursors[:-1]) if self.cursors else None

    # -- to the API ---------------------------------------------------------------------

    def rules(self) -> dict[str, Any] | None:
        """The header filters and `q` as one builder tree (AND), or None."""
        parts: list[dict[str, Any]] = [f.rule() for f in self.filters]
        if self.rules_json:
            try:
                tree = json.loads(self.rules_json)
            except ValueError:
                raise StateError("q: not a JSON query-builder tree") from None
            if not isinstance(tree, dict):
                raise StateError("q: not a JSON query-builder tree")
            parts.append(tree)
        if not parts:
            return None
        return {"condition": "AND", "rules": parts}

    def params(self, tz: str, columns: list[str] | None, limit: int = 100) -> ViewParams:
        """The /v1 viewer request of this state (tz and columns already resolved)."""
        if self.range not in RANGES:
            raise StateError(f"range: unknown range {self.range!r}; use one of: "
                             f"{', '.join(RANGES)}")
        custom = self.range == "custom"
        return ViewParams(
            columns=columns, sort=list(self.sort), limit=limit,
            cursor=self.cursors[-1] if self.cursors else None, range=self.range,
            date_from=(self.date_from or None) if custom else None,
            date_to=(self.date_to or None) if custom else None,
            tz=tz, connected_only=self.connected, number=self.number or None,
            tenant=self.tenant or None, customer=self.customer or None,
            carrier=self.carrier or None)

    # -- saved views --------------------------------------------------------------------

    def saved_body(self) -> tuple[str, dict[str, Any]]:
        """What a saved view stores: the /v1 request (kind viewer, or search with rules)."""
        body: dict[str, Any] = {"range": self.range, "sort": list(self.sort)}
        if self.range == "custom":
            if self.date_from:
                body["from"] = self.date_from
            if self.date_to:
                body["to"] = self.date_to
        if self.tz:
            body["tz"] = self.tz
        if self.connected:
            body["connected_only"] = True
        for k in ("number", "tenant", "customer", "carrier"):
            if getattr(self, k):
                body[k] = getattr(self, k)
        if self.columns:
            body["columns"] = list(self.columns)
        rules = self.rules()
        if rules is not None:
            body["rules"] = rules
            return "search", body
        return "viewer", body

    @classmethod
    def from_saved(cls, body: dict[str, Any]) -> ViewState:
        """The state of a saved viewer/search query (a saved tree that is not our flat
        filter list is kept whole as `q`)."""
        filters: list[Filter] = []
        rules_json = ""
        rules = body.get("rules")
        if isinstance(rules, dict):
            flat = _flat_filters(rules)
            if flat is None:
                rules_json = json.dumps(rules, separators=(",", ":"))
            else:
                filters = flat
        cols = body.get("columns")
        if isinstance(cols, str):
            cols = [c for c in cols.split(",") if c]
        sort = body.get("sort") or ["-start_time"]
        if isinstance(sort, str):
            sort = sort.split(",")
        rng = body.get("range") or ("custom" if body.get("from") or body.get("to") else "today")
        return cls(range=rng, date_from=str(body.get("from") or body.get("date_from") or ""),
                   date_to=str(body.get("to") or body.get("date_to") or ""),
                   tz=body.get("tz"), connected=bool(body.get("connected_only")),
                   number=body.get("number") or "", tenant=body.get("tenant") or "",
                   customer=body.get("customer") or "", carrier=body.get("carrier") or "",
                   columns=tuple(cols) if cols else None, sort=tuple(sort),
                   filters=tuple(filters), rules_json=rules_json)


def _flat_filters(tree: dict[str, Any]) -> list[Filter] | None:
    """Our own AND-of-rules trees back as header filters; None for anything else."""
    if tree.get("not") or str(tree.get("condition", tree.get("combinator", "AND"))).upper() \
            != "AND":
        return None
    out = []
    for rule in tree.get("rules") or []:
        if not isinstance(rule, dict) or "rules" in rule or not isinstance(rule.get("field"), str):
            return None
        op = rule.get("operator")
        if op not in HEADER_OPERATORS.get(getattr(catalogue.BY_NAME.get(rule["field"]), "kind",
                                                  ""), ()):
            return None
        value = rule.get("value", "")
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        out.append(Filter(rule["field"], op, str(value)))
    return out
