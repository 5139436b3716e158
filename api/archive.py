"""/v1/archive: the archived (warm) months of the caller's tenant, and their download.

Tenant operators (and an admin naming `tenant=`) see each month's rows and
compressed size and may fetch the Parquet files as stored — a presigned URL
when the archive is on S3, a stream when it is a directory. Customer and
carrier users never get a stored file (it holds every account of the tenant):
their download is filtered server-side by ClickHouse with the same guard as
every other query, as Parquet or CSV, and shows only the fields their role may
see. CSV is UTC, optionally gzip/zstd and spreadsheet-safe unless `raw=true`,
like the other downloads.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from starlette.background import BackgroundTask

from cdrhouse.api.auth import Caller
from cdrhouse.api.downloads import Compression, RawQuery, plan_export, start_download
from cdrhouse.api.errors import Problem
from cdrhouse.api.deps import caller, service
from clickhouse_connect.driver.exceptions import ClickHouseError

from cdrhouse.engine import export
from cdrhouse.engine import query as q
from cdrhouse.engine.db import Database
from cdrhouse.sql import catalogue
from cdrhouse.sql.limits import limits_for
from cdrhouse.sql.viewer import ViewRequest
from cdrhouse.tiering import layout
from cdrhouse.tiering.layout import Manifest
from cdrhouse.sql.months import bounds, parse_month
from cdrhouse.tiering.reader import WarmReader
from cdrhouse.tiering.store import LocalStore
from cdrhouse.tiering.warm import WarmMonth, warm_months

router = APIRouter(prefix="/v1/archive", tags=["archive"])

_PARQUET = "application/vnd.apache.parquet"


def _tenant(who: Caller, tenant: str | None) -> str:
    role, own = who.principal.role, who.principal.tenant
    if role == "admin":
        if not tenant:
            raise Problem("invalid-request", "tenant: an admin names the tenant (tenant=…)")
        return tenant
    if tenant and tenant != own:
        raise Problem("forbidden", "the key already scopes the archive to its own tenant")
    return own or ""


def _operator(who: Caller) -> bool:
    return who.principal.role in ("admin", "tenant")


def _month(text: str) -> int:
    try:
        return parse_month(text)
    except ValueError as exc:
        raise Problem("invalid-request", str(exc)) from None


def _reader(request: Request) -> WarmReader:
    return service(request).warm


def _month_json(w: WarmMonth, operator: bool) -> dict:
    body = {"month": layout.month_label(w.month), "archived_at": w.updated_at.isoformat()
            + ("" if w.updated_at.tzinfo else "Z")}
    if operator:  # tenant-wide volumes are the tenant's business, not an account's
        body.update(rows=w.rows, bytes=w.bytes, files=w.files)
    return body


@router.get("", summary="Archived months of the tenant")
async def list_archive(request: Request, tenant: str | None = Query(None),
                       who: Caller = Depends(caller)) -> dict:
    scope = _tenant(who, tenant)
    months = await plan_export(request, who, lambda db, qid: warm_months(
        db, scope, states=("archived",)))
    operator = _operator(who)
    return {"tenant": scope, "months": [_month_json(w, operator) for w in months]}


def _found(request: Request, db: Database, tenant: str, month: int) -> tuple[WarmMonth, Manifest]:
    found = _reader(request).month(db, tenant, month)
    if found is None:
        raise Problem("not-found", f"month {layout.month_label(month)} is not in the archive "
                                   "of this tenant (it may still be hot: query it directly)")
    return found


def _file_url(request: Request, month: int, n: int, key: str, tenant: str | None) -> str:
    url = _reader(request).store.presign(key)
    if url:
        return url
    suffix = f"?tenant={tenant}" if tenant else ""
    return f"/v1/archive/{month}/files/{n}{suffix}"


@router.get("/{month}", summary="Download an archived month (Parquet or CSV)",
            responses={200: {"content": {_PARQUET: {}, "text/csv": {}, "application/json": {},
                                         "application/zstd": {}, "application/gzip": {}}},
                       307: {"description": "Redirect to the single Parquet file on S3."}})
async def get_month(request: Request, month: str,
                    format: Literal["parquet", "csv"] = Query("parquet"),
                    compression: Compression | None = Query(None, description="CSV only: gzip "
                                                                               "or zstd."),
                    raw: bool = RawQuery,
                    tenant: str | None = Query(None), who: Caller = Depends(caller)):
    scope, month_id = _tenant(who, tenant), _month(month)
    _, manifest = await plan_export(request, who, lambda db, qid: _found(request, db, scope,
                                                                         month_id))
    if format == "csv":
        return await _csv(request, who, scope, month_id, manifest, compression, raw)
    if compression:
        raise Problem("invalid-request", "compression: Parquet files are already "
                                         "zstd-compressed; compression applies to CSV")
    if not _operator(who):
        return await _filtered_parquet(request, who, scope, month_id, manifest)
    if len(manifest.files) == 1:
        return _file_response(request, manifest, 0)
    admin_tenant = scope if who.principal.role == "admin" else None
    return {"tenant": scope, "month": layout.month_label(month_id), "rows": manifest.rows,
            "bytes": manifest.bytes, "files": [
                {"part": n, "rows": f.rows, "bytes": f.bytes,
                 "url": _file_url(request, month_id, n, f.key, admin_tenant)}
                for n, f in enumerate(manifest.files)]}


@router.get("/{month}/files/{part}", summary="One stored Parquet file of an archived month "
                                             "(tenant operators)")
async def get_file(request: Request, month: str, part: int, tenant: str | None = Query(None),
                   who: Caller = Depends(caller)):
    if not _operator(who):
        raise Problem("forbidden", "stored files hold every account of the tenant; download "
                                   f"/v1/archive/{month} for your own rows")
    scope, month_id = _tenant(who, tenant), _month(month)
    _, manifest = await plan_export(request, who, lambda db, qid: _found(request, db, scope,
                                                                         month_id))
    if not 0 <= part < len(manifest.files):
        raise Problem("not-found", f"month {layout.month_label(month_id)} has "
                                   f"{len(manifest.files)} file(s), numbered from 0")
    return _file_response(request, manifest, part)


def _file_response(request: Request, manifest: Manifest, n: int):
    store = _reader(request).store
    key = manifest.files[n].key
    name = f"cdrs-{manifest.tenant}-{manifest.month}-{key.rsplit('/', 1)[1]}"
    url = store.presign(key)
    if url:
        return RedirectResponse(url, status_code=307)
    if isinstance(store, LocalStore):
        return FileResponse(store.root / key, media_type=_PARQUET, filename=name)
    return StreamingResponse(store.open(key), media_type=_PARQUET,
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _bounds(month: int) -> tuple[str, str]:
    start, end = bounds(month)
    return start.isoformat(), end.isoformat()


def _month_request(who: Caller, month: int) -> ViewRequest:
    start, end = _bounds(month)
    columns = [f.name for f in catalogue.visible_fields(who.principal.role)]
    return ViewRequest(columns=columns, sort=["start_time", "call_id"], range="custom",
                       date_from=start, date_to=end, tz="UTC", for_download=True, limit=None)


async def _csv(request: Request, who: Caller, tenant: str, month: int, manifest: Manifest,
               compression: str | None, raw: bool = False):
    now = dt.datetime.now(dt.UTC)

    def make(db: Database, qid: str) -> export.Export:
        select = _reader(request).select(db, manifest)
        return export.view_export(who.principal, _month_request(who, month), now, [select])
    plan = await plan_export(request, who, make)
    return await start_download(request, who, "cdrs", plan, compression, raw=raw)


async def _filtered_parquet(request: Request, who: Caller, tenant: str, month: int,
                            manifest: Manifest):
    """The caller's own rows of the month as Parquet, written by ClickHouse into a
    temporary file (flat memory), then sent."""
    now = dt.datetime.now(dt.UTC)

    def work(db: Database, qid: str) -> str:
        plan = export.view_export(who.principal, _month_request(who, month), now,
                                  [_reader(request).select(db, manifest)])
        settings = {**limits_for(who.principal.role, warm=True), "max_result_rows": 0,
                    "max_result_bytes": 0,
                    "output_format_parquet_compression_method": "zstd"}
        fd, path = tempfile.mkstemp(prefix="cdrhouse-archive-", suffix=".parquet")
        try:
            # settings ride in the SQL text (engine/export.py says why)
            with os.fdopen(fd, "wb") as out, db.stream(export.with_settings(plan.sql, settings),
                                                       "Parquet", plan.parameters) as chunks:
                for chunk in chunks:
                    out.write(chunk)
        except ClickHouseError as exc:
            os.unlink(path)
            raise q.query_failed(exc, settings, plan.sql) from None
        except BaseException:
            os.unlink(path)
            raise
        return path

    path = await plan_export(request, who, work)
    name = f"cdrs-{tenant}-{who.principal.role}-{month}-utc.parquet"
    return FileResponse(path, media_type=_PARQUET, filename=name,
                        background=BackgroundTask(os.unlink, path))

