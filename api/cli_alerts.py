"""`cdrhouse alerts …`: list and acknowledge anomaly alerts, run the detectors, thresholds.

The same rules as `GET /v1/alerts` (engine/alerts.py): `--as` is the principal
whose view is shown (admin sees all). `alerts evaluate` runs the detectors once,
now or as of `--at` (useful after `cdrhouse demo --anomalies`, and for trying
thresholds on past traffic) — `cdrhouse serve` does this every few minutes.
Errors: 2 for a bad request (unknown detector, setting out of range, an alert
not visible), 3 when the store is held by another process.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable
from typing import Annotated, Any, Optional, TypeVar

import typer

from cdrhouse.api.cli_common import check_format, err, open_store
from cdrhouse.api.render import render
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import alerts as al
from cdrhouse.sql import alerts as rules
from cdrhouse.sql.principal import PrincipalError

F = TypeVar("F", bound=Callable[..., Any])

alerts_app = typer.Typer(help="Anomaly alerts: traffic spikes, ASR/ACD drops, short calls, new "
                              "expensive destinations, spend jumps, balances running out.",
                         no_args_is_help=True)
As = Annotated[str, typer.Option("--as", help="Whose view: admin, tenant:T, "
                                              "tenant:T/customer:CODE, tenant:T/carrier:CODE.")]
Fmt = Annotated[str, typer.Option("--format", help="table, csv or json.")]


def _errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (al.AlertError, rules.AlertSettingsError, PrincipalError, acc.AccountError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    return wrapper  # type: ignore[return-value]


def _when(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise al.AlertError(f"--at: {text!r} is not an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


@alerts_app.command("list")
@_errors
def list_cmd(ctx: typer.Context, as_: As = "admin",
             state: Annotated[str, typer.Option("--state", help="open, acknowledged, resolved, "
                                                              "active, all.")] = "active",
             detector: Annotated[Optional[str], typer.Option("--detector")] = None,
             tenant: Annotated[Optional[str], typer.Option("--tenant", help="Admin: one tenant.")]
             = None,
             limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 100,
             evidence: Annotated[bool, typer.Option("--evidence", help="Add the evidence (JSON).")]
             = False,
             fmt: Fmt = "table") -> None:
    """Alerts, newest first (by default the active ones: open or acknowledged)."""
    check_format(fmt)
    with open_store(ctx) as db:
        p = acc.resolve_principal(db, as_)
        found = al.list_alerts(db, p, state=state, detector=detector, tenant=tenant, limit=limit)
    cols = ["id", "tenant", "detector", "state", "summary", "opened", "last seen", "resolved"]
    rows = [[a.alert_id, a.tenant_id, a.detector, a.state, a.summary, a.opened_at,
             a.last_seen_at, a.resolved_at or ""] + ([json.dumps(a.evidence)] if evidence else [])
            for a in found]
    render(cols + (["evidence"] if evidence else []), rows, fmt)


@alerts_app.command("ack")
@_errors
def ack_cmd(ctx: typer.Context, alert_id: Annotated[str, typer.Argument(help="The alert id.")],
            as_: As = "admin") -> None:
    """Acknowledge an alert: it stays until its condition clears, then resolves."""
    with open_store(ctx) as db:
        p = acc.resolve_principal(db, as_)
        a = al.acknowledge(db, p, alert_id, by=as_)
    err.print(f"alert {a.alert_id} ({a.detector}, {a.subject}) is {a.state}")


@alerts_app.command("evaluate")
@_errors
def evaluate_cmd(ctx: typer.Context,
                 tenant: Annotated[Optional[list[str]], typer.Option(
                     "--tenant", help="Only these tenants (default: all).")] = None,
                 at: Annotated[Optional[str], typer.Option(
                     "--at", help="Evaluate as of this UTC time (ISO 8601; default now).")] = None,
                 config: Annotated[Optional[str], typer.Option(
                     "--alert-config", envvar="CDRHOUSE_ALERT_CONFIG",
                     help="JSON file of detector settings (as for serve).")] = None) -> None:
    """Run every enabled detector once and update the alerts; prints what changed."""
    settings = al.AlertConfig.load(config) if config else al.AlertConfig()
    now = _when(at) or dt.datetime.now(dt.timezone.utc)
    with open_store(ctx) as db:
        if tenant:
            for t in tenant:
                acc.check_tenant(t)
            reports = [al.evaluate_tenant(db, t, now, settings) for t in tenant]
        else:
            reports = al.evaluate_all(db, now, settings)
    rows = []
    for r in reports:
        for what, found in (("opened", r.opened), ("updated", r.updated),
                            ("resolved", r.resolved)):
            rows += [(r.tenant, what, a.alert_id, a.detector, a.summary) for a in found]
        rows += [(r.tenant, "failed", "", key, error) for key, error in r.errors.items()]
    render(["tenant", "change", "id", "detector", "summary"], rows, "table")
    err.print(f"evaluated {len(reports)} tenants as of {now:%Y-%m-%d %H:%M:%S} UTC")


@alerts_app.command("status")
@_errors
def status_cmd(ctx: typer.Context,
               tenant: Annotated[Optional[str], typer.Option("--tenant")] = None,
               fmt: Fmt = "table") -> None:
    """Per tenant and detector: open and acknowledged alerts, the last evaluation."""
    check_format(fmt)
    with open_store(ctx) as db:
        found = al.status(db, tenant)
    render(["tenant", "detector", "open", "acknowledged", "evaluated", "seconds", "error"],
           [(s["tenant"], s["detector"], s["open"], s["acknowledged"], s["evaluated_at"] or "",
             round(s["seconds"], 3) if s["seconds"] is not None else "", s["error"])
            for s in found], fmt)


@alerts_app.command("thresholds")
@_errors
def thresholds_cmd(ctx: typer.Context,
                   tenant: Annotated[str, typer.Option("--tenant", help="The tenant.")],
                   set_: Annotated[Optional[list[str]], typer.Option(
                       "--set", help="detector.setting=value (repeatable), stored for the "
                                     "tenant.")] = None,
                   fmt: Fmt = "table") -> None:
    """Show the detector settings in effect for a tenant, or change them with --set."""
    check_format(fmt)
    changes: dict[str, dict[str, str]] = {}
    for item in set_ or []:
        name, sep, value = item.partition("=")
        key, dot, setting = name.partition(".")
        if not sep or not dot:
            raise al.AlertError(f"--set {item!r}: use detector.setting=value")
        changes.setdefault(key.strip(), {})[setting.strip()] = value.strip()
    with open_store(ctx) as db:
        acc.check_tenant(tenant)
        if changes:
            al.set_overrides(db, tenant, changes, by="cli")
        effective = al.settings_for(db, tenant)
        stored = al.stored_overrides(db, tenant)
    rows = [(key, name, value, "tenant" if name in stored.get(key, {}) else "default",
             rules.BY_KEY[key].settings[name].doc)
            for key, values in effective.items() for name, value in values.items()]
    render(["detector", "setting", "value", "from", "meaning"], rows, fmt)


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")
