"""sql/months.py: the one copy of the month arithmetic, by a table and against the calendar."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdrhouse.sql import months as M


@pytest.mark.parametrize("month, n, expected", [
    (202601, 0, 202601), (202601, -1, 202512), (202612, 1, 202701), (202603, -15, 202412),
    (202611, 14, 202801), (200001, -1, 199912), (202607, 24, 202807),
])
def test_add_months(month: int, n: int, expected: int) -> None:
    assert M.add_months(month, n) == expected


@pytest.mark.parametrize("month, first, last", [
    (202602, dt.date(2026, 2, 1), dt.date(2026, 2, 28)),
    (202402, dt.date(2024, 2, 1), dt.date(2024, 2, 29)),
    (202612, dt.date(2026, 12, 1), dt.date(2026, 12, 31)),
])
def test_bounds(month: int, first: dt.date, last: dt.date) -> None:
    assert M.bounds(month) == (first, last + dt.timedelta(days=1))
    assert M.last_day(month) == last
    assert M.utc_bounds(month)[0] == dt.datetime(first.year, first.month, 1, tzinfo=dt.UTC)
    assert M.label(month) == f"{first:%Y-%m}"


@given(st.dates(dt.date(1990, 1, 1), dt.date(2090, 12, 31)), st.integers(0, 800))
def test_months_between_walks_the_calendar_day_by_day(first: dt.date, span: int) -> None:
    last = first + dt.timedelta(days=span)
    by_day = sorted({M.month_of(first + dt.timedelta(days=i)) for i in range(span + 1)})
    assert M.months_between(first, last) == by_day
    assert M.shift_first_day(first, 1) == M.bounds(M.month_of(first))[1]


@pytest.mark.parametrize("text, expected", [("202607", 202607), ("2026-07", 202607),
                                            (" 202612 ", 202612)])
def test_parse_month(text: str, expected: int) -> None:
    assert M.parse_month(text) == expected


@pytest.mark.parametrize("text", ["202613", "202600", "2026-7", "july", ""])
def test_parse_month_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="write it as YYYYMM"):
        M.parse_month(text)
