"""The query-builder compiler: exact SQL per operator in both dialects, errors, and semantics.

Three layers:

1. pure compile tables — rule in, exact SQL text and parameters out;
2. semantics on ClickHouse — each operator of both dialects run on a small,
   hand-written dataset (NULLs, empty strings, boundaries, DST instants) with
   the expected call ids written out by hand;
3. a property test — random rule trees over ~200 random rows: the compiled
   SQL run on ClickHouse returns exactly the rows a plain Python evaluation of
   the documented semantics returns.
"""

from __future__ import annotations

import ipaddress
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql import catalogue, operators
from cdrhouse.sql.builder import BuilderError, Predicate, compile_rules
from cdrhouse.sql.principal import Principal

OPERATOR = Principal.operator("acme")
CUSTOMER = Principal.customer("acme", 1)
CARRIER = Principal.carrier("acme", 10)


def jq(*rules: dict, condition: str = "AND", **kw: Any) -> dict:
    return {"condition": condition, "rules": list(rules), **kw}


def rq(*rules: dict, combinator: str = "and", **kw: Any) -> dict:
    return {"combinator": combinator, "rules": list(rules), **kw}


# -- 1. exact compile output ------------------------------------------------------

# (jQuery key, react-querybuilder key, field, jQuery value, rqb value, tz, SQL, params)
# The SQL is the whole predicate: a group of one rule, hence the outer parentheses.
DT = "DateTime64(3, 'UTC')"
DEC = "Decimal(18, 6)"
COMPILE_CASES = [
    ("equal", "=", "duration", 60, "60", "UTC",
     "(duration = {p0:UInt32})", {"p0": 60}),
    ("equal", "=", "src_ip", "2001:DB8:0::1", "2001:DB8:0::1", "UTC",
     "((toIPv6OrNull(src_ip) IS NOT NULL AND toIPv6OrNull(src_ip) = {p0:IPv6}))",
     {"p0": "2001:db8::1"}),
    ("not_equal", "!=", "customer_charge", "0.5", 0.5, "UTC",
     f"((customer_charge IS NOT NULL AND customer_charge != {{p0:{DEC}}}))",
     {"p0": Decimal("0.500000")}),
    ("in", "in", "disposition", ["ANSWERED", "NO ANSWER"], "ANSWERED, NO ANSWER", "UTC",
     "(disposition IN ({p0:String}, {p1:String}))", {"p0": "ANSWERED", "p1": "NO ANSWER"}),
    ("not_in", "notIn", "sip_code", [486, 603], "486,603", "UTC",
     "(sip_code NOT IN ({p0:UInt16}, {p1:UInt16}))", {"p0": 486, "p1": 603}),
    ("less", "<", "start_time", "2026-03-29T02:00:00+02:00", "2026-03-29T00:00:00Z", "UTC",
     f"(start_time < {{p0:{DT}}})", {"p0": "2026-03-29 00:00:00.000"}),
    ("less_or_equal", "<=", "billsec", 0, "0", "UTC",
     "(billsec <= {p0:UInt32})", {"p0": 0}),
    ("greater", ">", "customer_rate", 0.01, "0.01", "UTC",
     f"((customer_rate IS NOT NULL AND customer_rate > {{p0:{DEC}}}))",
     {"p0": Decimal("0.010000")}),
    # naive wall time in the display zone; 02:30 happens twice that night: the first is taken
    ("greater_or_equal", ">=", "answer_time", "2026-10-25 02:30:00", "2026-10-25T02:30",
     "Europe/Berlin",
     f"((answer_time IS NOT NULL AND answer_time >= {{p0:{DT}}}))",
     {"p0": "2026-10-25 00:30:00.000"}),
    ("between", "between", "duration", [10, 20], "10,20", "UTC",
     "(duration BETWEEN {p0:UInt32} AND {p1:UInt32})", {"p0": 10, "p1": 20}),
    ("between", "between", "start_time", ["2026-03-29", "2026-03-30"], "2026-03-29,2026-03-30",
     "Europe/Berlin",
     f"(start_time BETWEEN {{p0:{DT}}} AND {{p1:{DT}}})",
     {"p0": "2026-03-28 23:00:00.000", "p1": "2026-03-29 22:00:00.000"}),
    ("not_between", "notBetween", "carrier_cost", ["0.1", "0.25"], ["0.1", "0.25"], "UTC",
     f"((carrier_cost IS NOT NULL AND carrier_cost NOT BETWEEN {{p0:{DEC}}} AND {{p1:{DEC}}}))",
     {"p0": Decimal("0.100000"), "p1": Decimal("0.250000")}),
    ("begins_with", "beginsWith", "dst_number", "44%_", "44%_", "UTC",
     "(startsWith(dst_number, {p0:String}))", {"p0": "44%_"}),
    ("not_begins_with", "doesNotBeginWith", "src_ip", "10.", "10.", "UTC",
     "(NOT startsWith(src_ip, {p0:String}))", {"p0": "10."}),
    ("contains", "contains", "release_reason", "it's", "it's", "UTC",
     "(position(release_reason, {p0:String}) > 0)", {"p0": "it's"}),
    ("not_contains", "doesNotContain", "src_number", "555", 555, "UTC",
     "(position(src_number, {p0:String}) = 0)", {"p0": "555"}),
    ("ends_with", "endsWith", "dst_number", "1234", "1234", "UTC",
     "(endsWith(dst_number, {p0:String}))", {"p0": "1234"}),
    ("not_ends_with", "doesNotEndWith", "codec", "729", "729", "UTC",
     "(NOT endsWith(codec, {p0:String}))", {"p0": "729"}),
    ("is_empty", None, "country", None, None, "UTC", "(country = '')", {}),
    ("is_empty", None, "customer_charge", None, None, "UTC", "(customer_charge IS NULL)", {}),
    ("is_not_empty", None, "dst_ip", None, None, "UTC", "(dst_ip != '')", {}),
    ("is_not_empty", None, "answer_time", None, None, "UTC", "(answer_time IS NOT NULL)", {}),
    ("is_null", "null", "carrier_rate", None, "", "UTC", "(carrier_rate IS NULL)", {}),
    ("is_null", "null", "duration", None, "", "UTC", "(0)", {}),
    ("is_not_null", "notNull", "answer_time", None, "", "UTC", "(answer_time IS NOT NULL)", {}),
    ("is_not_null", "notNull", "src_number", None, "", "UTC", "(1)", {}),
]


