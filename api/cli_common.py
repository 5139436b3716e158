"""What every `cdrhouse` command module shares: the store, the console, exit codes.

Exit codes (the README's promise): 0 success; 1 the work failed (nothing usable
ingested, a query error); 2 bad usage or input; 3 the store is unavailable (held by
another process, unreachable) or a lock is held. `exit_code` is the one mapping from
our exceptions to them; `api/cli.py`'s `main` applies it to whatever a command raises.

A command module (cli_admin, cli_query, …) defines its commands and a
`register(app)` that adds them; api/cli.py's COMMANDS table names each command's module.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from cdrhouse.api.render import FORMATS

if TYPE_CHECKING:
    from cdrhouse.engine.db import Database, StoreConfig
    from cdrhouse.engine.migrate import MigrationReport

# The engine and the error classes below are imported where first used, not here: every
# command module imports this one, and `cdrhouse --help` should not wait for them.

OK, FAILED, USAGE, UNAVAILABLE = 0, 1, 2, 3

err = Console(stderr=True, soft_wrap=True)


class Failed(Exception):
    """The command ran but its work failed (exit 1)."""


def migrate_shown(db: Database) -> MigrationReport:
    """Bring the store's schema up to date, its progress lines (a table rebuild's
    partitions, which can take minutes on a large store) on stderr."""
    from cdrhouse.engine.migrate import migrate

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("cdrhouse.migrate")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return migrate(db)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


@contextmanager
def open_store(ctx: typer.Context) -> Iterator[Database]:
    """The store for this command (the global options), migrated to the current schema."""
    from cdrhouse.engine.db import Database

    config: StoreConfig = ctx.obj
    db = Database(config)
    try:
        migrate_shown(db)
        yield db
    finally:
        db.close()


def check_format(fmt: str) -> None:
    """Refuse an unknown --format before any work is done."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"choose one of {', '.join(FORMATS)}", param_hint="--format")


def progress() -> Progress:
    """A bar for long steps (generate, ingest), on stderr so stdout stays data."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err,
                    transient=False)


def default_rejects(config: StoreConfig) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return config.data_dir / "rejects" / f"ingest-{stamp}.csv"


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.split("\n")[0][:2000]


@functools.cache
def exits() -> tuple[tuple[tuple[type[BaseException], ...], int, str], ...]:
    """Exception classes → (exit code, message prefix), first match wins."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    from cdrhouse.engine import accounts as acc
    from cdrhouse.engine import keys
    from cdrhouse.engine.db import StoreError, StoreLocked
    from cdrhouse.engine.formats.base import FormatError
    from cdrhouse.engine.ingest import IngestError
    from cdrhouse.engine.query import QueryFailed
    from cdrhouse.sql.builder import BuilderError
    from cdrhouse.sql.principal import PrincipalError
    from cdrhouse.sql.usersql import UserSQLError
    from cdrhouse.sql.viewer import ViewerError
    from cdrhouse.tiering.lock import TierLocked
    from cdrhouse.tiering.store import ArchiveError

    return (
        ((StoreLocked, StoreError), UNAVAILABLE, "error"),
        ((TierLocked,), UNAVAILABLE, "busy"),
        ((ArchiveError,), FAILED, "archive error"),
        ((acc.AccountError, keys.ApiKeyError, FormatError, IngestError, UserSQLError,
          ViewerError, BuilderError, PrincipalError), USAGE, "error"),
        ((DatabaseError,), FAILED, "ClickHouse error"),
        ((QueryFailed,), FAILED, "query failed"),
        ((Failed,), FAILED, "failed"),
    )


def exit_code(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, the message to print) for one of our errors; None for anything else."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    for types, code, prefix in exits():
        if isinstance(exc, types):
            text = first_line(exc) if isinstance(exc, DatabaseError) else str(exc)
            return code, f"[red]{prefix}:[/red] {text}"
    return None
