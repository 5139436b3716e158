"""`cdrhouse users …`: the people who sign in to the web viewer.

Each user is bound to one principal (like an API key). Passwords are read
from a hidden prompt, or from standard input with `--password-stdin` (for
scripts); they never appear on a command line or in the shell history.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from cdrhouse.api.cli_common import open_store
from cdrhouse.api.render import FORMATS, render
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import users

err = Console(stderr=True, soft_wrap=True)
users_app = typer.Typer(help="Portal users: people who sign in to the web viewer.",
                        no_args_is_help=True)


def _store(ctx: typer.Context) -> Any:
    return open_store(ctx)


def _password(from_stdin: bool, confirm: bool = True) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Sign-in name (case-insensitive).")],
    as_: Annotated[str, typer.Option("--as", help="Principal the user acts as: admin, tenant:T, "
                                                 "tenant:T/customer:CODE, tenant:T/carrier:CODE.")],
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from standard input.")] = False,
) -> None:
    """Create a user who signs in to the web viewer as PRINCIPAL."""
    password = _password(password_stdin)
    with _store(ctx) as db:
        try:
            acc.resolve_principal(db, as_)       # the account must exist
            u = users.add_user(db, name, password, as_, created_by="cli")
        except (users.UserAccountError, acc.AccountError) as exc:
            _fail(exc)
    err.print(f"added user {u.name!r} for {u.principal}")


@users_app.command("list")
def users_list(
    ctx: typer.Context,
    tenant: Annotated[Optional[str], typer.Option("--tenant", "-t", help="Only this tenant.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
) -> None:
    """List users (never their passwords)."""
    if fmt not in FORMATS:
        _fail(ValueError(f"--format must be one of {', '.join(FORMATS)}"))
    with _store(ctx) as db:
        rows = users.list_users(db, tenant)
    render(["name", "principal", "disabled", "created", "created_by"],
           [(u.name, u.principal, u.disabled, u.created_at, u.created_by) for u in rows], fmt)


def _change(ctx: typer.Context, name: str, action: Callable[[Any], users.User], done: str) -> None:
    with _store(ctx) as db:
        try:
            u = action(db)
        except users.UserAccountError as exc:
            _fail(exc)
    err.print(f"{done} user {u.name!r} ({u.principal})")


@users_app.command("disable")
def users_disable(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Disable a user: it cannot sign in, and its open sessions end now."""
    _change(ctx, name, lambda db: users.set_disabled(db, name, True), "disabled")


@users_app.command("enable")
def users_enable(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Enable a disabled user again."""
    _change(ctx, name, lambda db: users.set_disabled(db, name, False), "enabled")


@users_app.command("delete")
def users_delete(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Delete a user; its open sessions end now."""
    _change(ctx, name, lambda db: users.delete_user(db, name), "deleted")


@users_app.command("passwd")
def users_passwd(
    ctx: typer.Context, name: Annotated[str, typer.Argument()],
    password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                 help="Read the password from standard input.")]
    = False,
) -> None:
    """Set a user's password."""
    password = _password(password_stdin)
    _change(ctx, name, lambda db: users.set_password(db, name, password), "new password for")


def register(app: typer.Typer) -> None:
    """Add `cdrhouse users` to the app."""
    app.add_typer(users_app, name="users")


def demo_login(db: Any, tenant: str, name: str = "demo") -> tuple[str, str]:
    """A ready sign-in for `cdrhouse demo`: user `name` as tenant operator, a fresh password."""
    import secrets

    password = secrets.token_urlsafe(12)
    principal = f"tenant:{tenant}"
    existing = users.find_user(db, name)
    if existing is None:
        users.add_user(db, name, password, principal, created_by="demo")
    else:
        users.set_password(db, name, password)
        if existing.disabled:
            users.set_disabled(db, name, False)
    return name, password
