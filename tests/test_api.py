"""The HTTP API against the real engine: auth, scoping on every route, errors, metrics."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cdrhouse.api import auth
from cdrhouse.api.app import create_app
from cdrhouse.api.models import FieldsOut
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import instances
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import keys
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql import catalogue
from cdrhouse.sql.principal import PrincipalRef

ROWS = [
    # tenant, call_id, customer_id, carrier_id, start, billsec, charge, cost, src, dst, recording
    ("acme", "acme-c1-1", 1, 2, "2026-03-01 10:00:00", 60, "0.10", "0.08", "441111", "492222", "https://rec.example/acme-c1-1.wav"),
    ("acme", "acme-c1-2", 1, 2, "2026-03-01 23:30:00", 0, None, None, "441111", "493333", ""),
    ("acme", "acme-c3-1", 3, 2, "2026-03-02 09:00:00", 30, "0.05", "0.04", "445555", "496666", ""),
    ("globex", "globex-g1-1", 1, 2, "2026-03-01 12:00:00", 90, "0.30", "0.20", "331111", "392222", "https://rec.example/g.wav"),
]


@pytest.fixture(scope="module")
def api(tmp_path_factory, embedded_dsn: str, engine_dir: Path):
    name = f"t_{uuid.uuid4().hex[:12]}"
    store = StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn, database=name)
    db = Database(store)
    migrate(db)
    acc.add_account(db, "acme", "C1", "customer")     # 1
    acc.add_account(db, "acme", "K1", "carrier")      # 2
    acc.add_account(db, "acme", "C3", "customer")     # 3
    acc.add_account(db, "globex", "G1", "customer")   # 1
    acc.add_account(db, "globex", "GK", "carrier")    # 2
    for t, cid, cu, ca, start, bill, charge, cost, src, dst, rec in ROWS:
        db.command(
            "INSERT INTO cdr_records (tenant_id, call_id, start_time, end_time, duration, billsec, "
            "customer_id, carrier_id, disposition, src_number, dst_number, customer_charge, "
            "carrier_cost, recording_url, version) VALUES ({t:String}, {c:String}, "
            "{s:DateTime64(3, 'UTC')}, {s:DateTime64(3, 'UTC')} + 100, 100, {b:UInt32}, {cu:UInt32}, "
            "{ca:UInt32}, if({b:UInt32} > 0, 'ANSWERED', 'NO ANSWER'), {src:String}, {dst:String}, "
            "{ch:Nullable(Decimal(18, 6))}, {co:Nullable(Decimal(18, 6))}, {r:String}, 1)",
            {"t": t, "c": cid, "s": start, "b": bill, "cu": cu, "ca": ca, "src": src, "dst": dst,
             "ch": charge, "co": cost, "r": rec})
    secrets = {who: keys.create_key(db, who)[1] for who in (
        "admin", "tenant:acme", "tenant:acme/customer:C1", "tenant:acme/carrier:K1",
        "tenant:globex", "tenant:globex/customer:G1")}
    revoked_key, revoked = keys.create_key(db, "tenant:acme")
    keys.revoke_key(db, revoked_key.key_id)
    secrets["revoked"] = revoked
    db.close()
    app = create_app(ServiceConfig(store=store, pool_size=2, auth_failures_per_minute=1000))
    with TestClient(app) as client:
        yield client, secrets
    db = Database(store)
    db.command(f"DROP DATABASE `{name}`")
    db.close()


def h(secrets: dict, who: str) -> dict:
    return {"Authorization": f"Bearer {secrets[who]}"}


def ids(resp) -> set[str]:
    assert resp.status_code == 200, resp.text
    return {r["call_id"] for r in resp.json()["rows"]}


ALL = {r[1] for r in ROWS}


@pytest.mark.parametrize("who, expected", [
    ("admin", ALL),
    ("tenant:acme", {"acme-c1-1", "acme-c1-2", "acme-c3-1"}),
    ("tenant:acme/customer:C1", {"acme-c1-1", "acme-c1-2"}),
    ("tenant:acme/carrier:K1", {"acme-c1-1", "acme-c1-2", "acme-c3-1"}),
    ("tenant:globex", {"globex-g1-1"}),
    ("tenant:globex/customer:G1", {"globex-g1-1"}),
])
def test_every_read_route_is_scoped_by_the_key(api, who, expected) -> None:
    client, secrets = api
    cols = "call_id,start_time"
    assert ids(client.get(f"/v1/cdrs?range=all&columns={cols}", headers=h(secrets, who))) == expected
    body = {"range": "all", "columns": ["call_id"], "rules": {"condition": "OR", "rules": [
        {"field": "call_id", "operator": "begins_with", "value": "acme"},
        {"field": "call_id", "operator": "begins_with", "value": "globex"}]}}
    assert ids(client.post("/v1/cdrs/search", json=body, headers=h(secrets, who))) == expected
    sql = client.post("/v1/sql", json={"sql": "SELECT call_id FROM cdrs ORDER BY call_id"},
                      headers=h(secrets, who))
    assert sql.status_code == 200, sql.text
    assert {r[0] for r in sql.json()["rows"]} == expected
    for call_id in ALL:
        one = client.get(f"/v1/cdrs/{call_id}", headers=h(secrets, who))
        assert one.status_code == (200 if call_id in expected else 404), (call_id, one.text)
        rec = client.get(f"/v1/cdrs/{call_id}/recording", headers=h(secrets, who),
                         follow_redirects=False)
        has_rec = call_id in ("acme-c1-1", "globex-g1-1")
        assert rec.status_code == (307 if call_id in expected and has_rec else 404)


def test_hostile_requests_are_refused(api) -> None:
    client, secrets = api
    cust = h(secrets, "tenant:acme/customer:C1")
    # the principal never comes from a parameter
    r = client.get("/v1/cdrs?range=all&customer=C3", headers=cust)
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    r = client.get("/v1/cdrs?range=all&tenant=globex", headers=h(secrets, "tenant:acme"))
    assert r.status_code == 403
    # hidden fields are errors naming the field
    r = client.get("/v1/cdrs?range=all&columns=call_id,carrier_cost", headers=cust)
    assert r.status_code == 400 and "carrier_cost" in r.json()["detail"]
    r = client.post("/v1/sql", json={"sql": "SELECT sum(carrier_cost) FROM cdrs"}, headers=cust)
    assert r.status_code == 400 and r.json()["type"] == "/problems/bad-sql"
    r = client.post("/v1/sql", json={"sql": "SELECT * FROM cdr_records"}, headers=cust)
    assert r.status_code == 400 and "cdr_records" in r.json()["detail"]
    r = client.post("/v1/sql", json={"sql": "SELECT * FROM url('http://127.0.0.1:1/x', CSV)"},
                    headers=h(secrets, "admin"))
    assert r.status_code == 400
    r = client.post("/v1/sql", json={"sql": "SELECT {__guard_tenant:String}",
                                      "params": {"__guard_tenant": "globex"}}, headers=cust)
    assert r.status_code == 400
    # an operator may drill into its own accounts
    assert ids(client.get("/v1/cdrs?range=all&customer=C3&columns=call_id",
                          headers=h(secrets, "tenant:acme"))) == {"acme-c3-1"}
    assert ids(client.get("/v1/cdrs?range=all&tenant=globex&customer=G1&columns=call_id",
                          headers=h(secrets, "admin"))) == {"globex-g1-1"}
    r = client.get("/v1/cdrs?range=all&customer=G1", headers=h(secrets, "tenant:acme"))
    assert r.status_code == 404          # globex's code does not exist in acme


def test_authentication_errors(api) -> None:
    client, secrets = api
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": secrets["revoked"]},
                    {"Authorization": f"Basic {secrets['admin']}"}):
        r = client.get("/v1/cdrs", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["type"] == "/problems/unauthorized"
        assert "traceback" not in r.text.lower()
    assert client.get("/v1/fields", headers={"X-API-Key": secrets["admin"]}).status_code == 200


def test_failed_authentication_is_rate_limited(embedded_dsn: str, engine_dir: Path) -> None:
    store = StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn,
                        database=f"t_{uuid.uuid4().hex[:12]}")
    app = create_app(ServiceConfig(store=store, pool_size=1, auth_failures_per_minute=3))
    with TestClient(app) as client:
        codes = [client.get("/v1/fields", headers={"X-API-Key": "bad"}).status_code
                 for _ in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        r = client.get("/v1/fields", headers={"X-API-Key": "bad"})
        assert int(r.headers["retry-after"]) >= 1
    db = Database(store)
    db.command(f"DROP DATABASE `{store.database}`")
    db.close()


def test_fields_follow_the_role(api) -> None:
    client, secrets = api
    cust = client.get("/v1/fields", headers=h(secrets, "tenant:acme/customer:C1")).json()
    names = {f["name"] for f in cust["fields"]}
    assert "customer_charge" in names and not names & {"carrier_cost", "carrier_id", "tenant_id"}
    billsec = next(f for f in cust["fields"] if f["name"] == "billsec")
    assert "between" in {op["key"] for op in billsec["operators"]}
    carrier = client.get("/v1/fields", headers=h(secrets, "tenant:acme/carrier:K1")).json()
    assert not {f["name"] for f in carrier["fields"]} & {"customer_charge", "customer_id"}


def test_fields_are_the_response_model_as_fastapi_would_encode_it(api) -> None:
    """/v1/fields is encoded once per role, not through its response model on every
    request: the answer must still be exactly FieldsOut's own encoding of it (same keys,
    order, types and bytes) and name the caller's principal."""
    client, secrets = api
    for who in ("admin", "tenant:acme", "tenant:acme/customer:C1", "tenant:acme/carrier:K1"):
        r = client.get("/v1/fields", headers=h(secrets, who))
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        model = FieldsOut.model_validate_json(r.content)
        assert model.model_dump_json().encode() == r.content
        assert model.principal == who
        assert model.default_columns == list(catalogue.DEFAULT_COLUMNS[PrincipalRef.parse(who).role])


