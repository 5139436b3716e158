"""`cdrhouse cluster status|rebalance`: a sharded store's shards, and its rows put back
where the sharding key sends them after a shard was added (engine/rebalance.py).

Exit codes as everywhere: 0 done (status: every row in place); 1 the work failed, or
status found rows to move; 2 refused (one node, a replicated cluster, a tiering run
unfinished); 3 the store is unavailable.
"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich.console import Console

from cdrhouse.api.cli_common import check_format, open_store
from cdrhouse.api.render import render
from cdrhouse.engine import cluster, rebalance
from cdrhouse.sql.months import parse_month

err = Console(stderr=True, soft_wrap=True)
cluster_app = typer.Typer(help="A sharded store: its shards, and rows moved to their shard "
                               "after a shard was added.", no_args_is_help=True)


def _months(values: list[str] | None) -> list[int] | None:
    try:
        return [parse_month(v) for v in values] if values else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--month") from None


def _misplaced_rows(found: list[rebalance.Misplaced], fmt: str) -> None:
    """One line per month and pair of shards: the calls' rows (every version) and the
    rows of their time-ordered copy."""
    lines: dict[tuple[int, int, int], dict[str, int]] = {}
    for m in found:
        lines.setdefault((m.month, m.at, m.to), {})[m.table] = m.rows
    render(["month", "on shard", "belongs on shard", "call rows", "time-ordered copy rows"],
           [(month, at, to, n.get("cdr_records", 0), n.get("cdr_records_by_time", 0))
            for (month, at, to), n in sorted(lines.items())], fmt)


@cluster_app.command("status")
def status(
    ctx: typer.Context,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
) -> None:
    """The cluster's shards (weight, call and summary rows held) and any rows not on
    the shard their call's key sends them to (after a shard was added, or given weight
    0 to retire it: run `cluster rebalance`)."""
    check_format(fmt)
    with open_store(ctx) as db:
        try:
            found = rebalance.placement(db)
        except rebalance.RebalanceRefused as exc:
            err.print(f"[red]refused:[/red] {exc}")
            raise typer.Exit(2) from None
        held = dict(db.rows("SELECT _shard_num, count() FROM cdr_records GROUP BY _shard_num"))
        summed = dict(db.rows("SELECT _shard_num, count() FROM cdr_daily_summary "
                              "GROUP BY _shard_num"))
        weights = {s.num: s.weight for s in rebalance.shards(db)}
        hosts = {n.shard: n.host for n in cluster.nodes(db)}
        name = cluster.topology(db).cluster
        moving = rebalance.running(db)
    err.print(f"cluster {name}: {len(weights)} shards")
    if moving:      # re-rates, tiering, backups and ingest are refused meanwhile
        err.print(f"a rebalance is running: {rebalance.describe(moving)}")
    render(["shard", "host", "weight", "call rows", "summary rows"],
           [(s, hosts.get(s, ""), w, int(held.get(s, 0)), int(summed.get(s, 0)))
            for s, w in weights.items()], fmt)
    retiring = [s for s, w in weights.items() if w == 0 and summed.get(s)]
    if found:
        err.print(f"{_calls(found):,} call rows are not on their shard (a shard was added "
                  "or given weight 0); `cdrhouse cluster rebalance` moves them:")
        _misplaced_rows(found, fmt)
    if retiring:
        err.print(f"shard(s) {', '.join(map(str, retiring))} of weight 0 still hold daily-"
                  "summary rows; `cdrhouse cluster rebalance` moves them")
    if found or retiring:
        raise typer.Exit(1)
    err.print("every row is on its shard")


@cluster_app.command("rebalance")
def rebalance_(
    ctx: typer.Context,
    months: Annotated[Optional[list[str]], typer.Option(
        "--month", help="Only this month (YYYY-MM or YYYYMM); repeatable. Default: every "
                        "month with rows to move.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would move; "
                                          "change nothing.")] = False,
) -> None:
    """Move every row that is not on the shard its call's key sends it to (after a shard
    was added), so that every version of a call is on one shard again and re-rating
    stays exact. Run it with ingest, re-rating and tiering stopped: while a month moves,
    its moved calls are read twice."""
    chosen = _months(months)
    with open_store(ctx) as db:
        try:
            if dry_run:
                found = rebalance.placement(db, chosen)
                if not found:
                    err.print("every row is on its shard: nothing to move")
                    return
                err.print(f"would move {_calls(found):,} call rows:")
                _misplaced_rows(found, "table")
                return
            started = time.monotonic()
            report = rebalance.rebalance(db, chosen, progress=_progress)
        except rebalance.RebalanceRefused as exc:
            err.print(f"[red]refused:[/red] {exc}")
            raise typer.Exit(2) from None
        except rebalance.RebalanceError as exc:
            err.print(f"[red]rebalance failed:[/red] {exc}")
            raise typer.Exit(1) from None
    if report.summary_rows_moved:
        err.print(f"moved {report.summary_rows_moved:,} daily-summary rows off the shard(s) "
                  "of weight 0")
    if not report.before:
        err.print("every row is on its shard: nothing to move")
        return
    for table, month, shard, rows in report.copied:
        err.print(f"  {table} {month}: {rows:,} rows copied to shard {shard}")
    err.print(f"moved {report.moved:,} call rows of {len(report.months)} month(s) in "
              f"{time.monotonic() - started:.1f} s; every row is on its shard")


def _calls(found: list[rebalance.Misplaced]) -> int:
    return sum(m.rows for m in found if m.table == "cdr_records")


def _progress(what: str, done: int, total: int) -> None:
    if what != "done":
        err.print(f"{what} ({done + 1}/{total})")


def register(app: typer.Typer) -> None:
    app.add_typer(cluster_app, name="cluster")