def _case_id(case: tuple) -> str:
    return f"{case[0]}-{case[2]}"


@pytest.mark.parametrize("case", COMPILE_CASES, ids=_case_id)
def test_compile_jquery_rule(case: tuple) -> None:
    key, _, field, value, _, tz, sql, params = case
    tree = jq({"id": field, "field": field, "type": "string", "input": "text",
               "operator": key, "value": value}, valid=True)
    assert compile_rules(tree, OPERATOR, tz=tz) == Predicate(sql, params)


@pytest.mark.parametrize("case", [c for c in COMPILE_CASES if c[1]], ids=_case_id)
def test_compile_react_querybuilder_rule(case: tuple) -> None:
    _, key, field, _, value, tz, sql, params = case
    tree = rq({"id": str(uuid.uuid4()), "field": field, "operator": key, "value": value,
               "valueSource": "value"}, id=str(uuid.uuid4()))
    assert compile_rules(tree, OPERATOR, tz=tz) == Predicate(sql, params)


def test_every_operator_of_both_dialects_has_a_compile_case() -> None:
    jq_keys = {c[0] for c in COMPILE_CASES}
    rqb_keys = {c[1] for c in COMPILE_CASES if c[1]}
    assert jq_keys == set(operators.JQUERY_KEYS) == {
        "equal", "not_equal", "in", "not_in", "less", "less_or_equal", "greater",
        "greater_or_equal", "between", "not_between", "begins_with", "not_begins_with",
        "contains", "not_contains", "ends_with", "not_ends_with", "is_empty", "is_not_empty",
        "is_null", "is_not_null"}
    assert rqb_keys == set(operators.RQB_KEYS) == {
        "=", "!=", "<", ">", "<=", ">=", "contains", "beginsWith", "endsWith",
        "doesNotContain", "doesNotBeginWith", "doesNotEndWith", "null", "notNull", "in",
        "notIn", "between", "notBetween"}


FIELD_CASES = [
    (rq({"field": "billsec", "operator": "<", "value": "duration", "valueSource": "field"}),
     "(billsec < duration)"),
    (rq({"field": "customer_charge", "operator": ">", "value": "carrier_cost",
         "valueSource": "field"}),
     "((customer_charge IS NOT NULL AND carrier_cost IS NOT NULL AND "
     "customer_charge > carrier_cost))"),
    (rq({"field": "dst_number", "operator": "beginsWith", "value": "dst_prefix",
         "valueSource": "field"}),
     "(startsWith(dst_number, dst_prefix))"),
    (rq({"field": "duration", "operator": "between", "value": "billsec,pdd_ms",
         "valueSource": "field"}),
     "(duration BETWEEN billsec AND pdd_ms)"),
    (rq({"field": "src_ip", "operator": "notIn", "value": ["dst_ip"], "valueSource": "field"}),
     "((toIPv6OrNull(src_ip) IS NOT NULL AND toIPv6OrNull(dst_ip) IS NOT NULL AND "
     "toIPv6OrNull(src_ip) NOT IN (toIPv6OrNull(dst_ip))))"),
    (jq({"id": "src_number", "operator": "equal", "value": "dst_number",
         "valueSource": "field"}),
     "(src_number = dst_number)"),
]


@pytest.mark.parametrize("tree, sql", FIELD_CASES)
def test_compile_field_against_field(tree: dict, sql: str) -> None:
    assert compile_rules(tree, OPERATOR) == Predicate(sql, {})


def test_nested_groups_negation_and_parameter_order() -> None:
    tree = jq(
        {"id": "duration", "operator": "greater", "value": 0},
        jq({"id": "country", "operator": "in", "value": ["DE", "FR"]},
           rq({"field": "dst_number", "operator": "beginsWith", "value": "49"},
              {"field": "billsec", "operator": ">=", "value": 60}, combinator="AND"),
           condition="OR", **{"not": True}),
        jq(),
        jq(**{"not": True}),
        {"id": "customer_charge", "operator": "is_null", "value": None},
    )
    assert compile_rules(tree, OPERATOR, param_prefix="r") == Predicate(
        "(duration > {r0:UInt32} AND NOT (country IN ({r1:String}, {r2:String}) OR "
        "(startsWith(dst_number, {r3:String}) AND billsec >= {r4:UInt32})) AND 1 AND 0 AND "
        "customer_charge IS NULL)",
        {"r0": 0, "r1": "DE", "r2": "FR", "r3": "49", "r4": 60})


def test_values_never_become_sql_text() -> None:
    evil = "x'); DROP TABLE cdr_records; --{p1:String}"
    pred = compile_rules(rq({"field": "dst_number", "operator": "=", "value": evil},
                            {"field": "codec", "operator": "in", "value": [evil, "g729"]}),
                         OPERATOR)
    assert pred == Predicate(
        "(dst_number = {p0:String} AND codec IN ({p1:String}, {p2:String}))",
        {"p0": evil, "p1": evil, "p2": "g729"})


def test_decimals_are_exact_and_datetimes_keep_milliseconds() -> None:
    pred = compile_rules(jq(
        {"id": "customer_charge", "operator": "equal", "value": "999999999999.999999"},
        {"id": "carrier_cost", "operator": "equal", "value": -0.000001},
        {"id": "customer_rate", "operator": "equal", "value": "1E-6"},
        {"id": "start_time", "operator": "equal", "value": "2026-03-29T01:59:59.999+01:00"},
        {"id": "end_time", "operator": "equal", "value": "2026-01-01 00:00:00.5"},
    ), OPERATOR, tz="America/New_York")
    assert list(pred.params.values()) == [
        Decimal("999999999999.999999"), Decimal("-0.000001"), Decimal("0.000001"),
        "2026-03-29 00:59:59.999", "2026-01-01 05:00:00.500"]


