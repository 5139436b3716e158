"""The web viewer's SQL page (`/sql`) in a real browser: Debian's Chromium driven by
Playwright against a real `cdrhouse serve` (fixtures and helpers: tests/browser.py).

Each scenario checks the page against the API itself (`POST /v1/sql`, `/v1/sql.csv`
with an API key of the same principal) or against the known dataset
(tests/webstore.py): the page has no query path of its own.

Run: `python -m pytest -n 0 tests/test_web_sql_browser.py` (needs `apt-get install -y chromium`).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import sys
import time
import urllib.error
import urllib.request
import zoneinfo
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from browser import (  # noqa: E402,F401  (fixtures are found by name)
    Server, Watch, browser_type_launch_args, ctx, download_text, server, shot)
import webstore  # noqa: E402
from playwright.sync_api import BrowserContext, Page, expect  # noqa: E402

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
UTC = dt.timezone.utc

# every CSP violation the page reports ends up as a console error (Watch catches it)
CSP_WATCH = """document.addEventListener('securitypolicyviolation', e =>
  console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));"""
#: Chromium's own contenteditable editing, replacing highlighted text, tries to keep the
#: look of the removed spans with a `style=` attribute; the CSP blocks it (style-src-attr)
#: and CodeMirror redraws the line from its state anyway. Only that violation is allowed:
#: a blocked <style> element (style-src-elem: CodeMirror's own styles) or script fails.
EDITING_NOISE = ("Applying inline style violates", "CSP violation: style-src-attr")


def open_sql(ctx: BrowserContext, user: str) -> tuple[Page, Watch]:
    """Sign in as `user` on the way to /sql and wait for the editor."""
    page = ctx.new_page()
    watch = Watch(page)
    page.add_init_script(CSP_WATCH)
    page.goto("/sql")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fsql"))
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(webstore.PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#sqlapp")).to_have_attribute("data-ready", "1")
    return page, watch


def api(server: Server, who: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(server.base + path, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {server.secrets[who]}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def set_sql(page: Page, text: str) -> None:
    """Replace the editor's text as a paste over select-all would (typing is tested once;
    autocomplete would get in the way of typing every query)."""
    page.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(text)
    expect(page.locator(".cm-content")).to_have_text(text)


def grid(page: Page) -> tuple[list[str], list[list[str]]]:
    heads = page.locator("#result thead th").evaluate_all("ths => ths.map(t => t.dataset.col)")
    rows = page.locator("#result tbody tr[data-row]").evaluate_all(
        "trs => trs.map(tr => [...tr.cells].map(td => td.textContent))")
    return heads, rows


def run_and_wait(page: Page, state: str = "done") -> None:
    page.locator(".cm-content").press("Control+Enter")
    expect(page.locator("#sqlapp")).to_have_attribute("data-state", state)


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of the service's Prometheus metrics (0 when absent)."""
    text = urllib.request.urlopen(server.base + "/metrics", timeout=10).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        # every sample also names the instance (api/scaleout.py): not one of the labels asked
        got = sorted(p for p in m.group(1).split(",") if not p.startswith("instance=")) if m else []
        if m and ",".join(got) == want:
            return float(m.group(2))
    return 0.0


# -- operator: type, autocomplete, parameters, run, sort ----------------------------------

