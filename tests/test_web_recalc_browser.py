"""The Recalc dialog, the Jobs panel and Balances & rate cards in a real browser
(Debian's Chromium driven by Playwright) against a real `cdrhouse serve` on loopback.

The store is tests/webstore.py's plus tests/recalcstore.py (rate cards for C1 and K1
and the reference's worked example: a 3600 s call at 0.0001/s = 0.36, which adjusted
to 60 s costs 0.006; a stopped re-rate) and a tiering run, added by `prepare_store`
(browser.server's hook) to this module's own store, so that the other browser modules
see the web store unchanged. Every number the page shows is compared with
what the API answers a key of the same principal.

Run: `python -m pytest -n 0 tests/test_web_recalc_browser.py` (needs `apt-get install -y chromium`).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).parent))
from browser import (  # noqa: E402,F401  (fixtures are found by name)
    Server, Watch, browser_type_launch_args, column, ctx, expect_grid, grid_ids, server, settle, shot,
    sign_in)
import recalcstore  # noqa: E402
from playwright.sync_api import BrowserContext, Page, expect  # noqa: E402

OPERATOR = "tenant:acme"


def prepare_store(data_dir: Path, now: str) -> None:
    """browser.server's hook: recalcstore's cards, example call and stopped job, and a
    real tiering run (globex has no month old enough: it archives nothing), so that the
    jobs table holds a platform job only admins see. Each in its own process: the
    embedded engine is one data directory per process."""
    here = Path(__file__).parent
    subprocess.run([sys.executable, str(here / "recalcstore.py"), str(data_dir), now],
                   check=True, cwd=data_dir.parent)
    subprocess.run([sys.executable, "-m", "cdrhouse.api.cli", "--data-dir", str(data_dir),
                    "tier", "run", "--tenant", "globex"], check=True, cwd=data_dir.parent,
                   stdout=subprocess.DEVNULL)


# -- the API, with a key of the same principal --------------------------------------------

def api(server: Server, who: str, method: str, path: str, body: Any = None,
        content_type: str = "application/json") -> tuple[int, Any]:
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    req = urllib.request.Request(server.base + path, data=data, method=method, headers={
        "Authorization": f"Bearer {server.secrets[who]}", "Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def finished(server: Server, who: str, job_id: str) -> dict:
    """The job once it has ended (a job runs in the service's worker threads)."""
    deadline = time.monotonic() + 120
    while True:
        status, job = api(server, who, "GET", f"/v1/jobs/{job_id}")
        assert status == 200, job
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {job}"
        time.sleep(0.2)


def dry_run(server: Server, body: dict) -> dict:
    status, job = api(server, OPERATOR, "POST", "/v1/recalc", {**body, "dry_run": True})
    assert status == 202, job
    job = finished(server, OPERATOR, job["id"])
    assert job["state"] == "succeeded", job
    return job["result"]


def charge_of(server: Server, call_id: str) -> tuple[str, str, int]:
    status, row = api(server, OPERATOR, "GET", f"/v1/cdrs/{call_id}")
    assert status == 200, row
    return row["customer_charge"], row["carrier_cost"], row["duration"]


def money(text: str) -> str:
    """The page's display of exact decimal text (render._money)."""
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0").ljust(2, "0")
    return f"{whole}.{frac}"


def impact_rows(page: Page, scope: str) -> dict[str, list[str]]:
    """{account: [calls, before, after, difference]} of an impact table under `scope`."""
    rows = page.locator(f"{scope} table.impact tbody tr").evaluate_all(
        "rows => rows.map(r => Array.from(r.children).map(c => c.textContent.trim()))")
    return {r[0]: r[1:] for r in rows if len(r) == 5}


# -- the worked example, end to end ---------------------------------------------------------

def test_worked_example_preview_run_undo(ctx: BrowserContext, server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    example = recalcstore.EXAMPLE_ID
    assert charge_of(server, example) == ("0.360000", "0.180000", 3605)
    sign_in(page, "operator", path=f"/?range=last_7_days&number={recalcstore.EXAMPLE_DST}")
    expect_grid(page, [example])
    assert column(page, "customer_charge") == ["0.36"]
    assert column(page, "carrier_cost") == ["0.18"]

    # tick the row, open the dialog: the selected rows are the scope
    page.locator("#grid .row-sel").check()
    page.locator("#recalc-btn").click()
    dialog = page.locator("#recalc-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#rc-scope-selected")).to_be_checked()
    expect(page.locator("#rc-selected-count")).to_have_text("1")
    # refresh operations work on days, not on ticked calls: not offered for a selection
    expect(dialog.locator('input[name="rc-op"][value="refresh-credit"]')).to_be_disabled()
    dialog.locator('input[name="rc-op"][value="adjust-duration"]').check()
    # only the fields the operation needs
    expect(page.locator("#rc-min")).to_be_visible()
    expect(page.locator("#rc-from")).to_be_hidden()
    expect(page.locator("#rc-reasons")).to_be_hidden()
    expect(page.locator("#rc-adjust-help")).to_contain_text(
        "a 3600 s call at 0.0001/s costs 0.36; adjusted to 60 s it costs 0.006")
    page.locator("#rc-min").fill("3600")
    page.locator("#rc-new").fill("60")
    page.locator("#rc-preview-btn").click()

    # the preview: the dry run's per-account impact, and nothing changed yet
    expect(page.locator("#rc-confirm")).to_contain_text("can be undone")
    shown = impact_rows(page, "#rc-preview")
    expected = dry_run(server, {"op": "adjust-duration", "call_ids": [example],
                                "min_duration": 3600, "new_duration": 60})
    assert expected["calls_changed"] == 1
    assert shown == {f"{'Customer' if a['kind'] == 'customer' else 'Carrier'} {a['code']}":
                     [str(a["calls"]), money(a["before"]), money(a["after"]),
                      ("−" if a["difference"].startswith("-") else "+")
                      + money(a["difference"].lstrip("-"))]
                     for a in expected["accounts"]}
    assert shown == {"Customer C1": ["1", "0.36", "0.006", "−0.354"],
                     "Carrier K1": ["1", "0.18", "0.003", "−0.177"]}
    assert charge_of(server, example) == ("0.360000", "0.180000", 3605)
    shot(page, "recalc-preview")

    # run it: the dialog closes and the jobs drawer follows the job to its end
    page.locator("#rc-run").click()
    expect(dialog).to_be_hidden()
    drawer = page.locator("#jobs-drawer")
    expect(drawer).to_be_visible()
    job_box = drawer.locator(".job")
    expect(job_box.locator("h3")).to_have_text("Recalc · Adjust Call Duration")
    expect(job_box.locator(".badge")).to_have_text("succeeded")
    expect(job_box.locator("progress")).to_have_attribute("value", "100")
    job_id = job_box.get_attribute("data-job")
    job = finished(server, OPERATOR, job_id)
    assert job["state"] == "succeeded" and job["params"]["op"] == "adjust-duration"
    assert job["params"]["call_ids"] == [example] and not job["params"]["dry_run"]
    assert impact_rows(page, "#jobs-drawer")["Customer C1"] == ["1", "0.36", "0.006", "−0.354"]
    assert charge_of(server, example) == ("0.006000", "0.003000", 60)
    shot(page, "recalc-job-done")

    # the grid shows the new charge; the job stays in view (with Undo)
    with page.expect_navigation():      # the page reloads: the grid is server-rendered
        page.locator("#rc-show-new").click()
    expect(page.locator("#grid tbody tr[data-call]")).to_have_count(1)
    assert column(page, "customer_charge") == ["0.006"]
    assert column(page, "carrier_cost") == ["0.003"]
    assert column(page, "duration") == ["60"]
    expect(drawer.locator(f'.job[data-job="{job_id}"] button.undo')).to_be_visible()

    # undo: a job of its own, followed in the drawer; the grid shows the old charge again
    drawer.locator("button.undo").click()
    expect(drawer.locator(".job h3")).to_have_text(f"Recalc · Undo of job {job_id}")
    expect(drawer.locator(".job .badge")).to_have_text("succeeded")
    undo_id = drawer.locator(".job").get_attribute("data-job")
    assert undo_id != job_id
    assert finished(server, OPERATOR, undo_id)["state"] == "succeeded"
    with page.expect_navigation():      # the page reloads: the grid is server-rendered
        page.locator("#rc-show-new").click()
    expect(page.locator("#grid tbody tr[data-call]")).to_have_count(1)
    assert column(page, "customer_charge") == ["0.36"]
    assert column(page, "carrier_cost") == ["0.18"]
    assert column(page, "duration") == ["3605"]
    assert charge_of(server, example) == ("0.360000", "0.180000", 3605)
    shot(page, "recalc-undone")

    # the Jobs page lists both; the adjusted job says it was undone and offers no Undo
    page.locator("#jobs-drawer-all").click()
    expect(page.locator(f'#jobs-table tr[data-job="{job_id}"]')).to_be_visible()
    expect(page.locator(f'#jobs-table tr[data-job="{undo_id}"]')).to_be_visible()
    page.locator(f'#jobs-table tr[data-job="{job_id}"]').click()
    detail = page.locator("#job-detail")
    expect(detail.locator(".job h3")).to_have_text("Recalc · Adjust Call Duration")
    expect(detail).to_contain_text(f"Undone by job {undo_id}.")
    expect(detail.locator("button.undo")).to_have_count(0)
    assert f"job={job_id}" in page.url
    shot(page, "jobs-page")
    # a second undo of the same job is refused by the API
    status, problem = api(server, OPERATOR, "POST", f"/v1/recalc/{job_id}/undo")
    assert status == 400 and "already undone" in problem["detail"]
    watch.assert_clean()


def test_rerate_preview_of_filtered_range(ctx: BrowserContext, server: Server) -> None:
    """The customer view's range: release reasons that occur in it, and a preview equal to
    the API's dry run of the same request (previewed only: nothing changes)."""
    def rerates() -> set[str]:
        _, jobs = api(server, OPERATOR, "GET", "/v1/jobs?kind=recalc&limit=1000")
        return {j["id"] for j in jobs["jobs"] if j["params"]["op"] == "rerate"
                and not j["params"]["dry_run"]}
    before = rerates()
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator", path="/?range=last_7_days&customer=C1")
    expect(page.locator("#scope")).to_contain_text("Customer CDR · C1")
    page.locator("#recalc-btn").click()
    expect(page.locator("#rc-scope-range")).to_be_checked()
    expect(page.locator("#rc-scope-selected")).to_be_disabled()
    # the view's range as whole UTC days
    first = (server.now - dt.timedelta(days=6)).date()
    frm, to = page.locator("#rc-from").input_value(), page.locator("#rc-to").input_value()
    assert dt.date.fromisoformat(frm) <= first and dt.date.fromisoformat(to) >= server.now.date()
    # each operation shows only the fields it needs
    fields = ("#rc-from", "#rc-to", "#rc-reasons", "#rc-min", "#rc-new", "#rc-adjust-help")
    for op, shown_fields in (
            ("refresh-credit", {"#rc-from", "#rc-to"}),
            ("refresh-summaries", {"#rc-from", "#rc-to"}),
            ("adjust-duration", {"#rc-from", "#rc-to", "#rc-min", "#rc-new", "#rc-adjust-help"}),
            ("rerate", {"#rc-from", "#rc-to", "#rc-reasons"})):
        page.locator(f'input[name="rc-op"][value="{op}"]').check()
        for f in fields:
            if f in shown_fields:
                expect(page.locator(f)).to_be_visible()
            else:
                expect(page.locator(f)).to_be_hidden()
    reasons = page.locator("#rc-reasons input[type=checkbox]")
    expect(reasons.first).to_be_visible()
    status, res = api(server, OPERATOR, "POST", "/v1/sql", {
        "sql": "SELECT DISTINCT release_reason FROM cdrs WHERE customer_id = 1 AND "
               "start_time >= {lo:DateTime64(3, 'UTC')} AND start_time < {hi:DateTime64(3, 'UTC')} "
               "ORDER BY 1",
        "params": {"lo": f"{frm} 00:00:00",
                   "hi": f"{dt.date.fromisoformat(to) + dt.timedelta(days=1)} 00:00:00"}})
    assert status == 200, res
    assert reasons.evaluate_all("cs => cs.map(c => c.value)") == [r[0] for r in res["rows"]]
    assert len(res["rows"]) >= 2      # answered and unanswered calls
    page.locator('#rc-reasons input[value="NORMAL_CLEARING"]').check()
    page.locator("#rc-preview-btn").click()
    expect(page.locator("#rc-confirm")).to_contain_text("can be undone")
    expected = dry_run(server, {"op": "rerate", "from": frm, "to": to, "account": "customer:C1",
                                "release_reasons": ["NORMAL_CLEARING"]})
    assert expected["calls_changed"] > 1
    shown = impact_rows(page, "#rc-preview")
    assert shown["Customer C1"][:3] == [str(expected["accounts"][0]["calls"]),
                                        money(expected["charge"]["before"]),
                                        money(expected["charge"]["after"])]
    expect(page.locator("#rc-preview .totals")).to_contain_text(
        f"{expected['calls_changed']} calls change")
    shot(page, "recalc-rerate-preview")
    # while the preview shows, its inputs are locked; changing them asks for a new preview
    expect(page.locator('#rc-reasons input[value="NORMAL_CLEARING"]')).to_be_disabled()
    page.locator("#rc-back").click()
    expect(page.locator("#rc-run")).to_be_hidden()
    expect(page.locator("#rc-preview-btn")).to_be_visible()
    page.locator('#rc-reasons input[value="NORMAL_CLEARING"]').uncheck()
    page.locator("#rc-cancel").click()
    # nothing ran: no re-rate job besides previews was started
    assert rerates() == before
    watch.assert_clean()


def test_resume_a_stopped_job(ctx: BrowserContext, server: Server) -> None:
    """recalcstore left a re-rate stopped (as a service shutting down under it does):
    the Jobs page says so, offers Resume, and follows the job to its end."""
    _, running = api(server, OPERATOR, "GET", "/v1/jobs?kind=recalc&state=running")
    stopped = [j for j in running["jobs"] if j["result"].get("stopped")]
    assert len(stopped) == 1
    job_id = stopped[0]["id"]
    assert charge_of(server, "acme-dst-noon")[0] == "0.100000"
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator")
    page.locator("#nav-jobs").click()
    row = page.locator(f'#jobs-table tr[data-job="{job_id}"]')
    expect(row.locator(".badge")).to_have_text("stopped")
    row.click()
    detail = page.locator("#job-detail")
    expect(detail.locator(".job h3")).to_have_text("Recalc · Re-rate")
    expect(detail.locator(".job .badge")).to_have_text("stopped — can be resumed")
    expect(detail.locator(".job .job-error")).to_contain_text("the service stopped while the job ran")
    expect(detail.locator("button.undo")).to_have_count(0)
    shot(page, "jobs-stopped")
    detail.locator("button.resume").click()
    expect(detail.locator(".job .badge")).to_have_text("succeeded")
    expect(row.locator(".badge")).to_have_text("succeeded")
    expect(detail.locator("button.resume")).to_have_count(0)
    expect(detail.locator("button.undo")).to_be_visible()
    job = finished(server, OPERATOR, job_id)
    assert job["state"] == "succeeded" and job["result"]["calls_changed"] >= 1
    # C1's calls of those days now cost what C1's card says: 60 s at 0.0001/s
    assert charge_of(server, "acme-dst-noon")[0] == "0.006000"
    assert impact_rows(page, "#job-detail")["Customer C1"][0] == str(
        next(a["calls"] for a in job["result"]["accounts"] if a["kind"] == "customer"))
    watch.assert_clean()


# -- tenancy -------------------------------------------------------------------------------

def test_customer_and_carrier_never_see_recalc_or_other_jobs(ctx: BrowserContext,
                                                              server: Server) -> None:
    # an operator's job exists
    status, job = api(server, OPERATOR, "POST", "/v1/recalc", {
        "op": "refresh-credit", "from": str(server.now.date()), "to": str(server.now.date())})
    assert status == 202, job
    op_job = finished(server, OPERATOR, job["id"])["id"]

    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "cust1")
    expect(page.locator("#scope")).to_contain_text("Customer")
    expect(page.locator("#recalc-btn")).to_have_count(0)
    expect(page.locator("#recalc-dialog")).to_have_count(0)
    expect(page.locator("#nav-billing")).to_have_count(0)
    csrf = page.locator("#app").get_attribute("data-csrf")
    # hostile: the page's own session asks the API anyway
    answers = page.evaluate("""async ([job, csrf]) => {
        const one = await fetch('/v1/jobs/' + job);
        const list = await (await fetch('/v1/jobs')).json();
        const run = await fetch('/v1/recalc', {method: 'POST', headers: {'Content-Type':
            'application/json', 'X-CSRF-Token': csrf}, body: JSON.stringify({op: 'rerate',
            from: '2020-01-01', to: '2020-01-02', tenant: 'acme'})});
        const undo = await fetch('/v1/recalc/' + job + '/undo', {method: 'POST',
            headers: {'X-CSRF-Token': csrf}});
        const rates = await fetch('/v1/rates?account=C1');
        return [one.status, list.jobs.map(j => j.id), run.status, undo.status, rates.status];
    }""", [op_job, csrf])
    assert answers[0] == 404
    assert op_job not in answers[1]
    assert answers[2:] == [403, 403, 403]

    page.goto("/jobs")
    expect(page.locator("#jobs-table tbody tr.empty")).to_have_text("No jobs to show.")
    expect(page.locator(f'#jobs-table tr[data-job="{op_job}"]')).to_have_count(0)
    page.goto(f"/jobs?job={op_job}")
    expect(page.locator("#job-detail .error")).to_contain_text("no job")
    expect(page.locator("#job-detail button")).to_have_count(0)
    shot(page, "jobs-customer")
    page.goto("/billing")
    expect(page.locator(".error.banner")).to_contain_text("for tenant operators and admins")
    expect(page.locator("#balances")).to_have_count(0)
    watch.assert_clean(allowed=("403", "404"))

    page2 = ctx.new_page()
    page2.context.clear_cookies()
    sign_in(page2, "carrier1")
    expect(page2.locator("#recalc-btn")).to_have_count(0)
    page2.goto("/jobs")
    expect(page2.locator(f'#jobs-table tr[data-job="{op_job}"]')).to_have_count(0)
    expect(page2.locator("#jobs-table tbody tr.empty")).to_be_visible()


