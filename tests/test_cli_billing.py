"""Billing commands as a user runs them (in-process, via test_cli.run): exit codes, stdout vs stderr."""

from __future__ import annotations

import shlex
from pathlib import Path

from test_cli import run

CARD = ("prefix,rate_per_min,connect_fee,increment,min_duration,effective_from,currency\n"
        "61,0.006,0,1/1,0,2026-01-01,USD\n")
CALLS = ("call_id,customer_code,carrier_code,dst_number,start_time,billsec,duration\n"
         "x1,C1,K1,61212345678,2026-03-01 10:00:00,3600,3600\n")


def test_rates_recalc_undo_balance_jobs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "card.csv").write_text(CARD)
    (tmp_path / "bad.csv").write_text(CARD.replace("0.006", "abc"))
    (tmp_path / "calls.csv").write_text(CALLS)
    run(data, "accounts", "add", "--tenant", "acme", "--code", "C1", "--kind", "customer",
        check=True)
    bad = run(data, "rates", "import", str(tmp_path / "bad.csv"), "--tenant", "acme",
              "--account", "C1")
    assert bad.returncode == 2
    assert "line 2: rate_per_min: not a decimal number: 'abc'" in bad.stderr
    run(data, "rates", "import", str(tmp_path / "card.csv"), "--tenant", "acme", "--account",
        "C1", check=True)
    run(data, "ingest", str(tmp_path / "calls.csv"), "--tenant", "acme", "--create-accounts",
        check=True)
    args = ["recalc", "adjust-duration", "--as", "tenant:acme", "--from", "2026-03-01",
            "--to", "2026-03-31", "--min-duration", "3600", "--new-duration", "60"]
    preview = run(data, *args, "--dry-run", check=True)
    assert "charge 0.360000 -> 0.006000" in preview.stderr
    assert "nothing was changed (dry run)" in preview.stderr
    done = run(data, *args, check=True)
    assert "calls changed: 1; charge 0.360000 -> 0.006000" in done.stderr
    job_id = done.stderr.split("cdrhouse recalc undo ")[1].split()[0]
    undone = run(data, "recalc", "undo", job_id, "--as", "tenant:acme", check=True)
    # it says what was restored and what can be done next: run the job again, which works
    # (not "undo with: cdrhouse recalc undo <the undo>", issue 12)
    assert f"job {job_id} is undone" in undone.stderr
    assert "cdrhouse recalc undo" not in undone.stderr
    again_cmd = undone.stderr.split("to apply it again, run it again: ")[1].split("\n")[0]
    assert again_cmd == ("cdrhouse recalc adjust-duration --as tenant:acme --from 2026-03-01 "
                         "--to 2026-03-31 --min-duration 3600 --new-duration 60")
    again = run(data, "recalc", "undo", job_id, "--as", "tenant:acme")
    assert again.returncode == 2 and "already undone" in again.stderr
    redone = run(data, *shlex.split(again_cmd)[1:], check=True)
    assert "calls changed: 1; charge 0.360000 -> 0.006000" in redone.stderr
    redo_id = redone.stderr.split("cdrhouse recalc undo ")[1].split()[0]
    run(data, "recalc", "undo", redo_id, "--as", "tenant:acme", check=True)
    customer = run(data, *args[:2], "--as", "tenant:acme/customer:C1", *args[4:])
    assert customer.returncode == 2 and "only tenant operators and admins" in customer.stderr
    bal = run(data, "balance", "--tenant", "acme", "--format", "csv", check=True)
    assert "acme,customer,C1,USD,0.000000,0.360000,-0.360000,1," in bal.stdout
    jobs = run(data, "jobs", "--as", "tenant:acme", "--format", "csv", check=True)
    assert jobs.stdout.count(",recalc,") == 5
