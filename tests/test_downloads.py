"""CSV downloads through a real uvicorn server on 127.0.0.1 (the app in a thread of this process).

Same rows as the JSON endpoints, values in UTC, compression, what a failure
after the first byte looks like to a client, cancellation when the client
leaves, scoping by the key, and flat memory on a million rows.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import re
import socket
import threading
import time
import tracemalloc
import uuid
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import uvicorn
import zstandard

from cdrhouse.api.app import create_app
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import export, keys
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import ViewRequest
from ports import free_port

ROWS = [
    # tenant, call_id, customer, carrier, start, answer, billsec, charge, cost, sip_reason
    ("acme", "acme-c1-1", 1, 2, "2026-03-01 10:00:00.000", "2026-03-01 10:00:05.000", 60,
     "0.10", "0.08", "OK"),
    ("acme", "acme-c1-2", 1, 2, "2026-03-01 23:30:00.000", None, 0, None, None, 'Busy, "Here"'),
    ("acme", "acme-c3-1", 3, 2, "2026-03-02 09:00:00.250", "2026-03-02 09:00:02.000", 30,
     "0.05", "0.04", "OK"),
    ("globex", "globex-g1-1", 1, 2, "2026-03-01 12:00:00.000", "2026-03-01 12:00:03.000", 90,
     "0.30", "0.20", "OK"),
]
ACME = {"acme-c1-1", "acme-c1-2", "acme-c3-1"}
PRINCIPALS = ("admin", "tenant:acme", "tenant:acme/customer:C1", "tenant:acme/carrier:K1",
              "tenant:globex", "tenant:globex/customer:G1", "tenant:fail")
#: tenant "fail": this many calls, one second apart; the one at FAIL_AT has billsec 7
FAIL_ROWS = 1_000_000
FAIL_AT = 900_000
#: user SQL that streams rows, then divides by zero on a late row
DIVIDE = ("SELECT call_id, intDiv(1000, toInt64(billsec) - 7) AS x "
          "FROM (SELECT call_id, billsec, start_time FROM cdrs ORDER BY start_time)")
#: the same with wider rows: a server buffers the first megabytes of a result (compressed)
DIVIDE_WIDE = ("SELECT call_id, intDiv(1000, toInt64(billsec) - 7) AS x, repeat('.', 20) AS pad "
               "FROM (SELECT call_id, billsec, start_time FROM cdrs ORDER BY start_time)")
#: user SQL that runs until it is stopped, before its first row
SLOW = ("SELECT count() FROM cdrs AS a, (SELECT 1 FROM cdrs) AS b, (SELECT 1 FROM cdrs) AS c "
        "WHERE sipHash64(a.call_id, b.`1`, c.`1`) % 7 = 3")
#: user SQL with a result far larger than what a client reads before it leaves
ENDLESS = "SELECT a.call_id, b.call_id FROM cdrs AS a, cdrs AS b"


# -- a real server ----------------------------------------------------------------------

@dataclass
class Served:
    """An app with its own database, served by uvicorn on 127.0.0.1 in a thread of this process."""

    store: StoreConfig
    secrets: dict[str, str] = field(default_factory=dict)
    app: object = None
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    base: str = ""

    def start(self) -> Served:
        self.app = create_app(ServiceConfig(store=self.store, pool_size=2,
                                            auth_failures_per_minute=1000))
        port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=30)
        db = Database(self.store)
        try:
            db.command(f"DROP DATABASE IF EXISTS `{self.store.database}` SYNC")
        finally:
            db.close()

    def client(self, who: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.secrets[who]}"} if who else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60, **kw)

    def processes(self, like: str, query: str = "%") -> list[tuple]:
        """Running queries whose tag (log_comment) and text are LIKE these."""
        db = Database(self.store, create=False)
        try:
            return db.rows("SELECT query_id, query FROM system.processes "
                           "WHERE Settings['log_comment'] LIKE {p:String} "
                           "AND query LIKE {q:String} "
                           "AND query NOT LIKE '%system.processes%'", {"p": like, "q": query})
        finally:
            db.close()

    def wait_processes(self, like: str, present: bool, timeout: float = 15,
                       query: str = "%") -> list[tuple]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.processes(like, query)
            if bool(found) == present or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def _load(db: Database, rows: bool = True, fail: bool = True) -> dict[str, str]:
    acc.add_account(db, "acme", "C1", "customer")     # 1
    acc.add_account(db, "acme", "K1", "carrier")      # 2
    acc.add_account(db, "acme", "C3", "customer")     # 3
    acc.add_account(db, "globex", "G1", "customer")   # 1
    acc.add_account(db, "globex", "GK", "carrier")    # 2
    acc.add_account(db, "fail", "F1", "customer")     # 1
    for t, cid, cu, ca, start, answer, bill, charge, cost, reason in ROWS if rows else ():
        db.command(
            "INSERT INTO cdr_records (tenant_id, call_id, start_time, answer_time, end_time, "
            "duration, billsec, customer_id, carrier_id, disposition, src_number, dst_number, "
            "country, sip_reason, customer_charge, carrier_cost, version) VALUES ({t:String}, "
            "{c:String}, {s:DateTime64(3, 'UTC')}, {a:Nullable(DateTime64(3, 'UTC'))}, "
            "{s:DateTime64(3, 'UTC')} + 100, 100, {b:UInt32}, {cu:UInt32}, {ca:UInt32}, "
            "if({b:UInt32} > 0, 'ANSWERED', 'NO ANSWER'), '4420700', '4930100', 'DE', {r:String}, "
            "{ch:Nullable(Decimal(18, 6))}, {co:Nullable(Decimal(18, 6))}, 1)",
            {"t": t, "c": cid, "s": start, "a": answer, "b": bill, "cu": cu, "ca": ca,
             "r": reason, "ch": charge, "co": cost})
    if fail:
        db.command(
            "INSERT INTO cdr_records (tenant_id, call_id, start_time, end_time, duration, billsec, "
            "customer_id, carrier_id, disposition, version) SELECT 'fail', concat('f', "
            "toString(number)), toDateTime64('2026-03-01', 3, 'UTC') + number, "
            "toDateTime64('2026-03-01', 3, 'UTC') + number + 10, 10, "
            "if(number = {at:UInt64}, 7, 5), 1, 0, 'ANSWERED', 1 FROM numbers({n:UInt64})",
            {"at": FAIL_AT, "n": FAIL_ROWS})
    return {who: keys.create_key(db, who)[1] for who in PRINCIPALS}


def _serve(dsn: str, engine_dir: Path, cluster: str | None = None, **load) -> Served:
    store = StoreConfig(data_dir=engine_dir, clickhouse=dsn, database=f"t_{uuid.uuid4().hex[:12]}",
                        cluster=cluster)
    db = Database(store)
    try:
        migrate(db)
        secrets = _load(db, **load)
    finally:
        db.close()
    return Served(store, secrets).start()


@pytest.fixture(scope="module")
def served(embedded_dsn: str, engine_dir: Path):
    s = _serve(embedded_dsn, engine_dir)
    yield s
    s.stop()


# -- reading CSV ------------------------------------------------------------------------

def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def json_as_csv(value) -> str:
    """A JSON value of the API as the CSV download writes it (UTC, NULL empty)."""
    if value is None:
        return ""
    if isinstance(value, str) and re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", value):
        return dt.datetime.fromisoformat(value).astimezone(dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S.%f")[:-3]
    return str(value)


def same_values(csv_value: str, json_value) -> bool:
    expected = json_as_csv(json_value)
    if csv_value == expected:
        return True
    try:  # money: exact decimals, written without trailing zeros by ClickHouse
        return Decimal(csv_value) == Decimal(expected)
    except ArithmeticError:
        return False


def assert_same_table(csv_text: str, columns: list[str], rows: list[list]) -> None:
    table = csv_rows(csv_text)
    assert table[0] == columns
    assert len(table) - 1 == len(rows)
    for got, want in zip(table[1:], rows):
        assert len(got) == len(want)
        for c, g, w in zip(columns, got, want):
            assert same_values(g, w), (c, g, w)


def read_aborted(response: httpx.Response) -> bytes:
    """Read a streamed body that must end with an aborted transfer; the bytes that came."""
    got = bytearray()
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        for chunk in response.iter_raw():
            got += chunk
    return bytes(got)


def problem(resp: httpx.Response, status: int, slug: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["type"] == f"/problems/{slug}"
    return body


# -- a million rows, flat memory -------------------------------------------------------------

def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def million(embedded_dsn: str, engine_dir: Path):
    s = _serve(embedded_dsn, engine_dir, rows=False, fail=False)
    try:
        db = Database(s.store, create=False)
        try:
            db.command(
                "INSERT INTO cdr_records (tenant_id, call_id, start_time, answer_time, end_time, "
                "duration, billsec, customer_id, carrier_id, disposition, src_number, dst_number, "
                "country, customer_rate, customer_charge, version) SELECT 'acme', "
                "concat('call-', leftPad(toString(number), 7, '0')), "
                "toDateTime64('2026-03-01', 3, 'UTC') + toIntervalMillisecond(number * 2500), "
                "toDateTime64('2026-03-01', 3, 'UTC') "
                "+ toIntervalMillisecond(number * 2500 + 3000), "
                "toDateTime64('2026-03-01', 3, 'UTC') "
                "+ toIntervalMillisecond(number * 2500 + 63000), "
                "63, 60, 1, 2, 'ANSWERED', concat('44207', toString(1000000 + number)), "
                "concat('49301', toString(1000000 + number)), 'DE', toDecimal64('0.015', 6), "
                "toDecimal64('0.015', 6), 1 FROM numbers(1000000)")
            # one part: no background merge allocates while memory is measured
            db.command("OPTIMIZE TABLE cdr_records FINAL")
        finally:
            db.close()
        yield s
    finally:
        s.stop()


def test_a_million_rows_stream_with_flat_memory(million: Served) -> None:
    params = {"range": "all"}  # a customer's default columns, newest first
    with million.client("tenant:acme/customer:C1") as c:
        # The engine runs in this process: its own working set for this query
        # (tens of MB: parallel reads, FINAL, output blocks) is constant, not
        # the body. Warm it with the very query, read by the engine alone, a
        # block at a time: no large body goes through the API before measuring.
        principal = Principal.customer("acme", 1)
        plan = export.view_export(principal, ViewRequest(range="all"),
                                  dt.datetime.now(dt.timezone.utc))
        db = Database(million.store, create=False)
        try:
            # memory the engine kept from loading the data goes back to the system
            # now, not in the middle of the measurement
            db.command("SYSTEM JEMALLOC PURGE")
            engine_before = engine_peak = _rss()
            with db.stream(export.with_settings(plan.sql, export.download_settings(
                    principal, "warmup")), "CSV", plan.parameters) as source:
                while source.read(1 << 18):
                    engine_peak = max(engine_peak, _rss())
        finally:
            db.close()
        tracemalloc.start()
        traced_before = tracemalloc.get_traced_memory()[0]
        before = _rss()
        profile: list[tuple[int, int]] = []  # (bytes received, RSS)
        received = lines = 0
        head = tail = b""
        started = time.perf_counter()
        with c.stream("GET", "/v1/cdrs.csv", params=params) as r:
            assert r.status_code == 200
            assert r.headers["content-disposition"] == \
                'attachment; filename="cdrs-acme-C1-all-utc.csv"'
            for chunk in r.iter_raw():
                received += len(chunk)
                lines += chunk.count(b"\n")
                if len(head) < 400:
                    head += chunk[:400]
                tail = (tail + chunk)[-400:]
                profile.append((received, _rss()))
        elapsed = time.perf_counter() - started
        traced_peak = tracemalloc.get_traced_memory()[1] - traced_before
        tracemalloc.stop()
    peak = max(rss for _, rss in profile)
    first_half = max(rss for got, rss in profile if got <= received // 2)
    print(f"\n1M rows: {received / 1e6:.1f} MB in {elapsed:.1f} s; RSS {before / 1e6:.0f} MB "
          f"before, +{(first_half - before) / 1e6:.1f} MB in the first half, "
          f"+{(peak - before) / 1e6:.1f} MB at the peak (the engine alone, cold: "
          f"+{(engine_peak - engine_before) / 1e6:.1f} MB); Python objects at most "
          f"+{traced_peak / 1e6:.1f} MB")
    assert lines == 1_000_001
    head_lines = head.split(b"\n")
    assert head_lines[0] == (b'"start_time","src_number","dst_number","country","duration",'
                             b'"billsec","disposition","customer_rate","customer_charge","call_id"')
    # newest first; 1,000,000 calls 2.5 s apart from 1 March 00:00 UTC
    assert head_lines[1] == (b'"2026-03-29 22:26:37.500","442071999999","493011999999","DE",63,60,'
                             b'"ANSWERED",0.015,0.015,"call-0999999"')
    assert tail.split(b"\n")[-2] == (b'"2026-03-01 00:00:00.000","442071000000","493011000000",'
                                     b'"DE",63,60,"ANSWERED",0.015,0.015,"call-0000000"')
    assert received > 100_000_000
    # Nothing like the body. The engine runs in this process: its working set for
    # the query (here tens of MB, whatever the number of rows; more with more
    # cores) comes on top, and how much of it the warm-up left for reuse varies.
    engine = engine_peak - engine_before
    assert peak - before < max(received * 0.6, engine), f"grew {(peak - before) / 1e6:.1f} MB"
    # a body kept as it streams would add half of itself here (~50 MB); the engine's own
    # allocator moves by about a tenth of the body (11.5 MB seen once in a full suite)
    assert peak - first_half < received / 5, \
        f"grew {(peak - first_half) / 1e6:.1f} MB more in the second half"
    # the server's Python side (and the client's) held a few chunks at a time, whatever the size
    assert traced_peak < received / 20, f"Python objects grew {traced_peak / 1e6:.1f} MB"


# -- same rows as JSON, in UTC ----------------------------------------------------------

COLUMNS = ["call_id", "start_time", "answer_time", "billsec", "customer_charge", "carrier_cost",
           "sip_reason"]


def test_viewer_download_is_the_json_listing_in_utc(served: Served) -> None:
    params = {"columns": ",".join(COLUMNS), "sort": "start_time", "range": "all"}
    with served.client("tenant:acme") as c:
        r = c.get("/v1/cdrs.csv", params=params)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "text/csv; charset=utf-8; header=present"
        assert r.headers["content-disposition"] == 'attachment; filename="cdrs-acme-all-utc.csv"'
        assert r.headers["x-timezone"] == "UTC"
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-query-id"])
        assert r.headers["cache-control"] == "no-store"
        assert "content-encoding" not in r.headers
        assert r.text == (
            '"call_id","start_time","answer_time","billsec","customer_charge","carrier_cost",'
            '"sip_reason"\n'
            '"acme-c1-1","2026-03-01 10:00:00.000","2026-03-01 10:00:05.000",60,0.1,0.08,"OK"\n'
            '"acme-c1-2","2026-03-01 23:30:00.000",,0,,,"Busy, ""Here"""\n'
            '"acme-c3-1","2026-03-02 09:00:00.250","2026-03-02 09:00:02.000",30,0.05,0.04,"OK"\n')
        page = c.get("/v1/cdrs", params={**params, "tz": "UTC"}).json()
        assert_same_table(r.text, page["columns"], [[row[k] for k in page["columns"]]
                                                    for row in page["rows"]])
        # a display zone changes the JSON values, never the download's
        berlin = c.get("/v1/cdrs.csv", params={**params, "tz": "Europe/Berlin"})
        assert berlin.text == r.text
        assert c.get("/v1/cdrs", params={**params, "tz": "Europe/Berlin"}).json()[
            "rows"][0]["start_time"] == "2026-03-01T11:00:00.000+01:00"
        # the JSON record route is still there next to the download
        one = c.get("/v1/cdrs/acme-c1-1")
        assert one.status_code == 200 and one.json()["call_id"] == "acme-c1-1"


