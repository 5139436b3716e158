"""A small, known store for the web viewer's tests: accounts, CDRs, users, keys, recordings.

`calls(now, rec_base)` is the dataset as plain rows, so a test can compute what
a view must show; `load(db, …)` writes it (accounts, CDRs, users, keys) and
returns the secrets. Run as a script (`python webstore.py DATA_DIR REC_BASE
OUT.json`) it builds an embedded store in its own process — the browser tests
serve it with `cdrhouse serve` — and writes the secrets and the `now` it used.

`RecordingServer` serves WAV files on 127.0.0.1 with byte ranges (what an
`<audio>` element asks for when seeking).
"""

from __future__ import annotations

import datetime as dt
import http.server
import io
import json
import math
import re
import struct
import sys
import threading
import wave
from pathlib import Path
from typing import Any

UTC = dt.timezone.utc
PASSWORD = "correct horse battery"

ACCOUNTS = [
    # tenant, code, kind, name
    ("acme", "C1", "customer", "Acme Retail"),     # id 1
    ("acme", "C2", "customer", "Blue Telecom"),    # id 2
    ("acme", "K1", "carrier", "Carrier One"),      # id 3
    ("acme", "K2", "carrier", "Carrier Two"),      # id 4
    ("globex", "G1", "customer", "Globex Voice"),  # id 1
    ("globex", "GK", "carrier", "Globex Transit"),  # id 2
]
IDS = {("acme", "C1"): 1, ("acme", "C2"): 2, ("acme", "K1"): 3, ("acme", "K2"): 4,
       ("globex", "G1"): 1, ("globex", "GK"): 2}
#: special numbers for the number-search forms
SPECIAL = {
    "acme-num-exact": ("4420111", "15550001111"),
    "acme-num-prefix": ("4420222", "77712345678"),
    "acme-num-suffix": ("4420333", "3216549876"),
    "acme-num-contains": ("4420444", "90055599900"),
}
#: calls around Europe/Berlin's switch to summer time (2026-03-29 01:00 UTC)
DST_CALLS = {
    "acme-dst-before": dt.datetime(2026, 3, 28, 12, 0, tzinfo=UTC),   # 13:00 CET
    "acme-dst-night": dt.datetime(2026, 3, 29, 0, 30, tzinfo=UTC),    # 01:30 CET
    "acme-dst-after": dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC),    # 03:30 CEST
    "acme-dst-noon": dt.datetime(2026, 3, 29, 12, 0, tzinfo=UTC),     # 14:00 CEST
    "acme-dst-next": dt.datetime(2026, 3, 29, 22, 30, tzinfo=UTC),    # 00:30 CEST on the 30th
}
RECENT = 230


def calls(now: dt.datetime, rec_base: str) -> list[dict[str, Any]]:
    """Every CDR of the dataset (newest first for the recent ones)."""
    out = []
    base = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=5)
    for i in range(RECENT):
        customer = "C1" if i % 2 == 0 else "C2"
        carrier = "K1" if i % 3 else "K2"
        billsec = 0 if i % 4 == 0 else 30 + i
        out.append(dict(
            tenant="acme", call_id=f"acme-{i:04d}", start=base - dt.timedelta(minutes=7 * i),
            customer=customer, carrier=carrier, billsec=billsec,
            src=f"4420700{i:04d}", dst=f"4930123{i:04d}",
            charge=f"{(i % 7) * 0.0137 + 0.01:.6f}" if billsec else None,
            cost=f"{(i % 5) * 0.0101 + 0.005:.6f}" if billsec else None, recording=""))
    for n, (call_id, (src, dst)) in enumerate(SPECIAL.items()):
        out.append(dict(tenant="acme", call_id=call_id, start=base - dt.timedelta(hours=30 + n),
                        customer="C1", carrier="K1", billsec=12, src=src, dst=dst,
                        charge="0.360000", cost="0.006000", recording=""))
    for call_id, start in DST_CALLS.items():
        out.append(dict(tenant="acme", call_id=call_id, start=start, customer="C1",
                        carrier="K2", billsec=60, src="4420999000", dst="4930999000",
                        charge="0.100000", cost="0.050000", recording=""))
    out.append(dict(tenant="acme", call_id="acme-rec-1", start=base - dt.timedelta(hours=2, minutes=1),
                    customer="C1", carrier="K1", billsec=5, src="4420555000", dst="4930555000",
                    charge="0.012300", cost="0.004500", recording=f"{rec_base}/rec1.wav"))
    out.append(dict(tenant="acme", call_id="acme-rec-gone", start=base - dt.timedelta(hours=2, minutes=2),
                    customer="C1", carrier="K1", billsec=5, src="4420555001", dst="4930555001",
                    charge="0.012300", cost="0.004500", recording=f"{rec_base}/missing.wav"))
    for i in range(6):
        # another tenant, with numbers that also match acme's searches
        out.append(dict(tenant="globex", call_id=f"globex-{i}", start=base - dt.timedelta(minutes=11 * i),
                        customer="G1", carrier="GK", billsec=40, src=f"4420700{i:04d}",
                        dst="15550001111", charge="0.200000", cost="0.100000",
                        recording=f"{rec_base}/rec1.wav"))
    return out


