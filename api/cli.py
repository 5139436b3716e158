"""The operator command line: `cdrhouse …`.

Global options come first and are also read from the environment
(CDRHOUSE_DATA_DIR, CDRHOUSE_CLICKHOUSE, CDRHOUSE_DATABASE). Every command that
opens the store applies pending schema migrations first.

Exit codes: 0 success; 1 the work failed (nothing usable ingested, a query
error); 2 bad usage or input; 3 the store is unavailable (held by another
process, unreachable).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from clickhouse_connect.driver.exceptions import DatabaseError
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)

from cdrhouse.api.cli_backup import backup_app, backup_schedule_options
from cdrhouse.api.cli_tier import tier_app
from cdrhouse.api import cli_billing
from cdrhouse.api.render import FORMATS, render
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import generate, keys
from cdrhouse.engine.db import Database, StoreConfig, StoreError, StoreLocked
from cdrhouse.engine.formats.base import FormatError
from cdrhouse.engine.ingest import IngestError, IngestOptions, Ingestor
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql import catalogue
from cdrhouse.engine.query import QueryFailed, run_sql, run_view
from cdrhouse.sql.builder import BuilderError
from cdrhouse.sql.principal import Principal, PrincipalError
from cdrhouse.sql.usersql import UserSQLError
from cdrhouse.sql.viewer import ViewerError, ViewRequest
from cdrhouse.tiering.lock import TierLocked
from cdrhouse.tiering.policy import DEFAULT_KEEP_MONTHS
from cdrhouse.backup.location import open_location
from cdrhouse.backup.schedule import DEFAULT_CRON as BACKUP_CRON
from cdrhouse.tiering.schedule import DEFAULT_CRON, parse_cron
from cdrhouse.sql.recordings import RecordingPolicy
from cdrhouse.tiering.store import (DEFAULT_PRESIGN_EXPIRY, MAX_PRESIGN_EXPIRY, ArchiveConfig,
                                    ArchiveError, open_archive)

err = Console(stderr=True, soft_wrap=True)
app = typer.Typer(help="cdrhouse: an analytical store for call detail records on ClickHouse.",
                  no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
accounts_app = typer.Typer(help="Customers and carriers of a tenant.", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")
keys_app = typer.Typer(help="API keys for the HTTP service.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(tier_app, name="tier")
app.add_typer(backup_app, name="backup")


class Failed(Exception):
    """The command ran but its work failed (exit 1)."""


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
    _version_flag: Annotated[bool, typer.Option(
        "--version", callback=_version_callback, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    ctx.obj = StoreConfig(data_dir=data_dir, clickhouse=clickhouse, database=database)


@contextmanager
def open_store(ctx: typer.Context) -> Iterator[Database]:
    """The store for this command, migrated to the current schema."""
    config: StoreConfig = ctx.obj
    db = Database(config)
    try:
        migrate(db)
        yield db
    finally:
        db.close()


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err,
                    transient=False)


# -- init ---------------------------------------------------------------------------

@app.command()
def init(ctx: typer.Context) -> None:
    """Create the store (or bring its schema up to date). Safe to run again."""
    config: StoreConfig = ctx.obj
    db = Database(config)
    try:
        report = migrate(db)
    finally:
        db.close()
    where = config.dsn if not config.embedded else str(config.data_dir / "clickhouse")
    if report.applied:
        err.print(f"applied schema {', '.join(report.applied)} to {where} "
                  f"(database {config.database})")
    else:
        err.print(f"schema is current (version {report.current:03d}) at {where}")


# -- accounts -------------------------------------------------------------------------

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
    _check_format(fmt)
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
    err.print(f"created key {key.key_id} for {key.principal}"
              + (f" ({key.name})" if key.name else "") + "; the secret is shown only now")
    typer.echo(secret)


@keys_app.command("list")
def keys_list(ctx: typer.Context,
              fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")]
              = "table") -> None:
    """List API keys (never their secrets)."""
    _check_format(fmt)
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


# -- serve ------------------------------------------------------------------------------

@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    pool: Annotated[int, typer.Option("--pool", help="ClickHouse clients (parallel queries).")] = 4,
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
             "s3://bucket[/prefix] entries whose objects are presigned. Default: any public "
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
    forwarded_allow_ips: Annotated[Optional[str], typer.Option(
        "--forwarded-allow-ips", envvar="CDRHOUSE_FORWARDED_ALLOW_IPS",
        help="Reverse proxies whose X-Forwarded-For/-Proto are believed: addresses or "
             "networks, comma-separated, or '*'. Default: none (the TCP peer is the client).")]
    = None,
) -> None:
    """Run the HTTP API on the configured store (embedded by default), and the tiering
    and backup jobs on their schedules."""
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
    proxies = tuple(p.strip() for p in (forwarded_allow_ips or "").split(",") if p.strip())
    try:
        TrustedProxies(proxies)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--forwarded-allow-ips") from None
    Database(config).close()     # fail fast, with the plain message, if the store is held
    err.print(f"serving {config.dsn if not config.embedded else config.data_dir / 'clickhouse'} "
              f"on http://{host}:{port} (docs at /docs)")
    err.print(f"tiering: {'runs on ' + repr(cron) + ' (UTC)' if cron else 'not scheduled'}, "
              f"keeps {keep_months} full months hot, archive "
              f"{open_archive(archive_config, config.data_dir).location}")
    err.print(f"backups: {'run on ' + repr(bcron) + ' (UTC), then verified' if bcron else 'not scheduled'}"
              f", to {open_location(backup_config, archive_config, config.data_dir).location}")
    err.print(f"forwarded headers: {'believed from ' + ', '.join(proxies) if proxies else 'ignored'}")
    # uvicorn's own proxy handling is off (it trusts 127.0.0.1 by default and drops the
    # real peer): api/forwarded.py applies --forwarded-allow-ips and logs both addresses
    uvicorn.run(create_app(ServiceConfig(store=config, pool_size=pool, archive=archive_config,
                                         tier_cron=cron, keep_months=keep_months,
                                         recordings=recordings, backup=backup_config,
                                         backup_cron=bcron, forwarded_allow_ips=proxies)),
                host=host, port=port, log_level="warning", access_log=False,
                proxy_headers=False)


# -- ingest -------------------------------------------------------------------------

def _default_rejects(config: StoreConfig) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return config.data_dir / "rejects" / f"ingest-{stamp}.csv"


@app.command()
def ingest(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="CDR files to ingest.", exists=True,
                                                dir_okay=False, readable=True)],
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant the calls belong to.")],
    fmt: Annotated[str, typer.Option(
        "--format", help="auto, csv, tsv, jsonl, parquet, asterisk, freeswitch-csv, "
                         "freeswitch-json.")] = "auto",
    source_tz: Annotated[str, typer.Option(
        "--source-tz", help="IANA zone of timestamps written without one (switch local "
                            "time). Stored times are UTC.")] = "UTC",
    customer: Annotated[Optional[str], typer.Option(
        "--customer", help="Customer code for rows that name none.")] = None,
    carrier: Annotated[Optional[str], typer.Option(
        "--carrier", help="Carrier code for rows that name none.")] = None,
    create_accounts: Annotated[bool, typer.Option(
        "--create-accounts", help="Create accounts for unknown codes instead of rejecting "
                                  "their rows.")] = False,
    reprice: Annotated[bool, typer.Option(
        "--reprice", help="Price every call from the rate cards, replacing charges the "
                          "CDRs carry (default: only calls without charges).")] = False,
    rejects: Annotated[Optional[Path], typer.Option(
        "--rejects", help="Where to write rejected rows (default: "
                          "<data-dir>/rejects/ingest-<time>.csv).")] = None,
) -> None:
    """Ingest CDR files: canonical CSV/TSV/JSON lines/Parquet, Asterisk or FreeSWITCH."""
    config: StoreConfig = ctx.obj
    rejects_path = rejects or _default_rejects(config)
    options = IngestOptions(tenant=tenant, format=fmt, source_tz=source_tz,
                            default_customer=customer, default_carrier=carrier,
                            create_accounts=create_accounts, reprice=reprice)
    totals = {"read": 0, "accepted": 0, "duplicates": 0, "rejected": 0}
    damaged: list[str] = []
    with open_store(ctx) as db:
        ingestor = Ingestor(db, options, rejects_path)
        if ingestor.dropped_scratch:
            err.print(f"removed {len(ingestor.dropped_scratch)} scratch table(s) left by an "
                      "interrupted ingest")
        try:
            for path in paths:
                size = path.stat().st_size
                with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                              TimeElapsedColumn(), console=err, transient=True) as bar:
                    task = bar.add_task(f"ingest {path.name}", total=size)

                    def detected(name: str, _p: Path = path) -> None:
                        bar.console.print(f"{_p}: detected format [bold]{name}[/bold]"
                                          if fmt == "auto" else f"{_p}: format {name}")

                    r = ingestor.ingest(path, on_detect=detected,
                                        progress=lambda done, t=task: bar.update(t, completed=done))
                for created in r.created_accounts:
                    err.print(f"  created {created}")
                rate = f", {r.read / r.seconds:,.0f} rows/s" if r.seconds > 0 else ""
                err.print(f"{path}: read {r.read:,}, accepted {r.accepted:,}, duplicate "
                          f"{r.duplicates:,}, rejected {r.rejected:,} in {r.seconds:.1f}s{rate}")
                for k in totals:
                    totals[k] += getattr(r, k)
                damaged += [f"{path}: {where}" for where in r.damage]
        finally:
            ingestor.close()
    if len(paths) > 1:
        err.print(f"total: read {totals['read']:,}, accepted {totals['accepted']:,}, "
                  f"duplicate {totals['duplicates']:,}, rejected {totals['rejected']:,}")
    if totals["rejected"]:
        err.print(f"rejected rows, with line numbers and reasons: {rejects_path}")
    if damaged:
        shown = damaged[:20] + ([f"… and {len(damaged) - 20:,} more"] if len(damaged) > 20 else [])
        raise FormatError("the input is damaged (its good rows were stored; the damaged "
                          f"lines are in {rejects_path}):\n  " + "\n  ".join(shown))
    if totals["accepted"] + totals["duplicates"] == 0:
        raise Failed("nothing usable was read")


# -- sql ----------------------------------------------------------------------------

_RAW_HELP = ("CSV: print text exactly as stored. By default a value a spreadsheet would run "
             "as a formula (starting with = + - @ TAB or CR, other than a signed number such "
             "as +442079460000) gets a leading ', and NUL becomes U+FFFD.")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise typer.BadParameter(f"choose one of {', '.join(FORMATS)}", param_hint="--format")


def _params(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r}: use NAME=VALUE", param_hint="--param")
        out[name] = value
    return out


@app.command()
def sql(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="A SELECT over the logical table `cdrs`.")],
    as_: Annotated[str, typer.Option(
        "--as", help="Principal: admin, tenant:T, tenant:T/customer:CODE or "
                     "tenant:T/carrier:CODE.")] = "admin",
    param: Annotated[Optional[list[str]], typer.Option(
        "--param", "-p", help="Query parameter NAME=VALUE for {NAME:Type} placeholders.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    raw: Annotated[bool, typer.Option("--raw", help=_RAW_HELP)] = False,
) -> None:
    """Run a read-only SQL query over the logical tables, guarded for the principal."""
    _check_format(fmt)
    params = _params(param or [])
    with open_store(ctx) as db:
        principal = acc.resolve_principal(db, as_)
        result = run_sql(db, principal, query, params)
    render(result.columns, result.rows, fmt, raw=raw)


@app.command()
def search(
    ctx: typer.Context,
    as_: Annotated[str, typer.Option("--as", help="Principal (see `sql --help`).")],
    rules: Annotated[Optional[str], typer.Option(
        "--rules", help="Query-builder tree (jQuery QueryBuilder or react-querybuilder JSON): "
                        "a file, or - for stdin.")] = None,
    preset: Annotated[Optional[str], typer.Option(
        "--preset", help="today, yesterday, last_24h, last_7_days, last_30_days, this_week, "
                         "this_month, last_month, or all.")] = None,
    date_from: Annotated[Optional[str], typer.Option(
        "--from", help="Start (inclusive), ISO 8601; naive times are in --tz.")] = None,
    date_to: Annotated[Optional[str], typer.Option("--to", help="End (exclusive).")] = None,
    number: Annotated[Optional[str], typer.Option(
        "--number", help="Source or destination: 4420*, *1234, *555*, a,b, !excluded.")] = None,
    connected_only: Annotated[bool, typer.Option(
        "--connected-only", help="Only answered calls (billsec > 0).")] = False,
    columns: Annotated[Optional[str], typer.Option(
        "--columns", help="Comma-separated fields (default per role).")] = None,
    sort: Annotated[str, typer.Option(
        "--sort", help="Comma-separated fields, '-' for descending.")] = "-start_time",
    tz: Annotated[str, typer.Option("--tz", help="Display time zone (IANA).")] = "UTC",
    limit: Annotated[int, typer.Option("--limit", help="Page size (max 1000).")] = 100,
    cursor: Annotated[Optional[str], typer.Option(
        "--cursor", help="Next-page cursor printed by the previous page.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    raw: Annotated[bool, typer.Option("--raw", help=_RAW_HELP)] = False,
) -> None:
    """Search CDRs as the viewer does: range, number, builder rules; one page at a time."""
    _check_format(fmt)
    tree = None
    if rules:
        text = sys.stdin.read() if rules == "-" else Path(rules).read_text()
        try:
            tree = json.loads(text)
        except ValueError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--rules") from None
    request = ViewRequest(
        columns=[c.strip() for c in columns.split(",")] if columns else None,
        sort=[c.strip() for c in sort.split(",") if c.strip()], limit=limit, cursor=cursor,
        range=preset, date_from=date_from, date_to=date_to, tz=tz,
        connected_only=connected_only, number=number, rules=tree)
    with open_store(ctx) as db:
        principal = acc.resolve_principal(db, as_)
        result = run_view(db, principal, request)
    frm, to = result.compiled.applied_range
    err.print(f"range (UTC): {frm or '-'} .. {to or '-'}; times shown in {tz}; "
              f"{len(result.rows)} rows")
    render(list(result.compiled.output_columns), result.rows, fmt, raw=raw)
    if result.next_cursor:
        err.print(f"next page: --cursor {result.next_cursor}")


# -- fields ---------------------------------------------------------------------------

@app.command()
def fields(fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")]
           = "table") -> None:
    """List the CDR fields (the catalogue)."""
    _check_format(fmt)
    render(["name", "type", "label", "roles", "filter", "sort", "description"],
           [(f.name, f.ch_type, f.label, ",".join(sorted(f.roles)), f.filterable, f.sortable,
             f.description) for f in catalogue.FIELDS], fmt)


# -- demo ---------------------------------------------------------------------------

DEMO_QUERIES: tuple[tuple[str, str], ...] = (
    ("Calls and minutes per tenant and month",
     "SELECT tenant_id, toYYYYMM(start_time) AS month, count() AS calls, "
     "round(sum(billsec) / 60) AS minutes FROM cdrs GROUP BY tenant_id, month "
     "ORDER BY tenant_id, month"),
    ("Top 5 destinations of acme by minutes, last 30 days",
     "SELECT country, count() AS calls, round(sum(billsec) / 60) AS minutes, "
     "sum(customer_charge) AS charge, sum(carrier_cost) AS cost FROM cdrs "
     "WHERE tenant_id = 'acme' AND start_time >= now() - INTERVAL 30 DAY "
     "GROUP BY country ORDER BY minutes DESC LIMIT 5"),
    ("ASR and ACD per carrier of acme, last 7 days",
     "SELECT carrier_id, count() AS calls, round(countIf(billsec > 0) / count() * 100, 1) "
     "AS asr_pct, round(avgIf(billsec, billsec > 0)) AS acd_s FROM cdrs "
     "WHERE tenant_id = 'acme' AND start_time >= now() - INTERVAL 7 DAY "
     "GROUP BY carrier_id ORDER BY calls DESC"),
    ("Release reasons overall",
     "SELECT disposition, release_reason, sip_code, count() AS calls FROM cdrs "
     "GROUP BY disposition, release_reason, sip_code ORDER BY calls DESC LIMIT 8"),
)


@app.command()
def demo(
    ctx: typer.Context,
    rows: Annotated[int, typer.Option("--rows", min=1, help="How many CDRs to generate.")]
    = 500_000,
    months: Annotated[int, typer.Option("--months", min=1, max=60,
                                        help="Months of traffic, up to now.")] = 6,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same calls).")]
    = 42,
) -> None:
    """Generate a realistic dataset, ingest it, and run a few example queries."""
    config: StoreConfig = ctx.obj
    now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    spec = generate.GenSpec(rows=rows, months=months, seed=seed, end=now)
    out_dir = config.data_dir / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_store(ctx) as db:
        new = generate.ensure_accounts(db, spec)
        generate.load_rate_cards(db, spec)  # so that `cdrhouse recalc rerate` has cards to use
        err.print(f"store: {config.dsn if not config.embedded else config.data_dir / 'clickhouse'}; "
                  f"{len(spec.tenants)} tenants ({', '.join(spec.tenants)}), "
                  f"{new} new accounts")
        files = []
        shares = generate.tenant_rows(spec)
        with _progress() as bar:
            task = bar.add_task("generate CDRs", total=rows)
            for tenant in spec.tenants:
                path = out_dir / f"{tenant}-{seed}-{rows}.parquet"
                generate.write_parquet(db, spec, tenant, path,
                                       progress=lambda n: bar.advance(task, n))
                files.append((tenant, path))
        err.print(f"generated {rows:,} CDRs over {months} months "
                  f"({spec.start_time:%Y-%m-%d} to {spec.end_time:%Y-%m-%d}) in {out_dir}")
        with _progress() as bar:
            task = bar.add_task("ingest", total=rows)
            for tenant, path in files:
                ingestor = Ingestor(db, IngestOptions(tenant=tenant),
                                    _default_rejects(config))
                try:
                    r = ingestor.ingest(path)
                finally:
                    ingestor.close()
                bar.advance(task, shares[tenant])
                err.print(f"  {tenant}: {path.name} accepted {r.accepted:,}, duplicate "
                          f"{r.duplicates:,}, rejected {r.rejected:,} "
                          f"({r.read / max(r.seconds, 1e-9):,.0f} rows/s)")
        total = db.scalar("SELECT count() FROM cdr_records FINAL")
        err.print(f"the store now holds {total:,} CDRs\n")
        for title, query in DEMO_QUERIES:
            err.print(f"[bold]{title}[/bold]\n[dim]$ cdrhouse sql \"{query}\"[/dim]")
            result = run_sql(db, Principal.admin(), query)
            render(result.columns, result.rows, "table")
    err.print("Try it yourself: cdrhouse sql \"SELECT count() FROM cdrs\" --as admin")


cli_billing.register(app, open_store)


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
    except (StoreLocked, StoreError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(3)
    except TierLocked as exc:
        err.print(f"[red]busy:[/red] {exc}")
        sys.exit(3)
    except ArchiveError as exc:
        err.print(f"[red]archive error:[/red] {exc}")
        sys.exit(1)
    except (acc.AccountError, keys.ApiKeyError, FormatError, IngestError, UserSQLError, ViewerError, BuilderError,
            PrincipalError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
    except DatabaseError as exc:
        err.print(f"[red]ClickHouse error:[/red] {_first_line(exc)}")
        sys.exit(1)
    except QueryFailed as exc:
        err.print(f"[red]query failed:[/red] {exc}")
        sys.exit(1)
    except Failed as exc:
        err.print(f"[red]failed:[/red] {exc}")
        sys.exit(1)
    except Exception as exc:  # click's usage errors (typer vendors its own click)
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None),
                                                               int):
            exc.show()
            sys.exit(exc.exit_code)
        raise


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.split("\n")[0][:2000]


if __name__ == "__main__":
    main()
