"""The viewer compiler: date presets across zones and DST, paging, cursors, number search, guards.

Pure tests pin the exact bounds and SQL; the rest run the compiled queries on
the embedded engine (and one on the HTTP interface) over small known datasets.
"""

from __future__ import annotations

import base64
import functools
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cdrhouse.engine.db import Database
from cdrhouse.sql import catalogue
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import (
    CompiledQuery, NumberItem, ViewerError, ViewRequest, compile_count, compile_view,
    encode_cursor, parse_number_search, preset_range,
)

OPERATOR = Principal.operator("acme")
CUSTOMER = Principal.customer("acme", 1)
CARRIER = Principal.carrier("acme", 10)
ADMIN = Principal.admin()
NOW = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def view(principal: Principal = OPERATOR, now: datetime = NOW, **kw: Any) -> CompiledQuery:
    return compile_view(ViewRequest(**kw), principal, now)


def error(principal: Principal = OPERATOR, **kw: Any) -> str:
    with pytest.raises(ViewerError) as err:
        view(principal, **kw)
    return str(err.value)


# -- date ranges (pure) -------------------------------------------------------------

PRESET_CASES = [
    ("today", "UTC", NOW, utc(2026, 3, 29), utc(2026, 3, 30)),
    # spring forward: a 23-hour day
    ("today", "Europe/Berlin", NOW, utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)),
    # 00:30 local on the 29th is still 28th in UTC
    ("today", "Europe/Berlin", utc(2026, 3, 28, 23, 30), utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)),
    # fall back: a 25-hour day
    ("today", "Europe/Berlin", utc(2026, 10, 25, 12), utc(2026, 10, 24, 22), utc(2026, 10, 25, 23)),
    ("yesterday", "Europe/Berlin", utc(2026, 3, 30, 8), utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)),
    ("yesterday", "UTC", utc(2026, 1, 1, 0, 0), utc(2025, 12, 31), utc(2026, 1, 1)),
    # Santiago skips midnight: the day starts at 01:00 local (-03), 23 hours long
    ("today", "America/Santiago", utc(2026, 9, 6, 15), utc(2026, 9, 6, 4), utc(2026, 9, 7, 3)),
    ("today", "Asia/Kolkata", utc(2026, 3, 29, 20), utc(2026, 3, 29, 18, 30),
     utc(2026, 3, 30, 18, 30)),
    ("last_24h", "Europe/Berlin", datetime(2026, 3, 29, 12, 0, 0, 123456, UTC),
     datetime(2026, 3, 28, 12, 0, 0, 123000, UTC), datetime(2026, 3, 29, 12, 0, 0, 123000, UTC)),
    ("last_7_days", "Europe/Berlin", NOW, utc(2026, 3, 22, 23), utc(2026, 3, 29, 22)),
    ("last_30_days", "UTC", NOW, utc(2026, 2, 28), utc(2026, 3, 30)),
    ("last_30_days", "Europe/Berlin", utc(2026, 10, 25, 12), utc(2026, 9, 25, 22),
     utc(2026, 10, 25, 23)),
    # ISO week, Monday first; NOW is a Sunday
    ("this_week", "Europe/Berlin", NOW, utc(2026, 3, 22, 23), utc(2026, 3, 29, 22)),
    ("this_week", "America/New_York", utc(2026, 3, 2, 3), utc(2026, 2, 23, 5), utc(2026, 3, 2, 5)),
    ("this_week", "UTC", utc(2026, 3, 30, 0), utc(2026, 3, 30), utc(2026, 4, 6)),
    ("last_week", "Europe/Berlin", NOW, utc(2026, 3, 15, 23), utc(2026, 3, 22, 23)),
    # the week before a DST change ends in the other offset
    ("last_week", "Europe/Berlin", utc(2026, 4, 1, 8), utc(2026, 3, 22, 23), utc(2026, 3, 29, 22)),
    ("this_month", "Europe/Berlin", utc(2026, 3, 31, 22, 30), utc(2026, 3, 31, 22),
     utc(2026, 4, 30, 22)),
    ("this_month", "Pacific/Auckland", utc(2026, 4, 4), utc(2026, 3, 31, 11), utc(2026, 4, 30, 12)),
    ("this_month", "UTC", utc(2026, 12, 31, 23, 59), utc(2026, 12, 1), utc(2027, 1, 1)),
    ("last_month", "Europe/Berlin", utc(2026, 1, 15), utc(2025, 11, 30, 23), utc(2025, 12, 31, 23)),
    ("last_month", "Europe/Berlin", utc(2026, 4, 1, 8), utc(2026, 2, 28, 23), utc(2026, 3, 31, 22)),
]


