"""The operator command line: `cdrhouse …`.

Global options come first and are also read from the environment
(CDRHOUSE_DATA_DIR, CDRHOUSE_CLICKHOUSE, CDRHOUSE_DATABASE, CDRHOUSE_CLUSTER,
CDRHOUSE_REPLICATED). Every command that
opens the store applies pending schema migrations first.

The commands live in one module each group (api/cli_*.py), each with a
`register(app)`, loaded on demand (COMMANDS); this module holds the app, its global
options and `main`, which
turns errors into messages and the exit codes of api/cli_common.py: 0 success;
1 the work failed; 2 bad usage or input; 3 the store (or a lock) is unavailable.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

#: every command (or group of commands) of `cdrhouse`, in the order help lists them,
#: and the module api/cli_<…>.py whose register(app) adds it. A module is imported only
#: when one of its commands runs or help lists it: `cdrhouse --version` or `cdrhouse sql`
#: need not load the web service, password hashing or S3 clients of the other commands.
#: tests/test_cli.py checks this table against what each module registers.
COMMANDS: dict[str, str] = {
    "init": "cli_admin",
    "serve": "cli_serve",
    "ingest": "cli_ingest",
    "sql": "cli_query",
    "search": "cli_query",
    "fields": "cli_query",
    "demo": "cli_demo",
    "balance": "cli_billing",
    "jobs": "cli_billing",
    "accounts": "cli_admin",
    "keys": "cli_admin",
    "tier": "cli_tier",
    "rates": "cli_billing",
    "ledger": "cli_billing",
    "recalc": "cli_billing",
    "backup": "cli_backup",
    "cluster": "cli_cluster",
    "users": "cli_users",
    "audit": "cli_audit",
    "schedules": "cli_schedules",
    "alerts": "cli_alerts",
}


@functools.cache
def commands_of(module_name: str) -> dict[str, Any]:
    """The click commands one command module registers, audited ones wrapped to record
    themselves (api/cli_audit.py); the module is imported on this first call."""
    from cdrhouse.api import cli_audit

    module = importlib.import_module(f"cdrhouse.api.{module_name}")
    sub = typer.Typer(pretty_exceptions_enable=False)
    module.register(sub)
    cli_audit.instrument(sub)
    return dict(typer.main.get_group(sub).commands)


class _LazyCommands(Mapping[str, Any]):
    """name → click command, loading the command's module on first lookup."""

    def __getitem__(self, name: str) -> Any:
        return commands_of(COMMANDS[name])[name]

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


class _LazyGroup(TyperGroup):
    """The `cdrhouse` group, whose commands come from COMMANDS on demand."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = _LazyCommands()  # type: ignore[assignment]

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # the names only: listing loads nothing


app = typer.Typer(help="cdrhouse: an analytical store for call detail records on ClickHouse.",
                  cls=_LazyGroup, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _version() -> str:
    try:
        return version("cdrhouse")
    except PackageNotFoundError:
        return "0+unknown"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cdrhouse {_version()}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Option(
        "--data-dir", envvar="CDRHOUSE_DATA_DIR",
        help="Where cdrhouse keeps its data (embedded engine, warm archive, rejects).")]
    = Path("./cdrhouse-data"),
    clickhouse: Annotated[Optional[str], typer.Option(
        "--clickhouse", envvar="CDRHOUSE_CLICKHOUSE",
        help="ClickHouse DSN, e.g. http://user:pass@host:8123; default: the embedded "
             "engine at chdb://<data-dir>/clickhouse.")] = None,
    database: Annotated[str, typer.Option(
        "--database", envvar="CDRHOUSE_DATABASE", help="ClickHouse database to use.")]
    = "cdrhouse",
    cluster: Annotated[Optional[str], typer.Option(
        "--cluster", envvar="CDRHOUSE_CLUSTER",
        help="Shard the store across this cluster of the servers' remote_servers "
             "(README: Running on a cluster).")] = None,
    replicated: Annotated[Optional[bool], typer.Option(
        "--replicated/--not-replicated", envvar="CDRHOUSE_REPLICATED",
        help="With --cluster: replicated tables (Replicated*MergeTree, ON CLUSTER DDL); "
             "default: yes when the servers have Keeper.")] = None,
    _version_flag: Annotated[bool, typer.Option(
        "--version", callback=_version_callback, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    from cdrhouse.engine.db import StoreConfig

    ctx.obj = StoreConfig(data_dir=data_dir, clickhouse=clickhouse, database=database,
                          cluster=cluster or None, replicated=replicated)


# -- entry point ----------------------------------------------------------------------

def main(args: list[str] | None = None) -> None:
    """Console entry point: run the app and turn known errors into messages and exit codes
    (`args` instead of the command line: tests run commands in-process this way)."""
    try:
        code = app(args=args, prog_name="cdrhouse", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(code) raised inside a command
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        from cdrhouse.api.cli_common import err
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:
        from cdrhouse.api.cli_common import err, exit_code
        known = exit_code(exc)
        if known is not None:
            err.print(known[1])
            sys.exit(known[0])
        # click's usage errors (typer vendors its own click)
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None),
                                                               int):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
