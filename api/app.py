"""The HTTP service: `create_app(config)` builds the FastAPI app; `cdrhouse serve` runs it.

One app = one store: its lifespan opens the client pool (and, in embedded
mode, the data directory — one process at a time), applies migrations, and
closes everything at shutdown. Metrics live in a registry of the app's own.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               ProcessCollector, generate_latest)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from cdrhouse.api import (alerts, archive, audit, billing, charts, downloads, errors,
                          scaleout, schedules, userdata, web, workermetrics)
from cdrhouse.api import scheduler as export_scheduler
from cdrhouse.api.deps import reject_unknown_query_params
from cdrhouse.api.forwarded import ForwardedClient, TrustedProxies
from cdrhouse.api.notice import WarnWhileRebalancing
from cdrhouse.api.service import Service, ServiceConfig
from cdrhouse.api.v1 import health, router
from cdrhouse.backup import schedule as backup_schedule
from cdrhouse.backup.location import open_location
from cdrhouse.engine import alerts as alert_engine
from cdrhouse.engine import instances
from cdrhouse.engine.migrate import migrate
from cdrhouse.tiering.policy import Policy
from cdrhouse.tiering.schedule import start_scheduler

access_log = logging.getLogger("cdrhouse.access")


class Metrics:
    """Prometheus metrics of one app (its own registries: no process globals).

    `registry` holds this process's numbers (requests, its audit writer, CPU and
    memory); `store` the collectors that read the store at scrape time, the same
    whichever process answers. With `--workers`, each scrape answers every worker's
    process numbers (api/workermetrics.py) and the store's once."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.store = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter("cdrhouse_http_requests_total", "HTTP requests",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("cdrhouse_http_request_seconds", "HTTP request latency",
                                 ["route", "method"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.rows = Counter("cdrhouse_rows_returned_total", "Rows returned to clients",
                            ["route"], registry=self.registry)
        self.errors = Counter("cdrhouse_errors_total", "Errors by kind", ["kind"],
                              registry=self.registry)

    def exposition(self, instance: str, workers_dir: Path | None, every: float) -> bytes:
        """The /metrics answer of `instance`, every sample labelled with its instance."""
        own = self.publish(instance, workers_dir)
        shared = scaleout.with_instance_label(generate_latest(self.store), instance)
        if workers_dir is None:
            return own + shared
        return workermetrics.gather(workers_dir, instance, own + shared, 3 * every)

    def publish(self, instance: str, workers_dir: Path | None) -> bytes:
        """This process's numbers, labelled; written where the other workers read them
        when there are any (`workers_dir`)."""
        own = scaleout.with_instance_label(generate_latest(self.registry), instance)
        if workers_dir is not None:
            workermetrics.publish(workers_dir, instance, own)
        return own


class Observe:
    """Metrics and one JSON access-log line per request, as plain ASGI middleware.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware on purpose: that one
    hides client disconnects from endpoints (so abandoned queries would not be
    cancelled) and ends a failing streamed body as if it were complete.
    """

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope, status: int, elapsed: float) -> None:
        m = self.metrics
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        method = scope.get("method", "")
        state = scope.get("state") or {}
        m.requests.labels(path, method, str(status)).inc()
        m.latency.labels(path, method).observe(elapsed)
        rows = state.get("rows")
        if rows:
            m.rows.labels(path).inc(rows)
        kind = state.get("error_kind")
        if kind:
            m.errors.labels(kind).inc()
        client = scope.get("client")
        access_log.info(json.dumps({
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": method, "route": path, "status": status,
            "ms": round(elapsed * 1000, 1), "rows": rows, "principal": state.get("principal"),
            "client": client[0] if client else None, "peer": state.get("peer"),
            "error": kind}))


def _load_driver_modules() -> None:
    """Import now what clickhouse-connect imports on first use (numpy, pandas, pyarrow).

    Why: its first insert (the audit trail's first flush, a heartbeat) imported pandas
    in a background thread while the first requests were served, holding the
    interpreter for the better part of a second: a fresh server answered its first
    ~100 requests at half speed (benchmarks/README.md, "A time-ordered copy")."""
    from clickhouse_connect.driver import options
    for name in ("np", "pd", "arrow"):
        getattr(options, name)