@pytest.mark.parametrize("preset, tz, now, start, end", PRESET_CASES)
def test_presets_in_the_display_zone(preset: str, tz: str, now: datetime, start: datetime,
                                     end: datetime) -> None:
    assert preset_range(preset, now, tz) == (start, end)
    q = view(now=now, range=preset, tz=tz, for_download=True)
    assert q.applied_range == (start, end)
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    assert (q.parameters["range_from"], q.parameters["range_to"]) == (
        start.strftime(fmt)[:-3], end.strftime(fmt)[:-3])


def test_dst_days_are_23_and_25_hours_long() -> None:
    spring = preset_range("today", utc(2026, 3, 29, 12), "Europe/Berlin")
    autumn = preset_range("today", utc(2026, 10, 25, 12), "Europe/Berlin")
    assert spring[1] - spring[0] == timedelta(hours=23)
    assert autumn[1] - autumn[0] == timedelta(hours=25)


CUSTOM_CASES = [
    ({"date_from": "2026-03-29", "date_to": "2026-03-30", "tz": "Europe/Berlin"},
     (utc(2026, 3, 28, 23), utc(2026, 3, 29, 22))),
    ({"date_from": "2026-10-25T02:30:00", "tz": "Europe/Berlin"},       # first of the two
     (utc(2026, 10, 25, 0, 30), None)),
    ({"date_to": "2026-03-29T12:00:00.250+05:30"}, (None, datetime(2026, 3, 29, 6, 30, 0, 250000, UTC))),
    ({"range": "custom", "date_from": datetime(2026, 3, 1, tzinfo=ZoneInfo("Europe/Berlin")),
      "date_to": date(2026, 3, 2), "tz": "UTC"}, (utc(2026, 2, 28, 23), utc(2026, 3, 2))),
    ({"range": "all"}, (None, None)),
]


@pytest.mark.parametrize("kw, expected", CUSTOM_CASES)
def test_custom_ranges(kw: dict, expected: tuple) -> None:
    assert view(**kw).applied_range == expected


RANGE_ERRORS = [
    ({"range": "last_year"}, "range: unknown range 'last_year'; use one of: today, yesterday, "
     "last_24h, last_7_days, last_30_days, this_week, last_week, this_month, last_month, "
     "custom, all"),
    ({"range": "today", "date_from": "2026-03-01"},
     "range: date_from/date_to need range 'custom', not 'today'"),
    ({"range": "custom"}, "range: a custom range needs date_from and/or date_to"),
    ({"date_from": "2026-03-02", "date_to": "2026-03-02"},
     "range: date_from (2026-03-02 00:00:00.000 UTC) must be before date_to "
     "(2026-03-02 00:00:00.000 UTC)"),
    ({"date_from": "2026-03-29T02:30", "tz": "Europe/Berlin"},
     "date_from: 2026-03-29 02:30:00 does not exist in Europe/Berlin (the clocks skip it); "
     "give a UTC offset"),
    ({"date_to": "next tuesday"}, "date_to: expects an ISO 8601 date-time such as "
     "'2026-03-29T10:00:00+02:00', got 'next tuesday'"),
    ({"tz": "Europe/Atlantis"}, "tz: unknown time zone 'Europe/Atlantis': use an IANA name "
     "such as 'Europe/Berlin' or 'UTC'"),
    ({"tz": "../../etc/passwd"}, "tz: unknown time zone '../../etc/passwd': use an IANA name "
     "such as 'Europe/Berlin' or 'UTC'"),
]


@pytest.mark.parametrize("kw, message", RANGE_ERRORS)
def test_range_errors(kw: dict, message: str) -> None:
    assert error(**kw) == message


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="now must be a timezone-aware datetime"):
        view(now=datetime(2026, 3, 29, 12))


# -- the compiled SQL (pure) ---------------------------------------------------------

def test_full_request_compiles_to_exact_sql() -> None:
    q = view(CUSTOMER, columns=["start_time", "dst_number", "customer_charge"],
             sort=["-customer_charge"], limit=50, tz="Europe/Berlin", connected_only=True,
             number="+44 (20) 7946*, !*99", range="today",
             rules={"combinator": "and", "rules": [
                 {"field": "duration", "operator": ">", "value": "5"}]})
    assert q.sql == (
        "SELECT toTimeZone(start_time, {tz:String}) AS start_time, dst_number, "
        "customer_charge, call_id\n"
        "FROM cdr_records FINAL\n"
        "WHERE (tenant_id = {__guard_tenant:String} AND customer_id = {__guard_account:UInt32})\n"
        "  AND start_time >= {range_from:DateTime64(3, 'UTC')}\n"
        "  AND start_time < {range_to:DateTime64(3, 'UTC')}\n"
        "  AND billsec > 0\n"
        "  AND (startsWith(src_number, {num0:String}) OR startsWith(dst_number, {num0:String})) "
        "AND NOT (endsWith(src_number, {num1:String}) OR endsWith(dst_number, {num1:String}))\n"
        "  AND (duration > {p0:UInt32})\n"
        "ORDER BY customer_charge DESC NULLS LAST, call_id DESC\n"
        "LIMIT 51")
    assert q.settings["prefer_column_name_to_alias"] == 1
    assert q.parameters == {
        "__guard_tenant": "acme", "__guard_account": 1,
        "range_from": "2026-03-28 23:00:00.000", "range_to": "2026-03-29 22:00:00.000",
        "num0": "44207946", "num1": "99", "p0": 5, "tz": "Europe/Berlin"}
    assert q.columns == ("start_time", "dst_number", "customer_charge")
    assert q.output_columns == ("start_time", "dst_number", "customer_charge", "call_id")
    assert [k.spec for k in q.sort] == ["-customer_charge", "-call_id"]


