"""Regression tests for the hostile review (issue 12): the archive splice, what engine
errors may say, result size limits — on both engine interfaces (`store`)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from cdrhouse.api.app import create_app
from cdrhouse.api.forwarded import TrustedProxies, forwarded_client
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import keys
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.engine.query import QueryFailed, run_sql
from cdrhouse.sql import catalogue
from cdrhouse.sql.archive import with_archive
from cdrhouse.sql.guard import compile_user_sql
from cdrhouse.sql.logical import PHYSICAL_TABLES
from cdrhouse.sql.principal import Principal

CUSTOMER = Principal.customer("acme", 1)
HOT_WORDS = "FROM cdr_records FINAL"


def _load(db: Database) -> None:
    """acme customer 1: 3 hot calls; customer 2: 2; globex: 4. A `warm_rows` table
    stands in for an archived month (any SELECT of the catalogue fields will do)."""
    insert = ("INSERT INTO {table} (tenant_id, call_id, start_time, end_time, duration, "
              "billsec, customer_id, disposition, version) SELECT {tenant}, "
              "concat({prefix}, toString(number)), toDateTime64('2026-03-01', 3, 'UTC') + number, "
              "toDateTime64('2026-03-01', 3, 'UTC') + number + 10, 10, 5, {customer}, "
              "'ANSWERED', 1 FROM numbers({n})")
    for tenant, customer, n in (("'acme'", "1", 3), ("'acme'", "2", 2), ("'globex'", "1", 4)):
        db.command(insert.format(table="cdr_records", tenant=tenant, prefix=f"'h{customer}-'",
                                 customer=customer, n=n))
    db.command("CREATE TABLE warm_rows AS cdr_records ENGINE = MergeTree ORDER BY call_id")
    for tenant, customer, n in (("'acme'", "1", 5), ("'globex'", "1", 7)):
        db.command(insert.format(table="warm_rows", tenant=tenant, prefix=f"'w{customer}-'",
                                 customer=customer, n=n))


WARM = (f"SELECT {', '.join(catalogue.NAMES)} FROM warm_rows",)

#: user SQL that names the hot read's words where a text splice would rewrite them
ADVERSARIAL = [
    # a quoted alias: the column must keep its name, not become internal SQL
    (f'SELECT count() AS "{HOT_WORDS}" FROM cdrs', [HOT_WORDS], [(8,)]),
    # a string literal: its value must come back as written
    (f"SELECT '{HOT_WORDS}' AS lit, count() AS n FROM cdrs", ["lit", "n"], [(HOT_WORDS, 8)]),
    # a comment (the guard drops comments; the count still includes the archive)
    (f"SELECT count() AS n /* {HOT_WORDS} */ FROM cdrs -- {HOT_WORDS}", ["n"], [(8,)]),
    # backquoted alias, nested subquery and a join of two reads
    (f"SELECT count() AS `{HOT_WORDS} x` FROM (SELECT call_id FROM cdrs) AS s "
     f"JOIN cdrs AS t USING (call_id) WHERE '{HOT_WORDS}' != ''", [f"{HOT_WORDS} x"], [(8,)]),
    # the words in a LIKE pattern and a parameter-free IN list
    (f"SELECT countIf(call_id LIKE '%{HOT_WORDS}%') AS c, count() AS n FROM cdrs "
     f"WHERE call_id NOT IN ('{HOT_WORDS}')", ["c", "n"], [(0, 8)]),
]


@pytest.mark.parametrize("sql, columns, rows", ADVERSARIAL)
def test_archive_splice_leaves_user_text_alone(store: Database, sql: str, columns: list,
                                               rows: list) -> None:
    _load(store)
    res = run_sql(store, CUSTOMER, sql, archive=WARM)
    assert res.columns == columns
    assert res.rows == rows


@pytest.mark.parametrize("sql, columns, rows", ADVERSARIAL)
def test_archive_splice_is_an_ast_substitution(sql: str, columns: list, rows: list) -> None:
    """Pure: every guard read gets the union, the user's words stay as compiled."""
    compiled = compile_user_sql(sql, CUSTOMER).sql
    out = with_archive(compiled, WARM)
    reads = compiled.count("(SELECT call_id, start_time")  # one per guarded cdrs read
    assert out.count("FROM warm_rows") == reads >= 1
    # the user's own text (outside the guard subqueries) is unchanged
    for word in (f"'{HOT_WORDS}'", f'"{HOT_WORDS}"', f"`{HOT_WORDS} x`", f"'%{HOT_WORDS}%'"):
        assert out.count(word) == compiled.count(word)
    # nothing of the archive's branch leaks into names or literals
    assert HOT_WORDS + " UNION" not in out.split("FROM (SELECT")[0]