def test_field_visibility_follows_the_role() -> None:
    rule = {"field": "carrier_id", "operator": "=", "value": 10}
    assert compile_rules(rq(rule), CARRIER).sql == "(carrier_id = {p0:UInt32})"
    with pytest.raises(BuilderError) as err:
        compile_rules(rq(rule), CUSTOMER)
    assert str(err.value) == "rules[0]: field 'carrier_id' is not visible to a customer user"
    admin_only = {"field": "tenant_id", "operator": "=", "value": "acme"}
    assert compile_rules(rq(admin_only), Principal.admin()).sql == "(tenant_id = {p0:String})"
    with pytest.raises(BuilderError, match="^rules\\[0\\]: field 'tenant_id' is not visible "
                                           "to a tenant operator$"):
        compile_rules(rq(admin_only), OPERATOR)


def _deep(levels: int) -> dict:
    tree: dict = jq({"id": "duration", "operator": "equal", "value": 1})
    for _ in range(levels - 1):
        tree = jq(tree)
    return tree


ERROR_CASES = [
    (jq({"id": "colour", "operator": "equal", "value": "red"}),
     "rules[0]: unknown field 'colour'"),
    (jq({"id": "duration", "operator": "equal", "value": 1},
        {"id": "carrier_cost", "operator": "equal", "value": 1}),
     "rules[1]: field 'carrier_cost' is not visible to a customer user"),
    (jq(jq(), jq(), jq(jq({"id": "duration", "operator": "between", "value": [1]}))),
     "rules[2].rules[0].rules[0]: operator 'between' needs two values"),
    (rq({"field": "duration", "operator": "between", "value": "1,2,3"}),
     "rules[0]: operator 'between' needs two values"),
    (jq(jq(), jq(), jq(), {"id": "duration", "operator": "contains", "value": "1"}),
     "rules[3]: operator 'contains' does not apply to field duration (int)"),
    (rq({"field": "disposition", "operator": ">", "value": "BUSY"}),
     "rules[0]: operator '>' does not apply to field disposition (enum)"),
    (rq({"field": "duration", "operator": "isEmpty"}),
     "rules[0]: unknown operator 'isEmpty'; use one of: =, !=, in, notIn, <, <=, >, >=, "
     "between, notBetween, beginsWith, doesNotBeginWith, contains, doesNotContain, endsWith, "
     "doesNotEndWith, null, notNull"),
    (jq({"id": "duration", "operator": "is_empty"}),
     "rules[0]: operator 'is_empty' does not apply to field duration (int)"),
    (jq({"id": "sip_code", "operator": "equal", "value": 70000}),
     "rules[0]: sip_code value 70000 is out of range (0..65535)"),
    (jq({"id": "duration", "operator": "equal", "value": -1}),
     "rules[0]: duration value -1 is out of range (0..4294967295)"),
    (jq({"id": "duration", "operator": "equal", "value": "1.5"}),
     "rules[0]: duration expects a whole number, got '1.5'"),
    (jq({"id": "duration", "operator": "equal", "value": True}),
     "rules[0]: duration expects a whole number, got True"),
    (jq({"id": "duration", "operator": "equal", "value": [1]}),
     "rules[0]: operator 'equal' needs one value, got a list"),
    (jq({"id": "duration", "operator": "equal", "value": None}),
     "rules[0]: operator 'equal' needs a value"),
    (jq({"id": "customer_charge", "operator": "equal", "value": "0.0000001"}),
     "rules[0]: customer_charge value '0.0000001' has more than 6 decimal places"),
    (jq({"id": "customer_charge", "operator": "equal", "value": "1000000000000"}),
     "rules[0]: customer_charge value '1000000000000' is out of range "
     "(at most 12 digits before the point)"),
    (jq({"id": "customer_charge", "operator": "equal", "value": "NaN"}),
     "rules[0]: customer_charge expects a decimal number, got 'NaN'"),
    (jq({"id": "disposition", "operator": "in", "value": ["ANSWERED", "answered"]}),
     "rules[0]: disposition expects one of 'ANSWERED', 'NO ANSWER', 'BUSY', 'FAILED', "
     "'CONGESTION', got 'answered'"),
    (jq({"id": "src_ip", "operator": "equal", "value": "10.0.0.256"}),
     "rules[0]: src_ip expects an IP address, got '10.0.0.256'"),
    (jq({"id": "start_time", "operator": "equal", "value": "yesterday"}),
     "rules[0]: start_time expects an ISO 8601 date-time such as "
     "'2026-03-29T10:00:00+02:00', got 'yesterday'"),
    (jq({"id": "start_time", "operator": "equal", "value": "2026-03-29T02:30:00"}),
     "rules[0]: start_time 2026-03-29 02:30:00 does not exist in Europe/Berlin "
     "(the clocks skip it); give a UTC offset"),
    (jq({"id": "start_time", "operator": "equal", "value": "2026-03-29T10:00:00.0005Z"}),
     "rules[0]: start_time '2026-03-29T10:00:00.0005Z' is finer than a millisecond; "
     "the store keeps milliseconds"),
    (jq({"id": "start_time", "operator": "greater", "value": "1899-12-31T23:59:59Z"}),
     "rules[0]: start_time '1899-12-31T23:59:59Z' is outside the years 1900-2299"),
    (jq({"id": "duration", "operator": "between", "value": [20, 10]}),
     "rules[0]: operator 'between' needs the lower value first (got 20 then 10)"),
    (jq({"id": "dst_number", "operator": "contains", "value": ""}),
     "rules[0]: operator 'contains' needs a non-empty value"),
    (rq({"field": "country", "operator": "in", "value": "DE,,FR"}),
     "rules[0]: operator 'in': empty item in 'DE,,FR'"),
    (rq({"field": "country", "operator": "in", "value": []}),
     "rules[0]: operator 'in' needs at least one value"),
    (rq({"field": "duration", "operator": "<", "value": "src_number", "valueSource": "field"}),
     "rules[0]: cannot compare duration (int) with field src_number (string)"),
    (rq({"field": "direction", "operator": "=", "value": "disposition",
         "valueSource": "field"}),
     "rules[0]: cannot compare direction (enum) with field disposition (enum)"),
    (rq({"field": "billsec", "operator": "<", "value": "carrier_cost",
         "valueSource": "field"}),
     "rules[0]: value field 'carrier_cost' is not visible to a customer user"),
    (rq({"field": "billsec", "operator": "<", "value": "x", "valueSource": "column"}),
     "rules[0]: valueSource must be 'value' or 'field', got 'column'"),
    (rq({"field": "billsec", "operator": "<", "value": 1}, "and",
        {"field": "billsec", "operator": ">", "value": 0}),
     "rules[1]: expected a rule or a group object, got 'and'"),
    ({"rules": []},
     "query: a group needs 'condition' (jQuery QueryBuilder) or 'combinator' "
     "(react-querybuilder)"),
    (rq(combinator="xor"), "query: combinator must be AND or OR, got 'xor'"),
    (jq(jq(**{"not": "yes"})), "rules[0]: 'not' must be true or false, got 'yes'"),
    ([], "query: expected a group object, got []"),
    (_deep(8), None),
    (_deep(9), "rules[0].rules[0].rules[0].rules[0].rules[0].rules[0].rules[0].rules[0]: "
               "groups nest at most 8 deep"),
    (jq(*[{"id": "duration", "operator": "equal", "value": i} for i in range(200)]), None),
    (jq(*[{"id": "duration", "operator": "equal", "value": i} for i in range(201)]),
     "rules[200]: the query has more than 200 rules and groups; simplify it"),
    (jq({"id": "duration", "operator": "in", "value": list(range(1001))}),
     "rules[0]: operator 'in' takes at most 1000 values"),
]


