"""What every page of the web viewer shares: the security headers, rendering a template
with them, the redirect to sign-in, and the display zones a page may choose from.

Its own module so that each page's routes (routes, sqlpage, tools, archive) use one
copy of the headers — a page that forgot them would be framable or run with no CSP.
"""

from __future__ import annotations

import zoneinfo
from typing import Any
from urllib.parse import unquote, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cdrhouse.api.web import session as sess
from cdrhouse.api.web.assets import asset_url
from cdrhouse.api.web.render import templates

TZ_HINT = "cdrhouse_tz"
ZONES: tuple[str, ...] = tuple(sorted(z for z in zoneinfo.available_timezones()
                                      if "/" in z and not z.startswith(("Etc/", "SystemV/")))
                               ) + ("UTC",)
ZONE_SET = frozenset(ZONES)
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "media-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
       "base-uri 'none'; object-src 'none'")


def secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def render_page(request: Request, name: str, context: dict[str, Any],
                status: int = 200) -> Response:
    """A template, with the site's security headers (and the service's notice: a
    cluster rebalance under way, api/notice.py, shown as a banner by base.html)."""
    service = getattr(request.app.state, "service", None)
    context = {"asset": asset_url, "notice": getattr(service, "notice", None), **context}
    return secure_headers(templates.TemplateResponse(request, name, context, status_code=status))


def to_login(request: Request) -> Response:
    nxt = request.url.path + ("?" + request.url.query if request.url.query else "")
    resp = RedirectResponse("/login?" + urlencode({"next": nxt}), status_code=303)
    sess.clear_session_cookie(request, resp)
    return resp


def tz_hint(request: Request) -> str | None:
    """The browser's zone, which the page's script puts in a cookie (not a secret)."""
    raw = unquote(request.cookies.get(TZ_HINT) or "")
    return raw if raw in ZONE_SET else None


async def signed_in(request: Request) -> sess.WebCaller | Response:
    """The page's signed-in caller, or the answer to send instead: the redirect to
    sign-in, or the service's refusal (busy) as a page."""
    try:
        return await sess.current(request)
    except sess.SignedOut:
        return to_login(request)
    except sess.SignInRefused as exc:
        return secure_headers(HTMLResponse(str(exc), status_code=exc.status))
