"""The field catalogue: the single source of truth for the public CDR fields.

Every part of cdrhouse that names a CDR field reads it from here: ingest (which
columns a file may carry and how each is parsed), the query compiler (what a
principal may filter, sort and see), the API (the column panel of a UI) and
exports. A field that is not in this table does not exist for users.

Each field is one row, in the spirit of Datasette's filter table: its name, the
ClickHouse type it is stored as, a kind that says how values are validated,
a label and a description for people, who may see it, and whether it may be
filtered and sorted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["admin", "tenant", "customer", "carrier"]
Kind = Literal["string", "int", "decimal", "datetime", "enum", "ip"]

ALL_ROLES: frozenset[str] = frozenset({"admin", "tenant", "customer", "carrier"})
OPERATORS: frozenset[str] = frozenset({"admin", "tenant"})
NOT_CARRIER: frozenset[str] = frozenset({"admin", "tenant", "customer"})
NOT_CUSTOMER: frozenset[str] = frozenset({"admin", "tenant", "carrier"})

DISPOSITIONS: tuple[str, ...] = ("ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION")
DIRECTIONS: tuple[str, ...] = ("outbound", "inbound", "internal")


@dataclass(frozen=True)
class Field:
    name: str
    ch_type: str
    kind: Kind
    label: str
    description: str
    roles: frozenset[str] = ALL_ROLES
    filterable: bool = True
    sortable: bool = True
    required: bool = False
    #: Value stored when a record does not carry the field (documented in the README).
    default: str | None = None
    enum_values: tuple[str, ...] = field(default_factory=tuple)
    #: Longest text ingest accepts for a string or ip field (characters); a longer
    #: value rejects its row. Generous for real CDRs, small enough that a runaway
    #: field cannot bloat the table (documented in the README's Ingest section).
    max_length: int | None = None

    @property
    def nullable(self) -> bool:
        return self.ch_type.startswith("Nullable(")

    def visible_to(self, role: str) -> bool:
        return role in self.roles


_DT = "DateTime64(3, 'UTC')"
_MONEY = "Nullable(Decimal(18, 6))"

FIELDS: tuple[Field, ...] = (
    Field("call_id", "String", "string", "Call ID",
          "Identifier of the call leg as the switch wrote it (unique within a tenant).",
          required=True, max_length=256),
    Field("tenant_id", "LowCardinality(String)", "string", "Tenant",
          "The carrier company that owns the record.", roles=frozenset({"admin"}), max_length=64),
    Field("start_time", _DT, "datetime", "Start",
          "When the call was set up (UTC).", required=True),
    Field("answer_time", f"Nullable({_DT})", "datetime", "Answered",
          "When the call was answered (UTC); empty when it never was."),
    Field("end_time", _DT, "datetime", "End",
          "When the call ended (UTC). Derived from start_time + duration when absent."),
    Field("duration", "UInt32", "int", "Duration",
          "Total seconds from setup to hangup. Derived from end_time when absent.",
          required=True),
    Field("billsec", "UInt32", "int", "Billsec",
          "Connected (talk) seconds; 0 for unanswered calls.", default="0"),
    Field("customer_id", "UInt32", "int", "Customer",
          "Numeric id of the customer account that sent the call.",
          roles=NOT_CARRIER, default="0"),
    Field("carrier_id", "UInt32", "int", "Carrier",
          "Numeric id of the carrier account that terminated the call.",
          roles=NOT_CUSTOMER, default="0"),
    Field("direction", "Enum8('outbound' = 1, 'inbound' = 2, 'internal' = 3)", "enum",
          "Direction", "outbound, inbound or internal.", default="outbound",
          enum_values=DIRECTIONS),
    Field("disposition",
          "Enum8('ANSWERED' = 1, 'NO ANSWER' = 2, 'BUSY' = 3, 'FAILED' = 4, 'CONGESTION' = 5)",
          "enum", "Disposition",
          "How the call ended. Derived from billsec when absent (ANSWERED or NO ANSWER).",
          enum_values=DISPOSITIONS),
    Field("src_number", "String", "string", "Source",
          "Calling number (A-number), digits only where the switch gave E.164.", default="",
          max_length=128),
    Field("dst_number", "String", "string", "Destination",
          "Called number (B-number).", default="", max_length=128),
    Field("dst_prefix", "LowCardinality(String)", "string", "Prefix",
          "Destination prefix the call was routed or rated on.", default="", max_length=32),
    Field("country", "LowCardinality(String)", "string", "Country",
          "ISO 3166 alpha-2 country of the destination.", default="", max_length=8),
    Field("release_reason", "LowCardinality(String)", "string", "Release reason",
          "Why the call was released (switch hangup cause, e.g. NORMAL_CLEARING).",
          default="", max_length=128),
    Field("sip_code", "UInt16", "int", "SIP code", "Final SIP response code.", default="0"),
    Field("sip_reason", "LowCardinality(String)", "string", "SIP reason",
          "Final SIP reason phrase.", default="", max_length=256),
    Field("pdd_ms", "UInt32", "int", "PDD (ms)", "Post-dial delay in milliseconds.",
          default="0"),
    Field("src_ip", "String", "ip", "Source IP", "Signalling IP of the originating side.",
          roles=NOT_CARRIER, default="", max_length=64),
    Field("dst_ip", "String", "ip", "Destination IP",
          "Signalling IP of the terminating side.", roles=NOT_CUSTOMER, default="", max_length=64),
    Field("codec", "LowCardinality(String)", "string", "Codec", "Negotiated audio codec.",
          default="", max_length=64),
    Field("customer_rate", _MONEY, "decimal", "Customer rate",
          "Price per minute charged to the customer; empty when not rated.",
          roles=NOT_CARRIER),
    Field("customer_charge", _MONEY, "decimal", "Charge",
          "What the customer is charged for the call; empty when not rated.",
          roles=NOT_CARRIER),
    Field("carrier_rate", _MONEY, "decimal", "Carrier rate",
          "Price per minute paid to the carrier; empty when not rated.",
          roles=NOT_CUSTOMER),
    Field("carrier_cost", _MONEY, "decimal", "Cost",
          "What the carrier is paid for the call; empty when not rated.",
          roles=NOT_CUSTOMER),
    Field("currency", "LowCardinality(String)", "string", "Currency",
          "ISO 4217 currency of the money fields.", default="USD", max_length=8),
    Field("recording_url", "String", "string", "Recording",
          "Where the call's recording can be fetched; empty when none.", default="",
          sortable=False, max_length=4096),
)

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)

#: What the viewer shows when the user has not chosen columns, per role.
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "admin": ("start_time", "tenant_id", "customer_id", "carrier_id", "src_number",
              "dst_number", "country", "duration", "billsec", "disposition",
              "customer_charge", "carrier_cost"),
    "tenant": ("start_time", "customer_id", "carrier_id", "src_number", "dst_number",
               "country", "duration", "billsec", "disposition", "release_reason",
               "customer_charge", "carrier_cost"),
    "customer": ("start_time", "src_number", "dst_number", "country", "duration",
                 "billsec", "disposition", "customer_rate", "customer_charge"),
    "carrier": ("start_time", "src_number", "dst_number", "country", "duration",
                "billsec", "disposition", "carrier_rate", "carrier_cost"),
}


def get(name: str) -> Field:
    """The field called `name`, or a KeyError naming it and the known fields."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown field {name!r}") from None


def visible_fields(role: str) -> tuple[Field, ...]:
    """The fields a principal of `role` may see, in catalogue order."""
    return tuple(f for f in FIELDS if f.visible_to(role))
