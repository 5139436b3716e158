"""A tenant's filtered pages, served as today against how they were served before the
time-ordered copy (schema 016): single client, pages compared row by row.

"Before" is `cdr_records` with its recent slices (1 day, 8 days, then the whole range,
as `engine.query.run_view` did); "now" is `run_view` itself (the copy: its last day
first for a filtered page, then the whole range). Filters from common to matching
nothing, over a week, a month and everything, so that the walk back through a rare
filter shows.

    python -m benchmarks.filtered_pages --data-dir STORE [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path

from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.query import run_view
from cdrhouse.sql.limits import limits_for
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import ViewRequest, compile_view, reads_by_time, time_slices

#: the load test's data end (benchmarks.load_test.END)
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
FILTERS = {
    "billsec > 30 (common)": [{"field": "billsec", "operator": "greater", "value": 30}],
    "country IN, FAILED": [{"field": "country", "operator": "equal", "value": "IN"},
                           {"field": "disposition", "operator": "equal", "value": "FAILED"}],
    "billsec > 3000 (rare)": [{"field": "billsec", "operator": "greater", "value": 3000}],
    "billsec > 100000 (none)": [{"field": "billsec", "operator": "greater", "value": 100000}],
}


def before(db: Database, principal: Principal, request: ViewRequest) -> list[tuple]:
    """The page as served before schema 016: cdr_records, recent slices first."""
    compiled = compile_view(request, principal, NOW)
    limits = limits_for(principal.role)
    for since in time_slices(request, principal, NOW):
        sliced = compile_view(request, principal, NOW, newer_than=since)
        rows = db.rows(sliced.sql, sliced.parameters, {**limits, **sliced.settings})
        if len(rows) > (compiled.limit or 0):
            return compiled.page(rows).rows
    return compiled.page(db.rows(compiled.sql, compiled.parameters,
                                 {**limits, **compiled.settings})).rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/filtered_pages.json"))
    args = ap.parse_args()
    db = Database(StoreConfig(data_dir=args.data_dir))
    principal = Principal.operator("acme")
    results = []
    for span in ("last_7_days", "last_30_days", "all"):
        for name, rules in FILTERS.items():
            request = ViewRequest(range=span, limit=100,
                                  rules={"condition": "AND", "rules": rules})
            assert reads_by_time(request, principal)
            times: dict[str, list[float]] = {"before": [], "now": []}
            for i in range(args.rounds):
                order = ["before", "now"] if i % 2 else ["now", "before"]
                pages = {}
                for which in order:
                    t0 = time.perf_counter()
                    pages[which] = (before(db, principal, request) if which == "before"
                                    else run_view(db, principal, request, now=NOW).rows)
                    times[which].append((time.perf_counter() - t0) * 1000)
                assert pages["before"] == pages["now"], (span, name)
            row = {"range": span, "filter": name, "rows": len(pages["now"]),
                   **{k: round(statistics.median(v), 1) for k, v in times.items()}}
            results.append(row)
            print(f"| {span} | {name} | {row['rows']} | {row['before']} | {row['now']} |")
    args.out.write_text(json.dumps({"date": dt.date.today().isoformat(), "results": results},
                                   indent=2))


if __name__ == "__main__":
    main()
