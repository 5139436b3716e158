"""Tests of the Asterisk and FreeSWITCH adapters, with fixtures reproducing real-file quirks.

Pure Python, no database: each test writes a small file to tmp_path and checks
the exact rows and rejects the reader yields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdrhouse.engine.formats import asterisk, freeswitch
from cdrhouse.engine.formats.base import LINE, FormatError, RawReject


def read_all(reader: Any, path: Path, batch_rows: int = 1000) -> tuple[list[dict], list[RawReject]]:
    rows: list[dict] = []
    rejects: list[RawReject] = []
    for batch in reader.read(path, batch_rows=batch_rows):
        rows.extend(batch.table.to_pylist())
        rejects.extend(batch.rejects)
    return rows, rejects


def write(tmp_path: Path, content: str | bytes, name: str = "cdr") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# --- Asterisk ------------------------------------------------------------------------

#: One answered call, by Asterisk column name, as cdr_csv quotes it.
AST_CALL = {
    "accountcode": "acme", "src": "4930123", "dst": "4420777", "dcontext": "from-pstn",
    "clid": '"Alice" <4930123>', "channel": "SIP/trunk-00000001",
    "dstchannel": "SIP/200-00000002", "lastapp": "Dial", "lastdata": "SIP/200,60,t",
    "start": "2024-01-27 15:07:24", "answer": "2024-01-27 15:07:30",
    "end": "2024-01-27 15:08:00", "duration": "36", "billsec": "30",
    "disposition": "ANSWERED", "amaflags": "DOCUMENTATION", "uniqueid": "1706368044.7",
    "userfield": "", "peeraccount": "", "linkedid": "1706368044.7", "sequence": "3",
}
UNQUOTED = {"duration", "billsec", "sequence"}


def csv_quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def ast_line(width: int, **overrides: str) -> str:
    """A Master.csv line of layout `width`, quoted as Asterisk does (numbers bare)."""
    values = {**AST_CALL, **overrides}
    columns = asterisk.LAYOUTS[width].columns
    return ",".join(values[c] if c in UNQUOTED else csv_quote(values[c]) for c in columns)


EXPECTED_BASE = {
    "start_time": "2024-01-27 15:07:24", "answer_time": "2024-01-27 15:07:30",
    "end_time": "2024-01-27 15:08:00", "duration": "36", "billsec": "30",
    "disposition": "ANSWERED", "release_reason": "NORMAL_CLEARING", "sip_code": "200",
    "src_number": "4930123", "dst_number": "4420777", "codec": None,
    "customer_code": "acme", LINE: 1,
}


@pytest.mark.parametrize(
    ("width", "call_id"),
    [
        (17, "1706368044.7"),
        (18, "1706368044.7"),
        (21, "1706368044.7-3"),
        (19, "1706368044.7-3"),  # cdr_custom sample mapping
    ],
)
def test_asterisk_layouts(tmp_path: Path, width: int, call_id: str) -> None:
    rows, rejects = read_all(asterisk.READER, write(tmp_path, ast_line(width) + "\n"))
    assert rejects == []
    assert rows == [{"call_id": call_id, **EXPECTED_BASE}]


def test_asterisk_16_columns_gets_stable_digest_call_ids(tmp_path: Path) -> None:
    text = ast_line(16) + "\n" + ast_line(16, dstchannel="SIP/201-00000003") + "\n"
    rows, rejects = read_all(asterisk.READER, write(tmp_path, text))
    again, _ = read_all(asterisk.READER, write(tmp_path, text, "copy"))
    assert rejects == []
    ids = [r["call_id"] for r in rows]
    assert all(i.startswith("ast-") and len(i) == 24 for i in ids)
    assert len(set(ids)) == 2
    assert ids == [r["call_id"] for r in again]
    assert {k: v for k, v in rows[0].items() if k != "call_id"} == EXPECTED_BASE


def test_asterisk_custom_layout_column_order(tmp_path: Path) -> None:
    """cdr_custom puts clid first and accountcode after amaflags."""
    line = ast_line(19, clid='"" <client1>', src="client1", dst="6789", accountcode="acct9")
    assert line.startswith('""""" <client1>","client1","6789"')  # as in real exports
    rows, _ = read_all(asterisk.READER, write(tmp_path, line + "\n"))
    assert (rows[0]["src_number"], rows[0]["dst_number"], rows[0]["customer_code"]) == (
        "client1", "6789", "acct9")


