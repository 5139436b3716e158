"""The engine's floor of one viewer page: the page as compiled, then the same query
stripped step by step (no time-zone wrapper, no FINAL, two columns, a count, only its
plan, SELECT 1).

    python -m benchmarks.page_floor --data-dir STORE [--rounds 21]

STORE is a store built by `benchmarks.load_test` (e.g. `--data-dir` of a 5M run). Single
client on the embedded engine, moving 7-day windows of tenant acme, as its operator and
as customer C001; the variants run in a shuffled order each round, so drift affects them
alike. Prints median and minimum milliseconds per variant and writes them as JSON.
What the steps mean is in benchmarks/README.md ("the engine's floor of one page").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import time
from pathlib import Path

from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.sql.limits import limits_for
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import ViewRequest, compile_view, time_slices

END = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)   # benchmarks.load_test's data end
NOW = dt.datetime(2026, 11, 29, tzinfo=dt.timezone.utc)


def request(i: int) -> ViewRequest:
    rng = random.Random(i)
    day = END - dt.timedelta(days=rng.randint(8, 150))
    return ViewRequest(range="custom", date_from=day.strftime("%Y-%m-%d"),
                       date_to=(day + dt.timedelta(days=7)).strftime("%Y-%m-%d"), limit=100)


def variants(principal: Principal, i: int) -> dict[str, tuple[str, dict]]:
    """The page and its stripped forms, each (sql, parameters)."""
    r = request(i)
    page = compile_view(r, principal, NOW)
    out = {"as compiled (full range)": (page.sql, page.parameters)}
    slices = time_slices(r, principal, NOW)
    if slices:
        first = compile_view(r, principal, NOW, newer_than=slices[0])
        out["first slice (1 day)"] = (first.sql, first.parameters)
    inner = page.sql
    if "FROM (\n" in inner:                     # the toTimeZone wrapper around the page
        inner = inner.split("FROM (\n", 1)[1].rsplit("\n)", 1)[0]
    rest = inner.split("\n", 1)[1]
    out["no toTimeZone wrapper"] = (inner, page.parameters)
    out["no FINAL"] = (inner.replace(" FINAL", ""), page.parameters)
    out["start_time, call_id only"] = ("SELECT start_time, call_id\n" + rest, page.parameters)
    out["count() of the range"] = ("SELECT count()\n" + rest.split("ORDER BY")[0], page.parameters)
    # parse, analysis and planning (index analysis included), nothing read or sent
    out["its plan only (EXPLAIN)"] = ("EXPLAIN PLAN " + page.sql, page.parameters)
    out["SELECT 1"] = ("SELECT 1", {})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/page_floor.json"))
    args = ap.parse_args()
    db = Database(StoreConfig(data_dir=args.data_dir))
    account = db.scalar("SELECT account_id FROM accounts FINAL "
                        "WHERE tenant_id = 'acme' AND code = 'C001'")
    who = {"customer": Principal.customer("acme", account), "tenant": Principal.operator("acme")}
    results: dict[str, dict[str, float]] = {}
    for role, principal in who.items():
        times: dict[str, list[float]] = {name: [] for name in variants(principal, 0)}
        for i in range(args.rounds):
            todo = variants(principal, i)
            order = list(todo)
            random.Random(i).shuffle(order)
            for name in order:
                sql, params = todo[name]
                t0 = time.perf_counter()
                db.query(sql, params, limits_for(principal.role))
                times[name].append((time.perf_counter() - t0) * 1000)
        for name, ts in times.items():
            print(f"{role:9s} {name:26s} median {statistics.median(ts):6.1f}  min {min(ts):6.1f}")
            results[f"{role}: {name}"] = {"median_ms": round(statistics.median(ts), 2),
                                          "min_ms": round(min(ts), 2)}
    db.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
