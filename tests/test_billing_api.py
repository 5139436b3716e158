"""Billing over HTTP against the real embedded engine: recalc jobs, undo, balances, rates."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_recalc import REPRICED, _load, money, req

from cdrhouse.api.app import create_app
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import keys, ledger, recalc
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql.principal import Principal

PRINCIPALS = {"op": "tenant:acme", "c1": "tenant:acme/customer:C1",
              "k1": "tenant:acme/carrier:K1", "admin": "admin", "gop": "tenant:globex"}


@pytest.fixture
def env(embedded_dsn: str, engine_dir: Path, tmp_path: Path):
    name = f"t_{uuid.uuid4().hex[:12]}"
    store = StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn, database=name)
    db = Database(store)
    migrate(db)
    _load(db, tmp_path)
    secrets = {who: keys.create_key(db, p)[1] for who, p in PRINCIPALS.items()}
    app = create_app(ServiceConfig(store=store, pool_size=3, auth_failures_per_minute=1000))
    try:
        with TestClient(app) as client:
            yield client, secrets, db
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{name}` SYNC")
        db.close()


def call(env, who: str | None, method: str, path: str, **kw):
    client, secrets, _ = env
    headers = {"Authorization": f"Bearer {secrets[who]}"} if who else {}
    return client.request(method, path, headers=headers, **kw)


def finished(env, who: str, job_id: str) -> dict:
    for _ in range(1200):
        r = call(env, who, "GET", f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        if r.json()["state"] not in ("queued", "running"):
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


MARCH = {"from": "2026-03-01", "to": "2026-03-31"}


@pytest.mark.parametrize("who, status", [(None, 401), ("c1", 403), ("k1", 403)])
def test_recalc_is_for_operators_and_admins(env, who: str | None, status: int) -> None:
    r = call(env, who, "POST", "/v1/recalc", json={"op": "rerate", **MARCH})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"


def test_rerate_undo_and_refusal_over_http(env) -> None:
    r = call(env, "op", "POST", "/v1/recalc", json={"op": "rerate", **MARCH, "dry_run": True})
    assert r.status_code == 202, r.text
    preview = finished(env, "op", r.json()["id"])
    assert preview["state"] == "succeeded" and preview["result"]["calls_changed"] == 2
    r = call(env, "op", "POST", "/v1/recalc", json={"op": "rerate", **MARCH})
    assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    job = finished(env, "op", r.json()["id"])
    assert job["state"] == "succeeded"
    assert job["result"]["accounts"] == preview["result"]["accounts"]
    assert money(env[2]) == REPRICED
    r = call(env, "op", "POST", f"/v1/recalc/{job['id']}/undo")
    assert r.status_code == 202, r.text
    assert finished(env, "op", r.json()["id"])["state"] == "succeeded"
    r = call(env, "op", "POST", f"/v1/recalc/{job['id']}/undo")
    assert r.status_code == 400 and "already undone" in r.json()["detail"]


@pytest.mark.parametrize("body, message", [
    ({"op": "rerate", "from": "2026-03-05", "to": "2026-03-01"}, "is before --from"),
    ({"op": "adjust-duration", **MARCH}, "needs --min-duration"),
    ({"op": "nope", **MARCH}, "op:"),
    ({"op": "rerate", **MARCH, "tenant": "globex"}, "cannot act on tenant"),
])
def test_bad_recalc_requests(env, body: dict, message: str) -> None:
    r = call(env, "op", "POST", "/v1/recalc", json=body)
    assert r.status_code in (400, 403), r.text
    assert message in r.json()["detail"]


def test_overlapping_recalc_is_a_conflict(env) -> None:
    db = env[2]
    holder = recalc.start(db, req(), Principal.operator("acme"))
    recalc.claim(db, holder)
    r = call(env, "op", "POST", "/v1/recalc", json={"op": "rerate", "from": "2026-03-30",
                                                      "to": "2026-04-02"})
    assert r.status_code == 409, r.text
    assert r.json()["type"] == "/problems/conflict" and holder.job_id in r.json()["detail"]


def test_balances_per_principal(env) -> None:
    ledger.refresh(env[2], "acme")
    def accounts(who: str, query: str = "") -> list[str]:
        r = call(env, who, "GET", "/v1/balances" + query)
        assert r.status_code == 200, r.text
        return [f"{b['kind']}:{b['account']}={b['balance']}" for b in r.json()["balances"]]
    # usage as ingested: C1 0.5 + 0.024 + 9, C2 1 + 0.04, K1 0.2 + 0.0061 + 0.012, K2 1 + 9
    assert accounts("c1") == ["customer:C1=-9.524000"]
    assert accounts("k1") == ["carrier:K1=-0.218100"]
    assert accounts("op") == ["customer:C1=-9.524000", "customer:C2=-1.040000",
                              "carrier:K1=-0.218100", "carrier:K2=-10.000000"]
    assert accounts("op", "?customer=C2") == ["customer:C2=-1.040000"]
    assert accounts("admin", "?tenant=acme&carrier=K2") == ["carrier:K2=-10.000000"]
    assert accounts("gop") == []
    assert call(env, "c1", "GET", "/v1/balances?customer=C2").status_code == 403
    assert call(env, "op", "GET", "/v1/balances?tenant=globex").status_code == 403


def test_rates_for_operators(env) -> None:
    r = call(env, "op", "GET", "/v1/rates?account=C2")
    assert r.status_code == 200, r.text
    assert r.json()["rates"] == [{"prefix": "44", "rate_per_min": "0.020000", "connect_fee": "0.000000",
                                  "increment": "1/1", "min_duration": 0,
                                  "effective_from": "2026-01-01T00:00:00.000+00:00",
                                  "effective_to": None, "currency": "USD", "rounding": 6}]
    assert call(env, "c1", "GET", "/v1/rates?account=C1").status_code == 403
    assert call(env, "op", "GET", "/v1/rates?account=C9").status_code == 404


def test_resume_over_http(env) -> None:
    db = env[2]
    job = recalc.start(db, req(), Principal.operator("acme"))
    recalc.claim(db, job)
    r = call(env, "op", "POST", f"/v1/recalc/{job.job_id}/resume")
    assert r.status_code == 409, r.text                      # its process (this one) is alive
    from cdrhouse.engine import userdata as ud
    ud.update_job(db, job.job_id, result={**ud.get_job(db, job.job_id).result, "stopped": True})
    r = call(env, "op", "POST", f"/v1/recalc/{job.job_id}/resume")
    assert r.status_code == 202, r.text
    assert finished(env, "op", job.job_id)["state"] == "succeeded"
    assert money(db) == REPRICED
    assert call(env, "op", "POST", f"/v1/recalc/{job.job_id}/resume").status_code == 400
    assert call(env, "gop", "POST", f"/v1/recalc/{job.job_id}/resume").status_code == 404


def test_import_rates_over_http(env) -> None:
    card = ("prefix,rate_per_min,connect_fee,increment,min_duration,effective_from,currency\n"
            "44,0.03,0,1/1,0,2026-01-01,USD\n")
    bad = card + "49,x,0,1/1,0,2026-01-01,USD\n"
    r = call(env, "op", "POST", "/v1/rates?account=C2", content=bad)
    assert r.status_code == 400 and "line 3: rate_per_min: not a decimal number" in r.json()["detail"]
    assert call(env, "c1", "POST", "/v1/rates?account=C1", content=card).status_code == 403
    r = call(env, "op", "POST", "/v1/rates?account=C2", content=card)
    assert r.status_code == 200 and r.json()["imported"] == 1, r.text
    rates = call(env, "op", "GET", "/v1/rates?account=C2").json()["rates"]
    assert [(x["prefix"], x["rate_per_min"]) for x in rates] == [("44", "0.030000")]
