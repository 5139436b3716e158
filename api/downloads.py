"""CSV downloads: `GET /v1/cdrs.csv`, `POST /v1/cdrs/search.csv`, `POST /v1/sql.csv`.

Each takes exactly the request of its JSON twin (`GET /v1/cdrs` parameters,
the `POST /v1/cdrs/search` body, the `POST /v1/sql` body), guarded the same
way for the key's principal, and answers with every matching row as CSV,
streamed from ClickHouse to the client chunk by chunk (engine.export): memory
stays flat whatever the size. Paging does not apply (`limit` is ignored, a
`cursor` is refused).

What the client gets:

- **Values in UTC**, always: `tz` still decides what a preset such as
  `today` or a naive `from`/`to` means, but times are written in UTC
  (`YYYY-MM-DD hh:mm:ss.fff`). `X-Timezone: UTC` says so, and the filename
  ends in `-utc`.
- A header line of column names, then rows; NULL is an empty field. A viewer
  download has the columns the JSON page has (`columns`, then any sort key
  not among them).
- `Content-Disposition: attachment` with a filename such as
  `cdrs-acme-20260301-20260401-utc.csv` (tenant or account, the UTC range,
  the end exclusive) or `sql-acme-20260315T101500Z.csv`; `X-Query-Id` is the
  download's id (the end of its query's log_comment tag, for support and
  cancellation); `Cache-Control: no-store`.
- **Spreadsheet-safe cells** (engine/export.py): a text value or header name
  that a spreadsheet would run as a formula (it starts with `=`, `+`, `-`,
  `@`, TAB or CR and is not a signed number such as `+442079460000`) is
  prefixed with `'`; a NUL becomes U+FFFD. `?raw=true` sends the stored text
  unchanged, for programs.
- `?compression=gzip|zstd` sends a compressed *file*: `application/gzip`
  (`.csv.gz`) or `application/zstd` (`.csv.zst`), compressed as it streams,
  not `Content-Encoding` — clients save what they asked for instead of
  transparently inflating it. `Accept-Encoding` does not choose it: browsers
  send `gzip` on every request, and a user who clicked "download CSV" wants a
  `.csv`.

Failures:

- Before the first byte — authentication, a refused request or SQL, a query
  that fails as it starts (a limit, a bad cast): the usual problem+json
  answer. The query is started and its first rows read before the response
  begins, so most failures land here.
- After the first byte the status line has gone: the download ends with a
  line `#ERROR: <message>` (flushed through the compressor when compressed)
  and the connection is then aborted — the chunked body never gets its
  terminating chunk (and a compressed file never gets its end), so no client
  can take it for a complete file.
- A client that goes away mid-download cancels the ClickHouse query (its
  log_comment tag, `engine.query.cancel`), and the database client goes back
  to the pool.

A download holds one of the principal's concurrent-query slots and one
pooled database client for as long as it streams; its time limit is the
role's `max_execution_time` (engine.export explains the limits). An
operator (or a test) may tighten a download's limits with
`app.state.download_limit_overrides`, a mapping like
`{"max_result_rows": 100000}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from cdrhouse.api.auth import Caller
from cdrhouse.api.errors import Problem
from cdrhouse.api.deps import caller, service, to_request, translate, view_params, warm_sources
from cdrhouse.api.models import SearchBody, SQLBody, ViewParams
from cdrhouse.engine import export
from cdrhouse.engine import query as q
from cdrhouse.engine.db import Database
from cdrhouse.engine.pool import PoolExhausted
from cdrhouse.sql.viewer import resolve_range

router = APIRouter(prefix="/v1", tags=["downloads"])
log = logging.getLogger("cdrhouse.downloads")

Compression = Literal["gzip", "zstd"]
_COMPRESSION_DOC = ("Send a compressed file: gzip (.csv.gz, application/gzip) or zstd "
                    "(.csv.zst, application/zstd). Default: plain CSV.")
_CSV_TYPE = "text/csv; charset=utf-8; header=present"
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class DownloadAborted(Exception):
    """Raised into the server after a download's `#ERROR:` line: the response stays incomplete."""


# -- one download ---------------------------------------------------------------------