def test_the_zone_decides_the_range_values_stay_utc(served: Served) -> None:
    params = {"columns": "call_id,start_time", "from": "2026-03-01", "to": "2026-03-02",
              "tz": "Europe/Berlin"}
    with served.client("tenant:acme") as c:
        r = c.get("/v1/cdrs.csv", params=params)
    assert r.status_code == 200, r.text
    # Berlin's 1 March is [28 Feb 23:00, 1 Mar 23:00) UTC: the call at 23:30 UTC is on the 2nd
    assert r.text == '"call_id","start_time"\n"acme-c1-1","2026-03-01 10:00:00.000"\n'
    assert r.headers["content-disposition"] == \
        'attachment; filename="cdrs-acme-20260228T230000Z-20260301T230000Z-utc.csv"'


def test_search_and_sql_downloads_are_their_json_results(served: Served) -> None:
    body = {"range": "all", "columns": ["call_id", "billsec", "customer_charge"],
            "sort": ["call_id"],
            "rules": {"condition": "AND", "rules": [
                {"field": "billsec", "operator": "greater", "value": 0}]}}
    sql = {"sql": "SELECT call_id, billsec, customer_charge, start_time FROM cdrs "
                  "WHERE billsec > {m:UInt32} ORDER BY call_id", "params": {"m": 10}}
    with served.client("tenant:acme") as c:
        r = c.post("/v1/cdrs/search.csv", json=body)
        assert r.status_code == 200, r.text
        assert r.text == ('"call_id","billsec","customer_charge"\n'
                          '"acme-c1-1",60,0.1\n"acme-c3-1",30,0.05\n')
        page = c.post("/v1/cdrs/search", json=body).json()
        assert_same_table(r.text, page["columns"],
                          [[row[k] for k in page["columns"]] for row in page["rows"]])

        r = c.post("/v1/sql.csv", json=sql)
        assert r.status_code == 200, r.text
        assert re.fullmatch(r'attachment; filename="sql-acme-\d{8}T\d{6}Z\.csv"',
                            r.headers["content-disposition"])
        assert r.headers["x-timezone"] == "UTC"
        assert r.text == ('"call_id","billsec","customer_charge","start_time"\n'
                          '"acme-c1-1",60,0.1,"2026-03-01 10:00:00.000"\n'
                          '"acme-c3-1",30,0.05,"2026-03-02 09:00:00.250"\n')
        res = c.post("/v1/sql", json=sql).json()
        assert_same_table(r.text, [col["name"] for col in res["columns"]], res["rows"])