def test_other_tenant_operator_sees_no_acme_jobs(ctx: BrowserContext, server: Server) -> None:
    status, job = api(server, OPERATOR, "POST", "/v1/recalc", {
        "op": "refresh-credit", "from": str(server.now.date()), "to": str(server.now.date())})
    assert status == 202, job
    op_job = finished(server, OPERATOR, job["id"])["id"]
    page = ctx.new_page()
    sign_in(page, "globexop")
    expect(page.locator("#recalc-btn")).to_be_visible()
    page.goto("/jobs")
    expect(page.locator("#jobs-table tbody tr.empty")).to_have_text("No jobs to show.")
    csrf = page.locator("#tools").get_attribute("data-csrf")
    # hostile: undo or resume another tenant's job, or recalc another tenant
    answers = page.evaluate("""async ([job, csrf]) => {
        const h = {'X-CSRF-Token': csrf, 'Content-Type': 'application/json'};
        const undo = await fetch('/v1/recalc/' + job + '/undo', {method: 'POST', headers: h});
        const resume = await fetch('/v1/recalc/' + job + '/resume', {method: 'POST', headers: h});
        const other = await fetch('/v1/recalc', {method: 'POST', headers: h, body: JSON.stringify(
            {op: 'refresh-credit', from: '2026-01-01', to: '2026-01-01', tenant: 'acme'})});
        return [undo.status, resume.status, other.status];
    }""", [op_job, csrf])
    assert answers == [400, 404, 403]


