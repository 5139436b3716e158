"""Ingest end to end against a real engine: every format, rejects, idempotence, accounts."""

from __future__ import annotations

import csv
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdrhouse.engine import accounts as acc
from cdrhouse.engine.db import Database
from cdrhouse.engine.formats.base import FormatError
from cdrhouse.engine.ingest import IngestError, IngestOptions, Ingestor

UTC = dt.timezone.utc


def ingest(db: Database, path: Path, tmp_path: Path, **opts):
    options = IngestOptions(tenant=opts.pop("tenant", "acme"), **opts)
    rejects = tmp_path / f"rejects-{path.stem}.csv"
    ing = Ingestor(db, options, rejects)
    try:
        report = ing.ingest(path)
    finally:
        ing.close()
    return report, rejects


def reject_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def cdrs(db: Database, where: str = "1") -> list[dict]:
    res = db.query(f"SELECT * EXCEPT (version, ingested_at, source) FROM cdr_records FINAL "
                   f"WHERE {where} ORDER BY tenant_id, call_id")
    return [dict(zip(res.column_names, row)) for row in res.result_rows]


@pytest.fixture
def accounts(store: Database) -> Database:
    acc.add_account(store, "acme", "C1", "customer", currency="USD")   # id 1
    acc.add_account(store, "acme", "K1", "carrier")                    # id 2
    acc.add_account(store, "acme", "C2", "customer", currency="EUR")   # id 3
    return store


CANONICAL_CSV = """\
call_id,start_time,answer_time,end_time,duration,billsec,customer_code,carrier_code,src_number,dst_number,disposition,customer_rate,customer_charge,src_ip
a1,2026-03-01 10:00:00,2026-03-01 10:00:05,,65,60,C1,K1,+44 20 7946-0001,4420794600,,0.0060,0.006,10.0.0.1
a2,2026-03-01T23:30:00+02:00,,,30,,C2,,client1,1234,NO ANSWER,,,
a3,2026-03-01 10:00:00,,2026-03-01 10:01:00,,,C1,,,,,,,
"""


