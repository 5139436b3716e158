"""Fair scheduling (issue 12.6): a light tenant's page latency while another tenant is heavy.

    python -m benchmarks.fairness [--rows 1000000] [--pages 200] [--heavy-clients 10]

Builds a store of generated CDRs, starts `cdrhouse serve` on 127.0.0.1 (pool 4),
and measures one customer of globex fetching 5-row pages, one request at a time:

1. **idle** — nothing else runs;
2. **loaded** — meanwhile `--heavy-clients` clients on two customer keys of acme
   loop the heaviest queries their role may run (a full-history self-join, which
   the join limit now stops early, and full-history GROUP BY scans), as in the
   review that found a 26.6 s page;
3. **loaded, cap = pool** (`--per-tenant 4`): the same with the tenant cap equal
   to the pool, the configuration before the fix (round-robin still on).

Reports p50/p99 of the light pages and the loaded/idle p99 ratio (target ≤ 2×), plus
how many heavy queries ran and how they ended. Everything it starts it stops; it
sends traffic only to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks import dataset
from cdrhouse.engine import generate, keys
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from tests.ports import free_port

END = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
HEAVY_SQL = (
    # the review's hostile self-join (a key's whole history on both sides)
    "SELECT count() FROM cdrs AS a JOIN cdrs AS b ON a.dst_number = b.dst_number",
    # full-history scans with big GROUP BYs: allowed, and as heavy as the limits permit
    "SELECT src_number, dst_number, count() AS n, sum(billsec) FROM cdrs "
    "GROUP BY src_number, dst_number ORDER BY n DESC LIMIT 10",
    "SELECT toStartOfHour(start_time) AS h, uniqExact(dst_number), quantiles(0.5, 0.9)(billsec)"
    " FROM cdrs GROUP BY h ORDER BY h DESC LIMIT 10",
)


def build_store(data_dir: Path, rows: int) -> dict[str, list[str]]:
    db = Database(StoreConfig(data_dir=data_dir))
    migrate(db)
    if not db.scalar("SELECT count() FROM cdr_records"):
        dataset.load(db, generate.GenSpec(rows=rows, months=6, seed=5, end=END))
    secrets = {
        "heavy": [keys.create_key(db, f"tenant:acme/customer:C00{i}", "fairness")[1]
                  for i in (1, 2)],
        "light": [keys.create_key(db, "tenant:globex/customer:C001", "fairness")[1]],
    }
    db.close()
    return secrets


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 1)


async def light_pages(base: str, secret: str, pages: int) -> dict:
    latencies, errors = [], Counter()
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        for i in range(pages):
            t0 = time.perf_counter()
            r = await client.get("/v1/cdrs", params={"range": "all", "limit": 5}, headers=headers)
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors[str(r.status_code)] += 1
    return {"pages": pages, "p50_ms": _pct(latencies, 0.5), "p99_ms": _pct(latencies, 0.99),
            "max_ms": _pct(latencies, 1.0), "errors": dict(errors)}


async def heavy_load(base: str, secrets: list[str], clients: int, stop: asyncio.Event,
                     outcomes: Counter) -> None:
    async def one(i: int) -> None:
        headers = {"Authorization": f"Bearer {secrets[i % len(secrets)]}"}
        async with httpx.AsyncClient(base_url=base, timeout=300) as client:
            n = i
            while not stop.is_set():
                sql = HEAVY_SQL[n % len(HEAVY_SQL)]
                n += 1
                r = await client.post("/v1/sql", json={"sql": sql}, headers=headers)
                kind = r.json().get("type", "ok") if r.status_code != 200 else "ok"
                outcomes[f"{r.status_code} {kind}"] += 1
    await asyncio.gather(*(one(i) for i in range(clients)))


async def loaded(base: str, secrets: dict, pages: int, clients: int) -> dict:
    stop, outcomes = asyncio.Event(), Counter()
    heavy = asyncio.ensure_future(heavy_load(base, secrets["heavy"], clients, stop, outcomes))
    await asyncio.sleep(2)  # let the heavy clients fill the queue first
    light = await light_pages(base, secrets["light"][0], pages)
    stop.set()
    await heavy
    return {**light, "heavy_queries": dict(outcomes)}


def serve(data_dir: Path, log_dir: Path, pool: int, per_tenant: int | None):
    port = free_port()
    env = {**os.environ, "CDRHOUSE_DATA_DIR": str(data_dir)}
    env.pop("CDRHOUSE_CLICKHOUSE", None)
    cmd = [sys.executable, "-m", "cdrhouse.api.cli", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--pool", str(pool), "--tier-schedule", "off"]
    if per_tenant is not None:
        cmd += ["--per-tenant", str(per_tenant)]
    log = open(log_dir / f"server-{per_tenant}.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        with contextlib.suppress(httpx.HTTPError):  # not listening yet: poll again
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                break
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited; see {log.name}")
        time.sleep(0.5)
    return proc, log, base


def stop(proc: subprocess.Popen, log) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # never leave a server behind
        proc.kill()
        proc.wait()
    log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--heavy-clients", type=int, default=10)
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fairness.json"))
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="cdrhouse-fair-")
    data_dir = args.data_dir or Path(tmp.name)
    secrets = build_store(data_dir, args.rows)
    results: dict = {"date": dt.date.today().isoformat(), "rows": args.rows,
                     "pool": args.pool, "heavy_clients": args.heavy_clients,
                     "cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    try:
        for label, per_tenant in (("fair", None), ("cap = pool", args.pool)):
            proc, log, base = serve(data_dir, Path(tmp.name), args.pool, per_tenant)
            try:
                asyncio.run(light_pages(base, secrets["light"][0], 20))  # warm up
                idle = asyncio.run(light_pages(base, secrets["light"][0], args.pages))
                busy = asyncio.run(loaded(base, secrets, args.pages, args.heavy_clients))
            finally:
                stop(proc, log)
            results[label] = {"idle": idle, "loaded": busy,
                              "p99_ratio": round(busy["p99_ms"] / idle["p99_ms"], 2)}
            print(json.dumps({label: results[label]}), flush=True)
    finally:
        tmp.cleanup()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| server | light p50 idle | p99 idle | p50 loaded | p99 loaded | p99 ratio | "
          "light errors | heavy queries |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for label in ("fair", "cap = pool"):
        r = results[label]
        print(f"| {label} | {r['idle']['p50_ms']} | {r['idle']['p99_ms']} | "
              f"{r['loaded']['p50_ms']} | {r['loaded']['p99_ms']} | {r['p99_ratio']}x | "
              f"{r['loaded']['errors'] or '-'} | {r['loaded']['heavy_queries']} |")


if __name__ == "__main__":
    main()
