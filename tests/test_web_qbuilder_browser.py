"""The viewer's query builder and keyboard shortcuts in a real browser (Debian's Chromium,
Playwright) against a real `cdrhouse serve` over the small known store (tests/webstore.py).

Run: `python -m pytest -n 0 tests/test_web_qbuilder_browser.py`.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

sys.path.insert(0, str(Path(__file__).parent))
from browser import (  # noqa: E402,F401  (fixtures are found by name)
    Server, Watch, browser_type_launch_args, csv_ids, ctx, download_text, expect_grid, grid_ids, server,
    shot, sign_in)
from playwright.sync_api import BrowserContext, Page, expect  # noqa: E402

COLS = "call_id,start_time,billsec,customer_id,carrier_id,dst_number,disposition"


def api_ids(server: Server, tree: dict | None, who: str = "tenant:acme", **body) -> list[str]:
    """The first page of the same view through the API (`POST /v1/cdrs/search`, a key)."""
    payload = {"range": "all", "tz": "Europe/Berlin", "columns": ["call_id"], "limit": 100,
               **body}
    if tree is not None:
        payload["rules"] = tree
    req = urllib.request.Request(server.base + "/v1/cdrs/search", data=json.dumps(payload).encode(),
                                 headers={"Authorization": f"Bearer {server.secrets[who]}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return [row["call_id"] for row in json.load(r)["rows"]]


def q_param(page: Page) -> dict | None:
    q = parse_qs(urlsplit(page.url).query).get("q")
    return json.loads(q[0]) if q else None


def f_params(page: Page) -> list[str]:
    return parse_qs(urlsplit(page.url).query).get("f", [])


def open_builder(page: Page) -> None:
    # once the fields are loaded the panel's remembered open/closed state is settled
    expect(page.locator("#qb-panel")).to_have_attribute("data-ready", "1")
    if page.locator("#qb-panel").is_hidden():
        page.locator("#qb-toggle").click()
    expect(page.locator("#qb-panel")).to_be_visible()


def rule(page: Page, path: str):
    return page.locator(f'[data-path="{path}"]')


def test_two_groups_any_all_not_equals_the_api(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator", path=f"/?range=all&tz=Europe%2FBerlin&columns={COLS}")
    open_builder(page)
    expect(page.locator("#qb-body")).to_contain_text("No rules")
    # the top group matches Any of two groups
    page.locator("#qb-root-match").select_option("or")
    # group 1 (All): billsec between 100 and 150, customer C2 (chosen by code and name)
    page.locator("#qb-root-add-group").click()
    page.locator("#qb-0-0-field").select_option("billsec")
    page.locator("#qb-0-0-op").select_option("between")
    page.locator("#qb-0-0-v1").fill("100")
    page.locator("#qb-0-0-v2").fill("150")
    page.locator("#qb-0-add-rule").click()
    page.locator("#qb-0-1-field").select_option("customer_id")
    page.locator("#qb-0-1-op").select_option("equal")
    page.locator("#qb-0-1-v1").select_option(label="C2 — Blue Telecom")
    # group 2 (NOT Any): neither answered nor to 4930999…: the unanswered calls elsewhere
    page.locator("#qb-root-add-group").click()
    page.locator("#qb-1-not").check()
    page.locator("#qb-1-match").select_option("or")
    page.locator("#qb-1-0-field").select_option("billsec")
    page.locator("#qb-1-0-op").select_option("greater")
    page.locator("#qb-1-0-v1").fill("0")
    page.locator("#qb-1-add-rule").click()
    page.locator("#qb-1-1-field").select_option("dst_number")
    page.locator("#qb-1-1-op").select_option("begins_with")
    page.locator("#qb-1-1-v1").fill("4930999")
    expect(page.locator("#qb-dirty")).to_be_visible()
    shot(page, "qb-built")
    page.locator("#qb-apply").click()
    expect(page.locator("#qb-dirty")).to_be_hidden()

    expected_tree = {"combinator": "or", "rules": [
        {"combinator": "and", "rules": [
            {"field": "billsec", "operator": "between", "value": [100, 150]},
            {"field": "customer_id", "operator": "=", "value": 2}]},
        {"combinator": "or", "not": True, "rules": [
            {"field": "billsec", "operator": ">", "value": 0},
            {"field": "dst_number", "operator": "beginsWith", "value": "4930999"}]}]}
    # the URL holds the API's JSON, exactly the tree built (an Any root is not a header filter)
    assert q_param(page) == expected_tree and f_params(page) == []
    ids = grid_ids(page)
    acme = sorted((c for c in server.calls() if c["tenant"] == "acme"),
                  key=lambda c: (c["start"], c["call_id"]), reverse=True)
    by_hand = [c["call_id"] for c in acme
               if (100 <= c["billsec"] <= 150 and c["customer"] == "C2")
               or not (c["billsec"] > 0 or c["dst"].startswith("4930999"))]
    assert 40 < len(by_hand) < 100
    assert ids == by_hand
    assert ids == api_ids(server, expected_tree)
    # the CSV download applies the same tree
    _, text = download_text(page, lambda: page.locator("#download").click())
    assert csv_ids(text) == ids
    shot(page, "qb-applied")

    # reload: the tree comes back from the URL, in the builder and the grid
    page.reload()
    expect(page.locator("#qb-panel")).to_have_attribute("data-ready", "1")
    page.locator("#qb-toggle").click()       # closed ...
    expect(page.locator("#qb-panel")).to_be_hidden()
    page.locator("#qb-chip").click()         # ... and opened from the rules' chip
    expect(page.locator("#qb-panel")).to_be_visible()
    expect(page.locator("#qb-root-match")).to_have_value("or")
    expect(page.locator("#qb-1-not")).to_be_checked()
    expect(page.locator("#qb-0-0-v2")).to_have_value("150")
    expect(page.locator("#qb-0-1-v1")).to_have_value("2")
    expect(page.locator("#qb-1-1-v1")).to_have_value("4930999")
    expect_grid(page, ids)
    assert q_param(page) == expected_tree
    # a saved view keeps the tree
    page.locator("#views-btn").click()
    page.locator("#view-name").fill("Two groups")
    page.get_by_role("button", name="Save view").click()
    expect(page.locator(".note")).to_contain_text("Saved view")
    page.goto("/?range=all&tz=Europe%2FBerlin")
    page.locator("#views-btn").click()
    page.get_by_role("link", name="Two groups").click()
    expect(page.locator(".chip")).to_contain_text("Query-builder rules")
    assert q_param(page) == expected_tree
    expect_grid(page, ids)

    # reorder: group 2 moves up; remove a rule; the result follows
    page.locator("#qb-1-up").click()
    expect(page.locator("#qb-0-not")).to_be_checked()
    page.locator("#qb-1-1-remove").click()          # customer C2 no longer required
    page.locator("#qb-apply").click()
    expect(page.locator("#qb-dirty")).to_be_hidden()
    tree2 = {"combinator": "or", "rules": [expected_tree["rules"][1], {
        "combinator": "and", "rules": [expected_tree["rules"][0]["rules"][0]]}]}
    assert q_param(page) == tree2
    expect_grid(page, api_ids(server, tree2))
    page.emulate_media(color_scheme="dark")
    shot(page, "qb-dark")
    watch.assert_clean()


def test_dst_aware_times_in_the_display_zone(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator", path=f"/?range=all&tz=Europe%2FBerlin&columns={COLS}")
    open_builder(page)
    page.locator("#qb-root-add-rule").click()
    page.locator("#qb-0-field").select_option("start_time")
    page.locator("#qb-0-op").select_option("between")
    # the local day of the change to summer time: 23 hours long
    page.locator("#qb-0-v1").fill("2026-03-29T00:00:00")
    page.locator("#qb-0-v2").fill("2026-03-29T23:59:59")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#qb-dirty")).to_be_hidden()
    # wall times became instants with the zone's offset of that moment
    assert f_params(page) == ["start_time:between:2026-03-29T00:00:00+01:00,"
                              "2026-03-29T23:59:59+02:00"]
    expect_grid(page, ["acme-dst-noon", "acme-dst-after", "acme-dst-night"])
    expect(page.locator(".chip").first).to_contain_text("Start between 2026-03-29T00:00:00+01:00")
    # the builder shows them back as wall times in the zone
    open_builder(page)
    expect(page.locator("#qb-0-v1")).to_have_value("2026-03-29T00:00")   # (no :00 seconds)
    expect(page.locator("#qb-0-v2")).to_have_value("2026-03-29T23:59:59")
    # a wall time the clocks skip is refused at its rule, nothing is applied
    page.locator("#qb-0-v1").fill("2026-03-29T02:30:00")
    expect(rule(page, "rules[0]").locator(".qb-err")).to_contain_text(
        "does not exist in Europe/Berlin")
    url = page.url
    page.locator("#qb-apply").click()
    expect(page.locator("#qb-panel-error")).to_contain_text("Fix the rule")
    assert page.url == url
    shot(page, "qb-dst-gap")
    # the same instants shown in New York
    page.goto("/?range=all&tz=America%2FNew_York&columns=call_id,start_time&f=" + quote(
        "start_time:between:2026-03-29T00:00:00+01:00,2026-03-29T23:59:59+02:00"))
    open_builder(page)
    expect(page.locator("#qb-0-v1")).to_have_value("2026-03-28T19:00")
    expect(page.locator("#qb-0-v2")).to_have_value("2026-03-29T17:59:59")
    expect_grid(page, ["acme-dst-noon", "acme-dst-after", "acme-dst-night"])
    watch.assert_clean()


def test_header_filters_are_rules_and_rules_are_header_filters(ctx: BrowserContext,
                                                               server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator", path=f"/?range=all&tz=UTC&columns={COLS}")
    acme = sorted((c for c in server.calls() if c["tenant"] == "acme"),
                  key=lambda c: (c["start"], c["call_id"]), reverse=True)
    # a header filter ...
    page.locator('#grid th[data-col="billsec"] .filter-btn').click()
    page.locator("#nf-op").select_option("between")
    page.locator("#nf-v1").fill("100")
    page.locator("#nf-v2").fill("120")
    page.get_by_role("button", name="Add filter").click()
    expect(page.locator(".chip").first).to_contain_text("Billsec between 100 and 120")
    # ... is the builder's first rule
    open_builder(page)
    expect(page.locator("#qb-0-field")).to_have_value("billsec")
    expect(page.locator("#qb-0-op")).to_have_value("between")
    expect(page.locator("#qb-0-v1")).to_have_value("100")
    expect(page.locator("#qb-0-v2")).to_have_value("120")
    # editing the rule changes the chip and the grid
    page.locator("#qb-0-v2").fill("110")
    page.locator("#qb-0-v2").press("Enter")          # Enter in a value applies, as in a form
    expect(page.locator(".chip").first).to_contain_text("Billsec between 100 and 110")
    expect_grid(page, [c["call_id"] for c in acme if 100 <= c["billsec"] <= 110])
    # a rule added in the builder under All becomes a header filter (a chip) too
    open_builder(page)
    page.locator("#qb-root-add-rule").click()
    page.locator("#qb-1-field").select_option("carrier_id")
    page.locator("#qb-1-op").select_option("in")
    page.locator("#qb-1").get_by_label("K2 — Carrier Two").check()
    page.locator("#qb-apply").click()
    expect(page.locator(".chip")).to_have_count(2)
    expect(page.locator(".chip").nth(1)).to_contain_text("Carrier in K2")
    assert f_params(page) == ["billsec:between:100,110", "carrier_id:in:4"]
    assert q_param(page) is None
    expect_grid(page, [c["call_id"] for c in acme if 100 <= c["billsec"] <= 110
                       and c["carrier"] == "K2"])
    expect(page.locator('#grid th[data-col="carrier_id"]')).to_have_attribute("data-filtered", "")
    # removing the chip removes the rule
    page.get_by_role("link", name="Remove filter Billsec between 100 and 110").click()
    open_builder(page)
    expect(page.locator("#qb-0-field")).to_have_value("carrier_id")
    expect(page.locator("#qb-1")).to_have_count(0)
    # compare with another field of the same call: billsec is always duration - 5 here
    page.locator("#qb-root-add-rule").click()
    page.locator("#qb-1-field").select_option("billsec")
    page.locator("#qb-1-op").select_option("less")
    page.locator("#qb-1-source").select_option("field")
    page.locator("#qb-1-vf1").select_option("duration")
    # a rule after a group stays in the tree (q), in its place
    page.locator("#qb-root-add-group").click()
    page.locator("#qb-2-0-field").select_option("disposition")
    page.locator("#qb-2-0-op").select_option("in")
    page.locator("#qb-2-0").get_by_label("ANSWERED").check()
    shot(page, "qb-header-and-field")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#qb-dirty")).to_be_hidden()
    k2_answered = [c["call_id"] for c in acme if c["carrier"] == "K2" and c["billsec"] > 0]
    expect_grid(page, k2_answered[:100])
    assert f_params(page) == ["carrier_id:in:4"]
    assert q_param(page) == {"combinator": "and", "rules": [
        {"field": "billsec", "operator": "<", "valueSource": "field", "value": "duration"},
        {"combinator": "and", "rules": [
            {"field": "disposition", "operator": "in", "value": ["ANSWERED"]}]}]}
    page.locator("#qb-1-op").select_option("greater")
    page.locator("#qb-apply").click()
    expect(page.locator("#grid tr.empty")).to_be_visible()
    expect_grid(page, [])
    watch.assert_clean()


def test_validation_errors_show_at_their_rule(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator", path=f"/?range=all&tz=UTC&columns={COLS}&customer=C1")
    open_builder(page)
    page.locator("#qb-root-add-rule").click()
    page.locator("#qb-0-field").select_option("billsec")
    page.locator("#qb-0-op").select_option("greater")
    page.locator("#qb-0-v1").fill("10")
    page.locator("#qb-root-add-group").click()
    page.locator("#qb-1-match").select_option("or")
    page.locator("#qb-1-0-field").select_option("customer_charge")
    page.locator("#qb-1-0-op").select_option("equal")
    page.locator("#qb-1-0-v1").fill("0.0000001")
    page.locator("#qb-apply").click()
    # the compiler's path (rules[1].rules[0]) names the rule, also with an account narrowed
    bad = rule(page, "rules[1].rules[0]")
    expect(bad.locator(".qb-err")).to_have_text("customer_charge value '0.0000001' has more "
                                                "than 6 decimal places")
    expect(bad).to_have_class(re.compile(r"\bbad\b"))
    expect(rule(page, "rules[0]").locator(".qb-err")).to_have_count(0)
    expect(page.locator("#problem")).to_contain_text("rules[1].rules[0]")
    expect_grid(page, [])
    shot(page, "qb-error")
    # fixing it runs the view
    page.locator("#qb-1-0-v1").fill("0.36")
    page.locator("#qb-apply").click()
    expect(page.locator("#problem")).to_have_count(0)
    assert set(grid_ids(page)) == {c["call_id"] for c in server.calls()
                                   if c["tenant"] == "acme" and c["customer"] == "C1"
                                   and c["charge"] == "0.360000" and c["billsec"] > 10}
    # a bad header filter is shown on its chip and at its rule
    page.goto(f"/?range=all&tz=UTC&columns={COLS}&f=billsec:greater:abc&f=billsec:less:5")
    open_builder(page)
    expect(rule(page, "rules[0]").locator(".qb-err")).to_contain_text("expects a whole number")
    expect(page.locator(".chip.bad .chip-error")).to_contain_text("expects a whole number")
    expect(rule(page, "rules[1]").locator(".qb-err")).to_have_count(0)
    watch.assert_clean(allowed=("status of 400",))


def test_customer_sees_no_carrier_field(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "cust1", path="/?range=all&tz=UTC")
    open_builder(page)
    page.locator("#qb-root-add-rule").click()
    names = page.locator("#qb-0-field option").evaluate_all("os => os.map(o => o.value)")
    assert "billsec" in names and "customer_charge" in names
    assert not [n for n in names if n.startswith("carrier")]
    page.locator("#qb-0-field").select_option("customer_charge")
    page.locator("#qb-0-source").select_option("field")
    compare = page.locator("#qb-0-vf1 option").evaluate_all("os => os.map(o => o.value)")
    assert "carrier_cost" not in compare
    shot(page, "qb-customer")
    # a tampered tree naming a carrier field is refused at its rule, nothing leaks
    tree = {"combinator": "and", "rules": [
        {"field": "billsec", "operator": ">", "value": 0},
        {"combinator": "or", "rules": [{"field": "carrier_cost", "operator": ">", "value": 0}]}]}
    page.goto("/?range=all&tz=UTC&q=" + quote(json.dumps(tree)))
    open_builder(page)
    expect(rule(page, "rules[1].rules[0]").locator(".qb-err")).to_have_text(
        "field 'carrier_cost' is not visible to a customer user")
    expect(page.locator("#qb-1-0-field")).to_have_value("carrier_cost")
    expect_grid(page, [])
    # a tree that is not even rules: drawn as far as it goes, the error at its place
    page.goto("/?range=all&tz=UTC&q=" + quote(json.dumps(
        {"combinator": "or", "rules": [{"field": "billsec", "operator": ">", "value": 1}, None,
                                       "<img src=x onerror=alert(1)>"]})))
    open_builder(page)
    expect(rule(page, "rules[1]").locator(".qb-err")).to_have_text(
        "expected a rule or a group object, got None")
    expect(page.locator("#qb-body img")).to_have_count(0)
    page.goto("/?range=all&tz=UTC&q=" + quote("[" * 5000 + "]" * 5000))
    expect(page.locator("#problem")).to_contain_text("q: not a JSON query-builder tree")
    expect(page.locator("#qb-panel")).to_have_attribute("data-ready", "1")
    watch.assert_clean(allowed=("status of 400",))


def press_and_load(page: Page, key: str) -> None:
    """Press a key that navigates, and wait for the new page's load event.

    A URL assertion alone passes as soon as the navigation commits, before the
    new page's scripts listen for keys; the next key pressed then goes nowhere.
    """
    with page.expect_navigation():
        page.keyboard.press(key)


def test_keyboard_shortcuts(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator", path="/?range=all&tz=UTC")
    first = grid_ids(page)
    page.locator("#status").click()   # focus on the page, not a field
    page.keyboard.press("?")
    expect(page.locator("#keys-dialog")).to_be_visible()
    expect(page.locator("#keys-dialog")).to_contain_text("Next page")
    shot(page, "qb-keys")
    page.keyboard.press("Escape")
    expect(page.locator("#keys-dialog")).to_be_hidden()
    # next and previous page (also with a checkbox focused: it takes no text)
    page.locator("#select-page").focus()
    press_and_load(page, "j")
    expect(page).to_have_url(re.compile(r"[?&]c="))
    second = grid_ids(page)
    assert second and second[0] not in first
    press_and_load(page, "k")
    expect(page).not_to_have_url(re.compile(r"[?&]c="))
    expect_grid(page, first)
    press_and_load(page, "]")
    expect(page).to_have_url(re.compile(r"[?&]c="))
    press_and_load(page, "[")
    expect(page).not_to_have_url(re.compile(r"[?&]c="))
    # `/` focuses the number search; keys typed there are text, not shortcuts
    page.keyboard.press("/")
    expect(page.locator("#number")).to_be_focused()
    page.keyboard.type("jk4420*")
    expect(page.locator("#number")).to_have_value("jk4420*")
    assert "c=" not in page.url
    page.locator("#number").fill("4420555*")
    press_and_load(page, "Control+Enter")       # in the toolbar: applies the toolbar
    expect(page).to_have_url(re.compile(r"number=4420555"))
    expect_grid(page, ["acme-rec-1", "acme-rec-gone"])
    # `b` opens the builder; Ctrl+Enter applies it
    page.locator("#status").click()
    page.keyboard.press("b")
    expect(page.locator("#qb-panel")).to_be_visible()
    expect(page.locator("#qb-panel")).to_have_attribute("data-ready", "1")
    page.locator("#qb-root-add-rule").click()
    page.locator("#qb-0-field").select_option("call_id")
    page.locator("#qb-0-op").select_option("ends_with")
    page.locator("#qb-0-v1").fill("gone")
    page.keyboard.press("Control+Enter")
    expect(page.locator(".chip").first).to_contain_text("gone")
    expect_grid(page, ["acme-rec-gone"])
    # a key typed into a builder input stays there
    page.locator("#qb-0-v1").fill("")
    page.locator("#qb-0-v1").type("j/k?")
    expect(page.locator("#qb-0-v1")).to_have_value("j/k?")
    expect(page.locator("#keys-dialog")).to_be_hidden()
    assert "c=" not in page.url
    watch.assert_clean()
