"""/v1/charts: the viewer's charts for a view — calls, connected calls, minutes, ASR and ACD
over time, and the top countries, prefixes and release reasons.

The view is the same request as /v1/cdrs (GET: range, zone, connected-only, number,
narrowing, include_archive) or /v1/search (POST: plus builder `rules`), so a chart counts
exactly the calls the grid pages through. sql/charts.py decides the source (the daily
summary for whole UTC days, else the call records) and compiles one guarded query per
chart; they run one after another on one pooled client, admitted once like a page.

Archived months: without `include_archive` the charts leave them out, as the grid does
(the daily summary still holds them, so they are excluded there by month);
`archive.in_range` names the archived months the range reaches, for a client to offer
them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field

from cdrhouse.api import deps
from cdrhouse.api.auth import Caller
from cdrhouse.api.deps import caller
from cdrhouse.api.models import SearchBody, ViewParams
from cdrhouse.engine import query as q
from cdrhouse.engine.db import Database
from cdrhouse.sql import charts
from cdrhouse.sql.viewer import RANGES
from cdrhouse.tiering import layout
from cdrhouse.tiering.reader import overlaps
from cdrhouse.tiering.warm import warm_months

router = APIRouter(prefix="/v1/charts", tags=["charts"])


class ChartsBody(SearchBody):
    top: int = Field(10, ge=1, le=charts.MAX_TOP, description="How many values each top "
                                                              "chart lists.")


def chart_params(
    range: str | None = Query(None, description=f"One of {', '.join(RANGES)}."),
    date_from: str | None = Query(None, alias="from"),
    date_to: str | None = Query(None, alias="to"),
    tz: str = Query("UTC"), connected_only: bool = Query(False), number: str | None = Query(None),
    tenant: str | None = Query(None), customer: str | None = Query(None),
    carrier: str | None = Query(None),
    include_archive: bool = Query(False, description="Also read archived (warm) months."),
) -> ViewParams:
    return ViewParams(range=range, date_from=date_from, date_to=date_to, tz=tz,
                      connected_only=connected_only, number=number, tenant=tenant,
                      customer=customer, carrier=carrier, include_archive=include_archive)


def archived_in_range(db: Database, who: Caller, start: dt.datetime | None,
                      end: dt.datetime | None) -> list[tuple[str, int]]:
    """(tenant, month) of the archived months of the caller's tenant(s) in [start, end)."""
    return [(w.tenant, w.month) for w in warm_months(db, who.principal.tenant,
                                                     states=("archived",))
            if overlaps(w.month, start, end)]


async def run_charts(request: Request, who: Caller, p: ViewParams, rules: dict | None,
                     top: int = 10) -> dict[str, Any]:
    """Every chart of the view, as JSON."""
    def work(db: Database, qid: str) -> dict[str, Any]:
        try:
            now = dt.datetime.now(dt.UTC)
            req = deps.to_request(db, who, p, rules)
            plan = charts.plan(req, who.principal, now)
            warm = archived_in_range(db, who, plan.start, plan.end)
            sources = deps.warm_sources(request, db, who, p.include_archive, plan.start,
                                        plan.end)
            excluded = [] if p.include_archive else warm
            results = {c.name: q.run_chart(db, who.principal, c, query_id=qid,
                                           archive=sources.selects).rows
                       for c in charts.queries(req, who.principal, now, plan, top, excluded)}
        except Exception as exc:  # noqa: BLE001 - translated or re-raised
            raise deps.translate(exc) from None
        body = charts.series(plan, results.pop("series"), now)
        return {
            "range": {"from": deps.jsonable(plan.start), "to": deps.jsonable(plan.end),
                      "timezone": "UTC"},
            "timezone": p.tz,
            "plan": {"bucket": plan.bucket, "source": plan.source, "zone": plan.zone,
                     "why": plan.why},
            **body,
            "top": {dim: charts.top(rows) for dim, rows in results.items()},
            "archive": {**deps.archive_json(p.include_archive, sources),
                        "in_range": sorted({layout.month_label(m) for _, m in warm})},
        }
    return await deps.service(request).run(request, who, work)


@router.get("", summary="Charts of a view (totals, series, top lists)")
async def get_charts(request: Request, p: ViewParams = Depends(chart_params),
                     top: int = Query(10, ge=1, le=charts.MAX_TOP),
                     who: Caller = Depends(caller)) -> dict:
    p = await deps.apply_preferences(request, who, p, set(request.query_params.keys()) | {
        "columns"})
    return await run_charts(request, who, p, None, top)


@router.post("", summary="Charts of a view with query-builder rules")
async def post_charts(request: Request, body: ChartsBody, who: Caller = Depends(caller)) -> dict:
    p = ViewParams.model_validate(body.model_dump(by_alias=True, exclude={"rules", "top"}))
    p = await deps.apply_preferences(request, who, p, body.model_fields_set | {"columns"})
    return await run_charts(request, who, p, body.rules, body.top)


def request_body(p: ViewParams, rules: dict | None) -> dict[str, Any]:
    """The POST /v1/charts body of a view (the web page sends it from its own state)."""
    body = p.model_dump(by_alias=True, exclude_none=True,
                        exclude={"columns", "sort", "limit", "cursor"})
    if rules is not None:
        body["rules"] = rules
    return body
