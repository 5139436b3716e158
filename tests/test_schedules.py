"""Scheduled exports and reports, on both engine interfaces and on real object stores.

Each test gets a fresh store (the `store` fixture: embedded and HTTP) with a few
calls of two tenants, API keys, and an app. The scheduler's tick
(`api.scheduler.tick`) is called with a fixed `now`, the way `cdrhouse serve`
calls it every minute; what it writes is compared with what the equivalent
download endpoint answers, byte for byte or row for row.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import threading
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard
from fastapi.testclient import TestClient

from conftest import fresh_db
from s3servers import s3_client

from cdrhouse.api import scheduler
from cdrhouse.api.app import create_app
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import keys, users
from cdrhouse.engine import schedules as sched
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database
from cdrhouse.tiering.store import ArchiveConfig, LocalStore, S3Store

from cli_inproc import CliRunner  # noqa: E402  (typer's runner, command built once)


UTC = dt.timezone.utc

# tenant, call_id, customer, carrier, start (UTC), billsec, release reason, country, prefix,
# charge, cost
ROWS = [
    ("acme", "a1", 1, 2, "2026-03-01 10:00:00", 60, "NORMAL_CLEARING", "GB", "4420", "0.60", "0.40"),
    ("acme", "a2", 1, 2, "2026-03-01 23:30:00", 0, "NO_ANSWER", "GB", "4420", "0", "0"),
    ("acme", "a3", 3, 2, "2026-03-01 09:00:00", 30, "NORMAL_CLEARING", "DE", "4930", "0.45", "0.20"),
    ("acme", "a4", 1, 2, "2026-03-02 09:00:00", 125, "NORMAL_CLEARING", "DE", "4930", "1.25", "0.90"),
    ("acme", "a5", 3, 2, "2026-02-27 09:00:00", 10, "<script>alert(1)</script>", "FR", "33",
     "0.10", "0.05"),
    ("acme", "a6", 1, 2, "2026-03-01 12:00:00", 0, "USER_BUSY", "=cmd", "4420", "0", "0"),
    ("globex", "g1", 1, 2, "2026-03-01 12:00:00", 90, "NORMAL_CLEARING", "GB", "4420", "0.90",
     "0.50"),
]
PRINCIPALS = {"op": "tenant:acme", "c1": "tenant:acme/customer:C1",
              "c3": "tenant:acme/customer:C3", "gop": "tenant:globex", "admin": "admin"}
COLUMNS = ["call_id", "start_time", "customer_id", "billsec", "country", "release_reason",
           "customer_charge"]
VIEW = {"range": "custom", "from": "2026-02-01", "to": "2026-04-01", "columns": COLUMNS,
        "sort": ["call_id"]}


def _load(db: Database) -> None:
    acc.add_account(db, "acme", "C1", "customer")     # 1
    acc.add_account(db, "acme", "K1", "carrier")      # 2
    acc.add_account(db, "acme", "C3", "customer")     # 3
    acc.add_account(db, "globex", "G1", "customer")   # 1
    acc.add_account(db, "globex", "GK", "carrier")    # 2
    for t, cid, cu, ca, start, bill, reason, country, prefix, charge, cost in ROWS:
        db.command(
            "INSERT INTO cdr_records (tenant_id, call_id, start_time, end_time, duration, billsec, "
            "customer_id, carrier_id, disposition, release_reason, country, dst_prefix, "
            "customer_charge, carrier_cost, customer_billsec, currency, version) VALUES "
            "({t:String}, {c:String}, {s:DateTime64(3, 'UTC')}, {s:DateTime64(3, 'UTC')} + 100, "
            "{b:UInt32} + 5, {b:UInt32}, {cu:UInt32}, {ca:UInt32}, "
            "if({b:UInt32} > 0, 'ANSWERED', 'NO ANSWER'), {r:String}, {co:String}, {p:String}, "
            "{ch:Decimal(18, 6)}, {cs:Decimal(18, 6)}, intDiv({b:UInt32} + 59, 60) * 60, 'USD', 1)",
            {"t": t, "c": cid, "s": start, "b": bill, "cu": cu, "ca": ca, "r": reason,
             "co": country, "p": prefix, "ch": charge, "cs": cost})


class Env:
    def __init__(self, client: TestClient, db: Database, secrets: dict[str, str],
                 key_ids: dict[str, str], files: LocalStore) -> None:
        self.client, self.db, self.secrets, self.key_ids, self.files = (
            client, db, secrets, key_ids, files)

    def call(self, who: str, method: str, path: str, **kw):
        return self.client.request(method, path, headers={
            "Authorization": f"Bearer {self.secrets[who]}"}, **kw)

    def save(self, who: str, kind: str, body: dict, shared: bool = False) -> str:
        r = self.call(who, "POST", "/v1/queries", json={
            "name": f"q-{uuid.uuid4().hex[:6]}", "kind": kind, "body": body, "shared": shared})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def schedule(self, who: str, **body) -> dict:
        body.setdefault("name", "nightly")
        body.setdefault("cron", "0 6 * * *")
        r = self.call(who, "POST", "/v1/schedules", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def due_at(self, schedule_id: str, when: dt.datetime) -> dt.datetime:
        """Make the schedule's next slot `when` (as if it had been created before it)."""
        s = sched.get(self.db, schedule_id)
        assert s is not None
        sched.save_state(self.db, replace(sched.state_of(self.db, s), slot=when, next_run=when))
        return when