@pytest.mark.parametrize("tree, message", ERROR_CASES)
def test_errors_name_the_place_and_the_problem(tree: Any, message: str | None) -> None:
    if message is None:
        compile_rules(tree, CUSTOMER, tz="Europe/Berlin")
        return
    with pytest.raises(BuilderError) as err:
        compile_rules(tree, CUSTOMER, tz="Europe/Berlin")
    assert str(err.value) == message
    # the place on its own, for a visual builder to show the message at that rule
    path, _, reason = message.partition(": ")
    assert (err.value.path, err.value.reason) == (path, reason)


def test_unknown_display_zone_is_refused() -> None:
    with pytest.raises(BuilderError) as err:
        compile_rules(jq(), OPERATOR, tz="Mars/Olympus")
    assert str(err.value) == ("query: unknown time zone 'Mars/Olympus': use an IANA name such "
                              "as 'Europe/Berlin' or 'UTC'")


def test_operator_table_is_complete_and_consistent() -> None:
    by_kind = {f.name: [op.key for op in operators.operators_for(f)]
               for f in catalogue.FIELDS if f.name in ("duration", "customer_charge", "src_ip",
                                                       "disposition", "start_time", "country")}
    assert by_kind == {
        "start_time": ["equal", "not_equal", "in", "not_in", "less", "less_or_equal",
                       "greater", "greater_or_equal", "between", "not_between", "is_null",
                       "is_not_null"],
        "duration": ["equal", "not_equal", "in", "not_in", "less", "less_or_equal", "greater",
                     "greater_or_equal", "between", "not_between", "is_null", "is_not_null"],
        "disposition": ["equal", "not_equal", "in", "not_in", "is_null", "is_not_null"],
        "country": ["equal", "not_equal", "in", "not_in", "begins_with", "not_begins_with",
                    "contains", "not_contains", "ends_with", "not_ends_with", "is_empty",
                    "is_not_empty", "is_null", "is_not_null"],
        "src_ip": ["equal", "not_equal", "in", "not_in", "begins_with", "not_begins_with",
                   "contains", "not_contains", "ends_with", "not_ends_with", "is_empty",
                   "is_not_empty", "is_null", "is_not_null"],
        "customer_charge": ["equal", "not_equal", "in", "not_in", "less", "less_or_equal",
                            "greater", "greater_or_equal", "between", "not_between",
                            "is_empty", "is_not_empty", "is_null", "is_not_null"],
    }
    for op in operators.OPERATORS:
        assert op.description and op.label
        assert operators.lookup(op.key) is op
        if op.rqb:
            assert operators.lookup(op.rqb) is op


# -- 2. semantics on ClickHouse, known data ----------------------------------------

COLUMNS = ("tenant_id", "call_id", "start_time", "answer_time", "end_time", "duration",
           "billsec", "customer_id", "carrier_id", "direction", "disposition", "src_number",
           "dst_number", "dst_prefix", "country", "release_reason", "sip_code", "sip_reason",
           "pdd_ms", "src_ip", "dst_ip", "codec", "customer_rate", "customer_charge",
           "carrier_rate", "carrier_cost", "currency", "recording_url", "version")


def _ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def cdr(call_id: str, *, start: str, answer: str | None = None, duration: int = 0,
        billsec: int = 0, disposition: str = "NO ANSWER", src: str = "", dst: str = "",
        prefix: str = "", country: str = "", sip: int = 0, src_ip: str = "",
        dst_ip: str = "", rate: str | None = None, charge: str | None = None,
        cost: str | None = None, direction: str = "outbound", customer: int = 1,
        carrier: int = 10, tenant: str = "acme") -> dict[str, Any]:
    """One row of cdr_records (naive datetimes are UTC)."""
    start_dt = datetime.fromisoformat(start)
    return {
        "tenant_id": tenant, "call_id": call_id, "start_time": start_dt,
        "answer_time": _ts(answer), "end_time": start_dt + timedelta(seconds=min(duration, 10**6)),
        "duration": duration, "billsec": billsec, "customer_id": customer,
        "carrier_id": carrier, "direction": direction, "disposition": disposition,
        "src_number": src, "dst_number": dst, "dst_prefix": prefix, "country": country,
        "release_reason": "", "sip_code": sip, "sip_reason": "", "pdd_ms": 0, "src_ip": src_ip,
        "dst_ip": dst_ip, "codec": "", "customer_rate": _dec(rate),
        "customer_charge": _dec(charge), "carrier_rate": None, "carrier_cost": _dec(cost),
        "currency": "USD", "recording_url": "", "version": 1,
    }


