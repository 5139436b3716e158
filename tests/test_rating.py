"""Rate cards and pricing, against a real engine: the rules as a table of calls → money.

Calls are priced by the real ingest path (a CSV of CDRs without charges), so
each case checks the SQL pricing in ClickHouse, not a Python re-implementation.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from cdrhouse.engine import accounts as acc
from cdrhouse.engine import ratecards as rc
from cdrhouse.engine.db import Database
from cdrhouse.engine.ingest import IngestOptions, Ingestor

D = Decimal
C1, K1, C2 = 1, 2, 3

CUSTOMER_CARD = """\
prefix,rate_per_min,connect_fee,increment,min_duration,effective_from,effective_to,currency,rounding
44,0.012,0,60/60,0,2026-01-01,,USD,4
4420,0.010,0.005,1/1,0,2026-01-01,2026-07-01,USD,6
4420,0.020,0,1/1,0,2026-07-01,,USD,6
49,0.015,0,30/6,0,2026-01-01,,USD,6
33,0.018,0.01,1/1,60,2026-01-01,,USD,6
39,0.03,0,1/1,0,2026-01-01,,USD,2
61,0.006,0,1/1,0,2026-01-01,,USD,6
"""

CARRIER_CARD = "prefix,rate_per_min,connect_fee,increment,min_duration,effective_from,currency\n" + \
    "".join(f"{d},0.006,0,1/1,0,2026-01-01,USD\n" for d in range(1, 10))

# call_id, customer, dst_number, start (UTC), billsec
#   -> customer_charge, customer_billsec, dst_prefix, rating_status, carrier_cost
PRICING = [
    ("60/60 rounds 61 s up to 120", "C1", "441611234567", "2026-03-01 10:00:00", 61,
     D("0.024"), 120, "44", "", D("0.0061")),
    ("60/60 bills exactly 60", "C1", "441611234567", "2026-03-01 10:00:00", 60,
     D("0.012"), 60, "44", "", D("0.006")),
    ("longest prefix wins, connect fee added", "C1", "442071234567", "2026-03-01 10:00:00", 61,
     D("0.015167"), 61, "4420", "", D("0.0061")),
    ("effective_to is exclusive, effective_from inclusive", "C1", "442071234567",
     "2026-07-01 00:00:00", 61, D("0.020333"), 61, "4420", "", D("0.0061")),
    ("last instant before effective_to", "C1", "442071234567", "2026-06-30 23:59:59", 61,
     D("0.015167"), 61, "4420", "", D("0.0061")),
    ("before any rate is effective", "C1", "442071234567", "2025-12-31 23:00:00", 61,
     None, None, "", "customer:no_rate;carrier:no_rate", None),
    ("30/6 below the first increment", "C1", "4930123456", "2026-03-01 10:00:00", 29,
     D("0.0075"), 30, "49", "", D("0.0029")),
    ("30/6 one step after", "C1", "4930123456", "2026-03-01 10:00:00", 31,
     D("0.009"), 36, "49", "", D("0.0031")),
    ("30/6 two steps after", "C1", "4930123456", "2026-03-01 10:00:00", 37,
     D("0.0105"), 42, "49", "", D("0.0037")),
    ("minimum duration", "C1", "33123456789", "2026-03-01 10:00:00", 5,
     D("0.028"), 60, "33", "", D("0.0005")),
    ("unanswered costs nothing, no connect fee", "C1", "33123456789", "2026-03-01 10:00:00", 0,
     D("0"), 0, "33", "", D("0")),
    ("rounding half away from zero to 2 decimals", "C1", "39061234567", "2026-03-01 10:00:00", 10,
     D("0.01"), 10, "39", "", D("0.001")),
    ("reference: 3600 s at 0.0001/s", "C1", "61212345678", "2026-03-01 10:00:00", 3600,
     D("0.36"), 3600, "61", "", D("0.36")),
    ("no prefix matches", "C1", "81312345678", "2026-03-01 10:00:00", 60,
     None, None, "", "customer:no_rate", D("0.006")),
    ("account without a card", "C2", "441611234567", "2026-03-01 10:00:00", 60,
     None, None, "", "customer:no_card", D("0.006")),
    ("call without a customer", "", "441611234567", "2026-03-01 10:00:00", 60,
     None, None, "", "customer:no_account", D("0.006")),
]


@pytest.fixture
def carded(store: Database, tmp_path: Path) -> Database:
    acc.add_account(store, "acme", "C1", "customer")
    acc.add_account(store, "acme", "K1", "carrier")
    acc.add_account(store, "acme", "C2", "customer")
    for code, text in (("C1", CUSTOMER_CARD), ("K1", CARRIER_CARD)):
        path = tmp_path / f"{code}.csv"
        path.write_text(text)
        rc.import_csv(store, "acme", code, path)
    return store


def _ingest(db: Database, tmp_path: Path, rows: list[dict], **opts) -> None:
    cols = sorted({k for r in rows for k in r})
    path = tmp_path / f"calls-{len(list(tmp_path.iterdir()))}.csv"
    path.write_text(",".join(cols) + "\n" + "".join(
        ",".join(str(r.get(c, "")) for c in cols) + "\n" for r in rows))
    ing = Ingestor(db, IngestOptions(tenant="acme", **opts), tmp_path / "rejects.csv")
    try:
        report = ing.ingest(path)
    finally:
        ing.close()
    assert report.rejected == 0, (tmp_path / "rejects.csv").read_text()


def _call(i: int, case: tuple) -> dict:
    _, cust, dst, start, billsec, *_ = case
    return {"call_id": f"p{i}", "start_time": start, "duration": billsec + 5, "billsec": billsec,
            "customer_code": cust, "carrier_code": "K1", "dst_number": dst}


def test_pricing_rules(carded: Database, tmp_path: Path) -> None:
    _ingest(carded, tmp_path, [_call(i, c) for i, c in enumerate(PRICING)])
    got = {cid: row for cid, *row in carded.rows(
        "SELECT call_id, customer_charge, customer_billsec, dst_prefix, rating_status, carrier_cost "
        "FROM cdr_records FINAL")}
    for i, (name, *_, charge, billed, prefix, status, cost) in enumerate(PRICING):
        assert got[f"p{i}"] == [charge, billed, prefix, status, cost], name


def test_the_rate_recorded_is_the_cards(carded: Database, tmp_path: Path) -> None:
    _ingest(carded, tmp_path, [_call(0, PRICING[2]), _call(1, PRICING[13])])
    assert carded.rows("SELECT call_id, customer_rate, carrier_rate FROM cdr_records FINAL "
                       "ORDER BY call_id") == [("p0", D("0.01"), D("0.006")),
                                               ("p1", None, D("0.006"))]


def test_ingest_keeps_charges_that_come_with_the_cdr_unless_told_to_reprice(
        carded: Database, tmp_path: Path) -> None:
    base = _call(0, PRICING[0])
    _ingest(carded, tmp_path, [{**base, "call_id": "kept", "customer_charge": "9.99"}])
    _ingest(carded, tmp_path, [{**base, "call_id": "repriced", "customer_charge": "9.99"}],
            reprice=True)
    assert carded.rows("SELECT call_id, customer_charge, carrier_cost FROM cdr_records FINAL "
                       "ORDER BY call_id") == [("kept", D("9.99"), D("0.0061")),
                                               ("repriced", D("0.024"), D("0.0061"))]


def test_without_cards_ingest_leaves_calls_unrated_and_unflagged(store: Database,
                                                                 tmp_path: Path) -> None:
    acc.add_account(store, "acme", "C1", "customer")
    _ingest(store, tmp_path, [{"call_id": "x", "start_time": "2026-03-01 10:00:00",
                               "duration": 60, "billsec": 60, "customer_code": "C1",
                               "dst_number": "4412345"}])
    assert store.rows("SELECT customer_charge, rating_status FROM cdr_records FINAL") == [
        (None, "")]


# -- rate-card files ------------------------------------------------------------------------

HEADER = "prefix,rate_per_min,connect_fee,increment,min_duration,effective_from,effective_to,currency\n"

BAD_CARDS = [
    ("", "the file is empty"),
    ("prefix,rate\n44,0.1\n", "line 1 (header): missing column(s) rate_per_min, connect_fee"),
    (HEADER.replace("currency", "currency,colour") + "44,0.1,0,1/1,0,2026-01-01,,USD,red\n",
     "unknown column(s) colour"),
    (HEADER, "no rates in the file"),
    (HEADER + "44x,0.1,0,1/1,0,2026-01-01,,USD\n", "line 2: prefix: 1-20 digits expected: '44x'"),
    (HEADER + "44,abc,0,1/1,0,2026-01-01,,USD\n", "line 2: rate_per_min: not a decimal number"),
    (HEADER + "44,-1,0,1/1,0,2026-01-01,,USD\n", "line 2: rate_per_min: must be a number from 0"),
    (HEADER + "44,0.0000001,0,1/1,0,2026-01-01,,USD\n", "line 2: rate_per_min: more than 6 decimals"),
    (HEADER + "44,0.1,0,60-60,0,2026-01-01,,USD\n", "line 2: increment: use initial/next"),
    (HEADER + "44,0.1,0,60/0,0,2026-01-01,,USD\n", "line 2: increment: the next increment"),
    (HEADER + "44,0.1,0,1/1,x,2026-01-01,,USD\n", "line 2: min_duration: not a whole number"),
    (HEADER + "44,0.1,0,1/1,0,01/02/2026,,USD\n", "line 2: effective_from: not a date"),
    (HEADER + "44,0.1,0,1/1,0,2026-02-01,2026-01-01,USD\n", "line 2: effective_to: must be after"),
    (HEADER + "44,0.1,0,1/1,0,2026-01-01,,dollars\n", "line 2: currency: not an ISO 4217 code"),
    (HEADER + "44,0.1,0,1/1,0,2026-01-01,,USD\n44,0.2,0,1/1,0,2026-01-01,,USD\n",
     "line 3: prefix 44 effective 2026-01-01 00:00:00 already on line 2"),
    (HEADER + "44,0.1,0,1/1,0,2026-01-01,,USD\n1,x,0,1/1,0,2026-01-01,,USD\n"
              "2,0.1,0,1/1,0,2026-01-01,,USD,extra\n",
     "2 bad line(s), nothing imported:\n  line 3: rate_per_min: not a decimal number: 'x'\n"
     "  line 4: more fields than the header has"),
]


@pytest.mark.parametrize("text, message", BAD_CARDS)
def test_bad_rate_cards_are_refused_whole_naming_lines(embedded_db: Database, tmp_path: Path,
                                                       text: str, message: str) -> None:
    acc.add_account(embedded_db, "acme", "C1", "customer")
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "44,0.5,0,1/1,0,2026-01-01,,USD\n")
    rc.import_csv(embedded_db, "acme", "C1", good)
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(rc.RateCardError) as exc:
        rc.import_csv(embedded_db, "acme", "C1", bad)
    assert message in str(exc.value)
    assert str(bad) in str(exc.value)
    # nothing stored was changed
    c1 = acc.find(embedded_db, "acme", "customer", "C1")
    assert [(r.prefix, r.rate_per_min) for r in rc.list_rates(embedded_db, "acme", c1)] == [
        ("44", D("0.5"))]


def test_export_reimports_to_the_same_card(embedded_db: Database, tmp_path: Path) -> None:
    c1 = acc.add_account(embedded_db, "acme", "C1", "customer")
    src = tmp_path / "card.csv"
    src.write_text(CUSTOMER_CARD)
    rc.import_csv(embedded_db, "acme", "C1", src)
    exported = rc.export_csv(rc.list_rates(embedded_db, "acme", c1))
    def key(r: rc.Rate) -> tuple:
        return r.prefix, r.effective_from
    assert rc.parse_csv(exported) == sorted(rc.parse_csv(CUSTOMER_CARD), key=key)
    assert "4420,0.01,0.005,1/1,0,2026-01-01,2026-07-01,USD,6" in exported.splitlines()


def test_replace_retires_rows_not_in_the_file(embedded_db: Database, tmp_path: Path) -> None:
    c1 = acc.add_account(embedded_db, "acme", "C1", "customer")
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text(HEADER + "44,0.1,0,1/1,0,2026-01-01,,USD\n49,0.2,0,1/1,0,2026-01-01,,USD\n")
    second.write_text(HEADER + "44,0.3,0,1/1,0,2026-01-01,,USD\n")
    rc.import_csv(embedded_db, "acme", "C1", first)
    rc.import_csv(embedded_db, "acme", "C1", second)  # upsert: 49 stays
    assert [(r.prefix, r.rate_per_min) for r in rc.list_rates(embedded_db, "acme", c1)] == [
        ("44", D("0.3")), ("49", D("0.2"))]
    rc.import_csv(embedded_db, "acme", "C1", second, replace=True)
    assert [(r.prefix, r.rate_per_min) for r in rc.list_rates(embedded_db, "acme", c1)] == [
        ("44", D("0.3"))]


def test_unknown_account_is_named(embedded_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "card.csv"
    path.write_text(CUSTOMER_CARD)
    with pytest.raises(rc.RateCardError, match="no account 'C9' in tenant 'acme'"):
        rc.import_csv(embedded_db, "acme", "C9", path)


def test_effective_dates_are_utc() -> None:
    rate = rc.parse_csv(HEADER + "44,0.1,0,1/1,0,2026-01-01T02:00:00+02:00,,USD\n")[0]
    assert rate.effective_from == dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def test_unrated_calls_are_reported_by_reason(carded: Database, tmp_path: Path) -> None:
    _ingest(carded, tmp_path, [_call(i, c) for i, c in enumerate(PRICING)])
    assert rc.unrated(carded, "acme", dt.date(2025, 12, 1), dt.date(2026, 12, 31)) == [
        ("carrier:no_rate", "K1", K1, "4420", 1),
        ("customer:no_account", "", 0, "4416", 1),
        ("customer:no_card", "C2", C2, "4416", 1),
        ("customer:no_rate", "C1", C1, "4420", 1),
        ("customer:no_rate", "C1", C1, "8131", 1),
    ]