def test_canonical_csv_converts_every_field(accounts: Database, tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    path.write_text(CANONICAL_CSV)
    report, rejects = ingest(accounts, path, tmp_path, source_tz="Europe/Berlin")
    assert (report.format, report.read, report.accepted, report.duplicates, report.rejected) == \
        ("csv", 3, 3, 0, 0)
    rows = {r["call_id"]: r for r in cdrs(accounts)}
    a1 = rows["a1"]
    # naive time read in the source zone (Berlin, UTC+1 in March), stored as UTC
    assert a1["start_time"].replace(tzinfo=None) == dt.datetime(2026, 3, 1, 9, 0, 0)
    assert a1["answer_time"].replace(tzinfo=None) == dt.datetime(2026, 3, 1, 9, 0, 5)
    assert a1["end_time"].replace(tzinfo=None) == dt.datetime(2026, 3, 1, 9, 1, 5)  # start + duration
    assert (a1["duration"], a1["billsec"], a1["disposition"]) == (65, 60, "ANSWERED")
    assert (a1["customer_id"], a1["carrier_id"], a1["tenant_id"]) == (1, 2, "acme")
    assert a1["src_number"] == "442079460001"      # +, spaces and dashes dropped
    assert a1["customer_rate"] == Decimal("0.006") and a1["customer_charge"] == Decimal("0.006")
    assert a1["carrier_cost"] is None               # not rated, not zero
    assert (a1["currency"], a1["src_ip"], a1["direction"]) == ("USD", "10.0.0.1", "outbound")
    a2 = rows["a2"]
    # an explicit offset wins over --source-tz
    assert a2["start_time"].replace(tzinfo=None) == dt.datetime(2026, 3, 1, 21, 30)
    assert (a2["billsec"], a2["disposition"], a2["answer_time"]) == (0, "NO ANSWER", None)
    assert a2["src_number"] == "client1"            # not a number: kept as written
    assert a2["currency"] == "EUR"                  # from the customer account
    a3 = rows["a3"]
    assert (a3["duration"], a3["billsec"], a3["disposition"]) == (60, 0, "NO ANSWER")
    assert not rejects.exists()


def test_reingesting_the_same_file_changes_nothing(accounts: Database, tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    path.write_text(CANONICAL_CSV)
    ingest(accounts, path, tmp_path)
    before = cdrs(accounts)
    totals = accounts.rows("SELECT count(), sum(duration), sum(customer_charge) FROM cdr_records FINAL")
    again, _ = ingest(accounts, path, tmp_path)
    assert (again.accepted, again.duplicates, again.rejected) == (0, 3, 0)
    assert cdrs(accounts) == before
    assert accounts.rows("SELECT count(), sum(duration), sum(customer_charge) FROM cdr_records") \
        == totals                      # not even an unmerged duplicate row was written


def test_duplicates_inside_one_file_count_once(accounts: Database, tmp_path: Path) -> None:
    path = tmp_path / "dups.csv"
    path.write_text("call_id,start_time,duration\nx,2026-03-01 10:00:00,10\n"
                    "x,2026-03-01 10:00:00,10\ny,2026-03-01 10:00:00,5\n")
    report, _ = ingest(accounts, path, tmp_path)
    assert (report.accepted, report.duplicates) == (2, 1)
    assert accounts.scalar("SELECT count() FROM cdr_records") == 2


BAD_ROWS = [
    # (csv line body, expected reason fragment)
    ("b1,not a date,10,,,,", "start_time: cannot read \"not a date\""),
    (",2026-03-01 10:00:00,10,,,,", "call_id is missing"),
    ("b3,2026-03-01 10:00:00,,,,,", "needs duration or end_time"),
    ("b4,2026-03-01 10:00:00,ten,,,,", "duration: not a number of seconds: \"ten\""),
    ("b5,2026-03-01 10:00:00,10,20,,,", "billsec 20 exceeds duration 10"),
    ("b6,2026-03-01 10:00:00,10,,LOST,,", "disposition \"LOST\" is not one of"),
    ("b7,2026-03-01 10:00:00,10,,,NOPE,", "unknown customer code \"NOPE\""),
    ("b8,2026-03-01 10:00:00,10,,,,999.1.1.1", "src_ip: not an IP address"),
    ("b9,2126-03-01 10:00:00,10,,,,", "is out of range"),
    ("b10,2026-03-01 10:00:00,10,,,,,extra", "expected 7 columns, found 8"),
]


def test_bad_rows_are_rejected_with_line_and_reason(accounts: Database, tmp_path: Path) -> None:
    header = "call_id,start_time,duration,billsec,disposition,customer_code,src_ip"
    lines = [header, "ok1,2026-03-01 10:00:00,10,5,,C1,"] + [b for b, _ in BAD_ROWS] + \
            ["ok2,2026-03-01 11:00:00,10,,,,"]
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join(lines) + "\n")
    report, rejects = ingest(accounts, path, tmp_path)
    assert (report.accepted, report.rejected, report.read) == (2, len(BAD_ROWS), len(BAD_ROWS) + 2)
    got = {int(r["line"]): r for r in reject_rows(rejects)}
    for i, (_body, reason) in enumerate(BAD_ROWS):
        line = i + 3                     # header is line 1, ok1 is line 2
        assert line in got, (line, reason, got)
        assert reason in got[line]["reason"], (line, got[line]["reason"])
        assert got[line]["file"] == str(path)
    # the stored rows are the good ones, with the right line-independent values
    assert [r["call_id"] for r in cdrs(accounts)] == ["ok1", "ok2"]
    assert json.loads(got[3]["record"])["start_time"] == "not a date"


def test_invalid_utf8_does_not_stop_a_csv(accounts: Database, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"call_id,start_time,duration,src_number\n"
                     b"u1,2026-03-01 10:00:00,10,M\xfcller\nu2,2026-03-01 10:00:01,5,42\n")
    report, _ = ingest(accounts, path, tmp_path)
    assert report.accepted == 2
    assert cdrs(accounts, "call_id = 'u1'")[0]["src_number"] == "M\ufffdller"


def test_unknown_and_missing_columns_are_errors(accounts: Database, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("call_id,start_time,duration,colour\nx,2026-03-01 10:00:00,1,red\n")
    with pytest.raises(FormatError, match=r"unknown column\(s\) 'colour'"):
        ingest(accounts, bad, tmp_path)
    missing = tmp_path / "missing.csv"
    missing.write_text("call_id,start_time,src_number\nx,2026-03-01 10:00:00,1\n")
    with pytest.raises(FormatError, match="missing required column duration or end_time"):
        ingest(accounts, missing, tmp_path, format="csv")
    assert accounts.scalar("SELECT count() FROM cdr_records") == 0


def test_a_file_that_is_not_cdrs_gets_one_clear_error(accounts: Database, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("Dear team,\nplease find the invoices attached.\n")
    with pytest.raises(FormatError, match="not a CDR file cdrhouse recognises"):
        ingest(accounts, path, tmp_path)


def test_bad_options_are_refused_before_reading(accounts: Database, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(CANONICAL_CSV)
    with pytest.raises(IngestError, match="unknown time zone 'Mars/Olympus'"):
        ingest(accounts, path, tmp_path, source_tz="Mars/Olympus")
    with pytest.raises(IngestError, match="--customer 'ZZ': no such customer"):
        ingest(accounts, path, tmp_path, default_customer="ZZ")


def test_accounts_default_and_create(accounts: Database, tmp_path: Path) -> None:
    path = tmp_path / "acc.csv"
    path.write_text("call_id,start_time,duration,customer_code\n"
                    "d1,2026-03-01 10:00:00,10,\nd2,2026-03-01 10:00:00,10,NEW1\n")
    report, rejects = ingest(accounts, path, tmp_path, default_customer="C2")
    assert (report.accepted, report.rejected) == (1, 1)
    assert cdrs(accounts)[0]["customer_id"] == 3
    report, _ = ingest(accounts, path, tmp_path, default_customer="C2", create_accounts=True)
    assert report.created_accounts == ["customer NEW1 (id 4)"]
    assert (report.accepted, report.duplicates) == (1, 1)
    assert cdrs(accounts, "call_id = 'd2'")[0]["customer_id"] == 4


def test_tsv_and_json_lines(accounts: Database, tmp_path: Path) -> None:
    tsv = tmp_path / "c.tsv"
    tsv.write_text("call_id\tstart_time\tduration\tdst_number\n"
                   "t1\t2026-03-01 10:00:00\t12\t+1 (555) 010-0000\n")
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"call_id": "j1", "start_time": "2026-03-01T10:00:00Z",
                              "duration": 30, "billsec": 20, "customer_id": 1,
                              "customer_charge": "0.02"}) + "\n"
                  + "{broken json\n"
                  + json.dumps({"call_id": "j2", "start_time": 1772359200, "duration": 5}) + "\n")
    r1, _ = ingest(accounts, tsv, tmp_path)
    r2, rejects = ingest(accounts, jl, tmp_path)
    assert (r1.format, r1.accepted) == ("tsv", 1)
    assert (r2.format, r2.accepted, r2.rejected) == ("jsonl", 2, 1)
    assert reject_rows(rejects)[0]["line"] == "2"
    rows = {r["call_id"]: r for r in cdrs(accounts)}
    assert rows["t1"]["dst_number"] == "15550100000"
    assert (rows["j1"]["customer_id"], rows["j1"]["customer_charge"]) == (1, Decimal("0.02"))
    assert rows["j2"]["start_time"].replace(tzinfo=None) == dt.datetime(2026, 3, 1, 10, 0)


def test_parquet_with_typed_columns(accounts: Database, tmp_path: Path) -> None:
    table = pa.table({
        "call_id": ["p1", "p2", "p3"],
        # naive timestamps are wall time in --source-tz
        "start_time": pa.array([dt.datetime(2026, 7, 1, 12, 0), dt.datetime(2026, 7, 1, 12, 1),
                                dt.datetime(2026, 7, 1, 12, 2)], pa.timestamp("us")),
        "duration": pa.array([60, 3600, -5], pa.int32()),
        "billsec": pa.array([50, 3600, 0], pa.int64()),
        "customer_code": ["C1", "C1", "C1"],
        "customer_rate": pa.array([Decimal("0.0001"), Decimal("0.0001"), None], pa.decimal128(10, 4)),
        "carrier_cost": pa.array([0.1, 0.36, None], pa.float64()),
        "sip_code": pa.array([200, 200, 487], pa.int16()),
    })
    path = tmp_path / "c.parquet"
    pq.write_table(table, path)
    report, rejects = ingest(accounts, path, tmp_path, source_tz="America/New_York")
    assert (report.format, report.accepted, report.rejected) == ("parquet", 2, 1)
    assert "duration: not a number of seconds" in reject_rows(rejects)[0]["reason"]
    rows = {r["call_id"]: r for r in cdrs(accounts)}
    assert rows["p1"]["start_time"].replace(tzinfo=None) == dt.datetime(2026, 7, 1, 16, 0)  # EDT
    assert rows["p2"]["customer_rate"] == Decimal("0.0001")
    assert rows["p2"]["carrier_cost"] == Decimal("0.36")       # the float's decimal spelling
    assert rows["p1"]["sip_code"] == 200


def test_parquet_round_trip_of_generated_data(store: Database, tmp_path: Path) -> None:
    """The generator's file ingests completely, and twice is the same as once."""
    from cdrhouse.engine import generate
    spec = generate.GenSpec(rows=3000, months=2, seed=7, tenants=("acme", "globex"),
                            end=dt.datetime(2026, 11, 1, tzinfo=UTC))
    generate.ensure_accounts(store, spec)
    shares = generate.tenant_rows(spec)
    for tenant in spec.tenants:
        path = tmp_path / f"{tenant}.parquet"
        assert generate.write_parquet(store, spec, tenant, path) == shares[tenant]
        report, _ = ingest(store, path, tmp_path, tenant=tenant)
        assert (report.accepted, report.rejected) == (shares[tenant], 0)
        again, _ = ingest(store, path, tmp_path, tenant=tenant)
        assert (again.accepted, again.duplicates) == (0, shares[tenant])
    counts = dict(store.rows("SELECT tenant_id, count() FROM cdr_records FINAL GROUP BY tenant_id"))
    assert counts == shares
    # realistic shape: most calls answered, every answered call has talk time
    asr = store.scalar("SELECT countIf(disposition = 'ANSWERED') / count() FROM cdr_records")
    assert 0.5 < asr < 0.66
    assert store.scalar("SELECT countIf(disposition = 'ANSWERED' AND billsec = 0) FROM cdr_records") == 0


def scratch_tables(db: Database) -> list[str]:
    return [t for (t,) in db.rows("SELECT name FROM system.tables WHERE database = currentDatabase() "
                                  "AND startsWith(name, '_ingest_')")]


def test_batches_do_not_change_the_result(store: Database, tmp_path: Path) -> None:
    # Batches are written by a background client while the next one is converted;
    # writes stay in file order, so a call repeated in a later batch is a duplicate.
    acc.add_account(store, "acme", "C1", "customer")
    path = tmp_path / "b.jsonl"
    calls = [(f"c{i}", i) for i in range(25)] + [("c3", 3), ("c24", 24)]
    path.write_text("".join(json.dumps({"call_id": c, "start_time": f"2026-03-01 10:{d:02d}:00",
                                        "duration": d, "customer_code": "C1"}) + "\n"
                            for c, d in calls))
    batches: list[int] = []
    ing = Ingestor(store, IngestOptions(tenant="acme", batch_rows=4), tmp_path / "r.csv")
    try:
        report = ing.ingest(path, progress=batches.append)
    finally:
        ing.close()
    assert len(batches) == 7 and batches == sorted(batches)     # 27 rows, 4 per batch
    assert (report.read, report.accepted, report.duplicates) == (27, 25, 2)
    assert store.rows("SELECT count(), sum(duration) FROM cdr_records") == [(25, sum(range(25)))]
    assert scratch_tables(store) == []


def test_an_interrupted_ingest_keeps_what_it_wrote_and_resumes(store: Database, tmp_path: Path) -> None:
    path = tmp_path / "i.jsonl"
    path.write_text("".join(json.dumps({"call_id": f"i{i}", "start_time": f"2026-03-01 11:{i:02d}:00",
                                        "duration": i}) + "\n" for i in range(30)))
    seen: list[int] = []

    def progress(bytes_read: int) -> None:   # Ctrl-C once the second batch is written
        seen.append(bytes_read)
        if len(seen) == 2:
            raise KeyboardInterrupt

    ing = Ingestor(store, IngestOptions(tenant="acme", batch_rows=10), tmp_path / "r.csv")
    try:
        with pytest.raises(KeyboardInterrupt):
            ing.ingest(path, progress=progress)
    finally:
        ing.close()
    # the two batches written are stored whole, the third (converted meanwhile) is
    # not written, and no scratch table is left behind
    assert store.rows("SELECT count(), max(duration) FROM cdr_records") == [(20, 19)]
    assert scratch_tables(store) == []
    again, _ = ingest(store, path, tmp_path)
    assert (again.accepted, again.duplicates) == (10, 20)
    assert store.rows("SELECT count(), sum(duration) FROM cdr_records") == [(30, sum(range(30)))]


ASTERISK_21 = (
    b'"","89245555937","211474","ctx","""89245555937"" <89245555937>","SIP/a-1","","Hangup","",'
    b'"2024-01-27 15:07:24","2024-01-27 15:07:24","2024-01-27 15:07:51",27,27,"ANSWERED",'
    b'"DOCUMENTATION","1706368044.0","","","1706368044.0",0\r\n'
    b'"","89245555937","211553","ctx","""Ren\xe9"" <89245555937>","SIP/a-3","SIP/301-4","Dial",'
    b'"SIP/301,60","2024-01-27 15:33:20",,"2024-01-27 15:34:20",60,0,"NO ANSWER",'
    b'"DOCUMENTATION","1706369600.6","","","1706369600.6",3\r\n'
    b'"","89245555937","211553","ctx","""Ren\xe9"" <89245555937>","SIP/a-3","SIP/pbx-5","Dial",'
    b'"SIP/301,60","2024-01-27 15:33:20",,"2024-01-27 15:33:50",30,0,"BUSY",'
    b'"DOCUMENTATION","1706369600.6","","","1706369600.6",6\r\n'
)


def test_asterisk_master_csv_end_to_end(store: Database, tmp_path: Path) -> None:
    path = tmp_path / "Master.csv"
    path.write_bytes(ASTERISK_21)
    report, _ = ingest(store, path, tmp_path, source_tz="Europe/Moscow")
    assert (report.format, report.accepted, report.rejected) == ("asterisk", 3, 0)
    rows = cdrs(store)
    assert len({r["call_id"] for r in rows}) == 3          # legs of one call stay apart
    first = [r for r in rows if r["duration"] == 27][0]
    assert first["start_time"].replace(tzinfo=None) == dt.datetime(2024, 1, 27, 12, 7, 24)  # MSK = UTC+3
    assert (first["disposition"], first["billsec"], first["src_number"]) == ("ANSWERED", 27, "89245555937")
    assert sorted(r["disposition"] for r in rows) == ["ANSWERED", "BUSY", "NO ANSWER"]
    again, _ = ingest(store, path, tmp_path, source_tz="Europe/Moscow")
    assert (again.accepted, again.duplicates) == (0, 3)


def test_freeswitch_csv_and_json_end_to_end(store: Database, tmp_path: Path) -> None:
    acc.add_account(store, "acme", "1002", "customer")
    fs_csv = tmp_path / "fs.csv"
    fs_csv.write_text(
        "Outbound Call,1002,4420,default,2020/2/10 22:41,2020/2/10 22:41,2020/2/10 22:42,64,61,"
        "NORMAL_CLEARING,b9d0a33e-4c15-11ea-978a-9dd79410affb,,1002,PCMU,PCMU\n"
        ",0,1002,default,2020/2/10 22:41,,2020/2/10 22:41,2,0,NO_USER_RESPONSE,"
        "f1542038-4c15-11ea-97ca-9dd79410affb,,,,\n")
    report, _ = ingest(store, fs_csv, tmp_path)
    assert (report.format, report.accepted, report.rejected) == ("freeswitch-csv", 2, 0)
    rows = {r["call_id"]: r for r in cdrs(store)}
    answered = rows["b9d0a33e-4c15-11ea-978a-9dd79410affb"]
    assert (answered["disposition"], answered["customer_id"], answered["codec"],
            answered["release_reason"]) == ("ANSWERED", 1, "PCMU", "NORMAL_CLEARING")
    assert rows["f1542038-4c15-11ea-97ca-9dd79410affb"]["disposition"] == "NO ANSWER"

    fs_json = tmp_path / "call.json"
    fs_json.write_text(json.dumps({"core-uuid": "x", "channel_data": {"state": "CS_REPORTING"},
        "variables": {"uuid": "3da8bf84-c133-4959-9e24-e72875cb33a1",
                      "start_epoch": "1515666344", "start_uepoch": "1515666344534355",
                      "answer_epoch": "1515666354", "answer_uepoch": "1515666354294592",
                      "end_epoch": "1515666347", "end_uepoch": "1515666364000000",
                      "duration": "20", "billsec": "10", "hangup_cause": "NORMAL_CLEARING",
                      "sip_term_status": "200", "accountcode": "1002", "read_codec": "PCMA",
                      "sip_network_ip": "10.10.10.100", "caller_id_number": "1001",
                      "destination_number": "1002"}}, indent=2))
    report, _ = ingest(store, fs_json, tmp_path)
    assert (report.format, report.accepted) == ("freeswitch-json", 1)
    row = cdrs(store, "call_id = '3da8bf84-c133-4959-9e24-e72875cb33a1'")[0]
    assert row["start_time"].replace(tzinfo=None) == dt.datetime(2018, 1, 11, 10, 25, 44, 534000)
    assert (row["src_ip"], row["sip_code"], row["billsec"], row["codec"]) == ("10.10.10.100", 200, 10, "PCMA")


def test_quoted_header_as_clickhouse_writes_it(embedded_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "quoted.csv"
    path.write_text('"call_id","start_time","duration","answer_time"\n'
                    '"q1","2026-03-01 10:00:00",5,\\N\n')
    report, _ = ingest(embedded_db, path, tmp_path)
    assert (report.format, report.accepted) == ("csv", 1)
    assert cdrs(embedded_db)[0]["answer_time"] is None     # ClickHouse's CSV NULL