def test_operator_types_with_autocomplete_runs_and_sorts(ctx: BrowserContext, server: Server) -> None:
    page, watch = open_sql(ctx, "operator")
    # CodeMirror's styles come in a <style> carrying this response's nonce: the page's CSP
    # allows exactly that nonce for styles (and nothing new for scripts); the viewer's
    # page keeps the strict policy
    csp = page.request.get("/sql").headers["content-security-policy"]
    nonce = page.locator("#sqlapp").get_attribute("data-style-nonce")
    assert re.search(r"style-src 'self' 'nonce-[A-Za-z0-9_-]{20,}'", csp)
    assert f"'nonce-{nonce}'" not in csp                       # fresh per response
    assert "script-src 'self';" in csp
    assert "nonce" not in page.request.get("/").headers["content-security-policy"]
    nonces = page.evaluate("() => [...document.querySelectorAll('style')].map(s => s.nonce)")
    assert nonces and set(nonces) == {nonce}
    # the styles applied: CodeMirror's base theme lays the editor out as a flex column
    assert page.locator(".cm-editor").evaluate("e => getComputedStyle(e).display") == "flex"
    expect(page.locator("#tz")).to_have_value("Europe/Berlin")  # the browser's zone

    # type with autocomplete: a visible field, then the logical table
    page.locator(".cm-content").click()
    page.keyboard.type("SELECT customer_id, count() AS calls, sum(bills")
    option = page.locator(".cm-tooltip-autocomplete li", has_text=re.compile(r"^billsec"))
    expect(option.first).to_be_visible()
    shot(page, "sql-autocomplete")
    # a click applies the option; Enter within CodeMirror's interactionDelay (75 ms after
    # the list opens, easily reached on a loaded CI machine) would insert a newline instead
    option.first.click()
    expect(page.locator(".cm-content")).to_contain_text("sum(billsec")
    # the cursor stays before the auto-closed ")", which the next ")" types over
    page.keyboard.type(") AS talk FROM daily_s")
    expect(page.locator(".cm-tooltip-autocomplete li", has_text="daily_summary").first).to_be_visible()
    page.keyboard.press("Escape")
    page.keyboard.press("Backspace")
    for _ in "daily_":
        page.keyboard.press("Backspace")
    page.keyboard.type("cdrs WHERE start_time >= {from:DateTime} GROUP BY customer_id")
    text = page.locator(".cm-content").inner_text()
    assert "sum(billsec) AS talk FROM cdrs WHERE start_time >= {from:DateTime}" in text, text

    # the parameter gets a date-time input in the display zone, sent as UTC
    since_local = (server.now.astimezone(BERLIN) - dt.timedelta(days=3)).replace(
        minute=0, second=0, microsecond=0, tzinfo=None)
    field = page.locator("#param-from")
    expect(field).to_have_attribute("type", "datetime-local")
    expect(page.locator('.param[data-name="from"] .ptype')).to_contain_text("Europe/Berlin")
    field.fill(since_local.strftime("%Y-%m-%dT%H:%M:%S"))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/v1/sql" in r.url else None)
    field.press("Control+Enter")          # runs from a parameter input too
    expect(page.locator("#sqlapp")).to_have_attribute("data-state", "done")
    since_utc = since_local.replace(tzinfo=BERLIN).astimezone(UTC)
    heads, rows = grid(page)
    assert heads == ["customer_id", "calls", "talk"]

    # the same SQL through the API gives the same rows; and they are the dataset's
    status, raw = api(server, "tenant:acme", "/v1/sql", {
        "sql": text, "params": {"from": since_utc.strftime("%Y-%m-%d %H:%M:%S")}})
    assert status == 200, raw
    answer = json.loads(raw)
    assert sorted(rows) == sorted([[str(v) for v in r] for r in answer["rows"]])
    want: dict[int, list[int]] = {}
    for c in server.calls():
        if c["tenant"] == "acme" and c["start"] >= since_utc:
            cid = webstore.IDS[("acme", c["customer"])]
            want.setdefault(cid, [0, 0])
            want[cid][0] += 1
            want[cid][1] += c["billsec"]
    assert sorted(rows) == sorted([[str(k), str(v[0]), str(v[1])] for k, v in want.items()])
    expect(page.locator("#sql-status")).to_contain_text(f"{len(rows)} row")

    # sort in the page: ascending, descending, back to the answer's order; no new query
    asked = len(requests)
    page.locator('#result th[data-col="talk"] button').click()
    expect(page.locator('#result th[data-col="talk"]')).to_have_attribute("aria-sort", "ascending")
    talk = [int(r[2]) for r in grid(page)[1]]
    assert talk == sorted(talk)
    page.locator('#result th[data-col="talk"] button').click()
    expect(page.locator('#result th[data-col="talk"]')).to_have_attribute("aria-sort", "descending")
    talk = [int(r[2]) for r in grid(page)[1]]
    assert talk == sorted(talk, reverse=True)
    page.locator('#result th[data-col="talk"] button').click()
    expect(page.locator('#result th[data-col="talk"]')).to_have_attribute("aria-sort", "none")
    assert grid(page)[1] == [[str(v) for v in r] for r in answer["rows"]]
    assert len(requests) == asked, "sorting must not query again"
    shot(page, "sql-result")
    watch.assert_clean()   # typed only: not even Chromium's editing noise


