"""Two ideas for a customer's page, measured before building either: several pages in one
engine query, and the page's settings set once per connection.

    python -m benchmarks.page_batch --data-dir STORE [--rounds 200]

STORE is a store built by `benchmarks.load_test` (5M CDRs). What is left of a customer's
page is the engine planning the same query again for every page (benchmarks/README.md,
"Where the rest of a customer's page goes"). So:

- **batched**: k customers' pages (different customers, different 7-day windows, as k
  concurrent users would ask) compiled as served, their parameters renamed per page, and
  sent as one `UNION ALL` query, each page tagged so its rows can be told apart; does
  the engine's fixed cost per query spread over the k pages?
- **settings on the connection**: the page's ~20 settings (limits, read settings) set
  once with `SET` on a client of their own, and the page sent without its `SETTINGS`
  clause.

Single client on the embedded engine; CPU time of this process (the engine runs in it)
per page, variants shuffled each round. Writes benchmarks/results/page_batch.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import resource
import statistics
from pathlib import Path
from typing import Any

from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.sql.limits import limits_for
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import ViewRequest, compile_view

END = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)   # benchmarks.load_test's data end
NOW = dt.datetime(2026, 11, 29, tzinfo=dt.timezone.utc)
BATCHES = (2, 4, 8)


def page(principal: Principal, i: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A customer's listing page as served: sql, parameters, settings."""
    rng = random.Random(i)
    day = END - dt.timedelta(days=rng.randint(8, 150))
    req = ViewRequest(range="custom", date_from=day.strftime("%Y-%m-%d"),
                      date_to=(day + dt.timedelta(days=7)).strftime("%Y-%m-%d"), limit=100)
    c = compile_view(req, principal, NOW)
    return c.sql, dict(c.parameters), {**c.settings, **limits_for(principal.role)}


def union(pages: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> tuple[str, dict]:
    """The pages as one query: parameters prefixed per page, rows tagged `__page`."""
    parts, params = [], {}
    for j, (sql, ps, _) in enumerate(pages):
        renamed = re.sub(r"\{(\w+):", lambda m, j=j: f"{{b{j}_{m.group(1)}:", sql)
        parts.append(f"SELECT {j} AS __page, * FROM ({renamed})")
        params.update({f"b{j}_{k}": v for k, v in ps.items()})
    return "\nUNION ALL\n".join(parts), params


def cpu_ms() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime + r.ru_stime) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/page_batch.json"))
    args = ap.parse_args()
    db = Database(StoreConfig(data_dir=args.data_dir))
    session = Database(StoreConfig(data_dir=args.data_dir))
    customers = [Principal.customer("acme", int(a)) for (a,) in db.rows(
        "SELECT account_id FROM accounts FINAL WHERE tenant_id = 'acme' AND kind = 'customer' "
        "ORDER BY code LIMIT 8")]
    _, _, settings = page(customers[0], 0)
    for name, value in settings.items():
        if name != "readonly":      # (readonly = 1 would refuse the next SET)
            literal = f"'{value}'" if isinstance(value, str) else str(value)
            session.command(f"SET {name} = {literal}")

    def pages(r: int, k: int) -> list[tuple[str, dict, dict]]:
        return [page(customers[(r + j) % len(customers)], r * 10 + j) for j in range(k)]

    # the same rows either way: each page alone, and the pages of one batch split by tag
    alone = [db.rows(sql, ps, st) for sql, ps, st in pages(0, 4)]
    sql, ps = union(pages(0, 4))
    tagged = db.rows(sql, ps, settings)
    assert [[row[1:] for row in tagged if row[0] == j] for j in range(4)] == alone

    variants = ["alone", "settings on the connection", *(f"batch of {k}" for k in BATCHES)]
    per_page: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = list(variants)
        random.Random(r).shuffle(order)
        for v in order:
            if v == "alone":
                sql, ps, st = pages(r, 1)[0]
                t0 = cpu_ms()
                db.rows(sql, ps, st)
                per_page[v].append(cpu_ms() - t0)
            elif v == "settings on the connection":
                sql, ps, _ = pages(r, 1)[0]
                t0 = cpu_ms()
                session.rows(sql, ps, {"readonly": 1})
                per_page[v].append(cpu_ms() - t0)
            else:
                k = int(v.rsplit(" ", 1)[1])
                sql, ps = union(pages(r, k))
                t0 = cpu_ms()
                db.rows(sql, ps, settings)
                per_page[v].append((cpu_ms() - t0) / k)
    skip = min(10, args.rounds // 5)
    results = {}
    for v, xs in per_page.items():
        kept = xs[skip:]
        results[v] = {"cpu_ms_per_page_median": round(statistics.median(kept), 3),
                      "cpu_ms_per_page_mean": round(statistics.mean(kept), 3)}
        print(f"{v:28s} CPU per page: median {statistics.median(kept):6.2f} ms, "
              f"mean {statistics.mean(kept):6.2f} ms")
    db.close()
    session.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "per_page": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