def test_concurrent_requests_of_one_key_share_its_lookup(api) -> None:
    """At cache expiry, concurrent requests with one key look it up once, not once each;
    a key that fails is still looked up (and counted against its client) per request."""
    client, secrets = api
    limiter = client.app.state.service.limiter
    checks: list[str] = []
    real_check = limiter.check

    def slow_check(address: str, db=None) -> None:   # the real check, slowed: requests overlap
        checks.append(address)
        time.sleep(0.3)
        return real_check(address, db)

    def many(headers: dict, n: int) -> list[int]:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda _: client.get("/v1/fields", headers=headers).status_code,
                                 range(n)))

    limiter.check = slow_check
    try:
        client.app.state.service._auth_cache.clear()
        assert many(h(secrets, "tenant:acme"), 6) == [200] * 6
        assert len(checks) < 6
        checks.clear()
        assert many({"Authorization": "Bearer cdrk_nope"}, 4) == [401] * 4
        assert len(checks) == 4
    finally:
        del limiter.check


def _due_for_recheck(service, secret: str) -> None:
    """Age the cached entry of `secret` to half its time: due for a re-check, not expired."""
    cache_key = hashlib.sha256(secret.encode()).hexdigest()
    caller, expires, _ = service._auth_cache[cache_key]
    service._auth_cache[cache_key] = (caller, expires, 0.0)


