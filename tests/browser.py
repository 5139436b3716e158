"""What every browser test shares: Debian's Chromium driven by Playwright, a real
`cdrhouse serve` on loopback over a small known store (tests/webstore.py), and the
helpers a scenario uses (sign in, read the grid, screenshots, downloads).

A browser test module imports the fixtures it uses by name
(`from browser import server, ctx, browser_type_launch_args`) and the helpers.
Without Chromium the importing module skips, unless CDRHOUSE_REQUIRE_BROWSER=1 (CI),
where a missing browser fails the run. Each scenario leaves a screenshot in
test-artifacts/. Never `playwright install`: `apt-get install -y chromium`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import webstore  # noqa: E402

CHROMIUM = shutil.which("chromium")
INSTALL = "apt-get install -y chromium"
if CHROMIUM is None:
    if os.environ.get("CDRHOUSE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"CDRHOUSE_REQUIRE_BROWSER=1 but Chromium is missing: {INSTALL}",
                    pytrace=False)
    pytest.skip(f"Chromium is not installed; to run the browser tests: {INSTALL}",
                allow_module_level=True)

from playwright.sync_api import Browser, Page, expect  # noqa: E402
from playwright.sync_api import Error as PlaywrightError  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

# generous waits: CI runs this beside the rest of the suite on two cores
expect.set_options(timeout=20_000)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's browser, launched from Debian's Chromium (nothing downloaded)."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM,
            "args": ["--disable-background-networking", "--disable-component-update",
                     "--no-first-run", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]}


@dataclass
class Server:
    base: str
    secrets: dict[str, str]
    now: dt.datetime
    rec: webstore.RecordingServer

    def calls(self) -> list[dict]:
        return webstore.calls(self.now, self.rec.base)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """`cdrhouse serve` on a fresh embedded store, one per module.

    A module may add to its own store: `prepare_store(data_dir, now)`, a function of the
    module, runs after webstore.py and before the service opens the store."""
    tmp = tmp_path_factory.mktemp("web")
    rec = webstore.RecordingServer().start()
    info = tmp / "store.json"
    subprocess.run([sys.executable, str(Path(__file__).parent / "webstore.py"), str(tmp / "data"),
                    rec.base, str(info)], check=True, cwd=tmp)
    meta = json.loads(info.read_text())
    prepare = getattr(request.module, "prepare_store", None)
    if prepare is not None:
        prepare(tmp / "data", meta["now"])
    port = _free_port()
    env = {**os.environ, "CDRHOUSE_RECORDING_HOSTS": "127.0.0.1"}
    # to a file, not a pipe: nobody reads a pipe, and a full one would block the server
    log = open(tmp / "serve.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "cdrhouse.api.cli", "--data-dir",
                             str(tmp / "data"), "serve", "--port", str(port),
                             "--tier-schedule", "off"], cwd=tmp, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = (tmp / "serve.log").read_text(errors="replace")
                rec.stop()
                pytest.fail(f"cdrhouse serve did not start:\n{out}")
            time.sleep(0.2)
    yield Server(base, meta["secrets"], dt.datetime.fromisoformat(meta["now"]), rec)
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    rec.stop()


class Watch:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def assert_clean(self, allowed: tuple[str, ...] = ()) -> None:
        bad = [e for e in self.errors if not any(a in e for a in allowed)]
        assert not bad, f"console errors: {bad}"


@pytest.fixture
def ctx(browser: Browser, server: Server):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=server.base,
                                  timezone_id="Europe/Berlin", accept_downloads=True)
    context.set_default_timeout(60_000)
    yield context
    context.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def sign_in(page: Page, name: str, password: str = webstore.PASSWORD, path: str = "/") -> None:
    page.goto(path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#grid")).to_be_visible()
    settle(page)


SETTLED = """() => {
    const a = document.getElementById('app');
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    return !!a && (a.dataset.tzSource !== 'default' || a.dataset.tz === zone);
}"""


def settle(page: Page, within: float = 60.0) -> None:
    """Wait for the viewer page that stays: on a first visit the page moves once to the
    browser's zone (app.js), and a scenario's next step would race that navigation.

    The wait is re-issued in short rounds, polling on a timer: one wait that starts in
    the document being replaced was seen (once, in CI) to sit out its whole timeout
    although the page that followed was settled."""
    deadline = time.monotonic() + within
    while True:
        try:
            page.wait_for_function(SETTLED, polling=100, timeout=5_000)
            return
        except PlaywrightTimeout:
            if time.monotonic() >= deadline:
                raise


def parsed(page: Page) -> None:
    """Wait until the current document is parsed whole: an `expect` on the toolbar can
    pass while the grid below it is still being parsed, and a read then finds part of
    its rows. (Waiting for the *next* page after a click is `expect_grid`'s job.)"""
    page.wait_for_load_state("domcontentloaded")


def grid_ids(page: Page) -> list[str]:
    parsed(page)
    return page.locator("#grid tbody tr[data-call]").evaluate_all(
        "rows => rows.map(r => r.dataset.call)")


def expect_grid(page: Page, want: list[str], within: float = 20.0) -> None:
    """The grid shows exactly the calls `want`, in order, waited for as Playwright's own
    `expect` waits: a click on a link (Next, a sort, a filter's chip) can return before
    the next page has replaced this one, and a read right then sees the old grid (CI
    once compared page 3's 59 rows where page 2 was due). An empty grid is waited for
    by its "no calls" row, which the page writes only after the table's last row."""
    if not want:
        expect(page.locator("#grid tbody tr.empty")).to_have_count(1)
        assert grid_ids(page) == []
        return
    deadline = time.monotonic() + within
    while True:
        try:
            got: list[str] | None = grid_ids(page)
        except PlaywrightError:          # the document went away while being read
            got = None
        if got == want:
            return
        if time.monotonic() > deadline:
            assert got == want
        time.sleep(0.1)


def column(page: Page, name: str) -> list[str]:
    parsed(page)
    idx = page.locator("#grid thead th").evaluate_all(
        f"ths => ths.findIndex(t => t.dataset.col === {json.dumps(name)})")
    assert idx >= 0, f"no column {name}"
    return page.locator(f"#grid tbody tr[data-call] td:nth-child({idx + 1})").all_inner_texts()


def download_text(page: Page, click) -> tuple[str, str]:
    with page.expect_download() as info:
        click()
    d = info.value
    return d.suggested_filename, Path(d.path()).read_text()


def csv_ids(text: str) -> list[str]:
    rows = list(csv.DictReader(io.StringIO(text)))
    return [r["call_id"] for r in rows]
