"""Leases (engine/leases.py) and instance heartbeats (engine/instances.py) on a real
engine, embedded and over HTTP: one holder at a time, expiry and takeover, renewal,
"due now runs once", and how a job's dead owner on another host is told apart."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from apscheduler.triggers.cron import CronTrigger

from cdrhouse.engine import instances, jobs, leases
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database
from cdrhouse.tiering.schedule import parse_cron


def _client(db: Database) -> Database:
    return Database(db.config, create=False)


def test_one_holder_until_released(store: Database) -> None:
    a = leases.acquire(store, "tiering", 30, holder="A")
    assert a is not None and a.epoch == 1 and a.valid()
    assert leases.acquire(store, "tiering", 30, holder="B") is None
    # kinds are independent
    assert leases.acquire(store, "backup", 30, holder="B") is not None
    st = leases.state(store, "tiering")
    assert (st.held, st.holder, st.epoch, st.token) == (True, "A", 1, a.token)
    leases.release(store, a)
    assert not leases.state(store, "tiering").held and not a.valid()
    b = leases.acquire(store, "tiering", 30, holder="B")
    assert b is not None and b.epoch == 2 and leases.state(store, "tiering").holder == "B"
    with pytest.raises(ValueError, match="ttl"):
        leases.acquire(store, "x", 0)


def test_concurrent_claims_have_one_winner(store: Database) -> None:
    """Many instances see the lease free at once and insert their claims: insert
    deduplication stores one, and exactly one of them holds the lease — round after round."""
    contenders = 6
    clients = [_client(store) for _ in range(contenders)]
    try:
        for round_ in range(4):
            barrier = threading.Barrier(contenders)
            won: list[leases.Lease] = []

            def contend(i: int) -> None:
                barrier.wait()
                got = leases.acquire(clients[i], "reports", 30, holder=f"I{i}")
                if got is not None:
                    won.append(got)

            threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(won) == 1, f"round {round_}: {[w.holder for w in won]}"
            st = leases.state(store, "reports")
            assert (st.holder, st.token, st.epoch) == (won[0].holder, won[0].token, round_ + 1)
            leases.release(store, won[0])
    finally:
        for c in clients:
            c.close()


def test_expiry_then_takeover_and_the_old_holder_knows(store: Database) -> None:
    a = leases.acquire(store, "alerts", 1.0, holder="A")
    assert a is not None
    a_expires = leases.state(store, "alerts").expires_at
    # nobody takes it before it expires by the server's clock (however slow this machine)
    early = leases.acquire(store, "alerts", 1.0, holder="B")
    assert early is None or early.claimed_at >= a_expires
    while leases.state(store, "alerts").held and early is None:
        time.sleep(0.2)                   # A died: it stopped renewing
    b = early or leases.acquire(store, "alerts", 30, holder="B")
    assert b is not None and b.epoch == a.epoch + 1 and b.claimed_at >= a_expires
    # A wakes up: its renewal is refused and it knows the lease is lost
    assert leases.renew(store, a) is False and a.lost.is_set() and not a.valid()
    st = leases.state(store, "alerts")
    assert (st.holder, st.epoch) == ("B", b.epoch)


def test_renewal_moves_the_expiry_and_keeps_others_out(store: Database) -> None:
    a = leases.acquire(store, "backup", 20.0, holder="A")
    assert a is not None
    first = leases.state(store, "backup").expires_at
    assert leases.renew(store, a) is True and a.valid()
    st = leases.state(store, "backup")
    assert st.expires_at > first and (st.holder, st.epoch, st.token) == ("A", 1, a.token)
    assert leases.acquire(store, "backup", 20.0, holder="B") is None
    # a renewal that comes after the holder's own deadline is refused (it may be taken over)
    a.deadline = time.monotonic() - 0.001
    assert leases.renew(store, a) is False and a.lost.is_set()


def test_a_fire_time_runs_once(store: Database) -> None:
    """Instances whose ticks come one after another (after the first released the
    lease) do not run the same fire time again; the next fire time runs."""
    ran: list[str] = []
    due = dt.datetime(2026, 11, 29, 2, 30, tzinfo=dt.UTC)

    def factory():
        return _client(store)

    for who in ("A", "B", "C"):
        leases.run_leased(factory, "tiering", 30, lambda w=who: ran.append(w), due=due,
                          holder=who)
    assert ran == ["A"]
    assert leases.state(store, "tiering").done_for == due
    ok, _ = leases.run_leased(factory, "tiering", 30, lambda: ran.append("B"),
                              due=due + dt.timedelta(days=1), holder="B")
    assert ok and ran == ["A", "B"]
    # the work can tell which fire time it runs for (tiering records it in its job)
    later = due + dt.timedelta(days=2)
    assert leases.run_leased(factory, "tiering", 30, leases.current_due, due=later) == (
        True, later)
    assert leases.current_due() is None
    # a run that fails still counts as the fire time's run (its job records the failure)
    with pytest.raises(RuntimeError):
        leases.run_leased(factory, "backup", 30, lambda: (_ for _ in ()).throw(
            RuntimeError("boom")), due=due, holder="A")
    assert leases.run_leased(factory, "backup", 30, lambda: ran.append("X"), due=due) == (
        False, None)
    assert not leases.state(store, "backup").held


def test_the_lease_is_renewed_while_long_work_runs(store: Database) -> None:
    ttl, seen = 6.0, []

    def work() -> None:
        time.sleep(ttl * 2 / 3)           # the renewer beats every ttl/3 (room for a slow one)
        seen.append(leases.state(store, "sweeper"))

    ok, _ = leases.run_leased(lambda: _client(store), "sweeper", ttl, work, holder="A")
    assert ok and seen[0].holder == "A" and seen[0].epoch == 1
    # renewed while the work ran: it expires later than the claim's own ttl
    assert seen[0].expires_at > seen[0].claimed_at + dt.timedelta(seconds=ttl)
    assert not leases.state(store, "sweeper").held      # released at the end


@pytest.mark.parametrize("cron, now, expected", [
    ("30 2 * * *", "2026-11-29T05:00:00", "2026-11-29T02:30:00"),
    ("30 2 * * *", "2026-11-29T02:30:00", "2026-11-29T02:30:00"),
    ("30 2 * * *", "2026-11-29T02:29:59", "2026-11-28T02:30:00"),
    ("* * * * *", "2026-11-29T05:00:42", "2026-11-29T05:00:00"),
    ("0 1 * * mon", "2026-11-29T05:00:00", "2026-11-23T01:00:00"),  # weekly
    ("0 0 1 1 *", "2026-11-29T05:00:00", None),                     # beyond the lookback
    ("5 0 12 * * *", "2026-11-29T12:00:07", "2026-11-29T12:00:05"),  # leading seconds
])
def test_last_fire_time(cron: str, now: str, expected: str | None) -> None:
    trigger = parse_cron(cron)
    got = leases.last_fire_time(trigger, dt.datetime.fromisoformat(now).replace(tzinfo=dt.UTC))
    assert got == (dt.datetime.fromisoformat(expected).replace(tzinfo=dt.UTC)
                   if expected else None)


def test_cron_text_errors_name_the_schedule() -> None:
    with pytest.raises(ValueError, match="tier schedule 'every day'"):
        parse_cron("every day")
    assert isinstance(parse_cron("0 30 2 * * *"), CronTrigger)


def _beat_as(db: Database, instance: str, seconds_ago: float) -> None:
    db.command("INSERT INTO service_instances SELECT {i:String}, 'elsewhere', 7, now64(3), "
               "now64(3) - toIntervalMillisecond({ms:Int64})",
               {"i": instance, "ms": int(seconds_ago * 1000)})


def test_an_owner_on_another_host_is_alive_while_it_beats(store: Database) -> None:
    _beat_as(store, "api-1:7", 1)
    _beat_as(store, "api-2:7", instances.ALIVE_SECONDS + 5)
    instances.beat(store)
    assert instances.alive(store) >= {"api-1:7", instances.instance_id()}
    assert "api-2:7" not in instances.alive(store)
    other = {"pid": 7, "host": "elsewhere.example"}
    assert jobs.is_alive({**other, "instance": "api-1:7"}, store)
    assert not jobs.is_alive({**other, "instance": "api-2:7"}, store)
    assert not jobs.is_alive({**other, "instance": "never-beat"}, store)
    # without the store, or without an instance (a CLI run), another host's job is alive
    assert jobs.is_alive({**other, "instance": "api-2:7"})
    assert jobs.is_alive(other, store)


def test_orphans_are_jobs_whose_owner_died_without_a_word(store: Database) -> None:
    _beat_as(store, "live:1", 0)
    _beat_as(store, "dead:1", instances.ALIVE_SECONDS + 5)
    other = {"pid": 7, "host": "elsewhere.example"}

    def job(result: dict | None, state: str = "running") -> str:
        j = ud.create_job(store, kind="recalc", principal="admin", tenant="acme", params={})
        ud.update_job(store, j.job_id, state=state, result=result)
        return j.job_id

    dead = job({**other, "instance": "dead:1"})
    job({**other, "instance": "live:1"})
    left = job({**other, "instance": "dead:1"})
    jobs.mark_stopped(store, left, "the service stopped")       # recorded: the operator's call
    failed = job({**other, "instance": "dead:1"})
    jobs.mark_stopped(store, failed, "stopped on an error")     # likewise
    job(None)                                                   # queued, never claimed
    job({**other, "instance": "dead:1"}, state="succeeded")
    here = job({"pid": 999_999_999, "host": jobs.owner()["host"]})  # a dead process here
    assert {j.job_id for j in jobs.orphans(store, "recalc")} == {dead, here}
    assert jobs.orphans(store, "tier-run") == []
