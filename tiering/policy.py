"""Which monthly partitions may leave the hot table.

Data stays hot for at least `keep_months` full months: on 2026-11-22 with the
default 3, August, September and October (full) and November (so far) stay;
July and earlier are eligible, because every row in them is older than the
first day of the oldest month kept.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

DEFAULT_KEEP_MONTHS = 3


@dataclass(frozen=True)
class Policy:
    keep_months: int = DEFAULT_KEEP_MONTHS
    #: bound on one Parquet file: a tenant-month bigger than this is split into parts
    max_part_rows: int = 2_000_000
    #: rows per Parquet row group: small enough for readers to skip by customer
    row_group_rows: int = 131_072

    def __post_init__(self) -> None:
        if self.keep_months < 1:
            raise ValueError("keep_months: keep at least one full month hot")
        if self.max_part_rows < 1 or self.row_group_rows < 1:
            raise ValueError("max_part_rows and row_group_rows must be positive")


def month_of(day: dt.date) -> int:
    return day.year * 100 + day.month


def add_months(month: int, n: int) -> int:
    index = (month // 100) * 12 + (month % 100 - 1) + n
    return (index // 12) * 100 + index % 12 + 1


def first_hot_month(today: dt.date, keep_months: int) -> int:
    """The oldest month that must stay hot."""
    return add_months(month_of(today), -keep_months)


def is_eligible(month: int, today: dt.date, keep_months: int) -> bool:
    return month < first_hot_month(today, keep_months)


def parse_month(text: str) -> int:
    """'YYYYMM' or 'YYYY-MM' → YYYYMM, with a message naming the problem."""
    raw = text.replace("-", "").strip()
    if len(raw) != 6 or not raw.isdigit() or not 1 <= int(raw[4:]) <= 12:
        raise ValueError(f"month {text!r}: write it as YYYYMM, e.g. 202607")
    return int(raw)
