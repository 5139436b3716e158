"""`cdrhouse demo`: generate a realistic dataset, ingest it, run example queries."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from cdrhouse.api.cli_common import default_rejects, err, open_store, progress
from cdrhouse.api.cli_users import demo_login
from cdrhouse.api.render import render
from cdrhouse.engine import generate
from cdrhouse.engine.db import StoreConfig
from cdrhouse.engine.ingest import IngestOptions, Ingestor
from cdrhouse.engine.query import run_sql
from cdrhouse.sql.principal import Principal

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


def demo(
    ctx: typer.Context,
    rows: Annotated[int, typer.Option("--rows", min=1, help="How many CDRs to generate.")]
    = 500_000,
    months: Annotated[int, typer.Option("--months", min=1, max=60,
                                        help="Months of traffic, up to now.")] = 6,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same calls).")]
    = 42,
    with_anomalies: Annotated[bool, typer.Option(
        "--anomalies", help="Also inject labelled anomalies (a premium-prefix spike, a "
                            "carrier's ASR collapse, a short-call surge, a spend jump, a new "
                            "expensive destination, a balance running out) that started 20 "
                            "minutes ago, and run the alert detectors once.")] = False,
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
        with progress() as bar:
            task = bar.add_task("generate CDRs", total=rows)
            for tenant in spec.tenants:
                path = out_dir / f"{tenant}-{seed}-{rows}.parquet"
                generate.write_parquet(db, spec, tenant, path,
                                       progress=lambda n: bar.advance(task, n))
                files.append((tenant, path))
        err.print(f"generated {rows:,} CDRs over {months} months "
                  f"({spec.start_time:%Y-%m-%d} to {spec.end_time:%Y-%m-%d}) in {out_dir}")
        with progress() as bar:
            task = bar.add_task("ingest", total=rows)
            for tenant, path in files:
                ingestor = Ingestor(db, IngestOptions(tenant=tenant),
                                    default_rejects(config))
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
        if with_anomalies:
            _anomalies(db, spec, out_dir, now)
        user, password = demo_login(db, spec.tenants[0])
    err.print("Try it yourself: cdrhouse sql \"SELECT count() FROM cdrs\" --as admin")
    data = "" if str(config.data_dir) == "cdrhouse-data" else f" --data-dir {config.data_dir}"
    err.print(f"\n[bold]Web viewer[/bold]: start the service with\n  cdrhouse{data} serve\n"
              f"then open http://127.0.0.1:8000/ and sign in as [bold]{user}[/bold] with "
              f"password [bold]{password}[/bold] (operator of tenant {spec.tenants[0]})")


def _anomalies(db, spec: generate.GenSpec, out_dir, now: dt.datetime) -> None:
    """Inject the labelled anomalies, evaluate the detectors, print labels and alerts."""
    from cdrhouse.engine import alerts, anomalies

    start = now - dt.timedelta(minutes=20)
    injected = anomalies.inject(db, spec, anomalies.catalogue(start, spec.tenants), out_dir)
    err.print("[bold]Injected anomalies[/bold] (from "
              f"{start:%Y-%m-%d %H:%M} UTC; labels: what each should raise)")
    render(["anomaly", "tenant", "what", "calls", "should raise"],
           [(a.name, a.tenant, a.description, a.calls or "", ", ".join(a.targets))
            for a in injected], "table")
    reports = alerts.evaluate_all(db, now)
    rows = [(r.tenant, a.detector, a.summary, next((x.name for x in injected if x.matches(a)), "-"))
            for r in reports for a in r.opened]
    err.print("[bold]Alerts raised now[/bold] (`cdrhouse alerts list`; `cdrhouse serve` "
              "re-evaluates every 5 minutes)")
    render(["tenant", "detector", "summary", "explained by"], rows, "table")


def register(app: typer.Typer) -> None:
    app.command()(demo)
