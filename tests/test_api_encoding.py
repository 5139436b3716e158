"""The API's JSON encoding of query answers: the faster column-wise and C-encoder paths
give exactly what the value-by-value ones gave (api/deps.py), and the response cap holds."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
import zoneinfo

import pytest

from cdrhouse.api import deps
from cdrhouse.api.errors import Problem

UTC = dt.timezone.utc
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


class MyStr(str):
    """A str subclass: not a plain value, so it must take the general path."""


class MyDecimal(decimal.Decimal):
    """A Decimal subclass: likewise."""


#: columns of values as a result may hold them: plain, converted, NULLs, mixed, subclasses
COLUMNS = {
    "call_id": ["a", "b\u00e9", ""],
    "start_time": [dt.datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC),
                   dt.datetime(2026, 7, 1, 10, 0, tzinfo=BERLIN),
                   dt.datetime(2026, 1, 1, 23, 59, 59, 999999)],        # naive: taken as UTC
    "answer_time": [None, dt.datetime(2026, 3, 1, tzinfo=BERLIN), None],
    "billsec": [0, 60, 2**70],
    "charge": [decimal.Decimal("0.100000"), None, decimal.Decimal("-1E-6")],
    "day": [dt.date(2026, 3, 1), dt.date(2026, 3, 2), None],
    "clock": [dt.time(1, 2, 3), None, dt.time(23, 0, 0, 5)],
    "raw": [b"\xff\xfeab", b"", None],
    "mixed": [1, "x", decimal.Decimal("2.5")],
    "sub": [MyStr("s"), MyDecimal("1.5"), True],
    "ratio": [0.5, float("nan"), None],
    "ids": [uuid.UUID(int=1), None, uuid.UUID(int=2)],   # no conversion: as before
    "empty": [None, None, None],
}
NAMES = list(COLUMNS)
ROWS = [tuple(COLUMNS[c][i] for c in NAMES) for i in range(3)]


def by_value(columns, rows):
    return [{c: deps.jsonable(v) for c, v in zip(columns, row)} for row in rows]


@pytest.mark.parametrize("names, rows", [
    (NAMES, ROWS),
    (NAMES, ROWS[:1]),
    (NAMES, []),
    (["a", "b", "a"], [(1, decimal.Decimal("2"), decimal.Decimal("3")),
                       (4, 5, dt.date(2026, 1, 1))]),              # a repeated name: last wins
    (["a", "b"], [(1, 2), (decimal.Decimal("1"),)]),                # a ragged row
])
def test_rows_json_is_jsonable_value_by_value(names, rows) -> None:
    got = deps.rows_json(names, rows)
    assert got == by_value(names, rows)
    # not only equal: the same JSON text (key order, NaN, subclasses)
    assert json.dumps(got, default=str) == json.dumps(by_value(names, rows), default=str)


@pytest.mark.parametrize("rows", [ROWS, ROWS[1:], [], [(1, 2), (3,)], [tuple(r) for r in ROWS]])
def test_rows_json_lists_is_jsonable_value_by_value(rows) -> None:
    got = deps.rows_json_lists(rows)
    expected = [[deps.jsonable(v) for v in row] for row in rows]
    assert got == expected
    assert json.dumps(got, default=str) == json.dumps(expected, default=str)
    assert all(type(r) is list for r in got)


def test_times_keep_their_zone_and_milliseconds() -> None:
    [row] = deps.rows_json(["t", "n"], [(dt.datetime(2026, 7, 1, 10, 0, 0, 5000, tzinfo=BERLIN),
                                         dt.datetime(2026, 1, 1, 0, 0))])
    assert row == {"t": "2026-07-01T10:00:00.005+02:00", "n": "2026-01-01T00:00:00.000+00:00"}


BODY = {
    "columns": [{"name": "country", "type": "String"}, {"name": "calls", "type": "UInt64"}],
    "rows": [["G\u00e9\U0001F600\x00\"\\", i, i / 7, None, True, [1, [2]], {"k": float("inf")}]
             for i in range(50)],
    "row_count": 50,
    "archive": {"included": False, "months": []},
    "empty": [],
}


@pytest.mark.parametrize("body", [BODY, {}, {"rows": []}, {"x": 1, "rows": [[]]}])
def test_capped_encode_gives_the_bytes_of_one_json_encoding(body) -> None:
    expected = json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    assert deps.capped_encode(body, 10**9) == expected
    assert deps.capped_encode(body, len(expected)) == expected   # the cap itself is allowed


@pytest.mark.parametrize("over", [1, 2, 1000])
def test_capped_encode_refuses_an_answer_past_the_cap(over) -> None:
    size = len(json.dumps(BODY, ensure_ascii=True, separators=(",", ":")))
    cap = max(0, size - over)
    with pytest.raises(Problem) as err:
        deps.capped_encode(BODY, cap)
    assert err.value.slug == "limit-exceeded" and err.value.status == 422
    assert f"at most {cap:,} bytes of JSON" in err.value.detail


def test_capped_encode_does_not_encode_past_the_cap() -> None:
    """An oversized answer stops at the cap: rows after it are never encoded."""
    seen = []
    rows = [["x" * 100] for _ in range(1000)]
    real = deps._ENCODER

    class Counting:
        def encode(self, o):
            seen.append(o)
            return real.encode(o)

    deps._ENCODER = Counting()
    try:
        with pytest.raises(Problem):
            deps.capped_encode({"rows": rows}, 1000)
    finally:
        deps._ENCODER = real
    assert len(seen) < 20


def _answer(rows, columns=(("c", "String"),), months=()):
    return {"columns": [{"name": n, "type": t} for n, t in columns], "rows": rows,
            "row_count": len(rows), "archive": {"included": bool(months), "months": list(months)}}


@pytest.mark.parametrize("body, small", [
    (_answer([]), True),
    (_answer([["GB", 1, 2.5, None, True]] * 10), True),      # the usual aggregate
    (_answer([[2**255, -2**255, 1e308, float("nan")]] * 100), True),
    (_answer([["\U0001F600" * 100]] * 50), True),           # 60 kB of escapes: still under
    (_answer([["x" * 1000]] * 5), True),
    (_answer([[1]] * 3, months=[f"2026-{m:02d}" for m in range(1, 13)]), True),
    (_answer([[None, None]] * 100), True),
    (_answer([["x" * 100_000]]), False),                     # one long string
    (_answer([["\U0001F600" * 6000]]), False),              # 6,000 characters, 72 kB of JSON
    (_answer([["x" * 5000]] * 4), False),                    # 20,000 characters, judged at 12x
    (_answer([[1]] * 5000), False),                          # many rows
    (_answer([[[1, 2, 3]]]), False),                         # an array: not judged
    (_answer([[{"k": "v"}]]), False),                        # a map: not judged
    (_answer([[1]], columns=[("c" * 100_000, "String")]), False),   # a long column name
    ({"rows": "not a list"}, False),
    (_answer([[1], [1, "x" * 100_000]]), False),             # ragged: every cell counts
])
def test_which_answers_are_judged_small(body, small) -> None:
    """Answers judged small are encoded on the event loop: their JSON must really be under
    the bound, whatever the characters (escapes), numbers or column names."""
    assert deps._surely_small(body) is small
    if small:
        assert len(json.dumps(body, ensure_ascii=True, separators=(",", ":"))) <= deps.SMALL_ANSWER


class MyInt(int):
    """An int subclass (an IntEnum is one): orjson must leave it to `json`."""


#: (body, expected bytes): pages and answers as `json.dumps(ensure_ascii, compact)` writes
#: them, whichever encoder made them (api/conditional.encode)
PAGE = {"columns": ["start_time", "src_number", "billsec", "customer_charge"],
        "rows": [{"start_time": "2026-08-01T12:00:00.000+00:00", "src_number": f"+1415555{i:04d}",
                  "billsec": i, "customer_charge": None if i % 3 else "0.012300"}
                 for i in range(101)],
        "next_cursor": "eyJ0IjoiMjAyNi0wOC0wMSJ9", "query_id": "0" * 32, "more": True}
ENCODED = [
    (PAGE, json.dumps(PAGE, ensure_ascii=True, separators=(",", ":")).encode()),
    ({"n": "Z\u00fcrich \U0001F600"}, b'{"n":"Z\\u00fcrich \\ud83d\\ude00"}'),   # escapes, not UTF-8
    ({"ctl": "\x00\x1f\"\\/\u2028"}, b'{"ctl":"\\u0000\\u001f\\"\\\\/\\u2028"}'),
    ({"big": 2**70, "max": 2**64 - 1, "min": -2**63}, b'{"big":1180591620717411303424,'
                                                       b'"max":18446744073709551615,"min":-9223372036854775808}'),
    ({"sub": MyStr("s"), "int": MyInt(7)}, b'{"sub":"s","int":7}'),
    ({1: "int key", "t": (1, 2)}, b'{"1":"int key","t":[1,2]}'),
    ({"f": 0.1, "z": -0.0, "b": False, "n": None}, b'{"f":0.1,"z":-0.0,"b":false,"n":null}'),
    ({}, b"{}"),
]


@pytest.mark.parametrize("body, expected", ENCODED)
def test_encode_writes_what_the_standard_library_writes(body, expected) -> None:
    from cdrhouse.api.conditional import encode
    assert encode(body) == expected
    assert json.loads(expected) == json.loads(encode(body))


def test_encode_refuses_what_the_standard_library_refuses() -> None:
    from cdrhouse.api.conditional import encode
    for value in (dt.datetime(2026, 1, 1), dt.date(2026, 1, 1), decimal.Decimal("1.5")):
        with pytest.raises(TypeError, match="not JSON serializable"):
            encode({"v": value})


def test_encode_writes_floats_as_the_same_numbers_and_non_finite_ones_as_null() -> None:
    """The two documented differences from `json`: exponent spelling and NaN."""
    from cdrhouse.api.conditional import encode
    assert json.loads(encode({"f": 1e16, "g": 1.5e-7})) == {"f": 1e16, "g": 1.5e-7}
    assert encode({"nan": float("nan"), "inf": float("-inf")}) == b'{"nan":null,"inf":null}'
