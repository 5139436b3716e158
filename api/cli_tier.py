"""`cdrhouse tier run|status|restore`: the hot → warm job from the command line."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn)

from cdrhouse.api.cli_common import migrate_shown
from cdrhouse.api.render import render
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.tiering import archive, jobs, layout, warm
from cdrhouse.tiering.policy import DEFAULT_KEEP_MONTHS, Policy, parse_month
from cdrhouse.tiering.store import ArchiveConfig, ObjectStore, open_archive

err = Console(stderr=True, soft_wrap=True)
tier_app = typer.Typer(help="Hot → warm tiering: archive old months to Parquet, restore them.",
                       no_args_is_help=True)


class _Settings:
    def __init__(self, archive_config: ArchiveConfig, policy: Policy) -> None:
        self.archive = archive_config
        self.policy = policy


@tier_app.callback()
def tier_options(
    ctx: typer.Context,
    archive_url: Annotated[Optional[str], typer.Option(
        "--archive", envvar="CDRHOUSE_ARCHIVE",
        help="Where warm data goes: a directory, file://… or s3://bucket/prefix "
             "(default <data-dir>/warm).")] = None,
    s3_endpoint: Annotated[Optional[str], typer.Option(
        "--s3-endpoint", envvar="CDRHOUSE_S3_ENDPOINT",
        help="S3-compatible endpoint (MinIO etc.); credentials from AWS_ACCESS_KEY_ID / "
             "AWS_SECRET_ACCESS_KEY.")] = None,
    s3_region: Annotated[Optional[str], typer.Option(
        "--s3-region", envvar=["CDRHOUSE_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"],
        help="The bucket's region, signed into every request (SigV4); default us-east-1.")]
    = None,
    keep_months: Annotated[int, typer.Option(
        "--keep-months", envvar="CDRHOUSE_KEEP_MONTHS", min=1,
        help="Full months that stay hot.")] = DEFAULT_KEEP_MONTHS,
) -> None:
    ctx.meta["cdrhouse.tier"] = _Settings(ArchiveConfig.from_env(archive_url, s3_endpoint,
                                                                 s3_region),
                                          Policy(keep_months=keep_months))


def _open(ctx: typer.Context) -> tuple[Database, ObjectStore, Policy]:
    config: StoreConfig = ctx.obj
    settings: _Settings = ctx.meta["cdrhouse.tier"]
    store = open_archive(settings.archive, config.data_dir)
    db = Database(config)
    try:
        migrate_shown(db)
    except Exception:
        db.close()
        raise
    return db, store, settings.policy


def _months(values: list[str] | None) -> list[int] | None:
    if not values:
        return None
    try:
        return [parse_month(v) for v in values]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--month") from exc


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _bar() -> Progress:
    return Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=True)


@tier_app.command("run")
def run(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would move, move "
                                          "nothing.")] = False,
    month: Annotated[Optional[list[str]], typer.Option(
        "--month", help="Only this month (YYYYMM); repeatable. It must be outside the hot "
                        "window.")] = None,
    tenant: Annotated[Optional[list[str]], typer.Option(
        "--tenant", help="Only this tenant; repeatable. A month's partition is dropped once "
                         "every tenant in it is archived.")] = None,
) -> None:
    """Archive every eligible month: export, upload, verify, then drop from the hot table."""
    months = _months(month)
    db, store, policy = _open(ctx)
    try:
        if dry_run:
            report = archive.Tiering(db, store, policy).run(months=months, tenants=tenant,
                                                             dry_run=True)
            rows = [(layout.month_label(p.month), "yes" if p.eligible else "no", p.rows,
                     _size(p.bytes_on_disk), ", ".join(t.tenant for t in p.tenants),
                     p.reason) for p in report.plan]
            render(["month", "moves", "rows", "hot size", "tenants", "why not"], rows, "table")
            moving = [p for p in report.plan if p.eligible and p.tenants]
            err.print(f"dry run: {len(moving)} month(s), {sum(p.rows for p in moving):,} rows "
                      f"({_size(sum(sum(t.bytes for t in p.tenants) for p in moving))} on disk) "
                      f"would move to {store.location}; nothing was changed")
            return
        with _bar() as bar:
            task = bar.add_task("tiering", total=None)

            def progress(what: str, done: int, total: int) -> None:
                bar.update(task, description=what, completed=done, total=total or None)

            report = jobs.run_tiering(db, store, policy, months=months, tenants=tenant,
                                      progress=progress)
        for m in report.archived:
            err.print(f"archived {m.tenant} {layout.month_label(m.month)}: {m.rows:,} rows, "
                      f"{len(m.files)} file(s), {_size(m.bytes)}, verified")
        for t, m in report.unchanged:
            err.print(f"already archived {t} {layout.month_label(m)} (verified, unchanged)")
        for m in report.dropped:
            err.print(f"dropped hot partition {layout.month_label(m)}")
        for m in report.merged:
            err.print(f"merged hot month {layout.month_label(m)} into one part (idle, unmerged)")
        if report.returned_rows:
            err.print(f"{report.returned_rows:,} row(s) that arrived during the run stay hot "
                      "and go with the next run")
        for why in report.skipped:
            err.print(f"[yellow]{why}[/yellow]")
        if not (report.archived or report.unchanged or report.dropped):
            err.print(f"nothing to move: no hot month is older than the {policy.keep_months} "
                      "full months kept hot")
        err.print(f"job {report.job_id}: {report.rows:,} rows archived to {store.location}")
    finally:
        db.close()


@tier_app.command("status")
def status(
    ctx: typer.Context,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
) -> None:
    """Hot months, warm months, their sizes and rows, and the last run."""
    db, store, policy = _open(ctx)
    try:
        plan = archive.plan(db, policy, _today())
        render(["hot month", "rows", "size on disk", "eligible"],
               [(layout.month_label(p.month), p.rows, _size(p.bytes_on_disk),
                 "yes" if p.eligible else "no") for p in plan], fmt, title="hot")
        render(["tenant", "warm month", "state", "rows", "parquet size", "files"],
               [(w.tenant, layout.month_label(w.month), w.state, w.rows, _size(w.bytes),
                 w.files) for w in warm.warm_months(db)], fmt, title=f"warm: {store.location}")
        last = jobs.last_run(db)
        if last is None:
            err.print("last run: never")
        else:
            err.print(f"last run: {last.created_at:%Y-%m-%d %H:%M:%S} UTC, {last.state}"
                      + (f": {last.error}" if last.error else "") + f" (job {last.job_id})")
    finally:
        db.close()


@tier_app.command("restore")
def restore(
    ctx: typer.Context,
    month: Annotated[str, typer.Option("--month", help="The month to bring back (YYYYMM).")],
    tenant: Annotated[Optional[list[str]], typer.Option(
        "--tenant", help="Only this tenant; repeatable (default: every archived tenant).")]
    = None,
) -> None:
    """Rehydrate an archived month into the hot table, verified. Safe to run again."""
    month_id = _months([month])[0]
    db, store, _ = _open(ctx)
    try:
        with _bar() as bar:
            task = bar.add_task("restore", total=None)
            done = jobs.run_restore(db, store, month_id, tenant, progress=lambda w, d, t: bar.update(
                task, description=w, completed=d, total=t or None))
        for t, rows, outcome in done:
            err.print(f"{t} {layout.month_label(month_id)}: {rows:,} rows {outcome}")
    finally:
        db.close()


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def register(app: typer.Typer) -> None:
    app.add_typer(tier_app, name="tier")