def test_asterisk_quoted_clid_with_embedded_quotes(tmp_path: Path) -> None:
    line = ast_line(21, clid='"89245555937" <89245555937>, "x"')
    assert '"""89245555937"" <89245555937>, ""x"""' in line
    rows, rejects = read_all(asterisk.READER, write(tmp_path, line + "\n"))
    assert rejects == []
    assert rows[0]["src_number"] == "4930123"
    assert rows[0]["start_time"] == "2024-01-27 15:07:24"
    assert rows[0]["call_id"] == "1706368044.7-3"


def test_asterisk_empty_answer_quoted_and_bare(tmp_path: Path) -> None:
    quoted = ast_line(21, answer="", billsec="0", disposition="NO ANSWER", sequence="1")
    bare = quoted.replace('"2024-01-27 15:07:24","",', '"2024-01-27 15:07:24",,')
    assert bare != quoted
    rows, rejects = read_all(asterisk.READER, write(tmp_path, quoted + "\n" + bare + "\n"))
    assert rejects == []
    assert [r["answer_time"] for r in rows] == [None, None]
    assert [(r["disposition"], r["release_reason"], r["sip_code"]) for r in rows] == [
        ("NO ANSWER", "NO_ANSWER", "480")] * 2


def test_asterisk_invalid_utf8_never_crashes(tmp_path: Path) -> None:
    line = ast_line(21, clid="\x00CLID", src="SRC").encode()
    line = line.replace(b"\x00CLID", b'""8107924651\xa5\xa5b"" <8107924651>')
    line = line.replace(b"SRC", b"81\xff79")
    rows, rejects = read_all(asterisk.READER, write(tmp_path, line + b"\n"))
    assert rejects == []
    assert rows[0]["src_number"] == "81\ufffd79"
    assert rows[0]["dst_number"] == "4420777"


def test_asterisk_legs_sharing_uniqueid_get_distinct_call_ids(tmp_path: Path) -> None:
    legs = [ast_line(21, uniqueid="1706369600.6", sequence=s) for s in ("3", "6", "7")]
    rows, _ = read_all(asterisk.READER, write(tmp_path, "\n".join(legs) + "\n"))
    assert [r["call_id"] for r in rows] == ["1706369600.6-3", "1706369600.6-6", "1706369600.6-7"]


def test_asterisk_crlf_blank_lines_and_bad_rows(tmp_path: Path) -> None:
    good = ast_line(21)
    lines = [
        good,                                   # 1
        "",                                     # 2 blank: skipped
        good + ',"extra"',                      # 3 wrong width
        good.replace('"SIP/200,60,t"', '"SIP/200,60,t'),  # 4 broken quoting
        ast_line(21, uniqueid=""),              # 5 no uniqueid
        ast_line(21, sequence="9"),             # 6
        "",                                     # 7 trailing empty line
    ]
    rows, rejects = read_all(asterisk.READER, write(tmp_path, "\r\n".join(lines)))
    assert [r[LINE] for r in rows] == [1, 6]
    assert rows[1]["call_id"] == "1706368044.7-9"
    assert not any("\r" in (v or "") for r in rows for v in r.values() if isinstance(v, str))
    assert [(r.line, r.raw) for r in rejects] == [(3, lines[2]), (4, lines[3]), (5, lines[4])]
    assert rejects[0].reason.startswith("expected 21 columns")
    assert "found 22" in rejects[0].reason
    assert rejects[1].reason.startswith("broken quoting")
    assert "uniqueid" in rejects[2].reason


