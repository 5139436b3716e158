"""The load test's clients count what the server answered, whichever HTTP library they use.

`benchmarks.load_test.run_scenario` reports throughput and latency from the requests
it counts; a client library that dropped bodies, misread statuses or lost requests
would report numbers for work the server never did. Each client runs a scenario
against a small HTTP/1.1 server on loopback that checks every request as the cdrhouse
API would (method, path, key, JSON body) and counts what it saw. No timing is asserted.

The clients run as the benchmarks do, from the repository's root in a process of their
own (`benchmarks` is not an installed package).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOOD = "cdrh_good"
RUN = ("import asyncio, json, sys\n"
       "from benchmarks.load_test import run_scenario\n"
       "print(json.dumps(asyncio.run(run_scenario(**json.loads(sys.argv[1])))))")


def run_scenario(base: str, secrets: list[str], name: str, clients: int, total: int,
                 client: str) -> dict:
    """`benchmarks.load_test.run_scenario` with these arguments, from the repository root."""
    args = dict(base=base, secrets=secrets, name=name, clients=clients, total=total,
                max_seconds=60, client=client)
    proc = subprocess.run([sys.executable, "-c", RUN, json.dumps(args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout)


class Checking(BaseHTTPRequestHandler):
    """200 for a well-formed request of the scenario with the good key, 401 for another
    key, 400 for anything malformed; keep-alive, as the API under uvicorn."""

    protocol_version = "HTTP/1.1"
    seen: Counter = Counter()
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        """Quiet: the tests read what the handler counted, not the access log."""

    def _answer(self, status: int, kind: str) -> None:
        with self.lock:
            self.seen[kind] += 1
        body = b'{"rows":[]}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path != "/v1/cdrs" or query.get("limit") != ["100"] or "from" not in query:
            return self._answer(400, "bad get")
        self._by_key("listing")

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", 0))
        try:
            body = json.loads(self.rfile.read(size))
        except ValueError:
            return self._answer(400, "bad body")
        if (self.path != "/v1/cdrs/search" or self.headers.get("Content-Type") != "application/json"
                or body.get("limit") != 100 or body["rules"]["condition"] != "AND"):
            return self._answer(400, "bad post")
        self._by_key("search")

    def _by_key(self, kind: str) -> None:
        if self.headers.get("Authorization") == f"Bearer {GOOD}":
            self._answer(200, kind)
        else:
            self._answer(401, "refused")


@pytest.fixture
def server():
    Checking.seen = Counter()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Checking)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.mark.parametrize("client", ["httpx", "aiohttp"])
@pytest.mark.parametrize("name", ["listing", "search"])
def test_every_request_is_sent_and_counted(server: str, client: str, name: str) -> None:
    r = run_scenario(server, [GOOD], name, clients=8, total=60, client=client)
    assert (r["requests"], r["errors"]) == (60, 0)
    assert Checking.seen == {name: 60}
    assert 0 < r["p50_ms"] <= r["p99_ms"] and r["req_per_s"] > 0


@pytest.mark.parametrize("client", ["httpx", "aiohttp"])
def test_an_answer_other_than_200_is_an_error(server: str, client: str) -> None:
    # clients 0, 2, 4 use the good key, 1, 3, 5 another one: each request is answered,
    # and every refused one is counted as an error
    r = run_scenario(server, [GOOD, "cdrh_wrong"], "search", clients=6, total=90, client=client)
    assert r["requests"] == 90
    assert r["errors"] == Checking.seen["refused"] > 0
    assert Checking.seen["search"] + Checking.seen["refused"] == 90


def test_an_unknown_client_is_refused(server: str) -> None:
    with pytest.raises(RuntimeError, match="ValueError: unknown load-generator client 'curl'"):
        run_scenario(server, [GOOD], "listing", 1, 1, client="curl")