def test_sort_many_rows_by_time_and_text(ctx: BrowserContext, server: Server) -> None:
    """Times shown in the display zone sort as instants; text sorts as text; NULL last."""
    page, watch = open_sql(ctx, "operator")
    set_sql(page, "SELECT call_id, start_time, customer_charge FROM cdrs "
                  "WHERE call_id LIKE 'acme-00%' ORDER BY call_id LIMIT 40")
    run_and_wait(page)
    heads, rows = grid(page)
    assert heads == ["call_id", "start_time", "customer_charge"]
    by_id = {c["call_id"]: c for c in server.calls() if c["tenant"] == "acme"}
    assert [r[0] for r in rows] == sorted(i for i in by_id if i.startswith("acme-00"))[:40]
    # each time is the stored UTC instant shown in Europe/Berlin
    for r in rows:
        local = by_id[r[0]]["start"].astimezone(BERLIN).strftime("%Y-%m-%d %H:%M:%S")
        assert r[1] == local
    page.locator('#result th[data-col="start_time"] button').click()
    ids = [r[0] for r in grid(page)[1]]
    assert ids == sorted(ids, key=lambda i: by_id[i]["start"])
    page.locator('#result th[data-col="customer_charge"] button').click()
    charges = [r[2] for r in grid(page)[1]]
    numbers = [float(c) for c in charges if c != "NULL"]
    assert numbers == sorted(numbers) and "NULL" in charges
    assert charges[-charges.count("NULL"):] == ["NULL"] * charges.count("NULL")  # NULL last
    watch.assert_clean(allowed=EDITING_NOISE)


# -- cancel ------------------------------------------------------------------------------------

SLOW = "SELECT count() FROM cdrs AS a, cdrs AS b, cdrs AS c, cdrs AS d, cdrs AS e"


def test_cancel_a_slow_query_stops_it_on_the_server(ctx: BrowserContext, server: Server) -> None:
    """Cancel aborts the request; the API sees the client go away and kills the ClickHouse
    query (KILL QUERY … SYNC), and only then answers 409 `query-cancelled`, which its
    metrics count. Uncancelled, this query would run until the tenant's 120 s limit and
    end as `limit-exceeded`, never as `query-cancelled`."""
    page, watch = open_sql(ctx, "operator")
    before = metric(server, "cdrhouse_errors_total", kind="query-cancelled")
    set_sql(page, SLOW)
    run_and_wait(page, "running")
    expect(page.locator("#cancel")).to_be_enabled()
    expect(page.locator("#run")).to_be_disabled()
    expect(page.locator("#sql-status")).to_contain_text("Running…")
    page.wait_for_timeout(1500)                   # let it reach ClickHouse
    shot(page, "sql-running")
    page.locator("#cancel").click()
    expect(page.locator("#sqlapp")).to_have_attribute("data-state", "cancelled")
    expect(page.locator("#sql-status")).to_contain_text("Cancelled")
    expect(page.locator("#sql-problem")).to_be_hidden()
    shot(page, "sql-cancelled")
    deadline = time.monotonic() + 90
    while metric(server, "cdrhouse_errors_total", kind="query-cancelled") <= before:
        assert time.monotonic() < deadline, "the server never cancelled the query"
        time.sleep(0.3)
    assert metric(server, "cdrhouse_http_requests_total", route="/v1/sql", method="POST",
                  status="409") >= 1
    # the page is usable at once
    set_sql(page, "SELECT 1 AS one")
    run_and_wait(page)
    assert grid(page)[1] == [["1"]]
    # the aborted fetch is the only console noise allowed
    watch.assert_clean(allowed=("Failed to load resource", "net::ERR_ABORTED") + EDITING_NOISE)


