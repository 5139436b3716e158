"""The archive over HTTP: /v1/archive, downloads of archived months, and
include_archive on the viewer, search, SQL and CSV — each principal sees, after
tiering, exactly what it saw before, and never another account's rows.

Runs on a directory archive (files streamed) and on S3 — moto, and `rclone serve
s3`, which checks credentials and signatures: the presigned URLs an operator is
redirected to must work on a real server, followed by a client with no AWS
credentials.
"""

from __future__ import annotations

import contextlib
import csv
import io
import time
import uuid
from urllib.parse import parse_qs, urlsplit
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from s3servers import s3_client
from test_tiering import ARCHIVED, MIDDLE, NEWEST, OLDEST, TODAY, load

from cdrhouse.api.app import create_app
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import keys
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql import catalogue
from cdrhouse.sql.archive import ArchiveSourceError, union_sql, with_archive
from cdrhouse.sql.limits import limits_for
from cdrhouse.tiering import layout, verify, warm
from cdrhouse.tiering.archive import Tiering
from cdrhouse.tiering.policy import Policy, add_months
from cdrhouse.tiering.store import (DEFAULT_PRESIGN_EXPIRY, ArchiveConfig, LocalStore, S3Store,
                                    sql_string)

WHO = ("admin", "tenant:acme", "tenant:acme/customer:C001", "tenant:acme/carrier:K001",
       "tenant:globex", "tenant:globex/customer:C002")
FROM = f"{OLDEST // 100:04d}-{OLDEST % 100:02d}-01"
TO = f"{add_months(NEWEST, 1) // 100:04d}-{add_months(NEWEST, 1) % 100:02d}-01"
#: pages of 500: every principal with more calls than that is read through the cursor
RANGE = {"range": "custom", "from": FROM, "to": TO, "limit": 500, "columns": "call_id"}
COUNT_SQL = "SELECT count() AS n, sum(billsec) AS b FROM cdrs"
#: a region other than boto3's default, to see it signed into the URLs (moto's archive)
REGION = "eu-central-1"


def h(secrets: dict, who: str) -> dict:
    return {"Authorization": f"Bearer {secrets[who]}"}


def snapshot(client: TestClient, secrets: dict, archive: bool) -> dict:
    """What each principal sees: counts by SQL, and the call ids of the viewer range."""
    seen = {}
    for who in WHO:
        sql = client.post("/v1/sql", json={"sql": COUNT_SQL, "include_archive": archive},
                          headers=h(secrets, who))
        assert sql.status_code == 200, sql.text
        ids, cursor = set(), None
        while True:
            page = client.get("/v1/cdrs", params={**RANGE, "include_archive": archive,
                                                  **({"cursor": cursor} if cursor else {})},
                              headers=h(secrets, who))
            assert page.status_code == 200, page.text
            ids |= {r["call_id"] for r in page.json()["rows"]}
            cursor = page.json()["next_cursor"]
            if not cursor:
                break
        seen[who] = (tuple(sql.json()["rows"][0]), frozenset(ids))
    return seen


