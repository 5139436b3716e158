"""The web viewer's server side on both engine interfaces: users and passwords, sessions,
cookie flags, CSRF, sign-in limits, the recording route, and hostile requests.

TestClient against the real app over a real engine (the `store` fixture), with the
same small dataset as the browser tests (tests/webstore.py).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import re
import sys
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
import webstore  # noqa: E402

from cdrhouse.api.app import create_app  # noqa: E402
from cdrhouse.api.cli import app as cli_app  # noqa: E402
from cdrhouse.api.service import ServiceConfig
from cdrhouse.sql.recordings import RecordingPolicy  # noqa: E402
from cdrhouse.api.web import session as sess  # noqa: E402
from cdrhouse.engine import keys, users  # noqa: E402

ORIGIN = "http://testserver"


@pytest.fixture(autouse=True)
def fast_hashes(monkeypatch):
    """Cheaper argon2id parameters: these tests hash and verify many passwords on 2 cores
    (production keeps argon2-cffi's defaults, RFC 9106's low-memory choice)."""
    from argon2 import PasswordHasher
    monkeypatch.setattr(users, "_hasher", PasswordHasher(time_cost=1, memory_cost=8 * 1024,
                                                         parallelism=1))


@pytest.fixture(scope="module")
def rec():
    server = webstore.RecordingServer().start()
    yield server
    server.stop()


@pytest.fixture
def web(store, rec, monkeypatch):
    """(client factory, secrets): an app over the store with the dataset loaded."""
    secrets = webstore.load(store, dt.datetime.now(dt.timezone.utc), rec.base)
    # the recording server is on loopback: the operator lists it (--recording-hosts)
    config = ServiceConfig(store=store.config, pool_size=2,
                           recordings=RecordingPolicy.parse("127.0.0.1"))
    apps = []

    def client(base_url: str = ORIGIN, **overrides) -> TestClient:
        app_config = dataclasses.replace(config, **overrides) if overrides else config
        c = TestClient(create_app(app_config), base_url=base_url)
        c.__enter__()
        apps.append(c)
        return c
    yield client, secrets
    for c in apps:
        c.__exit__(None, None, None)


def login_token(c: TestClient) -> str:
    r = c.get("/login")
    assert r.status_code == 200
    return re.search(r'name="csrf_token" value="([^"]+)"', r.text).group(1)


def sign_in(c: TestClient, name: str = "operator", password: str = webstore.PASSWORD,
            api_key: str = "", origin: str = ORIGIN):
    token = login_token(c)
    return c.post("/login", data={"name": name, "password": password, "api_key": api_key,
                                  "csrf_token": token, "next": "/"},
                  headers={"Origin": origin}, follow_redirects=False)


def csrf_of(c: TestClient) -> str:
    r = c.get("/?range=all")
    assert r.status_code == 200, r.text
    return re.search(r'data-csrf="([^"]+)"', r.text).group(1)


def ids(html: str) -> set[str]:
    return set(re.findall(r'<tr data-call="([^"]+)"', html))


def signed_in(c: TestClient) -> bool:
    r = c.get("/?range=all", follow_redirects=False)
    return r.status_code == 200


# -- users and passwords ---------------------------------------------------------------

def test_passwords_are_argon2_and_users_can_be_disabled_and_deleted(store) -> None:
    u = users.add_user(store, "Alice", "a long password", "tenant:acme")
    assert u.name == "alice" and u.password_hash.startswith("$argon2id$")
    assert "a long password" not in u.password_hash
    assert users.verify_password(store, "ALICE", "a long password").user_id == u.user_id
    assert users.verify_password(store, "alice", "a long passwore") is None
    assert users.verify_password(store, "nobody", "a long password") is None
    with pytest.raises(users.UserAccountError, match="already exists"):
        users.add_user(store, "alice", "another password", "tenant:acme")
    with pytest.raises(users.UserAccountError, match="at least 10"):
        users.add_user(store, "bob", "short", "tenant:acme")
    with pytest.raises(users.UserAccountError, match="invalid user name"):
        users.add_user(store, "bad name!", "a long password", "tenant:acme")
    users.set_password(store, "alice", "a new long password")
    assert users.verify_password(store, "alice", "a long password") is None
    assert users.verify_password(store, "alice", "a new long password") is not None
    users.set_disabled(store, "alice", True)
    assert users.verify_password(store, "alice", "a new long password") is None
    users.set_disabled(store, "alice", False)
    users.delete_user(store, "alice")
    assert users.find_user(store, "alice") is None
    assert users.verify_password(store, "alice", "a new long password") is None
    # the name is free again
    assert users.add_user(store, "alice", "a third password", "tenant:acme").name == "alice"


def test_cli_users(store) -> None:
    from cdrhouse.engine import accounts as acc
    acc.add_account(store, "acme", "C1", "customer", "Acme Retail")
    cfg = store.config
    base = ["--data-dir", str(cfg.data_dir), "--clickhouse", cfg.dsn, "--database", cfg.database]
    run = CliRunner().invoke
    r = run(cli_app, base + ["users", "add", "carol", "--as", "tenant:acme/customer:C1",
                             "--password-stdin"], input="carol's password\n")
    assert r.exit_code == 0, r.output
    assert users.verify_password(store, "carol", "carol's password").principal == \
        "tenant:acme/customer:C1"
    r = run(cli_app, base + ["users", "add", "dave", "--as", "tenant:acme/customer:NOPE",
                             "--password-stdin"], input="dave's password\n")
    assert r.exit_code == 2 and "NOPE" in r.output
    r = run(cli_app, base + ["users", "list", "--format", "csv"])
    assert r.exit_code == 0 and "carol,tenant:acme/customer:C1,False" in r.output
    r = run(cli_app, base + ["users", "passwd", "carol", "--password-stdin"],
            input="carol's new password\n")
    assert r.exit_code == 0 and users.verify_password(store, "carol", "carol's new password")
    r = run(cli_app, base + ["users", "disable", "carol"])
    assert r.exit_code == 0 and users.find_user(store, "carol").disabled
    r = run(cli_app, base + ["users", "delete", "carol"])
    assert r.exit_code == 0 and users.find_user(store, "carol") is None
    r = run(cli_app, base + ["users", "delete", "carol"])
    assert r.exit_code == 2 and "no user called 'carol'" in r.output


# -- sessions and cookies -------------------------------------------------------------

def _cookie(response, name: str) -> SimpleCookie:
    for header in response.headers.get_list("set-cookie"):
        jar = SimpleCookie()
        jar.load(header)
        if name in jar:
            return jar
    raise AssertionError(f"no {name} cookie set")


def test_session_cookie_flags_and_logout(web) -> None:
    client, _ = web
    c = client()
    assert c.get("/?range=all", follow_redirects=False).headers["location"].startswith(
        "/login?next=")
    r = sign_in(c)
    assert r.status_code == 303 and r.headers["location"] == "/"
    morsel = _cookie(r, sess.COOKIE)[sess.COOKIE]
    assert morsel["httponly"] and morsel["samesite"].lower() == "strict"
    assert morsel["path"] == "/" and int(morsel["max-age"]) == 12 * 3600
    assert not morsel["secure"]                      # plain http on loopback
    secret = morsel.value
    page = c.get("/?range=all")
    assert page.status_code == 200 and secret not in page.text   # not in the page's HTML
    assert "Content-Security-Policy" in page.headers and page.headers["X-Frame-Options"] == "DENY"
    # over https the cookie is Secure
    s = client("https://testserver")
    r = sign_in(s, origin="https://testserver")
    assert _cookie(r, sess.COOKIE)[sess.COOKIE]["secure"]
    # logout ends the session on the server: the old cookie is worthless
    token = csrf_of(c)
    r = c.post("/logout", data={"csrf_token": token}, headers={"Origin": ORIGIN},
               follow_redirects=False)
    assert r.status_code == 303
    other = client()
    other.cookies.set(sess.COOKIE, secret)
    assert not signed_in(other)


def test_disabling_deleting_a_user_or_revoking_a_key_signs_out(web, store) -> None:
    client, secrets = web
    a, b = client(), client()
    assert sign_in(a, "cust1").status_code == 303
    assert sign_in(b, "carrier1").status_code == 303
    assert signed_in(a) and signed_in(b)
    users.set_disabled(store, "cust1", True)
    assert not signed_in(a)
    assert sign_in(a, "cust1").status_code == 401     # and cannot sign in again
    users.delete_user(store, "carrier1")
    assert not signed_in(b)
    # an API key's session ends when the key is revoked
    k = client()
    assert sign_in(k, api_key=secrets["tenant:acme/carrier:K1"]).status_code == 303
    assert signed_in(k)
    key_id = secrets["tenant:acme/carrier:K1"].split("_")[1]
    keys.revoke_key(store, key_id)
    assert not signed_in(k)
    # an expired session is over too
    e = client()
    sign_in(e)
    secret = e.cookies.get(sess.COOKIE)
    s = users.find_session(store, secret)
    users._write_session(store, users.Session(**{**s.__dict__, "expires_at": dt.datetime.now(
        dt.timezone.utc) - dt.timedelta(seconds=1), "version": s.version + 1}))
    assert not signed_in(e)


def test_sessions_are_shared_by_every_service_process(web) -> None:
    client, _ = web
    a = client()
    sign_in(a)
    b = client()        # another app (another process in production) over the same store
    b.cookies.set(sess.COOKIE, a.cookies.get(sess.COOKIE))
    assert signed_in(b)


# -- CSRF -----------------------------------------------------------------------------

def test_state_changing_requests_need_origin_and_token(web) -> None:
    client, _ = web
    c = client()
    # sign-in: the form's own token and our origin
    token = login_token(c)
    form = {"name": "operator", "password": webstore.PASSWORD, "csrf_token": token}
    assert c.post("/login", data=form, headers={"Origin": "http://evil.example"},
                  follow_redirects=False).status_code == 403
    assert c.post("/login", data={**form, "csrf_token": "forged"}, headers={"Origin": ORIGIN},
                  follow_redirects=False).status_code == 403
    assert c.post("/login", data=form, follow_redirects=False).status_code == 403  # no Origin
    assert c.post("/login", data=form, headers={"Referer": ORIGIN + "/login"},
                  follow_redirects=False).status_code == 303
    csrf = csrf_of(c)
    # preferences (JSON) need the header token
    assert c.post("/web/preferences", json={"tz": "Asia/Tokyo"},
                  headers={"Origin": ORIGIN}).status_code == 403
    assert c.post("/web/preferences", json={"tz": "Asia/Tokyo"},
                  headers={"Origin": "http://evil.example", "X-CSRF-Token": csrf}).status_code == 403
    r = c.post("/web/preferences", json={"tz": "Asia/Tokyo"},
               headers={"Origin": ORIGIN, "X-CSRF-Token": csrf})
    assert r.status_code == 200
    assert 'data-tz="Asia/Tokyo"' in c.get("/?range=all").text
    r = c.post("/web/preferences", json={"tz": "Mars/Olympus"},
               headers={"Origin": ORIGIN, "X-CSRF-Token": csrf})
    assert r.status_code == 400
    # saved views and logout
    assert c.post("/web/views", data={"name": "x", "range": "all", "csrf_token": "nope"},
                  headers={"Origin": ORIGIN}).status_code == 403
    assert c.post("/logout", data={"csrf_token": csrf}, headers={"Origin": "http://evil.example"},
                  follow_redirects=False).status_code == 403
    assert signed_in(c)
    # the next= target of sign-in is always on this site
    token = login_token(c)
    r = c.post("/login", data={**form, "csrf_token": token, "next": "//evil.example/x"},
               headers={"Origin": ORIGIN}, follow_redirects=False)
    assert r.headers["location"] == "/"


# -- sign-in limits ------------------------------------------------------------------------

def test_failed_sign_ins_are_limited_across_processes(web) -> None:
    client, _ = web
    c = client()
    for _ in range(sess.NAME_LIMIT):
        r = sign_in(c, "operator", "wrong password!")
        assert r.status_code == 401 and "wrong user name or password" in r.text
    # the right password no longer helps, on this process or another
    r = sign_in(c, "operator")
    assert r.status_code == 429 and "too many failed sign-ins" in r.text
    assert sign_in(client(), "operator").status_code == 429
    # another user from the same client is not locked out by the name limit
    assert sign_in(c, "cust1").status_code == 303


def test_a_success_resets_the_name_count(web) -> None:
    client, _ = web
    c = client()
    for _ in range(sess.NAME_LIMIT - 1):
        assert sign_in(c, "cust1", "wrong password!").status_code == 401
    assert sign_in(c, "cust1").status_code == 303
    for _ in range(sess.NAME_LIMIT - 1):
        assert sign_in(c, "cust1", "wrong password!").status_code == 401
    assert sign_in(c, "cust1").status_code == 303


# -- the recording route -------------------------------------------------------------------

def test_recording_route(web, rec) -> None:
    client, _ = web
    c = client()
    assert c.get("/web/recording/acme-rec-1").status_code == 401     # no session
    sign_in(c, "cust1")
    r = c.get("/web/recording/acme-rec-1")
    assert r.status_code == 200 and r.content == rec.files["/rec1.wav"]
    assert r.headers["content-type"] == "audio/wav"
    assert r.headers["content-disposition"] == 'inline; filename="recording-acme-rec-1.wav"'
    r = c.get("/web/recording/acme-rec-1?download=1", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == rec.files["/rec1.wav"][10:20]
    assert r.headers["content-disposition"].startswith("attachment;")
    assert r.headers["content-range"] == f"bytes 10-19/{len(rec.files['/rec1.wav'])}"
    # a call without a recording, a missing file, someone else's call
    r = c.get("/web/recording/acme-0000")
    assert r.status_code == 404 and "has no recording" in r.text
    r = c.get("/web/recording/acme-rec-gone")
    assert r.status_code == 404 and "missing" in r.text
    for foreign in ("acme-0001", "globex-0", "nope"):
        r = c.get(f"/web/recording/{foreign}")
        assert r.status_code == 404 and "rec1.wav" not in r.text
    # the server fetches no internal address unless the operator listed it: the same
    # rule as the API's redirect (sql/recordings.py), so a service without the list
    # refuses the loopback recording
    strict = client(recordings=RecordingPolicy())
    sign_in(strict, "cust1")
    r = strict.get("/web/recording/acme-rec-1")
    assert r.status_code == 403 and "internal" in r.text


@pytest.mark.parametrize("url, status, message", [
    ("file:///etc/passwd", 404, "http and https only"),
    ("s3://bucket/rec.wav", 404, "http and https only"),
    ("http://169.254.169.254/latest/meta-data", 403, "internal network"),
    ("http://10.1.2.3/rec.wav", 403, "internal network"),
    ("http://[::1]:8123/?query=SELECT%201", 403, "internal network"),
])
def test_recording_urls_the_server_will_not_fetch(url: str, status: int, message: str) -> None:
    from cdrhouse.api.web.recording import RecordingUnavailable, check_url
    with pytest.raises(RecordingUnavailable, match=message) as info:
        check_url(url)
    assert info.value.status == status


# -- users over the API -------------------------------------------------------------------

def test_operators_manage_their_own_tenants_portal_users(web) -> None:
    client, secrets = web
    c = client()

    def as_(who: str) -> dict:
        return {"Authorization": f"Bearer {secrets[who]}"}
    body = {"name": "newcust", "password": "a long password", "principal": "tenant:acme/customer:C2"}
    r = c.post("/v1/users", json=body, headers=as_("tenant:acme"))
    assert r.status_code == 201 and r.json()["principal"] == "tenant:acme/customer:C2"
    for principal in ("tenant:acme", "admin", "tenant:globex/customer:G1"):
        r = c.post("/v1/users", json={**body, "name": "x1", "principal": principal},
                   headers=as_("tenant:acme"))
        assert r.status_code == 403, principal
    r = c.post("/v1/users", json={**body, "name": "x2"}, headers=as_("tenant:acme/customer:C1"))
    assert r.status_code == 403
    r = c.post("/v1/users", json={**body, "name": "x3", "principal": "tenant:acme/customer:ZZ"},
               headers=as_("tenant:acme"))
    assert r.status_code == 400 and "ZZ" in r.json()["detail"]
    names = {u["name"] for u in c.get("/v1/users", headers=as_("tenant:acme")).json()["users"]}
    assert names == {"newcust", "cust1", "carrier1"}     # not the operators, not globex's
    assert c.get("/v1/users", headers=as_("tenant:globex")).json()["users"] == []
    # globex's operator cannot touch acme's users
    assert c.patch("/v1/users/newcust", json={"disabled": True},
                   headers=as_("tenant:globex")).status_code == 404
    # the new user signs in, is disabled over the API and is signed out
    u = client()
    assert sign_in(u, "newcust", "a long password").status_code == 303
    r = c.patch("/v1/users/newcust", json={"disabled": True}, headers=as_("tenant:acme"))
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert not signed_in(u)
    assert c.delete("/v1/users/operator", headers=as_("tenant:acme")).status_code == 404
    assert c.delete("/v1/users/newcust", headers=as_("tenant:acme")).status_code == 204


# -- hostile page requests ------------------------------------------------------------------

def test_a_customer_session_gets_nothing_foreign(web) -> None:
    client, _ = web
    c = client()
    sign_in(c, "cust1")
    mine = {r["call_id"] for r in webstore.calls(dt.datetime.now(dt.timezone.utc), "x")
            if r["tenant"] == "acme" and r["customer"] == "C1"}
    page = c.get("/?range=all")
    assert ids(page.text) and ids(page.text) <= mine
    for query in ("customer=C2", "tenant=globex", "carrier=K1", "columns=call_id,carrier_id",
                  "sort=carrier_cost", "f=carrier_cost:greater:0", "range=bogus",
                  "f=nonsense", 'q={"condition":"OR","rules":[{"field":"tenant_id",'
                                '"operator":"equal","value":"globex"}]}'):
        r = c.get(f"/?range=all&{query}")
        assert r.status_code == 400, (query, r.status_code)
        assert ids(r.text) == set()
        assert "globex-" not in r.text and "acme-0001" not in r.text
    r = c.get("/?range=all&c=eyJzIjpbIi1zdGFydF90aW1lIl0sInYiOlsiMjAzMCJdfQ")  # forged cursor
    assert ids(r.text) <= mine
    for foreign in ("acme-0001", "globex-0"):
        assert c.get(f"/web/cdrs/{foreign}").status_code == 404
    assert c.get("/web/cdrs/acme-0000").status_code == 200
    assert c.get("/web/cdrs.csv?range=all&customer=C2").status_code == 403
    r = c.get("/web/cdrs.csv?range=all&columns=call_id")
    assert r.status_code == 200 and r.headers["x-timezone"] == "UTC"
    got = {row[0] for row in list(csv.reader(io.StringIO(r.text)))[1:]}
    assert got == mine


def test_api_key_sign_in_failures_count_per_client_only(web, monkeypatch) -> None:
    client, secrets = web
    c = client()
    good = secrets["tenant:acme/carrier:K1"]
    for _ in range(sess.NAME_LIMIT + 1):
        r = sign_in(c, api_key="cdrh_000000000000_forged")
        assert r.status_code == 401 and "not valid" in r.text
    # failed keys share no name: they do not lock key sign-in for everyone
    assert sign_in(c, api_key=good).status_code == 303
    # ... but one client's failures are limited, for keys and passwords alike
    monkeypatch.setattr(sess, "CLIENT_LIMIT", sess.NAME_LIMIT + 1)
    assert sign_in(client(), api_key=good).status_code == 429
    assert sign_in(client(), "operator").status_code == 429


def test_admin_global_view_narrows_by_tenant_and_account(web) -> None:
    client, secrets = web
    c = client()
    assert sign_in(c, api_key=secrets["admin"]).status_code == 303
    page = c.get("/?range=all").text
    assert "globex-0" in page and "acme-0000" in page
    # account cells name the account of the row's own tenant (ids repeat across tenants)
    assert "G1 · Globex Voice" in page and "C1 · Acme Retail" in page
    r = c.get("/?range=all&tenant=acme&customer=C2")
    assert r.status_code == 200
    c2 = {row["call_id"] for row in webstore.calls(dt.datetime.now(dt.timezone.utc), "x")
          if row["tenant"] == "acme" and row["customer"] == "C2"}
    got = ids(r.text)
    assert got and got <= c2
    assert '<option value="C2" selected>C2 — Blue Telecom</option>' in r.text
    # an operator may not choose the tenant
    o = client()
    sign_in(o)
    r = o.get("/?range=all&tenant=globex")
    assert r.status_code == 400 and "only an admin can choose the tenant" in r.text
    assert not ids(r.text)


# -- the page's scripts call /v1 on the session cookie ---------------------------------------

def test_v1_routes_accept_the_session_cookie_with_csrf_for_changes(web) -> None:
    """The viewer's scripts reach /v1 with the browser's session: reads need only the cookie,
    a change also needs our Origin and the session's CSRF token; the guard is the key's."""
    client, _ = web
    anon = client()
    assert anon.get("/v1/fields").status_code == 401
    anon.cookies.set(sess.COOKIE, "forged-session")
    r = anon.get("/v1/fields")
    assert r.status_code == 401 and "session" in r.json()["detail"]

    c = client()
    sign_in(c, "cust1")
    csrf = csrf_of(c)
    fields = {f["name"] for f in c.get("/v1/fields").json()["fields"]}
    assert "call_id" in fields and "carrier_cost" not in fields  # a customer's fields
    sql = {"sql": "SELECT DISTINCT customer_id FROM cdrs"}
    assert c.post("/v1/sql", json=sql).status_code == 403                      # no proof
    assert c.post("/v1/sql", json=sql, headers={"Origin": "http://evil.example",
                                                "X-CSRF-Token": csrf}).status_code == 403
    assert c.post("/v1/sql", json=sql, headers={"Origin": ORIGIN,
                                                "X-CSRF-Token": "forged"}).status_code == 403
    r = c.post("/v1/sql", json=sql, headers={"Origin": ORIGIN, "X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    assert len(r.json()["rows"]) == 1  # one account: its own
    assert c.post("/v1/recalc", json={"op": "refresh-credit", "dry_run": True},
                  headers={"Origin": ORIGIN, "X-CSRF-Token": csrf}).status_code == 403
    # an API key in the headers wins over the cookie, and needs no CSRF proof
    _, secrets = web
    r = c.post("/v1/sql", json=sql, headers={"Authorization": f"Bearer {secrets['tenant:acme']}"})
    assert r.status_code == 200 and len(r.json()["rows"]) >= 2
    # signing out ends the cookie's access to /v1
    c.post("/logout", data={"csrf_token": csrf}, headers={"Origin": ORIGIN})
    assert c.get("/v1/fields").status_code == 401