# -- saved queries and history ------------------------------------------------------------------

def test_save_a_query_and_find_it_after_reload(ctx: BrowserContext, server: Server) -> None:
    page, watch = open_sql(ctx, "operator")
    sql = "SELECT carrier_id, count() AS calls FROM cdrs WHERE billsec >= {min:UInt32} GROUP BY carrier_id ORDER BY carrier_id"
    set_sql(page, sql)
    expect(page.locator("#param-min")).to_have_attribute("type", "number")
    page.locator("#param-min").fill("100")
    run_and_wait(page)
    first = grid(page)[1]
    # an empty name is refused in the dialog; then saved and shared
    page.locator("#save").click()
    page.locator("#save-name").fill("   ")
    page.locator("#save-ok").click()
    expect(page.locator("#save-error")).to_have_text("Give the query a name.")
    page.locator("#save-name").fill("Carriers over 100 s")
    expect(page.locator("#save-error")).to_be_hidden()
    page.locator("#save-shared").check()
    shot(page, "sql-save-dialog")
    page.locator("#save-ok").click()
    expect(page.locator("#save-dialog")).to_be_hidden()
    expect(page.locator("#saved li", has_text="Carriers over 100 s")).to_contain_text("shared")

    # stored as the API's saved query of kind sql, with its parameters
    page.reload()
    expect(page.locator("#sqlapp")).to_have_attribute("data-ready", "1")
    listed = json.loads(page.request.get("/v1/queries").body())["queries"]
    mine = [q for q in listed if q["name"] == "Carriers over 100 s"]
    assert len(mine) == 1 and mine[0]["kind"] == "sql" and mine[0]["shared"] is True
    assert mine[0]["body"]["sql"] == sql and mine[0]["body"]["params"] == {"min": 100}
    expect(page.locator(".cm-placeholder")).to_be_visible()      # a fresh, empty editor
    # history (this browser) holds the run; the saved list the query
    expect(page.locator("#history li").first).to_contain_text("SELECT carrier_id")
    page.locator("#saved li", has_text="Carriers over 100 s").locator("button.open").click()
    expect(page.locator(".cm-content")).to_have_text(sql)
    expect(page.locator("#param-min")).to_have_value("100")
    run_and_wait(page)
    assert grid(page)[1] == first
    shot(page, "sql-saved-reloaded")
    # saving an opened query of yours under its name replaces it (PUT), not a copy
    page.locator("#param-min").fill("200")
    page.locator("#save").click()
    expect(page.locator("#save-name")).to_have_value("Carriers over 100 s")
    expect(page.locator("#save-replace-note")).to_contain_text("Replaces your saved query")
    expect(page.locator("#save-shared")).to_be_checked()
    page.locator("#save-ok").click()
    expect(page.locator("#save-dialog")).to_be_hidden()
    listed = json.loads(page.request.get("/v1/queries").body())["queries"]
    mine = [q for q in listed if q["name"] == "Carriers over 100 s"]
    assert len(mine) == 1 and mine[0]["body"]["params"] == {"min": 200}
    page.locator("#param-min").fill("100")

    # shared per the API's rules: the tenant's customer sees the operator's shared
    # query, may not delete it, and a run is guarded for the customer
    set_sql(page, "SELECT customer_id, count() AS calls FROM cdrs GROUP BY customer_id ORDER BY customer_id")
    page.locator("#save").click()
    page.locator("#save-name").fill("Calls per customer")
    page.locator("#save-shared").check()
    page.locator("#save-ok").click()
    expect(page.locator("#saved li", has_text="Calls per customer")).to_contain_text("shared")
    other = ctx.browser.new_context(base_url=server.base, timezone_id="UTC")
    try:
        cust, cwatch = open_sql(other, "cust1")
        item = cust.locator("#saved li", has_text="Calls per customer")
        expect(item).to_contain_text("shared by tenant:acme")
        expect(item.locator("button.delete")).to_have_count(0)
        expect(cust.locator("#saved li", has_text="Carriers over 100 s")).to_contain_text("shared by")
        item.locator("button.open").click()
        run_and_wait(cust)
        own = sum(1 for c in server.calls() if c["tenant"] == "acme" and c["customer"] == "C1")
        assert grid(cust)[1] == [[str(webstore.IDS[("acme", "C1")]), str(own)]]
        shot(cust, "sql-shared-as-customer")
        cwatch.assert_clean(allowed=EDITING_NOISE)
    finally:
        other.close()

    # delete it again (owner only)
    page.once("dialog", lambda d: d.accept())
    page.locator("#saved li", has_text="Carriers over 100 s").locator("button.delete").click()
    expect(page.locator("#saved li", has_text="Carriers over 100 s")).to_have_count(0)
    # history restores a query with its parameter
    page.locator("#history button.restore").first.click()
    expect(page.locator(".cm-content")).to_have_text(sql)
    expect(page.locator("#param-min")).to_have_value("100")
    watch.assert_clean(allowed=EDITING_NOISE)