def create_app(config: ServiceConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = Service.start(config)
        with service.pool.acquire() as db:
            migrate(db)
        app.state.service = service
        audit.start_writer(app, config.audit)   # every request recorded (api/audit.py)
        service.loop = asyncio.get_running_loop()
        stop_scaleout = scaleout.start(service)   # heartbeat, shared caps, job sweeper
        publisher = None
        if config.metrics_dir is not None:      # one of several workers (api/workermetrics.py)
            async def publish_every() -> None:
                while True:
                    try:
                        app.state.metrics.publish(instances.instance_id(), config.metrics_dir)
                    except Exception:  # noqa: BLE001 - the next round tries again
                        logging.getLogger("cdrhouse.metrics").exception("publishing failed")
                    await asyncio.sleep(config.metrics_every)
            publisher = asyncio.create_task(publish_every())
        scheduler = None
        if config.tier_cron:
            scheduler = start_scheduler(config.tier_cron, service.warm.store,
                                        Policy(keep_months=config.keep_months),
                                        service.pool.acquire, service.jobs)
        app.state.scheduler = scheduler
        app.state.backup_scheduler = backup_scheduler = None
        if config.backup_cron:
            backup_scheduler = backup_schedule.start_scheduler(
                config.backup_cron, open_location(config.backup, config.archive,
                                                  config.store.data_dir),
                config.backup, service.pool.acquire)
            app.state.backup_scheduler = backup_scheduler
        app.state.export_scheduler = export_ticker = None
        if config.schedules:
            export_ticker = export_scheduler.start_scheduler(
                service.pool.acquire, service.warm.store, service.jobs,
                config.schedule_tick_seconds)
            app.state.export_scheduler = export_ticker
        app.state.alert_scheduler = alert_scheduler = None
        if config.alert_every:
            alert_scheduler = alert_engine.start_scheduler(
                config.alert_every, service.pool.acquire, config.alert_config)
            app.state.alert_scheduler = alert_scheduler
        _load_driver_modules()
        if config.freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if publisher is not None:
                publisher.cancel()
                workermetrics.withdraw(config.metrics_dir, instances.instance_id())
            if alert_scheduler is not None:
                alert_scheduler.shutdown(wait=True)
            if export_ticker is not None:
                export_ticker.shutdown(wait=False)  # a running tick is the runner's
            if backup_scheduler is not None:
                backup_scheduler.shutdown(wait=True)
            if scheduler is not None:
                scheduler.shutdown(wait=False)  # no new runs; a running one is the runner's
            audit.stop_writer(app)              # the buffered records are written
            stop_scaleout()
            app.state.service = None
            service.close()                     # waits for jobs, then closes the clients

    app = FastAPI(
        title="cdrhouse", version="0.1.0", lifespan=lifespan,
        description="Tenant-guarded access to call detail records. Authenticate with "
                    "`Authorization: Bearer <key>` (or `X-API-Key`). Errors are "
                    "`application/problem+json`.")
    app.state.metrics = metrics = Metrics()
    app.state.service = None
    app.state.audit = None
    metrics.registry.register(audit.AuditCollector(app))
    metrics.store.register(backup_schedule.BackupCollector(
        lambda: app.state.service.pool.acquire() if app.state.service else None))
    metrics.store.register(alert_engine.AlertCollector(
        lambda: app.state.service.pool.acquire() if app.state.service else None))
    app.add_exception_handler(errors.Problem, errors.handle_problem)
    app.add_exception_handler(RequestValidationError, errors.handle_validation)
    app.add_exception_handler(StarletteHTTPException, errors.handle_http)
    app.add_exception_handler(Exception, errors.handle_unexpected)
    app.include_router(health)
    # every /v1 endpoint: a query parameter it does not take is a 400, not ignored
    strict = [Depends(reject_unknown_query_params)]
    app.include_router(downloads.router, dependencies=strict)  # before router: its paths are
    app.include_router(router, dependencies=strict)            # never taken for /v1/cdrs/{id}
    app.include_router(userdata.router, dependencies=strict)
    app.include_router(archive.router, dependencies=strict)
    app.include_router(charts.router, dependencies=strict)
    app.include_router(billing.router, dependencies=strict)
    app.include_router(audit.router, dependencies=strict)
    app.include_router(schedules.router, dependencies=strict)
    app.include_router(alerts.router, dependencies=strict)
    web.mount(app, api_dependencies=strict)  # the web viewer: /, /login, /web/…, /static/…, /v1/users

    # every answer says so while a cluster rebalance leaves calls on two shards
    app.add_middleware(WarnWhileRebalancing)
    app.add_middleware(Observe, metrics=metrics)
    # the audit trail: every route, including ones added later (api/audit.py)
    app.add_middleware(audit.AuditTrail)
    # outermost: the client address every later part sees (the auth limiter, the log)
    app.add_middleware(ForwardedClient, trusted=TrustedProxies(config.forwarded_allow_ips))

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.exposition(instances.instance_id(), config.metrics_dir,
                                           config.metrics_every),
                        media_type=CONTENT_TYPE_LATEST)

    return app
