"""Calendar months as `YYYYMM` integers: the one copy of the month arithmetic.

A month is the partition key (`toYYYYMM(start_time)`), the tiering unit and the
viewer's `this_month` / `last_month`; every layer needs to step, bound and name
months, so the arithmetic lives here, on the lowest floor, pure. Bounds are
half-open UTC days: a month is `[first_day(m), first_day(add_months(m, 1)))`.
"""

from __future__ import annotations

import datetime as dt


def month_of(day: dt.date) -> int:
    """The month a day (or datetime) falls in, as YYYYMM."""
    return day.year * 100 + day.month


def add_months(month: int, n: int) -> int:
    """`month` moved by `n` months (negative: back), across years."""
    index = (month // 100) * 12 + (month % 100 - 1) + n
    return (index // 12) * 100 + index % 12 + 1


def first_day(month: int) -> dt.date:
    return dt.date(month // 100, month % 100, 1)


def shift_first_day(first: dt.date, n: int) -> dt.date:
    """The first day of the month `n` months from the month of `first`."""
    return first_day(add_months(month_of(first), n))


def bounds(month: int) -> tuple[dt.date, dt.date]:
    """First day of the month and first day of the next: the half-open range of its days."""
    return first_day(month), first_day(add_months(month, 1))


def utc_bounds(month: int) -> tuple[dt.datetime, dt.datetime]:
    """`bounds` as UTC midnights, for comparing with start_time."""
    lo, hi = bounds(month)
    return (dt.datetime.combine(lo, dt.time(), dt.UTC), dt.datetime.combine(hi, dt.time(), dt.UTC))


def last_day(month: int) -> dt.date:
    return bounds(month)[1] - dt.timedelta(days=1)


def months_between(first: dt.date, last: dt.date) -> list[int]:
    """Every month from the one holding `first` to the one holding `last`, inclusive."""
    out, month, end = [], month_of(first), month_of(last)
    while month <= end:
        out.append(month)
        month = add_months(month, 1)
    return out


def label(month: int) -> str:
    """YYYYMM → 'YYYY-MM'."""
    return f"{month // 100:04d}-{month % 100:02d}"


def parse_month(text: str) -> int:
    """'YYYYMM' or 'YYYY-MM' → YYYYMM, with a message naming the problem."""
    raw = text.replace("-", "").strip()
    if len(raw) != 6 or not raw.isdigit() or not 1 <= int(raw[4:]) <= 12:
        raise ValueError(f"month {text!r}: write it as YYYYMM, e.g. 202607")
    return int(raw)
