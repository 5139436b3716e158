"""Pricing calls against rate cards, set-based, in ClickHouse.

`rated_select` wraps any SELECT of CDR rows and returns a SELECT of the same
rows priced: for each side (customer = charge, carrier = cost) the rate is
found by joining the call's destination *prefix candidates* (every leading
substring of dst_number, one row each via arrayJoin) with the account's rate
rows effective at the call's start time; the longest matching prefix wins
(then the latest effective_from). The rate cards are the small side of the
hash join, so a month of calls is one pass, not a Python loop.

The rules (tests/test_rating.py pins each):

- billed seconds: 0 when billsec is 0 (an unanswered call costs nothing, no
  connect fee); otherwise b = max(billsec, min_duration), billed = initial if
  b <= initial, else initial + ceil((b - initial) / next) * next;
- charge = connect_fee + billed * rate_per_min / 60, rounded half away from
  zero to the card's `rounding` decimals (0-6);
- a side without a usable rate is left empty (NULL) and `rating_status`
  says why: `<side>:no_account` (account id 0), `<side>:no_card` (the
  account has no rates), `<side>:no_rate` (no prefix effective then); never
  priced at zero;
- mode "fill" prices a side only when its charge is empty (ingest keeps the
  charges a CDR arrives with); mode "reprice" prices every side (re-rate);
- on a priced customer side, dst_prefix becomes the matched prefix, currency
  the card's, and customer_billsec the billed seconds.
"""

from __future__ import annotations

from typing import Literal

from cdrhouse.sql import catalogue

Mode = Literal["fill", "reprice"]
MAX_PREFIX = 20

#: Columns a rated SELECT yields: the catalogue fields plus the two rating columns.
RATED_COLUMNS: tuple[str, ...] = catalogue.NAMES + ("rating_status", "customer_billsec")


def _round(expr: str, digits: str) -> str:
    # round()'s precision must be a constant: one branch per allowed value
    branches = ", ".join(f"{digits} = {n}, toDecimal128(round({expr}, {n}), 6)" for n in range(6))
    return f"multiIf({branches}, toDecimal128(round({expr}, 6), 6))"


def _matches(candidates: str, side: str) -> str:
    """Best rate per call for one side: (call_id, account, dst, start) -> m_* columns."""
    acct = f"{side}_id"
    return f"""
SELECT c.call_id AS call_id, c.acct AS acct, c.dst_number AS dst_number, c.start_time AS start_time,
       1 AS matched,
       argMax((r.prefix, r.rate_per_min, r.connect_fee, r.increment_initial, r.increment_next,
               r.min_duration, r.rounding, r.currency),
              (length(r.prefix), r.effective_from)) AS m
FROM (
    SELECT call_id, {acct} AS acct, dst_number, start_time,
           arrayJoin(arrayMap(i -> substring(dst_number, 1, i),
                              range(1, least(length(dst_number), {MAX_PREFIX}) + 1))) AS p
    FROM ({candidates})
    WHERE {acct} != 0 AND dst_number != ''
) AS c
INNER JOIN (
    SELECT account_id, prefix, effective_from, effective_to, rate_per_min, connect_fee,
           increment_initial, increment_next, min_duration, rounding, currency
    FROM rate_cards FINAL
    WHERE tenant_id = {{tenant:String}} AND kind = '{side}' AND NOT deleted
) AS r ON r.account_id = c.acct AND r.prefix = c.p
WHERE c.start_time >= r.effective_from AND (r.effective_to IS NULL OR c.start_time < r.effective_to)
GROUP BY c.call_id, c.acct, c.dst_number, c.start_time"""