def test_admin_picks_a_tenant_and_sees_platform_jobs(ctx: BrowserContext,
                                                      server: Server) -> None:
    page = ctx.new_page()
    watch = Watch(page)
    page.goto("/login")
    page.get_by_text("Sign in with an API key instead").click()
    page.locator("input[name=api_key]").fill(server.secrets["admin"])
    page.get_by_role("button", name="Sign in with key").click()
    expect(page.locator("#recalc-btn")).to_be_disabled()      # which tenant? choose first
    settle(page)              # the first visit moves once to the browser's zone
    page.goto("/?tenant=acme&range=today")
    page.locator("#recalc-btn").click()
    expect(page.locator("#rc-scope-range")).to_be_checked()
    expect(page.locator("#rc-scope-range + span")).to_contain_text("every account of tenant acme")
    expect(page.locator("#rc-from")).not_to_have_value("")
    page.locator('input[name="rc-op"][value="refresh-credit"]').check()
    expect(page.locator("#rc-reasons")).to_be_hidden()
    expect(page.locator("#rc-min")).to_be_hidden()
    page.locator("#rc-preview-btn").click()
    expect(page.locator("#rc-confirm")).to_contain_text("changes no call")
    page.locator("#rc-run").click()
    drawer = page.locator("#jobs-drawer")
    expect(drawer.locator(".job h3")).to_have_text("Recalc · Refresh Credit")
    expect(drawer.locator(".job .badge")).to_have_text("succeeded")
    job = finished(server, "admin", drawer.locator(".job").get_attribute("data-job"))
    assert job["tenant"] == "acme" and job["params"]["op"] == "refresh-credit"
    assert job["result"]["balances_refreshed"] >= 4
    expect(drawer.locator("button.undo")).to_have_count(0)    # nothing to undo

    # the Jobs page: tiering runs too (platform jobs), with what they did
    page.goto("/jobs")
    _, listed = api(server, "admin", "GET", "/v1/jobs?kind=tier-run")
    tier = listed["jobs"][0]
    row = page.locator(f'#jobs-table tr[data-job="{tier["id"]}"]')
    expect(row).to_contain_text("Tiering run")
    expect(row).to_contain_text("platform")
    row.click()
    detail = page.locator("#job-detail")
    expect(detail.locator(".job h3")).to_have_text("Tiering run")
    expect(detail.locator(".job .badge")).to_have_text(tier["state"])
    expect(detail).to_contain_text('["globex"]')
    # operators do not see platform jobs
    _, mine = api(server, OPERATOR, "GET", "/v1/jobs?limit=1000")
    assert tier["id"] not in {j["id"] for j in mine["jobs"]}
    shot(page, "jobs-admin")
    watch.assert_clean()


