"""The operator command line: `cdrhouse …`.

Global options come first and are also read from the environment
(CDRHOUSE_DATA_DIR, CDRHOUSE_CLICKHOUSE, CDRHOUSE_DATABASE, CDRHOUSE_CLUSTER,
CDRHOUSE_REPLICATED). Every command that
opens the store applies pending schema migrations first.

The commands live in one module each group (api/cli_*.py), each with a
`register(app)`; this module holds the app, its global options and `main`, which
turns errors into messages and the exit codes of api/cli_common.py: 0 success;
1 the work failed; 2 bad usage or input; 3 the store (or a lock) is unavailable.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Optional

import typer

from cdrhouse.api import (cli_admin, cli_alerts, cli_audit, cli_backup, cli_billing, cli_demo,
                          cli_ingest, cli_query, cli_schedules, cli_serve, cli_tier, cli_users)
from cdrhouse.api.cli_common import err, exit_code
from cdrhouse.engine.db import StoreConfig

app = typer.Typer(help="cdrhouse: an analytical store for call detail records on ClickHouse.",
                  no_args_is_help=True, pretty_exceptions_enable=False,
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
    ctx.obj = StoreConfig(data_dir=data_dir, clickhouse=clickhouse, database=database,
                          cluster=cluster or None, replicated=replicated)


#: every command module, one per line; each adds its commands with register(app)
COMMANDS = (
    cli_admin,
    cli_tier,
    cli_serve,
    cli_ingest,
    cli_query,
    cli_demo,
    cli_billing,
    cli_backup,
    cli_users,
    cli_audit,
    cli_schedules,
    cli_alerts,
)
for _module in COMMANDS:
    _module.register(app)
# the changing commands record themselves in the audit trail (api/cli_audit.py)
cli_audit.instrument(app)


# -- entry point ----------------------------------------------------------------------

def main() -> None:
    """Console entry point: run the app and turn known errors into messages and exit codes."""
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(code) raised inside a command
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:
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
