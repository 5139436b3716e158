"""sql/charts.py's choice of source and bucket, and the viewer URL's `archive` flag —
pure, no database: a table of view requests and what must answer them."""

from __future__ import annotations

import datetime as dt

import pytest

from cdrhouse.api.web.state import ViewState
from cdrhouse.sql.charts import bucket_starts, plan, rule_fields, series
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import ViewerError, ViewRequest

NOW = dt.datetime(2026, 11, 29, 10, 30, tzinfo=dt.timezone.utc)
OP = Principal.operator("acme")
CUST = Principal.customer("acme", 1)
COUNTRY = {"condition": "AND", "rules": [{"field": "country", "operator": "in",
                                          "value": ["DE"]}]}
BILLSEC = {"combinator": "and", "rules": [{"field": "billsec", "operator": ">", "value": 1}]}
NESTED = {"condition": "OR", "rules": [COUNTRY, {"condition": "AND", "not": True, "rules": [
    {"field": "customer_id", "operator": "equal", "value": 1}]}]}
CMP = {"combinator": "and", "rules": [{"field": "customer_id", "operator": "=",
                                       "valueSource": "field", "value": "sip_code"}]}

CASES = [
    # request, source, bucket, zone
    (dict(range="today", tz="UTC"), "cdrs", "hour", "UTC"),
    (dict(range="last_24h"), "cdrs", "hour", "UTC"),
    (dict(range="last_7_days", tz="UTC"), "daily_summary", "day", "UTC"),
    (dict(range="last_7_days", tz="Europe/Berlin"), "cdrs", "day", "Europe/Berlin"),
    (dict(range="this_month", tz="UTC"), "daily_summary", "day", "UTC"),
    (dict(range="all", tz="Asia/Kolkata"), "daily_summary", "day", "UTC"),
    (dict(range="custom", date_from="2026-10-01", date_to="2026-10-04"), "cdrs", "hour", "UTC"),
    (dict(range="custom", date_from="2026-10-01", date_to="2026-10-05"), "daily_summary", "day",
     "UTC"),
    (dict(range="custom", date_from="2026-10-01T06:00", date_to="2026-10-09"), "cdrs", "day",
     "UTC"),
    (dict(range="custom", date_from="2026-10-01"), "daily_summary", "day", "UTC"),
    (dict(range="all", number="4420*"), "cdrs", "day", "UTC"),
    (dict(range="all", rules=COUNTRY), "daily_summary", "day", "UTC"),
    (dict(range="all", rules=NESTED), "daily_summary", "day", "UTC"),
    (dict(range="all", rules=BILLSEC), "cdrs", "day", "UTC"),
    (dict(range="all", rules=CMP), "cdrs", "day", "UTC"),
    (dict(range="all", connected_only=True), "daily_summary", "day", "UTC"),
]


@pytest.mark.parametrize("req, source, bucket, zone", CASES)
def test_plan(req: dict, source: str, bucket: str, zone: str) -> None:
    p = plan(ViewRequest(**req), OP, NOW)
    assert (p.source, p.bucket, p.zone) == (source, bucket, zone), p.why


def test_plan_says_why_and_refuses_what_the_page_refuses() -> None:
    assert "billsec" in plan(ViewRequest(range="all", rules=BILLSEC), OP, NOW).why
    with pytest.raises(ViewerError, match="range"):
        plan(ViewRequest(range="soon"), OP, NOW)
    with pytest.raises(ViewerError, match=r"rules\[0\].*not visible"):  # a carrier field
        plan(ViewRequest(range="all", rules={"condition": "AND", "rules": [
            {"field": "carrier_id", "operator": "equal", "value": 3}]}), CUST, NOW)


def test_rule_fields_walks_groups_and_field_comparisons() -> None:
    assert rule_fields(NESTED) == {"country", "customer_id"}
    assert rule_fields(CMP) == {"customer_id", "sip_code"}
    assert rule_fields(None) == set()


def test_buckets_follow_the_zone_through_dst() -> None:
    # Berlin's switch to summer time: 2026-03-29 has 23 hours
    p = plan(ViewRequest(range="custom", date_from="2026-03-29", date_to="2026-03-30",
                         tz="Europe/Berlin"), OP, NOW)
    assert p.bucket == "hour" and len(bucket_starts(p, None, None, NOW)) == 23
    week = plan(ViewRequest(range="custom", date_from="2026-03-27", date_to="2026-04-02",
                            tz="Europe/Berlin"), OP, NOW)
    starts = bucket_starts(week, None, None, NOW)
    assert [dt.datetime.fromtimestamp(t, dt.timezone.utc).hour for t in starts] == \
        [23, 23, 23, 22, 22, 22]   # local midnights: CET until the 29th, then CEST
    # empty buckets are zeros; totals and ratios come from the rows
    body = series(week, [(starts[1], 4, 3, 120)], NOW)
    assert body["series"]["calls"] == [0, 4, 0, 0, 0, 0]
    assert body["series"]["asr"][1] == 0.75 and body["series"]["asr"][0] is None
    assert body["totals"] == {"calls": 4, "connected": 3, "billsec": 120, "minutes": 2.0,
                              "asr": 0.75, "acd": 40.0}


def test_archive_flag_round_trips_through_the_url_and_saved_views() -> None:
    class Q(dict):
        def getlist(self, k):  # noqa: ANN001, ANN201
            v = self.get(k)
            return [] if v is None else [v]

    s = ViewState.parse(Q(range="all", archive="1"))
    assert s.archive and ("archive", "1") in s.pairs()
    assert s.params("UTC", None).include_archive
    assert not ViewState.parse(Q(range="all")).params("UTC", None).include_archive
    kind, body = s.saved_body()
    assert body["include_archive"] is True and ViewState.from_saved(body).archive


@pytest.mark.parametrize("who", [Principal.admin(), OP, CUST, Principal.carrier("acme", 3)],
                         ids=str)
def test_every_operator_on_summary_keys_passes_the_sql_guard(who: Principal) -> None:
    """Rules the summary can answer ride in user SQL over `daily_summary`: whatever the
    builder writes for them must be SQL the guard accepts, or a valid filter would fail."""
    from cdrhouse.sql import catalogue
    from cdrhouse.sql.charts import SUMMARY_FIELDS, series_from_summary, top_from_summary
    from cdrhouse.sql.guard import compile_user_sql
    from cdrhouse.sql.operators import OPERATORS

    checked = 0
    for name in sorted(SUMMARY_FIELDS):
        f = catalogue.BY_NAME[name]
        if not f.visible_to(who.role):
            continue
        for op in OPERATORS:
            if not op.applies_to(f):
                continue
            one, two = ("1", ["1", "5"]) if f.kind == "int" else ("DE", ["A", "Z"])
            value = {0: None, 1: one, 2: two, "list": two}[op.arity]
            rule = {"field": name, "operator": op.key, **({} if value is None else
                                                          {"value": value})}
            req = ViewRequest(range="all", rules={"condition": "AND", "rules": [rule]})
            p = plan(req, who, NOW)
            assert p.source == "daily_summary", (name, op.key)
            for q in (series_from_summary(req, who, p, [("acme", 202603)]),
                      top_from_summary(req, who, p, "country", 5, [("acme", 202603)])):
                compile_user_sql(q.sql, who, q.parameters)
                checked += 1
    assert checked > 20
