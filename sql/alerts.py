"""Anomaly detectors as pure SQL builders: one row of `DETECTORS` per detector.

Each detector is a rule computed by ClickHouse over one tenant's recent CDRs at
an instant `now` (a parameter, so a past instant can be replayed: the benchmark
and the tests evaluate "as of" fixed times). A builder returns the SQL text and
its bound parameters; nothing here touches a database (engine/alerts.py runs
them). Every query returns the rows that *fire*, with the same first columns:

    customer_id UInt32, carrier_id UInt32, subject String

(`customer_id` / `carrier_id`: the account the finding is about, 0 for none; the
guard of a customer or carrier key filters alerts on them) and then its evidence
columns — the numbers behind the finding, stored with the alert.

Rules, in short (README "Anomaly alerts" has the defaults and the why):

- `traffic_spike` — calls or minutes per (customer, destination prefix) in the
  last hour against the same hour of the week in the previous weeks: fires above
  max(ratio x median, median + k x max(1.4826 x MAD, sqrt(median), 1), minimum);
- `asr_acd_carrier` / `asr_acd_destination` — the last hour's ASR (or ACD) per
  carrier / per destination country against the preceding days: a relative drop
  that is also a `z`-sigma binomial drop (ASR), or a relative ACD drop on enough
  connected calls;
- `short_call_surge` — answered calls of at most a few seconds per carrier (false
  answer supervision, wangiri): their share of answered calls several times the
  baseline share and above an absolute share, with a minimum count;
- `new_expensive_destination` — a prefix a customer called in the last hours at a
  rate above a threshold and never in the lookback before (IRSF);
- `spend_jump` — a customer's charge in the last hour against the same hour of
  the previous days (median and MAD, ratio, minimum);
- `balance_runway` — a prepaid customer (one with ledger entries) whose balance
  lasts fewer than N hours at its recent burn rate (or is already spent).

Settings are numbers with a default and bounds (`Setting`); `enabled` (0/1)
exists for every detector. A tenant's overrides are validated by
`validate_settings`, which names the detector and setting it refuses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cdrhouse.sql.errors import UserError

#: the columns every detector query starts with
LEAD_COLUMNS: tuple[str, ...] = ("customer_id", "carrier_id", "subject")

WEEK = 7 * 86400
DAY = 86400


class AlertSettingsError(UserError):
    """A detector setting that is unknown or out of range; the message names it."""


@dataclass(frozen=True)
class Setting:
    default: float
    low: float
    high: float
    doc: str
    integer: bool = False


@dataclass(frozen=True)
class Detector:
    key: str
    description: str
    #: what the subject is: customer+prefix, carrier, country, customer
    subject: str
    build: Callable[[str, Mapping[str, float]], tuple[str, dict[str, Any]]]
    settings: dict[str, Setting] = field(default_factory=dict)
    #: a one-line summary from the evidence (str.format over evidence + names)
    summary: str = ""

    def defaults(self) -> dict[str, float]:
        return {name: s.default for name, s in self.settings.items()}


def _int(default: int, low: int, high: int, doc: str) -> Setting:
    return Setting(default, low, high, doc, integer=True)


ENABLED = _int(1, 0, 1, "1: evaluate this detector, 0: off")


def _base_params(tenant: str) -> dict[str, Any]:
    # `now` is bound by the caller (engine/alerts.py) as DateTime64(3, 'UTC')
    return {"tenant": tenant}


NOW = "{now:DateTime64(3, 'UTC')}"


def _seasonal(group: str, metrics: dict[str, str], window: int, period: int,
              periods: int, having: str) -> str:
    """The shared shape of the median/MAD detectors: per group, each metric in the
    window ending at `now` and in the same window shifted back 1..`periods` times
    by `period` (an hour of the week, or of the day), zero where there were no calls.

    Output columns per metric M: M_now, M_base (array), M_median, M_mad.
    """
    ranges = " OR ".join(
        f"(start_time >= {NOW} - toIntervalSecond({w * period + window}) AND "
        f"start_time < {NOW} - toIntervalSecond({w * period}))" for w in range(periods + 1))
    aggs = []
    for name, expr in metrics.items():
        aggs.append(f"toFloat64(sumIf({expr}, w = 0)) AS {name}_now")
        aggs.append("[" + ", ".join(f"toFloat64(sumIf({expr}, w = {w}))"
                                    for w in range(1, periods + 1)) + f"] AS {name}_base")
    stats = []
    for name in metrics:
        stats.append(f"arrayReduce('median', {name}_base) AS {name}_median")
        stats.append(f"arrayReduce('median', arrayMap(x -> abs(x - {name}_median), {name}_base)) "
                     f"AS {name}_mad")
    return f"""