# -- 2. engine errors say nothing internal -------------------------------------------------

#: every physical table, the guard predicate, any setting name, server paths, the tag
INTERNAL = re.compile("|".join([
    *(re.escape(t) for t in sorted(PHYSICAL_TABLES)), "warm_rows", r"tenant_id\s*=",
    r"__guard", r"__table", r"\bmax_\w+", r"readonly", r"log_comment", r"cdrhouse-query",
    r"SETTINGS", r"result_overflow_mode", r"function_range", r"/tmp/", r"/work/", r"/root/",
    r"\bFINAL\b", r"\bacme\b", r"DB::", r"In scope",
]), re.IGNORECASE)

#: (user SQL that parses and passes the guard but fails in ClickHouse, words the answer has)
FAILING = [
    ("SELECT src_number + 1 FROM cdrs", "Illegal types String and UInt8 of arguments of "
                                        "function plus (ClickHouse ILLEGAL_TYPE_OF_ARGUMENT)"),
    ("SELECT nosuchcol FROM cdrs", "Unknown expression identifier `nosuchcol` (line 1, column 8"),
    ("SELECT billsec\nFROM cdrs\nORDER BY nosuch", "`nosuch` (line 3, column 10 of the query)"),
    ("SELECT toDate('nope') FROM cdrs", "Cannot parse date"),
    ("SELECT intDiv(billsec, 0) FROM cdrs", "Division by zero (ClickHouse ILLEGAL_DIVISION)"),
    ("SELECT toInt64('abc') FROM cdrs", "Cannot parse string 'abc' as Int64"),
    # a stored value the user did not write is not repeated (it could be anyone's)
    ("SELECT CAST(call_id AS UInt32) FROM cdrs", "Cannot parse string '…' as UInt32"),
    ("SELECT substring(call_id) FROM cdrs", "the query failed: ClickHouse could not read"),
    ("SELECT count(),\n  sum(call_id) FROM cdrs", "Illegal type String of argument for "
                                                  "aggregate function sum (line 2, column 3"),
    ("SELECT call_id, count() FROM cdrs", "not under aggregate function"),
    ("SELECT toDecimal32(1e20, 2) FROM cdrs", "DECIMAL_OVERFLOW"),
    ("SELECT arrayElement([1, 2], 'x') FROM cdrs", "function 'arrayElement' must be integer"),
    ("SELECT 1 FROM cdrs WHERE start_time > 'notadate'", "while converting 'notadate'"),
    ("SELECT multiIf(billsec) FROM cdrs", "NUMBER_OF_ARGUMENTS_DOESNT_MATCH"),
    ("SELECT [1, 'a'] FROM cdrs", "NO_COMMON_TYPE"),
    ("SELECT toDecimal64(customer_charge, 20) FROM cdrs", "Scale 20 is out of bounds"),
    ("SELECT a FROM (SELECT 1 AS a, 2 AS a FROM cdrs)", "for alias a"),
    ("SELECT toUInt8(billsec) + toInt256('x') FROM cdrs", "CANNOT_PARSE"),
    ("SELECT parseDateTimeBestEffort(call_id) FROM cdrs", "Cannot read DateTime"),
    ("SELECT range(60000000)", "would produce 60000000 array elements, which is greater than "
                               "the allowed maximum of 10000000"),
    ("SELECT repeat('x', 3000000000) FROM cdrs", "TOO_LARGE_STRING_SIZE"),
    ("SELECT length(arrayResize([1], 2000000000)) FROM cdrs", "TOO_LARGE_ARRAY_SIZE"),
]
#: limit hits (run with tiny limits): the limit in words, never the setting
LIMIT_HITS = [
    ("SELECT count() FROM cdrs", {"max_rows_to_read": 2}, "at most 2 rows read"),
    ("SELECT call_id FROM cdrs", {"max_result_rows": 1}, "at most 1 rows"),
    ("SELECT range(1000) FROM cdrs", {"max_result_bytes": 1000}, "at most 1,000 bytes"),
]