def test_rows_are_counted_in_the_metrics(served: Served) -> None:
    def counted(c: httpx.Client) -> float:
        m = re.search(r'^cdrhouse_rows_returned_total\{instance="[^"]*",route="/v1/cdrs\.csv"\} '
                      r'(\S+)$',
                      c.get("/metrics").text, re.M)
        return float(m.group(1)) if m else 0.0

    with served.client("tenant:fail") as c:
        before = counted(c)
        r = c.get("/v1/cdrs.csv", params={"range": "all", "columns": "call_id"})
        assert r.status_code == 200
        assert r.text.count("\n") == FAIL_ROWS + 1
        assert counted(c) - before == FAIL_ROWS


# -- compression --------------------------------------------------------------------------

@pytest.mark.parametrize("compression, ctype, suffix, decode", [
    ("gzip", "application/gzip", ".csv.gz", gzip.decompress),
    ("zstd", "application/zstd", ".csv.zst",
     lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data)),
])
def test_compressed_downloads_decode_to_the_same_csv(served: Served, compression, ctype, suffix,
                                                      decode) -> None:
    params = {"from": "2026-03-01", "to": "2026-03-03", "columns": "call_id,start_time,billsec"}
    with served.client("tenant:fail") as c:
        plain = c.get("/v1/cdrs.csv", params=params)
        packed = c.get("/v1/cdrs.csv", params={**params, "compression": compression})
        sql = c.post("/v1/sql.csv", params={"compression": compression},
                     json={"sql": "SELECT call_id FROM cdrs ORDER BY call_id LIMIT 3"})
    assert plain.status_code == packed.status_code == sql.status_code == 200
    assert packed.headers["content-type"] == ctype
    assert "content-encoding" not in packed.headers  # a file to save, not a transfer coding
    assert packed.headers["content-disposition"] == \
        f'attachment; filename="cdrs-fail-20260301-20260303-utc{suffix}"'
    assert plain.content.count(b"\n") == 2 * 86400 + 1
    assert len(packed.content) < len(plain.content) // 3
    assert decode(packed.content) == plain.content
    assert sql.headers["content-disposition"].endswith(f'{suffix}"')
    assert decode(sql.content) == b'"call_id"\n"f0"\n"f1"\n"f10"\n'


