"""Labelled anomalies injected into generated traffic: the evidence for the detectors.

`cdrhouse demo --anomalies`, the alert tests and benchmarks/alerts_bench.py add
these on top of the generator's clean traffic (engine/generate.py). Each anomaly
is the generator's own calls with a few columns overridden (who, where, when,
how they ended), spread evenly over `minutes` from `start`, and ingested through
the real ingest path — so the detectors see what they would see in production.

Each `Anomaly` carries its label: the detectors it should raise (`targets`),
the ones it may legitimately raise as a consequence (`also`: a premium spike is
also a spend jump), and the subject it is about. `matches(alert)` says whether
an alert is explained by it; an alert no anomaly explains is a false alert.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cdrhouse.engine import accounts as acc
from cdrhouse.engine import generate
from cdrhouse.engine.db import Database

CANONICAL = ("call_id", "start_time", "answer_time", "end_time", "duration", "billsec",
             "customer_code", "carrier_code", "direction", "disposition", "src_number",
             "dst_number", "dst_prefix", "country", "release_reason", "sip_code", "sip_reason",
             "pdd_ms", "src_ip", "dst_ip", "codec", "customer_rate", "customer_charge",
             "carrier_rate", "carrier_cost", "currency", "recording_url")

#: defaults computed from the *new* values (aliases of the final projection)
_DERIVED = {
    "start_time": "_t",
    "answer_time": "if(disposition = 'ANSWERED', start_time + toIntervalSecond(duration - billsec), NULL)",
    "end_time": "start_time + toIntervalSecond(duration)",
    "customer_charge": "toDecimal64(round(toDecimal128(billsec, 6) * customer_rate / 60, 6), 6)",
    "carrier_cost": "toDecimal64(round(toDecimal128(billsec, 6) * carrier_rate / 60, 6), 6)",
}

_U = "((cityHash64(_i, {k}) % 1000003) / 1000003.0)"


def _u(k: int) -> str:
    return _U.format(k=k)


def _dest(cc: str, national: int, prefix: str | None = None) -> dict[str, str]:
    """Numbers in country code `cc` (or under `prefix`), the prefix as the generator cuts it."""
    lead = prefix or cc
    digits = len(cc) + national - len(lead)
    return {
        "dst_number": f"concat('{lead}', leftPad(toString(cityHash64(_i, 77) % {10 ** digits}), "
                      f"{digits}, '0'))",
        "dst_prefix": f"substring(dst_number, 1, {len(cc) + 2})" if prefix is None
        else f"'{prefix}'",
    }


def _rates(customer: str, carrier: str) -> tuple[tuple[str, str], ...]:
    return (("customer_rate", f"toDecimal64('{customer}', 6)"),
            ("carrier_rate", f"toDecimal64('{carrier}', 6)"))


@dataclass(frozen=True)
class Anomaly:
    """One injected anomaly and its label."""

    name: str
    tenant: str
    description: str
    targets: tuple[str, ...]
    also: tuple[str, ...] = ()
    customer: str | None = None     #: account code
    carrier: str | None = None
    country: str | None = None
    calls: int = 0
    minutes: int = 60
    overrides: tuple[tuple[str, str], ...] = ()
    start: dt.datetime | None = None
    #: resolved at injection
    customer_id: int = 0
    carrier_id: int = 0
    runway_hours: float = 0.0

    def about(self, alert: Any) -> bool:
        """Is `alert` (anything with tenant_id, customer_id, carrier_id, subject) about us?"""
        if alert.tenant_id != self.tenant:
            return False
        if self.customer_id and alert.customer_id == self.customer_id:
            return True
        if self.carrier_id and alert.carrier_id == self.carrier_id:
            return True
        return bool(self.country) and alert.subject == f"country:{self.country}"

    def matches(self, alert: Any) -> bool:
        return alert.detector in (*self.targets, *self.also) and self.about(alert)

    def found_by(self, alert: Any) -> bool:
        return alert.detector in self.targets and self.about(alert)


def catalogue(start: dt.datetime, tenants: tuple[str, ...] = ("acme", "globex", "initech")
              ) -> list[Anomaly]:
    """The standard set, one anomaly per subject so that their labels do not overlap."""
    return [replace(x, start=start) for x in _standard(tenants)]


def _standard(tenants: tuple[str, ...]) -> list[Anomaly]:
    a, b, c = (tenants * 3)[:3]
    answered_long = {"disposition": "'ANSWERED'", "sip_code": "200", "sip_reason": "'OK'",
                     "release_reason": "'NORMAL_CLEARING'"}
    return [
        Anomaly("premium_spike", a, "customer C003 pumps calls to Cuban prefix 5355 (0.65/min)",
                ("traffic_spike",), ("spend_jump", "new_expensive_destination"),
                customer="C003", calls=300,
                overrides=(("customer_code", "'C003'"), ("country", "'CU'"),
                           *_dest("53", 8, "5355").items(), *_rates("0.65", "0.50"))),
        Anomaly("asr_collapse", a, "carrier K002 fails most calls to Germany (SIP 503)",
                ("asr_acd_carrier",), ("asr_acd_destination",), carrier="K002", country="DE",
                calls=400,
                overrides=(("carrier_code", "'K002'"), ("country", "'DE'"),
                           *_dest("49", 11).items(), *_rates("0.0150", "0.0120"),
                           ("disposition", f"if(g_disposition = 'ANSWERED' AND {_u(1)} < 0.14, "
                                           "'ANSWERED', 'CONGESTION')"),
                           ("billsec", "if(disposition = 'ANSWERED', g_billsec, 0)"),
                           ("duration", "if(disposition = 'ANSWERED', g_duration, "
                                        "toUInt32(ceil(g_pdd_ms / 1000)))"),
                           ("sip_code", "if(disposition = 'ANSWERED', 200, 503)"),
                           ("sip_reason", "if(disposition = 'ANSWERED', 'OK', 'Service Unavailable')"),
                           ("release_reason", "if(disposition = 'ANSWERED', 'NORMAL_CLEARING', "
                                              "'NORMAL_CIRCUIT_CONGESTION')"))),
        Anomaly("short_call_surge", b, "carrier K001 answers calls to Nigeria that last 1-3 s",
                ("short_call_surge",), ("asr_acd_carrier", "asr_acd_destination"),
                carrier="K001", country="NG", calls=300,
                overrides=(("carrier_code", "'K001'"), ("country", "'NG'"),
                           *_dest("234", 10).items(), *_rates("0.0950", "0.0760"),
                           *answered_long.items(),
                           ("billsec", f"toUInt32(1 + floor({_u(2)} * 3))"),
                           ("duration", "billsec + 2"))),
        Anomaly("spend_jump", c, "customer C002 makes long calls, ten times its usual spend",
                ("spend_jump",), ("traffic_spike", "new_expensive_destination"),
                customer="C002", calls=300,
                overrides=(("customer_code", "'C002'"), *answered_long.items(),
                           ("billsec", f"toUInt32(1800 + floor({_u(3)} * 1800))"),
                           ("duration", "billsec + 3"))),
        Anomaly("new_expensive_destination", b,
                "customer C004 calls satellite prefix 88216 (2.50/min), never called before",
                ("new_expensive_destination",), ("traffic_spike", "spend_jump"),
                customer="C004", calls=40,
                overrides=(("customer_code", "'C004'"), ("country", "'XS'"),
                           *_dest("882", 9, "88216").items(), *_rates("2.50", "2.10"))),
        Anomaly("balance_runway", c, "prepaid customer C001 has about six hours of credit left",
                ("balance_runway",), (), customer="C001", runway_hours=6.0),
    ]


def anomaly_sql(spec: generate.GenSpec, anomaly: Anomaly, index: int) -> tuple[str, dict]:
    """The anomaly's calls in canonical columns (the generator's calls, overridden)."""
    assert anomaly.start is not None
    gen = generate.generator_sql(spec)
    overrides = dict(anomaly.overrides)
    span_ms = anomaly.minutes * 60_000
    start_ms = int(anomaly.start.timestamp() * 1000)
    cols = []
    for col in CANONICAL:
        expr = overrides.get(col) or _DERIVED.get(col) or f"g_{col}"
        cols.append(f"{expr} AS {col}")
    inner_cols = ", ".join(f"{c} AS g_{c}" for c in CANONICAL)
    sql = f"""
