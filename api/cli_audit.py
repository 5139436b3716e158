"""`cdrhouse audit`: read the audit trail; and the CLI's own audit records.

The CLI records its **changing** commands (`AUDITED`: accounts, keys, users,
rate imports, ledger entries, recalc jobs, tiering runs and restores, backups,
rebalances, ingest) in the same table as the HTTP service, with the principal `cli:<os user>`
(the operator at the terminal; `--as` and every other option are in the parameter
summary, secrets redacted as on the API). `instrument(app)` wraps those commands
once, in api/cli.py, so a command module does nothing for it. The record is
written when the command ends, with its exit code as the status (0 ok, 1 failed,
2 bad input, 3 store unavailable) and the error's type, on a client of its own
(the command has closed its own by then). Read-only commands (sql, search, lists,
status) are not recorded: whoever runs the CLI can read the store directly anyway.
A store that does not exist yet is never created just to record into.
"""

from __future__ import annotations

import contextvars
import functools
import getpass
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cdrhouse.api.cli_common import check_format, err, exit_code, open_store
from cdrhouse.api.render import render
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import audit as au
from cdrhouse.engine.db import Database, StoreConfig, StoreLocked

audit_app = typer.Typer(help="The audit trail: who did what, when, from where.",
                        invoke_without_command=True)

#: commands recorded (their path under `cdrhouse`)
AUDITED = frozenset({
    "accounts add", "keys create", "keys revoke",
    "users add", "users passwd", "users disable", "users enable", "users delete",
    "rates import", "ledger add",
    "recalc refresh-credit", "recalc refresh-summaries", "recalc rerate",
    "recalc adjust-duration", "recalc undo", "recalc resume",
    "tier run", "tier restore",
    "backup run", "backup verify", "backup restore", "backup prune", "cluster rebalance",
    "ingest", "audit retention",
})

_notes: contextvars.ContextVar[dict | None] = contextvars.ContextVar("cdrhouse_audit_notes",
                                                                     default=None)


def note(**details: Any) -> None:
    """Add details to the running command's audit record (e.g. the id of a created key)."""
    found = _notes.get()
    if found is not None:
        found.update(details)


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        return "unknown"


def _tenant(params: dict) -> str:
    from cdrhouse.api.audit import tenant_of  # the HTTP service's rules; loads FastAPI

    for name in ("as_", "principal"):
        if isinstance(params.get(name), str):
            t = tenant_of(params[name])
            if t:
                return t
    t = params.get("tenant")
    if isinstance(t, (list, tuple)):
        t = t[0] if len(t) == 1 else None
    return t if isinstance(t, str) else ""


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _store_exists(config: StoreConfig) -> bool:
    return not config.embedded or (config.data_dir / "clickhouse").exists()


def record(config: StoreConfig, rec: au.Record) -> None:
    """Write one record into the configured store; a warning (never a failure) if it
    cannot be written. Nothing is created for it."""
    if not _store_exists(config):
        return
    try:
        with Database(config, create=False) as db:
            if not db.table_exists(au.TABLE):
                return
            au.write(db, [rec])
    except StoreLocked:
        # held by a running service: the command could not have opened it either, so it
        # changed nothing (its own message says so); the service records its own requests
        return
    except Exception as exc:  # noqa: BLE001 - the command's own outcome stands
        err.print(f"[yellow]warning:[/yellow] the audit record of this command could not be "
                  f"written: {str(exc).splitlines()[0][:300]}")


def _context(args: tuple, kwargs: dict) -> Any:
    """The command's context: the `ctx` parameter every audited command takes (a click
    context: typer passes its own vendored click's, so it is recognised by shape)."""
    ctx = kwargs.get("ctx")
    if ctx is None:
        ctx = next((a for a in args if hasattr(a, "params") and hasattr(a, "obj")), None)
    return ctx if isinstance(getattr(ctx, "obj", None), StoreConfig) else None


def _record_command(ctx: Any, path: str, extra: dict, status: int, error: str,
                    when: Any, elapsed: float) -> None:
    from cdrhouse.api.audit import redact  # the HTTP service's rules; loads FastAPI

    params = {k.rstrip("_"): _jsonable(v) for k, v in ctx.params.items()}
    if extra:
        params["result"] = extra
    record(ctx.obj, au.Record(
        time=when, action=path, principal=f"cli:{os_user()}", tenant=_tenant(ctx.params), user=os_user(),
        channel="cli", params=json.dumps(redact(params), ensure_ascii=False, default=str),
        status=status, error=error, duration_ms=round(elapsed * 1000),
        client=socket.gethostname()))