def test_download_stays_utc_and_may_be_unlimited() -> None:
    q = view(ADMIN, columns=["call_id", "answer_time"], sort="start_time", range="all",
             for_download=True, limit=None)
    assert q.sql == ("SELECT call_id, answer_time, start_time, tenant_id\n"
                     "FROM cdr_records FINAL\n"
                     "ORDER BY start_time ASC, call_id ASC, tenant_id ASC")
    assert q.parameters == {}
    assert q.limit is None


def test_default_columns_follow_the_role() -> None:
    assert view(CUSTOMER).columns == catalogue.DEFAULT_COLUMNS["customer"]
    assert view(CARRIER).columns == catalogue.DEFAULT_COLUMNS["carrier"]
    assert view(ADMIN).output_columns == catalogue.DEFAULT_COLUMNS["admin"] + ("call_id",)


@pytest.mark.parametrize("principal, kw, message", [
    (CUSTOMER, {"columns": ["start_time", "carrier_cost"]},
     "columns: column 'carrier_cost' is not visible to a customer user"),
    (CARRIER, {"columns": ["customer_id"]},
     "columns: column 'customer_id' is not visible to a carrier user"),
    (OPERATOR, {"columns": ["tenant_id"]},
     "columns: column 'tenant_id' is not visible to a tenant operator"),
    (OPERATOR, {"columns": ["colour"]}, "columns: unknown column 'colour'"),
    (OPERATOR, {"columns": []}, "columns: choose at least one column"),
    (OPERATOR, {"columns": ["duration", "duration"]}, "columns: column 'duration' is listed twice"),
    (CUSTOMER, {"sort": ["-carrier_cost"]},
     "sort: column 'carrier_cost' is not visible to a customer user"),
    (OPERATOR, {"sort": ["recording_url"]}, "sort: column 'recording_url' cannot be sorted"),
    (OPERATOR, {"sort": ["duration", "-duration"]}, "sort: column 'duration' is listed twice"),
    (OPERATOR, {"sort": ["-"]}, "sort: expected a field name, optionally with '-', got '-'"),
    (OPERATOR, {"limit": 1001}, "limit: 1001 is above the maximum page size of 1000"),
    (OPERATOR, {"limit": 0}, "limit: must be at least 1, got 0"),
    (OPERATOR, {"limit": "50"}, "limit: expected a whole number, got '50'"),
    (OPERATOR, {"limit": None}, "limit: a page needs a size; only downloads may be unlimited"),
    (CUSTOMER, {"rules": {"condition": "AND", "rules": [
        {"id": "carrier_cost", "operator": "is_null"}]}},
     "rules: rules[0]: field 'carrier_cost' is not visible to a customer user"),
    (OPERATOR, {"number": "44*20"}, "number: cannot search for '44*20': use digits, with * at "
     "the start and/or end (e.g. 4420*, *1234, *555*), ! to exclude"),
    (OPERATOR, {"number": "*"}, "number: cannot search for '*': use digits, with * at "
     "the start and/or end (e.g. 4420*, *1234, *555*), ! to exclude"),
    (OPERATOR, {"number": "anonymous"}, "number: cannot search for 'anonymous': use digits, "
     "with * at the start and/or end (e.g. 4420*, *1234, *555*), ! to exclude"),
])
def test_request_errors_name_the_part(principal: Principal, kw: dict, message: str) -> None:
    assert error(principal, **kw) == message


SMALL_BLOCKS = {"max_block_size": 1024, "max_threads": 1, "local_filesystem_read_method": "pread"}
SMALL_READ = {"max_threads": 1, "local_filesystem_read_method": "pread"}
#: every page showing a date-time column in another zone than UTC: WHERE and ORDER BY
#: name the stored column
BY_COLUMN = {"prefer_column_name_to_alias": 1}
ONE_CUSTOMER = {"field": "customer_id", "operator": "equal", "value": 5}
ONE_CARRIER = {"field": "carrier_id", "operator": "equal", "value": 10}


