"""Fuzzing the format readers: whatever the bytes, only the documented error.

A reader either yields batches (rows and rejects, each with a line number) or
raises `FormatError` naming the file; nothing else may escape, whatever the
input (issue 12, item 9). Hypothesis feeds every reader random bytes and
mutations of real samples of every format, plain and zstd/gzip-compressed
(bounded examples: the whole module runs in seconds). No database is needed.
"""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdrhouse.engine.formats import detect
from cdrhouse.engine.formats.base import LINE, FormatError

CANONICAL_CSV = (
    b"call_id,start_time,answer_time,end_time,duration,billsec,customer_code,src_number,"
    b"dst_number,disposition,customer_rate\n"
    b"a1,2026-03-01 10:00:00,2026-03-01 10:00:05,,65,60,C1,+44 20 7946-0001,4420794600,,0.006\n"
    b'a2,2026-03-01T23:30:00+02:00,,,30,,C2,"client, 1",1234,NO ANSWER,\r\n'
    b"a3,2026-03-01 10:00:00,,2026-03-01 10:01:00,,,C1,,,,\n")
JSONL = b"".join(json.dumps(r).encode() + b"\n" for r in (
    {"call_id": "j1", "start_time": "2026-03-01 10:00:00", "duration": 5, "sip_code": 200},
    {"call_id": "j2", "start_time": "2026-03-01 10:00:01", "duration": "7", "src_ip": "10.0.0.1"},
))
ASTERISK = (
    b'"","89245555937","211474","ctx","""89245555937"" <89245555937>","SIP/a-1","","Hangup","",'
    b'"2024-01-27 15:07:24","2024-01-27 15:07:24","2024-01-27 15:07:51",27,27,"ANSWERED",'
    b'"DOCUMENTATION","1706368044.0","","","1706368044.0",0\r\n'
    b'"","89245555937","211553","ctx","""Ren\xe9"" <89245555937>","SIP/a-3","SIP/301-4","Dial",'
    b'"SIP/301,60","2024-01-27 15:33:20",,"2024-01-27 15:34:20",60,0,"NO ANSWER",'
    b'"DOCUMENTATION","1706369600.6","","","1706369600.6",3\r\n')
FREESWITCH_CSV = (
    b'"Alice","4930123","4420777","default","2024-01-27 15:07:24","2024-01-27 15:07:30",'
    b'"2024-01-27 15:08:00","36","30","NORMAL_CLEARING","u-1","","acme","PCMA","PCMA"\n'
    b'"Bob","4930124","4420778","default","2024-01-27 15:09:24","",'
    b'"2024-01-27 15:09:40","16","0","USER_BUSY","u-2","","acme","PCMU","PCMU"\n')
FREESWITCH_JSON = json.dumps([
    {"variables": {"uuid": "f1", "start_epoch": "1706368044", "answer_epoch": "1706368050",
                   "end_epoch": "1706368080", "billsec": "30", "duration": "36",
                   "hangup_cause": "NORMAL_CLEARING", "caller_id_number": "%2B4930123"}},
    {"variables": {"uuid": "f2", "start_epoch": "1706368044", "billsec": "0",
                   "hangup_cause": "USER_BUSY"}, "callflow": [{"caller_profile": {}}]},
], indent=2).encode()


def _parquet() -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"call_id": ["p1", "p2"], "start_time": ["2026-03-01 10:00:00"] * 2,
                             "duration": [1, 2]}), sink, row_group_size=1)
    return sink.getvalue()


SAMPLES = [CANONICAL_CSV, CANONICAL_CSV.replace(b",", b"\t"), JSONL, ASTERISK, FREESWITCH_CSV,
           FREESWITCH_JSON, _parquet()]
NASTY = [b"\r", b"\n", b"\r\n", b'"', b",", b"\t", b"\x00", b"\xff", b"{", b"[", b"}",
         b"\xef\xbb\xbf", b"9" * 30, b"\x28\xb5\x2f\xfd", b"\x1f\x8b", b"PAR1"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real sample with a few edits: bytes replaced, inserted, deleted; cut; compressed."""
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        if action == "insert":
            data[at:at] = draw(st.sampled_from(NASTY) | st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 20))]
        elif action == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
    out = bytes(data)
    wrap = draw(st.sampled_from(["plain", "plain", "zstd", "gzip"]))
    if wrap == "zstd":
        out = zstandard.ZstdCompressor().compress(out)
    elif wrap == "gzip":
        out = gzip.compress(out)
    if wrap != "plain" and draw(st.booleans()):   # and damage the compressed bytes
        at = draw(st.integers(0, len(out)))
        out = out[:at] + draw(st.binary(max_size=4))
    return out


FORMAT_NAMES = ["auto", *detect.FORMATS]
#: Formats where one line is one record (JSON arrays on a line give several).
_ONE_RECORD_PER_LINE = {"csv", "tsv", "jsonl", "asterisk", "freeswitch-csv"}


def _check(content: bytes, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input"
        path.write_bytes(content)
        try:
            reader = detect.reader_for(path, fmt)
            rows: list[int] = []
            rejects: list[int] = []
            for batch in reader.read(path, 3, "UTC"):
                rows += batch.table.column(LINE).to_pylist()
                rejects += [r.line for r in batch.rejects]
                assert all(isinstance(r.reason, str) and r.reason for r in batch.rejects)
        except FormatError as exc:
            assert str(exc).startswith(str(path)) or str(exc).startswith("unknown format")
            return
        assert all(line >= 1 for line in rows + rejects)
        if reader.name in _ONE_RECORD_PER_LINE:
            assert len(rows) == len(set(rows)), rows        # each line is one row at most
            assert not set(rows) & set(rejects), (rows, rejects)


_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(content=st.binary(max_size=3000), fmt=st.sampled_from(FORMAT_NAMES))
def test_random_bytes_raise_only_format_errors(content: bytes, fmt: str) -> None:
    _check(content, fmt)


@_SETTINGS
@given(content=mutated(), fmt=st.sampled_from(FORMAT_NAMES))
def test_mutated_samples_raise_only_format_errors(content: bytes, fmt: str) -> None:
    _check(content, fmt)


def test_the_samples_themselves_read_cleanly() -> None:
    # (so the mutations start from files every reader accepts)
    for sample, fmt in zip(SAMPLES, ["csv", "tsv", "jsonl", "asterisk", "freeswitch-csv",
                                     "freeswitch-json", "parquet"], strict=True):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "input"
            path.write_bytes(sample)
            assert detect.detect(path) == fmt
            batches = list(detect.FORMATS[fmt].read(path, 100, "UTC"))
            assert sum(b.table.num_rows for b in batches) == 2 + (fmt in ("csv", "tsv"))
            assert [r for b in batches for r in b.rejects] == []