@pytest.fixture(scope="module", params=["embedded", "http"])
def env(request, embedded_dsn: str, engine_dir: Path, tmp_path_factory):
    """One store per engine interface (as the `store` fixture makes them) with its app,
    shared by the module's tests; each test's schedules are deleted after it."""
    store = fresh_db(request, request.param, embedded_dsn, engine_dir)
    try:
        _load(store)
        secrets, key_ids = {}, {}
        for who, principal in PRINCIPALS.items():
            key, secret = keys.create_key(store, principal)
            secrets[who], key_ids[who] = secret, key.key_id
        root = tmp_path_factory.mktemp("exports") / "warm"
        app = create_app(ServiceConfig(store=store.config, pool_size=2,
                                       auth_failures_per_minute=1000,
                                       archive=ArchiveConfig(url=str(root))))
        with TestClient(app) as client:
            yield Env(client, store, secrets, key_ids, LocalStore(root))
    finally:
        try:
            store.command(f"DROP DATABASE IF EXISTS `{store.name}` SYNC")
        finally:
            store.close()


@pytest.fixture(autouse=True)
def _own_schedules(request):
    """Each test starts with no schedule (the env is shared by the module)."""
    yield
    if "env" in request.fixturenames:
        db = request.getfixturevalue("env").db
        for s in sched.listed(db):
            sched.delete(db, s)


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    name = f"exp-{uuid.uuid4().hex[:10]}"
    s3_client(moto_endpoint).create_bucket(Bucket=name)
    return name


def object_store(request, kind: str, env: Env):
    if kind == "dir":
        return env.files
    if kind == "moto":
        return S3Store(request.getfixturevalue("bucket"), "cdrhouse",
                       endpoint=request.getfixturevalue("moto_endpoint"), access_key="test",
                       secret_key="test")
    rclone = request.getfixturevalue("rclone_s3")
    return S3Store("archive", f"x-{uuid.uuid4().hex[:8]}", endpoint=rclone.endpoint,
                   access_key=rclone.access_key, secret_key=rclone.secret_key)


def unpack(data: bytes, compression: str | None) -> bytes:
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if compression == "gzip":
        return gzip.decompress(data)
    return data


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def first_slot(env: Env, schedule: dict) -> dt.datetime:
    return at(schedule["state"]["next_run"])


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode())))


# -- a due schedule's file is the download ----------------------------------------------------

@pytest.mark.parametrize("objects, compression", [
    ("dir", "zstd"), ("dir", "gzip"), ("dir", None), ("moto", "zstd"), ("rclone", None)])
def test_a_due_viewer_schedule_writes_the_download_byte_for_byte(request, env: Env, objects: str,
                                                                  compression) -> None:
    target = object_store(request, objects, env)
    qid = env.save("op", "viewer", VIEW)
    s = env.schedule("op", query_id=qid, compression=compression)
    slot = first_slot(env, s)
    assert scheduler.tick(env.db, target, slot - dt.timedelta(seconds=30)) == []  # not yet due
    [out] = scheduler.tick(env.db, target, slot)
    assert out.state == "succeeded", out
    assert out.key.startswith(f"exports/acme/{s['id']}/") and out.key.endswith(
        {"zstd": ".csv.zst", "gzip": ".csv.gz", None: ".csv"}[compression])
    stored = target.get_bytes(out.key)
    assert stored is not None and len(stored) == out.bytes

    r = env.call("op", "GET", "/v1/cdrs.csv", params={
        "range": "custom", "from": VIEW["from"], "to": VIEW["to"], "columns": ",".join(COLUMNS),
        "sort": "call_id"})
    assert r.status_code == 200, r.text
    assert unpack(stored, compression) == r.content
    assert out.rows == 6 == len(csv_rows(r.content)) - 1  # acme's six calls
    assert b"'=cmd" in r.content  # spreadsheet-safe like the download

    # the run is a job with its file, rows and size; the owner downloads the file
    runs = env.call("op", "GET", f"/v1/schedules/{s['id']}/runs").json()["runs"]
    assert [(x["id"], x["state"], x["file"]["rows"], x["file"]["bytes"]) for x in runs] == [
        (out.job_id, "succeeded", 6, out.bytes)]
    job = env.call("op", "GET", f"/v1/jobs/{out.job_id}").json()
    assert job["kind"] == "export" and job["result"]["rows"] == 6
    assert job["result"]["download"] == runs[0]["file"]["url"]
    if objects == "dir":
        f = env.call("op", "GET", runs[0]["file"]["url"])
        assert f.status_code == 200 and f.content == stored
    # the schedule moved on to its next slot
    after = env.call("op", "GET", f"/v1/schedules/{s['id']}").json()["state"]
    assert at(after["next_run"]) == slot + dt.timedelta(days=1)
    assert after["last_run"] == out.job_id and after["last_error"] is None