def _insert(db: Any, rows: list[dict[str, Any]]) -> None:
    cols = ["tenant_id", "call_id", "start_time", "end_time", "duration", "billsec",
            "customer_id", "carrier_id", "direction", "disposition", "src_number",
            "dst_number", "country", "release_reason", "customer_charge", "carrier_cost",
            "currency", "recording_url", "version"]
    from decimal import Decimal
    data = []
    for r in rows:
        duration = r["billsec"] + 5
        data.append((r["tenant"], r["call_id"], r["start"], r["start"] + dt.timedelta(seconds=duration),
                     duration, r["billsec"], IDS[(r["tenant"], r["customer"])],
                     IDS[(r["tenant"], r["carrier"])], "outbound",
                     "ANSWERED" if r["billsec"] else "NO ANSWER", r["src"], r["dst"],
                     "DE" if r["dst"].startswith("49") else "GB" if r["dst"].startswith("44") else "US",
                     "NORMAL_CLEARING" if r["billsec"] else "NO_ANSWER",
                     Decimal(r["charge"]) if r["charge"] else None,
                     Decimal(r["cost"]) if r["cost"] else None, "USD", r["recording"], 1))
    db.insert_rows("cdr_records", data, cols)


def load(db: Any, now: dt.datetime, rec_base: str) -> dict[str, str]:
    """Write the dataset, users and keys; returns {who: secret} for keys and user names."""
    from cdrhouse.engine import accounts as acc
    from cdrhouse.engine import keys, users

    for tenant, code, kind, name in ACCOUNTS:
        acc.add_account(db, tenant, code, kind, name)
    _insert(db, calls(now, rec_base))
    secrets = {}
    for who in ("admin", "tenant:acme", "tenant:acme/customer:C1", "tenant:acme/carrier:K1",
                "tenant:globex"):
        secrets[who] = keys.create_key(db, who, "tests")[1]
    for name, principal in (("operator", "tenant:acme"), ("cust1", "tenant:acme/customer:C1"),
                            ("carrier1", "tenant:acme/carrier:K1"),
                            ("globexop", "tenant:globex")):
        users.add_user(db, name, PASSWORD, principal)
    return secrets


# -- recordings ---------------------------------------------------------------------------

def wav_bytes(seconds: float = 3.0, rate: int = 8000) -> bytes:
    """A short 440 Hz tone as 16-bit mono WAV."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * n / rate)))
                          for n in range(int(seconds * rate)))
        w.writeframes(frames)
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def log_message(self, *args: Any) -> None:
        """Quiet: the tests read what was served, not the access log."""

    def do_GET(self) -> None:  # noqa: N802
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        rng = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range", ""))
        if rng:
            start = int(rng.group(1) or 0)
            end = int(rng.group(2)) if rng.group(2) else len(body) - 1
            end = min(end, len(body) - 1)
            part = body[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        else:
            part = body
            self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        self.wfile.write(part)


class RecordingServer:
    """WAV files over HTTP on 127.0.0.1 (a thread), with Range support."""

    def __init__(self) -> None:
        handler = type("H", (_Handler,), {"files": {"/rec1.wav": wav_bytes()}})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.files = handler.files
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> RecordingServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":
    from cdrhouse.engine.db import Database, StoreConfig
    from cdrhouse.engine.migrate import migrate

    data_dir, rec_base, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    now = dt.datetime.now(UTC)
    db = Database(StoreConfig(data_dir=data_dir))
    migrate(db)
    secrets = load(db, now, rec_base)
    db.close()
    out.write_text(json.dumps({"now": now.isoformat(), "secrets": secrets}))