# Berlin: 2026-03-29 clocks go 02:00 CET -> 03:00 CEST (01:00 UTC);
#         2026-10-25 clocks go 03:00 CEST -> 02:00 CET (01:00 UTC).
KNOWN = [
    cdr("k01", start="2026-03-28 22:59:59.999", src="442079460000", dst="4915112345678",
        prefix="4915", country="DE", sip=487, src_ip="10.0.0.1"),
    cdr("k02", start="2026-03-28 23:00:00.000", answer="2026-03-28 23:00:02", duration=10,
        billsec=8, disposition="ANSWERED", src="442079461234", dst="%_50", prefix="44",
        country="GB", sip=200, src_ip="2001:db8::1", dst_ip="192.168.1.1", rate="0.01",
        charge="0.1", cost="0.05"),
    cdr("k03", start="2026-03-29 00:59:59.999", answer="2026-03-29 01:00:00", duration=20,
        billsec=20, disposition="ANSWERED", dst="5551234", prefix="555", sip=200,
        dst_ip="10.0.0.1", charge="0", direction="inbound"),
    cdr("k04", start="2026-03-29 01:00:00.000", duration=21, disposition="BUSY", src="12555",
        dst="12345", prefix="1", country="US", sip=486, src_ip="2001:DB8:0:0::1",
        dst_ip="::ffff:10.0.0.1", cost="0", direction="internal"),
    cdr("k05", start="2026-10-25 00:30:00.000", answer="2026-10-25 00:30:05.500", duration=9,
        billsec=9, disposition="ANSWERED", src="4420*", dst="a_c", prefix="44", country="GB",
        sip=200, src_ip="10.0.0.3", dst_ip="10.0.0.1", rate="0.1", charge="1.5",
        cost="-0.000001"),
    cdr("k06", start="2026-10-25 01:30:00.000", duration=4294967295, disposition="FAILED",
        src="+44 20", dst="abc%def", country="FR", sip=699, src_ip="garbage",
        charge="999999999999.999999", cost="0.2"),
    cdr("k07", start="2026-10-24 22:00:00.000", answer="2026-10-24 22:00:00", duration=1,
        billsec=1, disposition="CONGESTION", src="555", dst="555", prefix="555", country="DE",
        sip=503, rate="0.1", charge="0.1", cost="0.1", direction="inbound"),
    cdr("k08", start="2026-03-29 12:00:00.000", answer="2026-03-29 12:00:01", duration=60,
        billsec=59, disposition="ANSWERED", src="442079460000", dst="442079460000",
        prefix="44", country="GB", sip=200, src_ip="10.0.0.2", rate="0.1", charge="0.2",
        cost="0.1", customer=2),
    # another tenant, matching most rules: never returned to acme's operator
    cdr("z01", start="2026-03-28 23:00:00.000", answer="2026-03-28 23:00:02", duration=10,
        billsec=8, disposition="ANSWERED", src="442079461234", dst="%_50", prefix="44",
        country="GB", sip=200, src_ip="2001:db8::1", dst_ip="192.168.1.1", rate="0.01",
        charge="0.1", cost="0.05", tenant="zeta"),
]
ALL = {f"k0{i}" for i in range(1, 9)}


def insert(db: Database, rows: list[dict[str, Any]]) -> None:
    db.insert_rows("cdr_records", [[r[c] for c in COLUMNS] for r in rows], COLUMNS)