def test_a_builder_schedule_writes_the_search_download(env: Env) -> None:
    body = {**VIEW, "rules": {"condition": "OR", "rules": [
        {"field": "country", "operator": "equal", "value": "DE"},
        {"field": "billsec", "operator": "greater", "value": 100}]}}
    s = env.schedule("op", query_id=env.save("op", "search", body), compression=None)
    [out] = scheduler.tick(env.db, env.files, first_slot(env, s))
    r = env.call("op", "POST", "/v1/cdrs/search.csv", json=body)
    assert r.status_code == 200, r.text
    assert env.files.get_bytes(out.key) == r.content
    assert [row[0] for row in csv_rows(r.content)[1:]] == ["a3", "a4"]


@pytest.mark.parametrize("objects", ["dir", "rclone"])
def test_a_due_sql_schedule_writes_parquet_row_for_row(request, env: Env, objects: str) -> None:
    target = object_store(request, objects, env)
    body = {"sql": "SELECT call_id, billsec, country, customer_charge FROM cdrs "
                   "ORDER BY call_id"}
    qid = env.save("op", "sql", body)
    s = env.schedule("op", query_id=qid, format="parquet", compression="zstd")
    [out] = scheduler.tick(env.db, target, first_slot(env, s))
    assert out.state == "succeeded", out
    path = Path(env.files.root.parent) / "x.parquet"
    path.write_bytes(target.get_bytes(out.key))
    table = pq.read_table(path)
    assert pq.read_metadata(path).row_group(0).column(0).compression == "ZSTD"
    got = [[_value(v) for v in row.values()] for row in table.to_pylist()]
    # Parquet is for programs: text as stored, like the raw CSV download
    r = env.call("op", "POST", "/v1/sql.csv", params={"raw": "true"}, json=body)
    want = csv_rows(r.content)
    assert want[0] == table.column_names
    assert got == [[_value(c) for c in row] for row in want[1:]]
    assert ["a6", Decimal(0), "=cmd", Decimal(0)] in got
    assert out.rows == len(got) == 6


def _value(v):
    """A cell as a comparable value: numbers as Decimal (0.6 == 0.600000), text as is."""
    try:
        return Decimal(str(v))
    except ArithmeticError:
        return str(v)


# -- as the owner, whatever the query says ------------------------------------------------------

def _run(env: Env, schedule: dict):
    [out] = scheduler.tick(env.db, env.files, first_slot(env, schedule))
    return out


def _call_ids(env: Env, out) -> list[str]:
    data = unpack(env.files.get_bytes(out.key), "zstd")
    return [row[0] for row in csv_rows(data)[1:]]


def test_a_customers_schedule_holds_only_its_rows_even_with_a_hostile_query(env: Env) -> None:
    # the operator's shared query, scheduled by a customer, runs as the customer
    shared = env.save("op", "sql", {"sql": "SELECT call_id FROM cdrs ORDER BY call_id"},
                      shared=True)
    out = _run(env, env.schedule("c1", query_id=shared))
    assert out.state == "succeeded", out
    assert _call_ids(env, out) == ["a1", "a2", "a4", "a6"]

    # queries written into the table directly, past the checks of POST /v1/queries
    def planted(kind: str, body: dict) -> str:
        q = ud.create_query(env.db, owner_key=env.key_ids["c1"],
                            principal=PRINCIPALS["c1"], name="planted", kind=kind, body=body)
        return q.query_id
    wide = planted("sql", {"sql": "SELECT call_id FROM cdrs WHERE 1 OR customer_id != 1 "
                                  "OR customer_id = 3 ORDER BY call_id"})
    out = _run(env, env.schedule("c1", query_id=wide))
    assert out.state == "succeeded", out
    assert _call_ids(env, out) == ["a1", "a2", "a4", "a6"]

    for body, kind, words in [
            ({"sql": "SELECT call_id FROM cdr_records"}, "sql", "cdr_records"),
            ({"sql": "SELECT call_id FROM cdrs WHERE tenant_id != ''"}, "sql", "tenant_id"),
            ({**VIEW, "customer": "C3"}, "viewer", "cannot narrow"),
            ({"sql": "SELECT * FROM url('http://169.254.169.254/')"}, "sql", "url")]:
        s = env.schedule("c1", query_id=planted(kind, body))
        out = _run(env, s)
        assert out.state == "failed" and words in out.error, out
        st = env.call("c1", "GET", f"/v1/schedules/{s['id']}").json()["state"]
        # a refused query is not retried (it would be refused again): next slot
        assert st["attempt"] == 0 and words in st["last_error"]
        assert sched.file_of(env.db, out.job_id) is None


