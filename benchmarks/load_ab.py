"""A/B of the HTTP API under load: two builds of cdrhouse, alternating, on one store.

    python -m benchmarks.load_ab --data-dir STORE --a /path/to/base/.venv/bin/python \
        [--b python] [--rounds 3] [--requests 300] [--clients 32] [--warmup 64]

    # the code of 2026-11-22 (commit fd0efd7, its own venv and its own store built by
    # its own benchmarks.load_test.build_store) against this one, on this one's store:
    python -m benchmarks.load_ab --data-dir STORE --a OLD/.venv/bin/python \
        --a-store OLD_STORE --a-module api.cli --scenarios "listing as operators,..."

On a shared machine absolute latencies move with the neighbours' load, so this
compares two servers (each the `cdrhouse serve` of its own interpreter, e.g. a
checkout of main in its own venv against this one) *alternately*: round r runs
A then B (B then A on odd rounds) on the same store, each scenario of
`benchmarks.load_test`, and reports per scenario the median req/s, p50 and p99
of each side and the ratio B/A. The load average is recorded with every run.
The embedded store admits one process at a time, so the servers never overlap.
Each side may have its own store (`--a-store`, `--b-store`: a build whose schema
differs needs one built by its own code) and its own entry module (`--a-module`:
before the package was named `cdrhouse`, the server was `python -m api.cli`). The
load generator is this tree's (`benchmarks.load_test.run_scenario`, its collector
paused per scenario) for both sides, and each result carries the server's CPU per
request (`server_cpu_ms`, from /proc: the steadier number on a shared machine).
Keys are created once by `benchmarks.load_test.build_store` (pass the same
`--data-dir`); everything started is stopped; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.load_test import _run_paused_gc, build_store, cpu_seconds, run_scenario
from tests.ports import free_port

SCENARIOS = (("operators", "listing"), ("operators", "search"),
             ("customers", "listing"), ("customers", "search"))


#: the server's entry module today; "api.cli" is the layout of 2026-11-22 (no package name,
#: and no schedules to turn off: that code had none)
MODULE = "cdrhouse.api.cli"


def serve(python: str, data_dir: Path, pool: int, log: Path,
          module: str = MODULE) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "CDRHOUSE_DATA_DIR": str(data_dir)}
    env.pop("CDRHOUSE_CLICKHOUSE", None)
    out = open(log, "ab")
    schedules = ["--tier-schedule", "off", "--backup-schedule", "off"] if module == MODULE else []
    proc = subprocess.Popen([python, "-m", module, "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--pool", str(pool), *schedules],
                            env=env, stdout=subprocess.DEVNULL, stderr=out,
                            # a checkout's venv: run from the checkout
                            cwd=str(Path(python).parents[2]) if "/.venv/" in python else None)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        with contextlib.suppress(httpx.HTTPError):  # not listening yet: poll again
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return proc, base
        if proc.poll() is not None:
            raise SystemExit(f"server {python} exited; see {log}")
        time.sleep(0.5)
    stop(proc)
    raise SystemExit(f"server {python} not ready; see {log}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def refresh(base: str, secrets: list[str], clients: int, total: int, conditional: bool,
                  max_seconds: float) -> dict:
    """A dashboard refreshing unchanged views: each client re-asks one fixed page (one per
    client: 7-day windows over the months), with `If-None-Match` of its last answer when
    `conditional`, without it otherwise."""
    import statistics as st
    lat: list[float] = []
    codes: dict[int, int] = {}
    counter = iter(range(total))
    deadline = time.monotonic() + max_seconds

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        url = (f"/v1/cdrs?range=custom&from=2026-{5 + n % 5:02d}-{1 + n % 20:02d}"
               f"&to=2026-{5 + n % 5:02d}-{8 + n % 20:02d}&limit=100")
        headers = {"Authorization": f"Bearer {secrets[n % len(secrets)]}"}
        tag = None
        for _ in counter:
            if time.monotonic() > deadline:
                return
            h = {**headers, **({"If-None-Match": tag} if conditional and tag else {})}
            t0 = time.perf_counter()
            r = await client.get(url, headers=h)
            lat.append(time.perf_counter() - t0)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            tag = r.headers.get("etag", tag)

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=60,
                                 limits=httpx.Limits(max_connections=clients)) as client:
        await asyncio.gather(*(worker(client, i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    lat.sort()
    return {"requests": len(lat), "codes": codes, "req_per_s": round(len(lat) / elapsed, 1),
            "p50_ms": round(st.median(lat) * 1000, 1),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1),
            "load1": round(os.getloadavg()[0], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--a", default=sys.executable, help="python of build A (the baseline)")
    ap.add_argument("--b", default=sys.executable, help="python of build B")
    ap.add_argument("--a-store", type=Path, default=None,
                    help="build A's store (default --data-dir), with its load-secrets.json")
    ap.add_argument("--b-store", type=Path, default=None, help="build B's store (default --data-dir)")
    ap.add_argument("--a-module", default=MODULE, help=f"build A's server module (default {MODULE})")
    ap.add_argument("--b-module", default=MODULE)
    ap.add_argument("--warmup", type=int, default=0,
                    help="requests of each scenario sent before measuring it (not counted)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=90)
    ap.add_argument("--scenarios", default=",".join(f"{n} as {w}" for w, n in SCENARIOS))
    ap.add_argument("--client", choices=("httpx", "aiohttp"), default="httpx",
                    help="the load generator's HTTP library (benchmarks.load_test --client)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/load_ab.json"))
    ap.add_argument("--refresh", action="store_true",
                    help="instead: build B only, a dashboard refreshing unchanged pages, "
                         "plain vs conditional (If-None-Match) rounds alternating")
    args = ap.parse_args()
    secrets_file = args.data_dir / "load-secrets.json"
    if secrets_file.exists():
        secrets = json.loads(secrets_file.read_text())
    else:
        secrets = build_store(args.data_dir, args.rows)
        secrets_file.write_text(json.dumps(secrets))
    if args.refresh:
        return refresh_main(args, secrets)
    wanted = [s.strip() for s in args.scenarios.split(",")]
    runs: dict[str, dict[str, list[dict]]] = {"A": {}, "B": {}}
    log = args.data_dir / "ab-server.log"
    sides = {"A": (args.a, args.a_store or args.data_dir, args.a_module),
             "B": (args.b, args.b_store or args.data_dir, args.b_module)}
    keys = {side: secrets if store == args.data_dir
            else json.loads((store / "load-secrets.json").read_text())
            for side, (_, store, _) in sides.items()}
    for r in range(args.rounds):
        for side in ("AB" if r % 2 == 0 else "BA"):
            python, store, module = sides[side]
            proc, base = serve(python, store, args.pool, log, module)
            try:
                for label in wanted:
                    name, who = label.split(" as ")
                    if args.warmup:     # other parameters than the measured requests'
                        _run_paused_gc(run_scenario(base, keys[side][who], name, args.clients,
                                                    args.warmup, args.max_seconds, first=10**6,
                                                    client=args.client))
                    cpu = cpu_seconds(proc.pid)
                    res = _run_paused_gc(run_scenario(base, keys[side][who], name, args.clients,
                                                      args.requests, args.max_seconds,
                                                      client=args.client))
                    res["server_cpu_ms"] = round((cpu_seconds(proc.pid) - cpu) * 1000
                                                 / max(res["requests"], 1), 2)
                    res["load1"] = round(os.getloadavg()[0], 1)
                    runs[side].setdefault(label, []).append(res)
                    print(json.dumps({"round": r, "side": side, label: res}), flush=True)
            finally:
                stop(proc)
    summary = {}
    print("| scenario | A req/s | B req/s | B/A | A p50 | B p50 | A p99 | B p99 | B/A p99 "
          "| A / B server CPU ms/req | errors A/B | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for label in wanted:
        a, b = runs["A"][label], runs["B"][label]
        med = {s: {k: statistics.median(x[k] for x in v)
                   for k in ("req_per_s", "p50_ms", "p99_ms", "server_cpu_ms")}
               for s, v in (("A", a), ("B", b))}
        summary[label] = {**med, "errors": [sum(x["errors"] for x in a), sum(x["errors"] for x in b)],
                          "load1": [x["load1"] for x in a + b]}
        print(f"| {label} | {med['A']['req_per_s']:.1f} | {med['B']['req_per_s']:.1f} | "
              f"{med['B']['req_per_s'] / med['A']['req_per_s']:.2f} | {med['A']['p50_ms']:.0f} | "
              f"{med['B']['p50_ms']:.0f} | {med['A']['p99_ms']:.0f} | {med['B']['p99_ms']:.0f} | "
              f"{med['B']['p99_ms'] / med['A']['p99_ms']:.2f} | "
              f"{med['A']['server_cpu_ms']:.1f} / {med['B']['server_cpu_ms']:.1f} | "
              f"{summary[label]['errors']} | "
              f"{statistics.median(summary[label]['load1']):.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "a": args.a, "b": args.b, "rounds": args.rounds,
                                    "a_store": str(sides["A"][1]), "b_store": str(sides["B"][1]),
                                    "requests": args.requests, "clients": args.clients,
                                    "warmup": args.warmup, "client": args.client,
                                    "runs": runs, "summary": summary}, indent=2) + "\n")


def refresh_main(args: argparse.Namespace, secrets: dict) -> None:
    out: dict[str, list[dict]] = {}
    proc, base = serve(args.b, args.data_dir, args.pool, args.data_dir / "ab-server.log")
    try:
        for r in range(args.rounds):
            for who in ("operators", "customers"):
                for cond in ((False, True) if r % 2 == 0 else (True, False)):
                    label = f"{'conditional' if cond else 'plain'} as {who}"
                    res = asyncio.run(refresh(base, secrets[who], args.clients, args.requests,
                                              cond, args.max_seconds))
                    out.setdefault(label, []).append(res)
                    print(json.dumps({"round": r, label: res}), flush=True)
    finally:
        stop(proc)
    print("| dashboard refresh | req/s | p50 ms | p99 ms | answers |")
    print("|---|---:|---:|---:|---|")
    for label, runs in out.items():
        med = {k: statistics.median(x[k] for x in runs) for k in ("req_per_s", "p50_ms", "p99_ms")}
        codes: dict[str, int] = {}
        for x in runs:
            for c, n in x["codes"].items():
                codes[str(c)] = codes.get(str(c), 0) + n
        print(f"| {label} | {med['req_per_s']:.1f} | {med['p50_ms']:.0f} | {med['p99_ms']:.0f} | {codes} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "refresh": out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
