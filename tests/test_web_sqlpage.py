"""The SQL page's server side without a browser: what it tells the editor about
`daily_summary`, its CSP, and the committed editor bundle matching VENDOR.md.
(The page itself is tested in Chromium: tests/test_web_sql_browser.py.)"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from cdrhouse.api.web import sqlpage
from cdrhouse.api.web.page import CSP
from cdrhouse.sql import catalogue
from cdrhouse.sql.logical import DAILY_SUMMARY

WEB = Path(sqlpage.__file__).parent


@pytest.mark.parametrize("role, hidden", [
    ("customer", {"tenant_id", "carrier_id", "carrier_cost", "margin", "unrated"}),
    ("carrier", {"tenant_id", "customer_id", "customer_charge", "margin", "unrated"}),
    ("tenant", {"tenant_id"}),
    ("admin", set()),
])
def test_summary_columns_are_what_the_guard_lets_the_role_read(role: str, hidden: set[str]) -> None:
    cols = sqlpage.summary_columns(role)
    names = [c["name"] for c in cols]
    assert names == list(DAILY_SUMMARY.visible_columns(role))
    assert not hidden & set(names)
    assert set(DAILY_SUMMARY.columns) - set(names) == hidden
    assert all(c["type"] and c["info"] for c in cols)
    types = {c["name"]: c["type"] for c in cols}
    assert types["day"] == "Date" and types["asr"] == "Float64" and types["calls"] == "Int64"
    assert types["country"] == catalogue.BY_NAME["country"].ch_type


def test_csp_adds_the_style_nonce_and_nothing_else() -> None:
    got = sqlpage._csp("abc123")
    assert got.replace(" 'nonce-abc123'", "") == CSP
    assert "style-src 'self' 'nonce-abc123';" in got
    assert re.search(r"script-src 'self';", got)


def test_committed_bundle_matches_vendor_md() -> None:
    """A rebuilt or hand-edited bundle must come with its new sha256 in VENDOR.md."""
    bundle = (WEB / "static" / "sqleditor.bundle.js").read_bytes()
    vendor = (WEB / "VENDOR.md").read_text()
    row = next(line for line in vendor.splitlines() if line.startswith("| `static/sqleditor.bundle.js`"))
    assert hashlib.sha256(bundle).hexdigest() in row
    assert bundle.startswith(b"/*! cdrhouse SQL editor: CodeMirror 6")
    assert b"var CdrhouseSQLEditor=" in bundle[:400]
