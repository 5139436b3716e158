"""Anomaly alerts: run the detectors (sql/alerts.py) and keep the alerts they raise.

One evaluation of a tenant at an instant `now` runs each enabled detector's query
and reconciles its findings with the tenant's active alerts of that detector:

- a finding with no active alert for its subject opens one (state `open`);
- a finding whose subject has an active alert (open or acknowledged) updates it:
  fresh evidence, `last_seen_at`, one more evaluation — never a second alert, so
  a condition that holds for hours is one alert;
- an active alert whose subject did not fire is resolved (`resolved_at = now`);
  if it fires again later, that is a new alert.

A detector whose query fails leaves its alerts as they are (the failure is
recorded in `alert_evaluations`, logged, and the other detectors still run).

`evaluate_all(db, now)` is the one function a scheduler tick calls (every tenant
with accounts); `start_scheduler` runs it inside `cdrhouse serve`. Reads for a
principal (`list_alerts`, `get_alert`) go through `Principal.guard()` on the
alerts table: a customer or carrier key sees only alerts about its own account
(`customer_id` / `carrier_id`), and only when the service allows it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from cdrhouse.engine import accounts as acc
from cdrhouse.engine.db import Database
from cdrhouse.sql import alerts as rules
from cdrhouse.sql.errors import UserError
from cdrhouse.sql.principal import Principal

log = logging.getLogger("cdrhouse.alerts")

STATES: tuple[str, ...] = ("open", "acknowledged", "resolved")
ACTIVE: tuple[str, ...] = ("open", "acknowledged")
#: default seconds between evaluations in `cdrhouse serve`
DEFAULT_EVERY = 300

_COLUMNS = ["alert_id", "tenant_id", "detector", "subject", "customer_id", "carrier_id", "state",
            "summary", "evidence", "opened_at", "last_seen_at", "resolved_at", "acked_at",
            "acked_by", "evaluations", "version"]


class AlertError(UserError):
    """An alert request that cannot be honoured; the message says why."""


class AlertNotFound(AlertError):
    """No alert with that id is visible to the principal."""


class AlertForbidden(AlertError):
    """The principal may not do this (acknowledge, read another tenant)."""


@dataclass
class Alert:
    alert_id: str
    tenant_id: str
    detector: str
    subject: str
    customer_id: int
    carrier_id: int
    state: str
    summary: str
    evidence: dict[str, Any]
    opened_at: dt.datetime
    last_seen_at: dt.datetime
    resolved_at: dt.datetime | None
    acked_at: dt.datetime | None
    acked_by: str
    evaluations: int

    def row(self, version: int) -> list[Any]:
        return [self.alert_id, self.tenant_id, self.detector, self.subject, self.customer_id,
                self.carrier_id, self.state, self.summary,
                json.dumps(self.evidence, sort_keys=True, default=str), self.opened_at,
                self.last_seen_at, self.resolved_at, self.acked_at, self.acked_by,
                self.evaluations, version]


@dataclass(frozen=True)
class Finding:
    """One row a detector query returned: the subject and the numbers behind it."""

    detector: str
    subject: str
    customer_id: int
    carrier_id: int
    evidence: dict[str, Any]


@dataclass
class EvaluationReport:
    tenant: str
    now: dt.datetime
    opened: list[Alert] = field(default_factory=list)
    updated: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AlertConfig:
    """Detector settings from configuration: `{"*": {detector: {setting: n}}, tenant: …}`
    (a JSON file given to `serve --alert-config`); the API's per-tenant overrides win."""

    layers: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Any, where: str = "alert configuration") -> AlertConfig:
        if not isinstance(data, dict):
            raise AlertError(f"{where}: expected an object of tenant (or \"*\") -> detectors")
        for tenant, dets in data.items():
            if tenant != "*":
                try:
                    acc.check_tenant(tenant)
                except acc.AccountError as exc:
                    raise AlertError(f"{where}: {exc}") from None
            if not isinstance(dets, dict):
                raise AlertError(f"{where}: {tenant}: expected an object of detector -> settings")
            for key, values in dets.items():
                try:
                    rules.validate_settings(key, values)
                except rules.AlertSettingsError as exc:
                    raise AlertError(f"{where}: {tenant}: {exc}") from None
        return cls(data)

    @classmethod
    def load(cls, path: str) -> AlertConfig:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except OSError as exc:
            raise AlertError(f"alert configuration {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise AlertError(f"alert configuration {path}: line {exc.lineno}: {exc.msg}") from None
        return cls.parse(data, f"alert configuration {path}")

    def for_tenant(self, tenant: str, key: str) -> list[Mapping[str, float] | None]:
        return [self.layers.get("*", {}).get(key), self.layers.get(tenant, {}).get(key)]


# -- settings -------------------------------------------------------------------------

def stored_overrides(db: Database, tenant: str) -> dict[str, dict[str, float]]:
    """The tenant's overrides set through the API / CLI, per detector."""
    out: dict[str, dict[str, float]] = {}
    for key, text in db.rows("SELECT detector, settings FROM alert_thresholds FINAL "
                             "WHERE tenant_id = {t:String}", {"t": tenant}):
        if key in rules.BY_KEY:
            try:
                out[key] = rules.validate_settings(key, json.loads(text))
            except (ValueError, rules.AlertSettingsError):  # written by an older version
                log.warning("ignoring stored alert settings of %s/%s", tenant, key)
    return out


def settings_for(db: Database, tenant: str, config: AlertConfig | None = None
                 ) -> dict[str, dict[str, float]]:
    """Effective settings of every detector for a tenant: defaults < configuration < stored."""
    config = config or AlertConfig()
    stored = stored_overrides(db, tenant)
    return {d.key: rules.effective(d.key, *config.for_tenant(tenant, d.key), stored.get(d.key))
            for d in rules.DETECTORS}


def set_overrides(db: Database, tenant: str, changes: Mapping[str, Mapping[str, Any]],
                  by: str = "") -> dict[str, dict[str, float]]:
    """Merge `changes` ({detector: {setting: number}}) into the tenant's stored overrides.
    All validated first: one bad name or value stores nothing."""
    acc.check_tenant(tenant)
    if not isinstance(changes, Mapping) or not changes:
        raise AlertError("thresholds: give an object of detector -> {setting: number}")
    checked = {key: rules.validate_settings(key, values) for key, values in changes.items()}
    current = stored_overrides(db, tenant)
    now = dt.datetime.now(dt.timezone.utc)
    version = time.time_ns()
    rows = []
    for key, values in checked.items():
        merged = {**current.get(key, {}), **values}
        rows.append([tenant, key, json.dumps(merged, sort_keys=True), now, by, version])
    db.insert_rows("alert_thresholds", rows,
                   ["tenant_id", "detector", "settings", "updated_at", "updated_by", "version"])
    return stored_overrides(db, tenant)


# -- evaluation -----------------------------------------------------------------------

def _utc(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None:
        return now.replace(tzinfo=dt.timezone.utc)
    return now.astimezone(dt.timezone.utc)


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, dt.datetime):
        return _utc(value).isoformat(timespec="seconds")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__int__") and not isinstance(value, (int, bool)):
        return float(value)
    return value


def run_detector(db: Database, key: str, tenant: str, settings: Mapping[str, float],
                 now: dt.datetime) -> list[Finding]:
    """Run one detector for one tenant as of `now`; its findings."""
    sql, params = rules.build(key, tenant, settings)
    result = db.query(sql, {**params, "now": _utc(now)})
    names = list(result.column_names)
    out = []
    for row in result.result_rows:
        values = dict(zip(names, row))
        evidence = {k: _plain(v) for k, v in values.items() if k not in rules.LEAD_COLUMNS}
        out.append(Finding(key, str(values["subject"]), int(values["customer_id"]),
                           int(values["carrier_id"]), evidence))
    return out


def _summary(key: str, evidence: Mapping[str, Any], names: Mapping[tuple[str, int], str],
             finding: Finding) -> str:
    who = []
    if finding.customer_id:
        who.append(f"customer {names.get(('customer', finding.customer_id), finding.customer_id)}")
    if finding.carrier_id:
        who.append(f"carrier {names.get(('carrier', finding.carrier_id), finding.carrier_id)}")
    if finding.subject.startswith("country:"):
        who.append(f"destination {finding.subject.split(':', 1)[1]}")
    try:
        text = rules.BY_KEY[key].summary.format(**evidence)
    except (KeyError, ValueError, TypeError):
        text = key
    return (", ".join(who) + ": " if who else "") + text


def active_alerts(db: Database, tenant: str) -> list[Alert]:
    return _read(db, "tenant_id = {t:String} AND state IN ('open', 'acknowledged')",
                 {"t": tenant})


def _read(db: Database, where: str, params: Mapping[str, Any], order: str = "opened_at DESC",
          limit: int | None = None) -> list[Alert]:
    sql = (f"SELECT {', '.join(c for c in _COLUMNS if c != 'version')} FROM alerts FINAL "
           f"WHERE {where} ORDER BY {order}, alert_id" + (f" LIMIT {int(limit)}" if limit else ""))
    out = []
    for r in db.rows(sql, params):
        (aid, t, det, subj, cust, carr, state, summary, evidence, opened, seen, resolved,
         acked, by, n) = r
        out.append(Alert(aid, t, det, subj, int(cust), int(carr), str(state), summary,
                         json.loads(evidence or "{}"), _utc(opened), _utc(seen),
                         _utc(resolved) if resolved else None, _utc(acked) if acked else None,
                         by, int(n)))
    return out


def evaluate_tenant(db: Database, tenant: str, now: dt.datetime,
                    config: AlertConfig | None = None,
                    only: tuple[str, ...] | None = None) -> EvaluationReport:
    """Evaluate every enabled detector (or `only` these) for one tenant as of `now`."""
    now = _utc(now)
    report = EvaluationReport(tenant, now)
    settings = settings_for(db, tenant, config)
    names = {(a.kind, a.account_id): a.code for a in acc.list_accounts(db, tenant)}
    active: dict[tuple[str, str], Alert] = {(a.detector, a.subject): a
                                            for a in active_alerts(db, tenant)}
    changed: list[Alert] = []
    evaluations = []
    for d in rules.DETECTORS:
        if only is not None and d.key not in only:
            continue
        s = settings[d.key]
        if not s.get("enabled", 1):
            continue
        started = time.perf_counter()
        error = ""
        try:
            findings = run_detector(db, d.key, tenant, s, now)
        except Exception as exc:  # one broken detector must not stop the others
            log.exception("alert detector %s failed for tenant %s", d.key, tenant)
            error = type(exc).__name__
            findings = None
        took = time.perf_counter() - started
        report.seconds[d.key] = took
        evaluations.append([tenant, d.key, dt.datetime.now(dt.timezone.utc), now, took,
                            len(findings or []), error, time.time_ns()])
        if findings is None:
            report.errors[d.key] = error
            continue
        firing = set()
        for f in findings:
            for kind, aid in (("customer", f.customer_id), ("carrier", f.carrier_id)):
                if aid:
                    f.evidence[kind] = names.get((kind, aid), str(aid))
            firing.add(f.subject)
            summary = _summary(d.key, f.evidence, names, f)
            existing = active.get((d.key, f.subject))
            if existing is None:
                alert = Alert(uuid.uuid4().hex[:16], tenant, d.key, f.subject, f.customer_id,
                              f.carrier_id, "open", summary, f.evidence, now, now, None, None,
                              "", 1)
                report.opened.append(alert)
            else:
                alert = existing
                if now < alert.last_seen_at:  # a replay of an older instant: leave it
                    continue
                alert.summary, alert.evidence = summary, f.evidence
                alert.last_seen_at, alert.evaluations = now, alert.evaluations + 1
                report.updated.append(alert)
            changed.append(alert)
        for (key, subject), alert in active.items():
            if key == d.key and subject not in firing and now >= alert.last_seen_at:
                alert.state, alert.resolved_at = "resolved", now
                report.resolved.append(alert)
                changed.append(alert)
    version = time.time_ns()
    if changed:
        db.insert_rows("alerts", [a.row(version) for a in changed], _COLUMNS)
    if evaluations:
        db.insert_rows("alert_evaluations", evaluations,
                       ["tenant_id", "detector", "evaluated_at", "data_time", "seconds",
                        "firing", "error", "version"])
    return report


def tenants(db: Database) -> list[str]:
    return [t for (t,) in db.rows("SELECT DISTINCT tenant_id FROM accounts FINAL ORDER BY tenant_id")]


def evaluate_all(db: Database, now: dt.datetime | None = None,
                 config: AlertConfig | None = None) -> list[EvaluationReport]:
    """One scheduler tick: evaluate every tenant as of `now` (default: the current time).
    A tenant whose evaluation fails is logged and skipped; the others still run."""
    now = _utc(now or dt.datetime.now(dt.timezone.utc))
    reports = []
    for tenant in tenants(db):
        try:
            reports.append(evaluate_tenant(db, tenant, now, config))
        except Exception:
            log.exception("alert evaluation failed for tenant %s", tenant)
    return reports


# -- reading and acknowledging, for a principal ---------------------------------------

def _visible(p: Principal, accounts_see: bool) -> tuple[str, dict[str, Any]]:
    """The guard on the alerts table for `p`; customers and carriers only when allowed."""
    if p.role in ("customer", "carrier") and not accounts_see:
        return "0", {}
    pred, params = p.guard()
    return pred or "1", params


def list_alerts(db: Database, p: Principal, *, state: str = "active", detector: str | None = None,
                tenant: str | None = None, since: dt.datetime | None = None, limit: int = 100,
                accounts_see: bool = True) -> list[Alert]:
    """Alerts `p` may see, newest first. `state`: open, acknowledged, resolved, active
    (open or acknowledged) or all. `tenant` narrows an admin's list (others: their own)."""
    where, params = _visible(p, accounts_see)
    clauses = [f"({where})"]
    if state not in (*STATES, "active", "all"):
        raise AlertError(f"state: {state!r} is not one of {', '.join(STATES)}, active, all")
    if state == "active":
        clauses.append("state IN ('open', 'acknowledged')")
    elif state != "all":
        clauses.append("state = {state:String}")
        params["state"] = state
    if detector is not None:
        rules.detector(detector)
        clauses.append("detector = {detector:String}")
        params["detector"] = detector
    if tenant is not None:
        if p.role != "admin" and tenant != p.tenant:
            raise AlertForbidden(f"tenant: {p} cannot read alerts of tenant {tenant!r}")
        clauses.append("tenant_id = {tenant:String}")
        params["tenant"] = tenant
    if since is not None:
        clauses.append("last_seen_at >= {since:DateTime64(3, 'UTC')}")
        params["since"] = _utc(since)
    if not 1 <= limit <= 10_000:
        raise AlertError("limit: must be 1..10000")
    return _read(db, " AND ".join(clauses), params, limit=limit)


def get_alert(db: Database, p: Principal, alert_id: str, accounts_see: bool = True) -> Alert:
    where, params = _visible(p, accounts_see)
    found = _read(db, f"({where}) AND alert_id = {{id:String}}", {**params, "id": alert_id})
    if not found:
        raise AlertNotFound(f"no alert {alert_id!r}")
    return found[0]


def acknowledge(db: Database, p: Principal, alert_id: str, by: str = "",
                accounts_see: bool = True) -> Alert:
    """Acknowledge an open alert (operators of its tenant and admins). It stays active —
    updated while its condition holds — and resolves when the condition clears."""
    alert = get_alert(db, p, alert_id, accounts_see)  # not visible: not found, never forbidden
    if p.role not in ("admin", "tenant"):
        raise AlertForbidden(f"{p}: only the tenant's operators acknowledge alerts")
    if alert.state == "resolved":
        raise AlertError(f"alert {alert_id} is already resolved")
    if alert.state == "open":
        alert.state = "acknowledged"
        alert.acked_at = dt.datetime.now(dt.timezone.utc)
        alert.acked_by = by or str(p)
        db.insert_rows("alerts", [alert.row(time.time_ns())], _COLUMNS)
    return alert


# -- status and metrics ---------------------------------------------------------------

def status(db: Database, tenant: str | None = None) -> list[dict[str, Any]]:
    """Per tenant and detector: open and acknowledged alerts, the last evaluation."""
    params: dict[str, Any] = {}
    where = ""
    if tenant is not None:
        where = "WHERE tenant_id = {t:String}"
        params["t"] = tenant
    counts = {(t, d): (int(o), int(a)) for t, d, o, a in db.rows(
        "SELECT tenant_id, detector, countIf(state = 'open'), countIf(state = 'acknowledged') "
        f"FROM alerts FINAL {where} GROUP BY tenant_id, detector", params)}
    out = []
    for t, d, at, data_time, seconds, firing, error in db.rows(
            "SELECT tenant_id, detector, evaluated_at, data_time, seconds, firing, error "
            f"FROM alert_evaluations FINAL {where} ORDER BY tenant_id, detector", params):
        o, a = counts.pop((t, d), (0, 0))
        out.append({"tenant": t, "detector": d, "open": o, "acknowledged": a,
                    "evaluated_at": at, "data_time": data_time, "seconds": float(seconds),
                    "firing": int(firing), "error": error})
    for (t, d), (o, a) in counts.items():
        out.append({"tenant": t, "detector": d, "open": o, "acknowledged": a,
                    "evaluated_at": None, "data_time": None, "seconds": None, "firing": None,
                    "error": ""})
    return out


class AlertCollector:
    """Prometheus collector reading the alert tables at scrape time (any process that
    serves the store reports the same numbers, whichever one evaluated)."""

    def __init__(self, database: Callable[[], AbstractContextManager[Database] | None]) -> None:
        self._database = database

    def describe(self):
        return iter(())

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        ctx = self._database()
        if ctx is None:
            return
        try:
            with ctx as db:
                if not db.table_exists("alerts"):
                    return
                rows = status(db)
        except Exception:  # a scrape must not fail because the store is busy
            log.exception("alert metrics unavailable")
            return
        labels = ["tenant", "detector"]
        opened = GaugeMetricFamily("cdrhouse_alerts_open",
                                   "Open (unacknowledged) alerts", labels=labels)
        acked = GaugeMetricFamily("cdrhouse_alerts_acknowledged",
                                  "Acknowledged alerts whose condition still holds", labels=labels)
        last = GaugeMetricFamily("cdrhouse_alerts_last_evaluation_timestamp_seconds",
                                 "When the detector last ran for the tenant (Unix time)",
                                 labels=labels)
        took = GaugeMetricFamily("cdrhouse_alerts_evaluation_seconds",
                                 "How long the detector's last evaluation took", labels=labels)
        failed = GaugeMetricFamily("cdrhouse_alerts_evaluation_failed",
                                   "1 when the detector's last evaluation failed", labels=labels)
        for r in rows:
            lv = [r["tenant"], r["detector"]]
            opened.add_metric(lv, r["open"])
            acked.add_metric(lv, r["acknowledged"])
            if r["evaluated_at"] is not None:
                last.add_metric(lv, _utc(r["evaluated_at"]).timestamp())
                took.add_metric(lv, r["seconds"])
                failed.add_metric(lv, 1.0 if r["error"] else 0.0)
        yield from (opened, acked, last, took, failed)


# -- the schedule ---------------------------------------------------------------------

def parse_every(text: str | int | None) -> int | None:
    """Seconds between evaluations from `300`, `5m`, `1h`; None for `off`."""
    raw = str(text if text is not None else DEFAULT_EVERY).strip().lower()
    if raw in ("off", "none", "0", ""):
        return None
    mult = {"s": 1, "m": 60, "h": 3600}.get(raw[-1], 0)
    number = raw[:-1] if mult else raw
    try:
        seconds = int(number) * (mult or 1)
    except ValueError:
        raise AlertError(f"alert interval {text!r}: use seconds (300), minutes (5m), hours (1h) "
                         "or off") from None
    if not 10 <= seconds <= 86400:
        raise AlertError(f"alert interval {text!r}: must be between 10 s and 1 day")
    return seconds


def tick(database: Callable[[], AbstractContextManager[Database]],
         config: AlertConfig | None = None) -> None:
    """What one scheduled run does: the single seam for a lease (several service
    processes on one server store should evaluate once per period, not once each)."""
    try:
        with database() as db:
            reports = evaluate_all(db, None, config)
        opened = sum(len(r.opened) for r in reports)
        resolved = sum(len(r.resolved) for r in reports)
        if opened or resolved:
            log.info("alerts: %d opened, %d resolved over %d tenants", opened, resolved,
                     len(reports))
    except Exception:
        log.exception("scheduled alert evaluation failed")


#: every instance's evaluation times count from here, so that a fire time names one
#: evaluation across all the service's instances (engine/leases.py `leased`)
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def start_scheduler(every: int, database: Callable[[], AbstractContextManager[Database]],
                    config: AlertConfig | None = None):
    """Evaluate every `every` seconds in a background thread; stop with `.shutdown()`.

    Never two runs at once; a run that overruns its period skips, not piles up. Under
    the `alerts` lease with the fire time: of several service instances on one store,
    one evaluates each period (the times are counted from EPOCH, so they agree)."""
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    from cdrhouse.engine import leases

    trigger = IntervalTrigger(seconds=every, start_date=EPOCH, timezone="UTC")
    run = leases.leased(database, leases.ALERTS, max(60.0, float(every)),
                        lambda: tick(database, config), trigger=trigger)
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(run, trigger, id="alerts", max_instances=1, coalesce=True,
                      misfire_grace_time=every)
    scheduler.start()
    return scheduler


__all__ = ["ACTIVE", "Alert", "AlertCollector", "AlertConfig", "AlertError", "AlertForbidden", "AlertNotFound",
           "DEFAULT_EVERY", "EvaluationReport", "Finding", "STATES", "acknowledge",
           "evaluate_all", "evaluate_tenant", "get_alert", "list_alerts", "parse_every",
           "run_detector", "set_overrides", "settings_for", "start_scheduler", "status", "tick"]