def test_a_revoked_key_or_disabled_user_stops_its_schedules(env: Env) -> None:
    key, env.secrets["c1-spare"] = keys.create_key(env.db, PRINCIPALS["c1"])
    qid = env.save("c1-spare", "viewer", VIEW)
    s = env.schedule("c1-spare", query_id=qid)
    keys.revoke_key(env.db, key.key_id)
    out = _run(env, s)
    assert out.state == "stopped" and "revoked" in out.error
    st = sched.state_of(env.db, sched.get(env.db, s["id"]))
    assert st.stopped and "revoked" in st.stopped and st.next_run == sched.NEVER
    shown = env.call("op", "GET", f"/v1/schedules/{s['id']}").json()["state"]
    assert shown["status"] == "stopped" and "revoked" in shown["stopped_reason"]
    assert shown["next_run"] is None
    assert scheduler.tick(env.db, env.files, dt.datetime(2099, 1, 1, tzinfo=UTC)) == []
    assert sched.runs(env.db, s["id"]) == []  # nothing ran as anyone
    # its owner (through another key of the same principal) starts it again: it now
    # runs through that key
    r = env.call("c1", "PUT", f"/v1/schedules/{s['id']}", json={
        "name": "again", "cron": "0 6 * * *", "query_id": qid})
    assert r.status_code == 200 and r.json()["state"]["status"] == "active", r.text
    assert sched.get(env.db, s["id"]).owner_key == env.key_ids["c1"]
    [out] = scheduler.tick(env.db, env.files, first_slot(env, r.json()))
    assert out.state == "succeeded" and _call_ids(env, out) == ["a1", "a2", "a4", "a6"]

    # a portal user's schedule stops when the user is disabled
    user = users.add_user(env.db, "carol", "a-long-password", PRINCIPALS["c3"])
    s2 = sched.create(env.db, owner_key=f"user:{user.user_id}", principal=PRINCIPALS["c3"],
                      name="carol's", cron="0 6 * * *",
                      definition=sched.Definition(report="daily"))
    users.set_disabled(env.db, "carol", True)
    st2 = sched.state_of(env.db, s2)
    [out] = scheduler.tick(env.db, env.files, st2.next_run)
    assert out.state == "stopped" and "disabled" in out.error


# -- relative ranges at run time ------------------------------------------------------------------

def test_relative_ranges_resolve_at_the_slot_in_utc(env: Env) -> None:
    qid = env.save("op", "viewer", {**VIEW, "range": "yesterday", "from": None, "to": None})
    s = env.schedule("op", query_id=qid)
    slot = env.due_at(s["id"], dt.datetime(2026, 3, 2, 6, 0, tzinfo=UTC))
    [out] = scheduler.tick(env.db, env.files, slot + dt.timedelta(seconds=20))
    assert _call_ids(env, out) == ["a1", "a2", "a3", "a6"]  # 1 March, UTC
    r = env.call("op", "GET", "/v1/cdrs.csv", params={
        "range": "custom", "from": "2026-03-01", "to": "2026-03-02",
        "columns": ",".join(COLUMNS), "sort": "call_id"})
    assert unpack(env.files.get_bytes(out.key), "zstd") == r.content
    job = ud.get_job(env.db, out.job_id)
    assert job.result["range"] == ["2026-03-01T00:00:00+00:00", "2026-03-02T00:00:00+00:00"]

    # the schedule's range is UTC even when the saved query shows another zone
    berlin = env.save("op", "viewer", {**VIEW, "tz": "Europe/Berlin"})
    s3 = env.schedule("op", query_id=berlin, range="yesterday")
    slot3 = env.due_at(s3["id"], dt.datetime(2026, 3, 2, 6, 0, tzinfo=UTC))
    [out] = scheduler.tick(env.db, env.files, slot3)
    assert _call_ids(env, out) == ["a1", "a2", "a3", "a6"]  # a2 at 23:30 UTC is 2 March in Berlin

    # SQL: the schedule's range binds {range_from} / {range_to}
    sql = {"sql": "SELECT call_id FROM cdrs WHERE start_time >= {range_from:DateTime64(3, 'UTC')} "
                  "AND start_time < {range_to:DateTime64(3, 'UTC')} ORDER BY call_id",
           "params": {"range_from": "2000-01-01 00:00:00", "range_to": "2000-01-02 00:00:00"}}
    s2 = env.schedule("op", query_id=env.save("op", "sql", sql), range="last_month")
    slot2 = env.due_at(s2["id"], dt.datetime(2026, 3, 1, 0, 5, tzinfo=UTC))
    [out] = scheduler.tick(env.db, env.files, slot2)
    assert _call_ids(env, out) == ["a5"]  # February


# -- failures, retries, overlap -------------------------------------------------------------------

