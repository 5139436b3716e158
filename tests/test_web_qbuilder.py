"""The query builder's server side: how header filters and the builder's tree map onto each
other in the viewer's URL state (pure), and the rule path an API error names (real engine).
The browser half is tests/test_web_qbuilder_browser.py."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from fastapi.testclient import TestClient
from starlette.datastructures import QueryParams

from cdrhouse.api.web.state import (MAX_FILTERS, Filter, ViewState, header_filter,
                                    split_tree)


def parse(query: str) -> ViewState:
    return ViewState.parse(QueryParams(query))


def rq(*rules: dict, combinator: str = "and", **kw) -> dict:
    return {"combinator": combinator, "rules": list(rules), **kw}


BETWEEN = {"field": "billsec", "operator": "between", "value": [10, 20]}
GROUP_OR = rq({"field": "country", "operator": "=", "value": "DE"},
              {"field": "disposition", "operator": "in", "value": ["BUSY"]}, combinator="or")

# (builder rule, the header filter that says the same, or None)
HEADER_CASES = [
    ({"field": "billsec", "operator": ">", "value": 30}, "billsec:greater:30"),
    ({"field": "billsec", "operator": "greater", "value": "30"}, "billsec:greater:30"),
    (BETWEEN, "billsec:between:10,20"),
    ({"field": "customer_charge", "operator": "<=", "value": 0.5}, "customer_charge:less_or_equal:0.5"),
    ({"field": "disposition", "operator": "in", "value": ["BUSY", "NO ANSWER"]},
     "disposition:in:BUSY,NO ANSWER"),
    ({"field": "carrier_id", "operator": "in", "value": [3, 4]}, "carrier_id:in:3,4"),
    ({"field": "answer_time", "operator": "null"}, "answer_time:is_null:"),
    ({"field": "start_time", "operator": ">=", "value": "2026-03-29T01:30:00+01:00"},
     "start_time:greater_or_equal:2026-03-29T01:30:00+01:00"),
    ({"field": "dst_number", "operator": "beginsWith", "value": "4420"},
     "dst_number:begins_with:4420"),
    # what a header filter cannot say stays a rule
    ({"field": "billsec", "operator": "<", "value": "duration", "valueSource": "field"}, None),
    ({"field": "dst_number", "operator": "in", "value": ["a,b", "c"]}, None),   # a comma
    ({"field": "dst_number", "operator": "in", "value": [" a", "c"]}, None),    # spaces
    ({"field": "dst_number", "operator": "in", "value": []}, None),
    ({"field": "dst_number", "operator": "in", "value": "a,b"}, None),          # text, not a list
    ({"field": "billsec", "operator": "in", "value": [1, 2]}, None),   # not offered on ints
    ({"field": "start_time", "operator": ">=", "value": 5}, None),     # a number for a time
    ({"field": "billsec", "operator": ">", "value": True}, None),
    ({"field": "nosuch", "operator": ">", "value": 1}, None),
    ({"field": "billsec", "operator": "frob", "value": 1}, None),
    ({"id": "billsec", "operator": "greater", "value": 1}, None),      # jQuery `id` only
    (GROUP_OR, None),
]


@pytest.mark.parametrize("rule, text", HEADER_CASES)
def test_which_rules_are_header_filters(rule: dict, text: str | None) -> None:
    f = header_filter(rule)
    assert (f.text if f else None) == text
    if f is not None:
        # and the header filter's rule means the same (values as text)
        back = f.rule()
        assert back["field"] == rule["field"]
        if "value" in rule:
            want = rule["value"]
            assert back["value"] == ([str(v) for v in want] if isinstance(want, list)
                                     else str(want))


# (tree applied from the builder, header filters it gives, rest kept as `q`)
SPLIT_CASES = [
    (rq(BETWEEN), ["billsec:between:10,20"], None),
    (rq(), [], None),
    # the leading rules of an All group; a rule after a group keeps its place in q
    (rq(BETWEEN, GROUP_OR, {"field": "billsec", "operator": ">", "value": 1}),
     ["billsec:between:10,20"], rq(GROUP_OR, {"field": "billsec", "operator": ">", "value": 1})),
    # one group left that is not a plain All: that group is q
    (rq(BETWEEN, GROUP_OR), ["billsec:between:10,20"], GROUP_OR),
    # ... but a nested All group stays nested
    (rq(BETWEEN, rq(BETWEEN)), ["billsec:between:10,20"], rq(rq(BETWEEN))),
    # Any, or NOT, at the top: no header filters at all
    (rq(BETWEEN, combinator="or"), [], rq(BETWEEN, combinator="or")),
    (rq(BETWEEN, **{"not": True}), [], rq(BETWEEN, **{"not": True})),
    # jQuery QueryBuilder's form too
    ({"condition": "AND", "rules": [BETWEEN, GROUP_OR]}, ["billsec:between:10,20"], GROUP_OR),
    # a first rule that is not a header filter: the tree stays whole
    (rq(GROUP_OR, BETWEEN), [], rq(GROUP_OR, BETWEEN)),
]


@pytest.mark.parametrize("tree, filters, rest", SPLIT_CASES)
def test_a_builder_tree_splits_into_header_filters_and_q(tree, filters, rest) -> None:
    moved, left = split_tree(tree)
    assert [f.text for f in moved] == filters and left == rest
    # through the URL: q=<tree> becomes f=… and q=…, and the builder gets its tree back
    state = parse("range=all&q=" + quote(json.dumps(tree)))
    assert [f.text for f in state.filters] == filters
    assert (json.loads(state.rules_json) if state.rules_json else None) == rest
    shown = state.tree()
    if not tree["rules"]:
        assert shown is None
        return
    assert _same(shown, tree)
    # and it is stable: the canonical URL parses to the same state
    assert parse(urlsplit(state.url()).query) == state


def _same(a: dict, b: dict) -> bool:
    """Trees equal up to each dialect's spelling and header filters' values as text."""
    def norm(n):
        if isinstance(n, dict) and "rules" in n:
            comb = str(n.get("combinator", n.get("condition"))).lower()
            return (comb, bool(n.get("not")), [norm(r) for r in n["rules"]])
        f = header_filter(n)
        return f.text if f else json.dumps(n, sort_keys=True)
    return norm(a) == norm(b)


def test_header_filters_come_first_in_the_tree() -> None:
    # filters + a plain All q: one All group, filters first, q's rules after
    s = parse("range=all&f=billsec:greater:3&q=" + quote(json.dumps(rq(GROUP_OR, BETWEEN))))
    assert s.tree() == {"combinator": "and", "rules": [
        {"field": "billsec", "operator": "greater", "value": "3"}, GROUP_OR, BETWEEN]}
    # filters + an Any q: q is one group after them
    s = parse("range=all&f=billsec:greater:3&q=" + quote(json.dumps(GROUP_OR)))
    assert s.tree() == {"condition": "AND", "rules": [
        {"field": "billsec", "operator": "greater", "value": "3"}, GROUP_OR]}
    assert s.rules() == s.tree()
    # a header filter added from the grid joins the builder's leading rules
    s2 = parse(urlsplit(s.url(filters=s.filters + (Filter("country", "equal", "DE"),))).query)
    assert [r.get("field") for r in s2.tree()["rules"]] == ["billsec", "country", None]


def test_a_bad_header_filter_keeps_its_chip_and_place() -> None:
    s = parse("range=all&f=billsec:frob:1&q=" + quote(json.dumps(rq(BETWEEN))))
    assert [f.text for f in s.filters] == ["billsec:frob:1", "billsec:between:10,20"]
    assert s.rules_json == ""


def test_header_filters_are_capped_and_the_rest_stays_in_q() -> None:
    rules = [{"field": "billsec", "operator": ">", "value": i} for i in range(MAX_FILTERS + 5)]
    s = parse("range=all&q=" + quote(json.dumps(rq(*rules))))
    assert len(s.filters) == MAX_FILTERS
    assert json.loads(s.rules_json)["rules"] == rules[MAX_FILTERS:]
    assert len(s.tree()["rules"]) == MAX_FILTERS + 5


def test_a_q_that_is_not_json_is_reported_not_dropped() -> None:
    s = parse("range=last_7_days&q=%7Boops")
    assert s.rules_json == "{oops" and s.range == "last_7_days"
    with pytest.raises(ValueError, match="q: not a JSON query-builder tree"):
        s.tree()


@pytest.mark.parametrize("q", [
    "[" * 100_000 + "]" * 100_000,                       # too deep for any reader
    json.dumps({"combinator": "and", "rules": "abc"}),   # kept whole: the compiler names it
    json.dumps({"combinator": "and", "rules": [1, None, "x", {"rules": 5}]}),
    json.dumps({"combinator": ["and"], "rules": [BETWEEN]}),
])
def test_hostile_trees_are_kept_for_the_compiler_or_refused(q: str) -> None:
    s = parse("range=all&q=" + quote(q))
    assert s.filters == ()
    try:
        tree = s.tree()
    except ValueError as exc:
        assert str(exc) == "q: not a JSON query-builder tree"
    else:
        assert tree == json.loads(q)


def test_saved_views_keep_the_builder_tree() -> None:
    s = parse("range=all&tz=UTC&f=billsec:greater:3&q=" + quote(json.dumps(GROUP_OR)))
    kind, body = s.saved_body()
    assert kind == "search" and body["rules"] == s.tree()
    assert ViewState.from_saved(body) == s
    url = ViewState.from_saved(body).url()
    assert parse_qs(urlsplit(url).query)["f"] == ["billsec:greater:3"]


# -- the API names the rule of an error -------------------------------------------------

@pytest.fixture(scope="module")
def api(embedded_dsn: str, engine_dir: Path):
    from cdrhouse.api.app import create_app
    from cdrhouse.api.service import ServiceConfig
    from cdrhouse.engine import accounts as acc
    from cdrhouse.engine import keys
    from cdrhouse.engine.db import Database, StoreConfig
    from cdrhouse.engine.migrate import migrate

    name = f"t_{uuid.uuid4().hex[:12]}"
    store = StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn, database=name)
    db = Database(store)
    migrate(db)
    acc.add_account(db, "acme", "C1", "customer")
    secrets = {who: keys.create_key(db, who)[1] for who in ("tenant:acme",
                                                             "tenant:acme/customer:C1")}
    db.close()
    app = create_app(ServiceConfig(store=store, pool_size=1))
    with TestClient(app) as client:
        yield client, secrets
    db = Database(store)
    db.command(f"DROP DATABASE `{name}`")
    db.close()


BAD_TREE = rq({"field": "billsec", "operator": ">", "value": 1},
              rq({"field": "country", "operator": "=", "value": "DE"},
                 {"field": "billsec", "operator": "between", "value": [1]}, combinator="or"))


@pytest.mark.parametrize("who, extra, tree, path, reason", [
    ("tenant:acme", {}, BAD_TREE, "rules[1].rules[1]", "operator 'between' needs two values"),
    # narrowed to an account: the path still names the caller's own tree
    ("tenant:acme", {"customer": "C1"}, BAD_TREE, "rules[1].rules[1]",
     "operator 'between' needs two values"),
    ("tenant:acme/customer:C1", {}, rq({"field": "carrier_cost", "operator": ">", "value": 0}),
     "rules[0]", "field 'carrier_cost' is not visible to a customer user"),
    ("tenant:acme", {}, rq(combinator="xor"), "query", "combinator must be AND or OR, got 'xor'"),
])
def test_a_builder_error_names_its_rule(api, who, extra, tree, path, reason) -> None:
    client, secrets = api
    r = client.post("/v1/cdrs/search", headers={"Authorization": f"Bearer {secrets[who]}"},
                    json={"range": "all", "rules": tree, **extra})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["rule_path"] == path
    assert body["detail"] == f"rules: {path}: {reason}"


def test_narrowing_and_a_tree_still_filter_together(api) -> None:
    client, secrets = api
    r = client.post("/v1/cdrs/search", headers={"Authorization": f"Bearer {secrets['tenant:acme']}"},
                    json={"range": "all", "customer": "C1",
                          "rules": rq({"field": "billsec", "operator": ">", "value": 1})})
    assert r.status_code == 200, r.text
    r = client.get("/v1/fields", headers={"Authorization": f"Bearer {secrets['tenant:acme']}"})
    billsec = next(f for f in r.json()["fields"] if f["name"] == "billsec")
    arity = {op["key"]: op["arity"] for op in billsec["operators"]}
    assert (arity["equal"], arity["between"], arity["in"], arity["is_null"]) == (1, 2, "list", 0)
