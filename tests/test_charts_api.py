"""/v1/charts on both engine interfaces: every chart's totals equal the same aggregate
written as SQL and run through POST /v1/sql, for each principal, on each source (the
daily summary for whole UTC days, the call records by day and by hour), with archived
months left out or included as the grid does; and a customer's charts count only its
calls, whatever it sends.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cdrhouse.api.app import create_app
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import keys
from cdrhouse.engine.db import Database
from cdrhouse.tiering.archive import Tiering
from cdrhouse.tiering.store import ArchiveConfig, LocalStore

UTC = dt.timezone.utc
WHO = ("admin", "tenant:acme", "tenant:acme/customer:C1", "tenant:acme/carrier:K1",
       "tenant:globex")
#: (tenant, customer, carrier) ids: acme C1=1 C2=2 K1=3 K2=4; globex G1=1 GK=2
COUNTRIES = ("DE", "GB", "US", "FR")
REASONS = ("NORMAL_CLEARING", "NO_ANSWER", "USER_BUSY")


def rows() -> list[tuple]:
    """March 2026 (to be archived) and October 2026 (hot), spread over hours and days."""
    out = []
    for i in range(360):
        tenant = "globex" if i % 9 == 0 else "acme"
        month = 3 if i % 5 == 0 else 10
        start = dt.datetime(2026, month, 1 + i % 12, (i * 7) % 24, (i * 13) % 60, tzinfo=UTC)
        billsec = 0 if i % 4 == 0 else 10 + (i * 17) % 300
        cust = 1 if tenant == "globex" else 1 + i % 2
        carr = 2 if tenant == "globex" else 3 + (i // 2) % 2
        out.append((tenant, f"{tenant}-{i:04d}", start, start + dt.timedelta(seconds=billsec + 4),
                    billsec + 4, billsec, cust, carr,
                    "ANSWERED" if billsec else "NO ANSWER", f"44207{i:05d}",
                    f"49301{i:05d}", COUNTRIES[i % 4], f"49{i % 3}",
                    "NORMAL_CLEARING" if billsec else REASONS[1 + i % 2],
                    Decimal("0.01") if billsec else None, 1))
    return out


COLS = ["tenant_id", "call_id", "start_time", "end_time", "duration", "billsec", "customer_id",
        "carrier_id", "disposition", "src_number", "dst_number", "country", "dst_prefix",
        "release_reason", "customer_charge", "version"]


@pytest.fixture
def api(store: Database, tmp_path: Path):
    for tenant, code, kind in (("acme", "C1", "customer"), ("acme", "C2", "customer"),
                               ("acme", "K1", "carrier"), ("acme", "K2", "carrier"),
                               ("globex", "G1", "customer"), ("globex", "GK", "carrier")):
        acc.add_account(store, tenant, code, kind)
    store.insert_rows("cdr_records", rows(), COLS)
    secrets = {who: keys.create_key(store, who)[1] for who in WHO}
    app = create_app(ServiceConfig(store=store.config, pool_size=2,
                                   auth_failures_per_minute=1000,
                                   archive=ArchiveConfig(url=str(tmp_path / "warm"))))
    with TestClient(app) as client:
        yield client, secrets, store, tmp_path


def h(secrets: dict, who: str) -> dict:
    return {"Authorization": f"Bearer {secrets[who]}"}


def sql_totals(client, secrets, who, where: str = "1", params: dict | None = None,
               archive: bool = False, calls: str = "count()") -> dict:
    r = client.post("/v1/sql", headers=h(secrets, who), json={
        "sql": f"SELECT {calls} AS n, countIf(billsec > 0) AS c, "
               f"sum(billsec) AS b FROM cdrs WHERE {where}",
        "params": params or {}, "include_archive": archive})
    assert r.status_code == 200, r.text
    calls_, connected, billsec = (int(v) for v in r.json()["rows"][0])
    return {"calls": calls_, "connected": connected, "billsec": billsec}


def sql_top(client, secrets, who, dim: str, where: str, params: dict, n: int = 10) -> list:
    r = client.post("/v1/sql", headers=h(secrets, who), json={
        "sql": f"SELECT {dim} AS k, count() AS c FROM cdrs WHERE {where} "
               f"GROUP BY k ORDER BY c DESC, k ASC LIMIT {n}", "params": params})
    assert r.status_code == 200, r.text
    return [(str(k), int(c)) for k, c in r.json()["rows"]]


def charts(client, secrets, who, body: dict) -> dict:
    r = client.post("/v1/charts", headers=h(secrets, who), json=body)
    assert r.status_code == 200, r.text
    return r.json()


def bounds(body: dict) -> tuple[str, dict]:
    rng, where, params = body["range"], ["1"], {}
    if rng["from"]:
        where.append("start_time >= {a:DateTime64(3, 'UTC')}")
        params["a"] = rng["from"][:23].replace("T", " ")
    if rng["to"]:
        where.append("start_time < {b:DateTime64(3, 'UTC')}")
        params["b"] = rng["to"][:23].replace("T", " ")
    return " AND ".join(where), params


def check(client, secrets, who, request: dict, source: str, bucket: str,
          extra: str = "1", calls: str = "count()") -> dict:
    body = charts(client, secrets, who, request)
    assert (body["plan"]["source"], body["plan"]["bucket"]) == (source, bucket), body["plan"]
    where, params = bounds(body)
    want = sql_totals(client, secrets, who, f"{where} AND {extra}", params,
                      request.get("include_archive", False), calls)
    got = {k: body["totals"][k] for k in ("calls", "connected", "billsec")}
    assert got == want, (who, request)
    s = body["series"]
    assert (sum(s["calls"]), sum(s["connected"])) == (want["calls"], want["connected"])
    assert body["totals"]["minutes"] == round(want["billsec"] / 60, 2)
    if want["calls"]:
        assert body["totals"]["asr"] == round(want["connected"] / want["calls"], 4)
    # the top lists are the same GROUP BY
    for dim in ("country", "dst_prefix", "release_reason"):
        if request.get("include_archive"):
            continue
        top = [(t["key"], t["calls"]) for t in body["top"][dim]]
        assert top == sql_top(client, secrets, who, dim, f"{where} AND {extra}", params), dim
    return body


OCT = {"range": "custom", "from": "2026-10-01", "to": "2026-10-13", "tz": "UTC"}


def test_totals_equal_sql_on_every_source(api) -> None:
    client, secrets, _, _ = api
    for who in WHO:
        # whole UTC days: the daily summary
        b = check(client, secrets, who, OCT, "daily_summary", "day")
        assert len(b["series"]["t"]) == 12 and b["plan"]["zone"] == "UTC"
        # the same dates as wall time in Berlin are not whole UTC days: CDRs, Berlin days
        b = check(client, secrets, who, {**OCT, "tz": "Europe/Berlin"}, "cdrs", "day")
        assert b["series"]["time"][0] == "2026-10-01T00:00:00+02:00"
        # a short range: hours
        short = {"range": "custom", "from": "2026-10-02T06:00", "to": "2026-10-04T06:00",
                 "tz": "Asia/Kolkata"}
        b = check(client, secrets, who, short, "cdrs", "hour")
        assert len(b["series"]["t"]) == 48
        assert b["series"]["time"][0] == "2026-10-02T06:00:00+05:30"
        # connected only, from the summary
        check(client, secrets, who, {**OCT, "connected_only": True}, "daily_summary", "day",
              "billsec > 0")
        # a number search needs the CDRs
        check(client, secrets, who, {**OCT, "number": "*1"}, "cdrs", "day",
              "(endsWith(src_number, '1') OR endsWith(dst_number, '1'))")
        # rules on summary keys stay on the summary; others need the CDRs
        check(client, secrets, who, {**OCT, "rules": {"condition": "OR", "rules": [
            {"field": "country", "operator": "in", "value": ["DE", "FR"]},
            {"field": "dst_prefix", "operator": "equal", "value": "490"}]}},
            "daily_summary", "day", "(country IN ('DE', 'FR') OR dst_prefix = '490')")
        check(client, secrets, who, {**OCT, "rules": {"combinator": "and", "rules": [
            {"field": "billsec", "operator": ">", "value": 100}]}}, "cdrs", "day",
            "billsec > 100")
    # an operator narrowing to one account: still the summary, and only its calls
    check(client, secrets, "tenant:acme", {**OCT, "customer": "C2"}, "daily_summary", "day",
          "customer_id = 2")
    check(client, secrets, "tenant:acme", {**OCT, "carrier": "K2", "tz": "Europe/Berlin"},
          "cdrs", "day", "carrier_id = 4")


def test_get_matches_post_and_reports_bad_input(api) -> None:
    client, secrets, _, _ = api
    got = client.get("/v1/charts", params={**OCT, "top": 3}, headers=h(secrets, "tenant:acme"))
    assert got.status_code == 200, got.text
    posted = charts(client, secrets, "tenant:acme", {**OCT, "top": 3})
    assert got.json()["totals"] == posted["totals"]
    assert all(len(v) <= 3 for v in got.json()["top"].values())
    for params, words in (({"range": "soon"}, "range"), ({**OCT, "tz": "Mars/Base"}, "tz"),
                          ({**OCT, "number": "abc"}, "number"), ({**OCT, "limit": 5}, "limit")):
        r = client.get("/v1/charts", params=params, headers=h(secrets, "tenant:acme"))
        assert r.status_code == 400 and words in r.json()["detail"], r.text
    r = client.post("/v1/charts", headers=h(secrets, "tenant:acme"), json={**OCT, "rules": {
        "condition": "AND", "rules": [{"field": "nope", "operator": "equal", "value": 1}]}})
    assert r.status_code == 400 and "rules[0]" in r.json()["detail"]


def test_customer_charts_count_only_its_calls(api) -> None:
    client, secrets, db, _ = api
    mine = [r for r in rows() if r[0] == "acme" and r[6] == 1 and r[2].month == 10]
    cust = "tenant:acme/customer:C1"
    body = charts(client, secrets, cust, OCT)
    assert body["totals"]["calls"] == len(mine)
    assert body["totals"]["billsec"] == sum(r[5] for r in mine)
    # hostile: naming another customer, a carrier-side field, or narrowing is refused
    # or changes nothing — never more calls
    for attempt in ({"rules": {"condition": "OR", "rules": [
                        {"field": "customer_id", "operator": "equal", "value": 2},
                        {"field": "customer_id", "operator": "not_equal", "value": 2}]}},
                    {"rules": {"condition": "AND", "rules": [
                        {"field": "carrier_id", "operator": "equal", "value": 3}]}},
                    {"customer": "C2"}, {"tenant": "globex"}, {"number": "*"}):
        r = client.post("/v1/charts", headers=h(secrets, cust), json={**OCT, **attempt})
        if r.status_code == 200:
            assert r.json()["totals"]["calls"] <= len(mine), attempt
            assert {t["key"] for t in r.json()["top"]["country"]} <= {r[11] for r in mine}
        else:
            assert r.status_code in (400, 403), r.text
    # the carrier's own view of the same days
    theirs = [r for r in rows() if r[0] == "acme" and r[7] == 3 and r[2].month == 10]
    assert charts(client, secrets, "tenant:acme/carrier:K1", OCT)["totals"]["calls"] == len(theirs)


def test_archived_months_are_left_out_unless_included(api) -> None:
    client, secrets, db, tmp = api
    Tiering(db, LocalStore(tmp / "warm")).run(today=dt.date(2026, 11, 29), months=[202603])
    assert not db.scalar("SELECT count() FROM cdr_records WHERE toYYYYMM(start_time) = 202603")
    everything = {"range": "all", "tz": "UTC"}
    for who in WHO:
        # the summary still holds March; without include_archive the charts leave it out,
        # as the grid and SQL do
        b = check(client, secrets, who, everything, "daily_summary", "day")
        assert b["archive"]["in_range"] == ["2026-03"]
        b = check(client, secrets, who, {**everything, "include_archive": True},
                  "daily_summary", "day")
        assert b["archive"]["included"]
        # from the CDRs (a filter the summary cannot answer) with the archive read too
        check(client, secrets, who, {**everything, "include_archive": True, "rules": {
            "condition": "AND", "rules": [{"field": "billsec", "operator": "less",
                                           "value": 200}]}}, "cdrs", "day", "billsec < 200")
    b = charts(client, secrets, "tenant:acme", everything)
    assert b["archive"]["in_range"] == ["2026-03"] and not b["archive"]["included"]
    assert b["archive"]["months"] == []
    with_archive = charts(client, secrets, "tenant:acme", {**everything, "include_archive": True})
    assert with_archive["archive"]["months"] == ["2026-03"]
    march = [r for r in rows() if r[0] == "acme" and r[2].month == 3]
    assert with_archive["totals"]["calls"] - b["totals"]["calls"] == len(march)