@pytest.mark.parametrize("sql, expected", FAILING)
def test_engine_errors_speak_of_the_users_query_only(store: Database, sql: str,
                                                     expected: str) -> None:
    _load(store)
    for archive in ((), WARM):
        with pytest.raises(QueryFailed) as info:
            run_sql(store, CUSTOMER, sql, archive=archive)
        message = str(info.value)
        assert expected in message
        assert not INTERNAL.search(message), message


@pytest.mark.parametrize("sql, overrides, expected", LIMIT_HITS)
def test_limit_errors_name_the_limit_not_the_setting(store: Database, sql: str,
                                                     overrides: dict, expected: str) -> None:
    _load(store)
    runner = Database(store.config, create=False)  # a failed stream must not poison `store`
    try:
        with pytest.raises(QueryFailed) as info:
            run_sql(runner, CUSTOMER, sql, limit_overrides=overrides)
    finally:
        runner.close()
    assert info.value.kind == "limit" and expected in str(info.value)
    assert not INTERNAL.search(str(info.value)), str(info.value)


# -- 7. result size -------------------------------------------------------------------------

def test_a_constant_on_every_row_counts_against_the_result_bytes(store: Database) -> None:
    """ClickHouse counts a constant column once per block: without materializing, 5 rows
    of a 40 kB array pass a 100 kB limit (and 100,000 rows would too)."""
    _load(store)
    runner = Database(store.config, create=False)
    try:
        with pytest.raises(QueryFailed, match="the result is larger than allowed") as info:
            run_sql(runner, CUSTOMER, "SELECT range(20000) AS r, call_id FROM cdrs",
                    limit_overrides={"max_result_bytes": 100_000}, archive=WARM)
        assert info.value.kind == "limit"
        # the same query under the limit keeps its column names and values
        res = run_sql(runner, CUSTOMER, "SELECT range(3), call_id AS c, 1 + 1 FROM cdrs "
                                        "ORDER BY c LIMIT 2")
    finally:
        runner.close()
    assert res.columns == ["range(3)", "c", "plus(1, 1)"]
    assert res.rows == [([0, 1, 2], "h1-0", 2), ([0, 1, 2], "h1-1", 2)]


def test_one_huge_value_is_refused_before_it_is_built(store: Database) -> None:
    _load(store)
    with pytest.raises(QueryFailed, match="allowed maximum of 10000000") as info:
        run_sql(store, CUSTOMER, "SELECT range(60000000)")      # the 529 MB answer
    assert info.value.kind == "limit"
    runner = Database(store.config, create=False)
    try:
        with pytest.raises(QueryFailed, match="the result is larger than allowed") as info:
            run_sql(runner, CUSTOMER, "SELECT range(9000000)",   # 36 MB in one value
                    limit_overrides={"max_result_bytes": 1_000_000})
    finally:
        runner.close()
    assert info.value.kind == "limit"


# -- over HTTP and on the command line ------------------------------------------------------

@pytest.fixture(scope="module")
def api(embedded_dsn: str, engine_dir: Path):
    name = f"t_{uuid.uuid4().hex[:12]}"
    config = StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn, database=name)
    db = Database(config)
    migrate(db)
    acc.add_account(db, "acme", "C1", "customer")     # 1
    acc.add_account(db, "acme", "C2", "customer")     # 2
    acc.add_account(db, "globex", "G1", "customer")   # 1
    _load(db)
    secrets = {who: keys.create_key(db, who)[1] for who in (
        "admin", "tenant:acme", "tenant:acme/customer:C1", "tenant:globex")}
    app = create_app(ServiceConfig(store=config, pool_size=2, auth_failures_per_minute=1000))
    with TestClient(app) as client:
        yield client, secrets, db
    db.command(f"DROP DATABASE `{name}`")
    db.close()


def _h(secrets: dict, who: str) -> dict:
    return {"Authorization": f"Bearer {secrets[who]}"}


