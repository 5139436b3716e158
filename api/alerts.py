"""The /v1 alert endpoints: list, read and acknowledge alerts; detector thresholds.

Who sees which alerts is one rule (engine.alerts, the guard of the caller's
principal on the alerts table): an admin all (optionally one `tenant=`), a tenant
operator its tenant's, a customer or carrier key the alerts about its own account
— only when the service allows it (`serve --alerts-for-accounts`, on by default).
An alert the caller may not see is a 404, the same as a missing id, so ids of
other tenants' alerts reveal nothing. Acknowledging and thresholds are for the
tenant's operators and admins.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request

from cdrhouse.api.auth import Caller
from cdrhouse.api.deps import caller, jsonable, service, store
from cdrhouse.api.errors import Problem
from cdrhouse.engine import alerts as al
from cdrhouse.engine.db import Database
from cdrhouse.sql import alerts as rules
from cdrhouse.sql.principal import NotPermitted, TenantNeeded

router = APIRouter(prefix="/v1")


def alert_json(a: al.Alert) -> dict[str, Any]:
    return {"id": a.alert_id, "tenant": a.tenant_id, "detector": a.detector,
            "subject": a.subject, "customer_id": a.customer_id or None,
            "carrier_id": a.carrier_id or None, "state": a.state, "summary": a.summary,
            "evidence": a.evidence, "opened_at": jsonable(a.opened_at),
            "last_seen_at": jsonable(a.last_seen_at),
            "resolved_at": jsonable(a.resolved_at) if a.resolved_at else None,
            "acked_at": jsonable(a.acked_at) if a.acked_at else None,
            "acked_by": a.acked_by or None, "evaluations": a.evaluations}


def _accounts_see(request: Request) -> bool:
    return service(request).config.alerts_for_accounts


def _problem(exc: Exception) -> Problem:
    if isinstance(exc, al.AlertNotFound):
        return Problem("not-found", str(exc))
    if isinstance(exc, (al.AlertForbidden, NotPermitted)):
        return Problem("forbidden", str(exc))
    return Problem("invalid-request", str(exc))


async def _run(request: Request, fn):
    def work(db: Database):
        try:
            return fn(db)
        except (al.AlertError, rules.AlertSettingsError, TenantNeeded, NotPermitted) as exc:
            raise _problem(exc) from None
    return await store(request, work)


@router.get("/alerts", summary="Anomaly alerts the caller may see, newest first")
async def get_alerts(request: Request, who: Caller = Depends(caller),
                     state: str = Query("active", description="open, acknowledged, resolved, "
                                                              "active (open or acknowledged), all"),
                     detector: str | None = Query(None, description="One detector."),
                     tenant: str | None = Query(None, description="Admin: one tenant."),
                     since: dt.datetime | None = Query(None, description="Seen at or after (ISO 8601)."),
                     limit: int = Query(100, ge=1, le=10_000)) -> dict:
    see = _accounts_see(request)
    found = await _run(request, lambda db: al.list_alerts(
        db, who.principal, state=state, detector=detector, tenant=tenant, since=since,
        limit=limit, accounts_see=see))
    return {"alerts": [alert_json(a) for a in found]}


@router.get("/alerts/thresholds", summary="Detector settings in effect for a tenant (operators)")
async def get_thresholds(request: Request, who: Caller = Depends(caller),
                         tenant: str | None = Query(None, description="Admin: the tenant.")) -> dict:
    config = service(request).config.alert_config

    def work(db: Database) -> dict:
        t = who.principal.operator_tenant(tenant)
        effective = al.settings_for(db, t, config)
        stored = al.stored_overrides(db, t)
        return {"tenant": t, "detectors": [{
            "detector": d.key, "description": d.description, "subject": d.subject,
            "settings": effective[d.key], "overridden": stored.get(d.key, {}),
            "defaults": d.defaults(),
            "help": {name: s.doc for name, s in d.settings.items()}} for d in rules.DETECTORS]}
    return await _run(request, work)


@router.put("/alerts/thresholds", summary="Override detector settings for a tenant (operators)")
async def put_thresholds(request: Request, who: Caller = Depends(caller),
                         tenant: str | None = Query(None, description="Admin: the tenant."),
                         body: dict[str, dict[str, Any]] = Body(
                             ..., examples=[{"traffic_spike": {"min_calls": 50, "k": 6}}])
                         ) -> dict:
    """Merges into the tenant's stored overrides (configuration and defaults fill the
    rest). All or nothing: an unknown detector or setting, or a value out of its
    bounds, is a 400 naming it, and nothing is stored."""
    def work(db: Database) -> dict:
        t = who.principal.operator_tenant(tenant)
        return {"tenant": t, "overridden": al.set_overrides(db, t, body, by=who.principal_text)}
    return await _run(request, work)


@router.get("/alerts/{alert_id}", summary="One alert, with its evidence")
async def get_one(request: Request, alert_id: str, who: Caller = Depends(caller)) -> dict:
    see = _accounts_see(request)
    return alert_json(await _run(request, lambda db: al.get_alert(db, who.principal, alert_id, see)))


@router.post("/alerts/{alert_id}/ack", summary="Acknowledge an alert (operators)")
async def ack(request: Request, alert_id: str, who: Caller = Depends(caller)) -> dict:
    see = _accounts_see(request)
    return alert_json(await _run(request, lambda db: al.acknowledge(
        db, who.principal, alert_id, who.principal_text, see)))
