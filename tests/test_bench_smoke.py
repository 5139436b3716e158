"""The peer benchmark's smoke mode runs end to end, so the harness cannot rot.

It runs `python -m benchmarks.peers --smoke` (a tiny dataset, DuckDB and
cdrhouse only; PostgreSQL is not on CI) in its own process — the embedded
engine holds one data directory per process — and checks that every workload
query ran on both engines and gave the same answer. No timing is asserted.
"""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_peers_smoke(tmp_path):
    out = tmp_path / "peers.json"
    before = set(glob.glob(str(Path(tempfile.gettempdir()) / "cdrhouse-peers-*")))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.peers", "--smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())

    assert result["engines"] == ["cdrhouse", "duckdb"]
    assert [q for q in result["queries"]] == ["W1", "W2", "W3", "W4", "W1s", "W2s", "W4s"] + [
        f"W{i}" for i in range(5, 12)]
    for qid, q in result["queries"].items():
        # the warm-up's answers are compared value by value across engines
        assert q["agree_with_cdrhouse"] == {"duckdb": True}, qid
        assert q["rows_round0"]["cdrhouse"] == q["rows_round0"]["duckdb"], qid
        for engine in ("cdrhouse", "duckdb"):
            stats = q["engines"][engine]
            assert stats["median_ms"] > 0 and stats["min_ms"] <= stats["median_ms"], (qid, engine)
    rows = {qid: q["rows_round0"]["cdrhouse"] for qid, q in result["queries"].items()}
    # the dataset is tiny, but these must find something, or the comparison proves little
    for qid in ("W1", "W2", "W3", "W4", "W1s", "W2s", "W4s", "W5", "W7", "W8", "W10", "W11"):
        assert rows[qid] > 0, (qid, rows)
    assert rows["W4"] == rows["W4s"] == 10 and rows["W5"] == 100
    assert result["load"]["cdrhouse"]["rows"] == result["rows"]
    assert result["sizes"]["cdrhouse"]["tables"]["cdr_records"]["bytes"] > 0
    assert result["sizes"]["duckdb"]["file_bytes"] > 0
    assert set(result["floor"]) == {"driver_select_constant_ms", "guarded_select_constant_ms",
                                    "viewer_page_1ms_window_ms"}
    assert result["machine"]["cpus"] >= 1 and result["machine"]["clickhouse"]
    # the Markdown table is printed, one line per query plus W12
    table = proc.stdout.strip().splitlines()
    assert table[0].startswith("| id |") and len(table) == 2 + 14 + 1  # head, W1-W11 with W1s, W2s, W4s, W12
    # nothing left behind
    after = set(glob.glob(str(Path(tempfile.gettempdir()) / "cdrhouse-peers-*")))
    assert after <= before