def test_an_unknown_compression_is_refused(served: Served) -> None:
    with served.client("tenant:acme") as c:
        body = problem(c.get("/v1/cdrs.csv", params={"range": "all", "compression": "br"}),
                       400, "invalid-request")
    assert "compression" in body["detail"]


# -- failures -------------------------------------------------------------------------------

def _decoded(data: bytes, compression: str | None) -> bytes:
    """What a client can decode of an aborted download, checking the file is truncated too."""
    if compression == "gzip":
        with pytest.raises(EOFError):
            gzip.decompress(data)
        return zlib.decompressobj(wbits=31).decompress(data)
    if compression == "zstd":
        obj = zstandard.ZstdDecompressor().decompressobj()
        out = obj.decompress(data)
        assert not obj.eof  # the frame never ends
        return out
    return data


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_a_failure_after_the_first_byte_never_looks_complete(served: Served, compression) -> None:
    params = {"compression": compression} if compression else {}
    with served.client("tenant:fail") as c:
        with c.stream("POST", "/v1/sql.csv", json={"sql": DIVIDE}, params=params) as r:
            assert r.status_code == 200
            data = read_aborted(r)
    lines = _decoded(data, compression).decode().split("\n")
    assert lines[0] == '"call_id","x"'
    assert lines[-1] == ""
    error = lines[-2]
    assert error.startswith("#ERROR: Division by zero"), error
    assert "ILLEGAL_DIVISION" in error and "\r" not in error
    rows = lines[1:-2]
    assert 0 < len(rows) < FAIL_AT
    # a prefix of the result, whole rows only
    assert rows == [f'"f{i}",-500' for i in range(len(rows))]


