"""`cdrhouse init`, `accounts …` and `keys …`: setting up a store and who may use it."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cdrhouse.api.cli_audit import note
from cdrhouse.api.cli_common import check_format, err, migrate_shown, open_store
from cdrhouse.api.render import render
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import keys
from cdrhouse.engine.db import Database, StoreConfig

accounts_app = typer.Typer(help="Customers and carriers of a tenant.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys for the HTTP service.", no_args_is_help=True)


def init(ctx: typer.Context) -> None:
    """Create the store (or bring its schema up to date). Safe to run again."""
    config: StoreConfig = ctx.obj
    db = Database(config)
    try:
        report = migrate_shown(db)
    finally:
        db.close()
    where = config.dsn if not config.embedded else str(config.data_dir / "clickhouse")
    if report.applied:
        err.print(f"applied schema {', '.join(report.applied)} to {where} "
                  f"(database {config.database})")
    else:
        err.print(f"schema is current (version {report.current:03d}) at {where}")


@accounts_app.command("add")
def accounts_add(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant id, e.g. acme.")],
    code: Annotated[str, typer.Option("--code", help="Account code, as switches write it (accountcode).")],
    kind: Annotated[str, typer.Option("--kind", help="customer or carrier.")],
    name: Annotated[str, typer.Option("--name", help="Display name (default: the code).")] = "",
    currency: Annotated[str, typer.Option("--currency", help="ISO 4217 currency.")] = "USD",
) -> None:
    """Add a customer or carrier account to a tenant."""
    with open_store(ctx) as db:
        a = acc.add_account(db, tenant, code, kind, name, currency)
    err.print(f"added {a.kind} {a.code!r} to tenant {a.tenant_id!r} with id {a.account_id}")
    typer.echo(a.account_id)


@accounts_app.command("list")
def accounts_list(
    ctx: typer.Context,
    tenant: Annotated[Optional[str], typer.Option("--tenant", "-t", help="Only this tenant.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
) -> None:
    """List accounts."""
    check_format(fmt)
    with open_store(ctx) as db:
        rows = acc.list_accounts(db, tenant)
    render(["tenant", "id", "code", "kind", "name", "currency"],
           [(a.tenant_id, a.account_id, a.code, a.kind, a.name, a.currency) for a in rows], fmt)


# -- keys -------------------------------------------------------------------------------

@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    as_: Annotated[str, typer.Option("--as", help="Principal the key acts as: admin, tenant:T, "
                                                 "tenant:T/customer:CODE, tenant:T/carrier:CODE.")],
    name: Annotated[str, typer.Option("--name", help="What the key is for.")] = "",
) -> None:
    """Create an API key. The secret is printed once, alone on stdout; keep it."""
    with open_store(ctx) as db:
        acc.resolve_principal(db, as_)           # the account must exist
        key, secret = keys.create_key(db, as_, name)
    note(key_id=key.key_id)                      # the audit record names the key, not the secret
    err.print(f"created key {key.key_id} for {key.principal}"
              + (f" ({key.name})" if key.name else "") + "; the secret is shown only now")
    typer.echo(secret)


@keys_app.command("list")
def keys_list(ctx: typer.Context,
              fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")]
              = "table") -> None:
    """List API keys (never their secrets)."""
    check_format(fmt)
    with open_store(ctx) as db:
        rows = keys.list_keys(db)
    render(["id", "principal", "name", "created", "revoked"],
           [(k.key_id, k.principal, k.name, k.created_at, k.revoked_at) for k in rows], fmt)


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context,
                key_id: Annotated[str, typer.Argument(help="The key's id (see keys list).")]) -> None:
    """Revoke an API key: it stops working at once."""
    with open_store(ctx) as db:
        key = keys.revoke_key(db, key_id)
    err.print(f"revoked key {key.key_id} ({key.principal})")


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.add_typer(accounts_app, name="accounts")
    app.add_typer(keys_app, name="keys")