SELECT {group}, {', '.join(aggs)}, {', '.join(stats)}
FROM (
    SELECT *, intDiv(toUnixTimestamp64Milli({NOW}) - toUnixTimestamp64Milli(start_time) - 1,
                     {period * 1000}) AS w
    FROM cdr_records FINAL
    WHERE tenant_id = {{tenant:String}} AND start_time < {NOW}
      AND start_time >= {NOW} - toIntervalSecond({periods * period + window})
      AND ({ranges})
)
GROUP BY {group}
HAVING {having}
"""


def _limit(name: str, s: Mapping[str, float], floor: str) -> str:
    """max(ratio x median, median + k x max(1.4826 x MAD, floor), minimum)."""
    return (f"greatest({name}_median * {float(s['ratio'])}, {name}_median + {float(s['k'])} * "
            f"greatest(1.4826 * {name}_mad, {floor}), {float(s['min_' + name])})")


def traffic_spike(tenant: str, s: Mapping[str, float]) -> tuple[str, dict[str, Any]]:
    window, weeks = int(s["window_minutes"]) * 60, int(s["weeks"])
    inner = _seasonal(
        "customer_id, dst_prefix",
        {"calls": "1", "minutes": "billsec / 60"}, window, WEEK, weeks,
        f"calls_now >= {float(s['min_calls'])}")
    sql = f"""
SELECT customer_id, toUInt32(0) AS carrier_id,
       concat('customer:', toString(customer_id), '/prefix:', dst_prefix) AS subject,
       dst_prefix AS prefix,
       calls_now AS calls, round(calls_median, 2) AS calls_baseline_median,
       round(calls_mad, 2) AS calls_baseline_mad, round(calls_limit, 2) AS calls_limit,
       round(minutes_now, 1) AS minutes, round(minutes_median, 1) AS minutes_baseline_median,
       round(minutes_mad, 1) AS minutes_baseline_mad, round(minutes_limit, 1) AS minutes_limit,
       calls_base AS calls_by_week, arrayMap(x -> round(x, 1), minutes_base) AS minutes_by_week
FROM (
    SELECT *, {_limit('calls', s, 'sqrt(calls_median), 1')} AS calls_limit,
              {_limit('minutes', s, '2 * sqrt(minutes_median), 1')} AS minutes_limit
    FROM ({inner})
)
WHERE calls_now >= {float(s['min_calls'])}
  AND (calls_now > calls_limit OR (minutes_now >= {float(s['min_minutes'])} AND minutes_now > minutes_limit))
ORDER BY customer_id, prefix
"""
    return sql, _base_params(tenant)


def spend_jump(tenant: str, s: Mapping[str, float]) -> tuple[str, dict[str, Any]]:
    window, days = int(s["window_minutes"]) * 60, int(s["days"])
    inner = _seasonal(
        "customer_id", {"spend": "ifNull(toFloat64(customer_charge), 0)"}, window, DAY, days,
        f"spend_now >= {float(s['min_spend'])}")
    sql = f"""
SELECT customer_id, toUInt32(0) AS carrier_id,
       concat('customer:', toString(customer_id)) AS subject,
       round(spend_now, 2) AS spend, round(spend_median, 2) AS spend_baseline_median,
       round(spend_mad, 2) AS spend_baseline_mad, round(spend_limit, 2) AS spend_limit,
       arrayMap(x -> round(x, 2), spend_base) AS spend_by_day
