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
- `archive=1`: include archived (warm) months in the range (slower);
- `columns` (comma-separated, in order), `sort` (comma-separated, `-` for
  descending);
- `f` (repeated): one header filter `field:operator:value`; list values
  (`in`, `between`) are comma-separated; `q`: the rest of the query-builder
  tree as JSON — both are ANDed. The builder shows them as one tree
  (`ViewState.tree`): the header filters are the leading rules of a top-level
  "All" group, followed by `q`'s rules (or by `q` itself, as a group, when it
  matches Any or is negated). A tree from the builder arrives whole in `q`;
  `parse` moves its leading rules that a header filter can say into `f`
  (`split_tree`), so each rule is a chip on the grid and the builder shows
  exactly the tree that was applied, in its order;
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
#: account columns: their header filter picks accounts (by code and name), as `in`/`not_in`
ACCOUNT_OPERATORS: dict[str, tuple[str, ...]] = {"customer_id": ("in", "not_in"),
                                                 "carrier_id": ("in", "not_in")}
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
    archive: bool = False
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
        state = cls(range=rng, date_from=one("from"), date_to=one("to"),
                    tz=one("tz") or None, connected=one("connected") in ("1", "true", "on"),
                    number=one("number"), tenant=one("tenant"), customer=one("customer"),
                    carrier=one("carrier"), columns=columns, sort=sort or ("-start_time",),
                    filters=tuple(filters), rules_json=one("q"),
                    archive=one("archive") in ("1", "true", "on"),
                    cursors=tuple(c for c in params.getlist("c") if c)[-MAX_CURSORS:])
        return state.normalized()

    def normalized(self) -> ViewState:
        """The same view with `q`'s leading header-filter rules moved into `f` (and `q`
        written compactly, so that equal views have equal URLs).

        Only `q` is split: header filters already in `f` stay as given (a bad one
        keeps its chip and its error). A `q` that is not JSON is left for `rules()`
        to report.
        """
        try:
            q = self._q()
        except StateError:
            return self
        if q is None:
            return self
        moved, rest = split_tree(q, MAX_FILTERS - len(self.filters))
        return replace(self, filters=self.filters + moved, rules_json=_dumps(rest) if rest else "")

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
        if self.archive:
            out.append(("archive", "1"))
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

    def _q(self) -> dict[str, Any] | None:
        if not self.rules_json:
            return None
        try:
            tree = json.loads(self.rules_json)
        except (ValueError, RecursionError):   # RecursionError: nested too deep to read
            raise StateError("q: not a JSON query-builder tree") from None
        if not isinstance(tree, dict):
            raise StateError("q: not a JSON query-builder tree")
        return tree

    def tree(self) -> dict[str, Any] | None:
        """The header filters and `q` as the one tree the query builder shows, or None.

        The header filters come first in a top-level AND; `q`'s rules follow when
        `q` is itself a plain AND group, else `q` follows as one group. This is the
        tree the API compiles, so an error's path (`rules[2].rules[0]`) names the
        rule the builder shows at that place.
        """
        parts: list[dict[str, Any]] = [f.rule() for f in self.filters]
        q = self._q()
        if q is None:
            return {"condition": "AND", "rules": parts} if parts else None
        if not parts:
            return q
        key = _plain_and(q)
        if key:
            return {key: q[key], "rules": parts + list(q["rules"])}
        return {"condition": "AND", "rules": parts + [q]}

    def rules(self) -> dict[str, Any] | None:
        """The builder rules of this view (header filters and `q`), or None: `tree()`."""
        return self.tree()

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
            carrier=self.carrier or None, include_archive=self.archive)

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
        if self.archive:
            body["include_archive"] = True
        rules = self.rules()
        if rules is not None:
            body["rules"] = rules
            return "search", body
        return "viewer", body

    @classmethod
    def from_saved(cls, body: dict[str, Any]) -> ViewState:
        """The state of a saved viewer/search query (a saved tree that is not our flat
        filter list is kept whole as `q`)."""
        filters: tuple[Filter, ...] = ()
        rules_json = ""
        rules = body.get("rules")
        if isinstance(rules, dict):
            filters, rest = split_tree(rules, MAX_FILTERS)
            rules_json = _dumps(rest) if rest else ""
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
                   filters=filters, rules_json=rules_json,
                   archive=bool(body.get("include_archive")))


def _dumps(tree: dict[str, Any]) -> str:
    return json.dumps(tree, separators=(",", ":"), ensure_ascii=False)


def _plain_and(tree: Any) -> str | None:
    """The key (`condition` or `combinator`) of a group that is a plain AND (not
    negated), or None. Its rules may then be listed beside other AND-ed rules."""
    if not isinstance(tree, dict) or tree.get("not") or not isinstance(tree.get("rules"), list):
        return None
    key = "condition" if "condition" in tree else "combinator" if "combinator" in tree else None
    if key is None or not isinstance(tree[key], str) or tree[key].upper() != "AND":
        return None
    return key


def _scalar(value: Any, kind: str) -> str | None:
    """A rule's value as header-filter text, when the text means exactly the same."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and kind in ("int",
                                                                                   "decimal"):
        return str(value)
    return None


def header_filter(rule: Any) -> Filter | None:
    """The header filter that says exactly what builder rule `rule` says, or None.

    A rule qualifies when it compares a field with values (not with another
    field) using an operator the header filter offers for the field's kind, and
    its value survives the `field:operator:value` text unchanged (list items
    without commas or surrounding spaces).
    """
    if not isinstance(rule, dict) or "rules" in rule or not isinstance(rule.get("field"), str):
        return None
    f = catalogue.BY_NAME.get(rule["field"])
    op = BY_KEY.get(rule.get("operator")) if isinstance(rule.get("operator"), str) else None
    offered = ACCOUNT_OPERATORS.get(f.name, ()) + HEADER_OPERATORS.get(f.kind, ()) if f else ()
    if f is None or op is None or op.key not in offered \
            or not op.applies_to(f) or rule.get("valueSource", "value") != "value":
        return None
    if op.arity == 0:
        return Filter(f.name, op.key, "")
    value = rule.get("value")
    if op.arity == 1:
        text = _scalar(value, f.kind)
        return Filter(f.name, op.key, text) if text is not None else None
    if not isinstance(value, list) or not value:
        return None
    items = [_scalar(v, f.kind) for v in value]
    if any(t is None or not t or "," in t or t != t.strip() for t in items):
        return None
    return Filter(f.name, op.key, ",".join(items))  # type: ignore[arg-type]


def split_tree(tree: dict[str, Any], room: int = MAX_FILTERS
               ) -> tuple[tuple[Filter, ...], dict[str, Any] | None]:
    """A builder tree as header filters plus the rest (None when nothing is left).

    Only a plain AND root gives filters: its leading rules that `header_filter`
    can say, at most `room` of them (the order of the tree is kept: a rule after
    a group stays in the rest). When the rest is one group that is not a plain
    AND, that group is the rest, so `ViewState.tree` gives back the same tree.
    """
    key = _plain_and(tree)
    if key is None:
        return (), tree
    rules = list(tree["rules"])
    moved: list[Filter] = []
    while rules and len(moved) < room:
        f = header_filter(rules[0])
        if f is None:
            break
        moved.append(f)
        rules.pop(0)
    if not rules:
        return tuple(moved), None
    if not moved:
        return (), tree
    if len(rules) == 1 and isinstance(rules[0], dict) and "rules" in rules[0] \
            and not _plain_and(rules[0]):
        return tuple(moved), rules[0]
    return tuple(moved), {key: tree[key], "rules": rules}
