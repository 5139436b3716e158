"""`cdrhouse schedules …`: scheduled exports and reports from the command line.

The same rules as `/v1/schedules` (api/schedules.py checks a definition for its
owner; engine/schedules.py keeps it). A schedule made here belongs to an API key
(`--key ID`) or a portal user (`--user NAME`) and runs as its principal,
resolved at each run. `run-due` runs one scheduler tick (what `cdrhouse serve`
does every minute) — for a store no service is running on, or from cron.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Optional

import typer

from cdrhouse.api.cli_common import Failed, err, open_store
from cdrhouse.api.render import FORMATS, render
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import schedules as sched
from cdrhouse.engine import users
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.tiering.store import ArchiveConfig, open_archive

schedules_app = typer.Typer(help="Scheduled exports and reports (run by `cdrhouse serve`).",
                            no_args_is_help=True)


def _owner(db: Database, key: str | None, user: str | None) -> tuple[str, str]:
    """(owner_key, principal) of the credential the schedule will run as."""
    if (key is None) == (user is None):
        raise typer.BadParameter("give the owner: --key ID (an API key) or --user NAME "
                                 "(a portal user)")
    if key is not None:
        rows = db.rows("SELECT principal, revoked_at FROM api_keys FINAL WHERE key_id = "
                       "{k:String}", {"k": key})
        if not rows or rows[0][1] is not None:
            raise typer.BadParameter(f"no active API key {key!r}", param_hint="--key")
        return key, rows[0][0]
    found = users.find_user(db, user or "")
    if found is None or not found.active:
        raise typer.BadParameter(f"no active portal user {user!r}", param_hint="--user")
    return f"user:{found.user_id}", found.principal


@schedules_app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name for the schedule.")],
    cron: Annotated[str, typer.Option("--cron", help="Crontab, UTC, e.g. '0 6 * * *'.")],
    key: Annotated[Optional[str], typer.Option("--key", help="Owner: an API key id.")] = None,
    user: Annotated[Optional[str], typer.Option("--user", help="Owner: a portal user.")] = None,
    query: Annotated[Optional[str], typer.Option("--query", help="A saved query's id.")] = None,
    report: Annotated[Optional[str], typer.Option("--report", help="daily or monthly usage.")]
    = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet; reports: csv or html.")]
    = "csv",
    compression: Annotated[str, typer.Option("--compression", help="zstd, gzip or none.")]
    = "zstd",
    range_: Annotated[Optional[str], typer.Option("--range", help="yesterday, last_month, …")]
    = None,
    customer: Annotated[Optional[str], typer.Option("--customer", help="Report: one customer.")]
    = None,
    carrier: Annotated[Optional[str], typer.Option("--carrier", help="Report: one carrier.")]
    = None,
    retention_days: Annotated[int, typer.Option("--retention-days", help="Days files are kept.")]
    = sched.DEFAULT_RETENTION_DAYS,
) -> None:
    """Schedule a saved query or a usage report; prints its id on stdout."""
    # the HTTP service's own checks (they load FastAPI: here, not for every command)
    from cdrhouse.api.auth import Caller
    from cdrhouse.api.schedules import ScheduleIn, check

    with open_store(ctx) as db:
        owner_key, principal = _owner(db, key, user)
        who = Caller(owner_key, acc.resolve_principal(db, principal), principal)
        data = ScheduleIn(name=name, cron=cron, query_id=query, report=report, customer=customer,
                          carrier=carrier, format=fmt,
                          compression=None if compression == "none" else compression,
                          range=range_, retention_days=retention_days)
        try:
            s = sched.create(db, owner_key=owner_key, principal=principal, name=name,
                             cron=cron, definition=check(db, who, data))
        except sched.ScheduleError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        st = sched.state_of(db, s)
    err.print(f"schedule {s.name!r} runs as {principal}; first run {st.next_run:%Y-%m-%d %H:%M} UTC")
    typer.echo(s.schedule_id)


@schedules_app.command("list")
def list_(
    ctx: typer.Context,
    tenant: Annotated[Optional[str], typer.Option("--tenant", "-t", help="Only this tenant.")]
    = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
) -> None:
    """Every schedule with its state (next run, last error, why it stopped)."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(FORMATS)}", param_hint="--format")
    with open_store(ctx) as db:
        states = sched.states(db)
        now = dt.datetime.now(dt.timezone.utc)
        rows = []
        for s in sched.listed(db):
            if tenant is not None and s.tenant_id != tenant:
                continue
            st = sched.current_state(s, states.get(s.schedule_id), now)
            d = s.definition
            rows.append((s.schedule_id, s.name, s.principal, s.cron,
                         d.query_id or f"report:{d.report}", d.format,
                         None if st.stopped or not d.enabled else st.next_run,
                         st.stopped or ("disabled" if not d.enabled else "active"),
                         st.last_error or None))
    render(["id", "name", "owner", "cron", "runs", "format", "next run", "status", "last error"],
           rows, fmt)


@schedules_app.command("runs")
def runs(
    ctx: typer.Context,
    schedule_id: Annotated[str, typer.Argument(help="The schedule's id.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
) -> None:
    """A schedule's runs, newest first, with their files."""
    with open_store(ctx) as db:
        if sched.get(db, schedule_id) is None:
            raise Failed(f"no schedule {schedule_id!r}")
        rows = []
        for j in sched.runs(db, schedule_id):
            f = sched.file_of(db, j.job_id)
            rows.append((j.job_id, j.params.get("slot"), j.params.get("attempt"), j.state,
                         f.rows if f else None, f.bytes if f else None,
                         f.key if f and not f.removed else None, j.error or None))
    render(["run", "slot", "attempt", "state", "rows", "bytes", "file", "error"], rows, fmt)


@schedules_app.command("delete")
def delete(ctx: typer.Context,
           schedule_id: Annotated[str, typer.Argument(help="The schedule's id.")]) -> None:
    """Delete a schedule (its files expire as planned)."""
    with open_store(ctx) as db:
        s = sched.get(db, schedule_id)
        if s is None:
            raise Failed(f"no schedule {schedule_id!r}")
        sched.delete(db, s)
    err.print(f"deleted schedule {s.name!r}")


@schedules_app.command("run-due")
def run_due(
    ctx: typer.Context,
    archive_url: Annotated[Optional[str], typer.Option(
        "--archive", envvar="CDRHOUSE_ARCHIVE", help="Where files go (as `serve --archive`).")]
    = None,
    s3_endpoint: Annotated[Optional[str], typer.Option(
        "--s3-endpoint", envvar="CDRHOUSE_S3_ENDPOINT", help="S3-compatible endpoint.")] = None,
) -> None:
    """Run what is due now (one tick of the scheduler `cdrhouse serve` runs every minute)."""
    from cdrhouse.api.scheduler import tick  # the service's scheduler (loads FastAPI)

    config: StoreConfig = ctx.obj
    store = open_archive(ArchiveConfig.from_env(archive_url, s3_endpoint), config.data_dir)
    with open_store(ctx) as db:
        outcomes = tick(db, store)
    render(["schedule", "state", "run", "rows", "bytes", "file", "error"],
           [(o.schedule_id, o.state, o.job_id or None, o.rows, o.bytes, o.key or None,
             o.error or None) for o in outcomes], "table")
    if any(o.state == "failed" for o in outcomes):
        raise Failed("some runs failed (they are retried on the next tick)")


def register(app: typer.Typer) -> None:
    app.add_typer(schedules_app, name="schedules")