FROM (
    SELECT *, {_limit('spend', s, '0')} AS spend_limit
    FROM ({inner})
)
WHERE spend_now > spend_limit
ORDER BY customer_id
"""
    return sql, _base_params(tenant)


def _quality(column: str, subject: str, customer_col: str, carrier_col: str,
             nonempty: str) -> Callable[[str, Mapping[str, float]], tuple[str, dict[str, Any]]]:
    def build(tenant: str, s: Mapping[str, float]) -> tuple[str, dict[str, Any]]:
        window, base = int(s["window_minutes"]) * 60, int(s["baseline_hours"]) * 3600
        cur = f"start_time >= {NOW} - toIntervalSecond({window})"
        sql = f"""
SELECT {customer_col} AS customer_id, {carrier_col} AS carrier_id,
       concat('{subject}:', toString(k)) AS subject,
       calls_now AS calls, connected_now AS connected, round(asr_now, 4) AS asr,
       round(asr_base, 4) AS asr_baseline, round(acd_now, 1) AS acd_seconds,
       round(acd_base, 1) AS acd_baseline_seconds, calls_base AS baseline_calls,
       asr_dropped, acd_dropped
FROM (
    SELECT *,
        connected_now / calls_now AS asr_now,
        connected_base / calls_base AS asr_base,
        if(connected_now = 0, 0, billsec_now / connected_now) AS acd_now,
        if(connected_base = 0, 0, billsec_base / connected_base) AS acd_base,
        asr_now < asr_base * (1 - {float(s['asr_drop'])})
            AND asr_base - asr_now > {float(s['z'])} * sqrt(asr_base * (1 - asr_base) / calls_now)
            AS asr_dropped,
        connected_now >= {float(s['min_connected'])} AND connected_base > 0
            AND acd_now < acd_base * (1 - {float(s['acd_drop'])}) AS acd_dropped
    FROM (
        SELECT {column} AS k,
            toFloat64(countIf({cur})) AS calls_now,
            toFloat64(countIf({cur} AND billsec > 0)) AS connected_now,
            toFloat64(sumIf(billsec, {cur})) AS billsec_now,
            toFloat64(countIf(NOT ({cur}))) AS calls_base,
            toFloat64(countIf(NOT ({cur}) AND billsec > 0)) AS connected_base,
            toFloat64(sumIf(billsec, NOT ({cur}))) AS billsec_base
        FROM cdr_records FINAL
        WHERE tenant_id = {{tenant:String}} AND start_time < {NOW}
          AND start_time >= {NOW} - toIntervalSecond({window + base}) AND {nonempty}
        GROUP BY k
        HAVING calls_now >= {float(s['min_calls'])} AND calls_base >= {float(s['min_baseline_calls'])}
    )
)
WHERE asr_dropped OR acd_dropped
ORDER BY k
"""
        return sql, _base_params(tenant)
    return build


def short_call_surge(tenant: str, s: Mapping[str, float]) -> tuple[str, dict[str, Any]]:
    window, base = int(s["window_minutes"]) * 60, int(s["baseline_hours"]) * 3600
    cur = f"start_time >= {NOW} - toIntervalSecond({window})"
    short = f"billsec > 0 AND billsec <= {int(s['short_seconds'])}"
    sql = f"""
SELECT toUInt32(0) AS customer_id, carrier_id,
       concat('carrier:', toString(carrier_id)) AS subject,
       short_now AS short_calls, answered_now AS answered, round(share_now, 4) AS short_share,
       round(share_base, 4) AS short_share_baseline, answered_base AS baseline_answered
