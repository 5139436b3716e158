"""The web viewer in a real browser: Debian's Chromium driven by Playwright, against a real
`cdrhouse serve` on loopback over a small known store (tests/webstore.py; shared
fixtures and helpers in tests/browser.py).

Run: `python -m pytest -n 0 tests/test_web_browser.py` (needs `apt-get install -y chromium`).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import sys
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).parent))
from browser import (  # noqa: E402,F401  (fixtures are found by name)
    ROOT, Server, Watch, browser_type_launch_args, column, csv_ids, ctx, download_text,
    expect_grid, grid_ids, server, settle, shot, sign_in)
import webstore  # noqa: E402
from playwright.sync_api import BrowserContext, expect  # noqa: E402


# -- tenant operator ------------------------------------------------------------------------

def test_operator_grid_paging_sort_filter_columns(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login"))
    shot(page, "login")
    sign_in(page, "operator", path="/?range=last_7_days")
    expect(page.locator("#scope")).to_contain_text("Global view")
    # the browser's zone is the default, and the URL holds it
    expect(page.locator("#zone-label")).to_have_text("Europe/Berlin")
    assert "tz=Europe%2FBerlin" in page.url
    acme = sorted((c for c in server.calls() if c["tenant"] == "acme"
                   and c["start"] >= server.now - dt.timedelta(days=6)),
                  key=lambda c: (c["start"], c["call_id"]), reverse=True)
    first = grid_ids(page)
    assert first == [c["call_id"] for c in acme[:100]]
    # account codes and names, never bare ids
    cust = column(page, "customer_id")
    assert set(cust) <= {"C1 · Acme Retail", "C2 · Blue Telecom"}
    # pickers show codes and names too
    expect(page.locator("#customer option", has_text="C2 — Blue Telecom")).to_have_count(1)
    shot(page, "operator-grid")

    # paging forward and back
    page.locator("#next").click()
    expect_grid(page, [c["call_id"] for c in acme[100:200]])
    page.locator("#next").click()
    expect_grid(page, [c["call_id"] for c in acme[200:300]])
    page.locator("#prev").click()
    expect_grid(page, [c["call_id"] for c in acme[100:200]])
    page.go_back()
    expect_grid(page, [c["call_id"] for c in acme[200:300]])
    page.go_back()
    page.go_back()
    expect_grid(page, first)

    # click a header to sort: ascending, descending, none
    th = page.locator('#grid th[data-col="billsec"]')
    expect(th).to_have_attribute("aria-sort", "none")
    th.locator("a.sort").click()
    expect(th).to_have_attribute("aria-sort", "ascending")
    vals = [int(v) for v in column(page, "billsec")]
    assert vals == sorted(vals) and vals[0] == 0
    page.locator('#grid th[data-col="billsec"] a.sort').click()
    expect(page.locator('#grid th[data-col="billsec"]')).to_have_attribute("aria-sort", "descending")
    vals = [int(v) for v in column(page, "billsec")]
    assert vals == sorted(vals, reverse=True)
    assert vals[0] == max(c["billsec"] for c in acme)
    page.locator('#grid th[data-col="billsec"] a.sort').click()
    expect(page.locator('#grid th[data-col="billsec"]')).to_have_attribute("aria-sort", "none")
    expect(page.locator('#grid th[data-col="start_time"]')).to_have_attribute("aria-sort",
                                                                              "descending")

    # header filter (number range) shown as a removable chip
    page.locator('#grid th[data-col="billsec"] .filter-btn').click()
    page.locator("#nf-op").select_option("between")
    page.locator("#nf-v1").fill("100")
    page.locator("#nf-v2").fill("120")
    page.get_by_role("button", name="Add filter").click()
    chip = page.locator(".chip").first
    expect(chip).to_contain_text("Billsec between 100 and 120")
    expected = [c["call_id"] for c in acme if 100 <= c["billsec"] <= 120]
    expect_grid(page, expected)
    # an enum filter with choices
    page.locator('#grid th[data-col="disposition"] .filter-btn').click()
    page.get_by_label("NO ANSWER").check()
    page.get_by_role("button", name="Add filter").click()
    expect_grid(page, [])
    expect(page.locator("#grid tr.empty")).to_contain_text("No calls match")
    shot(page, "operator-filters")
    page.get_by_role("link", name="Remove filter Disposition in NO ANSWER").click()
    page.get_by_role("link", name="Remove filter Billsec between 100 and 120").click()
    expect_grid(page, first)
    # an account column offers the accounts by code and name, not ids to type
    page.locator('#grid th[data-col="carrier_id"] .filter-btn').click()
    page.get_by_label("K2 — Carrier Two").check()
    page.get_by_role("button", name="Add filter").click()
    expect(page.locator(".chip").first).to_contain_text("Carrier in K2")
    expect_grid(page, [c["call_id"] for c in acme if c["carrier"] == "K2"][:100])
    assert set(column(page, "carrier_id")) == {"K2 · Carrier Two"}
    page.get_by_role("link", name="Remove filter Carrier in K2").click()
    expect_grid(page, first)

    # columns panel: choose and order; remembered in preferences
    page.locator("#columns-btn").click()
    dialog = page.locator("#columns-dialog")
    dialog.locator('li[data-col="release_reason"] input').uncheck()
    dialog.locator('li[data-col="codec"] input').check()
    for _ in range(20):  # move "Call ID" to the top
        if dialog.locator("li").first.get_attribute("data-col") == "call_id":
            break
        dialog.locator('li[data-col="call_id"] input').check()
        dialog.locator('li[data-col="call_id"] button.up').click()
    dialog.locator("#columns-apply").click()
    expect(page.locator("#grid thead th[data-col]").first).to_have_attribute("data-col", "call_id")
    cols = page.locator("#grid thead th[data-col]").evaluate_all("t => t.map(x => x.dataset.col)")
    assert "codec" in cols and "release_reason" not in cols
    page.goto("/?range=last_7_days")   # no columns in the URL: the saved choice applies
    cols2 = page.locator("#grid thead th[data-col]").evaluate_all("t => t.map(x => x.dataset.col)")
    assert cols2 == cols
    shot(page, "operator-columns")

    # sign out: the session is over
    page.locator("#logout").click()
    expect(page).to_have_url(re.compile(r"/login"))
    page.goto("/?range=all")
    expect(page).to_have_url(re.compile(r"/login"))
    watch.assert_clean()


def test_ranges_dst_timezones_and_csv(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator", path="/?range=custom&from=2026-03-29T00:00&to=2026-03-30T00:00"
                                   "&tz=Europe%2FBerlin&columns=call_id,start_time,billsec")
    # the local day of the change is 23 hours long: 00:30 UTC on the 29th is in it,
    # 22:30 UTC on the 29th (00:30 on the 30th, summer time) is not
    expect_grid(page, ["acme-dst-noon", "acme-dst-after", "acme-dst-night"])
    assert column(page, "start_time") == ["2026-03-29 14:00:00", "2026-03-29 03:30:00",
                                          "2026-03-29 01:30:00"]
    expect(page.locator("#status")).to_contain_text("from 2026-03-28 23:00 to 2026-03-29 22:00 UTC")
    shot(page, "dst-berlin")
    name1, csv_berlin = download_text(page, lambda: page.locator("#download").click())
    assert name1.endswith("-utc.csv")

    # switch the zone: displayed times change, the range is re-read in the new zone
    page.locator("#tz").select_option("America/New_York")
    expect(page.locator("#zone-label")).to_have_text("America/New_York")
    assert "tz=America%2FNew_York" in page.url
    # same wall-clock range, New York: 04:00 UTC on the 29th to 04:00 UTC on the 30th
    expect_grid(page, ["acme-dst-next", "acme-dst-noon"])
    assert column(page, "start_time") == ["2026-03-29 18:30:00", "2026-03-29 08:00:00"]
    # the zone choice is saved: without tz in the URL it is used
    page.goto("/?range=custom&from=2026-03-29T00:00&to=2026-03-30T00:00&columns=call_id,start_time")
    expect(page.locator("#zone-label")).to_have_text("America/New_York")
    # a zone switch changes the times shown, never the download (always UTC)
    rows_at = {}
    files = {}
    for zone in ("Europe/Berlin", "Asia/Tokyo"):
        page.goto(f"/?range=all&number=4930999000&columns=call_id,start_time&tz={quote(zone)}")
        rows_at[zone] = column(page, "start_time")
        _, files[zone] = download_text(page, lambda: page.locator("#download").click())
    assert rows_at["Europe/Berlin"][0] == "2026-03-30 00:30:00"
    assert rows_at["Asia/Tokyo"][0] == "2026-03-30 07:30:00"
    assert files["Europe/Berlin"] == files["Asia/Tokyo"]
    rows = list(csv.DictReader(io.StringIO(files["Asia/Tokyo"])))
    assert [(r["call_id"], r["start_time"]) for r in rows] == [
        (cid, start.strftime("%Y-%m-%d %H:%M:%S.000"))
        for cid, start in sorted(webstore.DST_CALLS.items(), key=lambda kv: kv[1], reverse=True)]
    assert csv_berlin.splitlines()[0] == '"call_id","start_time","billsec"'
    assert [r["call_id"] for r in csv.DictReader(io.StringIO(csv_berlin))] == [
        "acme-dst-noon", "acme-dst-after", "acme-dst-night"]
    # the download button says what it gives
    expect(page.locator("#download")).to_contain_text("UTC")
    page.goto("/?range=custom&from=2026-03-29T00:00&to=2026-03-30T00:00&tz=Europe%2FBerlin"
              "&columns=call_id,start_time,billsec")

    # a custom range typed in the toolbar
    page.locator("#range").select_option("custom")
    page.locator("#from").fill("2026-03-28T13:00:00")
    page.locator("#to").fill("2026-03-28T13:00:01")
    page.locator("#apply").click()
    expect_grid(page, ["acme-dst-before"])
    # presets are evaluated in the display zone
    page.locator("#range").select_option("last_7_days")
    expect(page.locator("#range")).to_have_value("last_7_days")
    assert "range=last_7_days" in page.url
    shot(page, "ranges")
    watch.assert_clean()


def test_connected_only_and_number_search(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator", path="/?range=all&columns=call_id,src_number,dst_number,billsec")
    acme = [c for c in server.calls() if c["tenant"] == "acme"]
    page.get_by_label("Connected only").check()
    expect(page.locator("#connected")).to_be_checked()
    assert "connected=1" in page.url
    assert all(int(v) > 0 for v in column(page, "billsec"))
    page.get_by_label("Connected only").uncheck()
    expect(page.locator("#connected")).not_to_be_checked()

    def search(text: str) -> set[str]:
        page.locator("#number").fill(text)
        with page.expect_navigation():   # the box holds the text in the old page too
            page.locator("#number").press("Enter")
        expect(page.locator("#number")).to_have_value(text)
        return set(grid_ids(page))

    def matching(pred) -> set[str]:
        return {c["call_id"] for c in acme if pred(c["src"]) or pred(c["dst"])}

    # the syntax is explained in a tooltip next to the field
    page.locator("#number").focus()
    expect(page.locator("#number-help")).to_be_visible()
    expect(page.locator("#number-help")).to_contain_text("starts with")
    shot(page, "number-help")
    assert search("15550001111") == matching(lambda n: n == "15550001111") == {"acme-num-exact"}
    assert search("777*") == matching(lambda n: n.startswith("777")) == {"acme-num-prefix"}
    assert search("*6549876") == matching(lambda n: n.endswith("6549876")) == {"acme-num-suffix"}
    assert search("*555999*") == matching(lambda n: "555999" in n) == {"acme-num-contains"}
    assert search("15550001111, 777*") == {"acme-num-exact", "acme-num-prefix"}
    assert search("+1 555-000-1111") == {"acme-num-exact"}
    got = search("4420*, !*0001*")
    assert got
    for src, dst in zip(column(page, "src_number"), column(page, "dst_number")):
        assert (src.startswith("4420") or dst.startswith("4420")) and "0001" not in src + dst
    shot(page, "number-search")
    # a bad search says what is wrong, where the grid would be
    page.locator("#number").fill("abc")
    page.locator("#number").press("Enter")
    expect(page.locator("#problem")).to_contain_text("number: cannot search for 'abc'")
    watch.assert_clean(allowed=("status of 400",))


def test_detail_recording_and_download_selected(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator", path="/?range=last_7_days&number=4420555*&tz=Europe%2FBerlin")
    expect_grid(page, ["acme-rec-1", "acme-rec-gone"])
    # row detail: every visible field, money exact, times with their offset
    page.get_by_role("button", name="Details of call acme-rec-1").click()
    drawer = page.locator("#drawer")
    expect(drawer).to_be_visible()
    expect(drawer.locator('dd[data-field="customer_charge"]')).to_have_text("0.0123")
    expect(drawer.locator('dd[data-field="carrier_id"]')).to_have_text("K1 — Carrier One")
    expect(drawer.locator('dd[data-field="start_time"]')).to_contain_text("+01:00")
    assert drawer.locator("dt").count() == 27   # every field an operator sees
    shot(page, "detail")
    page.keyboard.press("Escape")
    expect(drawer).to_be_hidden()

    # play: an inline player that can seek, through the same-origin route
    page.get_by_role("button", name="Play recording of call acme-rec-1").click()
    audio = page.locator("audio.inline-player")
    expect(audio).to_be_visible()
    page.wait_for_function("() => { const a = document.querySelector('audio.inline-player');"
                           " return a && a.readyState >= 1 && a.duration > 2; }")
    page.evaluate("() => { document.querySelector('audio.inline-player').currentTime = 2.0; }")
    page.wait_for_function("() => document.querySelector('audio.inline-player').currentTime >= 1.9")
    assert page.evaluate("() => document.querySelector('audio.inline-player').src").startswith(
        server.base + "/web/recording/")
    shot(page, "recording-play")
    # download it
    with page.expect_download() as info:
        page.get_by_role("link", name="Download recording of call acme-rec-1").click()
    d = info.value
    assert d.suggested_filename == "recording-acme-rec-1.wav"
    assert Path(d.path()).read_bytes() == server.rec.files["/rec1.wav"]
    # a recording whose file is gone says so
    page.get_by_role("button", name="Play recording of call acme-rec-gone").click()
    expect(page.locator("#grid [role=alert]")).to_have_text("Recording not available")

    # download selected: exactly the ticked rows
    page.goto("/?range=last_7_days")
    boxes = page.locator(".row-sel")
    chosen = [boxes.nth(i).get_attribute("value") for i in (0, 3, 7)]
    for i in (0, 3, 7):
        boxes.nth(i).check()
    expect(page.locator("#selected-count")).to_have_text("3")
    name, text = download_text(page, lambda: page.locator("#selected-btn").click())
    assert name.endswith("-utc.csv")
    assert sorted(csv_ids(text)) == sorted(chosen)
    page.locator("#select-page").check()
    expect(page.locator("#selected-count")).to_have_text("100")
    shot(page, "selected")
    watch.assert_clean(allowed=("status of 404",))


def test_saved_view_url_reload_and_back(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator", path="/?range=last_7_days&tz=UTC")
    page.locator("#customer").select_option("C2")
    expect(page.locator("#scope")).to_contain_text("Customer CDR · C2")
    page.get_by_label("Connected only").check()
    expect(page.locator("#connected")).to_be_checked()
    page.locator('#grid th[data-col="duration"] a.sort').click()
    expect(page.locator('#grid th[data-col="duration"]')).to_have_attribute("aria-sort", "ascending")
    view_url = page.url
    ids = grid_ids(page)
    expected = sorted((c for c in server.calls() if c["tenant"] == "acme" and c["customer"] == "C2"
                       and c["billsec"] > 0 and c["start"] >= server.now - dt.timedelta(days=6)),
                      key=lambda c: (c["billsec"] + 5, c["call_id"]))
    assert ids == [c["call_id"] for c in expected[:100]]
    # reload: the URL restores everything
    page.reload()
    expect_grid(page, ids)
    expect(page.locator("#customer")).to_have_value("C2")
    expect(page.locator("#connected")).to_be_checked()
    # save it as a view, shared
    page.locator("#views-btn").click()
    page.locator("#view-name").fill("C2 connected by duration")
    page.get_by_label("Share with my organisation").check()
    page.get_by_role("button", name="Save view").click()
    expect(page.locator(".note")).to_contain_text("Saved view")
    # go elsewhere, then open the view
    page.goto("/?range=all&tz=UTC")
    page.locator("#views-btn").click()
    page.get_by_role("link", name="C2 connected by duration").click()
    expect(page.locator("#customer")).to_have_value("C2")
    expect_grid(page, ids)
    # Back and Forward walk through the views
    page.go_back()
    expect(page.locator("#customer")).to_have_value("")
    page.go_forward()
    expect(page.locator("#customer")).to_have_value("C2")
    shot(page, "saved-view")
    # unshare and delete it
    page.locator("#views-btn").click()
    page.locator(".view-list li", has_text="C2 connected by duration").get_by_role(
        "button", name="Unshare").click()
    expect(page.locator(".note")).to_contain_text("now private")
    page.locator("#views-btn").click()
    page.get_by_role("button", name="Delete view C2 connected by duration").click()
    expect(page.locator(".note")).to_contain_text("Deleted view")
    page.locator("#views-btn").click()
    expect(page.locator(".view-list")).to_have_count(0)
    assert view_url  # the bookmark still works without the saved view
    page.goto(view_url)
    expect_grid(page, ids)
    watch.assert_clean()


# -- customer and carrier ----------------------------------------------------------------

def test_customer_sees_only_its_own_and_tampering_gets_nothing(ctx: BrowserContext,
                                                               server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "cust1", path="/?range=all")
    mine = {c["call_id"] for c in server.calls() if c["tenant"] == "acme" and c["customer"] == "C1"}
    foreign = {c["call_id"] for c in server.calls()} - mine
    expect(page.locator("#scope")).to_contain_text("Customer C1")
    expect(page.locator("#customer")).to_have_count(0)   # no pickers
    seen = set(grid_ids(page))
    assert seen and seen <= mine
    cols = page.locator("#grid thead th[data-col]").evaluate_all("t => t.map(x => x.dataset.col)")
    assert "carrier_cost" not in cols and "carrier_id" not in cols
    page.locator("#columns-btn").click()
    assert page.locator('#columns-list li[data-col="carrier_cost"]').count() == 0
    page.keyboard.press("Escape")
    shot(page, "customer-grid")

    # tampered URLs: refused or narrowed, never widened
    for url, message in (
            ("/?range=all&customer=C2", "cannot narrow to another account"),
            ("/?range=all&tenant=globex", "cannot narrow to another account"),
            ("/?range=all&columns=call_id,carrier_cost", "carrier_cost"),
            ("/?range=all&sort=carrier_cost", "carrier_cost")):
        page.goto(url)
        expect(page.locator("#problem")).to_contain_text(message)
        expect_grid(page, [])
        assert not any(f in page.content() for f in foreign)
    page.goto("/?range=all&f=carrier_id:equal:3")
    expect(page.locator(".chip.bad .chip-error")).to_contain_text("carrier_id")
    expect_grid(page, [])
    q = quote(json.dumps({"condition": "OR", "rules": [
        {"field": "call_id", "operator": "begins_with", "value": "globex"},
        {"field": "customer_id", "operator": "equal", "value": 2}]}))
    page.goto(f"/?range=all&q={q}")
    expect_grid(page, [])
    shot(page, "customer-tampered")

    # tampered requests from the page's own session
    csrf = page.locator("#app").get_attribute("data-csrf")
    for call_id in ("acme-0001", "globex-0"):
        assert call_id in foreign
        r = page.request.get(f"/web/cdrs/{call_id}")
        assert r.status == 404 and call_id not in r.text()
        r = page.request.get(f"/web/recording/{call_id}")
        assert r.status == 404
    r = page.request.get("/web/cdrs.csv?range=all&customer=C2")
    assert r.status == 403
    r = page.request.get("/web/cdrs.csv?range=all&columns=call_id")
    assert r.ok and set(csv_ids(r.text())) == mine
    r = page.request.post("/web/selected.csv", form={
        "csrf_token": csrf, "range": "all", "columns": "call_id",
        "call_id": "acme-0001"}, headers={"Origin": server.base})
    assert r.ok and csv_ids(r.text()) == []
    # the recording of its own call plays
    r = page.request.get("/web/recording/acme-rec-1", headers={"Range": "bytes=0-99"})
    assert r.status == 206 and len(r.body()) == 100
    watch.assert_clean(allowed=("status of 400", "status of 404", "status of 403"))


def test_carrier_sees_its_calls_and_fields(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "carrier1", path="/?range=all&columns=call_id,carrier_cost,carrier_rate")
    mine = [c for c in server.calls() if c["tenant"] == "acme" and c["carrier"] == "K1"]
    mine.sort(key=lambda c: (c["start"], c["call_id"]), reverse=True)
    expect(page.locator("#scope")).to_contain_text("Carrier K1")
    expect_grid(page, [c["call_id"] for c in mine[:100]])
    costs = column(page, "carrier_cost")
    assert costs[0] == (webstore_money(mine[0]["cost"]))
    page.goto("/?range=all&columns=call_id,customer_charge")
    expect(page.locator("#problem")).to_contain_text("customer_charge")
    shot(page, "carrier-grid")
    watch.assert_clean(allowed=("status of 400",))


def webstore_money(text: str | None) -> str:
    if text is None:
        return ""
    whole, frac = text.split(".")
    frac = frac.rstrip("0").ljust(2, "0")
    return f"{whole}.{frac}"


def test_api_key_sign_in_and_keyboard(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    page.goto("/login")
    page.get_by_text("Sign in with an API key instead").click()
    page.locator("input[name=api_key]").fill("cdrh_nope_nope")
    page.get_by_role("button", name="Sign in with key").click()
    expect(page.locator("#login-error")).to_contain_text("not valid")
    page.get_by_text("Sign in with an API key instead").click()
    page.locator("input[name=api_key]").fill(server.secrets["tenant:acme/carrier:K1"])
    page.get_by_role("button", name="Sign in with key").click()
    expect(page.locator("#scope")).to_contain_text("Carrier K1")
    settle(page)
    # no secret reaches JavaScript
    assert page.evaluate("() => document.cookie").find("cdrhouse_session") < 0
    # keyboard: reach a sort header and a row's details with Tab and Enter
    page.goto("/?range=all")
    page.locator('#grid th[data-col="billsec"] a.sort').focus()
    page.keyboard.press("Enter")
    expect(page.locator('#grid th[data-col="billsec"]')).to_have_attribute("aria-sort", "ascending")
    page.locator("button.details").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#drawer")).to_be_visible()
    expect(page.locator("#drawer-close")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("button.details").first).to_be_focused()
    # dark mode renders too
    page.emulate_media(color_scheme="dark")
    shot(page, "dark")
    # narrow window: the toolbar wraps, the grid scrolls
    page.set_viewport_size({"width": 1024, "height": 768})
    shot(page, "narrow-1024")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 1024
    watch.assert_clean(allowed=("status of 401",))