def _rechecks_done(service) -> None:
    for _ in range(200):
        if not service._auth_rechecking:
            return
        time.sleep(0.05)
    raise AssertionError("a background re-check of a key never finished")


def test_a_busy_key_is_checked_again_in_the_background_not_in_front_of_its_requests(
        api, monkeypatch) -> None:
    client, secrets = api
    service = client.app.state.service
    import cdrhouse.api.service as service_module
    release, calls = threading.Event(), []

    def held_verify(db, secret):       # the real check, held until the requests are answered
        calls.append(secret)
        assert release.wait(30)
        return auth.verify(db, secret)
    monkeypatch.setattr(service_module, "verify", held_verify)
    headers = h(secrets, "tenant:acme")
    assert client.get("/v1/fields", headers=headers).status_code == 200
    _due_for_recheck(service, secrets["tenant:acme"])
    # answered while the re-check is still held: nobody waits for it, and there is one
    assert [client.get("/v1/fields", headers=headers).status_code for _ in range(3)] == [200] * 3
    assert calls == [secrets["tenant:acme"]]
    release.set()
    _rechecks_done(service)
    cache_key = hashlib.sha256(secrets["tenant:acme"].encode()).hexdigest()
    _, expires, recheck_from = service._auth_cache[cache_key]
    assert recheck_from > time.monotonic() - 1 and expires > recheck_from, "not renewed"