@pytest.mark.parametrize("sql, expected", FAILING)
def test_http_error_bodies_show_nothing_internal(api, sql: str, expected: str) -> None:
    client, secrets, _ = api
    for who in ("tenant:acme/customer:C1", "tenant:acme"):
        for archive in (False, True):
            r = client.post("/v1/sql", json={"sql": sql, "include_archive": archive},
                            headers=_h(secrets, who))
            assert r.status_code in (400, 422), r.text
            assert expected in r.json()["detail"]
            assert not INTERNAL.search(r.text), r.text
            csv = client.post("/v1/sql.csv", json={"sql": sql}, headers=_h(secrets, who))
            assert not INTERNAL.search(csv.text), csv.text


def test_http_range_of_sixty_million_is_a_limit_error(api) -> None:
    client, secrets, _ = api
    r = client.post("/v1/sql", json={"sql": "SELECT range(60000000)"},
                    headers=_h(secrets, "tenant:acme/customer:C1"))
    assert r.status_code == 422, r.text
    assert r.json()["type"] == "/problems/limit-exceeded"
    assert "allowed maximum of 10000000" in r.json()["detail"]
    assert len(r.content) < 2000  # the answer is the error, not the array


def test_http_answers_are_capped(api) -> None:
    client, secrets, _ = api
    service = client.app.state.service
    sql = {"sql": "SELECT range(5000) AS r FROM cdrs"}                  # 3 rows, ~70 kB of JSON
    assert client.post("/v1/sql", json=sql, headers=_h(secrets, "tenant:acme/customer:C1")
                       ).status_code == 200
    service.config.max_response_bytes = 50_000
    try:
        r = client.post("/v1/sql", json=sql, headers=_h(secrets, "tenant:acme/customer:C1"))
    finally:
        service.config.max_response_bytes = None
    assert r.status_code == 422 and r.json()["type"] == "/problems/limit-exceeded"
    assert "at most 50,000 bytes of JSON" in r.json()["detail"]


def test_cli_errors_show_nothing_internal(api, embedded_dsn: str, engine_dir: Path) -> None:
    """The CLI prints the same messages (through its entry point, on the same store; in
    this process, which holds the embedded engine: tests/cli_inproc.py)."""
    from cli_inproc import run_cli

    data = engine_dir
    env = {"CDRHOUSE_DATA_DIR": str(data), "CDRHOUSE_CLICKHOUSE": embedded_dsn,
           "CDRHOUSE_DATABASE": api[2].name}
    for sql, expected in [FAILING[0], FAILING[1], FAILING[7], FAILING[19]]:
        proc = run_cli("sql", sql, "--as", "tenant:acme/customer:C1", env=env)
        assert proc.returncode == 1, proc.stderr
        out = proc.stdout + proc.stderr
        assert expected.split(" (")[0] in " ".join(out.split()), out
        assert not INTERNAL.search(out.replace(str(data), "")), out
        assert str(data) not in out


# -- 16. unknown query parameters -----------------------------------------------------------

@pytest.mark.parametrize("path, params, unknown", [
    ("/v1/cdrs", {"preset": "last_7_days"}, "'preset'"),          # the case
    ("/v1/cdrs", {"range": "all", "limt": "5"}, "'limt' (did you mean 'limit'?)"),
    ("/v1/cdrs", {"range": "all", "tenant_id": "globex"}, "'tenant_id' (did you mean 'tenant'?)"),
    ("/v1/fields", {"role": "admin"}, "'role'"),
    ("/v1/jobs", {"stat": "running"}, "'stat' (did you mean 'state'?)"),
    ("/v1/cdrs.csv", {"range": "all", "compresion": "zstd"}, "'compresion'"),
    ("/v1/cdrs/h1-0", {"as": "admin"}, "'as'"),
])
def test_unknown_query_parameters_are_refused_by_name(api, path: str, params: dict,
                                                      unknown: str) -> None:
    client, secrets, _ = api
    r = client.get(path, params=params, headers=_h(secrets, "tenant:acme/customer:C1"))
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert f"unknown query parameter {unknown}" in detail
    assert f"{path} accepts: " in detail


