"""Billing commands: `cdrhouse rates …`, `ledger …`, `balance`, `recalc …`, `jobs`.

Registered by api/cli.py (`register(app)`), like every command module. Errors
become messages and exit codes here, with the meaning of api/cli_common.py:
1 the work failed, 2 bad input or a refused request, 3 the store (or the
tenant's recalc lock) is held by someone else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cdrhouse.api.cli_common import check_format, err, open_store
from cdrhouse.api.render import render
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import ledger as led
from cdrhouse.engine import ratecards as rc
from cdrhouse.engine import recalc as rec
from cdrhouse.engine import userdata as ud
from cdrhouse.sql.principal import Principal, PrincipalError, TenantNeeded

F = TypeVar("F", bound=Callable[..., Any])


rates_app = typer.Typer(help="Rate cards: what customers are charged and carriers paid.",
                        no_args_is_help=True)
ledger_app = typer.Typer(help="Payments, credits and adjustments of accounts.",
                         no_args_is_help=True)
recalc_app = typer.Typer(help="Billing maintenance on a UTC day range: refresh credit, refresh "
                              "summaries, re-rate, adjust durations; preview and undo.",
                         no_args_is_help=True)


def _errors(fn: F) -> F:
    """Billing errors as a message and an exit code (see the module docstring)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except rec.RecalcBusy as exc:
            err.print(f"[red]busy:[/red] {exc}")
            raise typer.Exit(3) from None
        except rec.RecalcStopped as exc:
            err.print(f"[red]stopped:[/red] {exc}")
            raise typer.Exit(1) from None
        except (rc.RateCardError, led.LedgerError, rec.RecalcError, acc.AccountError,
                ud.UserDataError, PrincipalError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    return wrapper  # type: ignore[return-value]


def _date(value: Optional[str], option: str) -> Optional[dt.date]:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r}: use YYYY-MM-DD (a UTC day)",
                                 param_hint=option) from None


def _tenant_of(principal: Principal, tenant: Optional[str]) -> str:
    """Principal.operator_tenant, with the admin's missing --tenant as a usage error."""
    try:
        return principal.operator_tenant(tenant)
    except TenantNeeded:
        raise typer.BadParameter("an admin names the tenant: --tenant T",
                                 param_hint="--tenant") from None


# -- rates ----------------------------------------------------------------------------

Tenant = Annotated[str, typer.Option("--tenant", "-t", help="Tenant id.")]
Account = Annotated[str, typer.Option(
    "--account", help="Account code (customer:CODE or carrier:CODE when both exist).")]
Kind = Annotated[Optional[str], typer.Option("--kind", help="customer or carrier (if ambiguous).")]
Fmt = Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")]


@rates_app.command("import")
@_errors
def rates_import(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Rate-card CSV (see README: Rating and billing).",
                                         exists=True, dir_okay=False, readable=True)],
    tenant: Tenant, account: Account, kind: Kind = None,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Retire the account's rates that are not in the file.")] = False,
) -> None:
    """Import a rate card for one account. All or nothing: a bad line stores nothing."""
    with open_store(ctx) as db:
        a, n = rc.import_csv(db, tenant, account, path, kind, replace=replace)
    err.print(f"imported {n} rate(s) for {a.kind} {a.code} of tenant {tenant}"
              + (" (other rates retired)" if replace else ""))


@rates_app.command("export")
@_errors
def rates_export(ctx: typer.Context, tenant: Tenant, account: Account, kind: Kind = None,
                 output: Annotated[Optional[Path], typer.Option(
                     "--output", "-o", help="File to write (default: stdout).")] = None) -> None:
    """Export an account's live rate card as CSV (re-importable)."""
    with open_store(ctx) as db:
        a = rc.resolve_account(db, tenant, account, kind)
        text = rc.export_csv(rc.list_rates(db, tenant, a))
    if output:
        output.write_text(text)
        err.print(f"wrote {output}")
    else:
        typer.echo(text, nl=False)


@rates_app.command("unrated")
@_errors
def rates_unrated(
    ctx: typer.Context, tenant: Tenant,
    date_from: Annotated[str, typer.Option("--from", help="First UTC day, YYYY-MM-DD.")],
    date_to: Annotated[str, typer.Option("--to", help="Last UTC day (inclusive).")],
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 50,
    fmt: Fmt = "table",
) -> None:
    """Calls that could not be priced, by reason, account and destination: what cards lack."""
    check_format(fmt)
    first, last = _date(date_from, "--from"), _date(date_to, "--to")
    assert first is not None and last is not None
    with open_store(ctx) as db:
        rows = rc.unrated(db, tenant, first, last, limit)
    render(["reason", "account", "account_id", "destination", "calls"], rows, fmt)


