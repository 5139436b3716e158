"""Recalc jobs, summaries and balances against a real engine.

One small tenant with known mispriced calls; each test states the expected
money by hand (the rates are chosen so the numbers are easy to check).
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path

import pytest
from bytime import assert_copy_exact

from cdrhouse.engine import accounts as acc
from cdrhouse.engine import ledger, recalc, summary
from cdrhouse.engine import ratecards as rc
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database
from cdrhouse.engine.ingest import IngestOptions, Ingestor
from cdrhouse.engine.rating import RATED_COLUMNS
from cdrhouse.engine.recalc import RecalcBusy, RecalcError, RecalcRequest, RecalcStopped
from cdrhouse.sql.principal import Principal

D = Decimal
OP = Principal.operator("acme")
MARCH = (dt.date(2026, 3, 1), dt.date(2026, 3, 31))
HEADER = "prefix,rate_per_min,connect_fee,increment,min_duration,effective_from,currency\n"
CARDS = {
    "C1": "61,0.006,0,1/1,0,2026-01-01,USD\n44,0.012,0,60/60,0,2026-01-01,USD\n",
    "C2": "44,0.02,0,1/1,0,2026-01-01,USD\n",
    "K1": "44,0.006,0,1/1,0,2026-01-01,USD\n61,0.003,0,1/1,0,2026-01-01,USD\n",
    "K2": "44,0.004,0,1/1,0,2026-01-01,USD\n61,0.003,0,1/1,0,2026-01-01,USD\n",
}
# call, customer, carrier, dst, start, billsec, release reason, charge, cost (as the switch sent them)
CALLS = [
    ("r1", "C1", "K1", "61212345678", "2026-03-01 10:00:00", 3600, "NORMAL_CLEARING", "0.5", "0.2"),
    ("r2", "C1", "K1", "441611234567", "2026-03-02 12:00:00", 61, "NORMAL_CLEARING", "", ""),
    ("r3", "C2", "K2", "441611234567", "2026-03-02 13:00:00", 30, "NO_ROUTE", "1.0", "1.0"),
    ("r4", "C2", "K1", "441611234567", "2026-03-31 23:59:59", 120, "NORMAL_CLEARING", "", ""),
    ("r5", "C1", "K2", "61212345678", "2026-04-01 00:00:00", 3600, "NORMAL_CLEARING", "9", "9"),
]


def _ingest(db: Database, tmp_path: Path, rows: list[tuple]) -> None:
    path = tmp_path / f"calls-{len(list(tmp_path.iterdir()))}.csv"
    lines = ["call_id,customer_code,carrier_code,dst_number,start_time,billsec,duration,"
             "release_reason,customer_charge,carrier_cost"]
    for cid, cu, ca, dst, start, bill, rr, charge, cost in rows:
        lines.append(f"{cid},{cu},{ca},{dst},{start},{bill},{bill + 10},{rr},{charge},{cost}")
    path.write_text("\n".join(lines) + "\n")
    ing = Ingestor(db, IngestOptions(tenant="acme"), tmp_path / "rejects.csv")
    try:
        assert ing.ingest(path).rejected == 0
    finally:
        ing.close()


def _load(db: Database, tmp_path: Path) -> Database:
    for code, kind in (("C1", "customer"), ("K1", "carrier"), ("C2", "customer"),
                       ("K2", "carrier")):
        acc.add_account(db, "acme", code, kind)
    for code, text in CARDS.items():
        path = tmp_path / f"card-{code}.csv"
        path.write_text(HEADER + text)
        rc.import_csv(db, "acme", code, path)
    _ingest(db, tmp_path, CALLS)
    return db


@pytest.fixture
def loaded(store: Database, tmp_path: Path) -> Database:
    return _load(store, tmp_path)


@pytest.fixture
def one(embedded_db: Database, tmp_path: Path) -> Database:
    """The same data on the embedded engine only (for the many refusal cases)."""
    return _load(embedded_db, tmp_path)


def money(db: Database) -> dict[str, tuple]:
    return {cid: (charge, cost) for cid, charge, cost in db.rows(
        "SELECT call_id, customer_charge, carrier_cost FROM cdr_records FINAL ORDER BY call_id")}


def snapshot(db: Database) -> list[tuple]:
    return db.rows(f"SELECT {', '.join(RATED_COLUMNS)} FROM cdr_records FINAL ORDER BY call_id")


def balances(db: Database) -> dict[str, Decimal]:
    return {b.code: b.balance for b in ledger.balances(db, "acme")}


def req(op: str = "rerate", **kw) -> RecalcRequest:
    kw.setdefault("date_from", MARCH[0])
    kw.setdefault("date_to", MARCH[1])
    return RecalcRequest("acme", op, **kw)


def run(db: Database, **kw) -> ud.Job:
    return recalc.run(db, req(**kw), OP)


def python_summary(db: Database, tenant: str, first: dt.date, last: dt.date) -> list[tuple]:
    """The daily summary computed in Python from the fetched CDRs: an oracle that
    shares no SQL with the materialized view or with summary.rebuild."""
    rows = db.rows("SELECT start_time, customer_id, carrier_id, country, dst_prefix, currency, "
                   "duration, billsec, customer_billsec, customer_charge, carrier_cost "
                   "FROM cdr_records FINAL WHERE tenant_id = {t:String}", {"t": tenant})
    sums: dict[tuple, list] = {}
    for (start, cust, carr, country, prefix, currency, dur, bill, cbill, charge, cost) in rows:
        day = start.date()
        if not first <= day <= last:
            continue
        acc_ = sums.setdefault((tenant, day, cust, carr, country, prefix, currency),
                               [0, 0, 0, 0, 0, D(0), D(0), 0])
        for i, v in enumerate((1, int(bill > 0), dur, bill, bill if cbill is None else cbill,
                               charge or D(0), cost or D(0), int(charge is None or cost is None))):
            acc_[i] += v
    return [k + tuple(v) for k, v in sorted(sums.items())]


def assert_summary_exact(db: Database) -> None:
    first, last = dt.date(2026, 1, 1), dt.date(2026, 12, 31)
    assert summary.totals(db, "acme", first, last) == python_summary(db, "acme", first, last)


AS_INGESTED = {"r1": (D("0.5"), D("0.2")), "r2": (D("0.024"), D("0.0061")),
               "r3": (D("1"), D("1")), "r4": (D("0.04"), D("0.012")), "r5": (D("9"), D("9"))}
REPRICED = {**AS_INGESTED, "r1": (D("0.36"), D("0.18")), "r3": (D("0.01"), D("0.002"))}


# -- rerate --------------------------------------------------------------------------------

def test_rerate_reprices_exactly_the_calls_in_range(loaded: Database) -> None:
    assert money(loaded) == AS_INGESTED          # r4 priced on ingest (no charges came with it)
    job = run(loaded)
    assert job.state == "succeeded"
    assert job.result["calls_changed"] == 2
    assert money(loaded) == REPRICED             # r5 is in April: untouched
    assert job.result["charge"] == {"before": "1.500000", "after": "0.370000",
                                    "difference": "-1.130000"}
    assert_summary_exact(loaded)
    assert_copy_exact(loaded)            # the new versions reached the time-ordered copy


@pytest.mark.parametrize("extra, changed", [
    ({"release_reasons": ("NO_ROUTE",)}, ["r3"]),
    ({"release_reasons": ("NO_ROUTE", "NORMAL_CLEARING")}, ["r1", "r3"]),
    ({"account": "C2"}, ["r3"]),
    ({"account": "K1"}, ["r1"]),
    ({"call_ids": ("r1", "r5")}, ["r1"]),                          # r5 is outside the range
    ({"call_ids": ("r1", "r5"), "date_from": None, "date_to": None}, ["r1", "r5"]),
])
def test_rerate_filters(one: Database, extra: dict, changed: list[str]) -> None:
    before = money(one)
    job = run(one, **extra)
    after = money(one)
    assert sorted(c for c in after if after[c] != before[c]) == changed
    assert job.result["calls_changed"] == len(changed)
    assert_summary_exact(one)


def test_preview_equals_actual_and_changes_nothing(loaded: Database) -> None:
    before, summ = snapshot(loaded), summary.totals(loaded, "acme", *MARCH)
    preview = run(loaded, dry_run=True)
    assert snapshot(loaded) == before and summary.totals(loaded, "acme", *MARCH) == summ
    actual = run(loaded)
    keys = ("calls_changed", "charge", "cost", "accounts")
    assert {k: preview.result[k] for k in keys} == {k: actual.result[k] for k in keys}
    assert preview.result["accounts"] == [
        {"kind": "customer", "account_id": 1, "code": "C1", "calls": 1, "before": "0.500000",
         "after": "0.360000", "difference": "-0.140000", "unrated_after": 0},
        {"kind": "customer", "account_id": 3, "code": "C2", "calls": 1, "before": "1.000000",
         "after": "0.010000", "difference": "-0.990000", "unrated_after": 0},
        {"kind": "carrier", "account_id": 2, "code": "K1", "calls": 1, "before": "0.200000",
         "after": "0.180000", "difference": "-0.020000", "unrated_after": 0},
        {"kind": "carrier", "account_id": 4, "code": "K2", "calls": 1, "before": "1.000000",
         "after": "0.002000", "difference": "-0.998000", "unrated_after": 0}]


def test_running_the_same_job_twice_does_not_double_charge(loaded: Database) -> None:
    run(loaded)
    first = (money(loaded), balances(loaded), summary.totals(loaded, "acme", *MARCH))
    again = run(loaded)
    assert again.result["calls_changed"] == 0
    assert (money(loaded), balances(loaded), summary.totals(loaded, "acme", *MARCH)) == first
    assert_summary_exact(loaded)


# -- adjust duration --------------------------------------------------------------------------

def test_adjust_duration_reference_example(loaded: Database) -> None:
    # 3600 s at 0.0001/s (0.006/min) = 0.36; adjusted to 60 s = 0.006
    job = run(loaded, op="adjust-duration", min_duration=3600, new_duration=60)
    assert job.result["calls_changed"] == 1
    row = loaded.rows("SELECT duration, billsec, customer_charge, carrier_cost, "
                      "dateDiff('second', start_time, end_time) FROM cdr_records FINAL "
                      "WHERE call_id = 'r1'")[0]
    assert row == (60, 60, D("0.006"), D("0.003"), 60)
    assert money(loaded)["r5"] == AS_INGESTED["r5"]   # April: untouched
    assert money(loaded)["r2"] == AS_INGESTED["r2"]   # shorter than min_duration
    assert_summary_exact(loaded)


# -- summaries and balances -------------------------------------------------------------------

def test_summary_is_exact_after_ingest_and_reingest(loaded: Database, tmp_path: Path) -> None:
    assert_summary_exact(loaded)
    _ingest(loaded, tmp_path, CALLS)          # duplicates: skipped
    assert_summary_exact(loaded)
    day = loaded.rows("SELECT calls, connected, billsec, customer_charge, carrier_cost, asr, acd, "
                      "margin FROM cdr_daily_summary FINAL WHERE day = '2026-03-02' "
                      "AND customer_id = 1")
    assert day == [(1, 1, 61, D("0.024"), D("0.0061"), 1.0, 61.0, D("0.0179"))]


def test_refresh_summaries_repairs_a_wrong_summary(one: Database) -> None:
    one.command("INSERT INTO cdr_daily_summary (tenant_id, day, customer_id, carrier_id, calls, "
                "customer_charge) VALUES ('acme', '2026-03-05', 1, 2, 7, 3.5)")
    with pytest.raises(AssertionError):
        assert_summary_exact(one)
    job = run(one, op="refresh-summaries")
    assert job.result["summary_rows_written"] == 1
    assert_summary_exact(one)
    assert run(one, op="refresh-summaries").result["summary_rows_written"] == 0


def test_balances_from_ledger_and_summaries(loaded: Database) -> None:
    c1 = acc.find(loaded, "acme", "customer", "C1")
    k1 = acc.find(loaded, "acme", "carrier", "K1")
    ledger.add_entry(loaded, c1, "opening", "5")
    ledger.add_entry(loaded, c1, "payment", "10.25")
    ledger.add_entry(loaded, k1, "payment", "1")
    # C1 usage as ingested: 0.5 + 0.024 + 9 ; K1: 0.2 + 0.0061 + 0.012
    assert balances(loaded)["C1"] == D("15.25") - D("9.524")
    assert balances(loaded)["K1"] == D("1") - D("0.2181")
    run(loaded)                                # r1 re-rated: C1 0.5 -> 0.36, K1 0.2 -> 0.18
    assert balances(loaded)["C1"] == D("15.25") - D("9.384")
    assert balances(loaded)["K1"] == D("1") - D("0.1981")
    run(loaded, op="refresh-credit")
    assert balances(loaded)["C1"] == D("15.25") - D("9.384")


@pytest.mark.parametrize("entry_type, amount, message", [
    ("gift", "1", "type: 'gift' is not one of"),
    ("payment", "abc", "amount: not a decimal number"),
    ("payment", "0", "a zero entry changes nothing"),
    ("payment", "0.0000001", "more than 6 decimals"),
])
def test_bad_ledger_entries(embedded_db: Database, entry_type: str, amount: str,
                            message: str) -> None:
    c1 = acc.add_account(embedded_db, "acme", "C1", "customer")
    with pytest.raises(ledger.LedgerError, match=message):
        ledger.add_entry(embedded_db, c1, entry_type, amount)
    assert ledger.entries(embedded_db, "acme") == []


# -- undo ---------------------------------------------------------------------------------------

def test_undo_restores_calls_summaries_and_balances_exactly(loaded: Database) -> None:
    ledger.add_entry(loaded, acc.find(loaded, "acme", "customer", "C1"), "payment", "3")
    run(loaded, op="refresh-credit")             # every account's balance computed once
    before = (snapshot(loaded), summary.totals(loaded, "acme", *MARCH), balances(loaded))
    job = run(loaded, op="adjust-duration", min_duration=60, new_duration=30)
    assert job.result["calls_changed"] == 3           # r1, r2, r4 last 60 s or more
    assert snapshot(loaded) != before[0]
    undo = recalc.run(loaded, RecalcRequest("acme", "undo", target_job=job.job_id), OP)
    assert undo.state == "succeeded" and undo.result["calls_changed"] == 3
    assert (snapshot(loaded), summary.totals(loaded, "acme", *MARCH), balances(loaded)) == before
    assert_summary_exact(loaded)
    assert_copy_exact(loaded)
    with pytest.raises(RecalcError, match=f"already undone by job {undo.job_id}"):
        recalc.run(loaded, RecalcRequest("acme", "undo", target_job=job.job_id), OP)
    assert recalc.undo_state(loaded, job) == undo.job_id


def test_undo_of_a_superseded_job_is_refused_naming_the_later_job(one: Database,
                                                                   tmp_path: Path) -> None:
    first = run(one, call_ids=("r1",))
    path = tmp_path / "new-c1.csv"
    path.write_text(HEADER + "61,0.012,0,1/1,0,2026-01-01,USD\n")
    rc.import_csv(one, "acme", "C1", path)
    second = run(one, call_ids=("r1",))
    assert money(one)["r1"] == (D("0.72"), D("0.18"))
    with pytest.raises(RecalcError, match=f"superseded: call r1 .* by job {second.job_id}"):
        recalc.run(one, RecalcRequest("acme", "undo", target_job=first.job_id), OP)
    recalc.run(one, RecalcRequest("acme", "undo", target_job=second.job_id), OP)
    recalc.run(one, RecalcRequest("acme", "undo", target_job=first.job_id), OP)
    assert money(one) == AS_INGESTED


@pytest.mark.parametrize("target, message", [
    ("nope", "no recalc job 'nope' in tenant 'acme'"),
    ("preview", "was a preview (--dry-run): it changed nothing"),
    ("refresh", "changed no calls: there is nothing to undo"),
])
def test_undo_refusals(one: Database, target: str, message: str) -> None:
    jobs = {"preview": run(one, dry_run=True).job_id,
            "refresh": run(one, op="refresh-credit").job_id, "nope": "nope"}
    with pytest.raises(RecalcError, match=re.escape(message)):
        recalc.run(one, RecalcRequest("acme", "undo", target_job=jobs[target]), OP)


# -- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"op": "frobnicate"}, "operation 'frobnicate' is not one of"),
    ({"op": "adjust-duration"}, "needs --min-duration and --new-duration"),
    ({"op": "adjust-duration", "min_duration": 0, "new_duration": 5}, "at least 1"),
    ({"op": "rerate", "min_duration": 10}, "apply to adjust-duration only"),
    ({"op": "refresh-credit", "release_reasons": ("X",)}, "applies to rerate and adjust-duration"),
    ({"date_from": dt.date(2026, 3, 5), "date_to": dt.date(2026, 3, 1)}, "is before --from"),
    ({"date_from": None}, "give the UTC day range"),
    ({"date_to": dt.date(2027, 12, 31)}, "at most 400 per job"),
    ({"account": "C9"}, "--account: no account 'C9'"),
    ({"call_ids": ("zz",), "date_from": None, "date_to": None}, "none of the 1 call ids"),
])
def test_bad_requests_are_refused(one: Database, kw: dict, message: str) -> None:
    before = snapshot(one)
    with pytest.raises(RecalcError, match=message):
        run(one, **kw)
    assert snapshot(one) == before


@pytest.mark.parametrize("principal", ["tenant:acme/customer:C1", "tenant:acme/carrier:K1"])
def test_only_operators_and_admins_recalc(one: Database, principal: str) -> None:
    before = snapshot(one)
    with pytest.raises(RecalcError, match="only tenant operators and admins"):
        recalc.run(one, req(), acc.resolve_principal(one, principal))
    with pytest.raises(RecalcError, match="cannot act on tenant 'acme'"):
        recalc.run(one, req(), Principal.operator("globex"))
    with pytest.raises(RecalcError, match="an admin names the tenant"):
        recalc.run(one, RecalcRequest("", "rerate", *MARCH), Principal.admin())
    assert snapshot(one) == before


@pytest.mark.parametrize("state, refused", [("verified", True), ("archived", True),
                                            ("restored", False)])
def test_archived_months_are_refused(one: Database, state: str, refused: bool) -> None:
    one.command("INSERT INTO warm_months (tenant_id, month, state, version) "
                "VALUES ('acme', 202603, {s:String}, 1)", {"s": state})
    for op in ("rerate", "refresh-summaries"):
        if refused:
            with pytest.raises(RecalcError, match=r"month 202603 of tenant 'acme' is in the "
                               r"archive .* \(`cdrhouse tier restore --month 202603`\)"):
                run(one, op=op)
        else:
            assert run(one, op=op).state == "succeeded"
    assert run(one, op="refresh-credit").state == "succeeded"   # reads summaries only


# -- concurrency and crashes ------------------------------------------------------------------

def test_overlapping_jobs_cannot_run_at_once(one: Database) -> None:
    holder = recalc.start(one, req(date_from=dt.date(2026, 3, 10)), OP)
    recalc._acquire(one, holder, dt.date(2026, 3, 10), MARCH[1])     # running, this process
    with pytest.raises(RecalcBusy, match=f"recalc job {holder.job_id} is running"):
        run(one)
    assert run(one, date_to=dt.date(2026, 3, 9)).state == "succeeded"  # no overlap
    assert run(one, op="refresh-credit").state == "succeeded"          # changes no calls


def test_a_crash_after_writing_is_finished_by_a_rerun(one: Database, monkeypatch) -> None:
    def boom(*a, **k):
        raise RuntimeError("power cut")
    summary_before = summary.totals(one, "acme", *MARCH)
    monkeypatch.setattr(summary, "rebuild", boom)
    with pytest.raises(RecalcStopped, match="stopped in phase summaries"):
        run(one)
    stopped = ud.list_jobs(one, tenant="acme", kind="recalc")[0]
    assert stopped.state == "running" and "resume" in stopped.error
    assert money(one) == REPRICED           # every call shows its new version
    # the new versions did not reach the summary through the materialized view
    # (it skips 'maint:' rows): no double count, only the rebuild changes it
    assert summary.totals(one, "acme", *MARCH) == summary_before
    monkeypatch.undo()
    again = run(one)                        # the same command resumes the same job
    assert again.job_id == stopped.job_id and again.state == "succeeded"
    assert again.result["calls_changed"] == 2
    assert money(one) == REPRICED
    assert_summary_exact(one)


def test_a_dead_process_job_is_resumed_by_id(one: Database) -> None:
    job = recalc.start(one, req(), OP)
    # as if a process that died had staged and written half: run the phases up to write
    recalc._acquire(one, job, *MARCH)
    ud.update_job(one, job.job_id, result={**ud.get_job(one, job.job_id).result,
                                           "pid": 999_999_999})
    with pytest.raises(RecalcBusy, match="interrupted"):
        run(one, date_from=dt.date(2026, 3, 2))
    done = recalc.resume(one, job.job_id, OP)
    assert done.state == "succeeded" and money(one) == REPRICED
    assert_summary_exact(one)


def test_a_crash_while_staging_changes_nothing_and_a_rerun_succeeds(one: Database,
                                                                     monkeypatch) -> None:
    before = (snapshot(one), summary.totals(one, "acme", *MARCH), balances(one))
    real = Database.command

    def crash_on_new_side(self, sql, *a, **k):
        if "INSERT INTO recalc_rows" in sql and "'new'" in sql:
            raise RuntimeError("power cut")
        return real(self, sql, *a, **k)
    monkeypatch.setattr(Database, "command", crash_on_new_side)
    with pytest.raises(RuntimeError, match="power cut"):
        run(one)
    monkeypatch.undo()
    failed = ud.list_jobs(one, tenant="acme", kind="recalc")[0]
    assert failed.state == "failed" and "power cut" in failed.error
    assert (snapshot(one), summary.totals(one, "acme", *MARCH), balances(one)) == before
    assert run(one).result["calls_changed"] == 2
    assert money(one) == REPRICED
    assert_summary_exact(one)