def test_a_limit_reached_mid_stream_says_which(served: Served) -> None:
    served.app.state.download_limit_overrides = {"max_result_rows": 500_000}
    try:
        with served.client("tenant:fail") as c:
            with c.stream("GET", "/v1/cdrs.csv",
                          params={"range": "all", "columns": "call_id", "sort": "start_time"}) as r:
                assert r.status_code == 200
                lines = read_aborted(r).decode().split("\n")
    finally:
        served.app.state.download_limit_overrides = None
    assert lines[0] == '"call_id","start_time"'
    assert lines[-2] == (
        "#ERROR: the result has more rows than allowed (at most 500,000 rows; ClickHouse "
        "TOO_MANY_ROWS_OR_BYTES); add LIMIT, aggregate (GROUP BY), or use a shorter time range.")
    rows = lines[1:-2]
    assert 0 < len(rows) <= 500_000
    assert rows[:2] == ['"f0","2026-03-01 00:00:00.000"', '"f1","2026-03-01 00:00:01.000"']


def test_failures_before_the_first_byte_are_problems(served: Served) -> None:
    with served.client() as anon:
        problem(anon.get("/v1/cdrs.csv", params={"range": "all"}), 401, "unauthorized")
        problem(anon.post("/v1/sql.csv", json={"sql": "SELECT 1"}), 401, "unauthorized")
    with served.client("tenant:fail") as c:
        body = problem(c.get("/v1/cdrs.csv", params={"range": "all", "cursor": "abc"}),
                       400, "invalid-request")
        assert body["detail"] == "cursor: an unlimited download has no pages"
        body = problem(c.post("/v1/sql.csv", json={"sql": "SELECT name FROM system.tables"}),
                       400, "bad-sql")
        assert "system" in body["detail"]
        body = problem(c.post("/v1/sql.csv", json={
            "sql": "SELECT intDiv(1, toInt64(billsec) - toInt64(billsec)) FROM cdrs"}),
            400, "query-failed")
        assert body["detail"].startswith("Division by zero")
        # as the JSON endpoint answers it
        unknown = {"sql": "SELECT nosuchcolumn FROM cdrs"}
        body = problem(c.post("/v1/sql.csv", json=unknown), 400, "query-failed")
        assert "nosuchcolumn" in body["detail"]
        assert c.post("/v1/sql", json=unknown).json()["type"] == "/problems/query-failed"
        served.app.state.download_limit_overrides = {"max_rows_to_read": 10}
        try:
            body = problem(c.get("/v1/cdrs.csv", params={"range": "all"}), 422, "limit-exceeded")
        finally:
            served.app.state.download_limit_overrides = None
        assert "at most 10 rows read" in body["detail"]


