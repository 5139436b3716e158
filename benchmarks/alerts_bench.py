"""Anomaly alerts benchmark: precision, recall, detection delay and cost of the detectors.

    python -m benchmarks.alerts_bench [--rows 1000000] [--seeds 3] [--clean-hours 12]
                                      [--period 300] [--cost-rows 5000000]

Per seed, on a generated store (three tenants, four months ending at END):

1. **clean sweep** — the detectors are evaluated every `period` seconds over the
   `clean-hours` busiest hours of the last day (centred on 12:00 UTC) of clean
   traffic, exactly as `cdrhouse serve` would (sliding windows, deduplication):
   every alert opened here is a false alert;
2. **anomaly sweep** — the labelled anomalies of engine/anomalies.py are injected
   at T0 (the last day, 15:00 UTC) and the detectors evaluated every period from
   T0 - 2 periods to T0 + 2 h 15 min. An anomaly is found when a detector it
   targets opens an alert about its subject; its delay is in evaluation periods
   after T0 (1 = found at the first evaluation after it started). An alert no
   anomaly explains is a false alert.

Precision per detector = alerts explained by an anomaly / all its alerts (both
sweeps); recall = anomalies it targets that it found / anomalies it targets.
False alerts per tenant-day = false alerts / (tenants x swept days).

**Cost**: on one store of `cost-rows` CDRs (merged, as a store is after a while),
each tenant evaluated (all detectors) several times at the store's last hour;
the median per tenant and per detector. Results: benchmarks/results/alerts.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from benchmarks import dataset
from cdrhouse.engine import alerts as al
from cdrhouse.engine import anomalies, generate
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql import alerts as rules

END = dt.datetime(2026, 10, 28, 18, 0, tzinfo=dt.timezone.utc)
T0 = END - dt.timedelta(hours=3)


def _store(data_dir: Path, name: str) -> Database:
    db = Database(StoreConfig(data_dir=data_dir, clickhouse=f"chdb://{data_dir}/clickhouse",
                              database=name))
    migrate(db)
    return db


def _reset(db: Database) -> None:
    for table in ("alerts", "alert_evaluations"):
        db.command(f"TRUNCATE TABLE {table}")


def sweep(db: Database, tenants: tuple[str, ...], start: dt.datetime, end: dt.datetime,
          period: dt.timedelta) -> tuple[list[tuple[dt.datetime, al.Alert]], list[float]]:
    """Evaluate every tenant at each period in [start, end); opened alerts and the
    seconds of each tenant evaluation."""
    opened, seconds = [], []
    at = start
    while at < end:
        for tenant in tenants:
            started = time.perf_counter()
            report = al.evaluate_tenant(db, tenant, at)
            seconds.append(time.perf_counter() - started)
            opened += [(at, a) for a in report.opened]
        at += period
    return opened, seconds


def one_seed(data_dir: Path, rows: int, seed: int, clean_hours: int,
             period: dt.timedelta) -> dict:
    spec = generate.GenSpec(rows=rows, months=4, seed=seed, end=END)
    db = _store(data_dir, f"alerts_bench_{seed}")
    try:
        t = time.perf_counter()
        dataset.load(db, spec)
        load_s = time.perf_counter() - t
        # 1. clean sweep over the busiest hours of the last day
        _reset(db)
        # centred on the busiest hour of the generator's day (about 12:00 UTC)
        clean_start = (END.replace(hour=12 - clean_hours // 2) if clean_hours <= 12
                       else END - dt.timedelta(hours=clean_hours))
        clean, clean_secs = sweep(db, spec.tenants, clean_start,
                                  clean_start + dt.timedelta(hours=clean_hours), period)
        # 2. anomalies from T0
        _reset(db)
        with tempfile.TemporaryDirectory() as tmp:
            injected = anomalies.inject(db, spec, anomalies.catalogue(T0, spec.tenants), Path(tmp))
        found, anomaly_secs = sweep(db, spec.tenants, T0 - 2 * period,
                                    T0 + dt.timedelta(hours=2, minutes=15), period)
        delays: dict[str, int | None] = {}
        for a in injected:
            hits = [at for at, alert in found if a.found_by(alert)]
            delays[a.name] = (-(-int((min(hits) - T0).total_seconds()) // int(period.total_seconds()))
                              if hits else None)
        alerts = [("clean", alert) for _, alert in clean] + [("anomaly", alert) for _, alert in found]
        per_detector: dict[str, Counter] = defaultdict(Counter)
        false_alerts = []
        for phase, alert in alerts:
            explained = phase == "anomaly" and any(a.matches(alert) for a in injected)
            per_detector[alert.detector]["alerts"] += 1
            per_detector[alert.detector]["true" if explained else "false"] += 1
            if not explained:
                false_alerts.append({"phase": phase, "tenant": alert.tenant_id,
                                     "detector": alert.detector, "summary": alert.summary})
        targets: dict[str, Counter] = defaultdict(Counter)
        for a in injected:
            for d in a.targets:
                targets[d]["targeted"] += 1
                targets[d]["found"] += delays[a.name] is not None
        swept_days = (clean_hours * 3600 + (T0 + dt.timedelta(hours=2, minutes=15) - T0 + 2 * period)
                      .total_seconds()) / 86400
        return {
            "seed": seed, "rows": int(db.scalar("SELECT count() FROM cdr_records FINAL")),
            "load_seconds": round(load_s, 1),
            "delays_periods": delays,
            "per_detector": {k: dict(v) for k, v in per_detector.items()},
            "targets": {k: dict(v) for k, v in targets.items()},
            "false_alerts": false_alerts,
            "false_per_tenant_day": len(false_alerts) / (len(spec.tenants) * swept_days),
            "clean_false": sum(1 for f in false_alerts if f["phase"] == "clean"),
            "clean_evaluations": len(clean_secs), "anomaly_evaluations": len(anomaly_secs),
            "tenant_eval_seconds_median": statistics.median(clean_secs + anomaly_secs),
        }
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{db.name}` SYNC")
        db.close()


def cost(data_dir: Path, rows: int, repeats: int = 5) -> dict:
    spec = generate.GenSpec(rows=rows, months=6, seed=1, end=END)
    db = _store(data_dir, "alerts_bench_cost")
    try:
        t = time.perf_counter()
        dataset.load(db, spec)
        load_s = time.perf_counter() - t
        per_tenant: dict[str, list[float]] = defaultdict(list)
        per_detector: dict[str, list[float]] = defaultdict(list)
        tenant_rows = {t: int(n) for t, n in db.rows(
            "SELECT tenant_id, count() FROM cdr_records GROUP BY tenant_id")}
        for i in range(repeats):
            at = END - dt.timedelta(minutes=5 * i)
            for tenant in spec.tenants:
                started = time.perf_counter()
                report = al.evaluate_tenant(db, tenant, at)
                per_tenant[tenant].append(time.perf_counter() - started)
                for key, s in report.seconds.items():
                    per_detector[key].append(s)
        return {"rows": sum(tenant_rows.values()), "tenant_rows": tenant_rows,
                "load_seconds": round(load_s, 1), "repeats": repeats,
                "tenant_seconds_median": {t: round(statistics.median(v), 3)
                                          for t, v in per_tenant.items()},
                "detector_seconds_median": {k: round(statistics.median(v), 3)
                                            for k, v in per_detector.items()}}
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{db.name}` SYNC")
        db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--clean-hours", type=int, default=12)
    ap.add_argument("--period", type=int, default=al.DEFAULT_EVERY, help="seconds")
    ap.add_argument("--cost-rows", type=int, default=5_000_000, help="0: skip the cost store")
    ap.add_argument("--out", default="benchmarks/results/alerts.json")
    args = ap.parse_args()
    period = dt.timedelta(seconds=args.period)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                     "params": vars(args), "detectors": {d.key: d.defaults() for d in rules.DETECTORS}}
    with tempfile.TemporaryDirectory() as tmp:
        seeds = []
        for seed in range(1, args.seeds + 1):
            r = one_seed(Path(tmp), args.rows, seed, args.clean_hours, period)
            seeds.append(r)
            results["seeds"] = seeds
            Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
            print(json.dumps({k: r[k] for k in ("seed", "rows", "delays_periods", "clean_false",
                                                  "false_per_tenant_day",
                                                  "tenant_eval_seconds_median")}), flush=True)
        results["seeds"] = seeds
        total: dict[str, Counter] = defaultdict(Counter)
        for r in seeds:
            for k, v in r["per_detector"].items():
                total[k].update(v)
            for k, v in r["targets"].items():
                total[k].update(v)
        results["summary"] = {k: {**v, "precision": round(v["true"] / v["alerts"], 3) if v["alerts"] else None,
                                  "recall": round(v["found"] / v["targeted"], 3) if v["targeted"] else None}
                              for k, v in total.items()}
        results["max_delay_periods"] = max((d for r in seeds for d in r["delays_periods"].values()
                                            if d is not None), default=None)
        results["missed"] = [(r["seed"], k) for r in seeds for k, d in r["delays_periods"].items()
                             if d is None]
        results["false_per_tenant_day"] = round(statistics.mean(
            r["false_per_tenant_day"] for r in seeds), 3)
        print(json.dumps({k: results[k] for k in ("summary", "max_delay_periods", "missed",
                                                  "false_per_tenant_day")}, indent=1), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
        if args.cost_rows:
            results["cost"] = cost(Path(tmp), args.cost_rows)
            print(json.dumps(results["cost"], indent=1), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
