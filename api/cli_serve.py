"""`cdrhouse serve`: the HTTP API (and the scheduled jobs) on the configured store."""

from __future__ import annotations

import base64
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from cdrhouse.api.cli_backup import backup_schedule_options
from cdrhouse.api.cli_common import err
from cdrhouse.backup.location import open_location
from cdrhouse.backup.schedule import DEFAULT_CRON as BACKUP_CRON
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.sql.recordings import RecordingPolicy
from cdrhouse.tiering.policy import DEFAULT_KEEP_MONTHS
from cdrhouse.tiering.schedule import DEFAULT_CRON, parse_cron
from cdrhouse.tiering.store import (DEFAULT_PRESIGN_EXPIRY, MAX_PRESIGN_EXPIRY, ArchiveConfig,
                                    open_archive)


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    pool: Annotated[int, typer.Option("--pool", help="ClickHouse clients (parallel queries).")] = 4,
    per_tenant: Annotated[Optional[int], typer.Option(
        "--per-tenant", envvar="CDRHOUSE_PER_TENANT", min=1,
        help="Queries one tenant may run at once (default: one less than --pool, so "
             "another tenant always finds a client).")] = None,
    archive_url: Annotated[Optional[str], typer.Option(
        "--archive", envvar="CDRHOUSE_ARCHIVE",
        help="Warm archive: a directory, file://… or s3://bucket/prefix (default "
             "<data-dir>/warm).")] = None,
    s3_endpoint: Annotated[Optional[str], typer.Option(
        "--s3-endpoint", envvar="CDRHOUSE_S3_ENDPOINT", help="S3-compatible endpoint.")] = None,
    s3_region: Annotated[Optional[str], typer.Option(
        "--s3-region", envvar=["CDRHOUSE_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"],
        help="The buckets' region, signed into requests and presigned URLs (SigV4); "
             "default us-east-1.")] = None,
    presign_expiry: Annotated[int, typer.Option(
        "--presign-expiry", envvar="CDRHOUSE_PRESIGN_EXPIRY", min=1, max=MAX_PRESIGN_EXPIRY,
        help="Seconds a presigned S3 URL (archive files, s3:// recordings) stays valid.")]
    = DEFAULT_PRESIGN_EXPIRY,
    recording_hosts: Annotated[Optional[str], typer.Option(
        "--recording-hosts", envvar="CDRHOUSE_RECORDING_HOSTS",
        help="Comma-separated hosts recordings may redirect to (exact, or *.domain), and "
             "s3://bucket\\[/prefix] entries whose objects are presigned. Default: any public "
             "http(s) host, no s3://.")] = None,
    tier_cron: Annotated[str, typer.Option(
        "--tier-schedule", envvar="CDRHOUSE_TIER_SCHEDULE",
        help="When the tiering job runs (crontab, UTC); 'off' to never run it here.")]
    = DEFAULT_CRON,
    keep_months: Annotated[int, typer.Option(
        "--keep-months", envvar="CDRHOUSE_KEEP_MONTHS", min=1,
        help="Full months that stay hot.")] = DEFAULT_KEEP_MONTHS,
    backup_url: Annotated[Optional[str], typer.Option(
        "--backup", envvar="CDRHOUSE_BACKUP",
        help="Where backups go (see `cdrhouse backup --help`).")] = None,
    backup_cron: Annotated[str, typer.Option(
        "--backup-schedule", envvar="CDRHOUSE_BACKUP_SCHEDULE",
        help="When the backup (then its verification) runs (crontab, UTC); 'off' to "
             "never run it here.")] = BACKUP_CRON,
    schedules_switch: Annotated[str, typer.Option(
        "--schedules", envvar="CDRHOUSE_SCHEDULES",
        help="Run scheduled exports and reports here (checked every minute): 'on' or "
             "'off'.")] = "on",
    alert_every: Annotated[str, typer.Option(
        "--alert-every", envvar="CDRHOUSE_ALERT_EVERY",
        help="How often the anomaly detectors run: seconds (300), 5m, 1h; 'off' to never "
             "run them here.")] = "5m",
    alert_config: Annotated[Optional[str], typer.Option(
        "--alert-config", envvar="CDRHOUSE_ALERT_CONFIG",
        help="JSON file of detector settings: {\"*\": {detector: {setting: n}}, tenant: …} "
             "(README: Anomaly alerts).")] = None,
    alerts_for_accounts: Annotated[bool, typer.Option(
        "--alerts-for-accounts/--no-alerts-for-accounts", envvar="CDRHOUSE_ALERTS_FOR_ACCOUNTS",
        help="Customer and carrier keys see the alerts about their own account.")] = True,
    forwarded_allow_ips: Annotated[Optional[str], typer.Option(
        "--forwarded-allow-ips", envvar="CDRHOUSE_FORWARDED_ALLOW_IPS",
        help="Reverse proxies whose X-Forwarded-For/-Proto are believed: addresses or "
             "networks, comma-separated, or '*'. Default: none (the TCP peer is the client).")]
    = None,
    audit_days: Annotated[Optional[int], typer.Option(
        "--audit-days", envvar="CDRHOUSE_AUDIT_DAYS", min=1, max=36500,
        help="Keep audit records this many days (applied to the table's TTL at start-up; "
             "default: as the table says, 400 unless changed).")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", envvar="CDRHOUSE_WORKERS", min=1,
        help="Service processes on this port (a ClickHouse server DSN only: the embedded "
             "engine is owned by one process). Each has its own --pool.")] = 1,
    instance_name: Annotated[Optional[str], typer.Option(
        "--instance-name", envvar="CDRHOUSE_INSTANCE_NAME",
        help="This instance's name in /readyz, /metrics and job owners (default host:pid; "
             "with --workers, name:pid).")] = None,
    auth_cache_seconds: Annotated[float, typer.Option(
        "--auth-cache-seconds", envvar="CDRHOUSE_AUTH_CACHE_SECONDS", min=0,
        help="How long a verified API key is remembered: a revoked key is refused by "
             "every instance within this time.")] = 5.0,
    sweep_seconds: Annotated[float, typer.Option(
        "--sweep-seconds", envvar="CDRHOUSE_SWEEP_SECONDS", min=0,
        help="How often an instance looks for jobs whose instance died, to resume them "
             "(one instance at a time); 0: never.")] = 15.0,
) -> None:
    """Run the HTTP API on the configured store (embedded by default), and the tiering
    and backup jobs on their schedules (once across all instances: leases)."""
    import logging

    import uvicorn

    from cdrhouse.api.app import create_app
    from cdrhouse.api.forwarded import TrustedProxies
    from cdrhouse.api.service import ServiceConfig

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config: StoreConfig = ctx.obj
    cron = None if tier_cron.strip().lower() in ("off", "none", "") else tier_cron
    if cron:
        try:
            parse_cron(cron)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--tier-schedule") from None
    archive_config = ArchiveConfig.from_env(archive_url, s3_endpoint, s3_region, presign_expiry)
    try:
        recordings = RecordingPolicy.parse(recording_hosts)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--recording-hosts") from None
    bcron, backup_config = backup_schedule_options(backup_cron, backup_url, s3_endpoint)
    schedules_on = schedules_switch.strip().lower()
    if schedules_on not in ("on", "off"):
        raise typer.BadParameter(f"{schedules_switch!r}: use 'on' or 'off'",
                                 param_hint="--schedules")
    proxies = tuple(p.strip() for p in (forwarded_allow_ips or "").split(",") if p.strip())
    try:
        TrustedProxies(proxies)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--forwarded-allow-ips") from None
    from cdrhouse.engine import alerts as alert_engine
    try:
        every = alert_engine.parse_every(alert_every)
    except alert_engine.AlertError as exc:
        raise typer.BadParameter(str(exc), param_hint="--alert-every") from None
    try:
        alert_settings = (alert_engine.AlertConfig.load(alert_config) if alert_config
                          else alert_engine.AlertConfig())
    except alert_engine.AlertError as exc:
        raise typer.BadParameter(str(exc), param_hint="--alert-config") from None
    if workers > 1 and config.embedded:
        err.print(f"--workers {workers} needs a ClickHouse server (--clickhouse http://…): "
                  f"the embedded engine's data directory {config.data_dir / 'clickhouse'} is "
                  "opened by one process at a time; run one worker, or move the store to a "
                  "server (README, \"Several instances\")")
        raise typer.Exit(2)
    Database(config).close()     # fail fast, with the plain message, if the store is held
    err.print(f"serving {config.dsn if not config.embedded else config.data_dir / 'clickhouse'} "
              f"on http://{host}:{port} (docs at /docs)")
    err.print(f"tiering: {'runs on ' + repr(cron) + ' (UTC)' if cron else 'not scheduled'}, "
              f"keeps {keep_months} full months hot, archive "
              f"{open_archive(archive_config, config.data_dir).location}")
    err.print(f"backups: {'run on ' + repr(bcron) + ' (UTC), then verified' if bcron else 'not scheduled'}"
              f", to {open_location(backup_config, archive_config, config.data_dir).location}")
    err.print(f"scheduled exports and reports: {'checked every minute' if schedules_on == 'on' else 'off'}")
    err.print(f"alerts: {'evaluated every ' + str(every) + ' s' if every else 'not evaluated here'}"
              f", customer/carrier keys {'see' if alerts_for_accounts else 'do not see'} their own")
    err.print(f"forwarded headers: {'believed from ' + ', '.join(proxies) if proxies else 'ignored'}")
    from cdrhouse.engine.audit import AuditSettings
    err.print("audit trail: every authenticated request"
              + (f", kept {audit_days} days" if audit_days else ""))
    service_config = ServiceConfig(store=config, pool_size=pool, per_tenant=per_tenant,
                                   archive=archive_config,
                                   tier_cron=cron, keep_months=keep_months,
                                   recordings=recordings, backup=backup_config,
                                   backup_cron=bcron, forwarded_allow_ips=proxies,
                                   audit=AuditSettings(days=audit_days),
                                   schedules=schedules_on == "on",
                                   alert_every=every, alert_config=alert_settings,
                                   alerts_for_accounts=alerts_for_accounts,
                                   instance_name=instance_name,
                                   auth_cache_seconds=auth_cache_seconds,
                                   sweep_seconds=sweep_seconds, freeze_gc=True)
    # uvicorn's own proxy handling is off (it trusts 127.0.0.1 by default and drops the
    # real peer): api/forwarded.py applies --forwarded-allow-ips and logs both addresses
    options = dict(host=host, port=port, log_level="warning", access_log=False,
                   proxy_headers=False)
    if workers == 1:
        uvicorn.run(create_app(service_config), **options)
        return
    from cdrhouse.engine.migrate import migrate
    with Database(config) as db:
        migrate(db)           # once, before the workers start (each would race to)
    err.print(f"workers: {workers} processes on port {port}, each with {pool} clients; "
              "scheduled work runs once across them (leases)")
    # each scrape answers every worker's numbers (api/workermetrics.py)
    service_config.metrics_dir = Path(tempfile.mkdtemp(prefix="cdrhouse-metrics-"))
    os.environ[_CONFIG_ENV] = base64.b64encode(pickle.dumps(service_config)).decode()
    # uvicorn kills a worker that does not answer its supervisor's ping within 5 s by
    # default — a worker busy on two loaded cores can miss that, and its requests die
    # with it (seen in benchmarks.load_test); a hung worker is still replaced
    try:
        uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers,
                    timeout_worker_healthcheck=60, **options)
    finally:
        shutil.rmtree(service_config.metrics_dir, ignore_errors=True)


_CONFIG_ENV = "CDRHOUSE_SERVE_CONFIG"


def worker_app():
    """The app of one `--workers` process: the parent's configuration, from the
    environment it started us with (uvicorn starts workers by import string)."""
    import logging

    from cdrhouse.api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = pickle.loads(base64.b64decode(os.environ[_CONFIG_ENV]))
    if config.instance_name:
        config.instance_name = f"{config.instance_name}:{os.getpid()}"
    return create_app(config)


def register(app: typer.Typer) -> None:
    app.command()(serve)