# -- refusals, limits and the customer's view ----------------------------------------------------

def test_customer_sees_refusals_in_full_and_only_own_rows(ctx: BrowserContext, server: Server) -> None:
    page, watch = open_sql(ctx, "cust1")
    expect(page.locator("#scope")).to_contain_text("Customer C1")
    # the viewer links to the SQL page and back
    page.get_by_role("navigation", name="Pages").get_by_role("link", name="CDRs").click()
    expect(page.locator("#grid")).to_be_visible()
    page.get_by_role("navigation", name="Pages").get_by_role("link", name="SQL").click()
    expect(page).to_have_url(re.compile(r"/sql$"))
    expect(page.locator("#sqlapp")).to_have_attribute("data-ready", "1")
    # autocomplete offers only what a customer may see
    page.locator(".cm-content").click()
    page.keyboard.type("SELECT c")
    page.keyboard.press("Control+Space")
    expect(page.locator(".cm-tooltip-autocomplete li", has_text="customer_charge").first).to_be_visible()
    offered = page.locator(".cm-tooltip-autocomplete li").all_inner_texts()
    # (columns starting with the word rank first: a carrier column would be among them)
    assert any(o.startswith("cdrs") for o in offered), offered
    assert not any(o.startswith("carrier") for o in offered), offered
    page.keyboard.press("Escape")
    schema = page.locator("#schema").text_content()  # (also the folded tables)
    assert "carrier_cost" not in schema and "customer_charge" in schema

    # a refused SQL: the API's message, in full
    for sql, who in (("SELECT carrier_cost FROM cdrs", "bad-sql"),
                     ("SELECT arrayJoin(range(200000)) AS n", "limit-exceeded")):
        set_sql(page, sql)
        run_and_wait(page, "failed")
        status, raw = api(server, "tenant:acme/customer:C1", "/v1/sql", {"sql": sql})
        problem = json.loads(raw)
        assert problem["type"].endswith(who)
        banner = page.locator("#sql-problem")
        expect(banner).to_be_visible()
        expect(banner.locator(".detail")).to_have_text(problem["detail"])
        expect(banner).to_contain_text(f"{problem['title']} ({status})")
        shot(page, f"sql-refused-{who}")
    assert "add LIMIT, aggregate" in problem["detail"]         # the advice is shown too

    # only its own rows, even when the SQL asks for everything
    set_sql(page, "SELECT customer_id, count() AS calls FROM cdrs GROUP BY customer_id")
    run_and_wait(page)
    expect(page.locator("#sql-problem")).to_be_hidden()
    own = sum(1 for c in server.calls() if c["tenant"] == "acme" and c["customer"] == "C1")
    assert grid(page)[1] == [[str(webstore.IDS[("acme", "C1")]), str(own)]]
    for hostile in ("SELECT count() AS n FROM cdrs WHERE customer_id = 2 OR 1 = 1",
                    "SELECT count() AS n FROM (SELECT * FROM cdrs) AS x",
                    "SELECT count() AS n FROM cdrs AS a WHERE a.call_id IN (SELECT call_id FROM cdrs)"):
        set_sql(page, hostile)
        run_and_wait(page)
        assert grid(page)[1] == [[str(own)]], hostile
    set_sql(page, "SELECT count() FROM system.processes")
    run_and_wait(page, "failed")
    expect(page.locator("#sql-problem")).to_contain_text("SQL refused")
    watch.assert_clean(allowed=("Failed to load resource",) + EDITING_NOISE)  # + the 4xx answers