# -- cancellation -----------------------------------------------------------------------------

def _pool_is_whole(served: Served) -> None:
    """Every pooled client is back: the download gave its own back."""
    pool = served.app.state.service.pool
    with pool.acquire(timeout=10), pool.acquire(timeout=10):
        pass


def test_a_client_leaving_mid_download_cancels_the_query(served: Served) -> None:
    with served.client("tenant:fail") as c:
        with c.stream("POST", "/v1/sql.csv", json={"sql": ENDLESS}) as r:
            assert r.status_code == 200
            qid = r.headers["x-query-id"]
            chunks = r.iter_raw()  # (a dropped iterator would close the response)
            first = next(chunks)
            # still streaming, paused on the client (polled: it may not be listed yet)
            assert served.wait_processes(f"%:{qid}", present=True)
            assert re.fullmatch(r'"call_id","b.call_id"\n("f\d+","f\d+"\n)+"?[f0-9",]*',
                                first.decode())
        # the header names the columns as the JSON endpoint does
        names = [col["name"] for col in c.post("/v1/sql", json={
            "sql": ENDLESS + " LIMIT 1"}).json()["columns"]]
        assert names == ["call_id", "b.call_id"]
    # the client is gone: the query must go too, and everything be given back
    assert served.wait_processes(f"%:{qid}", present=False) == []
    _pool_is_whole(served)
    with served.client("tenant:fail") as c:  # the principal's slot is free again
        r = c.post("/v1/sql.csv", json={"sql": "SELECT count() FROM cdrs"})
        assert r.text == f'"count()"\n{FAIL_ROWS}\n'