FROM (
    SELECT *, short_now / answered_now AS share_now,
           if(answered_base = 0, 0, short_base / answered_base) AS share_base
    FROM (
        SELECT carrier_id,
            toFloat64(countIf({cur} AND {short})) AS short_now,
            toFloat64(countIf({cur} AND billsec > 0)) AS answered_now,
            toFloat64(countIf(NOT ({cur}) AND {short})) AS short_base,
            toFloat64(countIf(NOT ({cur}) AND billsec > 0)) AS answered_base
        FROM cdr_records FINAL
        WHERE tenant_id = {{tenant:String}} AND start_time < {NOW}
          AND start_time >= {NOW} - toIntervalSecond({window + base}) AND carrier_id != 0
        GROUP BY carrier_id
        HAVING short_now >= {float(s['min_short'])}
    )
)
WHERE share_now >= greatest({float(s['min_share'])}, {float(s['ratio'])} * share_base)
ORDER BY carrier_id
"""
    return sql, _base_params(tenant)


def new_expensive_destination(tenant: str, s: Mapping[str, float]) -> tuple[str, dict[str, Any]]:
    window, lookback = int(s["window_hours"]) * 3600, int(s["lookback_days"]) * 86400
    cur = f"start_time >= {NOW} - toIntervalSecond({window})"
    rate = "greatest(ifNull(toFloat64(customer_rate), 0), ifNull(toFloat64(carrier_rate), 0))"
    sql = f"""
SELECT customer_id, toUInt32(0) AS carrier_id,
       concat('customer:', toString(customer_id), '/prefix:', dst_prefix) AS subject,
       dst_prefix AS prefix, any(country) AS destination_country,
       count() AS calls, round(sum(billsec) / 60, 1) AS minutes,
       round(max({rate}), 4) AS max_rate_per_min, min(start_time) AS first_call,
       round(sum(ifNull(toFloat64(customer_charge), 0)), 2) AS charge
FROM cdr_records FINAL
WHERE tenant_id = {{tenant:String}} AND start_time < {NOW}
  AND start_time >= {NOW} - toIntervalSecond({window + lookback})
  AND (customer_id, dst_prefix) IN (
      SELECT customer_id, dst_prefix FROM cdr_records
      WHERE tenant_id = {{tenant:String}} AND start_time < {NOW} AND {cur}
        AND {rate} >= {float(s['min_rate'])} AND dst_prefix != '')
GROUP BY customer_id, dst_prefix
HAVING countIf(NOT ({cur})) = 0 AND calls >= {float(s['min_calls'])}
ORDER BY customer_id, prefix
"""
    return sql, _base_params(tenant)


def balance_runway(tenant: str, s: Mapping[str, float]) -> tuple[str, dict[str, Any]]:
    burn = int(s["burn_hours"]) * 3600
    sql = f"""
SELECT l.account_id AS customer_id, toUInt32(0) AS carrier_id,
       concat('customer:', toString(l.account_id)) AS subject,
       round(l.paid - u.used, 2) AS balance, round(b.spent / {burn / 3600}, 4) AS burn_per_hour,
       if(b.spent > 0, round((l.paid - u.used) / (b.spent / {burn / 3600}), 1), NULL) AS hours_left
