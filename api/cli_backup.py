"""`cdrhouse backup run|list|status|verify|restore|prune`: backups of the store.

Exit codes as everywhere: 0 done; 1 the work failed (a backup that could not be
made, a verification that found a difference); 2 bad usage, or a restore over a
live store without --force; 3 the store or the backup location is busy.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cdrhouse.api.cli_common import check_format, migrate_shown
from cdrhouse.api.render import render
from cdrhouse.backup import jobs, ops
from cdrhouse.backup.location import (DEFAULT_FULL_EVERY_DAYS, DEFAULT_KEEP_FULLS, BackupConfig,
                                      BackupError, Location, open_location)
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.tiering.store import ArchiveConfig, ArchiveError, LocalStore

err = Console(stderr=True, soft_wrap=True)
backup_app = typer.Typer(help="Backups of the store (ClickHouse BACKUP/RESTORE): run, list, "
                              "verify, restore.", no_args_is_help=True)
F = TypeVar("F", bound=Callable[..., Any])


class _Settings:
    def __init__(self, config: BackupConfig, archive: ArchiveConfig) -> None:
        self.config = config
        self.archive = archive


@backup_app.callback()
def backup_options(
    ctx: typer.Context,
    backup_url: Annotated[Optional[str], typer.Option(
        "--backup", envvar="CDRHOUSE_BACKUP",
        help="Where backups go: s3://bucket/prefix, a directory or file://… (default: "
             "'backups' beside the archive, e.g. <data-dir>/backups).")] = None,
    archive_url: Annotated[Optional[str], typer.Option(
        "--archive", envvar="CDRHOUSE_ARCHIVE",
        help="The warm archive (only to place the default backup location).")] = None,
    s3_endpoint: Annotated[Optional[str], typer.Option(
        "--s3-endpoint", envvar="CDRHOUSE_S3_ENDPOINT",
        help="S3-compatible endpoint; credentials from AWS_ACCESS_KEY_ID / "
             "AWS_SECRET_ACCESS_KEY.")] = None,
    full_every: Annotated[int, typer.Option(
        "--full-every-days", envvar="CDRHOUSE_BACKUP_FULL_EVERY_DAYS", min=1,
        help="Make a full backup when the last full one is this many days old; "
             "incrementals in between.")] = DEFAULT_FULL_EVERY_DAYS,
    keep_fulls: Annotated[int, typer.Option(
        "--keep-fulls", envvar="CDRHOUSE_BACKUP_KEEP_FULLS", min=1,
        help="Keep this many full backups and their incrementals; older ones are "
             "deleted after a successful run.")] = DEFAULT_KEEP_FULLS,
) -> None:
    ctx.meta["cdrhouse.backup"] = _Settings(
        BackupConfig.from_env(backup_url, s3_endpoint, full_every_days=full_every,
                              keep_fulls=keep_fulls),
        ArchiveConfig.from_env(archive_url, s3_endpoint))


def _errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ops.BackupLocked as exc:
            err.print(f"[red]busy:[/red] {exc}")
            raise typer.Exit(3) from None
        except ops.RestoreRefused as exc:
            err.print(f"[red]refused:[/red] {exc}")
            raise typer.Exit(2) from None
        except (BackupError, ArchiveError) as exc:
            err.print(f"[red]backup error:[/red] {exc}")
            raise typer.Exit(1) from None
    return wrapper  # type: ignore[return-value]


def _location(ctx: typer.Context) -> tuple[Location, BackupConfig]:
    config: StoreConfig = ctx.obj
    settings: _Settings = ctx.meta["cdrhouse.backup"]
    return open_location(settings.config, settings.archive, config.data_dir), settings.config


def _open(ctx: typer.Context) -> Database:
    db = Database(ctx.obj)
    try:
        migrate_shown(db)
    except Exception:
        db.close()
        raise
    return db


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _bar() -> Progress:
    return Progress(TextColumn("{task.description:<28}"), BarColumn(),
                    TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=err,
                    transient=True)


def _progress(bar: Progress) -> ops.Progress:
    task = bar.add_task("backup", total=None, detail="")

    def report(what: str, done: int, total: int) -> None:
        if what in ("backup", "restore"):
            bar.update(task, description=what, total=None,
                       detail=_size(done) if done else "")
        else:
            bar.update(task, description=what, completed=done, total=total or None,
                       detail=f"{done}/{total}" if total else "")
    return report


def _same_disk_warning(location: Location, config: StoreConfig) -> None:
    if isinstance(location.store, LocalStore) and config.embedded:
        try:
            same = location.store.root.stat().st_dev == config.data_dir.resolve().stat().st_dev
        except OSError:
            return
        if same:
            err.print("[yellow]note:[/yellow] the backups are on the same disk as the store: "
                      "they undo mistakes but not a disk failure; set --backup / "
                      "CDRHOUSE_BACKUP to S3 or another disk")


@backup_app.command("run")
@_errors
def run(
    ctx: typer.Context,
    full: Annotated[bool, typer.Option("--full", help="A full backup, whatever the "
                                       "schedule says.")] = False,
    max_bandwidth: Annotated[int, typer.Option(
        "--max-bandwidth", min=0, help="Read at most this many bytes/s from the store "
                                       "(0: unlimited), to spare a busy disk.")] = 0,
) -> None:
    """Back up every table of the store: incremental on the last backup, or full."""
    location, config = _location(ctx)
    if max_bandwidth:
        config = BackupConfig(**{**config.__dict__, "max_bandwidth": max_bandwidth})
    db = _open(ctx)
    try:
        with _bar() as bar:
            report = jobs.run(db, location, config, full=full, progress=_progress(bar))
    finally:
        db.close()
    r = report.record
    err.print(f"{r.kind} backup {r.backup_id} ({report.reason}) to {location.location}")
    err.print(f"  {len(r.tables)} tables, {r.rows:,} rows; {_size(r.size_bytes)} stored "
              f"({_size(r.total_bytes)} with its base), {r.files:,} files, {r.seconds:.1f}s "
              f"(BACKUP {r.backup_seconds:.1f}s, fingerprints the rest)")
    changed = [t for t, rec in r.tables.items() if not rec.exact]
    if changed:
        err.print(f"  written to during the backup (their changed partitions are not "
                  f"verified exactly): {', '.join(changed)}")
    for b in report.pruned:
        err.print(f"  deleted {b} (retention: keep {config.keep_fulls} full backups)")
    for b in report.orphans:
        err.print(f"  removed the files of {b}, a backup that never finished")
    _same_disk_warning(location, ctx.obj)
    err.print(f"job {report.job_id}")
    typer.echo(r.backup_id)


@backup_app.command("list")
@_errors
def list_(
    ctx: typer.Context,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
) -> None:
    """Every backup in the location: kind, base, time, size, rows, verification."""
    check_format(fmt)
    location, _ = _location(ctx)
    found = ops.listing(location)
    rows = []
    for r in found.records:
        v = found.verifies.get(r.backup_id)
        rows.append((r.backup_id, r.kind, r.base_id or "", r.finished_at[:19].replace("T", " "),
                     _size(r.size_bytes) if fmt == "table" else r.size_bytes, len(r.tables),
                     r.rows, found.state(r.backup_id),
                     v.verified_at[:19].replace("T", " ") if v else ""))
    render(["id", "kind", "base", "finished (UTC)", "stored", "tables", "rows", "state",
            "verified at"], rows, fmt)
    if not found.records:
        err.print(f"no backups in {location.location}")


@backup_app.command("status")
@_errors
def status(ctx: typer.Context) -> None:
    """The last good backup, its age and verification, and the last run."""
    location, config = _location(ctx)
    db = _open(ctx)
    try:
        found = ops.listing(location, db)
        from cdrhouse.engine import userdata
        last_run = userdata.list_jobs(db, kind=jobs.KIND_RUN, limit=1)
    finally:
        db.close()
    err.print(f"location: {location.location}; a full backup every {config.full_every_days} "
              f"day(s), keeping {config.keep_fulls} full(s) and their incrementals")
    good = found.last_good()
    if good is None:
        err.print("[red]no good backup[/red]")
    else:
        age = dt.datetime.now(dt.UTC) - good.finished
        err.print(f"last good backup: {good.backup_id} ({good.kind}), {good.finished_at[:19]} "
                  f"UTC, {age.total_seconds() / 3600:.1f} h ago, {good.rows:,} rows, "
                  f"{_size(good.size_bytes)}; {found.state(good.backup_id)}")
    last = found.records[-1] if found.records else None
    if last is not None and last.backup_id in found.verifies:
        v = found.verifies[last.backup_id]
        err.print(f"last verification ({last.backup_id}): "
                  + ("ok" if v.ok else "[red]FAILED[/red]: " + "; ".join(v.problems)))
    elif last is not None:
        err.print(f"the newest backup {last.backup_id} is not verified yet "
                  f"(cdrhouse backup verify {last.backup_id})")
    if last_run:
        j = last_run[0]
        err.print(f"last run: {j.created_at:%Y-%m-%d %H:%M:%S} UTC, {j.state}"
                  + (f": {j.error}" if j.error else "") + f" (job {j.job_id})")
    _same_disk_warning(location, ctx.obj)
    if good is None:
        raise typer.Exit(1)


@backup_app.command("verify")
@_errors
def verify(
    ctx: typer.Context,
    backup_id: Annotated[str, typer.Argument(help="The backup (see backup list).")],
) -> None:
    """Restore a backup into a scratch database and compare every table and partition
    (rows and checksums) with what was backed up."""
    location, _ = _location(ctx)
    db = _open(ctx)
    try:
        with _bar() as bar:
            try:
                report = jobs.verify(db, location, backup_id, progress=_progress(bar))
            except BackupError as exc:
                if "failed verification" not in str(exc):
                    raise
                report = None
                failure = str(exc)
    finally:
        db.close()
    if report is None:
        err.print(f"[red]FAILED:[/red] {failure}")
        raise typer.Exit(1)
    res = report.result
    err.print(f"backup {backup_id} verified: restored with its chain ({' <- '.join(report.chain)}); "
              f"{res.tables} tables, {res.rows:,} rows equal to what was backed up "
              f"(counts and checksums per partition), {res.seconds:.1f}s")


@backup_app.command("restore")
@_errors
def restore(
    ctx: typer.Context,
    backup_id: Annotated[str, typer.Argument(help="The backup to restore (see backup list).")],
    data_dir: Annotated[Optional[Path], typer.Option(
        "--data-dir", help="Restore into a new embedded store in this directory (default: "
                           "the configured store).")] = None,
    database: Annotated[Optional[str], typer.Option(
        "--database", help="The database to restore as (default: the configured one).")]
    = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace a database that holds tables; it is kept, renamed to "
                        "<db>_before_restore_<time>.")] = False,
) -> None:
    """Restore a backup (with the incrementals it builds on), verified before it goes live."""
    config: StoreConfig = ctx.obj
    location, _ = _location(ctx)
    if data_dir is not None:
        target = StoreConfig(data_dir=data_dir, database=database or config.database)
    else:
        target = StoreConfig(data_dir=config.data_dir, clickhouse=config.clickhouse,
                             database=database or config.database)
    where = target.dsn if not target.embedded else str(target.data_dir / "clickhouse")
    started = time.monotonic()
    with _bar() as bar:
        report = ops.restore_backup(target, location, backup_id, force=force,
                                    progress=_progress(bar))
    err.print(f"restored {report.record.kind} backup {backup_id} (chain "
              f"{' <- '.join(report.chain)}) as database {report.database} at {where}")
    err.print(f"  {report.tables} tables, {report.rows:,} rows, equal to what was backed up; "
              f"{time.monotonic() - started:.1f}s")
    if report.set_aside:
        err.print(f"  the previous database is kept as {report.set_aside}: drop it when you "
                  "no longer need it")
    err.print("  the warm archive is not part of a backup: point the restored store at the "
              "same archive (CDRHOUSE_ARCHIVE) to read archived months")


@backup_app.command("prune")
@_errors
def prune(ctx: typer.Context) -> None:
    """Apply retention now (it also runs after every backup)."""
    location, config = _location(ctx)
    db = _open(ctx)
    try:
        pruned, orphans = ops.prune(db, location, config)
    finally:
        db.close()
    for b in pruned:
        err.print(f"deleted {b}")
    for b in orphans:
        err.print(f"removed the files of {b}, a backup that never finished")
    if not pruned and not orphans:
        err.print(f"nothing to delete: keeping {config.keep_fulls} full backup(s)")


def backup_schedule_options(cron: str, url: str | None, s3_endpoint: str | None
                            ) -> tuple[str | None, BackupConfig]:
    """`serve`'s backup options, checked before serving: (cron or None, config)."""
    from cdrhouse.backup.schedule import parse_cron
    text = None if cron.strip().lower() in ("off", "none", "") else cron
    if text:
        try:
            parse_cron(text)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--backup-schedule") from None
    try:
        return text, BackupConfig.from_env(url, s3_endpoint)
    except BackupError as exc:
        raise typer.BadParameter(str(exc), param_hint="--backup") from None


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup")