@pytest.mark.parametrize("principal, kw, settings", [
    (CUSTOMER, {}, SMALL_BLOCKS),                                   # newest first
    (CUSTOMER, {"sort": "start_time"}, SMALL_BLOCKS),               # oldest first
    (CUSTOMER, {"sort": "-start_time", "number": "4420*"}, SMALL_BLOCKS),
    (CUSTOMER, {"sort": "-billsec"}, {}),                           # not the key's order
    (CUSTOMER, {"for_download": True, "limit": None}, {}),          # no page to stop at
    (OPERATOR, {}, {}),                                             # every customer: sorted
    (OPERATOR, {"account_rules": [ONE_CUSTOMER]}, SMALL_BLOCKS),    # narrowed to one
    (OPERATOR, {"account_rules": [ONE_CARRIER]}, {}),
    (OPERATOR, {"account_rules": [{**ONE_CUSTOMER, "operator": "in", "value": [5, 6]}]}, {}),
    (CARRIER, {}, {}),
    (ADMIN, {}, {}),
    (ADMIN, {"account_rules": [ONE_CUSTOMER]}, {}),                 # customer 5 of every tenant
    (ADMIN, {"account_rules": [{"field": "tenant_id", "operator": "equal", "value": "acme"},
                               ONE_CUSTOMER]}, SMALL_BLOCKS),
])
def test_only_pages_read_in_key_order_get_small_blocks(principal: Principal, kw: dict,
                                                       settings: dict) -> None:
    assert _read_settings(compile_view(ViewRequest(**kw), principal, NOW)) == settings
    # the same page shown in another zone also names the stored columns in WHERE/ORDER BY
    expected = settings if kw.get("for_download") else {**settings, **BY_COLUMN}
    zoned = compile_view(ViewRequest(**kw, tz="Asia/Tokyo"), principal, NOW)
    assert _read_settings(zoned) == expected


@pytest.mark.parametrize("tz, for_download, select", [
    # stored in UTC: shown in UTC as stored, no conversion and no setting
    ("UTC", False, "SELECT start_time, call_id, answer_time"),
    ("Europe/Berlin", False, "SELECT toTimeZone(start_time, {tz:String}) AS start_time, "
                             "call_id, toTimeZone(answer_time, {tz:String}) AS answer_time"),
    ("Etc/UTC", False, "SELECT toTimeZone(start_time, {tz:String}) AS start_time, "
                       "call_id, toTimeZone(answer_time, {tz:String}) AS answer_time"),
    ("Europe/Berlin", True, "SELECT start_time, call_id, answer_time"),   # downloads: UTC
])
def test_date_times_are_converted_only_to_another_zone(tz: str, for_download: bool,
                                                       select: str) -> None:
    q = compile_view(ViewRequest(columns=["start_time", "call_id", "answer_time"], tz=tz,
                                 for_download=for_download), CUSTOMER, NOW)
    assert q.sql.splitlines()[0] == select
    converted = "toTimeZone" in select
    assert ("tz" in q.parameters, "prefer_column_name_to_alias" in q.settings) == (
        converted, converted)


@pytest.mark.parametrize("principal, kw, settings", [
    (OPERATOR, {}, SMALL_READ),                   # a tenant's recent slice: one thread
    (ADMIN, {}, SMALL_READ),
    (CUSTOMER, {}, SMALL_BLOCKS),                 # in key order: small blocks as well
    (OPERATOR, {"for_download": True, "limit": None}, {}),
])
def test_recent_slices_are_read_on_one_thread(principal: Principal, kw: dict,
                                              settings: dict) -> None:
    sliced = compile_view(ViewRequest(**kw), principal, NOW, newer_than=NOW - timedelta(days=1))
    assert _read_settings(sliced) == settings
    zoned = compile_view(ViewRequest(**kw, tz="Asia/Tokyo"), principal, NOW,
                         newer_than=NOW - timedelta(days=1))
    assert _read_settings(zoned) == (settings if kw.get("for_download")
                                     else {**settings, **BY_COLUMN})


def _read_settings(compiled) -> dict:
    """A page's settings but the skip-index one (its own test below)."""
    return {k: v for k, v in compiled.settings.items() if k != "use_skip_indexes"}


NUMBER_RULE = {"condition": "AND", "rules": [
    {"field": "billsec", "operator": "greater", "value": 0},
    {"condition": "OR", "rules": [
        {"field": "dst_number", "operator": "begins_with", "value": "4420"}]}]}