def test_a_failed_run_is_retried_with_back_off_and_shows_its_error(env: Env, rclone_s3) -> None:
    wrong = S3Store("archive", "retry", endpoint=rclone_s3.endpoint,
                    access_key=rclone_s3.access_key, secret_key="not-the-secret")
    good = S3Store("archive", "retry", endpoint=rclone_s3.endpoint,
                   access_key=rclone_s3.access_key, secret_key=rclone_s3.secret_key)
    qid = env.save("op", "viewer", {**VIEW, "range": "yesterday", "from": None, "to": None})
    s = env.schedule("op", query_id=qid)
    slot = env.due_at(s["id"], dt.datetime(2026, 3, 2, 6, 0, tzinfo=UTC))
    [out] = scheduler.tick(env.db, wrong, slot)
    assert out.state == "failed" and "SignatureDoesNotMatch" in out.error, out.error
    st = env.call("op", "GET", f"/v1/schedules/{s['id']}").json()["state"]
    assert st["attempt"] == 1 and at(st["next_run"]) == slot + dt.timedelta(minutes=1)
    assert st["last_error"] == out.error
    run = env.call("op", "GET", f"/v1/schedules/{s['id']}/runs").json()["runs"][0]
    assert run["state"] == "failed" and run["error"] == out.error
    assert at(run["retry_at"]) == slot + dt.timedelta(minutes=1)

    assert scheduler.tick(env.db, good, slot + dt.timedelta(seconds=59)) == []  # backing off
    [out] = scheduler.tick(env.db, wrong, slot + dt.timedelta(minutes=1))
    assert out.state == "failed"
    assert sched.state_of(env.db, sched.get(env.db, s["id"])).next_run == (
        slot + dt.timedelta(minutes=1) + sched.BACKOFF[1])
    # the retry that succeeds covers the slot's range, not the retry's
    [out] = scheduler.tick(env.db, good, slot + dt.timedelta(minutes=6))
    assert out.state == "succeeded"
    assert _ids(good.get_bytes(out.key)) == ["a1", "a2", "a3", "a6"]
    st = sched.state_of(env.db, sched.get(env.db, s["id"]))
    assert st.attempt == 0 and st.slot == dt.datetime(2026, 3, 3, 6, 0, tzinfo=UTC)

    # a slot that keeps failing gives up after MAX_ATTEMPTS and waits for the next one
    now = env.due_at(s["id"], dt.datetime(2026, 3, 3, 6, 0, tzinfo=UTC))
    for attempt in range(sched.MAX_ATTEMPTS):
        st = sched.state_of(env.db, sched.get(env.db, s["id"]))
        assert st.attempt == attempt
        [out] = scheduler.tick(env.db, wrong, st.next_run)
        assert out.state == "failed"
        now = st.next_run
    st = sched.state_of(env.db, sched.get(env.db, s["id"]))
    assert st.attempt == 0 and st.slot == dt.datetime(2026, 3, 4, 6, 0, tzinfo=UTC) > now


def _ids(data: bytes) -> list[str]:
    return [row[0] for row in csv_rows(unpack(data, "zstd"))[1:]]


