"""Damaged and hostile input: one clear error naming file and line, every good row kept.

Issue 12 (items 9 and 11). The attacks come in classes, each a table row:
line ends (bare CR in a field, CR-only files, mixed), line length (runaway
fields of any size), compression (cut or corrupt zstd/gzip), values of the
wrong shape (JSON objects or arrays for scalar fields), and text over the
per-field caps of the catalogue. Reader-level cases need no database; the
end-to-end ones run on both engine interfaces (the `store` fixture).
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from cdrhouse.engine.db import Database
from cdrhouse.engine.formats import detect
from cdrhouse.engine.formats.base import LINE, MAX_LINE_BYTES, FormatError, RawReject
from cdrhouse.engine.ingest import IngestOptions, Ingestor
from cdrhouse.sql import catalogue

HEADER = "call_id,start_time,duration,sip_reason\n"


def good(i: int) -> str:
    return f"g{i},2026-03-01 10:{i % 60:02d}:00,{i},ok\n"


def read_all(path: Path, fmt: str = "auto", batch_rows: int = 1000,
             ) -> tuple[list[int], list[RawReject]]:
    """Line numbers of the rows a reader yields, and its rejects."""
    reader = detect.reader_for(path, fmt)
    lines: list[int] = []
    rejects: list[RawReject] = []
    for batch in reader.read(path, batch_rows, "UTC"):
        lines += batch.table.column(LINE).to_pylist()
        rejects += batch.rejects
    return lines, rejects


def lines_of(text: str | bytes, sep: bytes = b"\n") -> list[bytes]:
    data = text.encode() if isinstance(text, str) else text
    return data.split(sep)


# -- reader level: line ends and line length, every format ---------------------------

def _zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


LONG = 2 * MAX_LINE_BYTES


#: name -> (file bytes, format, expected row lines, {damaged line: words in the reason})
CASES: dict[str, tuple[bytes, str, list[int], dict[int, str]]] = {
    # a bare CR inside an unquoted field of an LF file: that line only
    "csv bare CR in a field": (
        (HEADER + good(1) + "b1,2026-03-01 10:00:00,5,bad\rreason\n" + good(2)).encode(),
        "csv", [2, 4], {3: "carriage return"}),
    "tsv bare CR in a field": (
        "call_id\tstart_time\tduration\na\t2026-03-01 10:00:00\t1\nb\r\t2026-03-01 10:00:00\t1\n"
        "c\t2026-03-01 10:00:00\t1\n".encode(), "tsv", [2, 4], {3: "carriage return"}),
    # CR-only line ends are a file's convention, not damage
    "csv CR-only line ends": (
        (HEADER + good(1) + good(2) + good(3)).replace("\n", "\r").encode(), "csv",
        [2, 3, 4], {}),
    # ... where a lone LF is then the damage (and CRLF / blank lines still count right)
    "csv CR-only line ends, a lone LF in a field": (
        (HEADER.replace("\n", "\r") + good(1).replace("\n", "\r")
         + "b,2026-03-01 10:00:00,5,bad\nreason\r" + good(2).replace("\n", "\r") + "\r\n"
         + good(3).replace("\n", "\r") + "\n\r" + good(4).replace("\n", "\r")).encode(),
        "csv", [2, 4, 6, 8], {3: "line feed (LF) inside"}),
    # blank lines (LF and CRLF) keep the numbering of the lines after them
    "csv blank lines and a short row": (
        (HEADER + good(1) + "\n" + "x,y\n" + "\r\n" + good(2)).encode(), "csv", [2, 6], {}),
    # a runaway line in the middle, longer than a parser block
    "csv runaway line": (
        (HEADER + "".join(good(i) for i in range(3)) + "big,2026-03-01 10:00:00,5,"
         + "x" * LONG + "\n" + "".join(good(i) for i in range(3, 6))).encode(),
        "csv", [2, 3, 4, 6, 7, 8], {5: "longer than"}),
    "csv runaway last line without a line end": (
        (HEADER + good(1) + "y" * LONG).encode(), "csv", [2], {3: "longer than"}),
    "jsonl runaway line": (
        (json.dumps({"call_id": "a", "start_time": "2026-03-01 10:00:00", "duration": 1})
         + "\n" + '{"call_id": "' + "z" * LONG + '"}\n'
         + json.dumps({"call_id": "b", "start_time": "2026-03-01 10:00:00", "duration": 1})
         + "\n").encode(), "jsonl", [1, 3], {2: "longer than"}),
    "jsonl CR-only line ends": (
        "".join(json.dumps({"call_id": f"c{i}", "start_time": "2026-03-01 10:00:00",
                            "duration": i}) + "\r" for i in range(3)).encode(),
        "jsonl", [1, 2, 3], {}),
    # compression that breaks mid-file: the rows before it are kept
    "zstd cut mid-file": (
        _zst((HEADER + "".join(f"g{i},2026-03-01 10:00:00,{i},{random.Random(i).getrandbits(64)}\n"
                               for i in range(40_000))).encode())[:60_000],
        "csv", [], {-1: "zstd data ends early"}),
    "gzip cut mid-file": (
        gzip.compress((HEADER + "".join(good(i) for i in range(40_000))).encode())[:40_000],
        "csv", [], {-1: "gzip data ends early"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_damaged_lines_are_one_reject_each_and_good_rows_are_kept(tmp_path: Path, name: str) -> None:
    data, fmt, expected_rows, damaged = CASES[name]
    path = tmp_path / "input"
    path.write_bytes(data)
    for chosen in (fmt, "auto"):        # forced and detected alike
        rows, rejects = read_all(path, chosen)
        damage = {r.line: r.reason for r in rejects if r.damage}
        if -1 in damaged:   # cut compression: every line before the cut is a row
            (line, reason), = damage.items()
            assert damaged[-1] in reason
            assert rows == list(range(2, line)) and len(rows) > 1000
            continue
        assert rows == expected_rows, (chosen, rejects)
        assert sorted(damage) == sorted(damaged)
        for line, words in damaged.items():
            assert words in damage[line]
        # no line is both a row and a reject
        assert not set(rows) & {r.line for r in rejects}


def test_a_fifty_megabyte_line_in_the_middle_of_a_csv(tmp_path: Path) -> None:
    # (the exact case: 200 good rows around one 50 MB line)
    path = tmp_path / "big.csv"
    with open(path, "w") as fh:
        fh.write(HEADER + "".join(good(i) for i in range(100)))
        fh.write("big,2026-03-01 10:00:00,5," + "x" * 50_000_000 + "\n")
        fh.write("".join(good(i) for i in range(100, 200)))
    rows, rejects = read_all(path)
    assert rows == list(range(2, 102)) + list(range(103, 203))
    assert [(r.line, r.damage) for r in rejects] == [(102, True)]
    assert len(rejects[0].raw) <= 500 and rejects[0].raw.startswith("big,2026-03-01")


SWITCH_LINE = ('"Alice","4930123","4420777","default","2024-01-27 15:07:24","2024-01-27 15:07:30",'
               '"2024-01-27 15:08:00","36","30","NORMAL_CLEARING","{uuid}","","acme","PCMA","PCMA"')


@pytest.mark.parametrize("sep", ["\n", "\r\n", "\r"])
def test_switch_csv_line_ends_and_runaway_lines(tmp_path: Path, sep: str) -> None:
    lines = [SWITCH_LINE.format(uuid="u1"), SWITCH_LINE.format(uuid="u2" + "w" * LONG),
             SWITCH_LINE.format(uuid="u3")]
    path = tmp_path / "fs.csv"
    path.write_text(sep.join(lines) + sep, newline="")
    rows, rejects = read_all(path, "freeswitch-csv")
    assert rows == [1, 3]
    assert [(r.line, r.damage) for r in rejects] == [(2, True)]
    assert "longer than" in rejects[0].reason


def test_switch_csv_bare_cr_in_a_field_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "fs.csv"
    path.write_bytes("\n".join([SWITCH_LINE.format(uuid="u1"), SWITCH_LINE.format(uuid="u\r2"),
                                SWITCH_LINE.format(uuid="u3").replace('"', "")]).encode() + b"\n")
    rows, rejects = read_all(path, "freeswitch-csv")
    # (a CR inside a quoted field is data, not damage)
    assert rows == [1, 2, 3] and rejects == []
    path.write_bytes("\n".join([SWITCH_LINE.format(uuid="u1").replace('"', ""),
                                SWITCH_LINE.format(uuid="u\r2").replace('"', ""),
                                SWITCH_LINE.format(uuid="u3")]).encode() + b"\n")
    rows, rejects = read_all(path, "freeswitch-csv")
    assert rows == [1, 3]
    assert [(r.line, r.damage) for r in rejects] == [(2, True)]
    assert "carriage return" in rejects[0].reason


def test_freeswitch_json_cut_compression_keeps_whole_records(tmp_path: Path) -> None:
    record = {"variables": {"uuid": "u", "start_epoch": "1706368044", "billsec": "0",
                            "hangup_cause": "NO_ANSWER", "pad": "p" * 200}}
    body = json.dumps([{**record, "variables": {**record["variables"], "uuid": f"u{i}",
                                                "pad": str(random.Random(i).getrandbits(512))}}
                       for i in range(3000)], indent=2).encode()
    path = tmp_path / "fs.json.zst"
    path.write_bytes(_zst(body)[: len(_zst(body)) // 2])
    reader = detect.reader_for(path)
    assert reader.name == "freeswitch-json"
    rows, rejects = read_all(path)
    assert len(rows) > 100
    assert [r.damage for r in rejects] == [True] and "zstd data ends early" in rejects[0].reason


@pytest.mark.parametrize("content", [
    bytes(random.Random(7).getrandbits(8) for _ in range(100_000)),
    b"\x28\xb5\x2f\xfd" + bytes(random.Random(8).getrandbits(8) for _ in range(5000)),
    b"\x1f\x8b" + bytes(random.Random(9).getrandbits(8) for _ in range(5000)),
    b"PAR1" + bytes(100) + b"PAR1",
], ids=["random", "zstd-magic", "gzip-magic", "parquet-magic"])
@pytest.mark.parametrize("fmt", ["auto", *detect.FORMATS])
def test_random_bytes_are_one_clear_format_error(tmp_path: Path, content: bytes, fmt: str) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(content)
    try:
        rows, rejects = read_all(path, fmt)
    except FormatError as exc:
        message = str(exc)
        assert message.startswith(str(path))
        assert message.isprintable() and len(message) < 600   # no binary dumped on the terminal
    else:   # a line-based reader may see "lines": then none of them is a row
        assert rows == [] and rejects


# -- values of the wrong shape, and the text caps ----------------------------------

def test_parquet_with_a_list_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"call_id": [["a", "b"]], "start_time": ["2026-03-01 10:00:00"],
                             "duration": [1]}), path)
    with pytest.raises(FormatError, match="call_id hold lists or structs"):
        read_all(path)


def ingest(db: Database, path: Path, tmp_path: Path) -> tuple[object, list[dict]]:
    rejects = tmp_path / f"rejects-{path.name}.csv"
    ing = Ingestor(db, IngestOptions(tenant="acme"), rejects)
    try:
        report = ing.ingest(path)
    finally:
        ing.close()
    rows = list(csv.DictReader(open(rejects, newline=""))) if rejects.exists() else []
    return report, rows


def stored(db: Database) -> list[str]:
    return [c for (c,) in db.rows("SELECT call_id FROM cdr_records ORDER BY call_id")]


NESTED: list[tuple[str, object]] = [
    ("call_id", {"a": 1}), ("call_id", [1, 2]), ("src_number", {"n": "+44"}),
    ("sip_reason", ["Busy Here"]), ("duration", {"s": 5}), ("start_time", []),
    ("customer_code", {}), ("recording_url", {"href": "javascript:alert(1)"}),
]


def test_json_objects_and_arrays_for_scalar_fields_are_rejected(store: Database,
                                                                 tmp_path: Path) -> None:
    path = tmp_path / "nested.jsonl"
    records = [{"call_id": "ok", "start_time": "2026-03-01 10:00:00", "duration": 3}]
    for i, (name, value) in enumerate(NESTED):
        records.append({"call_id": f"n{i}", "start_time": "2026-03-01 10:00:00",
                        "duration": 3, name: value})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    report, rejects = ingest(store, path, tmp_path)
    assert stored(store) == ["ok"]
    got = {int(r["line"]): r["reason"] for r in rejects}
    for i, (name, value) in enumerate(NESTED):
        kind = "object" if isinstance(value, dict) else "array"
        assert got[i + 2] == f"{name}: a JSON {kind} where a single value belongs"
    assert report.rejected == len(NESTED) and report.damage == []


CAPPED = [f for f in catalogue.FIELDS if f.max_length is not None and f.name != "tenant_id"]


def test_every_text_field_has_a_documented_cap() -> None:
    text_fields = {f.name for f in catalogue.FIELDS if f.kind in ("string", "ip")}
    assert {f.name for f in catalogue.FIELDS if f.max_length} == text_fields
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for f in catalogue.FIELDS:
        if f.max_length:
            assert f"| `{f.name}` | {f.max_length:,} |" in readme, f.name


def test_text_over_its_cap_rejects_the_row(store: Database, tmp_path: Path) -> None:
    # one row per capped field: one character over the cap, and (where the field
    # has no stricter syntax) exactly at it; plus the 50 MB sip_reason
    plain = {"call_id", "src_number", "dst_number", "dst_prefix", "release_reason",
             "sip_reason", "codec", "recording_url"}
    path = tmp_path / "caps.jsonl"
    records: list[dict] = []
    expect: dict[int, str] = {}
    for f in CAPPED:
        over = {"call_id": f"over-{f.name}", "start_time": "2026-03-01 10:00:00", "duration": 1,
                f.name: "7" * (f.max_length + 1)}
        records.append(over)
        expect[len(records)] = (f"{f.name} is longer than {f.max_length} characters "
                                f"({f.max_length + 1})")
        if f.name in plain:
            records.append({"call_id": f"at-{f.name}", "start_time": "2026-03-01 10:00:00",
                            "duration": 1, f.name: "7" * f.max_length})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    report, rejects = ingest(store, path, tmp_path)
    got = {int(r["line"]): r["reason"] for r in rejects}
    assert got == expect
    assert sorted(stored(store)) == sorted(["7" * 256] + [f"at-{n}" for n in plain - {"call_id"}])
    big = tmp_path / "big_reason.csv"
    big.write_text("call_id,start_time,duration,sip_reason\nx,2026-03-01 10:00:00,1,"
                   + "r" * 50_000_000 + "\ny,2026-03-01 10:00:00,1,fine\n")
    report, rejects = ingest(store, big, tmp_path)
    assert report.accepted == 1 and [r["line"] for r in rejects] == ["2"]
    assert store.scalar("SELECT max(length(sip_reason)) FROM cdr_records") <= 256


# -- end to end: the Ingestor reports damage, the rows around it are stored -------------

E2E: dict[str, Callable[[], bytes]] = {
    "bare CR": lambda: (HEADER + good(1) + "b1,2026-03-01 10:00:00,5,bad\rreason\n"
                        + good(2)).encode(),
    "runaway line": lambda: (HEADER + good(1) + "big,2026-03-01 10:00:00,5," + "x" * LONG
                             + "\n" + good(2)).encode(),
    "cut zstd": lambda: _zst((HEADER + "".join(
        f"g{i},2026-03-01 10:00:00,{i},{random.Random(i).getrandbits(64)}\n"
        for i in range(40_000))).encode())[:60_000],
}


@pytest.mark.parametrize("name", list(E2E))
def test_damage_is_reported_and_good_rows_stored(store: Database, tmp_path: Path,
                                                 name: str) -> None:
    path = tmp_path / "damaged.csv"
    path.write_bytes(E2E[name]())
    report, rejects = ingest(store, path, tmp_path)
    (damage,) = report.damage
    line = int(damage.split(":")[0].removeprefix("line "))
    assert [int(r["line"]) for r in rejects] == [line]
    count = store.scalar("SELECT count() FROM cdr_records")
    if name == "cut zstd":
        assert count == line - 2 > 1000
    else:
        assert (line, sorted(stored(store))) == (3, ["g1", "g2"])


def test_the_conversion_sql_checks_every_cap_without_a_database() -> None:
    # sql/ingest.py is pure: the statement names every capped field's limit
    from cdrhouse.sql import ingest as conversion
    sql = conversion.conversion_sql({"call_id": "string", "sip_reason": "binary"}, "n", "s")
    for f in catalogue.FIELDS:
        if f.max_length:
            assert f"lengthUTF8(v_{f.name}) > {f.max_length}" in sql
    assert sql.startswith("INSERT INTO n (") and "FROM s)" in sql
