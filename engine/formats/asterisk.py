"""Asterisk `Master.csv` adapter (cdr_csv, and the sample cdr_custom mapping).

Asterisk writes its CSV CDRs without a header, so the layout is recognised
from the shape of the rows: how many columns they have, and whether the start
time, end time, duration and billsec sit where that layout puts them. The
layout is decided once per file from the first rows that look right; every row
of another width is then a reject, because guessing per row would silently
mix columns up.

Quirks of real files handled here: CLIDs with doubled quotes inside quotes,
answer times written as `""` or left bare-empty, bytes that are not UTF-8
(decoded with U+FFFD replacements, never fatal), CRLF line endings, blank
trailing lines, and several CDR legs sharing one uniqueid (the call_id adds
the `sequence` column when the layout has one).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cdrhouse.engine.formats.base import (
    BATCH_ROWS,
    FormatError,
    RawBatch,
    head_rows,
    is_int,
    is_timestamp,
    none_if_empty,
    read_headerless_csv,
    iter_csv_lines,
)

#: Asterisk disposition -> (Q.850 release reason, SIP code).
#:
#: Asterisk only records the disposition, so the cause is the one Asterisk
#: itself folds into that disposition (cdr.c, cdr_object_set_disposition and
#: the Dial status mapping), and the SIP code is what that cause maps to in
#: RFC 3398 / FreeSWITCH mod_sofia. FAILED is mostly Dial's CHANUNAVAIL (peer
#: unreachable or unregistered) or congestion when `congestion=no`, hence
#: REQUESTED_CHAN_UNAVAIL / 503. The FreeSWITCH cause table maps each of these
#: causes back to the same disposition.
DISPOSITION_CAUSES: dict[str, tuple[str, int]] = {
    "ANSWERED": ("NORMAL_CLEARING", 200),
    "NO ANSWER": ("NO_ANSWER", 480),
    "BUSY": ("USER_BUSY", 486),
    "FAILED": ("REQUESTED_CHAN_UNAVAIL", 503),
    "CONGESTION": ("NORMAL_CIRCUIT_CONGESTION", 503),
}

_STANDARD = (
    "accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel",
    "lastapp", "lastdata", "start", "answer", "end", "duration", "billsec",
    "disposition", "amaflags",
)
_CUSTOM = (
    "clid", "src", "dst", "dcontext", "channel", "dstchannel", "lastapp", "lastdata",
    "start", "answer", "end", "duration", "billsec", "disposition", "amaflags",
    "accountcode", "uniqueid", "userfield", "sequence",
)


@dataclass(frozen=True)
class Layout:
    """One known column order; `columns` are Asterisk's own field names."""

    name: str
    columns: tuple[str, ...]

    @property
    def width(self) -> int:
        return len(self.columns)

    def index(self, column: str) -> int | None:
        return self.columns.index(column) if column in self.columns else None


#: Known layouts by column count: cdr_csv grew columns over Asterisk versions,
#: always at the end; 19 columns is the cdr_custom sample mapping.
LAYOUTS: dict[int, Layout] = {
    16: Layout("cdr_csv", _STANDARD),
    17: Layout("cdr_csv+uniqueid", _STANDARD + ("uniqueid",)),
    18: Layout("cdr_csv+uniqueid+userfield", _STANDARD + ("uniqueid", "userfield")),
    21: Layout("cdr_csv+uniqueid+userfield+peeraccount+linkedid+sequence",
               _STANDARD + ("uniqueid", "userfield", "peeraccount", "linkedid", "sequence")),
    19: Layout("cdr_custom", _CUSTOM),
}

#: Columns of every batch this reader yields (plus `_line`).
OUTPUT_COLUMNS: tuple[str, ...] = (
    "call_id", "start_time", "answer_time", "end_time", "duration", "billsec",
    "disposition", "release_reason", "sip_code", "src_number", "dst_number",
    "codec", "customer_code",
)

#: How many non-blank lines layout detection looks at.
_DETECT_LINES = 50


# --- Asterisk ------------------------------------------------------------------------


