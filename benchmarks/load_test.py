"""Load test of the HTTP API: 32 concurrent clients on loopback, bounded in requests and time.

    python -m benchmarks.load_test [--rows 5000000] [--clients 32] [--requests 1500]

Builds a store of generated CDRs (or reuses `--data-dir` if it already holds
one), starts `cdrhouse serve` on 127.0.0.1 in a subprocess, creates keys, and for
each scenario (viewer listing page, builder search page, user SQL aggregate)
runs `--requests` requests from `--clients` concurrent clients with varying
parameters, then reports throughput and p50/p99 latency. Everything it starts
it stops; it sends traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks import dataset
from cdrhouse.engine import generate, keys
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from tests.ports import free_port

END = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def build_store(data_dir: Path, rows: int, dsn: str | None = None) -> dict[str, str]:
    db = Database(StoreConfig(data_dir=data_dir, clickhouse=dsn))
    migrate(db)
    if not db.scalar("SELECT count() FROM cdr_records"):
        dataset.load(db, generate.GenSpec(rows=rows, months=6, seed=3, end=END))
    # the users: the tenant's operator, and eight customer users of acme
    customers = [f"tenant:acme/customer:C{i:03d}" for i in range(1, 9)]
    secrets = {"operators": [keys.create_key(db, "tenant:acme", "load test")[1]],
               "customers": [keys.create_key(db, c, "load test")[1] for c in customers]}
    db.close()
    return secrets


def scenario_request(name: str, i: int) -> tuple[str, str, dict | None]:
    rng = random.Random(i)
    day = END - dt.timedelta(days=rng.randint(8, 150))
    frm, to = day.strftime("%Y-%m-%d"), (day + dt.timedelta(days=7)).strftime("%Y-%m-%d")
    if name == "fields":      # no query: authentication (cached) and JSON, Python only
        return "GET", "/v1/fields", None
    if name == "listing":
        return "GET", f"/v1/cdrs?range=custom&from={frm}&to={to}&limit=100", None
    if name == "search":
        return "POST", "/v1/cdrs/search", {
            "range": "custom", "from": frm, "to": to, "limit": 100,
            "rules": {"condition": "AND", "rules": [
                {"field": "billsec", "operator": "greater", "value": rng.randint(0, 60)},
                {"field": "country", "operator": "in", "value": rng.sample(["US", "GB", "DE", "FR", "IN"], 2)}]}}
    return "POST", "/v1/sql", {
        "sql": "SELECT country, count() AS calls, sum(billsec) AS talk FROM cdrs "
               "WHERE start_time >= {f:DateTime64(3, 'UTC')} AND start_time < {t:DateTime64(3, 'UTC')} "
               "GROUP BY country ORDER BY talk DESC LIMIT 10",
        "params": {"f": f"{frm} 00:00:00", "t": f"{to} 00:00:00"}}


async def run_scenario(base: str, secrets: list[str], name: str, clients: int, total: int,
                       max_seconds: float, first: int = 0, client: str = "httpx") -> dict:
    """`clients` concurrent clients, client i using key i mod len(secrets); requests
    `first` … `first + total - 1` of the scenario (each number its own parameters).

    `client`: the HTTP library the clients use. "httpx" (the default, as every table
    before 2026-11-30 was measured) costs 1.5-2.6 ms of CPU per request on the cores the
    server runs on; "aiohttp" (C-accelerated parsing) 0.2-0.8 ms, so less of the machine
    goes to the load generator (benchmarks/README.md, *A leaner load generator, and the
    code of 2026-11-22 beside this one again*)."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(first, first + total))
    deadline = time.monotonic() + max_seconds

    # one session for all clients, and how one request is sent and its status read
    if client == "httpx":
        transport_errors: tuple[type[BaseException], ...] = (httpx.TransportError,)
        session = httpx.AsyncClient(base_url=base, timeout=60,
                                    limits=httpx.Limits(max_connections=clients))

        async def send(method: str, url: str, body: dict | None, headers: dict) -> int:
            return (await session.request(method, url, json=body, headers=headers)).status_code
    elif client == "aiohttp":
        import aiohttp   # the bench extra (pyproject.toml)
        transport_errors = (aiohttp.ClientError, asyncio.TimeoutError)
        session = aiohttp.ClientSession(base_url=base, timeout=aiohttp.ClientTimeout(total=60),
                                        connector=aiohttp.TCPConnector(limit=clients))

        async def send(method: str, url: str, body: dict | None, headers: dict) -> int:
            async with session.request(method, url, json=body, headers=headers) as r:
                await r.read()
                return r.status
    else:
        raise ValueError(f"unknown load-generator client {client!r} (httpx, aiohttp)")

    async def worker(secret: str) -> None:
        nonlocal errors
        headers = {"Authorization": f"Bearer {secret}"}
        for i in counter:
            if time.monotonic() > deadline:
                return
            method, url, body = scenario_request(name, i)
            t0 = time.perf_counter()
            try:
                status = await send(method, url, body, headers)
            except transport_errors:      # a dropped connection is an error, not a crash
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors += 1

    started = time.perf_counter()
    async with session:
        await asyncio.gather(*(worker(secrets[i % len(secrets)]) for i in range(clients)))
    elapsed = time.perf_counter() - started
    lat = sorted(latencies) or [float("nan")]    # nothing answered: say so, do not crash
    return {"requests": len(latencies), "errors": errors, "seconds": round(elapsed, 1),
            "req_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(statistics.median(lat) * 1000, 1),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/load.json"))
    ap.add_argument("--server", action="store_true",
                    help="Serve the store through the engine's HTTP interface (a ClickHouse "
                         "server on 127.0.0.1, tests/chserver.py) instead of the embedded engine.")
    ap.add_argument("--workers", default="1",
                    help="Comma-separated `cdrhouse serve --workers` counts to measure in turn "
                         "(more than 1 needs --server).")
    ap.add_argument("--warmup", type=int, default=0,
                    help="Requests of each scenario sent, per role, before measuring it and "
                         "not counted: a fresh server's first pages fill its caches (marks, "
                         "keys) and land in the p99 of a short run. Default 0, as in the "
                         "2026-11-22 table; benchmarks/README.md reports both.")
    ap.add_argument("--client", choices=("httpx", "aiohttp"), default="httpx",
                    help="The load generator's HTTP library: httpx (as the tables before "
                         "2026-11-30) or aiohttp (less CPU per request on the server's cores).")
    ap.add_argument("--scenarios", default="listing,search,sql",
                    help="Comma-separated: listing, search, sql, and fields (a page with no "
                         "query: where Python alone is the limit).")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    if max(workers) > 1 and not args.server:
        ap.error("--workers above 1 needs --server: the embedded engine has one owner process")
    tmp = tempfile.TemporaryDirectory(prefix="cdrhouse-load-")
    data_dir = args.data_dir or Path(tmp.name)
    engine = None
    if args.server:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from chserver import ClickHouseHTTPServer  # the test suite's server fixture
        engine = ClickHouseHTTPServer(Path(tmp.name) / "engine").start()
    results = {"date": dt.date.today().isoformat(), "rows": args.rows, "clients": args.clients,
               "pool": args.pool, "cpus": os.cpu_count(), "load_before": os.getloadavg(),
               "engine": "http" if engine else "embedded", "client": args.client,
               "scenarios": {}}
    try:
        secrets = build_store(data_dir, args.rows, engine.dsn if engine else None)
        for n in workers:
            label = f" ({n} worker{'s' if n > 1 else ''})" if len(workers) > 1 or n > 1 else ""
            for name, r in _measure(args, data_dir, engine, secrets, n, Path(tmp.name)):
                results["scenarios"][name + label] = r
                print(json.dumps({name + label: r}), flush=True)
    finally:
        if engine is not None:
            engine.stop()
        tmp.cleanup()
    results["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| scenario | requests | req/s | p50 ms | p99 ms | errors | server CPU ms/req "
          "| of it event loop | client CPU ms/req |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results["scenarios"].items():
        print(f"| {name} | {r['requests']} | {r['req_per_s']} | {r['p50_ms']} | {r['p99_ms']} "
              f"| {r['errors']} | {r['server_cpu_ms']} | {r.get('loop_cpu_ms', '')} "
              f"| {r['client_cpu_ms']} |")


def _run_paused_gc(scenario):
    """Run one scenario with Python's cyclic garbage collector off, and collect after.

    Why: a full collection of this process (its httpx and asyncio objects) paused it
    70-120 ms at a time while 32 requests were in flight, and every pause landed in
    their measured latency: the load generator's pauses, not the server's. A scenario's
    garbage is small; it is collected between scenarios, outside the measurement."""
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(scenario)
    finally:
        gc.enable()
        gc.collect()


def _stat_cpu(stat: Path, children: bool) -> float:
    """User + system CPU seconds from a /proc stat file (Linux); `children` adds the
    waited-for children's."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15 if children else 13]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU of a process and its waited-for children. Per request, this is the steadier
    number on a shared machine: throughput and latency move with whatever else runs,
    the CPU a request costs much less."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"), children=True)


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """CPU of one thread of a process. The server's main thread (tid == pid) is its
    event loop: pure Python (HTTP, middleware, FastAPI, the endpoints), apart from the
    engine, which runs in the worker and engine threads."""
    return _stat_cpu(Path(f"/proc/{pid}/task/{tid}/stat"), children=False)


def _measure(args, data_dir: Path, engine, secrets: dict, workers: int, tmp: Path):
    """Start `cdrhouse serve --workers N`, run every scenario against it, stop it."""
    port = free_port()
    env = {**os.environ, "CDRHOUSE_DATA_DIR": str(data_dir)}
    env.pop("CDRHOUSE_CLICKHOUSE", None)
    if engine is not None:
        env["CDRHOUSE_CLICKHOUSE"] = engine.dsn
    # the server's access log goes to a file: an unread pipe would fill up and
    # block the server's event loop on its next log line
    server_log = open(tmp / f"server-{workers}.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "cdrhouse.api.cli", "serve", "--host", "127.0.0.1",
                               "--port", str(port), "--pool", str(args.pool),
                               "--workers", str(workers), "--tier-schedule", "off",
                               "--backup-schedule", "off"],
                              env=env, stdout=subprocess.DEVNULL, stderr=server_log)
    base = f"http://127.0.0.1:{port}"
    out = []
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        if workers > 1:        # every worker up and beating before measuring
            time.sleep(15)
        for who, secret in secrets.items():  # who: operators (1 key) or customers (8 keys)
            for name in args.scenarios.split(","):
                if args.warmup:
                    # other parameters than the measured requests': nothing is reused
                    _run_paused_gc(run_scenario(base, secret, name, args.clients, args.warmup,
                                                args.max_seconds, first=10**6,
                                                client=args.client))
                server_cpu, client_cpu = cpu_seconds(server.pid), os.times()
                loop_cpu = thread_cpu_seconds(server.pid, server.pid)
                r = _run_paused_gc(run_scenario(base, secret, name, args.clients, args.requests,
                                                args.max_seconds, client=args.client))
                n = max(r["requests"], 1)
                r["server_cpu_ms"] = round((cpu_seconds(server.pid) - server_cpu) * 1000 / n, 2)
                r["loop_cpu_ms"] = round((thread_cpu_seconds(server.pid, server.pid) - loop_cpu)
                                         * 1000 / n, 2)
                spent = os.times()
                r["client_cpu_ms"] = round((spent.user + spent.system - client_cpu.user
                                            - client_cpu.system) * 1000 / n, 2)
                out.append((f"{name} as {who}", r))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:   # never leave a server behind
            server.kill()
            server.wait()
        server_log.close()
    return out


if __name__ == "__main__":
    main()
