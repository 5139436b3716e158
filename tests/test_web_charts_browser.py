"""The charts panel, the archive page and "Include archive" in a real browser (Debian's
Chromium via Playwright) against a real `cdrhouse serve` over the web test store
(tests/webstore.py) with March 2026 archived by the tiering code into the store's
directory archive (`<data-dir>/warm`, the default of `serve`).

Every number the page shows is checked against the same aggregate written as SQL and
run through POST /v1/sql with the principal's API key; downloads are read back
(Parquet with pyarrow, zstd CSV) and must hold exactly the principal's rows.

Run: `python -m pytest -n 0 tests/test_web_charts_browser.py`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
import pytest
import zstandard

sys.path.insert(0, str(Path(__file__).parent))
from browser import (  # noqa: E402,F401  (fixtures are found by name)
    Server, Watch, browser_type_launch_args, ctx, grid_ids, server, shot, sign_in)
import webstore  # noqa: E402
from playwright.sync_api import BrowserContext, Page, expect  # noqa: E402

UTC = dt.timezone.utc
#: March 2026 gets these besides webstore's DST calls (acme C1/K2): another customer, another tenant
MARCH_EXTRA = [("acme", f"acme-march-{i}", "C2", "K1", dt.datetime(2026, 3, 3 + i, 10, tzinfo=UTC))
               for i in range(3)] + [
    ("globex", f"globex-march-{i}", "G1", "GK", dt.datetime(2026, 3, 5 + i, 9, tzinfo=UTC))
    for i in range(2)]

PREPARE = """
import datetime as dt, sys, json
from pathlib import Path
sys.path.insert(0, {tests!r})
import webstore
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.tiering.archive import Tiering
from cdrhouse.tiering.store import LocalStore
data = Path({data!r})
db = Database(StoreConfig(data_dir=data))
rows = [dict(tenant=t, call_id=c, start=dt.datetime.fromisoformat(s), customer=cu, carrier=ca,
             billsec=42, src="4420888000", dst="4930888000", charge="0.100000", cost="0.050000",
             recording="") for t, c, cu, ca, s in json.loads({extra!r})]