@pytest.fixture(scope="module")
def known_db(embedded_dsn: str, engine_dir) -> Iterator[Database]:
    """One embedded database for the module: the known rows plus the random property rows."""
    db = Database(StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn,
                              database=f"t_{uuid.uuid4().hex[:12]}"))
    migrate(db)
    insert(db, KNOWN + PROPERTY_ROWS)
    try:
        yield db
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{db.name}` SYNC")
        db.close()


def matching(db: Database, tree: dict, principal: Principal = OPERATOR,
             tz: str = "UTC") -> set[str]:
    pred = compile_rules(tree, principal, tz=tz)
    guard, params = principal.guard()
    rows = db.rows(f"SELECT call_id FROM cdr_records FINAL WHERE ({guard}) AND {pred.sql}",
                   {**params, **pred.params})
    return {r[0] for r in rows}


# (field, jQuery operator, value, display tz, expected call ids)
SEMANTICS = [
    ("duration", "equal", 10, "UTC", {"k02"}),
    ("customer_charge", "equal", "0.1", "UTC", {"k02", "k07"}),
    ("customer_charge", "equal", "0", "UTC", {"k03"}),
    ("start_time", "equal", "2026-03-29T00:00:00+01:00", "UTC", {"k02"}),
    ("start_time", "equal", "2026-10-25T02:30:00", "Europe/Berlin", {"k05"}),
    ("start_time", "equal", "2026-10-25T02:30:00+01:00", "Europe/Berlin", {"k06"}),
    ("disposition", "equal", "ANSWERED", "UTC", {"k02", "k03", "k05", "k08"}),
    ("src_ip", "equal", "2001:0db8::0001", "UTC", {"k02", "k04"}),
    ("dst_ip", "equal", "10.0.0.1", "UTC", {"k03", "k04", "k05"}),
    ("src_number", "equal", "", "UTC", {"k03"}),
    ("customer_charge", "not_equal", "0.1", "UTC", {"k03", "k05", "k06", "k08"}),
    ("country", "not_equal", "", "UTC", ALL - {"k03"}),
    ("src_ip", "not_equal", "10.0.0.1", "UTC", {"k02", "k04", "k05", "k08"}),
    ("answer_time", "not_equal", "2026-03-29 01:00:00", "UTC", {"k02", "k05", "k07", "k08"}),
    ("sip_code", "in", [486, 487], "UTC", {"k01", "k04"}),
    ("disposition", "in", ["BUSY", "FAILED"], "UTC", {"k04", "k06"}),
    ("customer_charge", "in", ["0", "1.5"], "UTC", {"k03", "k05"}),
    ("disposition", "not_in", ["ANSWERED", "NO ANSWER"], "UTC", {"k04", "k06", "k07"}),
    ("carrier_cost", "not_in", ["0.1", "0.05"], "UTC", {"k04", "k05", "k06"}),
    ("dst_ip", "not_in", ["10.0.0.1"], "UTC", {"k02"}),
    ("duration", "less", 10, "UTC", {"k01", "k05", "k07"}),
    ("customer_charge", "less", "0.1", "UTC", {"k03"}),
    ("start_time", "less", "2026-03-29", "Europe/Berlin", {"k01"}),
    ("billsec", "less_or_equal", 0, "UTC", {"k01", "k04", "k06"}),
    ("carrier_cost", "less_or_equal", "0", "UTC", {"k04", "k05"}),
    ("duration", "greater", 21, "UTC", {"k06", "k08"}),
    ("answer_time", "greater", "2026-10-25T00:30:05.499Z", "UTC", {"k05"}),
    ("start_time", "greater_or_equal", "2026-10-25T02:30:00", "Europe/Berlin", {"k05", "k06"}),
    ("customer_charge", "greater_or_equal", "999999999999.999999", "UTC", {"k06"}),
    ("duration", "between", [9, 20], "UTC", {"k02", "k03", "k05"}),
    ("start_time", "between", ["2026-03-29T00:00:00+01:00", "2026-03-29T01:59:59.999+01:00"],
     "UTC", {"k02", "k03"}),
    ("start_time", "between", ["2026-03-29T00:00:00", "2026-03-29T03:00:00"],
     "Europe/Berlin", {"k02", "k03", "k04"}),
    ("customer_charge", "between", ["0", "0.1"], "UTC", {"k02", "k03", "k07"}),
    ("duration", "not_between", [1, 20], "UTC", {"k01", "k04", "k06", "k08"}),
    ("customer_charge", "not_between", ["0.1", "1"], "UTC", {"k03", "k05", "k06"}),
    ("src_number", "begins_with", "4420", "UTC", {"k01", "k02", "k05", "k08"}),
    ("dst_number", "begins_with", "%_", "UTC", {"k02"}),
    ("src_ip", "begins_with", "10.0.", "UTC", {"k01", "k05", "k08"}),
    ("src_number", "not_begins_with", "4420", "UTC", {"k03", "k04", "k06", "k07"}),
    ("dst_number", "contains", "%", "UTC", {"k02", "k06"}),
    ("dst_number", "contains", "_", "UTC", {"k02", "k05"}),
    ("src_number", "contains", "*", "UTC", {"k05"}),
    ("dst_number", "contains", "555", "UTC", {"k03", "k07"}),
    ("dst_number", "not_contains", "5", "UTC", {"k05", "k06", "k08"}),
    ("dst_number", "ends_with", "345", "UTC", {"k04"}),
    ("src_number", "ends_with", "1234", "UTC", {"k02"}),
    ("src_number", "not_ends_with", "0000", "UTC", {"k02", "k03", "k04", "k05", "k06", "k07"}),
    ("country", "is_empty", None, "UTC", {"k03"}),
    ("src_ip", "is_empty", None, "UTC", {"k03", "k07"}),
    ("customer_charge", "is_empty", None, "UTC", {"k01", "k04"}),
    ("answer_time", "is_empty", None, "UTC", {"k01", "k04", "k06"}),
    ("dst_ip", "is_not_empty", None, "UTC", {"k02", "k03", "k04", "k05"}),
    ("carrier_cost", "is_not_empty", None, "UTC", {"k02", "k04", "k05", "k06", "k07", "k08"}),
    ("customer_rate", "is_null", None, "UTC", {"k01", "k03", "k04", "k06"}),
    ("duration", "is_null", None, "UTC", set()),
    ("src_number", "is_null", None, "UTC", set()),
    ("answer_time", "is_not_null", None, "UTC", {"k02", "k03", "k05", "k07", "k08"}),
    ("country", "is_not_null", None, "UTC", ALL),
]


@pytest.mark.parametrize("dialect", ["jquery", "rqb"])
@pytest.mark.parametrize("field, op, value, tz, expected", SEMANTICS,
                         ids=[f"{s[1]}-{s[0]}-{i}" for i, s in enumerate(SEMANTICS)])
def test_operator_semantics_on_clickhouse(known_db: Database, dialect: str, field: str,
                                          op: str, value: Any, tz: str,
                                          expected: set[str]) -> None:
    if dialect == "jquery":
        tree = jq({"id": field, "operator": op, "value": value})
    else:
        key = operators.lookup(op).rqb or op   # is_empty has no rqb name: its own is accepted
        rqb_value = ",".join(str(v) for v in value) if isinstance(value, list) else value
        tree = rq({"field": field, "operator": key, "value": "" if value is None else rqb_value})
    assert matching(known_db, tree, tz=tz) == expected


FIELD_SEMANTICS = [
    ("billsec", "<", "duration", {"k02", "k04", "k06", "k08"}),
    ("billsec", "=", "duration", {"k01", "k03", "k05", "k07"}),
    ("src_number", "=", "dst_number", {"k07", "k08"}),
    ("customer_charge", ">", "carrier_cost", {"k02", "k05", "k06", "k08"}),
    ("customer_charge", "!=", "carrier_cost", {"k02", "k05", "k06", "k08"}),
    ("dst_number", "beginsWith", "dst_prefix", {"k01", "k03", "k04", "k06", "k07", "k08"}),
    ("duration", "between", "billsec,sip_code", ALL - {"k06"}),
    ("duration", "in", ["billsec", "pdd_ms"], {"k01", "k03", "k05", "k07"}),
    ("dst_ip", "in", ["src_ip"], set()),
    ("src_ip", "notIn", ["dst_ip"], {"k02", "k04", "k05"}),
]


@pytest.mark.parametrize("field, op, other, expected", FIELD_SEMANTICS)
def test_field_comparison_semantics(known_db: Database, field: str, op: str, other: Any,
                                    expected: set[str]) -> None:
    tree = rq({"field": field, "operator": op, "value": other, "valueSource": "field"})
    assert matching(known_db, tree) == expected


def test_negated_group_is_the_exact_complement(known_db: Database) -> None:
    rule = {"id": "customer_charge", "operator": "not_equal", "value": "0.1"}
    inside = matching(known_db, jq(rule))
    outside = matching(known_db, jq(jq(rule, **{"not": True})))
    assert inside == {"k03", "k05", "k06", "k08"}
    assert outside == {"k01", "k02", "k04", "k07"}      # the NULL charges k01, k04 included


def test_nested_and_or_on_clickhouse(known_db: Database) -> None:
    tree = rq(
        {"field": "disposition", "operator": "=", "value": "ANSWERED"},
        rq({"field": "country", "operator": "=", "value": "GB"},
           {"field": "duration", "operator": "between", "value": "15,25"}, combinator="or"),
        rq({"field": "customer_id", "operator": "=", "value": "2"}, **{"not": True}),
    )
    assert matching(known_db, tree) == {"k02", "k03", "k05"}
    assert matching(known_db, rq()) == ALL
    assert matching(known_db, rq(**{"not": True})) == set()


def test_customer_guard_still_applies(known_db: Database) -> None:
    tree = rq({"field": "country", "operator": "=", "value": "GB"})
    assert matching(known_db, tree) == {"k02", "k05", "k08"}
    assert matching(known_db, tree, Principal.customer("acme", 2)) == {"k08"}
    assert matching(known_db, tree, Principal.operator("zeta")) == {"z01"}


# -- 3. property: ClickHouse agrees with a plain Python evaluation ------------------

_INSTANTS = [datetime(2026, 3, 28, 22, 59, 59, 999000, UTC), datetime(2026, 3, 28, 23, 0, tzinfo=UTC),
             datetime(2026, 3, 29, 0, 59, 59, 999000, UTC), datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
             datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
             datetime(2026, 10, 24, 22, 0, tzinfo=UTC), datetime(2026, 9, 6, 4, 0, tzinfo=UTC),
             datetime(2026, 1, 1, 0, 0, 0, 1000, UTC)]
_NUMBERS = ["", "442079460000", "4420", "%_50", "a_c", "555", "5551234", "12345", "abc%def",
            "4915112345678"]
_TEXTS = {"dst_prefix": ["", "44", "4420", "555", "1"], "country": ["", "DE", "GB", "US"],
          "release_reason": ["", "NORMAL_CLEARING", "USER_BUSY"], "codec": ["", "PCMA", "G729"],
          "sip_reason": ["", "OK", "Busy Here"], "currency": ["USD", "EUR"],
          "recording_url": ["", "s3://r/1.wav"], "call_id": [], "src_number": _NUMBERS,
          "dst_number": _NUMBERS}
_IPS = ["", "10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1", "2001:DB8:0:0::1", "garbage",
        "192.168.1.1", "10.0.0.10"]
_MONEY = [None, Decimal("0"), Decimal("0.1"), Decimal("0.100001"), Decimal("-0.000001"),
          Decimal("1.5"), Decimal("999999999999.999999")]
_INTS = {"duration": [0, 1, 9, 10, 20, 60, 4294967295], "billsec": [0, 1, 8, 9, 10, 20, 60],
         "customer_id": [1, 2, 3], "carrier_id": [10, 11], "sip_code": [0, 200, 486, 487, 699],
         "pdd_ms": [0, 10, 250]}
PROPERTY_ZONES = ["UTC", "Europe/Berlin", "America/Santiago", "Asia/Kolkata"]


def _property_rows(n: int = 200, seed: int = 20260329) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        row = {"tenant_id": "prop", "call_id": f"p{i:03d}", "version": 1,
               "start_time": rnd.choice(_INSTANTS),
               "answer_time": rnd.choice([None, *_INSTANTS]),
               "end_time": rnd.choice(_INSTANTS),
               "direction": rnd.choice(catalogue.DIRECTIONS),
               "disposition": rnd.choice(catalogue.DISPOSITIONS),
               "src_ip": rnd.choice(_IPS), "dst_ip": rnd.choice(_IPS)}
        for name, pool in _INTS.items():
            row[name] = rnd.choice(pool)
        for name, pool in _TEXTS.items():
            if pool:
                row[name] = rnd.choice(pool)
        for name in ("customer_rate", "customer_charge", "carrier_rate", "carrier_cost"):
            row[name] = rnd.choice(_MONEY)
        for name in ("start_time", "answer_time", "end_time"):
            if row[name] is not None:
                row[name] = row[name].replace(tzinfo=None)     # naive = UTC for the insert
        rows.append(row)
    return rows


PROPERTY_ROWS = _property_rows()
PROPERTY_FIELDS = [f for f in catalogue.FIELDS if f.name != "tenant_id"]


def _values_for(f: catalogue.Field, target: str) -> list[Any]:
    """Typed candidate values for rules on `f` (what Python compares with)."""
    if target == "text":
        pool = _IPS if f.kind == "ip" else _TEXTS.get(f.name) or ["p00", "p1"]
        parts = {s[i:j] for s in pool for i in range(len(s)) for j in range(i + 1, len(s) + 1)}
        # LIKE's wildcards, often: they must stay literal
        return sorted(p for p in parts if len(p) <= 4) + ["%", "_", "%_", "_5"] * 3
    if f.kind == "int":
        return _INTS[f.name] + [5, 21]
    if f.kind == "decimal":
        return [m for m in _MONEY if m is not None] + [Decimal("0.05"), Decimal("-1")]
    if f.kind == "datetime":
        return _INSTANTS + [datetime(2026, 3, 29, 0, 30, tzinfo=UTC)]
    if f.kind == "enum":
        return list(f.enum_values)
    if f.kind == "ip":
        return ["10.0.0.1", "2001:db8::1", "192.168.1.1", "::ffff:10.0.0.10", "10.0.0.2"]
    return _TEXTS.get(f.name) or [f"p{i:03d}" for i in range(0, 200, 17)]


def _render(f: catalogue.Field, value: Any, draw: Any, tz: str) -> Any:
    """A typed value as a builder would send it (several equivalent spellings)."""
    if isinstance(value, datetime):
        z = ZoneInfo(tz)
        local = value.astimezone(z)
        naive = local.replace(tzinfo=None)
        unambiguous = naive.replace(tzinfo=z, fold=0).astimezone(UTC) == value
        forms = [value.isoformat().replace("+00:00", "Z"), local.isoformat()]
        if unambiguous:
            forms.append(naive.isoformat(sep=" ", timespec="milliseconds"))
        return draw(st.sampled_from(forms))
    if isinstance(value, Decimal):
        return draw(st.sampled_from([str(value), format(value, "f")]))
    if isinstance(value, int) and f.kind == "int":
        return draw(st.sampled_from([value, str(value)]))
    return value


@st.composite
def rule_trees(draw: Any, tz: str, depth: int = 0) -> tuple[dict, dict]:
    """(tree as sent, the same tree with typed values for the Python evaluator)."""
    dialect = draw(st.sampled_from(["jquery", "rqb"]))
    negate = draw(st.booleans())
    sent_rules, typed_rules = [], []
    for _ in range(draw(st.integers(1 if depth == 0 else 0, 3 if depth < 2 else 2))):
        if depth < 2 and draw(st.integers(0, 4)) == 0:
            sent, typed = draw(rule_trees(tz, depth + 1))
        else:
            sent, typed = draw(rules(tz, dialect))
        sent_rules.append(sent)
        typed_rules.append(typed)
    comb = draw(st.sampled_from(["AND", "OR"]))
    head = ({"condition": comb} if dialect == "jquery" else {"combinator": comb.lower()})
    sent = {**head, "rules": sent_rules, "not": negate}
    return sent, {"comb": comb, "not": negate, "rules": typed_rules}


@st.composite
def rules(draw: Any, tz: str, dialect: str) -> tuple[dict, dict]:
    op = draw(st.sampled_from(operators.OPERATORS))      # operator first: all equally likely
    f = draw(st.sampled_from([g for g in PROPERTY_FIELDS if op.applies_to(g)]))
    key = op.key if dialect == "jquery" or not op.rqb else op.rqb
    sent: dict[str, Any] = {"field": f.name, "operator": key}
    typed: dict[str, Any] = {"field": f.name, "op": op.key}
    if op.arity == 0:
        return sent, typed
    n = {1: 1, 2: 2}.get(op.arity) or draw(st.integers(1, 4))   # type: ignore[call-overload]
    peers = [g for g in PROPERTY_FIELDS
             if g.kind == f.kind and (f.kind != "enum" or g.ch_type == f.ch_type)]
    if draw(st.integers(0, 5)) == 0:
        others = [draw(st.sampled_from(peers)).name for _ in range(n)]
        sent.update(value=others if n != 1 else others[0], valueSource="field")
        typed.update(fields=others)
        return sent, typed
    values = [draw(st.sampled_from(_values_for(f, op.target))) for _ in range(n)]
    if op.arity == 2:
        values.sort()
    rendered = [_render(f, v, draw, tz) for v in values]
    if op.arity == 1:
        sent["value"] = rendered[0]
    elif dialect == "rqb" and all(isinstance(r, (str, int)) and str(r).strip() == str(r)
                                  and "," not in str(r) and str(r) for r in rendered) \
            and draw(st.booleans()):
        sent["value"] = ",".join(str(r) for r in rendered)
    else:
        sent["value"] = rendered
    typed["values"] = values
    return sent, typed


def _addr(text: Any) -> ipaddress.IPv6Address | None:
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a


def _cell(row: dict[str, Any], name: str, target: str) -> Any:
    f = catalogue.BY_NAME[name]
    v = row[name]
    if f.kind == "ip" and target == "value":
        return _addr(v)
    if isinstance(v, datetime):
        return v.replace(tzinfo=UTC)
    return v


def py_rule(rule: dict, row: dict[str, Any]) -> bool:
    """The documented semantics, evaluated in Python on one row."""
    f = catalogue.BY_NAME[rule["field"]]
    op = operators.lookup(rule["op"])
    raw = row[f.name]
    if op.key == "is_null":
        return raw is None
    if op.key == "is_not_null":
        return raw is not None
    if op.key in ("is_empty", "is_not_empty"):
        empty = raw is None if f.nullable else raw == ""
        return empty if op.key == "is_empty" else not empty
    a = _cell(row, f.name, op.target)
    if "fields" in rule:
        bs = [_cell(row, g, op.target) for g in rule["fields"]]
    else:
        bs = [_addr(v) if f.kind == "ip" and op.target == "value" else v
              for v in rule["values"]]
    if a is None or any(b is None for b in bs):
        return False                         # a missing value never matches a comparison
    k = op.key
    if k == "equal":
        return a == bs[0]
    if k == "not_equal":
        return a != bs[0]
    if k in ("in", "not_in"):
        return (a in bs) == (k == "in")
    if k in ("less", "less_or_equal", "greater", "greater_or_equal"):
        return {"less": a < bs[0], "less_or_equal": a <= bs[0], "greater": a > bs[0],
                "greater_or_equal": a >= bs[0]}[k]
    if k in ("between", "not_between"):
        return (bs[0] <= a <= bs[1]) == (k == "between")
    if k.endswith("begins_with"):
        return a.startswith(bs[0]) != k.startswith("not_")
    if k.endswith("contains"):
        return (bs[0] in a) != k.startswith("not_")
    if k.endswith("ends_with"):
        return a.endswith(bs[0]) != k.startswith("not_")
    raise AssertionError(k)


def py_group(group: dict, row: dict[str, Any]) -> bool:
    results = [py_group(r, row) if "comb" in r else py_rule(r, row) for r in group["rules"]]
    if not results:
        hit = True
    else:
        hit = all(results) if group["comb"] == "AND" else any(results)
    return not hit if group["not"] else hit


@st.composite
def cases(draw: Any) -> tuple[str, dict, dict]:
    tz = draw(st.sampled_from(PROPERTY_ZONES))
    sent, typed = draw(rule_trees(tz))
    return tz, sent, typed


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_clickhouse_agrees_with_python_on_random_trees(known_db: Database,
                                                       case: tuple[str, dict, dict]) -> None:
    tz, sent, typed = case
    expected = {r["call_id"] for r in PROPERTY_ROWS if py_group(typed, r)}
    assert matching(known_db, sent, Principal.operator("prop"), tz=tz) == expected


def test_property_rows_round_trip_unchanged(known_db: Database) -> None:
    """The Python evaluation is only meaningful if ClickHouse stored exactly these values."""
    names = [c for c in COLUMNS if c != "version"]
    stored = known_db.rows(f"SELECT {', '.join(names)} FROM cdr_records FINAL "
                           "WHERE tenant_id = 'prop' ORDER BY call_id")
    assert [dict(zip(names, r)) for r in stored] == [
        {c: r[c] for c in names} for r in sorted(PROPERTY_ROWS, key=lambda r: r["call_id"])]