# -- balances and rate cards ----------------------------------------------------------------

def test_balances_and_rate_card_import(ctx: BrowserContext, server: Server) -> None:
    status, job = api(server, OPERATOR, "POST", "/v1/recalc", {
        "op": "refresh-credit", "from": str(server.now.date()), "to": str(server.now.date())})
    assert status == 202, job
    assert finished(server, OPERATOR, job["id"])["state"] == "succeeded"
    page = ctx.new_page()
    watch = Watch(page)
    sign_in(page, "operator")
    page.locator("#nav-billing").click()
    expect(page.locator("#balances tbody tr[data-account]").first).to_be_visible()
    _, balances = api(server, OPERATOR, "GET", "/v1/balances")
    rows = page.locator("#balances tbody tr[data-account]").evaluate_all(
        "rows => rows.map(r => Array.from(r.children).map(c => c.textContent.trim()))")
    assert rows == [[b["account"], b["kind"], b["currency"], money(b["ledger"]),
                     money(b["usage"]), money(b["balance"]), str(b["calls"]),
                     b["computed_at"].replace("T", " ")[:19]] for b in balances["balances"]]
    assert {r[0] for r in rows} == {"C1", "C2", "K1", "K2"}

    # C1's card, as the API has it
    expect(page.locator("#rates tbody tr").first).to_contain_text("49")
    assert page.locator("#rates tbody tr").first.locator("td").first.inner_text() == "0.006"

    # import into C2 with two bad lines: each named with its line number, nothing stored
    page.locator("#rates-account").select_option("customer:C2")
    expect(page.locator("#rates tbody tr.empty")).to_contain_text("No rate card")
    page.locator("#rates-text").fill(
        "prefix,rate_per_min,connect_fee,increment,min_duration,effective_from,currency\n"
        "44,0.012,0,60/60,0,2026-01-01,USD\n"
        "4420,0.010,0,60-60,0,2026-01-01,USD\n"
        "49,abc,0,1/1,0,2026-01-01,USD\n")
    page.locator("#rates-import-btn").click()
    errors = page.locator("#rates-result .import-errors")
    expect(errors).to_contain_text("2 bad line(s), nothing imported")
    items = errors.locator("li").all_inner_texts()
    assert len(items) == 2
    assert items[0].startswith("line 3: increment") and "60-60" in items[0]
    assert items[1].startswith("line 4: rate_per_min") and "abc" in items[1]
    assert api(server, OPERATOR, "GET", "/v1/rates?account=customer:C2")[1]["rates"] == []
    expect(page.locator("#rates tbody tr.empty")).to_contain_text("No rate card")
    errors.scroll_into_view_if_needed()
    shot(page, "billing-import-errors")

    # fixed, chosen as a file: imported, and the table shows the card the API now has
    fixed = ("prefix,rate_per_min,connect_fee,increment,min_duration,effective_from,currency\n"
             "44,0.012,0,60/60,0,2026-01-01,USD\n"
             "4420,0.010,0,60/60,0,2026-01-01,USD\n")
    page.locator("#rates-file").set_input_files(
        files=[{"name": "c2.csv", "mimeType": "text/csv", "buffer": fixed.encode()}])
    expect(page.locator("#rates-text")).to_have_value(fixed)
    page.locator("#rates-import-btn").click()
    expect(page.locator("#rates-result .note")).to_contain_text("Imported 2 rates into customer C2")
    expect(page.locator("#rates tbody tr")).to_have_count(2)
    _, card = api(server, OPERATOR, "GET", "/v1/rates?account=customer:C2")
    assert page.locator("#rates tbody th").all_inner_texts() == [r["prefix"] for r in card["rates"]]
    assert sorted(r["prefix"] for r in card["rates"]) == ["44", "4420"]
    shot(page, "billing")
    watch.assert_clean(allowed=("400",))