FROM (
    SELECT account_id, toFloat64(sum(amount)) AS paid FROM ledger
    WHERE tenant_id = {{tenant:String}} AND kind = 'customer' AND at <= {NOW}
    GROUP BY account_id
) AS l
LEFT JOIN (
    SELECT customer_id, toFloat64(sum(customer_charge)) AS used FROM cdr_daily_summary
    WHERE tenant_id = {{tenant:String}} GROUP BY customer_id
) AS u ON u.customer_id = l.account_id
LEFT JOIN (
    SELECT customer_id, sum(ifNull(toFloat64(customer_charge), 0)) AS spent FROM cdr_records FINAL
    WHERE tenant_id = {{tenant:String}} AND start_time < {NOW}
      AND start_time >= {NOW} - toIntervalSecond({burn})
    GROUP BY customer_id
) AS b ON b.customer_id = l.account_id
WHERE b.spent >= {float(s['min_burn'])} AND l.paid - u.used < (b.spent / {burn / 3600}) * {float(s['runway_hours'])}
ORDER BY customer_id
"""
    return sql, _base_params(tenant)


def _quality_settings(min_calls: int) -> dict[str, Setting]:
    return {
        "enabled": ENABLED,
        "window_minutes": _int(60, 5, 1440, "the recent window"),
        "baseline_hours": _int(168, 6, 24 * 60, "the baseline: this many hours before the window"),
        "min_calls": _int(min_calls, 1, 10**9, "calls in the window before ASR is judged"),
        "min_baseline_calls": _int(200, 1, 10**9, "calls in the baseline before anything is judged"),
        "asr_drop": Setting(0.5, 0.05, 1.0, "relative ASR drop that fires (0.5: ASR halved)"),
        "z": Setting(4.0, 0.0, 20.0, "and the drop must exceed z binomial standard deviations"),
        "min_connected": _int(100, 1, 10**9, "connected calls in the window before ACD is judged"),
        "acd_drop": Setting(0.6, 0.05, 1.0, "relative ACD drop that fires (0.6: ACD at 40 %)"),
    }


DETECTORS: tuple[Detector, ...] = (
    Detector(
        "traffic_spike",
        "Calls or minutes per customer and destination prefix in the last hour far above the "
        "same hour of the week in previous weeks (median + k x MAD, a ratio, a minimum volume).",
        "customer+prefix", traffic_spike, {
            "enabled": ENABLED,
            "window_minutes": _int(60, 5, 1440, "the recent window"),
            "weeks": _int(4, 1, 12, "previous weeks in the baseline (same hour of the week)"),
            "k": Setting(5.0, 0.0, 100.0, "MADs (scaled by 1.4826) above the median"),
            "ratio": Setting(3.0, 1.0, 1000.0, "and at least this many times the median"),
            "min_calls": _int(30, 1, 10**9, "calls in the window before a spike counts"),
            "min_minutes": _int(120, 1, 10**9, "minutes in the window before a spike counts"),
        }, "traffic spike to prefix {prefix}: {calls:g} calls / {minutes:g} min in the window "
           "(limit {calls_limit:g} calls / {minutes_limit:g} min)"),
    Detector(
        "asr_acd_carrier",
        "A carrier's ASR (answered / attempts) or ACD (talk seconds per answered call) in the "
        "last hour far below its own preceding week.",
        "carrier", _quality("carrier_id", "carrier", "toUInt32(0)", "k", "carrier_id != 0"),
        _quality_settings(40),
        "ASR {asr:.1%} (baseline {asr_baseline:.1%}), ACD {acd_seconds:g}s "
        "(baseline {acd_baseline_seconds:g}s) on {calls:g} calls"),
    Detector(
        "asr_acd_destination",
        "A destination country's ASR or ACD in the last hour far below its preceding week.",
        "country", _quality("country", "country", "toUInt32(0)", "toUInt32(0)", "country != ''"),
        _quality_settings(40),
        "ASR {asr:.1%} (baseline {asr_baseline:.1%}), ACD {acd_seconds:g}s "
        "(baseline {acd_baseline_seconds:g}s) on {calls:g} calls"),
    Detector(
        "short_call_surge",
        "A carrier's answered calls of at most a few seconds (false answer supervision, "
        "wangiri) as a share of its answered calls, far above its preceding week.",
        "carrier", short_call_surge, {
            "enabled": ENABLED,
            "window_minutes": _int(60, 5, 1440, "the recent window"),
            "baseline_hours": _int(168, 6, 24 * 60, "the baseline: this many hours before the window"),
            "short_seconds": _int(6, 1, 60, "an answered call this short or shorter is short"),
            "min_short": _int(20, 1, 10**9, "short calls in the window before a surge counts"),
            "ratio": Setting(3.0, 1.0, 1000.0, "short share at least this many times the baseline"),
            "min_share": Setting(0.2, 0.0, 1.0, "and at least this share of answered calls"),
        }, "{short_calls:g} of {answered:g} answered calls were short ({short_share:.1%}, "
           "baseline {short_share_baseline:.1%})"),
    Detector(
        "new_expensive_destination",
        "A customer calls a destination prefix it never called in the lookback, at a rate "
        "above a threshold (international revenue share fraud).",
        "customer+prefix", new_expensive_destination, {
            "enabled": ENABLED,
            "window_hours": _int(6, 1, 168, "how recent the first call must be"),
            "lookback_days": _int(90, 1, 400, "no call to the prefix in this many days before"),
            "min_rate": Setting(0.25, 0.0, 10**6, "rate per minute (customer or carrier) at or above"),
            "min_calls": _int(3, 1, 10**9, "calls to the prefix in the window"),
        }, "new destination {prefix} ({destination_country}) at {max_rate_per_min:g}/min: "
           "{calls:g} calls since {first_call}"),
    Detector(
        "spend_jump",
        "A customer's charge in the last hour far above the same hour of previous days "
        "(median + k x MAD, a ratio, a minimum amount).",
        "customer", spend_jump, {
            "enabled": ENABLED,
            "window_minutes": _int(60, 5, 720, "the recent window"),
            "days": _int(14, 2, 60, "previous days in the baseline (same hour of the day)"),
            "k": Setting(6.0, 0.0, 100.0, "MADs (scaled by 1.4826) above the median"),
            "ratio": Setting(4.0, 1.0, 1000.0, "and at least this many times the median"),
            "min_spend": Setting(20.0, 0.0, 10**9, "charge in the window before a jump counts"),
        }, "spend {spend:g} in the window (baseline median {spend_baseline_median:g}, "
           "limit {spend_limit:g})"),
    Detector(
        "balance_runway",
        "A customer with ledger entries (prepaid) whose balance lasts fewer than N hours at "
        "its recent burn rate, or is already spent while it keeps calling.",
        "customer", balance_runway, {
            "enabled": ENABLED,
            "burn_hours": _int(24, 1, 720, "the burn rate is the charge over this many hours"),
            "runway_hours": _int(24, 1, 720, "fire when the balance lasts fewer hours"),
            "min_burn": Setting(0.01, 0.0, 10**9, "charge in the burn window before judging"),
        }, "balance {balance:g} lasts {hours_left} h at {burn_per_hour:g}/h"),
)

BY_KEY: dict[str, Detector] = {d.key: d for d in DETECTORS}


def detector(key: str) -> Detector:
    try:
        return BY_KEY[key]
    except KeyError:
        raise AlertSettingsError(f"detector: {key!r} is not one of {', '.join(BY_KEY)}") from None


def validate_settings(key: str, values: Mapping[str, Any]) -> dict[str, float]:
    """Check one detector's overrides: known names, numbers within bounds (integers
    where the setting is one). Returns them as numbers; raises AlertSettingsError."""
    d = detector(key)
    if not isinstance(values, Mapping):
        raise AlertSettingsError(f"{key}: settings must be an object of name -> number")
    out: dict[str, float] = {}
    for name, raw in values.items():
        spec = d.settings.get(name)
        if spec is None:
            raise AlertSettingsError(f"{key}.{name}: unknown setting (known: "
                                     f"{', '.join(d.settings)})")
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            try:
                raw = float(str(raw))
            except ValueError:
                raise AlertSettingsError(f"{key}.{name}: {raw!r} is not a number") from None
        value = float(raw)
        if not math.isfinite(value) or not spec.low <= value <= spec.high:
            raise AlertSettingsError(f"{key}.{name}: {raw!r} is outside {spec.low:g}..{spec.high:g}")
        if spec.integer and value != int(value):
            raise AlertSettingsError(f"{key}.{name}: {raw!r} must be a whole number")
        out[name] = int(value) if spec.integer else value
    return out


def effective(key: str, *layers: Mapping[str, float] | None) -> dict[str, float]:
    """Defaults overlaid with each layer in turn (configuration, then the tenant's)."""
    values: dict[str, float] = BY_KEY[key].defaults()
    for layer in layers:
        if layer:
            values.update(validate_settings(key, layer))
    return values


def build(key: str, tenant: str, settings: Mapping[str, float]) -> tuple[str, dict[str, Any]]:
    """The detector's SQL and parameters (`now` still to bind) for one tenant."""
    return BY_KEY[key].build(tenant, settings)


__all__ = ["AlertSettingsError", "DETECTORS", "Detector", "LEAD_COLUMNS", "Setting", "build",
           "detector", "effective", "validate_settings"]