@pytest.mark.parametrize(
    ("written", "disposition", "reason", "sip"),
    [
        ("ANSWERED", "ANSWERED", "NORMAL_CLEARING", "200"),
        ("NO ANSWER", "NO ANSWER", "NO_ANSWER", "480"),
        ("NOANSWER", "NO ANSWER", "NO_ANSWER", "480"),
        ("no_answer", "NO ANSWER", "NO_ANSWER", "480"),
        ("busy", "BUSY", "USER_BUSY", "486"),
        ("FAILED", "FAILED", "REQUESTED_CHAN_UNAVAIL", "503"),
        ("CONGESTION", "CONGESTION", "NORMAL_CIRCUIT_CONGESTION", "503"),
        ("WEIRD", "WEIRD", None, None),
        ("", None, None, None),
    ],
)
def test_asterisk_disposition_table(
    tmp_path: Path, written: str, disposition: str | None, reason: str | None, sip: str | None
) -> None:
    rows, _ = read_all(asterisk.READER, write(tmp_path, ast_line(17, disposition=written)))
    assert (rows[0]["disposition"], rows[0]["release_reason"], rows[0]["sip_code"]) == (
        disposition, reason, sip)


def test_asterisk_layout_decided_by_majority_of_first_rows(tmp_path: Path) -> None:
    text = "\n".join([ast_line(17), ast_line(21), ast_line(21), ast_line(21)]) + "\n"
    rows, rejects = read_all(asterisk.READER, write(tmp_path, text))
    assert [r[LINE] for r in rows] == [2, 3, 4]
    assert [r.line for r in rejects] == [1]
    assert "expected 21 columns" in rejects[0].reason


