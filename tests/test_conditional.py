"""Conditional viewer pages (api/conditional.py) and the preferences cache (api/cache.py),
through the real service on the embedded engine.

A 304 must never be served after the data changed, nor to anyone but the principal
(and key) the tag was made for; a saved preference must apply to the next page.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cdrhouse.api.app import create_app
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import keys
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from test_viewer import cdr, insert  # tests/ is on sys.path (conftest.py's folder)

URL = "/v1/cdrs?range=custom&from=2026-03-01&to=2026-04-01&limit=5"


@pytest.fixture(scope="module")
def api(embedded_dsn: str, engine_dir: Path):
    name = f"t_{uuid.uuid4().hex[:12]}"
    store = StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn, database=name)
    db = Database(store)
    migrate(db)
    acc.add_account(db, "acme", "C1", "customer")     # 1
    acc.add_account(db, "globex", "G1", "customer")   # 1
    insert(db, [cdr(f"acme-{i}", datetime(2026, 3, 1 + i, tzinfo=UTC), billsec=i) for i in range(8)]
           + [cdr("globex-1", datetime(2026, 3, 2, tzinfo=UTC), tenant="globex")])
    secrets = {who: keys.create_key(db, who)[1] for who in (
        "admin", "tenant:acme", "tenant:acme/customer:C1", "tenant:globex")}
    secrets["tenant:acme#2"] = keys.create_key(db, "tenant:acme", "second key")[1]
    app = create_app(ServiceConfig(store=store, pool_size=2, auth_failures_per_minute=1000,
                                   page_etags=True))
    with TestClient(app) as client:
        yield client, secrets, db
    db.command(f"DROP DATABASE `{name}`")
    db.close()


def get(api, who: str, url: str = URL, tag: str | None = None):
    client, secrets, _ = api
    headers = {"Authorization": f"Bearer {secrets[who]}"}
    if tag:
        headers["If-None-Match"] = tag
    return client.get(url, headers=headers)


def test_an_unchanged_page_is_not_modified(api) -> None:
    first = get(api, "tenant:acme")
    assert first.status_code == 200
    tag = first.headers["etag"]
    assert tag.startswith('"') and first.headers["cache-control"] == "private, no-cache"
    assert "Authorization" in first.headers["vary"]
    again = get(api, "tenant:acme", tag=tag)
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    # weak form and lists of tags are understood (RFC 9110 weak comparison)
    assert get(api, "tenant:acme", tag=f'"nope", W/{tag}').status_code == 304
    # a wrong tag, or `*`, gets the page
    for other in ('"nope"', "*"):
        resp = get(api, "tenant:acme", tag=other)
        assert resp.status_code == 200 and resp.json() == first.json()
    # another request (another page, another filter) has its own tag
    for url in (URL.replace("limit=5", "limit=6"), URL + "&connected_only=true",
                URL + "&tz=Europe/Berlin", URL.replace("2026-03-01", "2026-03-02")):
        resp = get(api, "tenant:acme", url, tag=tag)
        assert resp.status_code == 200 and resp.headers["etag"] != tag


@pytest.mark.parametrize("other", ["tenant:acme/customer:C1", "tenant:globex", "admin",
                                   "tenant:acme#2"])
def test_another_principal_never_gets_a_304_for_someone_elses_tag(api, other: str) -> None:
    tag = get(api, "tenant:acme").headers["etag"]
    resp = get(api, other, tag=tag)
    assert resp.status_code == 200, f"{other} got {resp.status_code} on tenant:acme's tag"
    assert resp.headers["etag"] != tag
    # and the tag it gets is its own: it works for itself, not for acme
    assert get(api, other, tag=resp.headers["etag"]).status_code == 304
    assert get(api, "tenant:acme", tag=resp.headers["etag"]).status_code == 200


def test_a_write_invalidates_the_tag(api) -> None:
    _, _, db = api
    first = get(api, "tenant:acme")
    tag = first.headers["etag"]
    assert get(api, "tenant:acme", tag=tag).status_code == 304
    # a new call (ingest)
    insert(db, [cdr("acme-new", datetime(2026, 3, 20, tzinfo=UTC), billsec=99)])
    resp = get(api, "tenant:acme", tag=tag)
    assert resp.status_code == 200 and resp.json()["rows"][0]["call_id"] == "acme-new"
    tag = resp.headers["etag"]
    assert get(api, "tenant:acme", tag=tag).status_code == 304
    # a new version of the same call (how re-rate and undo write)
    row = cdr("acme-new", datetime(2026, 3, 20, tzinfo=UTC), billsec=7)
    row["version"] = 2
    insert(db, [row])
    resp = get(api, "tenant:acme", tag=tag)
    assert resp.status_code == 200, "a 304 after a call was re-rated"
    top = resp.json()["rows"][0]
    assert (top["call_id"], top["billsec"]) == ("acme-new", 7)


def test_saved_preferences_apply_to_the_next_page_and_change_its_tag(api) -> None:
    client, secrets, _ = api
    h = {"Authorization": f"Bearer {secrets['tenant:acme']}"}
    first = get(api, "tenant:acme")     # preferences are now cached by the service
    tag = first.headers["etag"]
    assert "carrier_id" in first.json()["columns"]
    put = client.put("/v1/preferences", headers=h,
                     json={"tz": "Asia/Tokyo", "columns": ["start_time", "call_id"]})
    assert put.status_code == 200
    resp = get(api, "tenant:acme", tag=tag)
    assert resp.status_code == 200, "a 304 after the key's preferences changed"
    body = resp.json()
    assert body["columns"] == ["start_time", "call_id"] and body["timezone"] == "Asia/Tokyo"
    assert body["rows"][0]["start_time"].endswith("+09:00")
    client.put("/v1/preferences", headers=h, json={"tz": None, "columns": None})
    assert get(api, "tenant:acme").json()["timezone"] == "UTC"


def test_search_and_archive_pages_carry_no_tag(api) -> None:
    client, secrets, _ = api
    h = {"Authorization": f"Bearer {secrets['tenant:acme']}"}
    resp = client.post("/v1/cdrs/search", headers=h, json={
        "range": "custom", "from": "2026-03-01", "to": "2026-04-01",
        "rules": {"condition": "AND", "rules": [{"field": "billsec", "operator": "greater",
                                                 "value": 3}]}})
    assert resp.status_code == 200 and "etag" not in resp.headers
    assert {r["billsec"] for r in resp.json()["rows"]} and min(
        r["billsec"] for r in resp.json()["rows"]) > 3
    assert "etag" not in get(api, "tenant:acme", URL + "&include_archive=true").headers


def test_errors_stay_errors(api) -> None:
    resp = get(api, "tenant:acme", URL + "&tz=Mars/Olympus", tag='"x"')
    assert resp.status_code == 400 and "etag" not in resp.headers
    resp = get(api, "tenant:acme/customer:C1", URL + "&customer=C1", tag='"x"')
    assert resp.status_code in (400, 403) and "etag" not in resp.headers


def test_tags_are_off_unless_configured(api, monkeypatch) -> None:
    _, secrets, db = api
    monkeypatch.delenv("CDRHOUSE_PAGE_ETAGS", raising=False)
    assert ServiceConfig(store=db.config).page_etags is False
    monkeypatch.setenv("CDRHOUSE_PAGE_ETAGS", "on")
    assert ServiceConfig(store=db.config).page_etags is True
    app = create_app(ServiceConfig(store=db.config, pool_size=1, page_etags=False))
    with TestClient(app) as client:
        h = {"Authorization": f"Bearer {secrets['tenant:acme']}", "If-None-Match": '"x"'}
        resp = client.get(URL, headers=h)
        assert resp.status_code == 200 and "etag" not in resp.headers
        assert resp.json()["rows"]
