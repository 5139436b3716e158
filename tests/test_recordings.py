"""Recording redirects: only checked URLs leave the service (issue 12, item 5).

`GET /v1/cdrs/{id}/recording` used to redirect to whatever `recording_url`
was ingested. The rule (sql/recordings.py) is tested as a table, then through
the API on both engine interfaces, with `s3://` recordings presigned (SigV4)
against `rclone serve s3`, which checks signatures.
"""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from s3servers import s3_client

from cdrhouse.api.app import create_app
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import keys
from cdrhouse.engine.db import Database
from cdrhouse.sql.recordings import RecordingPolicy, RecordingRefused
from cdrhouse.tiering.store import ArchiveConfig

#: the class of attack: other schemes, internal hosts in every spelling a browser
#: accepts, credentials in the authority, characters browsers "repair"
HOSTILE = [
    "javascript:alert(document.cookie)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "file:///etc/passwd",
    "ftp://rec.example.com/a.wav",
    "//evil.example.com/a.wav",
    "/v1/admin",
    "http://127.0.0.1:8123/?query=DROP+TABLE+cdr_records",
    "http://localhost/x",
    "http://rec.localhost/x",
    "http://10.1.2.3/rec.wav",
    "http://192.168.0.1/",
    "http://172.16.5.4/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:8000/",
    "http://[fd00::1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://0.0.0.0/",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://127.1/",
    "http://017700000001/",
    "http://127\u30020\u30020\u30021/",
    "http://%31%32%37.0.0.1/",
    "http://intranet/rec.wav",
    "https://rec.example.com@evil.example.com/a.wav",
    "https://user:pass@rec.example.com/a.wav",
    " https://rec.example.com/a.wav",
    "\thttps://rec.example.com/a.wav",
    "https://rec.example.com/a.wav\r\nSet-Cookie: x=1",
    "https://evil.example.com\\@rec.example.com/",
    "https://rec.example.com:99999/",
    "https://" + "a" * 2100 + ".example.com/",
    "s3://recs/calls/a.wav",  # no bucket allowed without configuration
]


@pytest.mark.parametrize("url", HOSTILE)
def test_the_default_policy_refuses_hostile_urls(url: str) -> None:
    with pytest.raises(RecordingRefused):
        RecordingPolicy().check(url)


@pytest.mark.parametrize("url", [
    "https://rec.example.com/acme/c1.wav",
    "http://rec.example.com:8080/a.wav?sig=abc&exp=1",
    "HTTPS://Rec.Example.com/a.wav",
    "https://8.8.8.8/a.wav",
    "https://[2001:4860:4860::8888]/a.wav",
    "https://bücher.example/a.wav",
])
def test_the_default_policy_keeps_public_http_urls(url: str) -> None:
    assert RecordingPolicy().check(url).url == url


LISTED = "rec.example.com, *.cdn.example.net, 10.0.0.7, s3://recs/calls/"


@pytest.mark.parametrize("url, allowed", [
    ("https://rec.example.com/a.wav", True),
    ("https://eu.cdn.example.net/a.wav", True),
    ("https://a.b.cdn.example.net/a.wav", True),
    ("https://cdn.example.net/a.wav", False),       # *. means subdomains
    ("https://evilcdn.example.net/a.wav", False),
    ("https://rec.example.com.evil.net/a.wav", False),
    ("https://other.example.com/a.wav", False),
    ("http://10.0.0.7/a.wav", True),                # named on purpose: allowed
    ("http://10.0.0.8/a.wav", False),
    ("s3://recs/calls/2026/a.wav", True),
    ("s3://recs/other/a.wav", False),
    ("s3://recs/calls/../other/a.wav", False),
    ("s3://recs/calls//a.wav", False),
    ("s3://other-bucket/calls/a.wav", False),
    ("javascript:alert(1)", False),
])
def test_an_allow_list_decides(url: str, allowed: bool) -> None:
    policy = RecordingPolicy.parse(LISTED)
    if allowed:
        assert policy.check(url).url == url
    else:
        with pytest.raises(RecordingRefused):
            policy.check(url)


@pytest.mark.parametrize("entry", ["https://rec.example.com", "rec.example.com/x",
                                   "rec.example.com:443", "s3://", "s3://UPPER", "*", "a b"])