webstore._insert(db, rows)
Tiering(db, LocalStore(data / "warm")).run(months=[202603])
assert not db.scalar("SELECT count() FROM cdr_records WHERE toYYYYMM(start_time) = 202603")
db.close()
"""


def prepare_store(data: Path, now: str) -> None:
    """March 2026 gets MARCH_EXTRA and is archived, before `serve` opens the store
    (tests/browser.py's `server` calls this; a subprocess: one engine per process)."""
    tests = str(Path(__file__).parent)
    extra = json.dumps([(t, c, cu, ca, s.isoformat()) for t, c, cu, ca, s in MARCH_EXTRA])
    subprocess.run([sys.executable, "-c", PREPARE.format(tests=tests, data=str(data),
                                                         extra=extra)], check=True, cwd=data.parent)


def api(server: Server, who: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(server.base + path, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {server.secrets[who]}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def sql_aggregate(server: Server, who: str, rng: dict, where: str = "1",
                  archive: bool = False) -> dict:
    """The charts' totals and top countries as plain SQL over `cdrs`, for `who`."""
    cond, params = [where], {}
    if rng["from"]:
        cond.append("start_time >= {a:DateTime64(3, 'UTC')}")
        params["a"] = rng["from"][:23].replace("T", " ")
    if rng["to"]:
        cond.append("start_time < {b:DateTime64(3, 'UTC')}")
        params["b"] = rng["to"][:23].replace("T", " ")
    w = " AND ".join(cond)
    tot = api(server, who, "/v1/sql", {"sql": "SELECT count() AS n, countIf(billsec > 0) AS c, "
                                              f"sum(billsec) AS b FROM cdrs WHERE {w}",
                                       "params": params, "include_archive": archive})["rows"][0]
    top = api(server, who, "/v1/sql", {"sql": "SELECT country AS k, count() AS n FROM cdrs "
                                              f"WHERE {w} GROUP BY k ORDER BY n DESC, k LIMIT 10",
                                       "params": params, "include_archive": archive})["rows"]
    n, c, b = (int(v) for v in tot)
    return {"calls": n, "connected": c, "billsec": b, "minutes": round(b / 60, 2),
            "countries": [(k, int(v)) for k, v in top]}


def afternoon_zone(now: dt.datetime) -> str:
    """A fixed-offset zone (no DST) where it is between 16:00 and 17:00 at `now`."""
    east = (16 - now.astimezone(UTC).hour + 12) % 24 - 12        # hours east of UTC, -12..11
    return f"Etc/GMT{-east:+d}"       # the Etc names count the other way: Etc/GMT-3 is UTC+3


@pytest.mark.parametrize("hour, zone", [(0, "Etc/GMT+8"), (4, "Etc/GMT+12"), (5, "Etc/GMT-11"),
                                        (10, "Etc/GMT-6"), (16, "Etc/GMT+0"), (23, "Etc/GMT+7")])
def test_afternoon_zone(hour: int, zone: str) -> None:
    now = dt.datetime(2026, 11, 30, hour, 30, tzinfo=UTC)
    assert afternoon_zone(now) == zone
    assert now.astimezone(ZoneInfo(zone)).hour == 16


def open_charts(page: Page, path: str) -> dict:
    """Go to `path` and wait for the charts; returns the /v1/charts answer the page drew."""
    page.goto("about:blank")   # no answer of the previous page may be taken for this one's
    with page.expect_response(lambda r: r.url.endswith("/v1/charts")) as resp:
        page.goto(path)
    body = resp.value.json()
    assert resp.value.status == 200, body
    expect(page.locator("#charts-panel[data-loaded]")).to_have_count(1)
    return body


def shown(page: Page) -> dict:
    def value(id_: str) -> str:
        return page.locator(f"#{id_}").get_attribute("data-value") or ""
    return {"calls": int(value("kpi-calls")), "connected": int(value("kpi-connected")),
            "minutes": float(value("kpi-minutes")),
            "countries": [(tr.get_attribute("data-key"), int(tr.locator("td").nth(1)
                                                             .get_attribute("data-value")))
                          for tr in page.locator("#top-country tbody tr[data-key]").all()]}


def assert_matches(page: Page, want: dict) -> None:
    got = shown(page)
    assert got == {k: want[k] for k in got}, (got, want)
    # the KPI text a person reads says the same
    assert page.locator("#kpi-calls").inner_text().replace(",", "").replace("\u202f", "") \
        .replace(".", "") == str(want["calls"])


def test_operator_charts_equal_sql(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator", path="/?range=last_7_days")
    # last 7 days in Berlin: not whole UTC days, so Berlin days from the call records
    body = open_charts(page, "/?range=last_7_days&tz=Europe/Berlin")
    assert (body["plan"]["source"], body["plan"]["bucket"]) == ("cdrs", "day")
    want = sql_aggregate(server, "tenant:acme", body["range"])
    assert want["calls"] > 200
    assert_matches(page, want)
    # three uPlot charts drawn, the x axis in the display zone
    expect(page.locator("#charts-panel canvas")).to_have_count(3)
    assert body["series"]["time"][0].endswith(("+01:00", "+02:00"))
    expect(page.locator("#charts-plan")).to_contain_text("by day in Europe/Berlin")
    shot(page, "charts-operator-week")

    # all time in UTC: whole UTC days from the daily summary (March is archived: left out)
    body = open_charts(page, "/?range=all&tz=UTC")
    assert body["plan"]["source"] == "daily_summary"
    assert_matches(page, sql_aggregate(server, "tenant:acme", body["range"]))
    expect(page.locator("#archive-note")).to_contain_text("2026-03")
    assert body["archive"]["in_range"] == ["2026-03"] and not body["archive"]["included"]

    # a header filter is part of the view: the charts count only those calls (C2 is id 2)
    body = open_charts(page, "/?range=all&tz=UTC&f=customer_id:in:2")
    assert body["plan"]["source"] == "daily_summary"
    want = sql_aggregate(server, "tenant:acme", body["range"], "customer_id IN (2)")
    assert_matches(page, want)
    # and a query-builder tree in the URL (q), on a field the summary lacks: the CDRs, by
    # day in a zone where it is afternoon (the calls with billsec > 100 are 8-27 hours
    # old: by UTC days, today's bucket would be empty for the first eight hours of a day)
    tree = {"condition": "AND", "rules": [{"field": "billsec", "operator": "greater",
                                           "value": 100}]}
    zone = afternoon_zone(server.now)
    body = open_charts(page, f"/?range=all&tz={urllib.request.quote(zone, safe='')}&q="
                       + urllib.request.quote(json.dumps(tree)))
    assert (body["plan"]["source"], body["plan"]["bucket"], body["plan"]["zone"]) == (
        "cdrs", "day", zone)
    assert_matches(page, sql_aggregate(server, "tenant:acme", body["range"], "billsec > 100"))
    # bars are read by their height: their axis starts at zero even when no bucket is
    # near it (here every bucket holds calls), and so does the ACD axis
    assert all(c and m for c, m in zip(body["series"]["calls"], body["series"]["minutes"]))
    for chart in ("#chart-calls", "#chart-minutes", "#chart-quality"):
        expect(page.locator(chart)).to_have_attribute("data-y-min", "0")

    # today, by hour
    body = open_charts(page, "/?range=today&tz=Europe/Berlin")
    assert body["plan"]["bucket"] == "hour" and len(body["series"]["t"]) in (23, 24, 25)
    assert_matches(page, sql_aggregate(server, "tenant:acme", body["range"]))
    shot(page, "charts-operator-today")

    # collapsed stays collapsed (remembered), and queries nothing
    page.locator("#charts-panel > summary").click()
    expect(page.locator("#charts-panel")).not_to_have_attribute("open", "")
    # <details> fires `toggle` (which remembers the choice) in a task after the click:
    # wait for it, as a user's reload would come long after
    page.wait_for_function("localStorage.getItem('cdrhouse.charts.open') === '0'")
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/v1/charts" in r.url else None)
    page.reload()
    expect(page.locator("#grid")).to_be_visible()
    expect(page.locator("#charts-panel")).not_to_have_attribute("open", "")
    assert asked == []
    page.locator("#charts-panel > summary").click()
    expect(page.locator("#charts-panel[data-loaded]")).to_have_count(1)
    expect(page.locator("#charts-panel canvas")).to_have_count(3)
    page.emulate_media(color_scheme="dark")
    open_charts(page, "/?range=last_7_days&tz=Europe/Berlin")
    shot(page, "charts-dark")
    watch.assert_clean()   # no CSP or script errors


def test_customer_charts_count_only_its_calls(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "cust1", path="/?range=all&tz=UTC")
    body = open_charts(page, "/?range=all&tz=UTC")
    want = sql_aggregate(server, "tenant:acme/customer:C1", body["range"])
    assert_matches(page, want)
    hot = [c for c in server.calls() if c["tenant"] == "acme" and c["customer"] == "C1"
           and c["start"].month != 3]
    assert want["calls"] == len(hot)
    everyone = sql_aggregate(server, "tenant:acme", body["range"])
    assert want["calls"] < everyone["calls"]
    # rules that try to reach the other customer's calls only ever narrow
    body = api(server, "tenant:acme/customer:C1", "/v1/charts", {
        "range": "all", "tz": "UTC", "rules": {"condition": "OR", "rules": [
            {"field": "customer_id", "operator": "equal", "value": 2},
            {"field": "customer_id", "operator": "not_equal", "value": 2}]}})
    assert body["totals"]["calls"] == len(hot)
    shot(page, "charts-customer")
    watch.assert_clean()


def _download(page: Page, selector: str) -> tuple[str, bytes]:
    with page.expect_download() as info:
        page.locator(selector).click()
    d = info.value
    return d.suggested_filename, Path(d.path()).read_bytes()


def _csv_ids(raw: bytes) -> list[str]:
    text = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read().decode()
    return sorted(r["call_id"] for r in csv.DictReader(io.StringIO(text)))


def march(tenant: str, customer: str | None = None) -> list[str]:
    ids = [c for c, s in webstore.DST_CALLS.items() if s.month == 3 and tenant == "acme"
           and customer in (None, "C1")]
    ids += [c for t, c, cu, _, _ in MARCH_EXTRA if t == tenant and customer in (None, cu)]
    return sorted(ids)


def test_archive_page_and_downloads_operator(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator")
    page.locator("#archive-link").click()
    expect(page).to_have_url(f"{server.base}/archive")
    expect(page.locator("#hot-note")).to_contain_text("last 3 full months")
    row = page.locator('#archive-months tr[data-month="2026-03"]')
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(1)).to_have_text(str(len(march("acme"))))
    expect(row.locator("td").nth(2)).to_contain_text("KB")
    shot(page, "archive-operator")
    name, raw = _download(page, '#archive-months tr[data-month="2026-03"] a[data-kind="parquet"]')
    assert name.endswith(".parquet")
    table = pq.read_table(io.BytesIO(raw))
    assert sorted(table.column("call_id").to_pylist()) == march("acme")
    assert set(table.column("tenant_id").to_pylist()) == {"acme"}
    name, raw = _download(page, '#archive-months tr[data-month="2026-03"] a[data-kind="csv"]')
    assert name.endswith(".zst")
    assert _csv_ids(raw) == march("acme")

    # "Open in the viewer": the month with the archive included, grid and charts alike
    page.locator('#archive-months tr[data-month="2026-03"] a', has_text="Open in the viewer") \
        .click()
    expect(page.locator("#archive")).to_be_checked()
    expect(page.locator("#charts-panel[data-loaded]")).to_have_count(1)
    assert sorted(grid_ids(page)) == march("acme")
    expect(page.locator("#kpi-calls")).to_have_attribute("data-value", str(len(march("acme"))))
    expect(page.locator("#archive-note")).to_contain_text("slower")
    shot(page, "archive-included-in-viewer")
    # unticked: the month is archived, so the hot grid is empty and the page says why
    page.locator("#archive").uncheck()
    expect(page.locator("#archive-note")).to_contain_text("2026-03")
    expect(page.locator("#grid tbody tr.empty")).to_have_count(1)
    expect(page.locator("#kpi-calls")).to_have_attribute("data-value", "0")
    watch.assert_clean()


def test_archive_download_as_customer_holds_only_its_rows(ctx: BrowserContext,
                                                         server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "cust1")
    page.goto("/archive")
    row = page.locator('#archive-months tr[data-month="2026-03"]')
    expect(row).to_have_count(1)
    # tenant-wide volumes are not shown to an account
    expect(page.locator("#archive-months thead th")).to_have_count(4)
    shot(page, "archive-customer")
    name, raw = _download(page, '#archive-months tr[data-month="2026-03"] a[data-kind="parquet"]')
    table = pq.read_table(io.BytesIO(raw))
    assert sorted(table.column("call_id").to_pylist()) == march("acme", "C1")
    assert set(table.column("customer_id").to_pylist()) == {webstore.IDS[("acme", "C1")]}
    assert "carrier_id" not in table.column_names
    _, raw = _download(page, '#archive-months tr[data-month="2026-03"] a[data-kind="csv"]')
    assert _csv_ids(raw) == march("acme", "C1")
    assert march("acme", "C1") != march("acme")
    watch.assert_clean()


def test_archive_page_as_admin_names_the_tenant(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    page.goto("/login?next=/archive")
    page.get_by_text("Sign in with an API key instead").click()
    page.locator("input[name=api_key]").fill(server.secrets["admin"])
    page.get_by_role("button", name="Sign in with key").click()
    expect(page.locator(".archive-page")).to_contain_text("Choose a tenant")
    page.locator("#tenant").select_option("globex")
    page.get_by_role("button", name="Show").click()
    row = page.locator('#archive-months tr[data-month="2026-03"]')
    expect(row.locator("td").nth(1)).to_have_text(str(len(march("globex"))))
    _, raw = _download(page, '#archive-months tr[data-month="2026-03"] a[data-kind="csv"]')
    assert _csv_ids(raw) == march("globex")
    _, raw = _download(page, '#archive-months tr[data-month="2026-03"] a[data-kind="parquet"]')
    assert sorted(pq.read_table(io.BytesIO(raw)).column("call_id").to_pylist()) == \
        march("globex")
    shot(page, "archive-admin")
    watch.assert_clean()
