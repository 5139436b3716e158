"""The HTTP service: `create_app(config)` builds the FastAPI app; `cdrhouse serve` runs it.

One app = one store: its lifespan opens the client pool (and, in embedded
mode, the data directory — one process at a time), applies migrations, and
closes everything at shutdown. Metrics live in a registry of the app's own.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from api import downloads, errors, userdata
from api.service import Service, ServiceConfig
from api.v1 import health, router
from engine.migrate import migrate

access_log = logging.getLogger("cdrhouse.access")


class Metrics:
    """Prometheus metrics of one app (its own registry: no process globals)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("cdrhouse_http_requests_total", "HTTP requests",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("cdrhouse_http_request_seconds", "HTTP request latency",
                                 ["route", "method"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.rows = Counter("cdrhouse_rows_returned_total", "Rows returned to clients",
                            ["route"], registry=self.registry)
        self.errors = Counter("cdrhouse_errors_total", "Errors by kind", ["kind"],
                              registry=self.registry)


def create_app(config: ServiceConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = Service.start(config)
        with service.pool.acquire() as db:
            migrate(db)
        app.state.service = service
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="cdrhouse", version="0.1.0", lifespan=lifespan,
        description="Tenant-guarded access to call detail records. Authenticate with "
                    "`Authorization: Bearer <key>` (or `X-API-Key`). Errors are "
                    "`application/problem+json`.")
    app.state.metrics = metrics = Metrics()
    app.add_exception_handler(errors.Problem, errors.handle_problem)
    app.add_exception_handler(RequestValidationError, errors.handle_validation)
    app.add_exception_handler(StarletteHTTPException, errors.handle_http)
    app.add_exception_handler(Exception, errors.handle_unexpected)
    app.include_router(health)
    app.include_router(downloads.router)  # before router: its paths are never taken for /v1/cdrs/{call_id}
    app.include_router(router)
    app.include_router(userdata.router)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            elapsed = time.perf_counter() - started
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            metrics.requests.labels(path, request.method, str(status)).inc()
            metrics.latency.labels(path, request.method).observe(elapsed)
            rows = getattr(request.state, "rows", None)
            if rows:
                metrics.rows.labels(path).inc(rows)
            kind = getattr(request.state, "error_kind", None)
            if kind:
                metrics.errors.labels(kind).inc()
            access_log.info(json.dumps({
                "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "method": request.method, "route": path, "status": status,
                "ms": round(elapsed * 1000, 1), "rows": rows,
                "principal": getattr(request.state, "principal", None),
                "client": request.client.host if request.client else None,
                "error": kind}))

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