def _audited(path: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = _context(args, kwargs)
        when = au.now()
        token = _notes.set({})
        started = time.perf_counter()
        status, error = 0, ""
        try:
            return fn(*args, **kwargs)
        except typer.Exit as exc:
            status = exc.exit_code
            error = f"exit-{status}" if status else ""
            raise
        except typer.Abort:
            status, error = 130, "aborted"
            raise
        except BaseException as exc:
            known = exit_code(exc)
            status = known[0] if known else getattr(exc, "exit_code", 1) or 1
            error = type(exc).__name__
            raise
        finally:
            extra = _notes.get() or {}
            _notes.reset(token)
            if ctx is not None:  # every audited command takes one; without it, no record
                _record_command(ctx, path, extra, status, error, when,
                                time.perf_counter() - started)
    return wrapper


def _name(info: Any) -> str:
    return info.name or info.callback.__name__.lower().replace("_", "-")


def instrument(app: typer.Typer, prefix: str = "") -> None:
    """Wrap every command of `app` named in AUDITED so that it records itself."""
    for info in app.registered_commands:
        path = f"{prefix}{_name(info)}"
        if path in AUDITED and info.callback is not None:
            info.callback = _audited(path, info.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            name = group.name or group.typer_instance.info.name
            instrument(group.typer_instance, f"{prefix}{name} ")


# -- cdrhouse audit ---------------------------------------------------------------------

@audit_app.callback()
def audit(
    ctx: typer.Context,
    as_: Annotated[str, typer.Option("--as", help="Whose view: admin (all), tenant:T (its "
                                                 "tenant), tenant:T/customer:C (its actions).")]
    = "admin",
    date_from: Annotated[Optional[str], typer.Option("--from", help="ISO 8601, inclusive, UTC.")]
    = None,
    date_to: Annotated[Optional[str], typer.Option("--to", help="ISO 8601, exclusive, UTC.")]
    = None,
    principal: Annotated[Optional[str], typer.Option(
        "--principal", help="Exact, or a prefix ending in * (tenant:acme/*, cli:*).")] = None,
    action: Annotated[Optional[str], typer.Option(
        "--action", help="Exact ('POST /v1/sql', 'keys create') or a prefix ending in *.")]
    = None,
    outcome: Annotated[Optional[str], typer.Option(
        "--outcome", help="ok, error, a status (403) or an error type (forbidden).")] = None,
    tenant: Annotated[Optional[str], typer.Option("--tenant", help="Only this tenant.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=au.MAX_LIMIT)] = 50,
    cursor: Annotated[Optional[str], typer.Option("--cursor", help="From the previous page.")]
    = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
) -> None:
    """Audit records, newest first (`audit retention` shows or sets how long they are kept)."""
    if ctx.invoked_subcommand is not None:
        return
    check_format(fmt)
    try:
        _list(ctx, as_, date_from, date_to, principal, action, outcome, tenant, limit, cursor,
              fmt)
    except au.AuditError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _list(ctx: typer.Context, as_: str, date_from: str | None, date_to: str | None,
          principal: str | None, action: str | None, outcome: str | None, tenant: str | None,
          limit: int, cursor: str | None, fmt: str) -> None:
    with open_store(ctx) as db:
        who = acc.resolve_principal(db, as_)
        scope = au.scope_for(who, as_, None)
        if tenant is not None and scope.tenant is not None and tenant != scope.tenant:
            raise au.AuditError(f"--tenant: {as_} sees only its own tenant's records")
        page = au.search(db, scope, au.Filters(
            since=au.parse_time(date_from, "--from"), until=au.parse_time(date_to, "--to"),
            principal=principal, action=action, outcome=outcome, tenant=tenant, limit=limit,
            cursor=cursor))
    render(["time", "principal", "key", "user", "action", "status", "error", "rows", "bytes",
            "ms", "client", "params"],
           [(r.time, r.principal, r.key_id, r.user, r.action, r.status, r.error, r.rows,
             r.bytes, r.duration_ms, r.client, r.params) for r in page.records], fmt)
    if page.next_cursor:
        err.print(f"more: --cursor {page.next_cursor}")


@audit_app.command("retention")
def retention(
    ctx: typer.Context,
    days: Annotated[Optional[int], typer.Argument(
        help=f"Keep records this many days (1 to {au.MAX_DAYS}); omit to show.")] = None,
) -> None:
    """Show or set how long audit records are kept (the table's TTL; default 400 days)."""
    with open_store(ctx) as db:
        if days is not None:
            try:
                changed = au.set_retention(db, days)
            except au.AuditError as exc:
                err.print(f"[red]error:[/red] {exc}")
                raise typer.Exit(2) from None
            err.print(f"audit records are kept {days} days"
                      + ("" if changed else " (unchanged)"))
        current = au.retention_days(db)
    typer.echo(current if current is not None else "forever")


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
