"""The audit trail's cost: the HTTP service with auditing on vs off, A/B, as ratios.

    python -m benchmarks.audit_bench [--rows 200000] [--clients 16] [--requests 800] [--rounds 3]

Builds one store of generated CDRs, then alternates two `cdrhouse` services on
127.0.0.1 over the same store (one at a time: the embedded engine is one process
per directory) — audit on (the default: every request recorded, buffered,
written each second) and audit off — for `--rounds` rounds each, in the order
on, off, off, on, … so that drift on a shared machine falls on both. Scenarios:
`GET /v1/fields` (no query at all: the request path's own cost, where recording
weighs most) and the viewer listing page of the load test. Reports throughput
and p50/p99 per variant, the on/off ratios, and the cost of building and
buffering one record measured alone. Everything it starts it stops.
"""

from __future__ import annotations

import contextlib
import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import httpx

from benchmarks import dataset
from benchmarks.load_test import END, scenario_request
from cdrhouse.engine import generate, keys
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from tests.ports import free_port


def serve(data_dir: str, port: int, audit: str) -> None:
    """The service in this process (the child): audit on or off."""
    import uvicorn

    from cdrhouse.api.app import create_app
    from cdrhouse.api.service import ServiceConfig
    from cdrhouse.engine.audit import AuditSettings
    config = ServiceConfig(store=StoreConfig(data_dir=Path(data_dir)), pool_size=4,
                           audit=AuditSettings(enabled=audit == "on"))
    uvicorn.run(create_app(config), host="127.0.0.1", port=port, log_level="warning",
                access_log=False, proxy_headers=False)


def build(data_dir: Path, rows: int) -> list[str]:
    db = Database(StoreConfig(data_dir=data_dir))
    migrate(db)
    if not db.scalar("SELECT count() FROM cdr_records"):
        dataset.load(db, generate.GenSpec(rows=rows, months=6, seed=3, end=END))
    secrets = [keys.create_key(db, "tenant:acme", "audit bench")[1]] + [
        keys.create_key(db, f"tenant:acme/customer:C{i:03d}", "audit bench")[1]
        for i in range(1, 4)]
    db.close()
    return secrets


async def load(base: str, secrets: list[str], scenario: str, clients: int, total: int) -> dict:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def worker(client: httpx.AsyncClient, secret: str) -> None:
        nonlocal errors
        for i in counter:
            if scenario == "fields":
                method, url, body = "GET", "/v1/fields", None
            else:
                method, url, body = scenario_request("listing", i)
            t0 = time.perf_counter()
            r = await client.request(method, url, json=body,
                                     headers={"Authorization": f"Bearer {secret}"})
            latencies.append(time.perf_counter() - t0)
            errors += r.status_code != 200

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=60,
                                 limits=httpx.Limits(max_connections=clients)) as client:
        await asyncio.gather(*(worker(client, secrets[i % len(secrets)])
                               for i in range(clients)))
    elapsed = time.perf_counter() - started
    lat = sorted(latencies)
    return {"requests": len(lat), "errors": errors, "req_per_s": len(lat) / elapsed,
            "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000}


def run_variant(data_dir: Path, audit: str, secrets: list[str], clients: int,
                total: int) -> dict:
    port = free_port()
    log = open(data_dir.parent / f"server-{audit}.log", "ab")
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.audit_bench", "--serve",
                              str(data_dir), str(port), audit],
                             stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            with contextlib.suppress(httpx.HTTPError):  # not listening yet: poll again
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.25)
        out = {}
        for scenario in ("fields", "listing"):
            asyncio.run(load(base, secrets, scenario, clients, clients * 4))   # warm-up
            out[scenario] = asyncio.run(load(base, secrets, scenario, clients, total))
        return out
    finally:
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()


