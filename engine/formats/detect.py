"""Which adapter reads a file: by `--format NAME`, or detected from its first bytes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cdrhouse.engine.formats import asterisk, canonical, freeswitch
from cdrhouse.engine.formats.base import FormatError, RawBatch, read_head

SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    read: Callable[[Path, int, str], Iterator[RawBatch]]


def _tz_free(reader: object) -> Callable[[Path, int, str], Iterator[RawBatch]]:
    """Switch adapters pass timestamps through as text; the zone applies later."""
    # Switch adapters build batches as Python lists: smaller batches keep memory flat.
    return lambda path, rows, _tz: reader.read(path, min(rows, 50_000))  # type: ignore[attr-defined]


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("csv", "CSV with a header of catalogue field names", canonical.CSV_READER.read),
    Format("tsv", "TSV with a header of catalogue field names", canonical.TSV_READER.read),
    Format("jsonl", "JSON lines, one object per CDR, keys are catalogue names",
           canonical.JSONL_READER.read),
    Format("parquet", "Parquet with catalogue column names", canonical.PARQUET_READER.read),
    Format("asterisk", "Asterisk cdr_csv / cdr_custom Master.csv (headerless)",
           _tz_free(asterisk.READER)),
    Format("freeswitch-csv", "FreeSWITCH mod_cdr_csv, default template (headerless)",
           _tz_free(freeswitch.CSV_READER)),
    Format("freeswitch-json", "FreeSWITCH mod_json_cdr records", _tz_free(freeswitch.JSON_READER)),
)}


def detect(path: Path) -> str:
    """The format name for `path`, or FormatError saying the file is not CDRs."""
    head = read_head(path, SNIFF_BYTES)   # (decompressed: a .zst or .gz file is sniffed inside)
    if not head.strip():
        raise FormatError(f"{path}: the file is empty")
    if head.startswith(b"PAR1"):
        return "parquet"
    if freeswitch.sniff_json(head):
        return "freeswitch-json"
    if canonical.sniff_jsonl(head):
        return "jsonl"
    delimited = canonical.sniff_delimited(head)
    if delimited:
        return delimited
    if freeswitch.sniff_csv(head):
        return "freeswitch-csv"
    if asterisk.sniff(head):
        return "asterisk"
    raise FormatError(
        f"{path}: not a CDR file cdrhouse recognises (looked for Parquet, JSON lines or "
        "CSV/TSV with a header naming call_id and start_time, Asterisk Master.csv, "
        "FreeSWITCH CSV or JSON). Name the format with --format if it is one of these.")


def reader_for(path: Path, name: str = "auto") -> Format:
    if name == "auto":
        name = detect(path)
    try:
        return FORMATS[name]
    except KeyError:
        raise FormatError(
            f"unknown format {name!r}; choose one of auto, {', '.join(FORMATS)}") from None