def test_known_query_parameters_still_work(api) -> None:
    client, secrets, _ = api
    r = client.get("/v1/cdrs", params={"range": "all", "limit": 2, "columns": "call_id"},
                   headers=_h(secrets, "tenant:acme/customer:C1"))
    assert r.status_code == 200 and len(r.json()["rows"]) == 2
    accepts = client.get("/v1/cdrs", params={"x": 1}, headers=_h(
        secrets, "tenant:acme")).json()["detail"].split("accepts: ")[1].split(", ")
    assert {"range", "from", "to", "limit", "cursor", "columns", "include_archive"} <= set(accepts)


# -- 13. a call id in two tenants -------------------------------------------------------------

def test_admin_call_lookup_is_not_arbitrary_across_tenants(api) -> None:
    client, secrets, _ = api
    admin = _h(secrets, "admin")
    # h1-0 exists in acme and in globex (the fixture loads both)
    r = client.get("/v1/cdrs/h1-0", headers=admin)
    assert r.status_code == 409, r.text
    assert r.json()["tenants"] == ["acme", "globex"]
    assert "add tenant=" in r.json()["detail"]
    for tenant in ("acme", "globex"):
        one = client.get("/v1/cdrs/h1-0", params={"tenant": tenant}, headers=admin)
        assert one.status_code == 200 and one.json()["tenant_id"] == tenant
    rec = client.get("/v1/cdrs/h1-0/recording", headers=admin, follow_redirects=False)
    assert rec.status_code == 409
    # an id in one tenant needs no tenant=; operators are scoped by their key anyway
    assert client.get("/v1/cdrs/h2-0", headers=admin).json()["tenant_id"] == "acme"
    assert client.get("/v1/cdrs/h1-0", headers=_h(secrets, "tenant:globex")).status_code == 200
    assert client.get("/v1/cdrs/h1-0", params={"tenant": "acme"},
                      headers=_h(secrets, "tenant:globex")).status_code == 403


# -- 3. where a job runs is for admins ----------------------------------------------------------

def test_job_host_and_pid_are_for_admins_only(api) -> None:
    client, secrets, db = api
    job = ud.create_job(db, kind="recalc", principal="tenant:acme", params={"op": "rerate"})
    ud.update_job(db, job.job_id, state="running",
                  result={"pid": 4242, "host": "db-host-7", "phase": "write"})
    for who, sees in (("tenant:acme", False), ("admin", True)):
        one = client.get(f"/v1/jobs/{job.job_id}", headers=_h(secrets, who))
        listed = [j for j in client.get("/v1/jobs", headers=_h(secrets, who)).json()["jobs"]
                  if j["id"] == job.job_id]
        for body in (one.json(), listed[0]):
            assert body["result"]["phase"] == "write"
            assert ("pid" in body["result"], "host" in body["result"]) == (sees, sees)
        assert ("db-host-7" in one.text) == sees


# -- 8. forwarded headers ------------------------------------------------------------------------

@pytest.mark.parametrize("trusted, peer, header, client", [
    ((), "203.0.113.9", "1.2.3.4", "203.0.113.9"),                       # default: ignored
    ((), "127.0.0.1", "1.2.3.4", "127.0.0.1"),                           # loopback is not trusted
    (("10.0.0.1",), "203.0.113.9", "1.2.3.4", "203.0.113.9"),            # peer is not the proxy
    (("10.0.0.1",), "10.0.0.1", "1.2.3.4", "1.2.3.4"),
    (("10.0.0.0/8",), "10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.2", "1.2.3.4"),  # rightmost untrusted
    (("10.0.0.1",), "10.0.0.1", "6.6.6.6,1.2.3.4", "1.2.3.4"),           # prepended is ignored
    (("*",), "198.51.100.1", "1.2.3.4", "1.2.3.4"),
    (("10.0.0.1",), "10.0.0.1", None, "10.0.0.1"),
])
def test_forwarded_client(trusted: tuple, peer: str, header: str | None, client: str) -> None:
    assert forwarded_client(peer, header, TrustedProxies(trusted)) == client


def test_bad_forwarded_allow_ips_are_named() -> None:
    with pytest.raises(ValueError, match="'10.0.0.300' is not an IP address or network"):
        TrustedProxies(["10.0.0.1, 10.0.0.300"])


