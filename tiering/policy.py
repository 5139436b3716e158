"""Which monthly partitions may leave the hot table.

Data stays hot for at least `keep_months` full months: on 2026-11-22 with the
default 3, August, September and October (full) and November (so far) stay;
July and earlier are eligible, because every row in them is older than the
first day of the oldest month kept.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# the month arithmetic lives in sql/months.py; these names stay importable from here
from cdrhouse.sql.months import add_months, month_of, parse_month

__all__ = ["DEFAULT_KEEP_MONTHS", "Policy", "add_months", "first_hot_month", "is_eligible",
           "month_of", "parse_month"]

DEFAULT_KEEP_MONTHS = 3


@dataclass(frozen=True)
class Policy:
    keep_months: int = DEFAULT_KEEP_MONTHS
    #: bound on one Parquet file: a tenant-month bigger than this is split into parts
    max_part_rows: int = 2_000_000
    #: rows per Parquet row group: small enough for readers to skip by customer
    row_group_rows: int = 131_072
    #: a hot month (not the current one) with an unmerged part and no write for this
    #: long is merged into one part by the run (Tiering.settle_idle); the same six
    #: hours after which ClickHouse merges a month of several parts (015_settled.sql)
    settle_idle_hours: int = 6

    def __post_init__(self) -> None:
        if self.keep_months < 1:
            raise ValueError("keep_months: keep at least one full month hot")
        if self.max_part_rows < 1 or self.row_group_rows < 1:
            raise ValueError("max_part_rows and row_group_rows must be positive")
        if self.settle_idle_hours < 0:
            raise ValueError("settle_idle_hours: zero or more hours")


def first_hot_month(today: dt.date, keep_months: int) -> int:
    """The oldest month that must stay hot."""
    return add_months(month_of(today), -keep_months)


def is_eligible(month: int, today: dt.date, keep_months: int) -> bool:
    return month < first_hot_month(today, keep_months)

