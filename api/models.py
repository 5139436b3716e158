"""The bodies of requests and responses of the /v1 API (pydantic models).

Kept apart from the endpoints so that every endpoint module, the web layer and
saved queries share one definition of a viewer request without importing each
other.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from cdrhouse.sql.viewer import RANGES


# -- requests ---------------------------------------------------------------------

class ViewParams(BaseModel):
    """The viewer's request: what to show, which calls, which page."""

    columns: list[str] | None = Field(None, description="Fields to show (default per role).")
    sort: list[str] = Field(["-start_time"], description="Fields, '-' for descending.")
    limit: int = Field(100, description="Page size, at most 1000.")
    cursor: str | None = Field(None, description="`next_cursor` of the previous page.")
    range: str | None = Field(None, description=f"One of {', '.join(RANGES)}.")
    date_from: str | None = Field(None, alias="from", description="Start, ISO 8601, inclusive.")
    date_to: str | None = Field(None, alias="to", description="End, ISO 8601, exclusive.")
    tz: str = Field("UTC", description="Display time zone (IANA).")
    connected_only: bool = False
    number: str | None = Field(None, description="Number search: 4420*, *1234, *555*, a,b, !x.")
    tenant: str | None = Field(None, description="Admin only: narrow to one tenant.")
    customer: str | None = Field(None, description="Operators: narrow to one customer (code).")
    carrier: str | None = Field(None, description="Operators: narrow to one carrier (code).")
    include_archive: bool = Field(False, description="Also read archived (warm) months in "
                                  "the range; slower, with stricter limits.")

    model_config = {"populate_by_name": True, "extra": "forbid"}


class SearchBody(ViewParams):
    rules: dict[str, Any] | None = Field(
        None, description="Query-builder tree: jQuery QueryBuilder or react-querybuilder JSON.",
        examples=[{"condition": "AND", "rules": [
            {"field": "billsec", "operator": "greater", "value": 30},
            {"field": "country", "operator": "in", "value": ["GB", "DE"]}]}])


class SQLBody(BaseModel):
    sql: str = Field(..., examples=["SELECT country, count() AS calls FROM cdrs "
                                    "WHERE start_time >= {since:DateTime64(3, 'UTC')} "
                                    "GROUP BY country ORDER BY calls DESC"])
    params: dict[str, Any] = Field(default_factory=dict,
                                   examples=[{"since": "2026-10-01 00:00:00"}])
    include_archive: bool = Field(False, description="`cdrs` also holds the archived (warm) "
                                  "months of your tenant; slower, with stricter limits.")

    model_config = {"extra": "forbid"}


# -- responses (for the OpenAPI docs) ---------------------------------------------------

class RangeOut(BaseModel):
    from_: str | None = Field(None, alias="from", description="UTC start applied (inclusive).")
    to: str | None = Field(None, description="UTC end applied (exclusive).")
    timezone: str = "UTC"

    model_config = {"populate_by_name": True}


class ArchiveOut(BaseModel):
    included: bool = Field(..., description="Whether archived months were asked for.")
    months: list[str] = Field(..., description="Archived months (YYYY-MM) the answer read "
                                               "from the warm archive; the rest came from hot "
                                               "storage.", examples=[["2026-06", "2026-07"]])


class PageOut(BaseModel):
    columns: list[str] = Field(..., examples=[["start_time", "dst_number", "billsec", "call_id"]])
    rows: list[dict[str, Any]] = Field(..., examples=[[{
        "start_time": "2026-11-21T17:12:38.668+01:00", "dst_number": "442079460000",
        "billsec": 58, "call_id": "aaf2d4c6-5442-4249-adb8-8f653a2df57b"}]])
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; "
                                                       "null on the last page.")
    range: RangeOut
    timezone: str = Field(..., description="Zone the times are shown in.")
    archive: ArchiveOut


class SQLColumn(BaseModel):
    name: str
    type: str


class SQLOut(BaseModel):
    columns: list[SQLColumn] = Field(..., examples=[[{"name": "country", "type": "String"},
                                                     {"name": "calls", "type": "UInt64"}]])
    rows: list[list[Any]] = Field(..., examples=[[["GB", 1234], ["DE", 987]]])
    row_count: int
    archive: ArchiveOut


class OperatorOut(BaseModel):
    key: str
    rqb: str | None
    label: str
    #: how many values a rule takes: 0, 1, 2 (between) or "list" (in)
    arity: int | Literal["list"] = 1


class FieldOut(BaseModel):
    name: str
    type: str
    kind: str
    label: str
    description: str
    filterable: bool
    sortable: bool
    values: list[str] | None
    operators: list[OperatorOut]


class FieldsOut(BaseModel):
    principal: str
    default_columns: list[str]
    fields: list[FieldOut]