def _bad_auth(client: TestClient, xff: str | None = None) -> int:
    headers = {"Authorization": "Bearer nope"}
    if xff is not None:
        headers["X-Forwarded-For"] = xff
    return client.get("/v1/fields", headers=headers).status_code


def test_spoofed_forwarded_for_neither_bypasses_nor_locks_out(api) -> None:
    _, _, db = api
    app = create_app(ServiceConfig(store=db.config, pool_size=1, auth_failures_per_minute=3))
    with TestClient(app, client=("203.0.113.9", 1)) as attacker:
        victim = TestClient(app, client=("198.51.100.7", 1))
        # rotating the header does not reset the attacker's count…
        assert [_bad_auth(attacker, f"10.9.9.{i}") for i in range(4)] == [401, 401, 401, 429]
        # …and naming the victim's address does not lock the victim out
        assert [_bad_auth(attacker, "198.51.100.7") for _ in range(3)] == [429] * 3
        assert _bad_auth(victim) == 401


def test_a_trusted_proxy_forwards_each_client_separately(api, caplog) -> None:
    _, secrets, db = api
    # its own attacker address: the failure count is in the store, shared with the test above
    app = create_app(ServiceConfig(store=db.config, pool_size=1, auth_failures_per_minute=3,
                                   forwarded_allow_ips=("10.0.0.1",)))
    with TestClient(app, client=("10.0.0.1", 1)) as proxy, caplog.at_level(
            "INFO", logger="cdrhouse.access"):
        assert [_bad_auth(proxy, "203.0.113.77") for _ in range(4)] == [401, 401, 401, 429]
        # a client may prepend anything: the proxy's own entry (rightmost) is what counts
        assert _bad_auth(proxy, "198.51.100.7, 203.0.113.77") == 429
        assert _bad_auth(proxy, "203.0.113.77, 198.51.100.7") == 401
        ok = proxy.get("/v1/fields", headers={**_h(secrets, "tenant:acme"),
                                               "X-Forwarded-For": "198.51.100.8"})
        assert ok.status_code == 200
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "cdrhouse.access"]
    assert {"client": "198.51.100.8", "peer": "10.0.0.1"}.items() <= lines[-1].items()


def _serve(data: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CDRHOUSE_DATA_DIR": str(data)}
    env.pop("CDRHOUSE_CLICKHOUSE", None)
    env.pop("FORWARDED_ALLOW_IPS", None)
    proc = subprocess.Popen([sys.executable, "-m", "cdrhouse.api.cli", "serve", "--port",
                             str(port), "--tier-schedule", "off", "--pool", "1", *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode())
        threading.Event().wait(0.1)
    proc.kill()
    raise AssertionError("cdrhouse serve did not start")


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err.decode()


def test_serve_ignores_forwarded_for_from_loopback_by_default(tmp_path: Path) -> None:
    """uvicorn alone trusts X-Forwarded-For from 127.0.0.1; `cdrhouse serve` must not."""
    proc, base = _serve(tmp_path / "data")
    try:
        codes = [httpx.get(f"{base}/v1/fields", headers={
            "Authorization": "Bearer nope", "X-Forwarded-For": f"10.1.1.{i}"}).status_code
            for i in range(11)]
    finally:
        log = _stop(proc)
    assert codes == [401] * 10 + [429]
    assert "forwarded headers: ignored" in log
    assert '"client": "127.0.0.1", "peer": "127.0.0.1"' in log


def test_serve_believes_a_configured_proxy(tmp_path: Path) -> None:
    proc, base = _serve(tmp_path / "data", "--forwarded-allow-ips", "127.0.0.1")
    try:
        bad = {"Authorization": "Bearer nope"}
        codes = [httpx.get(f"{base}/v1/fields", headers={**bad, "X-Forwarded-For": "203.0.113.9"}
                           ).status_code for _ in range(11)]
        other = httpx.get(f"{base}/v1/fields", headers={**bad, "X-Forwarded-For": "198.51.100.7"})
    finally:
        log = _stop(proc)
    assert codes == [401] * 10 + [429]
    assert other.status_code == 401                   # another client behind the proxy
    assert '"client": "203.0.113.9", "peer": "127.0.0.1"' in log
