"""The /v1 billing endpoints: balances, rate cards (read), and recalc jobs.

`POST /v1/recalc` (tenant operators and admins) validates the request, creates
the job and takes the tenant's recalc lock *in the request* — so a conflict is
a 409 the caller sees at once — then runs the job on the service's job runner
(engine/jobs.py: the service waits for it at shutdown, or leaves it marked for
resume) on a pooled client and answers 202 with the job; `GET /v1/jobs/{id}`
follows it.
A dry run is a job too: its result is the preview.

Balances: customers and carriers see their own account; a tenant operator
its tenant's (optionally `customer=` / `carrier=` one); an admin any tenant.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from cdrhouse.api.deps import caller, jsonable, service, store
from cdrhouse.api.auth import Caller
from cdrhouse.api.errors import Problem
from cdrhouse.api.scaleout import launch_recalc
from cdrhouse.api.userdata import job_json
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import ledger
from cdrhouse.engine import ratecards as rc
from cdrhouse.engine import recalc as rec
from cdrhouse.engine.db import Database
from cdrhouse.sql.principal import NotPermitted, TenantNeeded

router = APIRouter(prefix="/v1")
log = logging.getLogger("cdrhouse.billing")


def _money(value: Any) -> str:
    return str(value)


def balance_json(b: ledger.Balance) -> dict[str, Any]:
    return {"tenant": b.tenant_id, "kind": b.kind, "account": b.code,
            "account_id": b.account_id, "currency": b.currency,
            "ledger": _money(b.ledger_total), "usage": _money(b.usage_total),
            "balance": _money(b.balance), "calls": b.calls,
            "computed_at": jsonable(b.computed_at) if b.computed_at else None}


def _operator_tenant(who: Caller, tenant: str | None) -> str:
    """Principal.operator_tenant as problems: 400 without a tenant, 403 when not allowed."""
    try:
        return who.principal.operator_tenant(tenant)
    except TenantNeeded:
        raise Problem("invalid-request", "tenant: an admin names the tenant") from None
    except NotPermitted as exc:
        raise Problem("forbidden", f"tenant: {exc}") from None


@router.get("/balances", summary="Account balances (ledger minus usage, as last refreshed)")
async def get_balances(request: Request, who: Caller = Depends(caller),
                       tenant: str | None = Query(None, description="Admin: one tenant."),
                       customer: str | None = Query(None, description="Operators: one customer."),
                       carrier: str | None = Query(None, description="Operators: one carrier.")
                       ) -> dict:
    p = who.principal

    def work(db: Database) -> list[ledger.Balance]:
        if p.role in ("customer", "carrier"):
            if tenant or customer or carrier:
                raise Problem("forbidden", "tenant, customer and carrier are for operators")
            return ledger.balances(db, p.tenant, p.role, p.account_id)
        t = tenant if p.role == "admin" else p.tenant
        if p.role == "tenant" and tenant and tenant != p.tenant:
            raise Problem("forbidden", f"tenant: this key cannot read tenant {tenant!r}")
        if customer and carrier:
            raise Problem("invalid-request", "give customer or carrier, not both")
        if customer or carrier:
            if not t:
                raise Problem("invalid-request", "tenant: name the tenant of the account")
            kind = "customer" if customer else "carrier"
            found = acc.find(db, t, kind, customer or carrier or "")
            if found is None:
                raise Problem("not-found", f"no {kind} {customer or carrier!r} in tenant {t!r}")
            return ledger.balances(db, t, kind, found.account_id)
        return ledger.balances(db, t)
    found = await store(request, work)
    return {"balances": [balance_json(b) for b in found]}


@router.get("/rates", summary="An account's live rate card (operators)")
async def get_rates(request: Request, account: str = Query(..., description="CODE, or "
                                                                           "customer:CODE / carrier:CODE"),
                    tenant: str | None = Query(None, description="Admin: the tenant."),
                    who: Caller = Depends(caller)) -> dict:
    t = _operator_tenant(who, tenant)

    def work(db: Database) -> dict:
        try:
            a = rc.resolve_account(db, t, account)
        except rc.RateCardError as exc:
            raise Problem("not-found", str(exc)) from None
        rates = rc.list_rates(db, t, a)
        return {"tenant": t, "kind": a.kind, "account": a.code, "rates": [{
            "prefix": r.prefix, "rate_per_min": str(r.rate_per_min),
            "connect_fee": str(r.connect_fee), "increment": r.increment,
            "min_duration": r.min_duration, "effective_from": jsonable(r.effective_from),
            "effective_to": jsonable(r.effective_to) if r.effective_to else None,
            "currency": r.currency, "rounding": r.rounding} for r in rates]}
    return await store(request, work)


@router.post("/rates", summary="Import an account's rate card (CSV body; operators)")
async def post_rates(request: Request,
                     account: str = Query(..., description="CODE, or customer:CODE / carrier:CODE"),
                     replace: bool = Query(False, description="Retire the account's rates not "
                                                              "in the file."),
                     tenant: str | None = Query(None, description="Admin: the tenant."),
                     who: Caller = Depends(caller)) -> dict:
    """All or nothing, like `cdrhouse rates import`: a bad line stores nothing and the
    problem's detail lists every bad line with its number and reason."""
    t = _operator_tenant(who, tenant)
    raw = await request.body()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Problem("invalid-request", "the body is not UTF-8 text") from None

    def work(db: Database) -> dict:
        try:
            a, n = rc.import_text(db, t, account, text, replace=replace, source="body")
        except rc.RateCardError as exc:
            raise Problem("invalid-request", str(exc)) from None
        return {"tenant": t, "kind": a.kind, "account": a.code, "imported": n}
    return await store(request, work)


