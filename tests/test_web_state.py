"""The viewer's URL state (pure): parsing, canonical URLs, paging, sort cycling, saved views."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.datastructures import QueryParams

from cdrhouse.api.web.state import Filter, StateError, ViewState


def parse(query: str) -> ViewState:
    return ViewState.parse(QueryParams(query))


def params(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


@pytest.mark.parametrize("query, rules", [
    ("f=billsec:greater:30", [{"field": "billsec", "operator": "greater", "value": "30"}]),
    ("f=billsec:between:10,20", [{"field": "billsec", "operator": "between", "value": ["10", "20"]}]),
    ("f=disposition:in:BUSY,NO ANSWER",
     [{"field": "disposition", "operator": "in", "value": ["BUSY", "NO ANSWER"]}]),
    ("f=answer_time:is_null:", [{"field": "answer_time", "operator": "is_null"}]),
    # a value may hold colons (times)
    ("f=start_time:greater_or_equal:2026-03-29T01:30:00",
     [{"field": "start_time", "operator": "greater_or_equal", "value": "2026-03-29T01:30:00"}]),
])
def test_header_filters_become_builder_rules(query: str, rules: list) -> None:
    assert parse(query).rules() == {"condition": "AND", "rules": rules}


@pytest.mark.parametrize("query, message", [
    ("f=billsec", "f: 'billsec' is not field:operator:value"),
    ("f=:equal:1", "f: ':equal:1' is not field:operator:value"),
    ("q=[1,2]", "q: not a JSON query-builder tree"),
    ("q={oops", "q: not a JSON query-builder tree"),
])
def test_malformed_state_is_named(query: str, message: str) -> None:
    with pytest.raises(StateError, match=message.replace("[", r"\[")):
        parse(query).rules()


def test_round_trip_and_paging() -> None:
    s = parse("range=custom&from=2026-03-29T00:00&to=2026-03-30T00:00&tz=Europe/Berlin"
              "&connected=1&number=4420*&customer=C1&columns=call_id,billsec&sort=billsec"
              "&f=billsec:greater:3&c=AAA&c=BBB")
    assert parse(urlsplit(s.url(cursors=s.cursors)).query) == s
    p = s.params("Europe/Berlin", list(s.columns))
    assert (p.cursor, p.date_from, p.customer, p.connected_only) == ("BBB", "2026-03-29T00:00",
                                                                    "C1", True)
    assert params(s.next_page("CCC"))["c"] == ["AAA", "BBB", "CCC"]
    assert params(s.previous_page())["c"] == ["AAA"]
    # any other change starts again at the first page
    assert "c" not in params(s.url(connected=False))
    assert "c" not in params(s.without_filter(0)) and "f" not in params(s.without_filter(0))
    assert parse("range=today").previous_page() is None


@pytest.mark.parametrize("sort, column, aria, next_sort", [
    ("-start_time", "billsec", "none", ["billsec"]),
    ("billsec", "billsec", "ascending", ["-billsec"]),
    ("-billsec", "billsec", "descending", None),       # back to the default
    ("-start_time", "start_time", "descending", None),  # the default is descending
    ("start_time", "start_time", "ascending", None),
])
def test_header_click_cycles_the_sort(sort: str, column: str, aria: str, next_sort) -> None:
    url, current = parse(f"sort={sort}").sort_link(column)
    assert current == aria
    assert params(url).get("sort") == next_sort or (
        next_sort is None and params(url).get("sort") in (None, ["start_time"]))


def test_saved_views_round_trip() -> None:
    s = parse("range=last_7_days&tz=UTC&number=4420*&columns=call_id&f=billsec:greater:3")
    kind, body = s.saved_body()
    assert kind == "search" and body["rules"]["rules"][0]["field"] == "billsec"
    assert ViewState.from_saved(body) == s
    kind, body = parse("range=all&carrier=K1").saved_body()
    assert kind == "viewer" and body == {"range": "all", "sort": ["-start_time"], "carrier": "K1"}
    # a tree that is not a flat AND of header filters is kept whole (the builder's tree)
    tree = {"condition": "OR", "rules": [{"field": "billsec", "operator": "greater", "value": 3}]}
    opened = ViewState.from_saved({"range": "all", "rules": tree})
    assert opened.filters == () and opened.rules() == tree


def test_filter_labels() -> None:
    assert Filter("billsec", "between", "1,5").label() == "Billsec between 1 and 5"
    assert Filter("disposition", "in", "BUSY").label() == "Disposition in BUSY"
    assert Filter("answer_time", "is_null", "").label() == "Answered is null"