def _build(request, stack: contextlib.ExitStack, kind: str, tmp: Path, embedded_dsn: str,
           engine_dir: Path) -> tuple:
    """(client, secrets, before, ids, kind, db, archive) after tiering the archived months
    of a fresh store into an archive of `kind`; torn down by `stack`."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    store = StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn, database=name)
    db = Database(store)
    stack.callback(db.close)
    stack.callback(db.command, f"DROP DATABASE `{name}`")
    migrate(db)
    load(db, tmp)  # test_tiering's size: one data template per worker
    secrets = {who: keys.create_key(db, who)[1] for who in WHO}
    # the service reads S3 credentials as a deployment would: from the environment, when
    # it starts (boto3 resolves them then); they are unset again once it has started
    mp = pytest.MonkeyPatch()
    if kind == "local":
        archive_config = ArchiveConfig(url=str(tmp / "warm"))
        archive = LocalStore(tmp / "warm")
    elif kind == "s3":
        endpoint = request.getfixturevalue("moto_endpoint")
        mp.setenv("AWS_ACCESS_KEY_ID", "test")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "test")
        bucket = f"api-{uuid.uuid4().hex[:8]}"
        s3_client(endpoint).create_bucket(Bucket=bucket)
        archive_config = ArchiveConfig(url=f"s3://{bucket}/warm", s3_endpoint=endpoint,
                                       region=REGION)
        archive = S3Store(bucket, "warm", endpoint=endpoint, region=REGION, access_key="test",
                          secret_key="test")
    else:
        rclone = request.getfixturevalue("rclone_s3")
        mp.setenv("AWS_ACCESS_KEY_ID", rclone.access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", rclone.secret_key)
        prefix = f"api-{uuid.uuid4().hex[:8]}"
        # the default region (us-east-1), where boto3 used to presign with SigV2
        archive_config = ArchiveConfig(url=f"s3://archive/{prefix}", s3_endpoint=rclone.endpoint)
        archive = S3Store("archive", prefix, endpoint=rclone.endpoint,
                          access_key=rclone.access_key, secret_key=rclone.secret_key)
    ids = {(t, k, code): acc.find(db, t, k, code).account_id for t, k, code in (
        ("acme", "customer", "C001"), ("acme", "carrier", "K001"),
        ("globex", "customer", "C002"))}
    app = create_app(ServiceConfig(store=store, pool_size=2, auth_failures_per_minute=1000,
                                   archive=archive_config))
    try:
        client = stack.enter_context(TestClient(app))
    finally:
        mp.undo()
    before = snapshot(client, secrets, archive=False)
    Tiering(db, archive).run(today=TODAY)
    return client, secrets, before, ids, kind, db, archive


@pytest.fixture(scope="module")
def _served_by_kind(request, tmp_path_factory, embedded_dsn: str, engine_dir: Path):
    """kind -> the module's served state for that archive, built on first use and kept
    to the end of the module: the rclone-only tests ask for `served` with a parameter of
    their own, which pytest would otherwise take for a new instance and build again."""
    built: dict[str, tuple] = {}
    with contextlib.ExitStack() as stack:
        def get(kind: str) -> tuple:
            if kind not in built:
                built[kind] = _build(request, stack, kind, tmp_path_factory.mktemp("archive-api"),
                                     embedded_dsn, engine_dir)
            return built[kind]
        yield get


@pytest.fixture(scope="module", params=["local", "s3", "rclone"])
def served(request, _served_by_kind):
    """(client, secrets, before, ids, kind, db, archive) after tiering the archived months."""
    return _served_by_kind(request.param)


# -- the pure parts ------------------------------------------------------------------------

def _union(selects: tuple) -> str:
    return f"(SELECT {', '.join(catalogue.NAMES)} FROM cdr_records FINAL UNION ALL " + \
        " UNION ALL ".join(selects) + ") AS cdr_records"


@pytest.mark.parametrize("sql, selects, expected", [
    ("SELECT 1 FROM cdr_records FINAL WHERE x", (), "SELECT 1 FROM cdr_records FINAL WHERE x"),
    ("SELECT 1 FROM cdr_records FINAL WHERE x", ("SELECT w",),
     f"SELECT 1 FROM {_union(('SELECT w',))} WHERE x"),
    ("SELECT * FROM (SELECT a FROM cdr_records FINAL) JOIN (SELECT b FROM cdr_records FINAL) "
     "USING (a)", ("SELECT w",), f"SELECT * FROM (SELECT a FROM {_union(('SELECT w',))}) JOIN "
                                  f"(SELECT b FROM {_union(('SELECT w',))}) USING (a)"),
])
def test_with_archive_extends_every_hot_read(sql: str, selects: tuple, expected: str) -> None:
    assert with_archive(sql, selects) == expected


@pytest.mark.parametrize("sql", ["SELECT 1", "SELECT 'FROM cdr_records FINAL' AS x"])
def test_with_archive_leaves_a_query_without_a_cdr_read_alone(sql: str) -> None:
    assert with_archive(sql, ("SELECT w",)) == sql


@pytest.mark.parametrize("sql", [
    "SELECT 1 FROM cdr_records",                            # the table without FINAL
    "SELECT 1 FROM other.cdr_records FINAL",                # another database
])
def test_with_archive_fails_closed_without_a_plain_hot_read(sql: str) -> None:
    with pytest.raises(ArchiveSourceError):
        with_archive(sql, ("SELECT w",))
    assert union_sql(("SELECT w",)) == \
        f"SELECT {', '.join(catalogue.NAMES)} FROM cdr_records FINAL UNION ALL SELECT w"


@pytest.mark.parametrize("role", ["admin", "tenant", "customer", "carrier"])
def test_warm_limits_are_stricter(role: str) -> None:
    hot, warm = limits_for(role), limits_for(role, warm=True)
    assert warm["max_execution_time"] < hot["max_execution_time"]
    assert warm["max_rows_to_read"] <= hot["max_rows_to_read"]
    assert (hot["readonly"], warm["readonly"]) == (1, 2)
    assert warm["use_query_condition_cache"] == 0


# -- over HTTP -----------------------------------------------------------------------------

def test_every_principal_sees_after_tiering_what_it_saw_before(served) -> None:
    client, secrets, before, ids, *_ = served
    hot_only = snapshot(client, secrets, archive=False)
    with_archive_ = snapshot(client, secrets, archive=True)
    assert with_archive_ == before
    for who in WHO:  # without the archive, the archived months are simply not there
        assert hot_only[who][0][0] < before[who][0][0]
        assert hot_only[who][1] < before[who][1]


def test_responses_say_which_months_came_from_the_archive(served) -> None:
    client, secrets, *_ = served
    labels = [layout.month_label(m) for m in ARCHIVED]
    page = client.get("/v1/cdrs", params={**RANGE, "include_archive": True},
                      headers=h(secrets, "tenant:acme")).json()
    assert page["archive"] == {"included": True, "months": labels}
    page = client.get("/v1/cdrs", params=RANGE, headers=h(secrets, "tenant:acme")).json()
    assert page["archive"] == {"included": False, "months": []}
    recent = client.get("/v1/cdrs", params={"range": "last_7_days", "include_archive": True},
                        headers=h(secrets, "tenant:acme")).json()
    assert recent["archive"] == {"included": True, "months": []}  # nothing warm in range
    sql = client.post("/v1/sql", json={"sql": COUNT_SQL, "include_archive": True},
                      headers=h(secrets, "tenant:acme/customer:C001")).json()
    assert sql["archive"]["months"] == labels


def test_search_and_csv_reach_the_archive(served) -> None:
    client, secrets, before, *_ = served
    who = "tenant:acme/customer:C001"
    body = {"range": "custom", "from": FROM, "to": TO, "limit": 1000, "columns": ["call_id"],
            "include_archive": True, "rules": {"condition": "AND", "rules": [
                {"id": "billsec", "operator": "greater_or_equal", "value": 0}]}}
    found = client.post("/v1/cdrs/search", json=body, headers=h(secrets, who))
    assert found.status_code == 200, found.text
    assert {r["call_id"] for r in found.json()["rows"]} <= before[who][1]
    csv_resp = client.get("/v1/cdrs.csv", params={**RANGE, "include_archive": True},
                          headers=h(secrets, who))
    assert csv_resp.status_code == 200, csv_resp.text
    rows = list(csv.DictReader(io.StringIO(csv_resp.text)))
    assert {r["call_id"] for r in rows} == before[who][1]
    sql_csv = client.post("/v1/sql.csv", json={"sql": "SELECT call_id FROM cdrs",
                                               "include_archive": True}, headers=h(secrets, who))
    assert sql_csv.status_code == 200, sql_csv.text
    assert len(sql_csv.text.strip().splitlines()) - 1 == before[who][0][0]


@pytest.mark.parametrize("sql", [
    "SELECT count() FROM s3('http://127.0.0.1:1/x/*.parquet', 'Parquet')",
    "SELECT count() FROM file('/etc/passwd', 'CSV')",
    "SELECT count() FROM cdr_records",
    "SELECT count() FROM cdrs SETTINGS readonly = 0",
    "SELECT * FROM cdrs UNION ALL SELECT * FROM url('http://127.0.0.1:1/', 'CSV')",
])
def test_include_archive_does_not_let_users_name_table_functions(served, sql: str) -> None:
    client, secrets, *_ = served
    resp = client.post("/v1/sql", json={"sql": sql, "include_archive": True},
                       headers=h(secrets, "tenant:acme/customer:C001"))
    assert resp.status_code == 400, resp.text
    assert resp.json()["type"].endswith("bad-sql")


def test_archive_listing_per_principal(served) -> None:
    client, secrets, *_ = served
    acme = client.get("/v1/archive", headers=h(secrets, "tenant:acme"))
    assert acme.status_code == 200, acme.text
    months = acme.json()["months"]
    assert [m["month"] for m in months] == [layout.month_label(m) for m in ARCHIVED]
    assert all(m["rows"] > 0 and m["bytes"] > 0 and m["files"] == 1 for m in months)
    customer = client.get("/v1/archive", headers=h(secrets, "tenant:acme/customer:C001")).json()
    assert [m["month"] for m in customer["months"]] == [m["month"] for m in months]
    assert all("rows" not in m for m in customer["months"])  # no tenant volumes for accounts
    globex = client.get("/v1/archive", headers=h(secrets, "tenant:globex")).json()
    assert globex["tenant"] == "globex"
    assert [m["rows"] for m in globex["months"]] != [m["rows"] for m in months]
    assert client.get("/v1/archive", headers=h(secrets, "admin")).status_code == 400
    assert client.get("/v1/archive", params={"tenant": "acme"},
                      headers=h(secrets, "admin")).json()["months"] == months
    other = client.get("/v1/archive", params={"tenant": "acme"}, headers=h(secrets, "tenant:globex"))
    assert other.status_code == 403


def _parquet(client: TestClient, resp) -> "pq.ParquetFile":
    if resp.status_code == 307:  # S3: a presigned URL, fetched as any client would
        fetched = httpx.get(resp.headers["location"])
        assert fetched.status_code == 200
        data = fetched.content
    else:
        assert resp.status_code == 200, resp.text
        data = resp.content
    return pq.read_table(io.BytesIO(data))


def test_operators_download_the_stored_files(served) -> None:
    client, secrets, _, _, kind, *_ = served
    resp = client.get(f"/v1/archive/{OLDEST}", headers=h(secrets, "tenant:acme"),
                      follow_redirects=False)
    assert resp.status_code == (200 if kind == "local" else 307)
    table = _parquet(client, resp)
    assert set(table.column("tenant_id").to_pylist()) == {"acme"}
    listing = client.get("/v1/archive", headers=h(secrets, "tenant:acme")).json()["months"]
    assert table.num_rows == listing[0]["rows"]
    part = client.get(f"/v1/archive/{OLDEST}/files/0", headers=h(secrets, "tenant:acme"),
                      follow_redirects=False)
    assert _parquet(client, part).num_rows == table.num_rows
    assert client.get(f"/v1/archive/{OLDEST}/files/5",
                      headers=h(secrets, "tenant:acme")).status_code == 404


def _fetch(resp) -> bytes:
    """The bytes an operator gets: a presigned URL followed by a plain client (no AWS
    credentials, no API key), or the streamed file."""
    if resp.status_code == 307:
        fetched = httpx.get(resp.headers["location"])
        assert fetched.status_code == 200, fetched.text
        return fetched.content
    assert resp.status_code == 200, resp.text
    return resp.content


@pytest.mark.parametrize("path", [f"/v1/archive/{OLDEST}", f"/v1/archive/{OLDEST}/files/0",
                                  f"/v1/archive/{MIDDLE}/files/0"])
def test_an_operator_download_is_the_archived_file_row_for_row(served, path: str,
                                                               tmp_path: Path) -> None:
    """Follow the redirect as a browser would, read the file with pyarrow, and check it
    against the manifest: its size, row count and the content checksum the tiering job
    recorded (computed again on what was downloaded)."""
    client, secrets, before, _, kind, db, archive = served
    resp = client.get(path, headers=h(secrets, "tenant:acme"), follow_redirects=False)
    if kind != "local":
        assert resp.status_code == 307, resp.text
        query = parse_qs(urlsplit(resp.headers["location"]).query)
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]  # SigV4, not SigV2
        assert "Signature" not in query and "AWSAccessKeyId" not in query
        assert query["X-Amz-Expires"] == [str(DEFAULT_PRESIGN_EXPIRY)]
        region = REGION if kind == "s3" else "us-east-1"
        assert f"/{region}/s3/aws4_request" in query["X-Amz-Credential"][0]
    data = _fetch(resp)
    month = int(path.split("/")[3])
    manifest = warm.read_manifest(archive, "acme", month)
    entry = manifest.files[0]
    assert len(data) == entry.bytes
    table = pq.read_table(io.BytesIO(data))
    assert table.num_rows == entry.rows == manifest.rows
    assert set(table.column("tenant_id").to_pylist()) == {"acme"}
    assert set(table.column("call_id").to_pylist()) <= before["tenant:acme"][1]
    saved = tmp_path / "download.parquet"
    saved.write_bytes(data)
    got = verify.fingerprint(db, f"file({sql_string(str(saved))}, 'Parquet')",
                             [tuple(c) for c in manifest.columns])
    assert (got.rows, got.checksum) == (entry.rows, entry.checksum)


@pytest.mark.parametrize("served", ["rclone"], indirect=True)
def test_the_strict_server_refuses_a_wrong_or_expired_signature(served) -> None:
    """What moto cannot show: the signature is checked. A presigned URL opens its one
    object until it expires, and nothing else."""
    client, secrets, *_, archive = served
    resp = client.get(f"/v1/archive/{OLDEST}/files/0", headers=h(secrets, "tenant:acme"),
                      follow_redirects=False)
    url = resp.headers["location"]
    assert httpx.get(url).status_code == 200
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    signature = query["X-Amz-Signature"][0]
    forged_sig = url.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    assert httpx.get(forged_sig).status_code == 403
    other_month = url.replace(f"month%3D{OLDEST}", f"month%3D{MIDDLE}")
    assert other_month != url and httpx.get(other_month).status_code == 403
    longer = url.replace(f"X-Amz-Expires={DEFAULT_PRESIGN_EXPIRY}", "X-Amz-Expires=604800")
    assert longer != url and httpx.get(longer).status_code == 403
    key = warm.read_manifest(archive, "acme", OLDEST).files[0].key
    short = archive.presign(key, expires=1)
    assert httpx.get(short).status_code == 200
    time.sleep(2.5)
    expired = httpx.get(short)
    assert expired.status_code in (400, 403) and b"PAR1" not in expired.content


def test_accounts_get_only_their_own_rows_and_fields(served) -> None:
    client, secrets, before, ids, *_ = served
    who, own = "tenant:acme/customer:C001", ids[("acme", "customer", "C001")]
    resp = client.get(f"/v1/archive/{OLDEST}", headers=h(secrets, who))
    table = _parquet(client, resp)
    assert table.num_rows > 0
    assert set(table.column("customer_id").to_pylist()) == {own}
    assert "carrier_cost" not in table.column_names and "tenant_id" not in table.column_names
    as_csv = client.get(f"/v1/archive/{OLDEST}", params={"format": "csv"}, headers=h(secrets, who))
    assert as_csv.status_code == 200, as_csv.text
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert len(rows) == table.num_rows and {r["customer_id"] for r in rows} == {str(own)}
    zst = client.get(f"/v1/archive/{OLDEST}", params={"format": "csv", "compression": "zstd"},
                     headers=h(secrets, who))
    assert zst.status_code == 200 and zst.headers["content-type"] == "application/zstd"
    carrier = client.get(f"/v1/archive/{OLDEST}", headers=h(secrets, "tenant:acme/carrier:K001"))
    assert set(_parquet(client, carrier).column("carrier_id").to_pylist()) == {
        ids[("acme", "carrier", "K001")]}
    refused = client.get(f"/v1/archive/{OLDEST}/files/0", headers=h(secrets, who))
    assert refused.status_code == 403


@pytest.mark.parametrize("path, status", [
    ("/v1/archive/209901", 404), ("/v1/archive/2026-13", 400),
    (f"/v1/archive/{add_months(NEWEST, 1)}", 404),
])
def test_archive_errors(served, path: str, status: int) -> None:
    client, secrets, *_ = served
    resp = client.get(path, headers=h(secrets, "tenant:acme"))
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("served", ["rclone"], indirect=True)
def test_a_month_in_several_parts_lists_presigned_urls_that_open(served) -> None:
    """The listing of a month stored in several parts hands out one presigned URL per
    part: each opens on the strict server, without credentials, and holds its part.
    (Last in the module: it re-archives globex's newest month in small parts.)"""
    client, secrets, before, _, _, db, archive = served
    tier = Tiering(db, archive, Policy(max_part_rows=40))
    tier.restore(NEWEST, ["globex"])
    # a late call makes the month change, so the run archives it again, in small parts
    db.command("INSERT INTO cdr_records SELECT * REPLACE ('late-globex' AS call_id) "
               f"FROM cdr_records WHERE tenant_id = 'globex' AND toYYYYMM(start_time) = {NEWEST} "
               "LIMIT 1")
    tier.run(today=TODAY, months=[NEWEST], tenants=["globex"])
    try:
        _check_listed_parts(client, secrets, before, archive)
    finally:  # the module's other tests see globex's month as it was
        tier.restore(NEWEST, ["globex"])
        db.command("DELETE FROM cdr_records WHERE call_id = 'late-globex'")
        tier.run(today=TODAY, months=[NEWEST], tenants=["globex"])


def _check_listed_parts(client: TestClient, secrets: dict, before: dict, archive) -> None:
    manifest = warm.read_manifest(archive, "globex", NEWEST)
    assert len(manifest.files) > 1
    listing = client.get(f"/v1/archive/{NEWEST}", headers=h(secrets, "tenant:globex"))
    assert listing.status_code == 200, listing.text
    files = listing.json()["files"]
    assert [(f["part"], f["rows"]) for f in files] == [
        (n, e.rows) for n, e in enumerate(manifest.files)]
    seen = set()
    for f in files:
        assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in f["url"]
        fetched = httpx.get(f["url"])
        assert fetched.status_code == 200, fetched.text
        table = pq.read_table(io.BytesIO(fetched.content))
        assert table.num_rows == f["rows"]
        seen |= set(table.column("call_id").to_pylist())
    assert len(seen) == manifest.rows and "late-globex" in seen
    assert seen - {"late-globex"} <= before["tenant:globex"][1]