@pytest.mark.parametrize("principal, kw, by_time, indexes", [
    (CUSTOMER, {}, False, False),
    (CUSTOMER, {"rules": {"condition": "AND", "rules": [
        {"field": "billsec", "operator": "greater", "value": 20}]}}, False, False),
    (CUSTOMER, {"connected_only": True, "sort": "-billsec"}, False, False),
    (CUSTOMER, {"for_download": True, "limit": None}, False, False),
    (CUSTOMER, {"number": "4420*"}, False, True),
    (CUSTOMER, {"number": "!4420*"}, False, True),
    (CUSTOMER, {"rules": NUMBER_RULE}, False, True),                # nested in a group
    (OPERATOR, {"account_rules": [ONE_CUSTOMER]}, False, False),
    (OPERATOR, {"account_rules": [{"field": "src_number", "operator": "equal",
                                   "value": "442079460000"}]}, False, True),
    (OPERATOR, {"number": "442079460000"}, True, True),             # TABLE: its indexes find it
    (OPERATOR, {}, True, True),                                     # the time-ordered copy:
])                                                                  # no skip index to turn off
def test_skip_indexes_only_where_a_page_filters_a_number(principal: Principal, kw: dict,
                                                          by_time: bool, indexes: bool) -> None:
    """TABLE's text indexes (on the numbers) are analysed for a filtered read even when
    they cannot drop a granule; a page filtering no number turns them off."""
    compiled = compile_view(ViewRequest(**kw), principal, NOW, by_time=by_time)
    assert ("use_skip_indexes" not in compiled.settings) is indexes
    if not indexes:
        assert compiled.settings["use_skip_indexes"] == 0


def test_page_size_cap_is_inclusive() -> None:
    assert view(limit=1000).limit == 1000
    assert view(limit=1000).sql.endswith("ORDER BY start_time DESC, call_id DESC\nLIMIT 1001")


@pytest.mark.parametrize("text, items", [
    ("442079460000", [NumberItem("442079460000", "exact")]),
    ("+44 (20) 7946-0000", [NumberItem("442079460000", "exact")]),
    ("4420*", [NumberItem("4420", "prefix")]),
    ("*1234", [NumberItem("1234", "suffix")]),
    ("*555*", [NumberItem("555", "contains")]),
    ("123, 456* ,!*99, ! +1.555*", [NumberItem("123", "exact"), NumberItem("456", "prefix"),
                                    NumberItem("99", "suffix", True),
                                    NumberItem("1555", "prefix", True)]),
    ("  ", []),
    (",", []),
])
def test_number_search_forms(text: str, items: list[NumberItem]) -> None:
    assert parse_number_search(text) == items


# -- cursors (pure) ------------------------------------------------------------------