class RecalcIn(BaseModel):
    """A recalc job: an operation on a UTC day range (both days inclusive)."""

    op: Literal["refresh-credit", "refresh-summaries", "rerate", "adjust-duration"]
    date_from: dt.date | None = Field(None, alias="from", description="First UTC day.")
    date_to: dt.date | None = Field(None, alias="to", description="Last UTC day (inclusive).")
    account: str | None = Field(None, description="Only this account (CODE, customer:CODE …).")
    release_reasons: list[str] = Field(default_factory=list)
    call_ids: list[str] = Field(default_factory=list, description="Only these calls (the "
                                                                  "Global view's ticked rows).")
    min_duration: int | None = None
    new_duration: int | None = None
    dry_run: bool = Field(False, description="Preview only: the job's result says what would "
                                             "change; nothing changes.")
    tenant: str | None = Field(None, description="Admin only: the tenant.")

    model_config = {"populate_by_name": True, "extra": "forbid"}


async def _start(request: Request, response: Response, who: Caller,
                 req: rec.RecalcRequest) -> dict:
    def work(db: Database):
        try:
            job = rec.start(db, req, who.principal)
            rec.claim(db, job)
            return job
        except rec.RecalcBusy as exc:
            raise Problem("conflict", str(exc)) from None
        except rec.RecalcError as exc:
            raise Problem("invalid-request", str(exc)) from None
    job = await store(request, work)
    launch_recalc(service(request), job.job_id)
    response.status_code = 202
    response.headers["Location"] = f"/v1/jobs/{job.job_id}"
    return job_json(job, who)


@router.post("/recalc", status_code=202, summary="Start a recalc job (operators and admins)")
async def post_recalc(request: Request, response: Response, body: RecalcIn,
                      who: Caller = Depends(caller)) -> dict:
    tenant = _operator_tenant(who, body.tenant)
    req = rec.RecalcRequest(
        tenant=tenant, op=body.op, date_from=body.date_from, date_to=body.date_to,
        account=body.account, release_reasons=tuple(body.release_reasons),
        call_ids=tuple(body.call_ids), min_duration=body.min_duration,
        new_duration=body.new_duration, dry_run=body.dry_run)
    return await _start(request, response, who, req)


@router.post("/recalc/{job_id}/undo", status_code=202,
             summary="Undo a re-rate or adjust-duration job (operators and admins)")
async def post_undo(request: Request, response: Response, job_id: str,
                    tenant: str | None = Query(None, description="Admin only: the tenant."),
                    who: Caller = Depends(caller)) -> dict:
    t = _operator_tenant(who, tenant)
    return await _start(request, response, who,
                        rec.RecalcRequest(tenant=t, op="undo", target_job=job_id))


@router.post("/recalc/{job_id}/resume", status_code=202,
             summary="Finish an interrupted recalc job (operators and admins)")
async def post_resume(request: Request, response: Response, job_id: str,
                      tenant: str | None = Query(None, description="Admin only: the tenant."),
                      who: Caller = Depends(caller)) -> dict:
    t = _operator_tenant(who, tenant)

    def work(db: Database):
        try:
            job = rec.resumable(db, job_id, who.principal)
            if job.tenant_id != t:
                raise rec.RecalcNotFound(job_id)
            # claimed now, as a new job is: once the answer is sent the job reads as
            # running (a page following it does not see it still stopped and give up)
            return rec.claim(db, job)
        except rec.RecalcNotFound:
            raise Problem("not-found", f"no recalc job {job_id!r} visible to this key") from None
        except rec.RecalcBusy as exc:
            raise Problem("conflict", str(exc)) from None
        except rec.RecalcError as exc:
            raise Problem("invalid-request", str(exc)) from None
    job = await store(request, work)
    launch_recalc(service(request), job.job_id)
    response.status_code = 202
    response.headers["Location"] = f"/v1/jobs/{job.job_id}"
    return job_json(job, who)