@pytest.mark.parametrize(
    "content",
    [
        "call_id,start_time,end_time,duration\nc1,2024-01-01 00:00:00,2024-01-01 00:01:00,60\n",
        "hello world\nthis is not a CDR file\n",
    ],
)
def test_asterisk_format_error(tmp_path: Path, content: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(FormatError, match=str(path)):
        list(asterisk.READER.read(path))


def test_asterisk_empty_file_yields_nothing(tmp_path: Path) -> None:
    assert list(asterisk.READER.read(write(tmp_path, "\r\n\n"))) == []


def test_asterisk_batching(tmp_path: Path) -> None:
    lines = [ast_line(21, sequence=str(i)) for i in range(5)]
    lines.insert(2, "broken,line")
    path = write(tmp_path, "\n".join(lines) + "\n")
    batches = list(asterisk.READER.read(path, batch_rows=2))
    assert [b.table.num_rows for b in batches] == [2, 2, 1]
    assert [[r.line for r in b.rejects] for b in batches] == [[], [3], []]
    sizes = [b.bytes_read for b in batches]
    assert sizes == sorted(sizes) and sizes[-1] == path.stat().st_size
    batched = [r for b in batches for r in b.table.to_pylist()]
    assert batched == read_all(asterisk.READER, path)[0]
    assert [r[LINE] for r in batched] == [1, 2, 4, 5, 6]


# --- FreeSWITCH CSV ------------------------------------------------------------------

FS_FIELDS = [
    "Outbound Call", "1002", "4420777", "default", "2020/2/10 22:41",
    "2020/2/10 22:41", "2020/2/10 22:42", "64", "61", "NORMAL_CLEARING",
    "b9d0a33e-4c15-11ea-978a-9dd79410affb", "", "acme", "PCMU", "PCMA",
]
FS_EXPECTED = {
    "call_id": "b9d0a33e-4c15-11ea-978a-9dd79410affb", "start_time": "2020/2/10 22:41",
    "answer_time": "2020/2/10 22:41", "end_time": "2020/2/10 22:42", "duration": "64",
    "billsec": "61", "disposition": "ANSWERED", "release_reason": "NORMAL_CLEARING",
    "sip_code": "200", "src_number": "1002", "dst_number": "4420777", "codec": "PCMU",
    "customer_code": "acme", LINE: 1,
}


def fs_line(fields: list[str], quoted: bool) -> str:
    return ",".join(csv_quote(f) if quoted else f for f in fields)


@pytest.mark.parametrize("quoted", [True, False])
def test_freeswitch_csv_quoted_and_unquoted(tmp_path: Path, quoted: bool) -> None:
    unanswered = list(FS_FIELDS)
    unanswered[5], unanswered[8], unanswered[9] = "", "0", "NO_USER_RESPONSE"
    unanswered[12] = unanswered[13] = ""
    text = "\n".join([fs_line(FS_FIELDS, quoted), fs_line(unanswered, quoted),
                      fs_line(FS_FIELDS, quoted)]) + "\n"
    rows, rejects = read_all(freeswitch.CSV_READER, write(tmp_path, text))
    assert rejects == []
    assert rows[0] == FS_EXPECTED
    assert rows[1] == {**FS_EXPECTED, "answer_time": None, "billsec": "0",
                       "disposition": "NO ANSWER", "release_reason": "NO_USER_RESPONSE",
                       "sip_code": "408", "codec": None, "customer_code": None, LINE: 2}
    assert rows[2] == {**FS_EXPECTED, LINE: 3}  # repeated uuid: emitted, the core dedups


def test_freeswitch_csv_rejects_and_crlf(tmp_path: Path) -> None:
    good = fs_line(FS_FIELDS, quoted=True)
    no_uuid = list(FS_FIELDS)
    no_uuid[10] = ""
    lines = [good, fs_line(FS_FIELDS[:14], True), '"unclosed,' + good, fs_line(no_uuid, True), ""]
    rows, rejects = read_all(freeswitch.CSV_READER, write(tmp_path, "\r\n".join(lines)))
    assert [r[LINE] for r in rows] == [1]
    assert [(r.line, r.raw) for r in rejects] == [(2, lines[1]), (3, lines[2]), (4, lines[3])]
    assert rejects[0].reason == (
        "expected 15 columns for the FreeSWITCH default CSV template, found 14")
    assert rejects[1].reason.startswith("broken quoting")
    assert "uuid" in rejects[2].reason


def test_freeswitch_csv_format_error(tmp_path: Path) -> None:
    path = write(tmp_path, ast_line(21) + "\n")
    with pytest.raises(FormatError, match="mod_cdr_csv"):
        list(freeswitch.CSV_READER.read(path))


def test_freeswitch_csv_batching(tmp_path: Path) -> None:
    lines = [fs_line(FS_FIELDS[:10] + [f"uuid-{i}"] + FS_FIELDS[11:], False) for i in range(5)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    batches = list(freeswitch.CSV_READER.read(path, batch_rows=2))
    assert [b.table.num_rows for b in batches] == [2, 2, 1]
    assert [r["call_id"] for b in batches for r in b.table.to_pylist()] == [
        f"uuid-{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("cause", "billsec", "expected"),
    [
        ("NORMAL_CLEARING", "61", ("ANSWERED", 200)),
        ("RECOVERY_ON_TIMER_EXPIRE", "32", ("ANSWERED", 200)),  # answered, then timed out
        ("USER_BUSY", 12, ("ANSWERED", 200)),
        ("NORMAL_CLEARING", "0", ("NO ANSWER", 480)),
        ("USER_BUSY", "0", ("BUSY", 486)),
        ("NO_ANSWER", "0", ("NO ANSWER", 480)),
        ("NO_USER_RESPONSE", "0", ("NO ANSWER", 408)),
        ("ORIGINATOR_CANCEL", "0", ("NO ANSWER", 487)),
        ("ALLOTTED_TIMEOUT", "0", ("NO ANSWER", 408)),
        ("CALL_REJECTED", "0", ("FAILED", 603)),
        ("UNALLOCATED_NUMBER", "0", ("FAILED", 404)),
        ("NO_ROUTE_DESTINATION", "0", ("FAILED", 404)),
        ("INVALID_NUMBER_FORMAT", "0", ("FAILED", 484)),
        ("NORMAL_TEMPORARY_FAILURE", "0", ("CONGESTION", 503)),
        ("SWITCH_CONGESTION", "0", ("CONGESTION", 503)),
        ("NORMAL_CIRCUIT_CONGESTION", "0", ("CONGESTION", 503)),
        ("RECOVERY_ON_TIMER_EXPIRE", "0", ("FAILED", 504)),
        ("DESTINATION_OUT_OF_ORDER", "0", ("FAILED", 502)),
        ("REQUESTED_CHAN_UNAVAIL", "0", ("FAILED", 503)),
        ("normal_clearing", None, ("NO ANSWER", 480)),
        ("SOMETHING_NEW", "0", ("FAILED", None)),
        (None, "0", ("FAILED", None)),
        ("USER_BUSY", "abc", ("BUSY", 486)),
    ],
)
def test_cause_table(cause: str | None, billsec: Any, expected: tuple[str, int | None]) -> None:
    assert freeswitch.disposition_for(cause, billsec) == expected


def test_asterisk_causes_map_back_to_the_same_disposition() -> None:
    """The two switch vocabularies agree: an Asterisk disposition's cause maps back to it."""
    for disposition, (cause, sip) in asterisk.DISPOSITION_CAUSES.items():
        billsec = "5" if disposition == "ANSWERED" else "0"
        assert freeswitch.disposition_for(cause, billsec) == (disposition, sip)


# --- FreeSWITCH JSON -----------------------------------------------------------------


def fs_json(**variables: str) -> dict[str, Any]:
    """A trimmed mod_json_cdr record: the keys the reader uses, plus some it ignores."""
    base = {
        "uuid": "5a3a1d91-90d3-4db4-af5c-cc3ae15d93a4", "sip_from_user": "1001",
        "sip_network_ip": "192.168.56.1", "sip_received_ip": "192.168.56.1",
        "effective_caller_id_number": "1001", "sip_req_user": "1002",
        "accountcode": "1001", "read_codec": "G722", "write_codec": "G722",
        "sip_term_status": "200", "sip_term_cause": "16", "hangup_cause": "NORMAL_CLEARING",
        "start_epoch": "1521025758", "start_uepoch": "1521025758006702",
        "answer_epoch": "1521025767", "answer_uepoch": "1521025767766321",
        "end_epoch": "1521025788", "end_uepoch": "1521025788366141",
        "duration": "30", "billsec": "21", "progressmsec": "110",
        "progress_mediamsec": "9760",
    }
    return {
        "core-uuid": "63e2315b-d538-4dfa-9ed5-af73ba6210b6",
        "channel_data": {"state": "CS_REPORTING"},
        "callStats": {"audio": {"inbound": {"mos": 4.49}}},
        "variables": {**base, **variables},
        "callflow": [
            {"profile_index": "2", "caller_profile": {
                "caller_id_number": "1001", "destination_number": "1002",
                "network_addr": "192.168.56.1", "uuid": base["uuid"]}},
            {"profile_index": "1", "caller_profile": {
                "caller_id_number": "1001", "destination_number": "1002"}},
        ],
    }


JSON_EXPECTED = {
    "call_id": "5a3a1d91-90d3-4db4-af5c-cc3ae15d93a4",
    "start_time": "2018-03-14T11:09:18.006Z", "answer_time": "2018-03-14T11:09:27.766Z",
    "end_time": "2018-03-14T11:09:48.366Z", "duration": "30", "billsec": "21",
    "disposition": "ANSWERED", "release_reason": "NORMAL_CLEARING", "sip_code": "200",
    "sip_reason": None, "pdd_ms": "110", "src_number": "1001", "dst_number": "1002",
    "src_ip": "192.168.56.1", "codec": "G722", "direction": None, "customer_code": "1001",
    LINE: 1,
}


def test_freeswitch_json_single_pretty_object(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(fs_json(), indent="\t") + "\n")
    rows, rejects = read_all(freeswitch.JSON_READER, path)
    assert rejects == []
    assert rows == [JSON_EXPECTED]


def test_freeswitch_json_single_line_without_newline(tmp_path: Path) -> None:
    rows, _ = read_all(freeswitch.JSON_READER, write(tmp_path, json.dumps(fs_json())))
    assert rows == [JSON_EXPECTED]


def test_freeswitch_json_array(tmp_path: Path) -> None:
    records = [fs_json(uuid=f"u{i}") for i in range(3)]
    pretty = write(tmp_path, json.dumps(records, indent=2), "pretty")
    rows, rejects = read_all(freeswitch.JSON_READER, pretty)
    assert rejects == []
    assert [r["call_id"] for r in rows] == ["u0", "u1", "u2"]
    assert rows[1] == {**JSON_EXPECTED, "call_id": "u1",
                       LINE: json.dumps(records, indent=2).split("\n").index("  {", 2) + 1}
    compact, _ = read_all(freeswitch.JSON_READER, write(tmp_path, json.dumps(records), "one"))
    assert [r["call_id"] for r in compact] == ["u0", "u1", "u2"]


def test_freeswitch_json_lines_with_broken_line(tmp_path: Path) -> None:
    lines = [
        "{not json at all",                                   # 1
        json.dumps(fs_json(uuid="a")),                        # 2
        "",                                                   # 3 blank
        json.dumps(fs_json(uuid="b"))[:50],                   # 4 truncated
        json.dumps(fs_json(uuid="c")),                        # 5
        json.dumps({"variables": {"hangup_cause": "NORMAL_CLEARING"}}),  # 6 no uuid/start
    ]
    rows, rejects = read_all(freeswitch.JSON_READER, write(tmp_path, "\n".join(lines) + "\n"))
    assert [(r["call_id"], r[LINE]) for r in rows] == [("a", 2), ("c", 5)]
    assert [(r.line, r.raw) for r in rejects] == [(1, lines[0]), (4, lines[3]), (6, lines[5])]
    assert rejects[0].reason.startswith("invalid JSON")
    assert rejects[2].reason == "record has no uuid and no start time"


def test_freeswitch_json_url_encoded_and_fallbacks(tmp_path: Path) -> None:
    record = fs_json(
        caller_id_number="%2B4930123", destination_number="%2B44%20207",
        hangup_cause="USER_BUSY", billsec="0", answer_epoch="0", answer_uepoch="0",
        sip_term_status="", sip_hangup_phrase="Busy%20Here", call_direction="Outbound",
        accountcode="acme%2Fretail", progressmsec="0", sip_network_ip="",
    )
    del record["variables"]["start_uepoch"]
    record["callflow"] = record["callflow"][0]  # callflow as a dict
    rows, _ = read_all(freeswitch.JSON_READER, write(tmp_path, json.dumps(record) + "\n"))
    assert rows == [{
        **JSON_EXPECTED, "start_time": "2018-03-14T11:09:18Z", "answer_time": None,
        "billsec": "0", "disposition": "BUSY", "release_reason": "USER_BUSY",
        "sip_code": "486", "sip_reason": "Busy Here", "pdd_ms": "9760",
        "src_number": "+4930123", "dst_number": "+44 207", "direction": "outbound",
        "customer_code": "acme/retail",
    }]


@pytest.mark.parametrize(
    ("variables", "sip_code"),
    [
        ({"sip_term_status": "487"}, "487"),
        ({"sip_term_status": "", "proto_specific_hangup_cause": "sip:404"}, "404"),
        ({"sip_term_status": "", "hangup_cause": "NO_ROUTE_DESTINATION", "billsec": "0"}, "404"),
    ],
)
def test_freeswitch_json_sip_code_sources(
    tmp_path: Path, variables: dict[str, str], sip_code: str
) -> None:
    path = write(tmp_path, json.dumps(fs_json(**variables)) + "\n")
    assert read_all(freeswitch.JSON_READER, path)[0][0]["sip_code"] == sip_code


def test_freeswitch_json_src_and_dst_fall_back_to_callflow_then_sip(tmp_path: Path) -> None:
    record = fs_json(effective_caller_id_number="999", sip_req_user="888")
    record["callflow"][0]["caller_profile"].update(caller_id_number="111",
                                                   destination_number="222")
    path = write(tmp_path, json.dumps(record) + "\n", "profile")
    assert [read_all(freeswitch.JSON_READER, path)[0][0][k] for k in
            ("src_number", "dst_number")] == ["111", "222"]
    del record["callflow"]
    path = write(tmp_path, json.dumps(record) + "\n", "vars")
    assert [read_all(freeswitch.JSON_READER, path)[0][0][k] for k in
            ("src_number", "dst_number")] == ["999", "888"]


def test_freeswitch_json_broken_pretty_file_is_one_reject(tmp_path: Path) -> None:
    good = json.dumps(fs_json(uuid="ok"), indent=2)
    broken = json.dumps(fs_json(uuid="bad"), indent=2).replace('"duration": "30",',
                                                                '"duration": 30 30,')
    path = write(tmp_path, good + "\n" + broken + "\n")
    rows, rejects = read_all(freeswitch.JSON_READER, path)
    assert [r["call_id"] for r in rows] == ["ok"]
    assert [r.line for r in rejects] == [good.count("\n") + 2]
    assert rejects[0].reason.startswith("invalid JSON (rest of file skipped)")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("call_id,start_time\nc1,2024-01-01 00:00:00\n", "does not start with a JSON"),
        ('{"rows": [1, 2]}\n', 'neither "variables" nor "channel_data"'),
        ('[{"a": 1}]', 'neither "variables" nor "channel_data"'),
    ],
)
def test_freeswitch_json_format_error(tmp_path: Path, content: str, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        list(freeswitch.JSON_READER.read(write(tmp_path, content)))


def test_freeswitch_json_batching(tmp_path: Path) -> None:
    text = "\n".join(json.dumps(fs_json(uuid=f"u{i}")) for i in range(5)) + "\n"
    path = write(tmp_path, text)
    batches = list(freeswitch.JSON_READER.read(path, batch_rows=2))
    assert [b.table.num_rows for b in batches] == [2, 2, 1]
    assert [r["call_id"] for b in batches for r in b.table.to_pylist()] == [
        f"u{i}" for i in range(5)]
    assert batches[-1].bytes_read == path.stat().st_size


# --- sniffing ------------------------------------------------------------------------

CANONICAL = (
    "call_id,start_time,answer_time,end_time,duration,billsec,disposition,src_number,"
    "dst_number,release_reason,sip_code,sip_reason,pdd_ms,src_ip,dst_ip,codec\n"
    "c1,2024-01-01 00:00:00,,2024-01-01 00:01:00,60,0,NO ANSWER,1,2,NO_ANSWER,480,,0,,,\n"
)
BIG_CDR = json.dumps(fs_json(), indent=2)

SNIFF_CASES = [
    # (name, head, asterisk, freeswitch csv, freeswitch json)
    ("asterisk 21", ast_line(21) + "\r\n", True, False, False),
    ("asterisk 16", ast_line(16) + "\n", True, False, False),
    ("asterisk custom 19", ast_line(19) + "\n" + ast_line(19), True, False, False),
    ("freeswitch csv quoted", fs_line(FS_FIELDS, True) + "\n", False, True, False),
    ("freeswitch csv bare", fs_line(FS_FIELDS, False) + "\n", False, True, False),
    ("freeswitch json pretty", BIG_CDR, False, False, True),
    ("freeswitch json array", json.dumps([fs_json()]), False, False, True),
    ("freeswitch json lines", json.dumps(fs_json()) + "\n" + json.dumps(fs_json()), False,
     False, True),
    ("freeswitch json cut short", BIG_CDR[: len(BIG_CDR) // 2], False, False, True),
    ("canonical csv", CANONICAL, False, False, False),
    ("canonical header only", CANONICAL.split("\n")[0], False, False, False),
    ("asterisk behind a header", "accountcode,src,dst\n" + ast_line(21), False, False, False),
    ("random text", "lorem ipsum dolor sit amet\n1,2,3\n", False, False, False),
    ("other json", '{"rows": [{"a": 1}]}', False, False, False),
    ("empty", "", False, False, False),
]


@pytest.mark.parametrize(
    ("head", "is_asterisk", "is_fs_csv", "is_fs_json"),
    [case[1:] for case in SNIFF_CASES],
    ids=[case[0] for case in SNIFF_CASES],
)
def test_sniff(head: str, is_asterisk: bool, is_fs_csv: bool, is_fs_json: bool) -> None:
    raw = head.encode()[:65536]
    assert asterisk.sniff(raw) is is_asterisk
    assert freeswitch.sniff_csv(raw) is is_fs_csv
    assert freeswitch.sniff_json(raw) is is_fs_json


def test_sniff_survives_invalid_utf8() -> None:
    raw = ast_line(21, src="SRC").encode().replace(b"SRC", b"\xa5\xa5")
    assert asterisk.sniff(raw) is True
    assert freeswitch.sniff_csv(raw) is False


def test_reader_names() -> None:
    assert asterisk.READER.name == "asterisk"
    assert freeswitch.CSV_READER.name == "freeswitch-csv"
    assert freeswitch.JSON_READER.name == "freeswitch-json"