def test_a_key_revoked_while_cached_is_refused_after_its_background_recheck(api) -> None:
    client, secrets = api
    service = client.app.state.service
    with Database(service.config.store) as db:
        key, secret = keys.create_key(db, "tenant:acme", "revoked while cached")
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/fields", headers=headers).status_code == 200
    with Database(service.config.store) as db:
        keys.revoke_key(db, key.key_id)
    _due_for_recheck(service, secret)
    # still within its cache time: served, and the re-check starts
    assert client.get("/v1/fields", headers=headers).status_code == 200
    _rechecks_done(service)
    r = client.get("/v1/fields", headers=headers)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_time_zone_display_and_paging(api) -> None:
    client, secrets = api
    r = client.get("/v1/cdrs?range=all&columns=call_id,start_time&sort=start_time&limit=2"
                   "&tz=Asia/Tokyo", headers=h(secrets, "tenant:acme"))
    page = r.json()
    assert page["timezone"] == "Asia/Tokyo"
    assert [row["start_time"] for row in page["rows"]] == [
        "2026-03-01T19:00:00.000+09:00", "2026-03-02T08:30:00.000+09:00"]
    nxt = client.get(f"/v1/cdrs?range=all&columns=call_id,start_time&sort=start_time&limit=2"
                     f"&tz=Asia/Tokyo&cursor={page['next_cursor']}", headers=h(secrets, "tenant:acme"))
    assert [row["call_id"] for row in nxt.json()["rows"]] == ["acme-c3-1"]
    assert nxt.json()["next_cursor"] is None
    bad = client.get("/v1/cdrs?tz=Mars/Base", headers=h(secrets, "tenant:acme"))
    assert bad.status_code == 400 and "Mars/Base" in bad.json()["detail"]
    day = client.get("/v1/cdrs?range=custom&from=2026-03-01&to=2026-03-02&tz=Asia/Tokyo"
                     "&columns=call_id", headers=h(secrets, "tenant:acme")).json()
    assert day["range"] == {"from": "2026-02-28T15:00:00.000+00:00",
                            "to": "2026-03-01T15:00:00.000+00:00", "timezone": "UTC"}
    assert {r["call_id"] for r in day["rows"]} == {"acme-c1-1"}


def test_money_is_exact_and_sql_reports_types(api) -> None:
    client, secrets = api
    r = client.post("/v1/sql", json={"sql": "SELECT sum(customer_charge) AS c, count() AS n "
                                            "FROM cdrs WHERE start_time >= {s:DateTime64(3, 'UTC')}",
                                     "params": {"s": "2026-03-01 00:00:00"}},
                    headers=h(secrets, "tenant:acme"))
    body = r.json()
    assert body["rows"] == [["0.150000", 3]]
    assert [c["name"] for c in body["columns"]] == ["c", "n"]


def test_health_readiness_metrics_docs(api) -> None:
    client, secrets = api
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["instance"] == instances.instance_id()
    assert isinstance(ready["leases"], list)
    client.get("/v1/cdrs?range=all", headers=h(secrets, "tenant:acme"))
    metrics = client.get("/metrics").text
    me = instances.instance_id()
    assert (f'cdrhouse_http_requests_total{{instance="{me}",method="GET",route="/v1/cdrs",'
            'status="200"}') in metrics
    assert "cdrhouse_rows_returned_total" in metrics
    assert f'cdrhouse_errors_total{{instance="{me}",kind="unauthorized"}}' in metrics
    spec = client.get("/openapi.json").json()
    assert "/v1/cdrs/search" in spec["paths"] and "/v1/sql" in spec["paths"]


@pytest.mark.parametrize("freeze", [False, True])
def test_a_serving_process_freezes_its_startup_objects(embedded_dsn: str, engine_dir: Path,
                                                       freeze: bool) -> None:
    """`cdrhouse serve` (freeze_gc) moves what startup made out of the collector's sight,
    so full collections under load do not walk it; apps made for tests do not."""
    import gc

    store = StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn,
                        database=f"t_{uuid.uuid4().hex[:12]}")
    gc.unfreeze()
    try:
        with TestClient(create_app(ServiceConfig(store=store, pool_size=1,
                                                 freeze_gc=freeze))) as client:
            assert client.get("/healthz").status_code == 200
            assert (gc.get_freeze_count() > 0) is freeze
    finally:
        gc.unfreeze()
        db = Database(store)
        db.command(f"DROP DATABASE IF EXISTS `{store.database}`")
        db.close()