def cpu_ab(data_dir: Path, secret: str, rounds: int, n: int) -> dict:
    """CPU seconds per request, in process (so other load on the machine weighs less):
    one app, recording switched on and off between blocks of `n` requests. Process CPU
    time includes the writer thread's flushes."""
    from fastapi.testclient import TestClient

    from cdrhouse.api.app import create_app
    from cdrhouse.api.service import ServiceConfig
    app = create_app(ServiceConfig(store=StoreConfig(data_dir=data_dir), pool_size=2))
    cpu: dict[str, dict[str, list[float]]] = {s: {"on": [], "off": []}
                                              for s in ("fields", "listing")}
    headers = {"Authorization": f"Bearer {secret}"}
    with TestClient(app) as client:
        writer = app.state.audit
        for scenario in ("fields", "listing"):
            for r in range(rounds):
                for variant in (("on", "off") if r % 2 == 0 else ("off", "on")):
                    app.state.audit = writer if variant == "on" else None
                    started = time.process_time()
                    for i in range(n):
                        if scenario == "fields":
                            resp = client.get("/v1/fields", headers=headers)
                        else:
                            method, url, body = scenario_request("listing", i)
                            resp = client.request(method, url, json=body, headers=headers)
                        assert resp.status_code == 200, resp.text
                    if variant == "on":
                        writer.flush()          # the write belongs to the "on" block
                    cpu[scenario][variant].append((time.process_time() - started) / n)
        app.state.audit = writer
    out = {}
    for scenario, v in cpu.items():
        on, off = statistics.median(v["on"]), statistics.median(v["off"])
        out[scenario] = {"cpu_ms_per_request_on": round(on * 1000, 3),
                         "cpu_ms_per_request_off": round(off * 1000, 3),
                         "cpu_on_over_off": round(on / off, 3)}
    return out


def record_cost() -> float:
    """Microseconds to build one audit record of a JSON request and buffer it."""
    from cdrhouse.api.audit import AuditTrail
    from cdrhouse.engine.audit import AuditSettings, AuditWriter

    class Route:
        path = "/v1/sql"
    writer = AuditWriter(lambda: None, AuditSettings(flush_seconds=3600, batch=10 ** 9,
                                                     max_buffered=10 ** 7))
    body = json.dumps({"sql": "SELECT country, count() FROM cdrs GROUP BY country",
                       "params": {}}).encode()
    scope = {"route": Route(), "method": "POST", "state": {"principal": "tenant:acme",
                                                           "key_id": "abc", "rows": 10},
             "headers": [(b"authorization", b"Bearer x"), (b"content-type", b"application/json")],
             "query_string": b"", "path_params": {}, "client": ("127.0.0.1", 1)}
    now = dt.datetime.now(dt.timezone.utc)

    def one() -> None:
        writer.add(AuditTrail._record(scope, now, 200, False, 1234, body, len(body), 0.01))
    n = 20000
    seconds = timeit.timeit(one, number=n)
    writer._stop.set()
    writer._wake.set()
    return seconds / n * 1e6


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=800)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/audit.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdrhouse-audit-") as tmp:
        data_dir = Path(tmp) / "data"
        secrets = build(data_dir, args.rows)
        runs: dict[str, list[dict]] = {"on": [], "off": []}
        order = [v for i in range(args.rounds) for v in (("on", "off") if i % 2 == 0
                                                        else ("off", "on"))]
        for variant in order:
            r = run_variant(data_dir, variant, secrets, args.clients, args.requests)
            runs[variant].append(r)
            print(json.dumps({variant: r}), flush=True)
        db = Database(StoreConfig(data_dir=data_dir))
        recorded = db.scalar("SELECT count() FROM audit_log")
        db.close()
        in_process = cpu_ab(data_dir, secrets[0], args.rounds * 2, 100)
    summary: dict = {"date": dt.date.today().isoformat(), "rows": args.rows,
                     "clients": args.clients, "requests": args.requests,
                     "rounds": args.rounds, "cpus": os.cpu_count(),
                     "records_written_by_the_on_runs": recorded,
                     "record_build_and_buffer_us": round(record_cost(), 1),
                     "in_process_cpu": in_process, "scenarios": {}}
    for scenario in ("fields", "listing"):
        s: dict = {}
        for variant in ("on", "off"):
            rs = [r[scenario] for r in runs[variant]]
            s[variant] = {k: round(statistics.median(r[k] for r in rs), 1)
                          for k in ("req_per_s", "p50_ms", "p99_ms")}
            s[variant]["errors"] = sum(r["errors"] for r in rs)
        s["throughput_on_over_off"] = round(s["on"]["req_per_s"] / s["off"]["req_per_s"], 3)
        s["p50_on_over_off"] = round(s["on"]["p50_ms"] / s["off"]["p50_ms"], 3)
        summary["scenarios"][scenario] = s
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
