"""The audit trail (issue 18) on both engine interfaces: every listed action leaves its
record, no secret ever reaches the table, each principal sees only its own share,
nothing buffered is lost at a clean shutdown, and the retention is a TTL.

One store per engine interface for the module (embedded, and the same engine over
HTTP: conftest's `fresh_db`, as the `store` fixture makes them), with the web
viewer's small dataset (tests/webstore.py). The shutdown and batch tests start their own
apps on that store and count only their own key's records; the retention test, which
needs a table at its defaults, uses the `store` fixture itself. Actions go through the
real app (TestClient) and the real CLI (typer's runner, in process), and records are read
back from the table.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))
import webstore  # noqa: E402
from conftest import _drop, fresh_db  # noqa: E402

from cdrhouse.api import audit as api_audit  # noqa: E402
from cdrhouse.api.app import create_app  # noqa: E402
from cdrhouse.api.cli import app as cli_app  # noqa: E402
from cdrhouse.api.service import ServiceConfig  # noqa: E402
from cdrhouse.engine import audit as au  # noqa: E402
from cdrhouse.engine import users  # noqa: E402
from cdrhouse.engine.db import Database  # noqa: E402
from cdrhouse.sql.recordings import RecordingPolicy  # noqa: E402

from cli_inproc import CliRunner  # noqa: E402  (typer's runner, command built once)


ORIGIN = "http://testserver"
NEW_PASSWORD = "a brand new passphrase 42"
CARD = ("prefix,rate_per_min,connect_fee,increment,min_duration,effective_from,currency\n"
        "49,0.006,0,1/1,0,2026-01-01,USD\n")


@dataclasses.dataclass
class Env:
    db: Database
    app: Any
    client: TestClient
    secrets: dict[str, str]
    key_ids: dict[str, str]
    user_ids: dict[str, str]
    tmp: Path

    def call(self, who: str | None, method: str, path: str, **kw: Any):
        headers = dict(kw.pop("headers", {}) or {})
        if who:
            headers["Authorization"] = f"Bearer {self.secrets[who]}"
        return self.client.request(method, path, headers=headers, **kw)

    def flush(self) -> None:
        self.app.state.audit.flush()

    def since(self, marker: dt.datetime, **where: Any) -> list[au.Record]:
        """Records written since `marker` (after a flush), oldest first."""
        self.flush()
        cond = " AND ".join(f"{k} = {{{k}:String}}" for k in where)
        rows = self.db.rows(
            f"SELECT {', '.join(au.COLUMNS)} FROM audit_log WHERE time >= {{m:DateTime64(3, 'UTC')}}"
            + (f" AND {cond}" if cond else "") + " ORDER BY time, event_id",
            {"m": marker, **where})
        return [au.Record(*r) for r in rows]

    def cli(self, *args: str, input: str | None = None):
        cfg = self.db.config
        base = ["--data-dir", str(cfg.data_dir), "--clickhouse", cfg.dsn, "--database", cfg.database]
        return CliRunner().invoke(cli_app, [*base, *args], input=input)


def _mark() -> dt.datetime:
    # the table keeps milliseconds: step back one so a record made now is "since"
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(milliseconds=2)


@pytest.fixture(scope="module", params=["embedded", "http"])
def env(request, embedded_dsn: str, engine_dir: Path, tmp_path_factory):
    from argon2 import PasswordHasher
    with pytest.MonkeyPatch.context() as mp:
        # cheap password hashing: many sign-ins on 2 cores (production keeps the defaults)
        mp.setattr(users, "_hasher", PasswordHasher(time_cost=1, memory_cost=8 * 1024,
                                                    parallelism=1))
        db = fresh_db(request, request.param, embedded_dsn, engine_dir)
        rec = webstore.RecordingServer().start()
        try:
            secrets = webstore.load(db, dt.datetime.now(dt.timezone.utc), rec.base)
            key_ids = {who: s.split("_")[1] for who, s in secrets.items()}
            user_ids = {u.name: u.user_id for u in users.list_users(db)}
            app = create_app(ServiceConfig(
                store=db.config, pool_size=2, auth_failures_per_minute=1000,
                recordings=RecordingPolicy.parse("127.0.0.1"),
                audit=au.AuditSettings(flush_seconds=3600)))
            with TestClient(app, base_url=ORIGIN) as client:
                yield Env(db, app, client, secrets, key_ids, user_ids,
                          tmp_path_factory.mktemp("audit"))
        finally:
            rec.stop()
            _drop(db)


def web_client(env: Env, name: str = "operator", password: str = webstore.PASSWORD
               ) -> TestClient:
    """A second client on the same app, signed in to the web viewer."""
    c = TestClient(env.app, base_url=ORIGIN)
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"name": name, "password": password, "api_key": "",
                               "csrf_token": token, "next": "/"},
               headers={"Origin": ORIGIN}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return c


def csrf_of(c: TestClient) -> str:
    return re.search(r'data-csrf="([^"]+)"', c.get("/?range=all").text).group(1)


# -- completeness: (action -> its record) -------------------------------------------------

def _saved(env: Env) -> str:
    r = env.call("tenant:acme", "POST", "/v1/queries", json={
        "name": "audit me", "kind": "sql", "body": {"sql": "SELECT count() FROM cdrs"}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _job(env: Env) -> str:
    r = env.call("tenant:acme", "POST", "/v1/recalc",
                 json={"op": "refresh-credit", "from": "2026-03-01", "to": "2026-03-02"})
    assert r.status_code == 202, r.text
    return r.json()["id"]


SQL = "SELECT count() AS n FROM cdrs WHERE billsec > 0"

#: (what, who, method, path, request kwargs or a function of env giving them,
#:  expected action, expected status, expected parameter summary items)
API_CASES: list[tuple] = [
    ("viewer page", "tenant:acme", "GET", "/v1/cdrs?range=all&limit=5", {},
     "GET /v1/cdrs", 200, {"query": {"range": "all", "limit": "5"}}),
    ("builder search", "tenant:acme/customer:C1", "POST", "/v1/cdrs/search",
     {"json": {"range": "all", "limit": 3, "rules": {"combinator": "and", "rules": [
         {"field": "billsec", "operator": ">", "value": 30}]}}},
     "POST /v1/cdrs/search", 200, {"body": {"range": "all", "limit": 3, "rules": {
         "combinator": "and", "rules": [{"field": "billsec", "operator": ">", "value": 30}]}}}),
    ("user SQL", "tenant:acme", "POST", "/v1/sql", {"json": {"sql": SQL}},
     "POST /v1/sql", 200, {"body": {"sql": SQL}}),
    ("refused SQL", "tenant:acme/customer:C1", "POST", "/v1/sql",
     {"json": {"sql": "SELECT carrier_cost FROM cdrs"}},
     "POST /v1/sql", 400, {"body": {"sql": "SELECT carrier_cost FROM cdrs"}}),
    ("one record", "tenant:acme", "GET", "/v1/cdrs/acme-0001", {},
     "GET /v1/cdrs/{call_id}", 200, {"path": {"call_id": "acme-0001"}}),
    ("fields", "tenant:acme/carrier:K1", "GET", "/v1/fields", {}, "GET /v1/fields", 200, {}),
    ("CSV download", "tenant:acme", "GET", "/v1/cdrs.csv?range=all&compression=gzip", {},
     "GET /v1/cdrs.csv", 200, {"query": {"range": "all", "compression": "gzip"}}),
    ("search download", "tenant:acme", "POST", "/v1/cdrs/search.csv",
     {"json": {"range": "all", "number": "4420*"}}, "POST /v1/cdrs/search.csv", 200,
     {"body": {"range": "all", "number": "4420*"}}),
    ("SQL download", "tenant:acme/customer:C1", "POST", "/v1/sql.csv",
     {"json": {"sql": "SELECT call_id FROM cdrs"}}, "POST /v1/sql.csv", 200,
     {"body": {"sql": "SELECT call_id FROM cdrs"}}),
    ("recording", "tenant:acme", "GET", "/v1/cdrs/acme-rec-1/recording", {},
     "GET /v1/cdrs/{call_id}/recording", 307, {"path": {"call_id": "acme-rec-1"}}),
    ("archive list", "tenant:acme", "GET", "/v1/archive", {}, "GET /v1/archive", 200, {}),
    ("archive download", "tenant:acme", "GET", "/v1/archive/202601?format=csv", {},
     "GET /v1/archive/{month}", 404, {"path": {"month": "202601"}, "query": {"format": "csv"}}),
    ("save query", "tenant:acme", "POST", "/v1/queries",
     {"json": {"name": "by country", "kind": "sql", "body": {"sql": "SELECT 1"}}},
     "POST /v1/queries", 201, {"body": {"name": "by country", "kind": "sql",
                                        "body": {"sql": "SELECT 1"}}}),
    ("replace query", "tenant:acme", "PUT", lambda env: f"/v1/queries/{_saved(env)}",
     {"json": {"name": "renamed", "kind": "sql", "body": {"sql": "SELECT 2"}}},
     "PUT /v1/queries/{query_id}", 200, {"body": {"name": "renamed"}}),
    ("run query", "tenant:acme", "POST", lambda env: f"/v1/queries/{_saved(env)}/run", {},
     "POST /v1/queries/{query_id}/run", 200, {}),
    ("delete query", "tenant:acme", "DELETE", lambda env: f"/v1/queries/{_saved(env)}", {},
     "DELETE /v1/queries/{query_id}", 204, {}),
    ("preferences", "tenant:acme/customer:C1", "PUT", "/v1/preferences",
     {"json": {"tz": "Europe/Berlin", "columns": ["start_time", "billsec"]}},
     "PUT /v1/preferences", 200, {"body": {"tz": "Europe/Berlin",
                                           "columns": ["start_time", "billsec"]}}),
    ("rate import", "tenant:acme", "POST", "/v1/rates?account=C1",
     {"content": CARD, "headers": {"content-type": "text/csv"}}, "POST /v1/rates", 200,
     {"query": {"account": "C1"}, "body": {"type": "text/csv", "bytes": len(CARD)}}),
    ("recalc start", "tenant:acme", "POST", "/v1/recalc",
     {"json": {"op": "refresh-summaries", "from": "2026-03-01", "to": "2026-03-02"}},
     "POST /v1/recalc", 202, {"body": {"op": "refresh-summaries", "from": "2026-03-01"}}),
    ("recalc undo", "tenant:acme", "POST", lambda env: f"/v1/recalc/{_job(env)}/undo", {},
     "POST /v1/recalc/{job_id}/undo", None, {}),
    ("recalc resume", "tenant:acme", "POST", lambda env: f"/v1/recalc/{_job(env)}/resume", {},
     "POST /v1/recalc/{job_id}/resume", None, {}),
    ("recalc refused", "tenant:acme/customer:C1", "POST", "/v1/recalc",
     {"json": {"op": "rerate", "from": "2026-03-01", "to": "2026-03-02"}},
     "POST /v1/recalc", 403, {}),
    ("jobs", "tenant:acme", "GET", "/v1/jobs", {}, "GET /v1/jobs", 200, {}),
    ("balances", "tenant:acme/customer:C1", "GET", "/v1/balances", {}, "GET /v1/balances", 200,
     {}),
    ("portal user", "tenant:acme", "POST", "/v1/users",
     {"json": {"name": "audited", "password": NEW_PASSWORD,
               "principal": "tenant:acme/customer:C2"}},
     "POST /v1/users", 201, {"body": {"name": "audited", "password": api_audit.REDACTED}}),
    ("audit read", "tenant:acme", "GET", "/v1/audit?outcome=error", {}, "GET /v1/audit", 200,
     {"query": {"outcome": "error"}}),
]


def _subset(expected: Any, got: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(k in got and _subset(v, got[k])
                                             for k, v in expected.items())
    return expected == got


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_every_api_action_is_recorded(env: Env, case: tuple) -> None:
    _, who, method, path, kw, action, status, params = case
    path = path(env) if callable(path) else path
    marker = _mark()
    r = env.call(who, method, path, follow_redirects=False, **kw)
    if status is not None:
        assert r.status_code == status, r.text
    found = [x for x in env.since(marker, action=action)
             if x.principal == who and x.status == r.status_code]
    assert len(found) == 1, [x.as_json() for x in env.since(marker)]
    rec = found[0]
    assert rec.key_id == env.key_ids[who] and rec.tenant == (who.split("/")[0][7:]
                                                              if who != "admin" else "")
    assert rec.channel == "api" and rec.client == "testclient" and rec.peer == "testclient"
    assert _subset(params, json.loads(rec.params)), rec.params
    if r.status_code >= 400:
        assert rec.error == r.json()["type"].rsplit("/", 1)[-1]
    else:
        assert rec.error == ""
    assert rec.bytes == len(r.content)
    if action in ("GET /v1/cdrs", "POST /v1/cdrs/search"):
        assert rec.rows == len(r.json()["rows"]) > 0
    if action == "POST /v1/sql" and status == 200:
        assert rec.rows == 1


def test_streamed_download_is_recorded_with_rows_and_bytes_when_it_ends(env: Env) -> None:
    marker = _mark()
    r = env.call("tenant:acme/customer:C1", "GET", "/v1/cdrs.csv?range=all")
    assert r.status_code == 200
    lines = r.text.strip("\n").split("\n")
    [rec] = env.since(marker, action="GET /v1/cdrs.csv")
    assert rec.rows == len(lines) - 1 > 100       # the header is not a row
    assert rec.bytes == len(r.content)
    assert rec.status == 200 and rec.error == ""


def test_failed_authentication_is_recorded_without_a_principal(env: Env) -> None:
    marker = _mark()
    r = env.client.get("/v1/fields", headers={"Authorization": "Bearer cdrh_000000000000_nope"})
    assert r.status_code == 401
    anonymous = env.client.get("/v1/fields")           # no credentials: an anonymous read
    assert anonymous.status_code == 401
    env.client.get("/healthz")
    found = env.since(marker)
    assert [(x.action, x.status, x.error, x.principal) for x in found] == [
        ("GET /v1/fields", 401, "unauthorized", "")]
    assert "cdrh_000000000000_nope" not in found[0].params


def test_web_actions_are_recorded(env: Env) -> None:
    marker = _mark()
    c = web_client(env)                                    # POST /login, as operator
    csrf = csrf_of(c)                                      # GET /
    assert c.get("/web/cdrs.csv?range=all").status_code == 200
    r = c.post("/web/selected.csv", data={"csrf_token": csrf, "call_id": ["acme-0001", "acme-0002"],
                                          "range": "all"}, headers={"Origin": ORIGIN})
    assert r.status_code == 200, r.text
    selected_bytes = len(r.content)
    assert c.post("/web/preferences", json={"tz": "Europe/Paris"},
                  headers={"Origin": ORIGIN, "X-CSRF-Token": csrf}).status_code == 200
    assert c.post("/web/views", data={"csrf_token": csrf, "name": "mine", "range": "all"},
                  headers={"Origin": ORIGIN}, follow_redirects=False).status_code == 303
    assert c.get("/web/recording/acme-rec-1").status_code == 200
    assert c.get("/v1/cdrs?range=all&limit=2").status_code == 200   # the page's scripts
    assert c.post("/logout", data={"csrf_token": csrf}, headers={"Origin": ORIGIN},
                  follow_redirects=False).status_code == 303
    got = [x for x in env.since(marker) if x.channel == "web"]
    by_action = {}
    for x in got:
        by_action.setdefault(x.action, []).append(x)
    for action in ("POST /login", "GET /", "GET /web/cdrs.csv", "POST /web/selected.csv",
                   "POST /web/preferences", "POST /web/views", "GET /web/recording/{call_id}",
                   "GET /v1/cdrs", "POST /logout"):
        assert action in by_action, (action, sorted(by_action))
        for x in by_action[action]:
            assert x.principal == "tenant:acme" and x.user == "operator", x.as_json()
            assert x.key_id == f"user:{env.user_ids['operator']}"
    login = by_action["POST /login"][0]
    assert login.status == 303 and json.loads(login.params)["body"] == {
        "name": "operator", "password": api_audit.REDACTED, "api_key": api_audit.REDACTED,
        "csrf_token": api_audit.REDACTED, "next": "/"}
    [selected] = by_action["POST /web/selected.csv"]
    assert selected.rows == 2 and selected.bytes == selected_bytes
    assert json.loads(selected.params)["body"]["call_id"] == ["acme-0001", "acme-0002"]
    assert by_action["GET /web/cdrs.csv"][0].rows > 100
    assert json.loads(by_action["POST /web/preferences"][0].params)["body"] == {
        "tz": "Europe/Paris"}


def test_failed_sign_ins_are_recorded(env: Env) -> None:
    marker = _mark()
    c = TestClient(env.app, base_url=ORIGIN)
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    wrong = c.post("/login", data={"name": "cust1", "password": "not the password",
                                   "csrf_token": token}, headers={"Origin": ORIGIN})
    badkey = c.post("/login", data={"api_key": "cdrh_0123456789ab_stolenbutrevoked",
                                    "csrf_token": token}, headers={"Origin": ORIGIN})
    assert wrong.status_code == 401 and badkey.status_code == 401
    found = env.since(marker, action="POST /login")
    assert [(x.user, x.status, x.error, x.principal) for x in found] == [
        ("cust1", 401, "sign-in-refused", ""), ("", 401, "sign-in-refused", "")]
    assert "not the password" not in found[0].params
    assert "stolenbutrevoked" not in found[1].params


def test_a_route_added_later_is_recorded_without_doing_anything(env: Env) -> None:
    """The middleware covers every route: a new authenticated endpoint needs no audit code."""
    from fastapi import APIRouter, Depends

    from cdrhouse.api.deps import caller
    from cdrhouse.api.auth import Caller
    router = APIRouter()

    @router.post("/v1/zz-new-thing/{thing}")
    async def new_thing(thing: str, body: dict, who: Caller = Depends(caller)) -> dict:
        return {"thing": thing, **body}
    app = create_app(dataclasses.replace(env.app.state.service.config,
                                         audit=au.AuditSettings(flush_seconds=3600)))
    app.include_router(router)
    marker = _mark()
    with TestClient(app) as c:
        r = c.post("/v1/zz-new-thing/abc?x=1", json={"secret": "s3cr3t", "a": 1},
                   headers={"X-API-Key": env.secrets["tenant:acme"]})
        assert r.status_code == 200
    [rec] = env.since(marker, action="POST /v1/zz-new-thing/{thing}")
    assert rec.principal == "tenant:acme" and rec.key_id == env.key_ids["tenant:acme"]
    assert json.loads(rec.params) == {"path": {"thing": "abc"}, "query": {"x": "1"},
                                      "body": {"secret": api_audit.REDACTED, "a": 1}}


def test_forwarded_client_is_recorded_only_behind_a_trusted_proxy(env: Env) -> None:
    header = {"X-Forwarded-For": "203.0.113.9"}
    marker = _mark()
    assert env.call("tenant:acme", "GET", "/v1/fields", headers=header).status_code == 200
    [plain] = env.since(marker, action="GET /v1/fields")
    assert (plain.client, plain.peer) == ("testclient", "testclient")
    app = create_app(dataclasses.replace(env.app.state.service.config,
                                         forwarded_allow_ips=("*",)))
    marker = _mark()
    with TestClient(app) as c:
        c.get("/v1/fields", headers={**header, "X-API-Key": env.secrets["tenant:acme"]})
    [behind] = env.since(marker, action="GET /v1/fields")
    assert (behind.client, behind.peer) == ("203.0.113.9", "testclient")


# -- the CLI ------------------------------------------------------------------------------

CLI_CASES: list[tuple] = [
    # (what, arguments, stdin, expected action, exit code (as `cdrhouse` exits: the runner
    #  shows 1 for an exception that `main` turns into 2), parameter summary items, tenant)
    ("keys create", ["keys", "create", "--as", "tenant:acme", "--name", "ci"], None,
     "keys create", 0, {"as": "tenant:acme", "name": "ci"}, "acme"),
    ("keys revoke unknown", ["keys", "revoke", "000000000000"], None, "keys revoke", 2,
     {"key_id": "000000000000"}, ""),
    ("accounts add", ["accounts", "add", "--tenant", "acme", "--code", "C9", "--kind",
                      "customer"], None, "accounts add", 0, {"tenant": "acme", "code": "C9"},
     "acme"),
    ("users add", ["users", "add", "cliuser", "--as", "tenant:acme/customer:C1",
                   "--password-stdin"], NEW_PASSWORD + "\n", "users add", 0,
     {"name": "cliuser", "as": "tenant:acme/customer:C1", "password_stdin": api_audit.REDACTED},
     "acme"),
    ("rates import", ["rates", "import", "{card}", "--tenant", "acme", "--account", "C2"], None,
     "rates import", 0, {"tenant": "acme", "account": "C2"}, "acme"),
    ("ledger add", ["ledger", "add", "--tenant", "acme", "--account", "C1", "--amount", "12.5",
                    "--note", "wire"], None, "ledger add", 0,
     {"tenant": "acme", "account": "C1", "amount": "12.5"}, "acme"),
    ("recalc", ["recalc", "refresh-credit", "--as", "tenant:acme", "--from", "2026-03-01",
                "--to", "2026-03-02"], None, "recalc refresh-credit", 0,
     {"as": "tenant:acme", "date_from": "2026-03-01"}, "acme"),
    ("recalc undo refused", ["recalc", "undo", "nosuchjob", "--as", "tenant:acme"], None,
     "recalc undo", 2, {"job_id": "nosuchjob"}, "acme"),
    ("tier run", ["tier", "--archive", "{archive}", "run", "--dry-run"], None, "tier run", 0,
     {"dry_run": True}, ""),
    ("tier restore", ["tier", "--archive", "{archive}", "restore", "--month", "202601"], None,
     "tier restore", None, {"month": "202601"}, ""),
    ("backup verify", ["backup", "--backup", "{backups}", "verify", "nosuch"], None,
     "backup verify", 1, {"backup_id": "nosuch"}, ""),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_admin_commands_are_recorded(env: Env, case: tuple) -> None:
    _, args, stdin, action, code, params, tenant = case
    card = env.tmp / "card.csv"
    card.write_text(CARD)
    fill = {"card": str(card), "archive": str(env.tmp / "warm"),
            "backups": str(env.tmp / "backups")}
    args = [a.format(**fill) if a.startswith("{") else a for a in args]
    marker = _mark()
    res = env.cli(*args, input=stdin)
    assert (res.exit_code == 0) == (code == 0) or code is None, res.output
    [rec] = env.since(marker, action=action)
    assert rec.principal.startswith("cli:") and rec.channel == "cli" and rec.key_id == ""
    if code is not None:
        assert rec.status == code, rec
    assert (rec.error == "") == (rec.status == 0)
    assert rec.tenant == tenant
    assert _subset(params, json.loads(rec.params)), rec.params
    if action == "keys create":
        secret = res.stdout.strip().splitlines()[-1]
        assert json.loads(rec.params)["result"]["key_id"] == secret.split("_")[1]
        assert secret not in rec.params


def test_read_only_cli_commands_are_not_recorded(env: Env) -> None:
    marker = _mark()
    assert env.cli("keys", "list").exit_code == 0
    assert env.cli("accounts", "list").exit_code == 0
    assert [x for x in env.since(marker) if x.channel == "cli"] == []


# -- no secrets ---------------------------------------------------------------------------

def test_no_secret_ever_lands_in_the_table(env: Env) -> None:
    """After every kind of action above (and a few made to tempt it), no API key secret,
    password, session cookie or CSRF token is anywhere in the table."""
    c = web_client(env, "cust1")
    cookie = c.cookies.get("cdrhouse_session")
    csrf = csrf_of(c)
    # a key pasted into SQL, a password in a query string, secrets in headers and bodies
    env.call("tenant:acme", "POST", "/v1/sql", json={
        "sql": f"SELECT 1 -- {env.secrets['admin']}", "params": {"password": "hunter2"}})
    env.call("tenant:acme", "GET", f"/v1/fields?token={env.secrets['tenant:globex']}")
    assert env.call("tenant:acme", "PATCH", "/v1/users/carrier1",
                    json={"password": NEW_PASSWORD + "!"}).status_code == 200
    c.post("/web/preferences", json={"tz": "UTC"}, headers={"Origin": ORIGIN,
                                                             "X-CSRF-Token": csrf})
    assert env.cli("users", "passwd", "carrier1", "--password-stdin",
                   input=NEW_PASSWORD + "?\n").exit_code == 0
    env.flush()
    table = "\n".join("\t".join(str(v) for v in row) for row in env.db.rows(
        "SELECT * FROM audit_log"))
    assert table.count("\n") > 30
    forbidden = [*env.secrets.values(), webstore.PASSWORD, NEW_PASSWORD, "hunter2", cookie,
                 csrf]
    for secret in forbidden:
        assert secret and secret not in table, f"a secret landed in the audit table: {secret[:6]}…"
    # and the redaction kept what is not secret
    assert "SELECT 1 -- [redacted]" in table


@pytest.mark.parametrize("given, expected", [
    ({"password": "x", "name": "n"}, {"password": "[redacted]", "name": "n"}),
    ({"nested": {"api_key": "k", "Authorization": "Bearer z"}},
     {"nested": {"api_key": "[redacted]", "Authorization": "[redacted]"}}),
    ({"new_password": "x", "passwd": "y", "client_secret": "z", "csrf_token": "t", "key": "k"},
     {"new_password": "[redacted]", "passwd": "[redacted]", "client_secret": "[redacted]",
      "csrf_token": "[redacted]", "key": "[redacted]"}),
    ({"key_id": "abc", "keys": ["a"]}, {"key_id": "abc", "keys": ["a"]}),
    ({"sql": "SELECT 'cdrh_0123456789ab_AbC-d_e' AS k"}, {"sql": "SELECT '[redacted]' AS k"}),
    ([{"password": 1}, "plain"], [{"password": "[redacted]"}, "plain"]),
])
def test_redaction(given: Any, expected: Any) -> None:
    assert api_audit.redact(given) == expected


def test_summary_of_large_and_binary_bodies() -> None:
    big = json.dumps({"sql": "SELECT " + "1+" * 20000 + "1"}).encode()
    out = json.loads(api_audit.summarize({}, "", "application/json", big, len(big)))
    assert out["body"]["sql"].startswith("SELECT 1+1+") and "more characters]" in out["body"]["sql"]
    out = json.loads(api_audit.summarize({}, "", "text/csv", b"a,b\n", 4))
    assert out == {"body": {"type": "text/csv", "bytes": 4}}
    cut = json.loads(api_audit.summarize({}, "", "application/json", b'{"a":', 10 ** 6))
    assert cut == {"body": {"type": "application/json", "bytes": 10 ** 6}}


# -- who sees what ------------------------------------------------------------------------

def _audit(env: Env, who: str, query: str = "", client: TestClient | None = None):
    env.flush()
    if client is not None:
        return client.get("/v1/audit" + query)
    return env.call(who, "GET", "/v1/audit" + query)


def test_visibility_per_principal(env: Env) -> None:
    marker = _mark()
    for who in ("admin", "tenant:acme", "tenant:acme/customer:C1", "tenant:acme/carrier:K1",
                "tenant:globex"):
        assert env.call(who, "GET", "/v1/fields").status_code == 200
    since = f"?from={marker.isoformat().replace('+00:00', 'Z')}&action=GET%20/v1/fields&limit=1000"

    def principals(who: str, extra: str = "") -> set[str]:
        r = _audit(env, who, since + extra)
        assert r.status_code == 200, r.text
        return {x["principal"] for x in r.json()["records"]}
    assert principals("admin") == {"admin", "tenant:acme", "tenant:acme/customer:C1",
                                   "tenant:acme/carrier:K1", "tenant:globex"}
    assert principals("admin", "&tenant=globex") == {"tenant:globex"}
    assert principals("tenant:acme") == {"tenant:acme", "tenant:acme/customer:C1",
                                         "tenant:acme/carrier:K1"}
    assert principals("tenant:globex") == {"tenant:globex"}
    assert principals("tenant:acme/customer:C1") == {"tenant:acme/customer:C1"}
    assert principals("tenant:acme/carrier:K1") == {"tenant:acme/carrier:K1"}
    # a customer sees its own key's actions, not those of its account's web users
    c = web_client(env, "cust1")
    assert c.get("/v1/fields").status_code == 200
    r = _audit(env, "", since, client=c)
    users_view = {(x["principal"], x["key_id"]) for x in r.json()["records"]}
    assert users_view == {("tenant:acme/customer:C1", f"user:{env.user_ids['cust1']}")}
    keys_view = _audit(env, "tenant:acme/customer:C1", since).json()["records"]
    assert {x["key_id"] for x in keys_view} == {env.key_ids["tenant:acme/customer:C1"]}


@pytest.mark.parametrize("who, query, status", [
    # asking outright for someone else's rows: refused
    ("tenant:acme/customer:C1", "?principal=tenant:acme", 403),
    ("tenant:acme/customer:C1", "?principal=tenant:acme/customer:C2", 403),
    ("tenant:acme/customer:C1", "?tenant=globex", 403),
    ("tenant:acme/carrier:K1", "?principal=admin", 403),
    ("tenant:acme", "?tenant=globex", 403),
    # filters that try to widen through the text: bound parameters, so nothing matches
    ("tenant:acme/customer:C1", "?principal=tenant:acme/customer:C1' OR '1'='1", 403),
    ("tenant:acme", "?principal=tenant:globex", 200),
    ("tenant:acme", "?principal=*", 200),
    ("tenant:acme", "?action=x' OR 1=1 --", 200),
    ("tenant:acme/customer:C1", "?action=*", 200),
    # bad filters: a clear 400
    ("tenant:acme", "?outcome=drop table", 400),
    ("tenant:acme", "?from=yesterday", 400),
    ("tenant:acme", "?limit=0", 400),
    ("tenant:acme", "?cursor=AAAA", 400),
    ("tenant:acme", "?nope=1", 400),
])
def test_hostile_audit_filters(env: Env, who: str, query: str, status: int) -> None:
    r = _audit(env, who, query)
    assert r.status_code == status, r.text
    if status != 200:
        assert r.headers["content-type"] == "application/problem+json"
        return
    records = r.json()["records"]
    if who == "tenant:acme":
        assert {x["tenant"] for x in records} <= {"acme"}
        assert not any(x["principal"].startswith(("tenant:globex", "admin")) for x in records)
    else:
        assert {x["key_id"] for x in records} <= {env.key_ids[who]}


def test_filters_and_paging(env: Env) -> None:
    marker = _mark()
    for _ in range(5):
        env.call("tenant:acme/carrier:K1", "GET", "/v1/fields")
    env.call("tenant:acme/carrier:K1", "POST", "/v1/sql", json={"sql": "SELECT nosuch FROM cdrs"})
    base = f"?from={marker.isoformat().replace('+00:00', 'Z')}"
    seen: list[str] = []
    cursor = None
    while True:
        r = _audit(env, "tenant:acme/carrier:K1",
                   base + "&action=GET%20/v1/fields&limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert r.status_code == 200, r.text
        seen += [x["event_id"] for x in r.json()["records"]]
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 5
    errs = _audit(env, "tenant:acme", base + "&outcome=error&principal=tenant:acme/carrier:*")
    assert [(x["action"], x["error"]) for x in errs.json()["records"]] == [
        ("POST /v1/sql", "query-failed")]
    assert _audit(env, "tenant:acme", base + "&outcome=400&principal=tenant:acme/carrier:K1"
                  ).json()["records"][0]["action"] == "POST /v1/sql"
    until = _audit(env, "tenant:acme", f"?to={marker.isoformat().replace('+00:00', 'Z')}"
                   "&principal=tenant:acme/carrier:K1&action=POST%20/v1/sql&limit=1000")
    assert all(x["time"] < marker.isoformat() for x in until.json()["records"])


def test_cli_audit_listing_is_scoped(env: Env) -> None:
    env.call("tenant:globex", "GET", "/v1/fields")
    env.call("tenant:acme/customer:C1", "GET", "/v1/fields")
    env.flush()
    every = env.cli("audit", "--format", "json", "--limit", "1000")
    assert every.exit_code == 0, every.output
    rows = [json.loads(line) for line in every.stdout.splitlines() if line.startswith("{")]
    assert {"tenant:globex", "tenant:acme/customer:C1"} <= {r["principal"] for r in rows}
    acme = env.cli("audit", "--as", "tenant:acme", "--format", "json", "--limit", "1000")
    principals = {json.loads(x)["principal"] for x in acme.stdout.splitlines() if x.startswith("{")}
    assert "tenant:acme/customer:C1" in principals
    assert not any(p.startswith(("tenant:globex", "admin")) for p in principals)
    c1 = env.cli("audit", "--as", "tenant:acme/customer:C1", "--format", "json")
    assert {json.loads(x)["principal"] for x in c1.stdout.splitlines() if x.startswith("{")} \
        == {"tenant:acme/customer:C1"}
    refused = env.cli("audit", "--as", "tenant:acme", "--tenant", "globex")
    assert refused.exit_code == 2 and "own tenant" in refused.output
    bad = env.cli("audit", "--outcome", "x y")
    assert bad.exit_code == 2 and "outcome:" in bad.output


# -- durability and retention (the `store` fixture) ------------------------------------------

def _records_of_key(db: Database, key_id: str) -> int:
    return db.scalar("SELECT count() FROM audit_log WHERE key_id = {k:String}", {"k": key_id})


def test_buffered_records_are_written_at_a_clean_shutdown(env: Env) -> None:
    from cdrhouse.engine import keys
    store = env.db      # the module's store: only this test's new key is counted
    key, secret = keys.create_key(store, "admin")
    # nothing is flushed before shutdown: no timer within the test, no batch filled
    app = create_app(ServiceConfig(store=store.config, pool_size=1, audit=au.AuditSettings(
        flush_seconds=3600, batch=10 ** 6)))
    with TestClient(app) as c:
        for i in range(7):
            assert c.get("/v1/fields", headers={"X-API-Key": secret}).status_code == 200
        assert app.state.audit.buffered == 7
        assert _records_of_key(store, key.key_id) == 0
    assert store.scalar("SELECT count() FROM audit_log WHERE action = 'GET /v1/fields' "
                        "AND principal = 'admin' AND key_id = {k:String}", {"k": key.key_id}) == 7


def test_a_full_batch_is_written_without_waiting_for_the_timer(env: Env) -> None:
    from cdrhouse.engine import keys
    store = env.db      # the module's store: only this test's new key is counted
    key, secret = keys.create_key(store, "admin")
    app = create_app(ServiceConfig(store=store.config, pool_size=1, audit=au.AuditSettings(
        flush_seconds=3600, batch=3)))
    with TestClient(app) as c:
        for _ in range(3):
            c.get("/v1/fields", headers={"X-API-Key": secret})
        for _ in range(200):       # the writer thread wakes on the third record
            if app.state.audit.written >= 3:
                break
            time.sleep(0.05)
        assert app.state.audit.written == 3
        assert _records_of_key(store, key.key_id) == 3


def test_records_survive_a_store_that_refuses_writes(env: Env) -> None:
    """A failed flush keeps the records, in order, for the next attempt."""
    store = env.db      # the module's store: this test's records have their own actions
    tag = f"survive-{uuid.uuid4().hex[:8]}"
    target = {"config": dataclasses.replace(store.config, database="no_such_database_x")}
    writer = au.AuditWriter(lambda: Database(target["config"], create=False),
                            au.AuditSettings(flush_seconds=3600))
    try:
        for i in range(3):
            writer.add(au.Record(action=f"{tag} {i}", principal="admin"))
        with pytest.raises(Exception):
            writer.flush()
        assert writer.buffered == 3 and writer.failures == 1
        target["config"] = store.config
        assert writer.flush() == 3
    finally:
        writer.close()
    assert [r[0] for r in store.rows("SELECT action FROM audit_log WHERE startsWith(action, "
                                     "{t:String}) ORDER BY time, action", {"t": tag})] == [
        f"{tag} 0", f"{tag} 1", f"{tag} 2"]


def test_retention_is_a_ttl_default_400_days_and_configurable(store: Database) -> None:
    ddl = store.scalar("SELECT create_table_query FROM system.tables WHERE database = "
                       "{d:String} AND name = 'audit_log'", {"d": store.name})
    assert re.search(r"TTL toDateTime\(time\) \+ toIntervalDay\(400\)", ddl), ddl
    assert "MergeTree" in ddl and "ORDER BY (tenant, time, event_id)" in ddl
    assert au.retention_days(store) == au.DEFAULT_DAYS == 400
    # the serve option: applied when the service starts
    app = create_app(ServiceConfig(store=store.config, pool_size=1,
                                   audit=au.AuditSettings(days=90)))
    with TestClient(app):
        pass  # the app's start-up is what applies the option; nothing to request
    assert au.retention_days(store) == 90
    # the CLI
    cfg = store.config
    base = ["--data-dir", str(cfg.data_dir), "--clickhouse", cfg.dsn, "--database", cfg.database]
    res = CliRunner().invoke(cli_app, [*base, "audit", "retention", "30"])
    assert res.exit_code == 0 and res.stdout.strip() == "30", res.output
    assert au.retention_days(store) == 30
    assert CliRunner().invoke(cli_app, [*base, "audit", "retention"]).stdout.strip() == "30"
    bad = CliRunner().invoke(cli_app, [*base, "audit", "retention", "0"])
    assert bad.exit_code == 2
    assert au.retention_days(store) == 30
    # a record older than the retention goes when TTLs are applied; a recent one stays
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=31)
    au.write(store, [au.Record(action="old", time=old), au.Record(action="new")])
    store.command("OPTIMIZE TABLE audit_log FINAL")
    assert [r[0] for r in store.rows("SELECT action FROM audit_log WHERE action IN "
                                     "('old', 'new')")] == ["new"]
    with pytest.raises(au.AuditError):
        au.set_retention(store, 0)


def test_on_a_cluster_the_audit_table_is_a_small_table_on_the_home_node(cluster_db: Database
                                                                          ) -> None:
    """Sharded (no Keeper): like the other small tables, one plain table on the node
    cdrhouse talks to; writes, scoped reads and a retention change work there."""
    engine = cluster_db.scalar("SELECT engine FROM system.tables WHERE database = {d:String} "
                               "AND name = 'audit_log'", {"d": cluster_db.name})
    assert engine == "MergeTree"
    writer = au.AuditWriter(lambda: Database(cluster_db.config, create=False),
                            au.AuditSettings(flush_seconds=3600))
    try:
        writer.add(au.Record(action="GET /v1/fields", principal="tenant:acme", tenant="acme"))
        writer.add(au.Record(action="GET /v1/fields", principal="tenant:globex", tenant="globex"))
    finally:
        writer.close()
    page = au.search(cluster_db, au.Scope(tenant="acme"), au.Filters())
    assert [r.principal for r in page.records] == ["tenant:acme"]
    assert au.set_retention(cluster_db, 30) and au.retention_days(cluster_db) == 30