def _side_exprs(side: str, alias: str, mode: Mode) -> dict[str, str]:
    """Expressions for one side's rate, amount, billed seconds and status."""
    rate_col, amount_col = ("customer_rate", "customer_charge") if side == "customer" else (
        "carrier_rate", "carrier_cost")
    m = f"{alias}.m"
    priced = "1" if mode == "reprice" else f"s.{amount_col} IS NULL"
    billed = (f"if(s.billsec = 0, toUInt32(0), "
              f"if(greatest(s.billsec, tupleElement({m}, 6)) <= tupleElement({m}, 4), tupleElement({m}, 4), "
              f"toUInt32(tupleElement({m}, 4) + intDiv(greatest(s.billsec, tupleElement({m}, 6)) - tupleElement({m}, 4) + tupleElement({m}, 5) - 1, greatest(tupleElement({m}, 5), 1)) * tupleElement({m}, 5))))")
    raw = f"(tupleElement({m}, 3) + toDecimal128({billed}, 6) * tupleElement({m}, 2) / 60)"
    amount = f"if(s.billsec = 0, toDecimal128(0, 6), {_round(raw, f'tupleElement({m}, 7)')})"
    hit = f"{alias}.matched = 1"
    return {
        "priced": priced,
        "hit": hit,
        "billed": billed,
        "rate": f"if({priced}, if({hit}, CAST(tupleElement({m}, 2), 'Nullable(Decimal(18, 6))'), NULL), s.{rate_col})",
        "amount": (f"if({priced}, if({hit}, CAST(toDecimal64({amount}, 6), 'Nullable(Decimal(18, 6))'), "
                   f"NULL), s.{amount_col})"),
        "status": (f"if(NOT ({priced}) OR {hit}, '', multiIf(s.{side}_id = 0, '{side}:no_account', "
                   f"NOT has({{{side}_carded:Array(UInt32)}}, s.{side}_id), '{side}:no_card', "
                   f"'{side}:no_rate'))"),
    }


def rated_select(source: str, candidates: str | None = None, mode: Mode = "reprice",
                 passthrough: tuple[str, ...] = ()) -> str:
    """A SELECT of RATED_COLUMNS: the rows of `source`, priced.

    `source` yields every catalogue field plus `rating_status` and
    `customer_billsec` (NULL / '' when unknown). `candidates` (default:
    `source`) yields at least call_id, customer_id, carrier_id, dst_number and
    start_time of the same calls and may be a superset (it is read twice, once
    per side; pass a cheaper query than `source` when there is one).
    Parameters: tenant, customer_carded, carrier_carded (account ids that have
    rate cards: see ratecards.accounts_with_cards). `passthrough` names further
    columns of `source` to carry through unchanged (recalc carries the old values).
    """
    candidates = candidates or source
    cu = _side_exprs("customer", "cm", mode)
    ca = _side_exprs("carrier", "km", mode)
    out = {name: f"s.{name}" for name in RATED_COLUMNS + passthrough}
    out["customer_rate"] = cu["rate"]
    out["customer_charge"] = cu["amount"]
    out["carrier_rate"] = ca["rate"]
    out["carrier_cost"] = ca["amount"]
    out["dst_prefix"] = f"if(({cu['priced']}) AND {cu['hit']}, tupleElement(cm.m, 1), s.dst_prefix)"
    out["currency"] = f"if(({cu['priced']}) AND {cu['hit']}, tupleElement(cm.m, 8), s.currency)"
    out["customer_billsec"] = (f"if({cu['priced']}, if({cu['hit']}, CAST({cu['billed']}, "
                               f"'Nullable(UInt32)'), NULL), s.customer_billsec)")
    out["rating_status"] = (f"arrayStringConcat(arrayFilter(x -> x != '', "
                            f"[{cu['status']}, {ca['status']}]), ';')")
    select = ",\n  ".join(f"{expr} AS {name}" for name, expr in out.items())
    key = ("{a}.call_id = s.call_id AND {a}.acct = s.{side}_id AND {a}.dst_number = s.dst_number "
           "AND {a}.start_time = s.start_time")
    return (f"SELECT\n  {select}\nFROM ({source}) AS s\n"
            f"LEFT JOIN ({_matches(candidates, 'customer')}) AS cm "
            f"ON {key.format(a='cm', side='customer')}\n"
            f"LEFT JOIN ({_matches(candidates, 'carrier')}) AS km "
            f"ON {key.format(a='km', side='carrier')}")


__all__ = ["RATED_COLUMNS", "rated_select"]