def _leave_while_running(served: Served, path: str, query: str) -> list[tuple]:
    """POST the SLOW query to `path` on a raw socket, wait until it runs, hang up.

    Returns what was running (the query's tag and text) just before leaving.
    """
    body = json.dumps({"sql": SLOW}).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {served.secrets['tenant:fail']}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(request)
        return served.wait_processes(FAIL_TAG, present=True, query=query)


FAIL_TAG = "cdrhouse-query:tenant:fail:%"


def test_a_client_leaving_before_the_first_row_cancels_the_query(served: Served) -> None:
    # the download's query (not the DESCRIBE that names its columns) is running
    running = _leave_while_running(served, "/v1/sql.csv", "SELECT * FROM (%")
    assert running and "sipHash64" in running[0][1]
    assert served.wait_processes(FAIL_TAG, present=False) == []
    _pool_is_whole(served)


# -- scoping ---------------------------------------------------------------------------------

def _ids(resp: httpx.Response) -> set[str]:
    assert resp.status_code == 200, resp.text
    table = csv_rows(resp.text)
    assert table[0][0] == "call_id"
    return {row[0] for row in table[1:]}


@pytest.mark.parametrize("who, expected", [
    ("tenant:acme", ACME),
    ("tenant:acme/customer:C1", {"acme-c1-1", "acme-c1-2"}),
    ("tenant:acme/carrier:K1", ACME),
    ("tenant:globex", {"globex-g1-1"}),
    ("tenant:globex/customer:G1", {"globex-g1-1"}),
])
def test_every_csv_route_is_scoped_by_the_key(served: Served, who, expected) -> None:
    rules = {"condition": "OR", "rules": [
        {"field": "call_id", "operator": "begins_with", "value": p} for p in ("acme", "globex")]}
    with served.client(who) as c:
        everything = {"range": "all", "columns": "call_id"}
        assert _ids(c.get("/v1/cdrs.csv", params=everything)) == expected
        assert _ids(c.post("/v1/cdrs/search.csv",
                           json={"range": "all", "columns": ["call_id"], "rules": rules})) \
            == expected
        assert _ids(c.post("/v1/sql.csv", json={
            "sql": "SELECT call_id FROM cdrs WHERE call_id NOT LIKE 'f%' ORDER BY call_id"})) \
            == expected