class Download:
    """One streaming download: its query, its database client, its slot, its bytes.

    The blocking parts (the stream, compression) run in worker threads one
    step at a time; `close()` always runs at the end (the response makes
    sure) and stops an unfinished query: a step still waiting on ClickHouse is
    ended by stopping the query by its tag (KILL … ASYNC, repeated until the
    step returns), then our end of the stream is closed and what may still
    run is cancelled (engine.query.cancel) before the client goes back to
    the pool.
    """

    def __init__(self, request: Request, who: Caller, plan: export.Export,
                 compression: str | None, raw: bool = False) -> None:
        self.request = request
        self.service = service(request)
        self.who = who
        self.plan = plan
        self.raw = raw
        self.query_id = uuid.uuid4().hex
        self.limit_overrides = getattr(request.app.state, "download_limit_overrides", None)
        self._encoder = export.encoder(compression)
        self._stack = ExitStack()
        self._lock = threading.Lock()
        self._chunks: Iterator[bytes] | None = None
        self._task: asyncio.Future | None = None
        self._ended_with_newline = True
        self._finished = False      # the stream ended (completely or with an error)
        self._closed = False
        self._started = False       # the first chunk is ready: the response will begin
        self._slot = False          # holds one of the principal's concurrent-query slots
        self._stopping = False      # closing: start no query
        self.failure: q.QueryFailed | None = None
        self.lines = 0
        self.csv_bytes = 0
        self.sent_bytes = 0
        self.started = time.perf_counter()

    # -- worker-thread side ------------------------------------------------------------

    def _open(self) -> bytes:
        """Take a client, start the query, return the first chunk (raises if it fails)."""
        try:
            try:
                db: Database = self._stack.enter_context(self.service.pool.acquire())
            except PoolExhausted as exc:
                raise Problem("unavailable", str(exc)) from None
            if self._stopping:
                raise Problem("query-cancelled", "the client went away; the query was cancelled")
            self._chunks = export.stream_csv(
                db, self.who.principal, self.plan.sql, self.plan.parameters, self.query_id,
                columns=self.plan.columns, limit_overrides=self.limit_overrides,
                warm=self.plan.warm, types=self.plan.types, raw=self.raw)
            self._stack.callback(self._chunks.close)
            first = next(self._chunks, None)
        except BaseException:
            self._release()
            raise
        self._started = True
        if first is None:  # cannot happen: the header comes first
            self._release()
            return self._encoder.finish()
        return self._encode(first)

    def _encode(self, raw: bytes) -> bytes:
        self.lines += raw.count(b"\n")
        self.csv_bytes += len(raw)
        self._ended_with_newline = raw.endswith(b"\n")
        return self._encoder.compress(raw)

    def _step(self) -> bytes | None:
        """The next bytes to send, or None when there are no more."""
        if self._finished:
            return None
        while True:
            try:
                raw = next(self._chunks)  # type: ignore[arg-type]
            except StopIteration:
                self._release()
                return self._encoder.finish() or None
            except Exception as exc:  # noqa: BLE001 - reported to the client, then aborted
                self.failure = exc if isinstance(exc, q.QueryFailed) else q.QueryFailed(
                    "the download failed on the server; it was logged")
                if not isinstance(exc, q.QueryFailed):
                    log.exception("download %s failed", self.query_id)
                self._release()
                trailer = b"" if self._ended_with_newline else b"\n"
                trailer += export.error_line(str(self.failure))
                return self._encoder.compress(trailer) + self._encoder.flush()
            out = self._encode(raw)
            if out:
                return out

    def _release(self) -> None:
        """Close the stream and give back the client (once)."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
        try:
            self._stack.close()
        except Exception:  # noqa: BLE001 - closing a broken stream; nothing to report
            log.debug("closing download %s", self.query_id, exc_info=True)

    def _stop_query(self) -> None:
        """Ask ClickHouse to stop the query, without waiting (engine.export.stop)."""
        try:
            with self.service.pool.acquire() as db:
                export.stop(db, self.who.principal, self.query_id)
        except Exception:  # noqa: BLE001 - best effort: the query has its time limit anyway
            log.warning("could not stop download %s", self.query_id, exc_info=True)

    def _cancel_query(self) -> None:
        """Kill the query if it still runs, and wait for it to end (our end is closed)."""
        try:
            self.service.cancel(self.who, self.query_id)
        except Exception:  # noqa: BLE001 - best effort: the query has its time limit anyway
            log.warning("could not cancel download %s", self.query_id, exc_info=True)

    def _abandon(self) -> None:
        """The client left before the end: close our end of the stream, then kill the query."""
        chunks, self._chunks = self._chunks, None
        if chunks is not None:
            try:
                chunks.close()
            except Exception:  # noqa: BLE001
                log.debug("closing download %s", self.query_id, exc_info=True)
        # a server keeps running the query a while after its client hangs up,
        # holding that client's session: kill it before the client is reused
        self._cancel_query()
        self._release()

    # -- event-loop side ---------------------------------------------------------------

    async def start(self) -> bytes:
        """Start the query; the first bytes to send. Errors come out as problems."""
        await self.service.enter_slot(self.who)
        self._slot = True
        gone = asyncio.ensure_future(_disconnected(self.request))
        try:
            self._task = asyncio.ensure_future(anyio.to_thread.run_sync(self._open))
            await asyncio.wait({self._task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not self._task.done():
                await self.close()
                raise Problem("query-cancelled", "the client went away; the query was cancelled")
            try:
                return self._task.result()
            except Exception as exc:  # noqa: BLE001 - translated or re-raised
                raise translate(exc) from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise
        finally:
            gone.cancel()

    async def _next(self) -> bytes | None:
        self._task = asyncio.ensure_future(anyio.to_thread.run_sync(self._step))
        # shielded: if the response is cancelled (the client left), the step
        # runs on and close() waits for it
        return await asyncio.shield(self._task)

    async def body(self, first: bytes) -> AsyncIterator[bytes]:
        chunk: bytes | None = first
        while chunk is not None:
            if chunk:
                self.sent_bytes += len(chunk)
                yield chunk
            chunk = await self._next()
        if self.failure is not None:
            raise DownloadAborted(f"download {self.query_id} failed: {self.failure}")

    async def close(self) -> None:
        """Stop whatever is still running and give everything back (idempotent)."""
        if self._closed:
            return
        self._closed = True
        cancelled = not self._finished  # closed before the stream ended: the client left
        self._stopping = True
        stopping = None
        task = self._task
        if task is not None and not task.done():
            # A step may be waiting on ClickHouse, for as long as the query
            # computes: ask the query to stop, again until the step ends (the
            # query may not have started when first asked). A server's kill
            # waits while the query is blocked writing to us, so the kills run
            # alongside until our end of the stream is closed below.
            async def keep_stopping() -> None:
                while not task.done():
                    await anyio.to_thread.run_sync(self._stop_query)
                    await asyncio.wait({task}, timeout=0.5)
            stopping = asyncio.ensure_future(keep_stopping())
            with contextlib.suppress(BaseException):  # the query was stopped on purpose
                await task
        if not self._finished:
            await anyio.to_thread.run_sync(self._abandon)
        if stopping is not None:
            await stopping
        if self._slot:
            self._slot = False
            self.service.leave_slot(self.who)  # on the event loop: the slots are asyncio semaphores
        if self._started:
            self._account(cancelled)

    def _account(self, cancelled: bool) -> None:
        """Rows into request.state and the metrics, one log line per download."""
        # the header is a line; a text value with a newline in it counts twice
        rows = max(self.lines - 1, 0)
        self.request.state.rows = rows
        route = getattr(self.request.scope.get("route"), "path", "unmatched")
        failed = self.failure is not None and not cancelled
        metrics = getattr(self.request.app.state, "metrics", None)
        if metrics is not None:
            # the rows are counted by the access middleware (api.app.Observe) once
            # the body has ended; a failure after the headers went out counts here
            if failed:
                metrics.errors.labels("download-failed").inc()
        log.info(json.dumps({
            "download": self.query_id, "route": route, "principal": self.who.principal_text,
            "outcome": "cancelled" if cancelled else "failed" if failed else "complete",
            "rows": rows, "csv_bytes": self.csv_bytes, "sent_bytes": self.sent_bytes,
            "ms": round((time.perf_counter() - self.started) * 1000, 1),
            "error": str(self.failure) if failed else None}))


async def _disconnected(request: Request) -> None:
    """Return when the client has gone away.

    Waits on the request's receive channel (its body has been read by then).
    `Request.is_disconnected()` cannot be polled here: behind Starlette's
    BaseHTTPMiddleware its zero-timeout receive never sees the disconnect.
    """
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class CSVDownloadResponse(StreamingResponse):
    """A StreamingResponse that aborts a failed download and always closes it."""

    def __init__(self, download: Download, first: bytes, headers: dict[str, str],
                 media_type: str) -> None:
        super().__init__(download.body(first), headers=headers, media_type=media_type)
        self.download = download

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.download.close()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except DownloadAborted as exc:
            await _abort(exc)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _abort(exc: DownloadAborted) -> None:
    """End a started response so that no client takes it for complete: raise.

    ASGI's way to abort a started response is to raise: the server then closes
    the connection without the chunked body's last chunk. (This needs every
    middleware in between to let the exception through — the app's access-log
    middleware, api.app.Observe, is plain ASGI for that reason.)
    """
    log.warning("aborting the response: %s", exc)
    raise exc


# -- responses ------------------------------------------------------------------------

def _stamp(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    value = value.astimezone(dt.timezone.utc)
    if value.time() == dt.time(0):
        return value.strftime("%Y%m%d")
    return value.strftime("%Y%m%dT%H%M%SZ")


def _scope_name(who: Caller, p: ViewParams | None = None) -> str:
    """Whose rows: the tenant (and account) of the key, or what an operator narrowed to."""
    principal = who.principal
    parts = [principal.tenant or (p.tenant if p and p.tenant else "all")]
    if principal.role in ("customer", "carrier"):
        parts.append(who.principal_text.rsplit(":", 1)[-1])
    elif p is not None:
        parts += [code for code in (p.customer, p.carrier) if code]
    return "-".join(parts)


def filename(kind: str, who: Caller, plan: export.Export, compression: str | None,
             p: ViewParams | None = None, now: dt.datetime | None = None) -> str:
    if kind == "cdrs":
        start, end = (_stamp(b) for b in plan.applied_range)
        span = "all" if start is None and end is None else f"{start or 'start'}-{end or 'end'}"
        stem = f"cdrs-{_scope_name(who, p)}-{span}-utc"
    else:
        now = now or dt.datetime.now(dt.timezone.utc)
        stem = f"sql-{_scope_name(who)}-{now.strftime('%Y%m%dT%H%M%SZ')}"
    name = _FILENAME_UNSAFE.sub("_", stem) + ".csv"
    if compression:
        name += export.COMPRESSIONS[compression][0]
    return name


async def start_download(request: Request, who: Caller, kind: str, plan: export.Export,
                         compression: str | None, p: ViewParams | None = None,
                         raw: bool = False) -> CSVDownloadResponse:
    download = Download(request, who, plan, compression, raw)
    first = await download.start()
    media_type = export.COMPRESSIONS[compression][1] if compression else _CSV_TYPE
    headers = {
        "Content-Disposition":
            f'attachment; filename="{filename(kind, who, plan, compression, p)}"',
        "X-Timezone": "UTC",
        "X-Query-Id": download.query_id,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    return CSVDownloadResponse(download, first, headers, media_type)


async def plan_export(request: Request, who: Caller, make: Callable[[Database, str], export.Export]
                ) -> export.Export:
    def work(db: Database, qid: str) -> export.Export:
        try:
            return make(db, qid)
        except Exception as exc:  # noqa: BLE001 - translated or re-raised
            raise translate(exc) from None
    return await service(request).run(request, who, work)


async def _view_download(request: Request, who: Caller, p: ViewParams, rules: dict | None,
                         compression: str | None, raw: bool = False) -> CSVDownloadResponse:
    now = dt.datetime.now(dt.timezone.utc)

    def make(db: Database, qid: str) -> export.Export:
        req = to_request(db, who, p, rules, for_download=True)
        sources = warm_sources(request, db, who, p.include_archive, *resolve_range(req, now))
        return export.view_export(who.principal, req, now, sources.selects)
    plan = await plan_export(request, who, make)
    return await start_download(request, who, "cdrs", plan, compression, p, raw)


_RAW_DOC = ("Send text exactly as stored. By default a cell (or header name) that a "
            "spreadsheet would run as a formula — starting with = + - @ TAB or CR, other than "
            "a signed number such as +442079460000 — is prefixed with ', and NUL becomes "
            "U+FFFD.")
RawQuery = Query(False, description=_RAW_DOC)

_RESPONSES: dict[int | str, dict[str, Any]] = {200: {
    "description": "The rows as CSV (or a gzip / zstd file of it), streamed.",
    "content": {"text/csv": {}, "application/gzip": {}, "application/zstd": {}}}}


# -- endpoints ------------------------------------------------------------------------

@router.get("/cdrs.csv", summary="Download the viewer's CDRs as CSV (UTC, every row)",
            response_class=StreamingResponse, responses=_RESPONSES)
async def download_cdrs(request: Request, p: ViewParams = Depends(view_params),
                        compression: Compression | None = Query(None,
                                                                description=_COMPRESSION_DOC),
                        raw: bool = RawQuery,
                        who: Caller = Depends(caller)) -> CSVDownloadResponse:
    return await _view_download(request, who, p, None, compression, raw)


@router.post("/cdrs/search.csv", summary="Download a query-builder search as CSV (UTC, every row)",
             response_class=StreamingResponse, responses=_RESPONSES)
async def download_search(request: Request, body: SearchBody,
                          compression: Compression | None = Query(None,
                                                                  description=_COMPRESSION_DOC),
                          raw: bool = RawQuery,
                          who: Caller = Depends(caller)) -> CSVDownloadResponse:
    return await _view_download(request, who, body, body.rules, compression, raw)


@router.post("/sql.csv", summary="Download the result of user SQL as CSV (every row)",
             response_class=StreamingResponse, responses=_RESPONSES)
async def download_sql(request: Request, body: SQLBody,
                       compression: Compression | None = Query(None,
                                                               description=_COMPRESSION_DOC),
                       raw: bool = RawQuery,
                       who: Caller = Depends(caller)) -> CSVDownloadResponse:
    plan = await plan_export(request, who, lambda db, qid: export.sql_export(
        db, who.principal, body.sql, body.params, qid,
        getattr(request.app.state, "download_limit_overrides", None),
        warm_sources(request, db, who, body.include_archive).selects))
    return await start_download(request, who, "sql", plan, compression, raw=raw)