def normalise_disposition(value: str) -> str | None:
    """Upper-case and spell NO ANSWER the one way the catalogue knows."""
    text = " ".join(value.strip().upper().replace("_", " ").split())
    if text == "NOANSWER":
        return "NO ANSWER"
    return text or None


def _matching_layout(fields: list[str]) -> Layout | None:
    """The layout this row fits: right width and times/durations where it puts them."""
    layout = LAYOUTS.get(len(fields))
    if layout is None:
        return None

    def get(column: str) -> str:
        return fields[layout.columns.index(column)]

    answer = get("answer")
    if (
        is_timestamp(get("start"))
        and is_timestamp(get("end"))
        and (not answer.strip() or is_timestamp(answer))
        and is_int(get("duration"))
        and is_int(get("billsec"))
    ):
        return layout
    return None


def detect_layout(path: Path) -> Layout | None:
    """The layout most of the first rows fit; None for a file with no rows at all.

    Raises FormatError when no early row fits any layout.
    """
    votes: Counter[int] = Counter()
    seen = 0
    for line in iter_csv_lines(path):
        seen += 1
        if line.fields is not None and (layout := _matching_layout(line.fields)):
            votes[layout.width] += 1
        if seen >= _DETECT_LINES:
            break
    if seen == 0:
        return None
    if not votes:
        raise FormatError(
            f"{path}: not an Asterisk Master.csv (none of the first {seen} rows has "
            "16, 17, 18, 19 or 21 columns with the start and end times in place)"
        )
    return LAYOUTS[votes.most_common(1)[0][0]]


def _call_id(fields: list[str], layout: Layout) -> str | None:
    """uniqueid, plus `-sequence` when the layout has it (legs share a uniqueid).

    The 16-column layout has no uniqueid at all: the id is then a digest of the
    row, so importing the same file twice yields the same ids.
    """
    uid_index = layout.index("uniqueid")
    if uid_index is None:
        digest = hashlib.blake2b("\x1f".join(fields).encode(), digest_size=10).hexdigest()
        return f"ast-{digest}"
    uniqueid = fields[uid_index].strip()
    if not uniqueid:
        return None
    seq_index = layout.index("sequence")
    sequence = fields[seq_index].strip() if seq_index is not None else ""
    return f"{uniqueid}-{sequence}" if sequence else uniqueid


def _to_row(fields: list[str], layout: Layout) -> dict[str, str | None] | str:
    call_id = _call_id(fields, layout)
    if call_id is None:
        return "empty uniqueid: no call_id for this row"
    value = dict(zip(layout.columns, fields, strict=True))
    disposition = normalise_disposition(value["disposition"])
    reason, sip = DISPOSITION_CAUSES.get(disposition or "", (None, None))
    return {
        "call_id": call_id,
        "start_time": none_if_empty(value["start"]),
        "answer_time": none_if_empty(value["answer"]),
        "end_time": none_if_empty(value["end"]),
        "duration": none_if_empty(value["duration"]),
        "billsec": none_if_empty(value["billsec"]),
        "disposition": disposition,
        "release_reason": reason,
        "sip_code": str(sip) if sip is not None else None,
        "src_number": none_if_empty(value["src"]),
        "dst_number": none_if_empty(value["dst"]),
        "codec": None,
        "customer_code": none_if_empty(value["accountcode"]),
    }


def sniff(head: bytes) -> bool:
    """True when the first row of the file fits an Asterisk layout.

    The first row must fit, so any file with a header line is never claimed.
    """
    rows = head_rows(head, limit=1)
    return bool(rows) and rows[0] is not None and _matching_layout(rows[0]) is not None


class AsteriskReader:
    """Reads Asterisk cdr_csv / cdr_custom Master.csv files."""

    name = "asterisk"
    sniff = staticmethod(sniff)

    def read(self, path: Path, batch_rows: int = BATCH_ROWS) -> Iterator[RawBatch]:
        layout = detect_layout(path)
        if layout is None:
            return
        yield from read_headerless_csv(
            path, batch_rows, OUTPUT_COLUMNS, layout.width,
            f"Asterisk layout {layout.name}", lambda fields: _to_row(fields, layout),
        )


READER = AsteriskReader()