def test_a_bad_allow_list_entry_is_named(entry: str) -> None:
    with pytest.raises(ValueError, match="given|host name|bucket") as err:
        RecordingPolicy.parse(f"rec.example.com,{entry}")
    assert entry.strip() in str(err.value)


# -- through the API, on both engine interfaces -----------------------------------------

GOOD = "https://rec.example.com/acme/good.wav"


def _insert(db: Database, call_id: str, url: str) -> None:
    db.command(
        "INSERT INTO cdr_records (tenant_id, call_id, start_time, end_time, duration, billsec, "
        "customer_id, carrier_id, disposition, src_number, dst_number, recording_url, version) "
        "VALUES ('acme', {c:String}, '2026-03-01 10:00:00', '2026-03-01 10:01:00', 60, 60, 1, 2, "
        "'ANSWERED', '441111', '492222', {r:String}, 1)", {"c": call_id, "r": url})


@pytest.fixture
def recording_app(store: Database, rclone_s3, monkeypatch):
    """The app on `store`, its archive on rclone (prefix of its own), recordings allowed
    from rec.example.com and s3://recs/calls/ and — on purpose — the archive bucket."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", rclone_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rclone_s3.secret_key)
    client = s3_client(rclone_s3.endpoint, rclone_s3.access_key, rclone_s3.secret_key)
    if not (rclone_s3.root / "recs").exists():
        client.create_bucket(Bucket="recs")
    prefix = f"warm-{uuid.uuid4().hex[:8]}"
    client.put_object(Bucket="recs", Key="calls/acme/s3call.wav", Body=b"RIFF-fake-wav")
    client.put_object(Bucket="archive", Key=f"{prefix}/secret.parquet", Body=b"PAR1")
    policy = RecordingPolicy.parse("rec.example.com, s3://recs/calls/, s3://archive")
    config = ServiceConfig(store=store.config, pool_size=2, auth_failures_per_minute=1000,
                           archive=ArchiveConfig(url=f"s3://archive/{prefix}",
                                                 s3_endpoint=rclone_s3.endpoint,
                                                 region="eu-west-2"),
                           recordings=policy)
    # (the app's list allows s3://recs/calls/: that entry of HOSTILE is a good one here)
    rows = {f"bad-{i}": url for i, url in enumerate(HOSTILE) if not url.startswith("s3://")}
    rows.update({"good": GOOD, "s3": "s3://recs/calls/acme/s3call.wav",
                 "archive": f"s3://archive/{prefix}/secret.parquet",
                 "elsewhere": "s3://recs/private/x.wav"})
    for call_id, url in rows.items():
        _insert(store, call_id, url)
    secret = keys.create_key(store, "tenant:acme")[1]
    with TestClient(create_app(config)) as api:
        yield api, {"Authorization": f"Bearer {secret}"}, rows


def test_recording_redirects_only_to_checked_urls(recording_app) -> None:
    api, auth, rows = recording_app
    good = api.get("/v1/cdrs/good/recording", headers=auth, follow_redirects=False)
    assert good.status_code == 307 and good.headers["location"] == GOOD
    refused = {call_id for call_id in rows if call_id.startswith("bad-")} | {"archive",
                                                                             "elsewhere"}
    for call_id in sorted(refused):
        resp = api.get(f"/v1/cdrs/{call_id}/recording", headers=auth, follow_redirects=False)
        assert resp.status_code == 403, (rows[call_id], resp.status_code, resp.text)
        assert "location" not in resp.headers
        assert resp.json()["type"] == "/problems/recording-refused"
        assert call_id in resp.json()["detail"]
    inside = api.get("/v1/cdrs/archive/recording", headers=auth, follow_redirects=False)
    assert "archive" in inside.json()["detail"]


def test_s3_recordings_are_presigned_with_sigv4_and_the_server_checks_them(
        recording_app) -> None:
    api, auth, _ = recording_app
    resp = api.get("/v1/cdrs/s3/recording", headers=auth, follow_redirects=False)
    assert resp.status_code == 307, resp.text
    url = resp.headers["location"]
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "/eu-west-2/s3/aws4_request" in query["X-Amz-Credential"][0]
    assert query["X-Amz-Expires"] == ["900"]
    fetched = httpx.get(url)  # a plain client: no AWS credentials
    assert fetched.status_code == 200 and fetched.content == b"RIFF-fake-wav"
    forged = url.replace("calls/acme/s3call.wav", "private/x.wav")
    assert httpx.get(forged).status_code == 403
