"""FreeSWITCH adapters: mod_cdr_csv (default template) and mod_json_cdr.

Both share one vocabulary table, `CAUSES`, because FreeSWITCH records how a
call ended only as a Q.850 hangup cause: the disposition and the SIP code are
derived from it (and from billsec) the same way for CSV and JSON, by
`disposition_for`.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from cdrhouse.engine.formats.base import (
    BATCH_ROWS,
    BatchBuilder,
    DamagedFile,
    FormatError,
    RawBatch,
    head_rows,
    is_int,
    is_timestamp,
    iter_csv_lines,
    iter_lines,
    none_if_empty,
    open_input,
    preview,
    read_head,
    read_headerless_csv,
)

#: Q.850 hangup cause -> (disposition, SIP code) for a call that was not answered.
#:
#: SIP codes are the ones FreeSWITCH itself sends for the cause (mod_sofia
#: hangup_cause_to_sip, RFC 4497/3398); causes it does not list get their
#: nearest RFC 3398 code. Whatever the cause, billsec > 0 means ANSWERED/200,
#: and a cause missing from this table means FAILED with no SIP code.
CAUSES: dict[str, tuple[str, int]] = {
    # Cleared normally before answer: the caller gave up or nobody picked up.
    "NORMAL_CLEARING": ("NO ANSWER", 480),
    "NO_ANSWER": ("NO ANSWER", 480),
    "NO_USER_RESPONSE": ("NO ANSWER", 408),
    "ORIGINATOR_CANCEL": ("NO ANSWER", 487),
    "ALLOTTED_TIMEOUT": ("NO ANSWER", 408),
    "LOSE_RACE": ("NO ANSWER", 487),
    "PICKED_OFF": ("NO ANSWER", 487),
    "USER_BUSY": ("BUSY", 486),
    # Capacity problems on the way.
    "NORMAL_CIRCUIT_CONGESTION": ("CONGESTION", 503),
    "SWITCH_CONGESTION": ("CONGESTION", 503),
    "NORMAL_TEMPORARY_FAILURE": ("CONGESTION", 503),
    # Everything else that stops a call is a failure.
    "REQUESTED_CHAN_UNAVAIL": ("FAILED", 503),
    "NETWORK_OUT_OF_ORDER": ("FAILED", 503),
    "GATEWAY_DOWN": ("FAILED", 503),
    "BEARERCAPABILITY_NOTAVAIL": ("FAILED", 503),
    "CALL_REJECTED": ("FAILED", 603),
    "UNALLOCATED_NUMBER": ("FAILED", 404),
    "NO_ROUTE_TRANSIT_NET": ("FAILED", 404),
    "NO_ROUTE_DESTINATION": ("FAILED", 404),
    "USER_NOT_REGISTERED": ("FAILED", 404),
    "SUBSCRIBER_ABSENT": ("FAILED", 480),
    "NORMAL_UNSPECIFIED": ("FAILED", 480),
    "NUMBER_CHANGED": ("FAILED", 410),
    "REDIRECTION_TO_NEW_DESTINATION": ("FAILED", 410),
    "INVALID_NUMBER_FORMAT": ("FAILED", 484),
    "INVALID_URL": ("FAILED", 484),
    "INVALID_GATEWAY": ("FAILED", 484),
    "DESTINATION_OUT_OF_ORDER": ("FAILED", 502),
    "INVALID_PROFILE": ("FAILED", 502),
    "OUTGOING_CALL_BARRED": ("FAILED", 403),
    "INCOMING_CALL_BARRED": ("FAILED", 403),
    "BEARERCAPABILITY_NOTAUTH": ("FAILED", 403),
    "BEARERCAPABILITY_NOTIMPL": ("FAILED", 488),
    "INCOMPATIBLE_DESTINATION": ("FAILED", 488),
    "FACILITY_REJECTED": ("FAILED", 501),
    "FACILITY_NOT_IMPLEMENTED": ("FAILED", 501),
    "SERVICE_NOT_IMPLEMENTED": ("FAILED", 501),
    "EXCHANGE_ROUTING_ERROR": ("FAILED", 483),
    "RECOVERY_ON_TIMER_EXPIRE": ("FAILED", 504),
    "MEDIA_TIMEOUT": ("FAILED", 408),
    "INTERWORKING": ("FAILED", 500),
}


def disposition_for(cause: str | None, billsec: str | int | None) -> tuple[str, int | None]:
    """(disposition, SIP code) for a hangup cause and billsec, via `CAUSES`.

    billsec decides answered-ness because FreeSWITCH hangs answered calls up
    with whatever cause ended them (even RECOVERY_ON_TIMER_EXPIRE); an
    unparsable billsec counts as 0 (the ingest core rejects it anyway).
    """
    try:
        seconds = int(str(billsec).strip()) if billsec is not None else 0
    except ValueError:
        seconds = 0
    if seconds > 0:
        return "ANSWERED", 200
    return CAUSES.get((cause or "").strip().upper(), ("FAILED", None))


def _sip_text(code: int | None) -> str | None:
    return str(code) if code is not None else None


# --- mod_cdr_csv ---------------------------------------------------------------------

#: The default template of mod_cdr_csv (`default` in cdr_csv.conf.xml).
CSV_COLUMNS: tuple[str, ...] = (
    "caller_id_name", "caller_id_number", "destination_number", "context",
    "start_stamp", "answer_stamp", "end_stamp", "duration", "billsec",
    "hangup_cause", "uuid", "bleg_uuid", "accountcode", "read_codec", "write_codec",
)
CSV_OUTPUT_COLUMNS: tuple[str, ...] = (
    "call_id", "start_time", "answer_time", "end_time", "duration", "billsec",
    "disposition", "release_reason", "sip_code", "src_number", "dst_number",
    "codec", "customer_code",
)
_CAUSE_RE = re.compile(r"[A-Z][A-Z0-9_]*")
_DETECT_LINES = 50


def _csv_row_fits(fields: list[str]) -> bool:
    """15 columns with times, durations, a cause name and a uuid where the template puts them."""
    if len(fields) != len(CSV_COLUMNS):
        return False
    v = dict(zip(CSV_COLUMNS, fields, strict=True))
    return (
        is_timestamp(v["start_stamp"])
        and is_timestamp(v["end_stamp"])
        and (not v["answer_stamp"].strip() or is_timestamp(v["answer_stamp"]))
        and is_int(v["duration"])
        and is_int(v["billsec"])
        and _CAUSE_RE.fullmatch(v["hangup_cause"].strip()) is not None
        and bool(v["uuid"].strip())
    )


def _csv_to_row(fields: list[str]) -> dict[str, str | None] | str:
    v = dict(zip(CSV_COLUMNS, fields, strict=True))
    uuid = v["uuid"].strip()
    if not uuid:
        return "empty uuid: no call_id for this row"
    cause = none_if_empty(v["hangup_cause"].strip())
    disposition, sip = disposition_for(cause, v["billsec"])
    return {
        "call_id": uuid,
        "start_time": none_if_empty(v["start_stamp"]),
        "answer_time": none_if_empty(v["answer_stamp"]),
        "end_time": none_if_empty(v["end_stamp"]),
        "duration": none_if_empty(v["duration"]),
        "billsec": none_if_empty(v["billsec"]),
        "disposition": disposition,
        "release_reason": cause,
        "sip_code": _sip_text(sip),
        "src_number": none_if_empty(v["caller_id_number"]),
        "dst_number": none_if_empty(v["destination_number"]),
        "codec": none_if_empty(v["read_codec"]),
        "customer_code": none_if_empty(v["accountcode"]),
    }


def sniff_csv(head: bytes) -> bool:
    """True when the first row fits the default mod_cdr_csv template (so never a header)."""
    rows = head_rows(head, limit=1)
    return bool(rows) and rows[0] is not None and _csv_row_fits(rows[0])


class FreeSwitchCsvReader:
    """Reads mod_cdr_csv files written with the default template."""

    name = "freeswitch-csv"
    sniff = staticmethod(sniff_csv)

    def read(self, path: Path, batch_rows: int = BATCH_ROWS) -> Iterator[RawBatch]:
        seen = fits = 0
        for line in iter_csv_lines(path):
            seen += 1
            fits += line.fields is not None and _csv_row_fits(line.fields)
            if seen >= _DETECT_LINES:
                break
        if seen == 0:
            return
        if not fits:
            raise FormatError(
                f"{path}: not a FreeSWITCH mod_cdr_csv file (none of the first {seen} rows "
                "has the 15 columns of the default template)"
            )
        yield from read_headerless_csv(
            path, batch_rows, CSV_OUTPUT_COLUMNS, len(CSV_COLUMNS),
            "the FreeSWITCH default CSV template", _csv_to_row,
        )


# --- mod_json_cdr --------------------------------------------------------------------

JSON_OUTPUT_COLUMNS: tuple[str, ...] = (
    "call_id", "start_time", "answer_time", "end_time", "duration", "billsec",
    "disposition", "release_reason", "sip_code", "sip_reason", "pdd_ms",
    "src_number", "dst_number", "src_ip", "codec", "direction", "customer_code",
)
#: Top-level keys that make a JSON object a mod_json_cdr record.
_CDR_KEYS = ("variables", "channel_data")
_SNIFF_KEY_RE = re.compile(r'"(?:variables|channel_data)"\s*:\s*\{')
_SIP_PROTO_RE = re.compile(r"sips?:(\d{3})")
_DIRECTIONS = ("inbound", "outbound")
_CHUNK = 1 << 20
#: How many leading lines decide between JSON lines and pretty-printed JSON.
_MODE_LINES = 5
#: A pretty-printed record bigger than this is treated as broken (bounds memory).
_MAX_RECORD_CHARS = 64 << 20
#: Rejected JSON records keep at most this much of their text.
_RAW_MAX = 8192
#: Marks a reject reason as damage to the file (the rest of a stream is lost).
_DAMAGED = "\x00damage:"


def _text(value: Any) -> str | None:
    """A variable as text: URL-decoded (mod_json_cdr may encode values), '' -> None.

    `unquote`, not `unquote_plus`: a '+' in a number is a real E.164 plus.
    """
    if value is None or isinstance(value, (dict, list)):
        return None
    text = value if isinstance(value, str) else str(value)
    if "%" in text:
        text = unquote(text)
    return text or None


def _epoch_to_iso(seconds: str | None, micros: str | None) -> str | None:
    """FreeSWITCH epochs as ISO 8601 UTC; the microsecond variant gives milliseconds.

    0 means "never happened" (e.g. answer_epoch of an unanswered call). A value
    that is not a number is passed on as written for the core to reject.
    """
    if micros and micros.isdigit() and int(micros) > 0:
        secs, rest = divmod(int(micros), 1_000_000)
        stamp = datetime.fromtimestamp(secs, tz=UTC)
        return f"{stamp:%Y-%m-%dT%H:%M:%S}.{rest // 1000:03d}Z"
    if seconds is None:
        return None
    if seconds.isdigit():
        if int(seconds) == 0:
            return None
        return f"{datetime.fromtimestamp(int(seconds), tz=UTC):%Y-%m-%dT%H:%M:%S}Z"
    return seconds


def _caller_profile(record: dict[str, Any]) -> dict[str, Any]:
    """The current caller profile: `callflow` is a dict, or a list newest first."""
    callflow = record.get("callflow")
    if isinstance(callflow, list):
        callflow = next((c for c in callflow if isinstance(c, dict)), None)
    if not isinstance(callflow, dict):
        return {}
    profile = callflow.get("caller_profile")
    return profile if isinstance(profile, dict) else {}


def _first(*values: str | None) -> str | None:
    return next((v for v in values if v), None)


def _pdd_ms(var: dict[str, Any]) -> str | None:
    """Post-dial delay: time to the first ringing or early media, whichever came first.

    progressmsec is the 180, progress_mediamsec the 183 (or the answer's media);
    0 means it never happened.
    """
    candidates = [
        int(v) for v in (_text(var.get("progressmsec")), _text(var.get("progress_mediamsec")))
        if v and v.isdigit() and int(v) > 0
    ]
    return str(min(candidates)) if candidates else None


def _json_to_row(record: Any) -> dict[str, str | None] | str:
    """Map one mod_json_cdr record; a str result is the reason it is rejected."""
    if not isinstance(record, dict):
        return "record is not a JSON object"
    raw_vars = record.get("variables")
    var: dict[str, Any] = raw_vars if isinstance(raw_vars, dict) else {}
    profile = _caller_profile(record)

    def v(name: str) -> str | None:
        return _text(var.get(name))

    call_id = _first(v("uuid"), _text(profile.get("uuid")))
    start = _epoch_to_iso(v("start_epoch"), v("start_uepoch")) or v("start_stamp")
    missing = [name for name, value in (("uuid", call_id), ("start time", start)) if not value]
    if missing:
        return f"record has no {' and no '.join(missing)}"

    cause = v("hangup_cause")
    billsec = v("billsec")
    disposition, table_sip = disposition_for(cause, billsec)
    sip_code = v("sip_term_status")
    if not (sip_code and sip_code.isdigit()):
        proto = _SIP_PROTO_RE.fullmatch(v("proto_specific_hangup_cause") or "")
        sip_code = proto.group(1) if proto else _sip_text(table_sip)
    direction = (_first(v("call_direction"), v("direction")) or "").lower()

    return {
        "call_id": call_id,
        "start_time": start,
        "answer_time": _epoch_to_iso(v("answer_epoch"), v("answer_uepoch")) or v("answer_stamp"),
        "end_time": _epoch_to_iso(v("end_epoch"), v("end_uepoch")) or v("end_stamp"),
        "duration": v("duration"),
        "billsec": billsec,
        "disposition": disposition,
        "release_reason": cause,
        "sip_code": sip_code,
        "sip_reason": v("sip_hangup_phrase"),
        "pdd_ms": _pdd_ms(var),
        # The caller profile is what mod_cdr_csv's ${caller_id_number} and
        # ${destination_number} expand to, so both readers agree on a call;
        # effective_caller_id_number / sip_from_user / sip_req_user are fallbacks.
        "src_number": _first(v("caller_id_number"), _text(profile.get("caller_id_number")),
                             v("effective_caller_id_number"), v("sip_from_user")),
        "dst_number": _first(v("destination_number"),
                             _text(profile.get("destination_number")), v("sip_req_user")),
        "src_ip": _first(v("sip_network_ip"), v("sip_received_ip"),
                         _text(profile.get("network_addr"))),
        "codec": v("read_codec"),
        "direction": direction if direction in _DIRECTIONS else None,
        "customer_code": v("accountcode"),
    }


def _is_cdr_object(value: Any) -> bool:
    return isinstance(value, dict) and any(k in value for k in _CDR_KEYS)


def sniff_json(head: bytes) -> bool:
    """True when the file is JSON whose first object has "variables" or "channel_data"."""
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if text.startswith("["):
        text = text[1:].lstrip()
    if not text.startswith("{"):
        return False
    try:
        first, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        # The head cut a big first record short: look for the keys themselves.
        return _SNIFF_KEY_RE.search(text) is not None
    return _is_cdr_object(first)


#: (line, parsed record or None, error or None, raw text, bytes read so far)
_Item = tuple[int, Any, str | None, str, int]


def _iter_json_lines(path: Path) -> Iterator[_Item]:
    """JSON lines: each line stands alone, so a broken one is just that line's reject."""
    with open_input(path) as src:
        for line in iter_lines(src):
            if line.problem:
                yield line.number, None, line.problem, preview(line.data), line.consumed
                continue
            text = line.data.decode("utf-8", errors="replace").removeprefix("\ufeff").strip()
            if not text:
                continue
            try:
                value = json.loads(text)
            except ValueError as exc:
                yield line.number, None, f"invalid JSON: {exc}", text, line.consumed
                continue
            for record in value if isinstance(value, list) else [value]:
                yield line.number, record, None, text, line.consumed


def _iter_json_stream(path: Path) -> Iterator[_Item]:
    """Pretty-printed object(s) or an array of objects, decoded one record at a time.

    Records are decoded incrementally from a growing buffer so memory holds one
    record, not the file. Broken JSON cannot be re-synchronised reliably, so
    the first record that does not decode is rejected with the rest of the file.
    """
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buf, pos, line, consumed, eof = "", 0, 1, 0, False
    damage: DamagedFile | None = None
    with open_input(path) as f:

        def refill() -> bool:
            nonlocal buf, pos, consumed, eof, damage
            try:
                chunk = f.read(_CHUNK)
            except DamagedFile as exc:
                damage, chunk = exc, b""
            consumed = f.consumed
            eof = not chunk
            buf = buf[pos:] + utf8.decode(chunk, final=eof)
            pos = 0
            return not eof

        refill()
        buf = buf.removeprefix("\ufeff")
        while True:
            # Skip what separates records: whitespace, array brackets, commas.
            while pos < len(buf) and buf[pos] in " \t\r\n,[]":
                line += buf[pos] == "\n"
                pos += 1
            if pos >= len(buf):
                if refill():
                    continue
                if damage is not None:
                    yield line, None, _DAMAGED + str(damage).removeprefix(f"{path}: "), "", consumed
                return
            try:
                record, end = decoder.raw_decode(buf, pos)
            except ValueError as exc:
                if not eof and len(buf) - pos < _MAX_RECORD_CHARS:
                    refill()
                    continue
                reason = (str(damage).removeprefix(f"{path}: ") if damage is not None
                          else f"invalid JSON (rest of file skipped): {exc}")
                yield line, None, _DAMAGED + reason, buf[pos:pos + _RAW_MAX], consumed
                return
            yield line, record, None, buf[pos:end], consumed
            line += buf.count("\n", pos, end)
            pos = end


def _json_mode(path: Path) -> str | None:
    """"lines" when one of the first lines is a whole JSON object, "stream" otherwise.

    Pretty-printed records never have a whole object on one line, while JSON
    lines are nothing else; looking at a few lines lets a broken first line
    still be read as JSON lines. None means the file is empty.
    """
    head = read_head(path, _CHUNK)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text:
        return None
    if text[0] not in "{[":
        raise FormatError(f"{path}: not FreeSWITCH JSON CDRs (the file does not start "
                          "with a JSON object or array)")
    lines = [ln.strip() for ln in text.split("\n")[:-1] if ln.strip()]  # last may be cut
    for ln in lines[:_MODE_LINES]:
        try:
            if isinstance(json.loads(ln), dict):
                return "lines"
        except ValueError:
            continue
    return "stream"


class FreeSwitchJsonReader:
    """Reads mod_json_cdr output: one object, an array of objects, or JSON lines."""

    name = "freeswitch-json"
    sniff = staticmethod(sniff_json)

    def read(self, path: Path, batch_rows: int = BATCH_ROWS) -> Iterator[RawBatch]:
        mode = _json_mode(path)
        if mode is None:
            return
        items = _iter_json_lines(path) if mode == "lines" else _iter_json_stream(path)
        builder = BatchBuilder(JSON_OUTPUT_COLUMNS, batch_rows)
        checked = False
        bytes_read = 0
        for line, record, error, raw, bytes_read in items:
            if error is None and not checked:
                # The first record that parses decides whether this is CDR JSON at all.
                if not _is_cdr_object(record):
                    raise FormatError(f"{path}: not FreeSWITCH JSON CDRs (the first record "
                                      'has neither "variables" nor "channel_data")')
                checked = True
            row = error if error is not None else _json_to_row(record)
            if isinstance(row, str):
                damage = row.startswith(_DAMAGED) or row.startswith("line is longer")
                builder.reject(line, row.removeprefix(_DAMAGED), raw[:_RAW_MAX], damage)
            else:
                builder.add(line, row)
            if builder.full:
                yield builder.flush(bytes_read)
        if builder.pending:
            yield builder.flush(bytes_read)


CSV_READER = FreeSwitchCsvReader()
JSON_READER = FreeSwitchJsonReader()
