"""Turning an API page into what the template shows: headers, cells, links.

Values arrive as the API's JSON (`deps.jsonable`): money as exact decimal
text, times as ISO 8601 in the display zone. Here they become display text
without losing exactness (a charge is never a float), account ids become
account codes and names, and every header gets its sort link and aria-sort.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates

from cdrhouse.api.models import ViewParams
from cdrhouse.api.web.state import ViewState
from cdrhouse.engine import accounts as acc
from cdrhouse.engine.db import Database
from cdrhouse.sql import catalogue
from cdrhouse.sql.principal import Principal

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

NUMERIC = frozenset({"int", "decimal"})
#: Columns the page reads besides those shown: the play button needs the recording,
#: an admin's account names need the tenant.
EXTRA = ("recording_url", "tenant_id")


@dataclass
class Accounts:
    """Account codes and names by (tenant, kind, id) for the principal's view."""

    by_id: dict[tuple[str, str, int], acc.Account] = field(default_factory=dict)
    tenants: list[str] = field(default_factory=list)
    customers: list[acc.Account] = field(default_factory=list)
    carriers: list[acc.Account] = field(default_factory=list)

    def label(self, tenant: str | None, kind: str, value: Any) -> tuple[str, str]:
        """(text, title) of an account id cell: 'CODE' and 'CODE — Name'."""
        if value is None or value == "" or value == 0:
            return "", ""
        a = self.by_id.get((tenant or "", kind, int(value)))
        if a is None:
            return f"{kind} #{value}", f"unknown {kind} account {value}"
        if a.name and a.name != a.code:
            return f"{a.code} · {a.name}", f"{a.code} — {a.name}"
        return a.code, a.code


def accounts_for(db: Database, principal: Principal, tenant: str | None) -> Accounts:
    """The accounts the principal may name: its tenant's for an operator, all for an admin
    (pickers list the chosen tenant's), only its own for a customer or carrier."""
    out = Accounts()
    if principal.role in ("customer", "carrier"):
        mine = [a for a in acc.list_accounts(db, principal.tenant, principal.role)
                if a.account_id == principal.account_id]
        for a in mine:
            out.by_id[(a.tenant_id, a.kind, a.account_id)] = a
        return out
    scope = principal.tenant if principal.role == "tenant" else None
    every = acc.list_accounts(db, scope)
    for a in every:
        out.by_id[(a.tenant_id, a.kind, a.account_id)] = a
    out.tenants = sorted({a.tenant_id for a in every})
    pick = principal.tenant or tenant
    out.customers = [a for a in every if a.kind == "customer" and a.tenant_id == pick]
    out.carriers = [a for a in every if a.kind == "carrier" and a.tenant_id == pick]
    return out


def chip_label(f, accounts: Accounts, tenant: str | None) -> str:  # noqa: ANN001
    """A header filter's chip text; account ids are shown as their codes."""
    if f.field in ("customer_id", "carrier_id") and f.op in ("in", "not_in", "equal",
                                                            "not_equal"):
        kind = f.field[:-3]
        codes = []
        for v in f.value.split(","):
            v = v.strip()
            a = accounts.by_id.get((tenant or "", kind, int(v))) if v.isdigit() else None
            codes.append(a.code if a else v)
        return f"{catalogue.BY_NAME[f.field].label} {f.op.replace('_', ' ')} {', '.join(codes)}"
    return f.label()


def display(name: str, value: Any, row: dict[str, Any], accounts: Accounts,
            tenant: str | None) -> tuple[str, str]:
    """(text, title) of one cell."""
    if value is None or value == "":
        return "", ""
    f = catalogue.BY_NAME.get(name)
    kind = f.kind if f else "string"
    if name in ("customer_id", "carrier_id"):
        return accounts.label(row.get("tenant_id") or tenant, name[:-3], value)
    if kind == "datetime" and isinstance(value, str) and "T" in value:
        # 2026-03-29T01:30:00.000+01:00 -> 2026-03-29 01:30:00 (the full instant as title)
        text = value.replace("T", " ")[:19]
        return text, value
    if kind == "decimal":
        return _money(str(value)), str(value)
    return str(value), ""


def _money(text: str) -> str:
    """Exact decimal text, trailing zeros past the second decimal dropped: 0.360000 -> 0.36."""
    if "." not in text:
        return text
    whole, frac = text.split(".", 1)
    frac = frac.rstrip("0")
    if len(frac) < 2:
        frac = frac.ljust(2, "0")
    return f"{whole}.{frac}"


@dataclass
class Col:
    name: str
    label: str
    kind: str
    numeric: bool
    sort_url: str | None
    aria_sort: str
    filterable: bool


@dataclass
class Row:
    call_id: str
    #: (text, title, css class)
    cells: list[tuple[str, str, str]]
    recording: bool


@dataclass
class Grid:
    columns: list[Col]
    columns_asked: list[str]
    rows: list[Row]
    next_url: str | None
    prev_url: str | None
    page_no: int
    tz: str

    @classmethod
    def build(cls, state: ViewState, principal: Principal, p: ViewParams,
              page: dict[str, Any] | None, accounts: Accounts) -> Grid:
        asked = list(p.columns) if p.columns else list(
            catalogue.DEFAULT_COLUMNS[principal.role])
        cols = []
        for name in asked:
            f = catalogue.BY_NAME.get(name)
            if f is None:
                continue
            url, aria = state.sort_link(name) if f.sortable else (None, "none")
            numeric = f.kind in NUMERIC and name not in ("customer_id", "carrier_id")
            cols.append(Col(name, f.label, f.kind, numeric, url, aria, f.filterable))
        rows = []
        tenant = principal.tenant or state.tenant or None
        for r in (page or {}).get("rows", []):
            cells = []
            for c in cols:
                text, title = display(c.name, r.get(c.name), r, accounts, tenant)
                cls_ = "num" if c.numeric else "acct" if c.name in ("customer_id",
                                                                     "carrier_id") else ""
                cells.append((text, title, cls_))
            rows.append(Row(str(r.get("call_id", "")), cells, bool(r.get("recording_url"))))
        nxt = page.get("next_cursor") if page else None
        return cls(cols, asked, rows, state.next_page(nxt) if nxt else None,
                   state.previous_page(), len(state.cursors) + 1, p.tz)


def page_columns(p: ViewParams, principal: Principal) -> ViewParams:
    """`p` reading the extra columns the page needs (hidden unless asked for)."""
    asked = list(p.columns) if p.columns else list(catalogue.DEFAULT_COLUMNS[principal.role])
    extra = [c for c in EXTRA if c not in asked and catalogue.BY_NAME[c].visible_to(
        principal.role)]
    if "call_id" not in asked:
        extra.append("call_id")
    return p.model_copy(update={"columns": asked + extra}) if extra else p


def detail_rows(record: dict[str, Any], accounts: Accounts,
                tenant: str | None) -> list[tuple[str, str, str, str]]:
    """(label, field name, text, title) for every field of one call."""
    tenant = record.get("tenant_id") or tenant
    out = []
    for name, value in record.items():
        f = catalogue.BY_NAME.get(name)
        if f is None:
            continue
        text, title = display(name, value, record, accounts, tenant)
        if f.kind == "datetime" and title:
            text = f"{text} {title[23:] or ''}".strip()  # keep the offset: +01:00
        if name in ("customer_id", "carrier_id") and title:
            text = title
        out.append((f.label, name, text, title))
    return out
