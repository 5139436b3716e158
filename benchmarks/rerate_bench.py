"""Re-rate benchmark: one month of the largest tenant re-rated, summaries and balances refreshed.

    python -m benchmarks.rerate_bench [--rows 5000000] [--months 6]

On a generated store (benchmarks.dataset: three tenants, the first the largest)
with the generator's rate cards loaded, the benchmark raises the largest
tenant's customer rates for two countries (so money really changes), then
times, on the last full month of that tenant:

1. the preview (`--dry-run`): every call of the month priced, nothing written;
2. the re-rate job: stage, write new versions, rebuild that month's summary
   days, refresh the touched balances — phase by phase;
3. the undo of that job (the same work in reverse).

It checks, untimed, that the summary equals an aggregate of the CDRs after
each step, and that undo restored every call's money. Results go to
benchmarks/results/rerate.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from benchmarks import dataset
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import generate, recalc, summary
from cdrhouse.engine import ratecards as rc
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql.principal import Principal

END = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
OP = Principal.operator("acme")


def _timed_run(db: Database, req: recalc.RecalcRequest) -> tuple[dict, float, dict]:
    marks: list[tuple[str, float]] = []

    def progress(_fraction: float, phase: str) -> None:
        marks.append((phase, time.perf_counter()))

    t0 = time.perf_counter()
    job = recalc.run(db, req, OP, progress)
    end = time.perf_counter()
    phases = {}
    for (phase, t), (_, t_next) in zip(marks, marks[1:] + [("end", end)]):
        phases[phase] = round(t_next - t, 2)
    return job.result, round(end - t0, 2), phases


def _money(db: Database, first: dt.date, last: dt.date) -> list[tuple]:
    return db.rows(
        "SELECT sum(customer_charge), sum(carrier_cost), count() FROM cdr_records FINAL "
        "WHERE tenant_id = 'acme' AND toDate(start_time) BETWEEN {a:Date} AND {b:Date}",
        {"a": first, "b": last})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--months", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/rerate.json"))
    args = ap.parse_args()
    spec = generate.GenSpec(rows=args.rows, months=args.months, seed=7, end=END)
    first = dt.date(2026, 10, 1)
    last = dt.date(2026, 10, 31)
    result: dict = {"date": dt.date.today().isoformat(), "rows": args.rows,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform()},
                    "month": "2026-10", "tenant": "acme"}
    with tempfile.TemporaryDirectory(prefix="cdrhouse-rerate-bench-") as tmp:
        db = Database(StoreConfig(data_dir=Path(tmp)))
        migrate(db)
        t0 = time.perf_counter()
        dataset.load(db, spec)
        result["load_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        result["rates_loaded"] = generate.load_rate_cards(db, spec)
        result["load_rates_s"] = round(time.perf_counter() - t0, 2)
        # raise GB and DE by 10 % for every customer of acme: real money changes
        for a in acc.list_accounts(db, "acme", "customer"):
            rates = rc.list_rates(db, "acme", a)
            rc.store_rates(db, "acme", a, [
                dataclasses.replace(r, rate_per_min=(r.rate_per_min * 11 / 10).quantize(
                    Decimal("0.000001"))) if r.prefix in ("44", "49") else r for r in rates])
        month_calls = _money(db, first, last)[0][2]
        result["month_calls"] = month_calls
        before = _money(db, first, last)
        req = recalc.RecalcRequest("acme", "rerate", first, last)

        preview, result["preview_s"], _ = _timed_run(
            db, recalc.RecalcRequest("acme", "rerate", first, last, dry_run=True))
        result["preview"] = {k: preview[k] for k in ("calls_changed", "charge", "cost")}
        print(json.dumps({"preview_s": result["preview_s"], **result["preview"]}), flush=True)

        job, result["rerate_s"], result["rerate_phases"] = _timed_run(db, req)
        result["rerate"] = {k: job[k] for k in ("calls_changed", "charge", "cost", "days",
                                                "summary_rows_written", "balances_refreshed")}
        result["rerate_calls_per_s"] = round(job["calls_changed"] / result["rerate_s"])
        result["summary_exact_after_rerate"] = (
            summary.totals(db, "acme", first, last) == summary.truth(db, "acme", first, last))
        result["preview_equals_actual"] = result["preview"] == {
            k: job[k] for k in ("calls_changed", "charge", "cost")}
        print(json.dumps({"rerate_s": result["rerate_s"], **result["rerate_phases"]}), flush=True)

        job_id = [j for j in recalc.ud.list_jobs(db, tenant="acme", kind="recalc")
                  if not (j.params or {}).get("dry_run")][0].job_id
        _, result["undo_s"], result["undo_phases"] = _timed_run(
            db, recalc.RecalcRequest("acme", "undo", target_job=job_id))
        result["undo_restored_money"] = _money(db, first, last) == before
        result["summary_exact_after_undo"] = (
            summary.totals(db, "acme", first, last) == summary.truth(db, "acme", first, last))
        print(json.dumps({"undo_s": result["undo_s"], **result["undo_phases"]}), flush=True)
        db.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