def _b64(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


DEFAULT_SPEC = ["-start_time", "-call_id"]


TIME_SORT = ["-start_time"]


@pytest.mark.parametrize("sort, cursor, why", [
    (TIME_SORT, "not a cursor!", "not a cursor this viewer made"),
    (TIME_SORT, "x" * 5000, "not a cursor this viewer made"),
    (TIME_SORT, _b64("just a string"), "not a cursor this viewer made"),
    (TIME_SORT, base64.urlsafe_b64encode(b"\xff\xfe").decode(), "not a cursor this viewer made"),
    (TIME_SORT, _b64({"s": ["start_time", "call_id"], "v": ["2026-03-29 00:00:00.000", "a"]}),
     "it belongs to another sort order"),
    (TIME_SORT, _b64({"s": DEFAULT_SPEC, "v": ["2026-03-29 00:00:00.000"]}),
     "wrong number of values"),
    (TIME_SORT, _b64({"s": DEFAULT_SPEC, "v": [None, "a"]}), "start_time cannot be empty"),
    (TIME_SORT, _b64({"s": DEFAULT_SPEC, "v": ["1' OR 1=1 --", "a"]}),
     "start_time expects an ISO 8601 date-time such as '2026-03-29T10:00:00+02:00', "
     "got \"1' OR 1=1 --\""),
    (TIME_SORT, _b64({"s": DEFAULT_SPEC, "v": ["2026-03-29 00:00:00.000", ["a"]]}),
     "call_id expects text, got ['a']"),
    (["duration"], _b64({"s": ["duration", "call_id"], "v": ["5", "a"]}),
     "duration must be a whole number"),
    (["duration"], _b64({"s": ["duration", "call_id"], "v": [-5, "a"]}),
     "duration value -5 is out of range (0..4294967295)"),
    (["-customer_charge"], _b64({"s": ["-customer_charge", "-call_id"], "v": ["1e400", "a"]}),
     "customer_charge value '1e400' is out of range (at most 12 digits before the point)"),
])
def test_forged_cursors_are_refused(sort: list[str], cursor: str, why: str) -> None:
    assert error(cursor=cursor, sort=sort) == (
        f"cursor: invalid cursor ({why}); start again from the first page")


def test_cursor_values_are_bound_parameters() -> None:
    evil = "z' OR 1=1) --"
    cursor = encode_cursor(["-customer_charge", "-call_id"], [None, evil])
    q = view(CUSTOMER, sort=["-customer_charge"], cursor=cursor, for_download=True)
    assert q.sql.splitlines()[-3] == "  AND ((customer_charge IS NULL AND call_id < {k1:String}))"
    assert q.parameters["k1"] == evil
    cursor = encode_cursor(["-customer_charge", "-call_id"], ["0.5", "c"])
    q = view(CUSTOMER, sort=["-customer_charge"], cursor=cursor, for_download=True)
    assert q.sql.splitlines()[-3] == (
        "  AND (((customer_charge < {k0:Decimal(18, 6)} OR customer_charge IS NULL)) OR "
        "(customer_charge = {k0:Decimal(18, 6)} AND call_id < {k1:String}))")
    assert (q.parameters["k0"], q.parameters["k1"]) == (Decimal("0.500000"), "c")


# -- on ClickHouse -------------------------------------------------------------------

COLUMNS = ("tenant_id", "call_id", "start_time", "answer_time", "end_time", "duration",
           "billsec", "customer_id", "carrier_id", "direction", "disposition", "src_number",
           "dst_number", "dst_prefix", "country", "release_reason", "sip_code", "sip_reason",
           "pdd_ms", "src_ip", "dst_ip", "codec", "customer_rate", "customer_charge",
           "carrier_rate", "carrier_cost", "currency", "recording_url", "version")
BASE = datetime(2026, 3, 29, 0, 59, 59, 998000)          # naive UTC; 01:59:59.998 in Berlin
DISPOSITIONS = catalogue.DISPOSITIONS
IPS = ["", "10.0.0.1", "10.0.0.10", "2001:db8::1", "9.9.9.9"]
CHARGES = [None, Decimal("0.1"), Decimal("0.1"), Decimal("0.2"), None, Decimal("0.05")]


def cdr(call_id: str, start: datetime, *, tenant: str = "acme", customer: int = 1,
        carrier: int = 10, billsec: int = 0, duration: int = 0, src: str = "", dst: str = "",
        charge: Decimal | None = None, answer: datetime | None = None,
        disposition: str = "NO ANSWER", src_ip: str = "") -> dict[str, Any]:
    return {
        "tenant_id": tenant, "call_id": call_id, "start_time": start, "answer_time": answer,
        "end_time": start + timedelta(seconds=duration), "duration": duration,
        "billsec": billsec, "customer_id": customer, "carrier_id": carrier,
        "direction": "outbound", "disposition": disposition, "src_number": src,
        "dst_number": dst, "dst_prefix": "", "country": "", "release_reason": "",
        "sip_code": 0, "sip_reason": "", "pdd_ms": 0, "src_ip": src_ip, "dst_ip": "",
        "codec": "", "customer_rate": None, "customer_charge": charge, "carrier_rate": None,
        "carrier_cost": None, "currency": "USD", "recording_url": "", "version": 1,
    }


def insert(db: Database, rows: list[dict[str, Any]]) -> None:
    db.insert_rows("cdr_records", [[r[c] for c in COLUMNS] for r in rows], COLUMNS)


def paging_rows() -> list[dict[str, Any]]:
    """63 calls of customer 1 on four start instants (many ties), 5 of customer 2, and the
    same call ids again in tenant zeta (only an admin sees both)."""
    rows = []
    for i in range(63):
        rows.append(cdr(f"c{(i * 37) % 63:03d}", BASE + timedelta(milliseconds=(i % 4)),
                        duration=i % 5, billsec=i % 3, charge=CHARGES[i % 6],
                        answer=None if i % 3 == 0 else BASE + timedelta(seconds=i % 2),
                        disposition=DISPOSITIONS[i % 5], src_ip=IPS[i % 5]))
    for i in range(5):
        rows.append(cdr(f"d{i}", BASE, customer=2, billsec=1))
    rows += [{**r, "tenant_id": "zeta"} for r in rows[:10]]
    return rows


def expected_order(rows: list[dict[str, Any]], keys: list[tuple[str, bool]]) -> list[tuple]:
    """(tenant, call_id) in the documented order: NULLs last, enums by declaration order."""
    def cmp(a: dict, b: dict) -> int:
        for name, desc in keys:
            x, y = a[name], b[name]
            if x == y:
                continue
            if x is None or y is None:
                return 1 if x is None else -1
            f = catalogue.BY_NAME[name]
            if f.kind == "enum":
                x, y = f.enum_values.index(x), f.enum_values.index(y)
            return (1 if x > y else -1) * (-1 if desc else 1)
        return 0
    return [(r["tenant_id"], r["call_id"]) for r in sorted(rows, key=functools.cmp_to_key(cmp))]


def fetch_all(db: Database, principal: Principal, limit: int, **kw: Any) -> list[list[tuple]]:
    """Every page of a view, following cursors; each page as its rows."""
    pages, cursor = [], None
    for _ in range(200):
        q = view(principal, limit=limit, cursor=cursor, range="all", **kw)
        result = db.query(q.sql, q.parameters)
        assert tuple(result.column_names) == q.output_columns
        page = q.page(result.result_rows)
        pages.append(page.rows)
        cursor = page.next_cursor
        if cursor is None:
            return pages
    raise AssertionError("paging did not end")


SORTS = [
    (None, [("start_time", True), ("call_id", True)]),
    (["start_time"], [("start_time", False), ("call_id", False)]),
    (["-customer_charge"], [("customer_charge", True), ("call_id", True)]),
    (["customer_charge", "-start_time"],
     [("customer_charge", False), ("start_time", True), ("call_id", False)]),
    (["disposition", "-duration"], [("disposition", False), ("duration", True), ("call_id", False)]),
    (["-answer_time", "billsec"], [("answer_time", True), ("billsec", False), ("call_id", True)]),
    (["src_ip"], [("src_ip", False), ("call_id", False)]),
    (["-call_id"], [("call_id", True)]),
]


@pytest.mark.parametrize("sort, keys", SORTS, ids=[str(s[0]) for s in SORTS])
@pytest.mark.parametrize("for_download", [False, True], ids=["display", "download"])
def test_keyset_paging_returns_every_row_once_in_order(embedded_db: Database, sort: Any,
                                                       keys: list, for_download: bool) -> None:
    rows = paging_rows()
    insert(embedded_db, rows)
    kw = {"sort": sort} if sort else {}
    pages = fetch_all(embedded_db, OPERATOR, 7, columns=["call_id", "customer_charge"],
                      tz="Europe/Berlin", for_download=for_download, **kw)
    mine = [r for r in rows if r["tenant_id"] == "acme"]
    assert [len(p) for p in pages] == [7] * 9 + [5]
    got = [("acme", r[0]) for p in pages for r in p]
    assert got == expected_order(mine, keys)


def test_admin_pages_break_ties_across_tenants(embedded_db: Database) -> None:
    rows = paging_rows()
    insert(embedded_db, rows)
    pages = fetch_all(embedded_db, ADMIN, 10, columns=["tenant_id", "call_id", "start_time"])
    got = [(r[0], r[1]) for p in pages for r in p]
    assert got == expected_order(rows, [("start_time", True), ("call_id", True),
                                        ("tenant_id", True)])
    assert len(got) == len(set(got)) == 78


def test_customer_sees_only_its_rows_even_with_a_forged_cursor(embedded_db: Database) -> None:
    insert(embedded_db, paging_rows())
    pages = fetch_all(embedded_db, Principal.customer("acme", 2), 2, columns=["call_id"])
    assert [[r[0] for r in p] for p in pages] == [["d4", "d3"], ["d2", "d1"], ["d0"]]
    forged = encode_cursor(["-start_time", "-call_id"], ["2299-12-31 23:59:59.999", "' OR 1=1"])
    q = view(Principal.customer("acme", 2), cursor=forged, range="all", columns=["call_id"])
    assert sorted(r[0] for r in embedded_db.rows(q.sql, q.parameters)) == [
        "d0", "d1", "d2", "d3", "d4"]
    q = view(Principal.customer("zeta", 1), range="all", columns=["call_id"], limit=1000)
    assert len(embedded_db.rows(q.sql, q.parameters)) == 10


def test_display_zone_and_download_utc(embedded_db: Database) -> None:
    insert(embedded_db, [cdr("a", BASE, answer=BASE + timedelta(seconds=1))])
    cols = ["start_time", "answer_time", "call_id"]
    shown = view(columns=cols, range="today", tz="Europe/Berlin")
    row = embedded_db.rows(shown.sql, shown.parameters)[0]
    berlin = ZoneInfo("Europe/Berlin")
    assert row[0] == datetime(2026, 3, 29, 1, 59, 59, 998000, tzinfo=berlin)
    assert (row[0].utcoffset(), row[1].utcoffset()) == (timedelta(hours=1), timedelta(hours=2))
    assert row[1].replace(tzinfo=None) == datetime(2026, 3, 29, 3, 0, 0, 998000)
    download = view(columns=cols, range="today", tz="Europe/Berlin", for_download=True)
    assert embedded_db.rows(download.sql, download.parameters) == [
        (BASE, BASE + timedelta(seconds=1), "a")]
    # the cursor of a displayed row is the UTC instant either way
    assert shown.next_cursor_from(row) == download.next_cursor_from(
        embedded_db.rows(download.sql, download.parameters)[0])


def test_range_bounds_are_half_open_utc(embedded_db: Database) -> None:
    day = [cdr("before", datetime(2026, 3, 28, 22, 59, 59, 999000)),
           cdr("first", datetime(2026, 3, 28, 23)),
           cdr("last", datetime(2026, 3, 29, 21, 59, 59, 999000)),
           cdr("after", datetime(2026, 3, 29, 22))]
    insert(embedded_db, day)
    q = view(columns=["call_id"], range="today", tz="Europe/Berlin", sort="start_time")
    assert [r[0] for r in embedded_db.rows(q.sql, q.parameters)] == ["first", "last"]
    q = view(columns=["call_id"], range="today", tz="UTC", sort="start_time")
    assert [r[0] for r in embedded_db.rows(q.sql, q.parameters)] == ["last", "after"]


NUMBERS = [
    cdr("n1", BASE, src="442079460000", dst="15551230000"),
    cdr("n2", BASE, src="15550001234", dst="442079461234"),
    cdr("n3", BASE, src="4930555123", dst="4930111"),
    cdr("n4", BASE, src="anonymous", dst="4420555"),
    cdr("n5", BASE, src="", dst="991234"),
    cdr("n6", BASE, src="4420", dst="4420"),
]


@pytest.mark.parametrize("number, expected", [
    ("442079460000", {"n1"}),
    ("+44 (20) 7946-0000", {"n1"}),
    ("44.20.79.46.00.00", {"n1"}),
    ("4420*", {"n1", "n2", "n4", "n6"}),
    ("*1234", {"n2", "n5"}),
    ("*555*", {"n1", "n2", "n3", "n4"}),
    ("4420", {"n6"}),
    ("4930111, 991234", {"n3", "n5"}),
    ("4930*,*0000", {"n1", "n3"}),
    ("!4420*", {"n3", "n5"}),
    ("!4420*, !*1234", {"n3"}),
    ("*555*, !4420*", {"n3"}),
    ("*5*, !*1234, !4420", {"n1", "n3", "n4"}),
    ("123456789", set()),
    ("", {"n1", "n2", "n3", "n4", "n5", "n6"}),
])
def test_number_search_on_clickhouse(embedded_db: Database, number: str,
                                     expected: set[str]) -> None:
    insert(embedded_db, NUMBERS)
    q = view(columns=["call_id"], range="all", number=number)
    assert {r[0] for r in embedded_db.rows(q.sql, q.parameters)} == expected


def test_connected_only_means_billsec_above_zero(embedded_db: Database) -> None:
    insert(embedded_db, [cdr("rang", BASE, duration=60, billsec=0),
                         cdr("talked", BASE, duration=60, billsec=1),
                         cdr("failed", BASE)])
    q = view(columns=["call_id"], range="all", connected_only=True)
    assert [r[0] for r in embedded_db.rows(q.sql, q.parameters)] == ["talked"]
    q = view(columns=["call_id"], range="all")
    assert sorted(r[0] for r in embedded_db.rows(q.sql, q.parameters)) == [
        "failed", "rang", "talked"]


def test_rules_and_count_combine_with_everything(embedded_db: Database) -> None:
    insert(embedded_db, paging_rows())
    kw = dict(range="custom", date_from="2026-03-29T01:59:59.999", tz="Europe/Berlin",
              connected_only=True, rules={"condition": "OR", "rules": [
                  {"id": "disposition", "operator": "in", "value": ["BUSY", "FAILED"]},
                  {"id": "customer_charge", "operator": "is_null"}]})
    q = view(columns=["call_id"], limit=1000, **kw)
    got = {r[0] for r in embedded_db.rows(q.sql, q.parameters)}
    rows = [r for r in paging_rows() if r["tenant_id"] == "acme" and r["customer_id"] == 1
            and r["start_time"] >= datetime(2026, 3, 29, 0, 59, 59, 999000)
            and r["billsec"] > 0
            and (r["disposition"] in ("BUSY", "FAILED") or r["customer_charge"] is None)]
    assert got == {r["call_id"] for r in rows} and len(got) == 16
    count = compile_count(ViewRequest(**kw), OPERATOR, NOW)
    assert embedded_db.scalar(count.sql, count.parameters) == 16
    assert count.applied_range == (datetime(2026, 3, 29, 0, 59, 59, 999000, UTC), None)


def test_paging_over_http_with_display_zone(store: Database) -> None:
    rows = paging_rows()
    insert(store, rows)
    pages = fetch_all(store, OPERATOR, 20, columns=["start_time", "customer_charge"],
                      sort=["-customer_charge", "start_time"], tz="Asia/Kolkata")
    got = [r[-1] for p in pages for r in p]                      # call_id is appended last
    want = expected_order([r for r in rows if r["tenant_id"] == "acme"],
                          [("customer_charge", True), ("start_time", False), ("call_id", True)])
    assert got == [c for _, c in want]
    assert pages[0][0][0].utcoffset() == timedelta(hours=5, minutes=30)
