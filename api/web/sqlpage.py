"""The web viewer's SQL page (`GET /sql`): an editor for user SQL in the browser.

The page only *renders* here: its script (static/sqlpage.js, with the CodeMirror
bundle static/sqleditor.bundle.js) runs, downloads, saves and lists queries on the
API's own routes — `POST /v1/sql`, `POST /v1/sql.csv`, `/v1/queries`, `GET
/v1/fields` — on the session cookie, so the guard, the limits and the sharing rules
are exactly the API's, and cancelling (aborting the fetch) is the API's "client went
away" path that kills the ClickHouse query.

What the page gets from the server is what no /v1 route states for a browser: the
columns of `daily_summary` this principal may see (from sql.logical), the
functions the guard allows (autocomplete), and the display zone to start with.

CSP: CodeMirror puts its generated styles in a `<style>` element (style-mod
uses constructable sheets only inside a shadow root), which `style-src 'self'`
blocks. This page alone allows styles carrying a fresh per-response nonce, which
the script hands to `EditorView.cspNonce`; scripts stay `'self'` only, and every
other page keeps the viewer's CSP unchanged.
"""

from __future__ import annotations

import secrets
import zoneinfo
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cdrhouse.api import deps
from cdrhouse.api.web import session as sess
from cdrhouse.api.web.page import CSP, ZONES, render_page, signed_in, tz_hint
from cdrhouse.engine import userdata as ud
from cdrhouse.sql import catalogue, functions
from cdrhouse.sql.logical import DAILY_SUMMARY

router = APIRouter(include_in_schema=False)

#: daily_summary columns that are not catalogue fields: their type and what they hold
_SUMMARY_EXTRA: dict[str, tuple[str, str]] = {
    "day": ("Date", "UTC day"),
    "calls": ("Int64", "calls that day"),
    "connected": ("Int64", "calls with billsec > 0"),
    "asr": ("Float64", "answer-seizure ratio: connected / calls"),
    "acd": ("Float64", "average call duration: billsec / connected (seconds)"),
    "billed_sec": ("Int64", "seconds billed to the customer"),
    "margin": ("Decimal(38, 6)", "customer_charge - carrier_cost"),
    "unrated": ("Int64", "calls without a charge or cost"),
}
#: catalogue fields whose daily_summary column is a sum (another type than the CDR's)
_SUMMED = {"duration": "Int64", "billsec": "Int64", "customer_charge": "Decimal(38, 6)",
           "carrier_cost": "Decimal(38, 6)"}


def summary_columns(role: str) -> list[dict[str, str]]:
    """The daily_summary columns `role` may query, with type and a short description."""
    out = []
    for name in DAILY_SUMMARY.visible_columns(role):
        if name in _SUMMARY_EXTRA:
            kind, info = _SUMMARY_EXTRA[name]
        else:
            f = catalogue.BY_NAME[name]
            kind = _SUMMED.get(name, f.ch_type)
            info = f.label + (" (sum for the day)" if name in _SUMMED else "")
        out.append({"name": name, "type": kind, "info": info})
    return out


def _csp(nonce: str) -> str:
    """The viewer's CSP with this response's style nonce added to style-src only."""
    return CSP.replace("style-src 'self'", f"style-src 'self' 'nonce-{nonce}'", 1)


async def _start_zone(request: Request, web: sess.WebCaller) -> tuple[str, str]:
    """The zone shown first and where it came from: the user's saved one, else the
    browser's (the viewer's cookie hint), else UTC ("default": the script then uses
    the browser's own zone)."""
    prefs = await deps.store(request, lambda db: ud.get_preferences(db, web.caller.key_id))
    for zone, source in ((prefs.tz, "saved"), (tz_hint(request), "browser")):
        if zone:
            try:
                zoneinfo.ZoneInfo(zone)
                return zone, source
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                continue
    return "UTC", "default"


@router.get("/sql")
async def sql_page(request: Request) -> Response:
    web = await signed_in(request)
    if isinstance(web, Response):
        return web
    role = web.caller.principal.role
    nonce = secrets.token_urlsafe(18)
    meta: dict[str, Any] = {
        "tables": {"daily_summary": summary_columns(role)},
        "functions": sorted(functions.ALLOWED),
        "principal": web.caller.principal_text,
    }
    tz, tz_source = await _start_zone(request, web)
    resp = render_page(request, "sql.html", {
        "web": web, "role": role, "tz": tz, "tz_source": tz_source, "zones": ZONES,
        "meta": meta, "style_nonce": nonce})
    resp.headers["Content-Security-Policy"] = _csp(nonce)
    return resp
