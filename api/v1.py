"""The /v1 endpoints for reading CDRs: fields, listing, search, SQL, one record, its recording.

Every endpoint takes its principal from the API key (`Service.caller`), never
from a parameter. An admin or a tenant operator may narrow to one tenant or
account explicitly (`tenant=`, `customer=`, `carrier=` — the Global view
drilling into an account); for anyone else those parameters are refused.
"""

from __future__ import annotations

import functools
import json

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response

from cdrhouse.api import deps
from cdrhouse.api.auth import Caller
from cdrhouse.api.conditional import json_response
from cdrhouse.api.deps import apply_preferences, caller, service, view_params
from cdrhouse.api.errors import Problem
from cdrhouse.api.recordings import recording_location
from cdrhouse.api.models import FieldsOut, PageOut, SearchBody, SQLBody, SQLOut, ViewParams
from cdrhouse.sql import catalogue
from cdrhouse.sql.operators import operators_for

router = APIRouter(prefix="/v1")


# -- endpoints ----------------------------------------------------------------------

@router.get("/fields", summary="The CDR fields this key may see, with operators and defaults",
            response_model=FieldsOut)
async def fields(who: Caller = Depends(caller)) -> Response:
    # encoded here, not through FieldsOut: the role's part is built once (`_fields_json`)
    principal = json.dumps(who.principal_text, ensure_ascii=False)
    return Response(f'{{"principal":{principal},{_fields_json(who.principal.role)}'.encode(),
                    media_type="application/json")


@functools.cache
def _fields_json(role: str) -> str:
    """What /v1/fields answers a role after the principal, as JSON in the form FieldsOut
    gives (compact, keys in the model's order). The catalogue is fixed at import, so
    this is built once per role instead of once per request (and validated once,
    through the model itself)."""
    body = FieldsOut.model_validate({
        "principal": "",
        "default_columns": list(catalogue.DEFAULT_COLUMNS[role]),
        "fields": [{
            "name": f.name, "type": f.ch_type, "kind": f.kind, "label": f.label,
            "description": f.description, "filterable": f.filterable, "sortable": f.sortable,
            "values": list(f.enum_values) or None,
            "operators": [{"key": op.key, "rqb": op.rqb, "label": op.label, "arity": op.arity}
                          for op in operators_for(f)] if f.filterable else [],
        } for f in catalogue.visible_fields(role)],
    }).model_dump_json()
    prefix = '{"principal":"",'
    assert body.startswith(prefix)
    return body[len(prefix):]


@router.get("/cdrs", summary="Viewer listing: one page of CDRs", response_model=PageOut)
async def list_cdrs(request: Request, p: ViewParams = Depends(view_params),
                    who: Caller = Depends(caller)) -> Response:
    p = await apply_preferences(request, who, p)
    # conditional (ETag / If-None-Match, api/conditional.py); encoded once, not via PageOut
    return await deps.view_response(request, who, p, None)


@router.post("/cdrs/search", summary="Viewer listing with a query-builder tree",
             response_model=PageOut)
async def search_cdrs(request: Request, body: SearchBody, who: Caller = Depends(caller)) -> Response:
    p = await apply_preferences(request, who, body, given=body.model_fields_set)
    page = await deps.run_view(request, who, p, body.rules)
    return json_response(page)  # encoded once, not again via PageOut


@router.post("/sql", summary="User SQL over the logical tables, guarded for this key",
             response_model=SQLOut)
async def run_sql(request: Request, body: SQLBody, who: Caller = Depends(caller)):
    # within the response cap (deps.capped_json): one huge value must not build a huge body
    return await deps.sql_response(request, who, body)


_TENANT = Query(None, description="Admins: the tenant of the call (required when the id "
                                   "exists in several tenants: 409 lists them).")


@router.get("/cdrs/{call_id}", summary="One CDR")
async def get_cdr(request: Request, call_id: str, tenant: str | None = _TENANT,
                  who: Caller = Depends(caller)) -> dict:
    return await deps.one_record(request, who, call_id, tenant)


@router.get("/cdrs/{call_id}/recording", summary="Redirect to the call's recording",
            responses={307: {"description": "To the recording: an allowed http(s) URL, or a "
                                             "presigned (SigV4) URL for s3://"},
                       403: {"description": "The stored URL is not allowed (README, "
                                            "Security)"}})
async def get_recording(request: Request, call_id: str, tenant: str | None = _TENANT,
                        who: Caller = Depends(caller)):
    record = await deps.one_record(request, who, call_id, tenant)
    url = record.get("recording_url") or ""
    if not url:
        raise Problem("not-found", f"call {call_id!r} has no recording")
    # checked here, not trusted from the ingested row (api/recordings.py)
    return RedirectResponse(recording_location(request, call_id, url), status_code=307)


health = APIRouter()


@health.get("/healthz", summary="Liveness")
async def healthz() -> dict:
    return {"status": "ok"}


@health.get("/readyz", summary="ClickHouse reachable and schema current")
async def readyz(request: Request):
    from cdrhouse.engine.migrate import is_current

    from cdrhouse.engine import instances, leases

    def work() -> tuple[bool, list]:
        with service(request).pool.acquire(timeout=5) as db:
            db.scalar("SELECT 1")
            if not is_current(db):
                return False, []
            return True, leases.states(db)
    try:
        current, held = await anyio.to_thread.run_sync(work)
    except Exception:  # noqa: BLE001 - readiness is a yes/no answer
        raise Problem("unavailable", "ClickHouse is not reachable") from None
    if not current:
        raise Problem("unavailable", "the schema is not current; run `cdrhouse init`")
    # this instance's view of the scheduled work's leases (who runs tiering, backups…)
    me = instances.instance_id()
    return {"status": "ready", "instance": me,
            "instances": service(request).instances,
            "leases": [lease.as_json(me) for lease in held]}
