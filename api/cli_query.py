"""`cdrhouse sql`, `search` and `fields`: reading CDRs as a principal, from the terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cdrhouse.api.cli_common import check_format, err, open_store
from cdrhouse.api.render import render
from cdrhouse.engine import accounts as acc
from cdrhouse.engine.query import run_sql, run_view
from cdrhouse.sql import catalogue
from cdrhouse.sql.viewer import ViewRequest

_RAW_HELP = ("CSV: print text exactly as stored. By default a value a spreadsheet would run "
             "as a formula (starting with = + - @ TAB or CR, other than a signed number such "
             "as +442079460000) gets a leading ', and NUL becomes U+FFFD.")


def _params(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r}: use NAME=VALUE", param_hint="--param")
        out[name] = value
    return out


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
    check_format(fmt)
    params = _params(param or [])
    with open_store(ctx) as db:
        principal = acc.resolve_principal(db, as_)
        result = run_sql(db, principal, query, params)
    render(result.columns, result.rows, fmt, raw=raw)


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
    check_format(fmt)
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

def fields(fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")]
           = "table") -> None:
    """List the CDR fields (the catalogue)."""
    check_format(fmt)
    render(["name", "type", "label", "roles", "filter", "sort", "description"],
           [(f.name, f.ch_type, f.label, ",".join(sorted(f.roles)), f.filterable, f.sortable,
             f.description) for f in catalogue.FIELDS], fmt)


def register(app: typer.Typer) -> None:
    app.command()(sql)
    app.command()(search)
    app.command()(fields)