# -- ledger and balances -------------------------------------------------------------------

@ledger_app.command("add")
@_errors
def ledger_add(
    ctx: typer.Context, tenant: Tenant, account: Account,
    amount: Annotated[str, typer.Option("--amount", help="Decimal; negative takes from the "
                                                          "balance.")],
    entry_type: Annotated[str, typer.Option(
        "--type", help=f"{', '.join(led.ENTRY_TYPES)}.")] = "payment",
    note: Annotated[str, typer.Option("--note", help="Free text, e.g. the bank reference.")] = "",
    kind: Kind = None,
) -> None:
    """Record a payment, credit, adjustment or opening balance; the balance is refreshed."""
    with open_store(ctx) as db:
        a = rc.resolve_account(db, tenant, account, kind)
        e = led.add_entry(db, a, entry_type, amount, note, created_by="cli")
        bal = led.balances(db, tenant, a.kind, a.account_id)[0]
    err.print(f"recorded {e.entry_type} {e.amount} {e.currency} for {a.kind} {a.code} "
              f"(entry {e.entry_id}); balance now {bal.balance}")
    typer.echo(e.entry_id)


@ledger_app.command("list")
@_errors
def ledger_list(ctx: typer.Context, tenant: Tenant,
                account: Annotated[Optional[str], typer.Option("--account")] = None,
                kind: Kind = None, fmt: Fmt = "table") -> None:
    """List ledger entries, oldest first."""
    check_format(fmt)
    with open_store(ctx) as db:
        a = rc.resolve_account(db, tenant, account, kind) if account else None
        rows = led.entries(db, tenant, a)
    render(["at", "kind", "account", "type", "amount", "currency", "note", "id"],
           [(e.at, e.kind, e.account_code, e.entry_type, e.amount, e.currency, e.note,
             e.entry_id) for e in rows], fmt)


def balance(
    ctx: typer.Context,
    tenant: Annotated[Optional[str], typer.Option("--tenant", "-t", help="Only this tenant.")]
    = None,
    account: Annotated[Optional[str], typer.Option("--account", help="Only this account.")]
    = None,
    kind: Kind = None, fmt: Fmt = "table",
) -> None:
    """Account balances: ledger (payments, credits) minus usage, as of the last refresh."""
    check_format(fmt)
    with open_store(ctx) as db:
        a = rc.resolve_account(db, tenant, account, kind) if (account and tenant) else None
        if account and not tenant:
            raise typer.BadParameter("--account needs --tenant", param_hint="--account")
        rows = led.balances(db, tenant, a.kind if a else kind, a.account_id if a else None)
    render(["tenant", "kind", "account", "currency", "ledger", "usage", "balance", "calls",
            "computed"],
           [(b.tenant_id, b.kind, b.code, b.currency, b.ledger_total, b.usage_total, b.balance,
             b.calls, b.computed_at or "never (run recalc refresh-credit)") for b in rows], fmt)


# -- recalc ---------------------------------------------------------------------------

As = Annotated[str, typer.Option("--as", help="Principal: tenant:T or admin (with --tenant).")]
From = Annotated[Optional[str], typer.Option("--from", help="First UTC day, YYYY-MM-DD.")]
To = Annotated[Optional[str], typer.Option("--to", help="Last UTC day (inclusive).")]
AccountOpt = Annotated[Optional[str], typer.Option(
    "--account", help="Only this account (CODE, customer:CODE or carrier:CODE).")]
TenantOpt = Annotated[Optional[str], typer.Option("--tenant", "-t", help="Tenant (admin only).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Preview: count and price the changes, "
                                                        "change nothing.")]
Reasons = Annotated[Optional[list[str]], typer.Option(
    "--release-reason", help="Only calls with this release reason (repeatable).")]
CallIds = Annotated[Optional[list[str]], typer.Option(
    "--call-id", help="Only these calls (repeatable); without --from/--to, their days.")]


