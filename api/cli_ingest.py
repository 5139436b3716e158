"""`cdrhouse ingest`: CDR files into the store, with a progress bar and a rejects file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from cdrhouse.api.cli_common import Failed, default_rejects, err, open_store
from cdrhouse.engine.db import StoreConfig
from cdrhouse.engine.formats.base import FormatError
from cdrhouse.engine.ingest import IngestOptions, Ingestor


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
    rejects_path = rejects or default_rejects(config)
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


def register(app: typer.Typer) -> None:
    app.command()(ingest)