# -- CSV ---------------------------------------------------------------------------------------

def test_csv_download_is_the_apis_csv_in_utc(ctx: BrowserContext, server: Server) -> None:
    page, watch = open_sql(ctx, "operator")
    # a parameter whose type names a zone is sent as that zone's wall time
    sql = ("SELECT call_id, start_time, billsec FROM cdrs WHERE start_time >= {from:DateTime} "
           "AND start_time < {until:DateTime('Asia/Tokyo')} ORDER BY start_time DESC, call_id LIMIT 25")
    set_sql(page, sql)
    since_local = (server.now.astimezone(BERLIN) - dt.timedelta(hours=5)).replace(
        second=0, microsecond=0, tzinfo=None)
    until_local = since_local + dt.timedelta(hours=2)
    page.locator("#param-from").fill(since_local.strftime("%Y-%m-%dT%H:%M:%S"))
    page.locator("#param-until").fill(until_local.strftime("%Y-%m-%dT%H:%M:%S"))
    name, text = download_text(page, lambda: page.locator("#download").click())
    assert re.fullmatch(r"sql-acme-\d{8}T\d{6}Z\.csv", name), name
    since_utc = since_local.replace(tzinfo=BERLIN).astimezone(UTC)
    until_utc = until_local.replace(tzinfo=BERLIN).astimezone(UTC)
    status, raw = api(server, "tenant:acme", "/v1/sql.csv", {"sql": sql, "params": {
        "from": since_utc.strftime("%Y-%m-%d %H:%M:%S"),
        "until": until_utc.astimezone(zoneinfo.ZoneInfo("Asia/Tokyo")).strftime("%Y-%m-%d %H:%M:%S")}})
    assert status == 200
    assert text == raw.decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    want = sorted((c for c in server.calls() if c["tenant"] == "acme"
                   and since_utc <= c["start"] < until_utc),
                  key=lambda c: (c["start"], c["call_id"]), reverse=True)[:25]
    assert 10 <= len(want) <= 25                # (a call every 7 minutes)
    assert [r["call_id"] for r in rows] == [c["call_id"] for c in want]
    # times in the file are UTC whatever the display zone
    by_id = {c["call_id"]: c for c in want}
    for r in rows:
        assert r["start_time"].startswith(by_id[r["call_id"]]["start"].strftime("%Y-%m-%d %H:%M:%S"))
    expect(page.locator("#sql-status")).to_contain_text("times in UTC")
    shot(page, "sql-csv")
    watch.assert_clean(allowed=EDITING_NOISE)
