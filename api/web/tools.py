"""The web viewer's billing pages: the Jobs panel (`/jobs`) and Balances & rate cards
(`/billing`).

These routes only render the page shells: who is signed in, the CSRF token, the
accounts a picker may offer. Everything the pages show or change goes through
the /v1 API on the session cookie (`static/jobs.js`, `static/billing.js`), so the
API's own checks decide what a session sees — a customer's Jobs page lists what
`GET /v1/jobs` gives its key, nothing more. The Recalc dialog of the CDR page is
`templates/_recalc.html` with `static/recalc.js`, on the same API.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cdrhouse.api import deps
from cdrhouse.api.web.render import accounts_for
from cdrhouse.api.web.page import render_page, signed_in

router = APIRouter(include_in_schema=False)

#: roles that run recalc jobs, read rate cards and import them (Principal.operator_tenant)
OPERATORS = frozenset({"admin", "tenant"})


@router.get("/jobs")
async def jobs_page(request: Request, job: str = "") -> Response:
    """Every job this session may see (recalc, tiering, restores, backups), followed live."""
    web = await signed_in(request)
    if isinstance(web, Response):
        return web
    return render_page(request, "jobs.html", {"web": web, "role": web.caller.principal.role,
                                              "job": job[:64]})


@router.get("/billing")
async def billing_page(request: Request, tenant: str = "") -> Response:
    """Balances and rate cards of the operator's tenant (an admin picks the tenant)."""
    web = await signed_in(request)
    if isinstance(web, Response):
        return web
    principal = web.caller.principal
    if principal.role not in OPERATORS:
        return render_page(request, "billing.html", {"web": web, "role": principal.role,
                                                     "refused": True}, 403)
    accounts = await deps.store(request, lambda db: accounts_for(db, principal, tenant or None))
    chosen = principal.tenant or (tenant if tenant in accounts.tenants else "")
    return render_page(request, "billing.html", {
        "web": web, "role": principal.role, "refused": False, "accounts": accounts,
        "tenant": chosen})