def test_customer_keys_cannot_widen_or_see_carrier_fields(served: Served) -> None:
    with served.client("tenant:acme/customer:C1") as c:
        for narrow in ({"customer": "C3"}, {"carrier": "K1"}, {"tenant": "globex"}):
            body = problem(c.get("/v1/cdrs.csv", params={"range": "all", **narrow}),
                           403, "forbidden")
            assert next(iter(narrow)) in body["detail"]
            problem(c.post("/v1/cdrs/search.csv", json={"range": "all", **narrow}),
                    403, "forbidden")
        body = problem(c.get("/v1/cdrs.csv", params={"range": "all",
                                                     "columns": "call_id,carrier_cost"}),
                       400, "invalid-request")
        assert "carrier_cost" in body["detail"]
        body = problem(c.post("/v1/cdrs/search.csv", json={
            "range": "all", "rules": {"condition": "AND", "rules": [
                {"field": "carrier_rate", "operator": "greater", "value": 0}]}}),
            400, "invalid-request")
        assert "carrier_rate" in body["detail"]
        body = problem(c.post("/v1/sql.csv", json={"sql": "SELECT sum(carrier_cost) FROM cdrs"}),
                       400, "bad-sql")
        assert "carrier_cost" in body["detail"]
    with served.client("tenant:acme") as c:  # an operator may narrow to one account
        r = c.get("/v1/cdrs.csv", params={"range": "all", "columns": "call_id", "customer": "C1"})
        assert _ids(r) == {"acme-c1-1", "acme-c1-2"}
        assert r.headers["content-disposition"] == 'attachment; filename="cdrs-acme-C1-all-utc.csv"'
        problem(c.get("/v1/cdrs.csv", params={"range": "all", "tenant": "globex"}),
                403, "forbidden")
    with served.client("tenant:acme/customer:C1") as c:
        r = c.get("/v1/cdrs.csv", params={"range": "all", "columns": "call_id"})
        assert r.headers["content-disposition"] == 'attachment; filename="cdrs-acme-C1-all-utc.csv"'


# -- on a ClickHouse server (HTTP) -----------------------------------------------------------

@pytest.fixture(scope="module", params=["http", "cluster"])
def served_http(request, engine_dir: Path):
    """A server, and a 2-shard cluster of them (the store sharded, conftest.local_cluster)."""
    if request.param == "cluster":
        cluster = request.getfixturevalue("local_cluster")
        s = _serve(cluster.dsn, engine_dir, cluster.name)
    else:
        s = _serve(request.getfixturevalue("http_server").dsn, engine_dir)
    yield s
    s.stop()


def test_downloads_from_a_clickhouse_server(served_http: Served) -> None:
    s = served_http
    with s.client("tenant:acme/customer:C1") as c:
        r = c.get("/v1/cdrs.csv", params={"range": "all", "sort": "start_time",
                                          "columns": "call_id,start_time,customer_charge"})
        assert r.status_code == 200, r.text
        assert r.text == ('"call_id","start_time","customer_charge"\n'
                          '"acme-c1-1","2026-03-01 10:00:00.000",0.1\n'
                          '"acme-c1-2","2026-03-01 23:30:00.000",\n')
    with s.client("tenant:fail") as c:
        # failing at once: a problem, without the server's address
        body = problem(c.post("/v1/sql.csv", json={
            "sql": "SELECT intDiv(1, toInt64(billsec) - toInt64(billsec)) FROM cdrs"}),
            400, "query-failed")
        assert body["detail"].startswith("Division by zero") and "url" not in body["detail"]
        # the server ends a failed result with an exception block: never passed on as rows
        with c.stream("POST", "/v1/sql.csv", json={"sql": DIVIDE_WIDE}) as r:
            assert r.status_code == 200, r.read()
            lines = read_aborted(r).decode().split("\n")
        assert lines[0] == '"call_id","x","pad"'
        assert lines[-2].startswith("#ERROR: Division by zero") and "ILLEGAL_DIVISION" in lines[-2]
        assert "__exception__" not in lines[-2]
        rows = lines[1:-2]
        assert 0 < len(rows) < FAIL_AT
        pad = '"' + "." * 20 + '"'
        assert rows == [f'"f{i}",-500,{pad}' for i in range(len(rows))]
        # and a client leaving stops the query on the server
        with c.stream("POST", "/v1/sql.csv", json={"sql": ENDLESS}) as r:
            assert r.status_code == 200
            qid = r.headers["x-query-id"]
            chunks = r.iter_raw()
            next(chunks)
            assert s.wait_processes(f"%:{qid}", present=True)
    assert s.wait_processes(f"%:{qid}", present=False) == []
    _pool_is_whole(s)
    with s.client("tenant:fail") as c:
        assert c.post("/v1/sql.csv", json={"sql": "SELECT count() FROM cdrs"}).text == \
            f'"count()"\n{FAIL_ROWS}\n'


def test_a_client_leaving_a_json_query_cancels_it(served: Served) -> None:
    """Service.run (every JSON endpoint) kills the query of a client that went away."""
    assert _leave_while_running(served, "/v1/sql", "%sipHash64%")
    assert served.wait_processes(FAIL_TAG, present=False) == []
    _pool_is_whole(served)