SELECT {', '.join(cols)}
FROM (
    SELECT {inner_cols}, toUInt64(rowNumberInAllBlocks()) AS _i,
           fromUnixTimestamp64Milli(toInt64({start_ms} + intDiv(_i * {span_ms}, {anomaly.calls})), 'UTC') AS _t
    FROM ({gen})
)
"""
    params = {"seed": spec.seed + 1000 + index, "t_idx": spec.tenants.index(anomaly.tenant) + 1,
              "tenant": anomaly.tenant, "offset": 10**12 + index * 10**7, "rows": anomaly.calls}
    return sql, params


def _fund(db: Database, anomaly: Anomaly) -> Anomaly:
    """The balance anomaly: a payment leaving `runway_hours` of credit at the account's
    burn over the day before `start`."""
    from cdrhouse.engine import ledger

    account = acc.find(db, anomaly.tenant, "customer", anomaly.customer or "")
    if account is None:
        raise ValueError(f"no customer {anomaly.customer} in {anomaly.tenant}")
    assert anomaly.start is not None
    used = Decimal(db.scalar(
        "SELECT sum(customer_charge) FROM cdr_daily_summary WHERE tenant_id = {t:String} "
        "AND customer_id = {a:UInt32}", {"t": anomaly.tenant, "a": account.account_id}) or 0)
    paid = Decimal(db.scalar(
        "SELECT sum(amount) FROM ledger WHERE tenant_id = {t:String} AND kind = 'customer' "
        "AND account_id = {a:UInt32}", {"t": anomaly.tenant, "a": account.account_id}) or 0)
    burn = Decimal(db.scalar(
        "SELECT sum(ifNull(customer_charge, 0)) FROM cdr_records FINAL WHERE tenant_id = {t:String} "
        "AND customer_id = {a:UInt32} AND start_time >= {s:DateTime64(3, 'UTC')} - INTERVAL 1 DAY "
        "AND start_time < {s:DateTime64(3, 'UTC')}",
        {"t": anomaly.tenant, "a": account.account_id, "s": anomaly.start}) or 0) / 24
    amount = (used - paid + burn * Decimal(str(anomaly.runway_hours))).quantize(Decimal("0.000001"))
    if amount > 0:
        ledger.add_entry(db, account, "payment", amount, note=f"anomaly {anomaly.name}",
                         created_by="cdrhouse demo --anomalies", at=anomaly.start)
    return replace(anomaly, customer_id=account.account_id)


def inject(db: Database, spec: generate.GenSpec, anomalies: list[Anomaly], workdir: Path,
           start: dt.datetime | None = None) -> list[Anomaly]:
    """Add `anomalies` (each starting at its own `start`, else `start`) to the store
    through the ingest path; returns them with their accounts resolved."""
    from cdrhouse.engine.ingest import IngestOptions, ingest_paths

    out: list[Anomaly] = []
    files: dict[str, list[tuple[Path, Anomaly]]] = {}
    for i, anomaly in enumerate(anomalies):
        anomaly = replace(anomaly, start=anomaly.start or start)
        if anomaly.start is None:
            raise ValueError(f"anomaly {anomaly.name}: no start time")
        if anomaly.runway_hours:
            continue
        sql, params = anomaly_sql(spec, anomaly, i)
        path = Path(workdir) / f"anomaly-{anomaly.tenant}-{anomaly.name}-{spec.seed}.parquet"
        pq.write_table(db.arrow(sql, params), path, compression="zstd")
        files.setdefault(anomaly.tenant, []).append((path, anomaly))
    for tenant, items in files.items():  # one ingest per tenant: all its anomalies' files
        reports = ingest_paths(db, [p for p, _ in items], IngestOptions(tenant=tenant),
                               Path(workdir) / "anomaly-rejects.csv")
        for report, (_, anomaly) in zip(reports, items):
            if report.accepted != anomaly.calls:
                raise RuntimeError(f"anomaly {anomaly.name}: {report.accepted} of "
                                   f"{anomaly.calls} calls stored")
    for anomaly in anomalies:  # in the given order; funding last, on the traffic above
        anomaly = replace(anomaly, start=anomaly.start or start)
        if anomaly.runway_hours:
            out.append(_fund(db, anomaly))
            continue
        cust = acc.find(db, anomaly.tenant, "customer", anomaly.customer) if anomaly.customer else None
        carr = acc.find(db, anomaly.tenant, "carrier", anomaly.carrier) if anomaly.carrier else None
        out.append(replace(anomaly, customer_id=cust.account_id if cust else 0,
                           carrier_id=carr.account_id if carr else 0))
    return out


__all__ = ["Anomaly", "anomaly_sql", "catalogue", "inject"]
