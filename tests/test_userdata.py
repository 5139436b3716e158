"""Saved queries, preferences and jobs over HTTP, against the real embedded engine.

Every test shares one app and store (module fixture) and names its own queries
with a prefix, so exact expectations hold whatever else the module created.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cdrhouse.api.app import create_app
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import keys
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate

ROWS = [
    # tenant, call_id, customer_id, carrier_id, start (UTC), billsec
    ("acme", "acme-c1-1", 1, 2, "2026-03-01 10:00:00", 60),
    ("acme", "acme-c1-2", 1, 2, "2026-03-01 23:30:00", 0),
    ("acme", "acme-c3-1", 3, 2, "2026-03-02 09:00:00", 30),
    ("globex", "globex-g1-1", 1, 2, "2026-03-01 12:00:00", 90),
]
ACME = ["acme-c1-1", "acme-c1-2", "acme-c3-1"]

OP, OP2, C1, C3, K1 = ("op", "op2", "c1", "c3", "k1")
GOP, G1, ADMIN = ("gop", "g1", "admin")
PRINCIPALS = {
    OP: "tenant:acme", OP2: "tenant:acme", C1: "tenant:acme/customer:C1",
    C3: "tenant:acme/customer:C3", K1: "tenant:acme/carrier:K1",
    GOP: "tenant:globex", G1: "tenant:globex/customer:G1", ADMIN: "admin",
}


def _load(db: Database) -> None:
    acc.add_account(db, "acme", "C1", "customer")     # 1
    acc.add_account(db, "acme", "K1", "carrier")      # 2
    acc.add_account(db, "acme", "C3", "customer")     # 3
    acc.add_account(db, "globex", "G1", "customer")   # 1
    acc.add_account(db, "globex", "GK", "carrier")    # 2
    for t, cid, cu, ca, start, bill in ROWS:
        db.command(
            "INSERT INTO cdr_records (tenant_id, call_id, start_time, end_time, duration, billsec, "
            "customer_id, carrier_id, disposition, version) VALUES ({t:String}, {c:String}, "
            "{s:DateTime64(3, 'UTC')}, {s:DateTime64(3, 'UTC')} + 100, 100, {b:UInt32}, "
            "{cu:UInt32}, {ca:UInt32}, if({b:UInt32} > 0, 'ANSWERED', 'NO ANSWER'), 1)",
            {"t": t, "c": cid, "s": start, "b": bill, "cu": cu, "ca": ca})


@pytest.fixture(scope="module")
def env(embedded_dsn: str, engine_dir: Path):
    name = f"t_{uuid.uuid4().hex[:12]}"
    store = StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn, database=name)
    db = Database(store)
    migrate(db)
    _load(db)
    secrets = {who: keys.create_key(db, principal)[1] for who, principal in PRINCIPALS.items()}
    app = create_app(ServiceConfig(store=store, pool_size=2, auth_failures_per_minute=1000))
    try:
        with TestClient(app) as client:
            yield client, secrets, db, store
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{name}` SYNC")
        db.close()


class As:
    """A client speaking as one key."""

    def __init__(self, env, who: str) -> None:
        self.client, secrets, _, _ = env
        self.headers = {"Authorization": f"Bearer {secrets[who]}"}

    def __getattr__(self, method: str):
        def call(path: str, **kw):
            return self.client.request(method.upper(), path, headers=self.headers, **kw)
        return call


def _save(env, who: str, name: str, kind: str, body: dict, shared: bool = False) -> str:
    r = As(env, who).post("/v1/queries", json={"name": name, "kind": kind, "body": body,
                                                "shared": shared})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _problem(r, status: int, slug: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == f"/problems/{slug}"
    return body


def _names(env, who: str, prefix: str) -> set[str]:
    r = As(env, who).get("/v1/queries")
    assert r.status_code == 200, r.text
    return {q["name"] for q in r.json()["queries"] if q["name"].startswith(prefix)}


VIEW = {"range": "all", "columns": ["call_id"], "sort": ["call_id"]}
SQL = {"sql": "SELECT call_id FROM cdrs ORDER BY call_id"}


# -- authentication -------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/queries"), ("POST", "/v1/queries"), ("GET", "/v1/queries/abc"),
    ("PUT", "/v1/queries/abc"), ("DELETE", "/v1/queries/abc"), ("POST", "/v1/queries/abc/run"),
    ("GET", "/v1/preferences"), ("PUT", "/v1/preferences"), ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/abc"),
])
def test_every_route_needs_a_key(env, method: str, path: str) -> None:
    client = env[0]
    body = {"name": "x", "kind": "sql", "body": SQL} if "queries" in path else None
    r = client.request(method, path, json=body)
    _problem(r, 401, "unauthorized")
    r = client.request(method, path, json=body, headers={"Authorization": "Bearer cdrh_no_such"})
    _problem(r, 401, "unauthorized")


# -- saved queries ----------------------------------------------------------------------

def test_crud_round_trip(env) -> None:
    op = As(env, OP)
    r = op.post("/v1/queries", json={"name": "crud: by country", "kind": "sql", "body": SQL})
    assert r.status_code == 201, r.text
    created = r.json()
    qid = created["id"]
    assert r.headers["location"] == f"/v1/queries/{qid}"
    assert {k: created[k] for k in ("name", "kind", "body", "shared", "owner", "mine")} == {
        "name": "crud: by country", "kind": "sql", "body": SQL, "shared": False,
        "owner": "tenant:acme", "mine": True}
    assert op.get(f"/v1/queries/{qid}").json() == created
    assert _names(env, OP, "crud:") == {"crud: by country"}

    new_body = {"sql": "SELECT count() AS n FROM cdrs WHERE billsec > {b:UInt32}",
                "params": {"b": 0}}
    r = op.put(f"/v1/queries/{qid}", json={"name": "crud: answered", "kind": "sql",
                                           "body": new_body, "shared": True})
    assert r.status_code == 200, r.text
    got = op.get(f"/v1/queries/{qid}").json()
    assert (got["name"], got["body"], got["shared"], got["created_at"]) == (
        "crud: answered", new_body, True, created["created_at"])
    assert _names(env, OP, "crud:") == {"crud: answered"}          # replaced, not added
    run = op.post(f"/v1/queries/{qid}/run")
    assert run.status_code == 200, run.text
    assert run.json()["rows"] == [[2]]                              # acme-c1-1, acme-c3-1

    assert op.delete(f"/v1/queries/{qid}").status_code == 204
    _problem(op.get(f"/v1/queries/{qid}"), 404, "not-found")
    _problem(op.post(f"/v1/queries/{qid}/run"), 404, "not-found")
    _problem(op.delete(f"/v1/queries/{qid}"), 404, "not-found")
    assert _names(env, OP, "crud:") == set()


def test_only_the_owner_principal_changes_a_query(env) -> None:
    private = _save(env, OP, "own: private", "sql", SQL)
    shared = _save(env, OP, "own: shared", "sql", SQL, shared=True)
    edit = {"name": "own: hijacked", "kind": "sql", "body": SQL, "shared": True}
    # someone else's private query does not exist for them: 404, as for an unknown id
    for who in (C1, K1, GOP, G1, ADMIN):
        c = As(env, who)
        for r in (c.get(f"/v1/queries/{private}"), c.put(f"/v1/queries/{private}", json=edit),
                  c.delete(f"/v1/queries/{private}"), c.post(f"/v1/queries/{private}/run")):
            assert r.json()["detail"] == f"no saved query {private!r} visible to this key"
            _problem(r, 404, "not-found")
    # a shared query they can see but not change: 403
    c1 = As(env, C1)
    assert c1.get(f"/v1/queries/{shared}").json()["mine"] is False
    body = _problem(c1.put(f"/v1/queries/{shared}", json=edit), 403, "forbidden")
    assert "only its owner can change it" in body["detail"]
    _problem(c1.delete(f"/v1/queries/{shared}"), 403, "forbidden")
    # ownership is the principal's: another key of tenant:acme may change it
    r = As(env, OP2).put(f"/v1/queries/{private}", json={**edit, "name": "own: renamed"})
    assert r.status_code == 200 and r.json()["mine"] is True
    assert _names(env, OP, "own:") == {"own: renamed", "own: shared"}


def test_sharing_stays_within_the_tenant(env) -> None:
    p = "share:"
    _save(env, OP, f"{p} op private", "sql", SQL)
    op_shared = _save(env, OP, f"{p} op shared", "sql", SQL, shared=True)
    _save(env, C1, f"{p} c1 private", "sql", SQL)
    _save(env, C1, f"{p} c1 shared", "sql", SQL, shared=True)
    _save(env, GOP, f"{p} globex shared", "sql", SQL, shared=True)
    _save(env, ADMIN, f"{p} admin private", "sql", SQL)
    body = _problem(As(env, ADMIN).post("/v1/queries", json={
        "name": f"{p} admin shared", "kind": "sql", "body": SQL, "shared": True}),
        400, "invalid-request")
    assert body["detail"].startswith("shared: an admin's queries belong to no tenant")

    operator = {f"{p} op private", f"{p} op shared", f"{p} c1 shared"}
    expected = {
        OP: operator, OP2: operator,
        C1: {f"{p} op shared", f"{p} c1 private", f"{p} c1 shared"},
        C3: {f"{p} op shared"},           # not C1's shared query: another company
        K1: {f"{p} op shared"},
        GOP: {f"{p} globex shared"}, G1: {f"{p} globex shared"},
        ADMIN: {f"{p} admin private"},
    }
    for who, names in expected.items():
        assert _names(env, who, p) == names, who
    # a globex key never sees acme's shared query, by list or by id
    for who in (GOP, G1):
        _problem(As(env, who).get(f"/v1/queries/{op_shared}"), 404, "not-found")
        _problem(As(env, who).post(f"/v1/queries/{op_shared}/run"), 404, "not-found")


def _rows(r) -> list:
    assert r.status_code == 200, r.text
    return [row["call_id"] if isinstance(row, dict) else row[0] for row in r.json()["rows"]]


def test_a_shared_query_runs_guarded_for_the_caller(env) -> None:
    viewer = _save(env, OP, "run: viewer", "viewer", VIEW, shared=True)
    search = _save(env, OP, "run: search", "search", {
        **VIEW, "rules": {"condition": "AND", "rules": [
            {"field": "call_id", "operator": "begins_with", "value": "acme"}]}}, shared=True)
    sql = _save(env, OP, "run: sql", "sql", SQL, shared=True)
    expected = {OP: ACME, C1: ["acme-c1-1", "acme-c1-2"], C3: ["acme-c3-1"], K1: ACME}
    for qid in (viewer, search, sql):
        for who, rows in expected.items():
            assert _rows(As(env, who).post(f"/v1/queries/{qid}/run")) == rows, (qid, who)
    # same shapes as the endpoints they stand for
    page = As(env, C1).post(f"/v1/queries/{viewer}/run").json()
    assert page == As(env, C1).get("/v1/cdrs?range=all&columns=call_id&sort=call_id").json()
    out = As(env, C1).post(f"/v1/queries/{sql}/run").json()
    assert out == As(env, C1).post("/v1/sql", json=SQL).json()


def test_running_pages_and_parameters(env) -> None:
    paged = _save(env, OP, "run: paged", "viewer", {**VIEW, "limit": 2})
    op = As(env, OP)
    first = op.post(f"/v1/queries/{paged}/run").json()
    assert [r["call_id"] for r in first["rows"]] == ["acme-c1-1", "acme-c1-2"]
    second = op.post(f"/v1/queries/{paged}/run", json={"cursor": first["next_cursor"]}).json()
    assert ([r["call_id"] for r in second["rows"]], second["next_cursor"]) == (["acme-c3-1"], None)

    sql = _save(env, OP, "run: params", "sql", {
        "sql": "SELECT call_id FROM cdrs WHERE billsec > {b:UInt32} ORDER BY call_id",
        "params": {"b": 0}}, shared=True)
    assert _rows(op.post(f"/v1/queries/{sql}/run")) == ["acme-c1-1", "acme-c3-1"]
    assert _rows(op.post(f"/v1/queries/{sql}/run", json={"params": {"b": 40}})) == ["acme-c1-1"]
    assert _rows(As(env, C3).post(f"/v1/queries/{sql}/run")) == ["acme-c3-1"]
    body = _problem(op.post(f"/v1/queries/{sql}/run", json={"params": {"x": 1}}), 400, "bad-sql")
    assert "x" in body["detail"]
    _problem(op.post(f"/v1/queries/{paged}/run", json={"params": {"b": 1}}), 400,
             "invalid-request")


def test_a_broken_query_is_refused_when_saved(env) -> None:
    c1 = As(env, C1)
    p = "broken:"

    def refused(kind: str, body: dict, status: int, slug: str, who: As = c1) -> str:
        r = who.post("/v1/queries", json={"name": f"{p} x", "kind": kind, "body": body})
        return _problem(r, status, slug)["detail"]

    # the guard refuses it for the owner's principal, at save time
    detail = refused("sql", {"sql": "SELECT sum(carrier_cost) FROM cdrs"}, 400, "bad-sql")
    assert detail.startswith("body.sql: ") and "carrier_cost" in detail
    detail = refused("sql", {"sql": "SELECT * FROM cdr_records"}, 400, "bad-sql")
    assert detail.startswith("body.sql: ") and "cdr_records" in detail
    detail = refused("sql", {"sql": "SELECT call_id FROM cdrs WHERE billsec > {b:UInt32}"},
                     400, "bad-sql")
    assert detail == "body.sql: no value given for query parameter(s): b"
    # viewer and builder bodies are compiled too, each error naming its place
    assert refused("viewer", {"columns": ["call_id", "carrier_cost"]}, 400, "invalid-request") \
        == "body.columns: column 'carrier_cost' is not visible to a customer user"
    assert refused("viewer", {"tz": "Mars/Olympus"}, 400, "invalid-request").startswith(
        "body.tz: unknown time zone 'Mars/Olympus'")
    assert refused("viewer", {"colums": ["call_id"]}, 400, "invalid-request").startswith(
        "body.colums: Extra inputs are not permitted")
    assert refused("viewer", {"cursor": "abc"}, 400, "invalid-request").startswith(
        "body.cursor: a saved query starts at the first page")
    detail = refused("search", {"rules": {"condition": "AND", "rules": [
        {"field": "carrier_cost", "operator": "greater", "value": 1}]}}, 400, "invalid-request")
    assert detail.startswith("body.rules: ") and "carrier_cost" in detail
    assert refused("viewer", {"customer": "C3"}, 403, "forbidden").startswith("body: a customer")
    detail = refused("python", {"sql": "1"}, 400, "invalid-request")
    assert detail.startswith("kind: ")
    # an edit is checked the same way and leaves the query as it was
    good = _save(env, C1, f"{p} good", "sql", SQL)
    r = c1.put(f"/v1/queries/{good}", json={"name": f"{p} good", "kind": "sql",
                                            "body": {"sql": "SELECT carrier_cost FROM cdrs"}})
    _problem(r, 400, "bad-sql")
    assert c1.get(f"/v1/queries/{good}").json()["body"] == SQL
    assert _names(env, C1, p) == {f"{p} good"}
    # what an operator may save, a customer may still not run: refused for the runner
    shared = _save(env, OP, f"{p} margin", "sql",
                   {"sql": "SELECT sum(carrier_cost) AS cost FROM cdrs"}, shared=True)
    assert As(env, OP).post(f"/v1/queries/{shared}/run").status_code == 200
    _problem(c1.post(f"/v1/queries/{shared}/run"), 400, "bad-sql")


# -- preferences ---------------------------------------------------------------------

def test_preferences_round_trip_per_key(env) -> None:
    c3 = As(env, C3)
    assert c3.get("/v1/preferences").json() == {"tz": None, "columns": None, "updated_at": None}
    prefs = {"tz": "Europe/Berlin", "columns": ["call_id", "start_time", "customer_charge"]}
    r = c3.put("/v1/preferences", json=prefs)
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in prefs} == prefs
    assert {k: c3.get("/v1/preferences").json()[k] for k in prefs} == prefs
    # per key: another key (even of the same principal) has its own
    assert As(env, OP2).get("/v1/preferences").json()["tz"] is None
    # remembered between sessions: a new app on the same store reads them back (from
    # an address of its own: this module's refused keys count against "testclient" in
    # the store, for every instance)
    _, secrets, _, store = env
    with TestClient(create_app(ServiceConfig(store=store, pool_size=1)),
                    client=("192.0.2.31", 1)) as other:
        r = other.get("/v1/preferences", headers={"X-API-Key": secrets[C3]})
        assert r.status_code == 200, r.text
        assert {k: r.json()[k] for k in prefs} == prefs
    # PUT replaces the set; null means "no preference"
    r = c3.put("/v1/preferences", json={"tz": "Asia/Tokyo"})
    assert (r.json()["tz"], r.json()["columns"]) == ("Asia/Tokyo", None)


def test_preferences_are_validated(env) -> None:
    c1 = As(env, C1)
    c1.put("/v1/preferences", json={"tz": "UTC", "columns": ["call_id"]})
    cases = [
        ({"tz": "Mars/Olympus"}, "tz: unknown time zone 'Mars/Olympus'"),
        ({"columns": ["call_id", "carrier_cost"]},
         "columns: column 'carrier_cost' is not visible to a customer user"),
        ({"columns": ["call_id", "nope"]}, "columns: unknown column 'nope'"),
        ({"columns": []}, "columns: choose at least one column"),
        ({"timezone": "UTC"}, "timezone: Extra inputs are not permitted"),
    ]
    for body, detail in cases:
        got = _problem(c1.put("/v1/preferences", json=body), 400, "invalid-request")["detail"]
        assert got.startswith(detail), (body, got)
    assert {k: c1.get("/v1/preferences").json()[k] for k in ("tz", "columns")} == {
        "tz": "UTC", "columns": ["call_id"]}
    # what is hidden from a customer is fine for its operator
    assert As(env, OP2).put("/v1/preferences", json={"columns": ["carrier_cost"]}).status_code == 200
    As(env, OP2).put("/v1/preferences", json={})


def test_preferences_apply_when_the_request_does_not_say(env) -> None:
    op = As(env, OP)
    op.put("/v1/preferences", json={"tz": "Asia/Tokyo", "columns": ["call_id", "start_time"]})
    try:
        plain = _save(env, OP, "prefs: plain", "viewer", {"range": "all", "sort": ["call_id"]})
        page = op.post(f"/v1/queries/{plain}/run").json()
        assert (page["columns"], page["timezone"]) == (["call_id", "start_time"], "Asia/Tokyo")
        assert page["rows"][0] == {"call_id": "acme-c1-1",
                                   "start_time": "2026-03-01T19:00:00.000+09:00"}
        # what the saved body says wins
        explicit = _save(env, OP, "prefs: explicit", "viewer",
                         {"range": "all", "sort": ["call_id"], "columns": ["call_id"], "tz": "UTC"})
        page = op.post(f"/v1/queries/{explicit}/run").json()
        assert (page["columns"], page["timezone"]) == (["call_id"], "UTC")
        # the hook on a GET listing: query-string parameters win, missing ones come from prefs
        page = op.get("/v1/cdrs?range=all&sort=call_id").json()
        assert (page["columns"], page["timezone"]) == (["call_id", "start_time"], "Asia/Tokyo")
        page = op.get("/v1/cdrs?range=all&sort=call_id&tz=UTC&columns=call_id").json()
        assert (page["columns"], page["timezone"]) == (["call_id"], "UTC")
        # another key of the same principal has no preferences: defaults
        page = As(env, OP2).get("/v1/cdrs?range=all&sort=call_id").json()
        assert page["timezone"] == "UTC" and "carrier_cost" in page["columns"]
    finally:
        op.put("/v1/preferences", json={})


# -- jobs ---------------------------------------------------------------------------

def test_jobs_are_seen_by_tenant_and_principal(env) -> None:
    db = env[2]
    made = {
        "platform": ud.create_job(db, kind="tiering", principal="admin"),
        "acme": ud.create_job(db, kind="recalc", principal="tenant:acme", params={"month": "2026-03"}),
        "c1": ud.create_job(db, kind="export", principal="tenant:acme/customer:C1",
                            params={"format": "csv"}),
        "c3": ud.create_job(db, kind="export", principal="tenant:acme/customer:C3"),
        "globex": ud.create_job(db, kind="recalc", principal="tenant:globex"),
        "g1": ud.create_job(db, kind="export", principal="tenant:globex/customer:G1"),
    }
    ud.update_job(db, made["c1"].job_id, state="running", progress=0.5)
    ud.update_job(db, made["c1"].job_id, state="succeeded", result={"rows": 2})
    ud.update_job(db, made["g1"].job_id, state="failed", error="no space left")
    visible = {
        ADMIN: set(made), OP: {"acme", "c1", "c3"}, OP2: {"acme", "c1", "c3"},
        C1: {"c1"}, C3: {"c3"}, K1: set(), GOP: {"globex", "g1"}, G1: {"g1"},
    }
    by_id = {j.job_id: name for name, j in made.items()}
    for who, names in visible.items():
        c = As(env, who)
        r = c.get("/v1/jobs")
        assert r.status_code == 200, r.text
        # jobs of other tests belong to tenant initech: only the admin sees those
        seen = [j["id"] for j in r.json()["jobs"]]
        assert {by_id[i] for i in seen if who == ADMIN and i in by_id or who != ADMIN} == names, who
        for name, job in made.items():
            r = c.get(f"/v1/jobs/{job.job_id}")
            if name in names:
                assert r.status_code == 200, (who, name)
            else:
                _problem(r, 404, "not-found")
    got = As(env, C1).get(f"/v1/jobs/{made['c1'].job_id}").json()
    assert {k: v for k, v in got.items() if k not in ("created_at", "updated_at")} == {
        "id": made["c1"].job_id, "kind": "export", "tenant": "acme",
        "principal": "tenant:acme/customer:C1", "state": "succeeded", "progress": 1.0,
        "params": {"format": "csv"}, "result": {"rows": 2}, "error": None}
    assert got["updated_at"] > got["created_at"]
    failed = As(env, G1).get(f"/v1/jobs/{made['g1'].job_id}").json()
    assert (failed["state"], failed["error"], failed["result"]) == ("failed", "no space left", None)
    assert As(env, ADMIN).get(f"/v1/jobs/{made['platform'].job_id}").json()["tenant"] is None
    # filters
    r = As(env, OP).get("/v1/jobs?kind=export")
    assert {by_id[j["id"]] for j in r.json()["jobs"]} == {"c1", "c3"}
    r = As(env, ADMIN).get("/v1/jobs?state=queued")
    assert {by_id[j["id"]] for j in r.json()["jobs"] if j["id"] in by_id} == {
        "platform", "acme", "c3", "globex"}
    assert _problem(As(env, OP).get("/v1/jobs?state=done"), 400, "invalid-request")["detail"] \
        .startswith("state: 'done' is not one of")


def test_job_model_rules(env) -> None:
    db = env[2]
    job = ud.create_job(db, kind="recalc", principal="tenant:initech")
    assert (job.state, job.progress, job.tenant_id, job.result, job.error) == (
        "queued", 0.0, "initech", None, "")
    with pytest.raises(ud.UserDataError, match="progress"):
        ud.update_job(db, job.job_id, progress=1.5)
    with pytest.raises(ud.UserDataError, match="state"):
        ud.update_job(db, job.job_id, state="paused")
    running = ud.update_job(db, job.job_id, state="running", progress=0.25)
    assert running.version > job.version
    ud.update_job(db, job.job_id, state="cancelled")
    assert ud.get_job(db, job.job_id).state == "cancelled"
    # a finished job is final: a late worker update cannot bring it back
    with pytest.raises(ud.UserDataError, match="already cancelled"):
        ud.update_job(db, job.job_id, state="succeeded")
    assert (ud.get_job(db, job.job_id).state, ud.get_job(db, job.job_id).progress) == (
        "cancelled", 0.25)
    with pytest.raises(ud.UserDataError, match="tenant"):
        ud.create_job(db, kind="recalc", principal="tenant:initech", tenant="globex")
    assert ud.create_job(db, kind="tiering", principal="admin", tenant="initech").tenant_id == "initech"
    with pytest.raises(ud.UserDataError, match="no job"):
        ud.update_job(db, "nope", state="running")
