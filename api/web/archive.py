"""The archive page (`/archive`) and what the viewer shows about archived months.

The page lists the archived (warm) months of the signed-in user's tenant — rows and
size for operators (tenant-wide volumes are not an account's business, as in
/v1/archive) — says which months are hot, and links each month's downloads to the
API's own routes (`/v1/archive/{month}`, on the session cookie): the stored Parquet
files for operators, the account's own rows (Parquet, filtered by ClickHouse with the
guard) for customers and carriers, zstd CSV (UTC) for everyone. Nothing is read or
sent here that /v1/archive would not give the same principal.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from fastapi import Request

from cdrhouse.api import deps
from cdrhouse.api.auth import Caller
from cdrhouse.api.web import session as sess
from cdrhouse.api.web.render import accounts_for
from cdrhouse.engine.db import Database
from cdrhouse.sql.months import add_months, first_day, month_of
from cdrhouse.tiering import layout
from cdrhouse.tiering.reader import overlaps
from cdrhouse.tiering.warm import WarmMonth, warm_months

def _archived(db: Database, tenant: str | None) -> list[WarmMonth]:
    return warm_months(db, tenant, states=("archived",))


async def in_range(request: Request, who: Caller, start: str | None, end: str | None,
                   tenant: str | None = None) -> list[str]:
    """Labels (YYYY-MM) of the archived months of the caller's tenant (an admin's chosen
    one) that the UTC range [start, end) reaches: the viewer offers "include archive"."""
    lo = dt.datetime.fromisoformat(start) if start else None
    hi = dt.datetime.fromisoformat(end) if end else None
    scope = who.principal.tenant or tenant or None
    months = await deps.store(request, lambda db: _archived(db, scope))
    return sorted({layout.month_label(w.month) for w in months if overlaps(w.month, lo, hi)})


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _month_row(w: WarmMonth, role: str, tenant_q: dict[str, str]) -> dict[str, Any]:
    label = layout.month_label(w.month)
    operator = role in ("admin", "tenant")
    q = urlencode(tenant_q)
    sep = "&" if q else ""
    downloads = []
    if operator:
        if w.files == 1:
            downloads.append(("Parquet", f"/v1/archive/{label}" + (f"?{q}" if q else "")))
        else:
            downloads += [(f"Parquet part {n + 1} of {w.files}",
                           f"/v1/archive/{label}/files/{n}" + (f"?{q}" if q else ""))
                          for n in range(w.files)]
    else:
        downloads.append(("Parquet (your calls)", f"/v1/archive/{label}?format=parquet"))
    downloads.append(("CSV, zstd (UTC)",
                      f"/v1/archive/{label}?format=csv&compression=zstd{sep}{q}"))
    start = first_day(w.month)
    end = first_day(add_months(w.month, 1))
    view = "/?" + urlencode({"range": "custom", "from": f"{start.isoformat()}T00:00:00",
                             "to": f"{end.isoformat()}T00:00:00", "tz": "UTC",
                             "archive": "1", **({"tenant": tenant_q["tenant"]}
                                                if "tenant" in tenant_q else {})})
    return {"month": label, "rows": f"{w.rows:,}" if operator else None,
            "size": _size(w.bytes) if operator else None,
            "files": w.files if operator else None,
            "archived_at": w.updated_at.strftime("%Y-%m-%d %H:%M UTC"),
            "downloads": downloads, "view": view}


async def page_context(request: Request, web: sess.WebCaller, tenant: str) -> dict[str, Any]:
    """What archive.html shows for the signed-in user (an admin picks the tenant)."""
    role = web.caller.principal.role
    scope = web.caller.principal.tenant or (tenant if role == "admin" else "") or ""
    tenants: list[str] = []
    if role == "admin":
        tenants = (await deps.store(request, lambda db: accounts_for(
            db, web.caller.principal, None))).tenants
    months = await deps.store(request, lambda db: _archived(db, scope)) if scope else []
    keep = deps.service(request).config.keep_months
    first_hot = add_months(month_of(dt.datetime.now(dt.UTC).date()), -keep)
    tenant_q = {"tenant": scope} if role == "admin" and scope else {}
    return {"web": web, "role": role, "scope": scope, "tenants": tenants, "keep": keep,
            "first_hot": layout.month_label(first_hot),
            "months": [_month_row(w, role, tenant_q)
                       for w in sorted(months, key=lambda w: -w.month)]}