def _progress_bar() -> Progress:
    return Progress(TextColumn("{task.description:<24}"), BarColumn(), TextColumn(
        "{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=err, transient=True)


def _run(ctx: typer.Context, as_: str, req: rec.RecalcRequest | None,
         resume: str | None = None, tenant: Optional[str] = None) -> None:
    """Run `req` (its tenant filled in from --as and --tenant) or resume a job, with a bar."""
    with open_store(ctx) as db, _progress_bar() as bar:
        principal = acc.resolve_principal(db, as_)
        if req is not None:
            req = dataclasses.replace(req, tenant=_tenant_of(principal, tenant))
        task = bar.add_task("starting", total=100)

        def progress(fraction: float, phase: str) -> None:
            bar.update(task, completed=fraction * 100, description=phase)

        if resume:
            job = rec.resume(db, resume, principal, progress)
        else:
            assert req is not None
            job = rec.run(db, req, principal, progress)
        target_id = (job.params or {}).get("target_job")
        target = ud.get_job(db, target_id) if target_id else None
    _report(job, target)


def _command_of(job: ud.Job) -> str:
    """The `cdrhouse recalc …` command that runs `job`'s operation again."""
    p = job.params or {}
    words = ["cdrhouse", "recalc", str(p.get("op")), "--as", job.principal]
    if job.principal == "admin":
        words += ["--tenant", job.tenant_id]
    for flag, key in (("--from", "date_from"), ("--to", "date_to"), ("--account", "account"),
                      ("--min-duration", "min_duration"), ("--new-duration", "new_duration")):
        if p.get(key) is not None:
            words += [flag, str(p[key])]
    for flag, key in (("--release-reason", "release_reasons"), ("--call-id", "call_ids")):
        for value in p.get(key) or ():
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def _report(job: ud.Job, target: ud.Job | None = None) -> None:
    r = job.result or {}
    p = job.params or {}
    what = "preview of " if p.get("dry_run") else ""
    err.print(f"job {job.job_id}: {what}{p.get('op')} of tenant {job.tenant_id} "
              f"{r.get('first')} to {r.get('last')} (UTC) {job.state}")
    if "calls_changed" in r:
        err.print(f"calls changed: {r['calls_changed']:,}; charge {r['charge']['before']} -> "
                  f"{r['charge']['after']}; cost {r['cost']['before']} -> {r['cost']['after']}")
        render(["kind", "account", "calls", "before", "after", "difference", "unrated after"],
               [(a["kind"], a["code"] or a["account_id"], a["calls"], a["before"], a["after"],
                 a["difference"], a["unrated_after"]) for a in r.get("accounts", [])], "table")
    for key, label in (("summary_rows_written", "summary rows corrected"),
                       ("balances_refreshed", "balances refreshed"), ("note", "note")):
        if key in r:
            err.print(f"{label}: {r[key]}")
    if p.get("dry_run"):
        err.print("nothing was changed (dry run)")
    elif p.get("op") == "undo":
        # not "undo the undo": say what was restored, and how the change is made again
        err.print(f"job {p.get('target_job')} is undone: its calls, summaries and balances "
                  "are as they were before it")
        if target is not None and (target.params or {}).get("op") in rec.CHANGING - {"undo"}:
            err.print(f"to apply it again, run it again: {_command_of(target)}",
                      markup=False, highlight=False, soft_wrap=True)
    elif p.get("op") in rec.CHANGING:
        err.print(f"undo with: cdrhouse recalc undo {job.job_id} --as {job.principal}")


def _request(op: str, date_from: Optional[str],
             date_to: Optional[str], account: Optional[str], dry_run: bool,
             reasons: Optional[list[str]] = None, call_ids: Optional[list[str]] = None,
             min_duration: Optional[int] = None, new_duration: Optional[int] = None,
             ) -> rec.RecalcRequest:
    """The request from the options; `_run` fills in the tenant once --as is resolved."""
    return rec.RecalcRequest(
        tenant="", op=op, date_from=_date(date_from, "--from"),
        date_to=_date(date_to, "--to"), account=account,
        release_reasons=tuple(reasons or ()), call_ids=tuple(call_ids or ()),
        min_duration=min_duration, new_duration=new_duration, dry_run=dry_run)


@recalc_app.command("refresh-credit")
@_errors
def recalc_refresh_credit(ctx: typer.Context, as_: As, date_from: From = None, date_to: To = None,
                          account: AccountOpt = None, tenant: TenantOpt = None,
                          dry_run: DryRun = False) -> None:
    """1. Recompute balances from the summaries and the ledger."""
    _run(ctx, as_, _request("refresh-credit", date_from, date_to, account, dry_run),
         tenant=tenant)


@recalc_app.command("refresh-summaries")
@_errors
def recalc_refresh_summaries(ctx: typer.Context, as_: As, date_from: From = None,
                             date_to: To = None, account: AccountOpt = None,
                             tenant: TenantOpt = None, dry_run: DryRun = False) -> None:
    """2. Rebuild the daily summaries of the range, then refresh credit."""
    _run(ctx, as_, _request("refresh-summaries", date_from, date_to, account, dry_run),
         tenant=tenant)


@recalc_app.command("rerate")
@_errors
def recalc_rerate(ctx: typer.Context, as_: As, date_from: From = None, date_to: To = None,
                  account: AccountOpt = None, tenant: TenantOpt = None,
                  release_reason: Reasons = None, call_id: CallIds = None,
                  dry_run: DryRun = False) -> None:
    """3. Re-price calls with the current rate cards, then refresh summaries and credit."""
    _run(ctx, as_, _request("rerate", date_from, date_to, account, dry_run,
                            release_reason, call_id), tenant=tenant)


@recalc_app.command("adjust-duration")
@_errors
def recalc_adjust_duration(
    ctx: typer.Context, as_: As,
    min_duration: Annotated[int, typer.Option("--min-duration", help="Calls at least this "
                                                                     "long (seconds)…")],
    new_duration: Annotated[int, typer.Option("--new-duration", help="…get this duration "
                                                                     "(billsec capped at it).")],
    date_from: From = None, date_to: To = None, account: AccountOpt = None,
    tenant: TenantOpt = None, release_reason: Reasons = None, call_id: CallIds = None,
    dry_run: DryRun = False,
) -> None:
    """4. Shorten long calls, then re-rate and refresh summaries and credit."""
    _run(ctx, as_, _request("adjust-duration", date_from, date_to, account, dry_run,
                            release_reason, call_id, min_duration, new_duration), tenant=tenant)


@recalc_app.command("undo")
@_errors
def recalc_undo(ctx: typer.Context,
                job_id: Annotated[str, typer.Argument(help="The job to undo.")], as_: As,
                tenant: TenantOpt = None) -> None:
    """Restore the calls, summaries and balances a re-rate or adjust job changed."""
    _run(ctx, as_, rec.RecalcRequest(tenant="", op="undo", target_job=job_id), tenant=tenant)


@recalc_app.command("resume")
@_errors
def recalc_resume(ctx: typer.Context,
                  job_id: Annotated[str, typer.Argument(help="The interrupted job.")],
                  as_: As) -> None:
    """Finish a job whose process died or which stopped on an error."""
    _run(ctx, as_, None, resume=job_id)


def jobs(
    ctx: typer.Context,
    as_: Annotated[str, typer.Option("--as", help="Whose jobs: admin sees all.")] = "admin",
    state: Annotated[Optional[str], typer.Option("--state", help="queued, running, "
                                                              "succeeded, failed, cancelled.")]
    = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help="e.g. recalc.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    fmt: Fmt = "table",
) -> None:
    """Long-running jobs (recalc, tiering …), newest first."""
    check_format(fmt)
    scope = ud.job_scope(as_)
    with open_store(ctx) as db:
        found = ud.list_jobs(db, tenant=scope.get("tenant"), principal=scope.get("principal"),
                             state=state, kind=kind, limit=limit)
    rows = []
    for j in found:
        p, r = j.params or {}, j.result if isinstance(j.result, dict) else {}
        what = p.get("op", "") + (" (dry run)" if p.get("dry_run") else "")
        if p.get("target_job"):
            what += f" of {p['target_job']}"
        rows.append((j.job_id, j.kind, what, j.tenant_id, j.state, f"{j.progress:.0%}",
                     f"{r.get('first', '')}..{r.get('last', '')}" if r.get("first") else "",
                     r.get("calls_changed", ""), j.created_at, j.error))
    render(["id", "kind", "what", "tenant", "state", "progress", "range", "calls changed",
            "created", "error"], rows, fmt)


def register(app: typer.Typer) -> None:
    """Add the billing commands to the `cdrhouse` app."""
    app.add_typer(rates_app, name="rates")
    app.add_typer(ledger_app, name="ledger")
    app.add_typer(recalc_app, name="recalc")
    app.command("balance")(_errors(balance))
    app.command("jobs")(_errors(jobs))