def test_runs_of_one_schedule_never_overlap(env: Env) -> None:
    qid = env.save("op", "viewer", VIEW)
    s = env.schedule("op", query_id=qid)
    slot = first_slot(env, s)
    schedule = sched.get(env.db, s["id"])
    # a run of this schedule is going on (in a live process: ours)
    busy, _ = sched.claim_run(env.db, sched.create_run(env.db, schedule,
                                                        sched.state_of(env.db, schedule)))
    assert busy is not None
    [out] = scheduler.tick(env.db, env.files, slot)
    assert out.state == "skipped"
    assert ud.get_job(env.db, busy.job_id).state == "running"
    cancelled = [j for j in sched.runs(env.db, s["id"]) if j.state == "cancelled"]
    assert len(cancelled) == 1 and busy.job_id in cancelled[0].error
    ud.update_job(env.db, busy.job_id, state="succeeded")
    # that run did this slot: a late tick (another process's stale view) does not redo it
    [out] = scheduler.tick(env.db, env.files, slot)
    assert out.state == "skipped"

    # two processes ticking at once on the next slot: one runs it
    s2 = env.schedule("op", query_id=qid, name="twice")
    slot2 = first_slot(env, s2)
    clients = [Database(env.db.config) for _ in range(2)]
    outs: list = []
    try:
        threads = [threading.Thread(target=lambda c=c: outs.extend(
            scheduler.tick(c, env.files, slot2))) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in clients:
            c.close()
    mine = [o for o in outs if o.schedule_id == s2["id"]]
    assert sorted(o.state for o in mine) in (["skipped", "succeeded"], ["succeeded"]), mine
    runs = sched.runs(env.db, s2["id"])
    assert [j.state for j in runs].count("succeeded") == 1


def test_a_run_whose_process_died_is_failed_and_its_slot_retried(env: Env) -> None:
    import subprocess
    import sys

    s = env.schedule("op", report="daily")
    slot = env.due_at(s["id"], dt.datetime(2026, 3, 2, 6, 0, tzinfo=UTC))
    schedule = sched.get(env.db, s["id"])
    job, _ = sched.claim_run(env.db, sched.create_run(env.db, schedule,
                                                       sched.state_of(env.db, schedule)))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    ud.update_job(env.db, job.job_id, result={**job.result, "pid": int(gone)})  # it died
    [out] = scheduler.tick(env.db, env.files, slot)
    assert out.state == "skipped" and out.job_id == job.job_id and out.error == sched.DIED
    assert ud.get_job(env.db, job.job_id).state == "failed"
    st = sched.state_of(env.db, schedule)
    assert st.attempt == 1 and st.slot == slot and st.next_run == slot + sched.BACKOFF[0]
    [out] = scheduler.tick(env.db, env.files, st.next_run)
    assert out.state == "succeeded"


def test_files_expire_after_the_retention_and_are_removed(env: Env) -> None:
    qid = env.save("op", "viewer", VIEW)
    s = env.schedule("op", query_id=qid, retention_days=2)
    slot = first_slot(env, s)
    [out] = scheduler.tick(env.db, env.files, slot)
    url = f"/v1/schedules/{s['id']}/runs/{out.job_id}/file"
    assert env.files.head(out.key) is not None
    scheduler.tick(env.db, env.files, slot + dt.timedelta(days=1, hours=23))
    assert env.files.head(out.key) is not None
    scheduler.tick(env.db, env.files, slot + dt.timedelta(days=2))
    assert env.files.head(out.key) is None
    r = env.call("op", "GET", url)
    assert r.status_code == 404 and "expired" in r.json()["detail"]
    run = [x for x in env.call("op", "GET", f"/v1/schedules/{s['id']}/runs").json()["runs"]
           if x["id"] == out.job_id][0]
    assert run["file"]["expired"] is True and run["file"]["url"] is None


# -- reports ------------------------------------------------------------------------------------

def _aggregate(db: Database, where: str) -> dict:
    [row] = db.rows(
        "SELECT count(), countIf(billsec > 0), sum(billsec), sum(ifNull(customer_billsec, "
        "billsec)), sum(customer_charge), sum(carrier_cost) FROM cdr_records FINAL WHERE "
        f"toDate(start_time) = '2026-03-01' AND {where}")
    calls, connected, billsec, billed, charge, cost = row
    return {"calls": str(calls), "connected": str(connected),
            "minutes": f"{Decimal(billsec) / 60:.2f}",
            "asr_percent": f"{Decimal(connected) * 100 / calls:.2f}",
            "acd_seconds": f"{Decimal(billsec) / connected:.1f}",
            "billed_minutes": f"{Decimal(billed) / 60:.2f}", "charge": f"{charge:f}",
            "cost": f"{cost:f}", "margin": f"{charge - cost:f}"}


def _report(env: Env, who: str, **params) -> list[dict]:
    r = env.call(who, "GET", "/v1/reports/usage", params={"period": "daily",
                                                          "date": "2026-03-01", **params})
    assert r.status_code == 200, r.text
    return list(csv.DictReader(io.StringIO(r.text)))


def test_report_numbers_equal_a_sql_aggregate(env: Env) -> None:
    rows = _report(env, "op")
    [total] = [r for r in rows if r["section"] == "total"]
    want = _aggregate(env.db, "tenant_id = 'acme'")
    assert {k: total[k] for k in want} == want
    by_customer = {r["key"]: r["calls"] for r in rows if r["section"] == "customer"}
    assert by_customer == {"C1": "3", "C3": "1"}
    reasons = {r["key"]: r["calls"] for r in rows if r["section"] == "release_reason"}
    assert reasons == {"NORMAL_CLEARING": "2", "NO_ANSWER": "1", "USER_BUSY": "1"}
    assert [r["key"] for r in rows if r["section"] == "destination"] == ["GB 4420", "DE 4930",
                                                                        "=cmd 4420"]

    # a customer: its own calls and its own money only
    rows = _report(env, "c1")
    [total] = [r for r in rows if r["section"] == "total"]
    want = _aggregate(env.db, "tenant_id = 'acme' AND customer_id = 1")
    assert {k: total[k] for k in want if k not in ("cost", "margin")} == {
        k: v for k, v in want.items() if k not in ("cost", "margin")}
    assert "cost" not in total and "margin" not in total
    assert {r["section"] for r in rows} == {"total", "destination", "release_reason"}
    # an operator narrows to one account; a customer cannot
    rows = _report(env, "op", customer="C3")
    assert [r["calls"] for r in rows if r["section"] == "total"] == ["1"]
    r = env.call("c1", "GET", "/v1/reports/usage", params={"customer": "C3"})
    assert r.status_code == 400 and "own account" in r.json()["detail"]
    r = env.call("op", "GET", "/v1/reports/usage", params={"period": "weekly"})
    assert r.status_code == 400 and "period" in r.json()["detail"]
    r = env.call("op", "GET", "/v1/reports/usage", params={"date": "March"})
    assert r.status_code == 400 and "YYYY-MM-DD" in r.json()["detail"]

    # monthly: February holds a5 only
    r = env.call("op", "GET", "/v1/reports/usage", params={"period": "monthly",
                                                            "date": "2026-02"})
    total = [x for x in csv.DictReader(io.StringIO(r.text)) if x["section"] == "total"]
    assert [x["calls"] for x in total] == ["1"]


def test_the_html_report_is_self_contained_and_escaped(env: Env) -> None:
    r = env.call("op", "GET", "/v1/reports/usage", params={"period": "monthly", "date": "2026-02",
                                                            "format": "html"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for forbidden in ("<script", "src=", "href=", "http://", "https://", "@import"):
        assert forbidden not in page
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_a_scheduled_report_equals_the_report_on_demand(env: Env) -> None:
    s = env.schedule("c1", report="daily", compression="gzip")
    slot = env.due_at(s["id"], dt.datetime(2026, 3, 2, 7, 0, tzinfo=UTC))
    [out] = scheduler.tick(env.db, env.files, slot)
    assert out.state == "succeeded", out
    assert out.key.endswith(".csv.gz")
    r = env.call("c1", "GET", "/v1/reports/usage", params={"period": "daily",
                                                            "date": "2026-03-01"})
    assert gzip.decompress(env.files.get_bytes(out.key)) == r.content


# -- CRUD ---------------------------------------------------------------------------------------

BAD = [
    ({"cron": "0 6 * *"}, "has 4 fields"),
    ({"cron": "61 6 * * *"}, "minute '61'"),
    ({"cron": "0 25 * * *"}, "hour '25'"),
    ({"cron": "0 6 32 * *"}, "day '32'"),
    ({"cron": "0 6 * 13 *"}, "month '13'"),
    ({"cron": "0 6 * * 8"}, "weekday '8'"),
    ({"format": "xlsx"}, "format: 'xlsx'"),
    ({"format": "html"}, "html is for reports"),
    ({"format": "parquet", "compression": None}, "Parquet"),
    ({"compression": "brotli"}, "compression: 'brotli'"),
    ({"range": "fortnight"}, "range: 'fortnight'"),
    ({"retention_days": 0}, "retention_days"),
    ({"query_id": "nope"}, "no saved query 'nope'"),
    ({"query_id": None}, "query_id / report"),
    ({"report": "weekly", "query_id": None}, "report: 'weekly'"),
    ({"name": " "}, "name"),
]


def test_bad_schedules_are_refused_naming_what_is_wrong(env: Env) -> None:
    qid = env.save("op", "viewer", VIEW)
    assert env.call("op", "GET", "/v1/schedules").json()["schedules"] == []
    for change, words in BAD:
        body = {"name": "x", "cron": "0 6 * * *", "query_id": qid, **change}
        r = env.call("op", "POST", "/v1/schedules", json=body)
        assert r.status_code == 400, (change, r.text)
        assert words in r.json()["detail"], (change, r.json()["detail"])
    assert env.call("op", "GET", "/v1/schedules").json()["schedules"] == []


def test_crud_and_who_sees_what(env: Env) -> None:
    qid = env.save("c1", "viewer", VIEW)
    s = env.schedule("c1", query_id=qid)
    assert s["owner"] == PRINCIPALS["c1"] and s["state"]["status"] == "active"
    assert [x["id"] for x in env.call("op", "GET", "/v1/schedules").json()["schedules"]] == [s["id"]]
    for stranger in ("c3", "gop"):
        assert env.call(stranger, "GET", "/v1/schedules").json()["schedules"] == []
        assert env.call(stranger, "GET", f"/v1/schedules/{s['id']}").status_code == 404
    r = env.call("op", "PUT", f"/v1/schedules/{s['id']}", json={"name": "x", "cron": "0 6 * * *",
                                                                  "query_id": qid})
    assert r.status_code == 403
    r = env.call("c1", "PUT", f"/v1/schedules/{s['id']}", json={
        "name": "weekly", "cron": "0 7 * * 1", "query_id": qid, "format": "parquet"})
    assert r.status_code == 200 and r.json()["cron"] == "0 7 * * 1"
    nxt = at(r.json()["state"]["next_run"])
    assert nxt.strftime("%a %H:%M") == "Mon 07:00"
    # a customer cannot narrow a report to another account; a query from another principal
    r = env.call("c1", "POST", "/v1/schedules", json={"name": "r", "cron": "0 6 * * *",
                                                       "report": "daily", "customer": "C3"})
    assert r.status_code == 400 and "customer" in r.json()["detail"]
    other = env.save("c3", "viewer", VIEW)
    r = env.call("c1", "POST", "/v1/schedules", json={"name": "r", "cron": "0 6 * * *",
                                                       "query_id": other})
    assert r.status_code == 400 and other in r.json()["detail"]
    assert env.call("op", "DELETE", f"/v1/schedules/{s['id']}").status_code == 403
    assert env.call("c1", "DELETE", f"/v1/schedules/{s['id']}").status_code == 204
    assert env.call("c1", "GET", f"/v1/schedules/{s['id']}").status_code == 404


# -- crontab (pure) -----------------------------------------------------------------------------

@pytest.mark.parametrize("cron, after, want", [
    ("0 0 * * 0", "2026-03-02 00:00", "2026-03-08 00:00 Sun"),   # crontab: 0 is Sunday
    ("0 0 * * 7", "2026-03-02 00:00", "2026-03-08 00:00 Sun"),
    ("30 6 * * 1-5", "2026-03-06 07:00", "2026-03-09 06:30 Mon"),  # Fri after 06:30 -> Mon
    ("0 12 * * */2", "2026-03-01 12:00", "2026-03-03 12:00 Tue"),  # Sun, Tue, Thu, Sat
    ("0 3 1 * *", "2026-03-01 03:00", "2026-04-01 03:00 Wed"),
    ("*/15 * * * *", "2026-03-01 10:07", "2026-03-01 10:15 Sun"),
])
def test_crontab_next_fire_in_utc(cron: str, after: str, want: str) -> None:
    at = dt.datetime.strptime(after, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    assert sched.next_fire(cron, at).strftime("%Y-%m-%d %H:%M %a") == want


ROUTES = [("GET", "/v1/schedules"), ("POST", "/v1/schedules"), ("GET", "/v1/schedules/x"),
          ("PUT", "/v1/schedules/x"), ("DELETE", "/v1/schedules/x"),
          ("GET", "/v1/schedules/x/runs"), ("GET", "/v1/schedules/x/runs/y/file"),
          ("GET", "/v1/reports/usage")]


def test_every_route_needs_a_key(env: Env) -> None:
    for method, path in ROUTES:
        r = env.client.request(method, path, json={"name": "x", "cron": "0 6 * * *"})
        assert r.status_code == 401, (method, path, r.text)


def test_the_owner_alone_downloads_a_runs_file(env: Env) -> None:
    s = env.schedule("c1", report="daily", compression=None)
    [out] = scheduler.tick(env.db, env.files, first_slot(env, s))
    url = f"/v1/schedules/{s['id']}/runs/{out.job_id}/file"
    assert env.call("c1", "GET", url).content == env.files.get_bytes(out.key)
    assert env.call("op", "GET", url).status_code == 403   # sees the schedule, not the file
    [seen] = env.call("op", "GET", f"/v1/schedules/{s['id']}/runs").json()["runs"]
    assert seen["file"]["rows"] == out.rows and seen["file"]["url"] is None
    assert env.call("c3", "GET", url).status_code == 404   # does not see the schedule
    other = env.schedule("c1", report="monthly", name="other")
    r = env.call("c1", "GET", f"/v1/schedules/{other['id']}/runs/{out.job_id}/file")
    assert r.status_code == 404  # a run of another schedule


# -- inside `cdrhouse serve` and from the command line ----------------------------------------------

def test_the_service_runs_due_schedules_on_its_own(env: Env, tmp_path: Path) -> None:
    s = env.schedule("op", report="daily")
    env.due_at(s["id"], dt.datetime.now(UTC) - dt.timedelta(minutes=1))
    app = create_app(ServiceConfig(store=env.db.config, pool_size=2, schedules=True,
                                   schedule_tick_seconds=0.2,
                                   archive=ArchiveConfig(url=str(env.files.root))))
    with TestClient(app):
        assert app.state.export_scheduler is not None
        deadline = dt.datetime.now(UTC) + dt.timedelta(seconds=60)
        while dt.datetime.now(UTC) < deadline:
            done = [j for j in sched.runs(env.db, s["id"]) if j.state == "succeeded"]
            if done:
                break
            threading.Event().wait(0.2)
    assert len(done) == 1, sched.runs(env.db, s["id"])
    assert env.files.head(done[0].result["key"]) is not None
    off = create_app(ServiceConfig(store=env.db.config, pool_size=1))
    with TestClient(off):
        assert off.state.export_scheduler is None


def test_the_command_line(env: Env) -> None:
    from cdrhouse.api.cli import app

    config = env.db.config
    runner = CliRunner()

    def cli(*args: str):
        # in this process, on the env's store (the embedded engine allows one per process)
        return runner.invoke(app, ["--data-dir", str(config.data_dir), "--clickhouse",
                                   config.dsn, "--database", config.database, *args])
    key_id = env.key_ids["c1"]
    bad = cli("schedules", "add", "x", "--cron", "0 6 * * 9", "--key", key_id, "--report",
              "daily")
    assert bad.exit_code == 2 and "weekday '9'" in bad.output
    bad = cli("schedules", "add", "x", "--cron", "0 6 * * *", "--key", key_id, "--report",
              "daily", "--customer", "C1")
    assert bad.exit_code == 2 and "your report already covers only your account" in bad.output
    bad = cli("schedules", "add", "x", "--cron", "0 6 * * *", "--key", "nope", "--report",
              "daily")
    assert bad.exit_code == 2 and "no active API key 'nope'" in bad.output
    ok = cli("schedules", "add", "usage", "--cron", "0 6 * * *", "--key", key_id, "--report",
             "daily", "--format", "html")
    assert ok.exit_code == 0, ok.output
    sid = ok.output.strip().splitlines()[-1]
    s = sched.get(env.db, sid)
    assert s is not None and s.principal == PRINCIPALS["c1"] and s.definition.format == "html"
    listed = cli("schedules", "list", "--format", "csv")
    assert sid in listed.output and "tenant:acme/customer:C1" in listed.output
    env.due_at(sid, dt.datetime(2026, 3, 2, 6, 0, tzinfo=UTC))
    done = cli("schedules", "run-due", "--archive", str(env.files.root))
    assert done.exit_code == 0 and "succeeded" in done.output, done.output
    [run] = sched.runs(env.db, sid)
    assert run.state == "succeeded" and env.files.head(run.result["key"]) is not None
    assert run.job_id in cli("schedules", "runs", sid).output
    assert cli("schedules", "delete", sid).exit_code == 0 and sched.get(env.db, sid) is None
    bad = cli("serve", "--schedules", "maybe")
    assert bad.exit_code == 2 and "'on' or 'off'" in bad.output
