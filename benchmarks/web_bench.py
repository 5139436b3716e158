"""The web viewer's page speed: server time and browser render time of a 100-row page.

    python -m benchmarks.web_bench [--rows 1000000] [--rounds 15] [--data-dir DIR]

Builds a store of generated CDRs (or reuses `--data-dir`), starts `cdrhouse
serve` on 127.0.0.1 in a subprocess, signs in with an API key, and for each
scenario loads the viewer page `--rounds` times with a moving 7-day window
(different pages each round, so no result is cached):

- **server**: the page's HTML answered to a plain HTTP client (time to the last
  byte: session check, the guarded query, rendering);
- **browser**: Debian's Chromium through Playwright, the navigation timing of
  the same page — request to first byte (server side), then to
  DOMContentLoaded and to the load event (parsing, styles, script, the grid
  laid out), plus first contentful paint.

It also reports the page's weight: the HTML, CSS and JS as sent, and gzipped.
Everything it starts it stops; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx

from benchmarks import dataset
from cdrhouse.engine import generate, keys
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate

END = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
RESULTS = Path(__file__).parent / "results" / "web.json"


def build_store(data_dir: Path, rows: int) -> dict[str, str]:
    db = Database(StoreConfig(data_dir=data_dir))
    migrate(db)
    if not db.scalar("SELECT count() FROM cdr_records"):
        dataset.load(db, generate.GenSpec(rows=rows, months=6, seed=3, end=END))
    secrets = {"operator": keys.create_key(db, "tenant:acme", "web bench")[1],
               "customer": keys.create_key(db, "tenant:acme/customer:C001", "web bench")[1]}
    db.close()
    return secrets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sign_in(client: httpx.Client, base: str, secret: str) -> None:
    token = re.search(r'name="csrf_token" value="([^"]+)"',
                      client.get(base + "/login").text).group(1)
    r = client.post(base + "/login", data={"api_key": secret, "csrf_token": token, "next": "/"},
                    headers={"Origin": base})
    if r.status_code != 303:
        raise RuntimeError(f"sign-in failed: {r.status_code} {r.text[:200]}")


def page_url(i: int) -> str:
    start = END - dt.timedelta(days=7 + 5 * i)
    return "/?" + urlencode({"range": "custom", "from": start.strftime("%Y-%m-%dT%H:%M"),
                             "to": (start + dt.timedelta(days=7)).strftime("%Y-%m-%dT%H:%M"),
                             "tz": "UTC"})


def ms(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 1),
            "min": round(min(values), 1), "max": round(max(values), 1)}


def measure_server(base: str, secret: str, rounds: int) -> dict:
    with httpx.Client(timeout=60) as client:
        sign_in(client, base, secret)
        client.get(base + page_url(0)).raise_for_status()      # warm up
        times = []
        size = 0
        for i in range(rounds):
            t0 = time.perf_counter()
            r = client.get(base + page_url(i + 1))
            times.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            assert r.text.count("<tr data-call=") == 100, "a page of 100 rows"
            size = len(r.content)
    return {"ms": ms(times), "html_bytes": size}


def measure_browser(base: str, secret: str, rounds: int) -> dict:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {"ttfb": [], "dcl": [], "load": [], "fcp": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            "--disable-sync"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=base,
                                  timezone_id="UTC")
        page = ctx.new_page()
        page.goto("/login")
        page.get_by_text("Sign in with an API key instead").click()
        page.locator("input[name=api_key]").fill(secret)
        page.get_by_role("button", name="Sign in with key").click()
        page.wait_for_selector("#grid")
        page.goto(page_url(0))
        for i in range(rounds):
            # a fresh document each round; static files come from the cache, as for a user
            page.goto(page_url(i + 1), wait_until="load")
            nav = page.evaluate("""() => {
                const n = performance.getEntriesByType('navigation')[0];
                const p = performance.getEntriesByName('first-contentful-paint')[0];
                return {ttfb: n.responseStart - n.requestStart, dcl: n.domContentLoadedEventEnd - n.requestStart,
                        load: n.loadEventEnd - n.requestStart, fcp: p ? p.startTime - n.requestStart : null,
                        rows: document.querySelectorAll('#grid tbody tr[data-call]').length};
            }""")
            assert nav["rows"] == 100, nav
            for k in out:
                if nav[k] is not None:
                    out[k].append(nav[k])
        browser.close()
    return {k: ms(v) for k, v in out.items() if v}


def weight(base: str, secret: str) -> dict:
    with httpx.Client(timeout=60) as client:
        sign_in(client, base, secret)
        html = client.get(base + page_url(1)).content
        assets = re.findall(rb'(?:href|src)="(/static/[^"]+)"', html)
        files = {"html": html}
        for a in assets:
            files[a.decode().rsplit("/", 1)[-1]] = client.get(base + a.decode()).content
    raw = sum(len(v) for v in files.values())
    gz = sum(len(gzip.compress(v)) for v in files.values())
    return {"files": {k: len(v) for k, v in files.items()}, "total_bytes": raw,
            "total_gzip_bytes": gz}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="cdrhouse-webbench-")
        data_dir = Path(tmp.name)
    t0 = time.perf_counter()
    secrets = build_store(data_dir, args.rows)
    print(f"store ready in {time.perf_counter() - t0:.0f} s ({data_dir})", file=sys.stderr)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "cdrhouse.api.cli", "--data-dir",
                             str(data_dir), "serve", "--port", str(port), "--tier-schedule",
                             "off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ})
    try:
        for _ in range(300):
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        results = {"rows": args.rows, "rounds": args.rounds,
                   "date": dt.date.today().isoformat(), "scenarios": {}}
        for name in ("operator", "customer"):
            results["scenarios"][name] = {
                "server": measure_server(base, secrets[name], args.rounds),
                "browser": measure_browser(base, secrets[name], args.rounds)}
        results["weight"] = weight(base, secrets["operator"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if tmp is not None:
            tmp.cleanup()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{args.rows:,} CDRs, {args.rounds} rounds, medians in ms (min-max)\n")
    print("| page | server: HTML done | browser: first byte | DOMContentLoaded | load | first paint |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results["scenarios"].items():
        b = r["browser"]

        def f(d: dict) -> str:
            return f"{d['p50']} ({d['min']}-{d['max']})"
        print(f"| {name}, 100 rows | {f(r['server']['ms'])} | {f(b['ttfb'])} | {f(b['dcl'])} | "
              f"{f(b['load'])} | {f(b['fcp']) if 'fcp' in b else '-'} |")
    w = results["weight"]
    print(f"\npage weight: {w['total_bytes']:,} bytes, {w['total_gzip_bytes']:,} gzipped "
          f"({', '.join(f'{k} {v:,}' for k, v in w['files'].items())})")


if __name__ == "__main__":
    main()
