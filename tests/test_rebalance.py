"""A shard added to a sharded cluster, and `rebalance` putting every call back where its
key sends it (engine/rebalance.py), on a real cluster of embedded nodes that grows from
two shards to three, as an operator grows one (tests/chcluster.py, `add_shard`).

Why it matters, shown for real here: after the third shard joins, a call adjusted
before the rebalance gets its new version on another shard than its old one, and
`FINAL` shows it twice (billed twice). After the rebalance it shows once, every call's
versions are on one shard, the daily summary still equals the calls, the time-ordered
copy still equals the hot table, and a later re-rate stays exact.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from bytime import assert_copy_exact
from fastapi.testclient import TestClient
from chcluster import LocalCluster
from cli_inproc import run_cli
from conftest import _drop, _fresh
from test_recalc import OP, _ingest, _load, money, req

from cdrhouse.api import scheduler
from cdrhouse.api.app import create_app
from cdrhouse.api.service import ServiceConfig
from cdrhouse.backup import jobs as backup_jobs
from cdrhouse.backup import ops
from cdrhouse.backup.location import BackupConfig, BackupError, Location
from cdrhouse.engine import cluster, keys, leases, rebalance, recalc, summary
from cdrhouse.engine import schedules as sched
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.ingest import IngestError, IngestOptions, ingest_paths
from cdrhouse.engine.migrate import migrate
from cdrhouse.engine.rebalance import RebalanceRefused, Shard, shard_of
from cdrhouse.tiering import jobs as tier_jobs
from cdrhouse.tiering.archive import Tiering
from cdrhouse.tiering.policy import Policy
from cdrhouse.tiering.store import ArchiveError, LocalStore

FIRST, LAST = dt.date(2026, 3, 1), dt.date(2026, 4, 30)


# -- where the Distributed engine sends a key: the SQL, and what it computes -------------

@pytest.mark.parametrize(("weights", "sql"), [
    ([1, 1], "(modulo(k, 2) + 1)"),
    ([1, 1, 1], "(modulo(k, 3) + 1)"),
    ([1, 1, 2], "multiIf(modulo(k, 4) < 1, 1, modulo(k, 4) < 2, 2, 3)"),
    ([3, 1], "multiIf(modulo(k, 4) < 3, 1, 2)"),
    ([1, 0, 1], "multiIf(modulo(k, 2) < 1, 1, 3)"),     # weight 0: no inserts go there
    ([5], "1"),
    ([0, 2], "2"),
])
def test_the_shard_of_a_key_as_sql(weights: list[int], sql: str) -> None:
    shards = [Shard(i + 1, w) for i, w in enumerate(weights)]
    assert shard_of(shards, "k") == sql


@pytest.mark.parametrize("weights", [[1, 1], [1, 1, 2], [3, 1], [1, 0, 1], [2, 2, 1], [5]])
def test_the_shard_of_a_key_is_the_owner_of_its_slot(embedded_db: Database,
                                                    weights: list[int]) -> None:
    # ClickHouse's rule, written out: slots in shard order, `weight` slots each
    slots = [i + 1 for i, w in enumerate(weights) for _ in range(w)]
    expected = [slots[k % len(slots)] for k in range(40)]
    sql = shard_of([Shard(i + 1, w) for i, w in enumerate(weights)], "number")
    assert [int(s) for (s,) in embedded_db.rows(f"SELECT {sql} FROM numbers(40)")] == expected


def test_no_shard_with_a_weight_is_refused() -> None:
    with pytest.raises(RebalanceRefused, match="weight above 0"):
        shard_of([Shard(1, 0)], "k")


# -- a cluster that grows ---------------------------------------------------------------

@pytest.fixture
def growing():
    """Two shards now, a third (weight 2) when the test adds it; its own cluster per test,
    since a cluster cannot shrink back (~5 s)."""
    c = LocalCluster(shards=2, name="cdrhouse_growing").start()
    yield c
    c.stop()


def _reopen(db: Database) -> Database:
    """A new client on the same database (the nodes restarted when the shard joined)."""
    again = Database(StoreConfig(data_dir=db.config.data_dir, clickhouse=db.config.clickhouse,
                                 database=db.name, cluster=db.config.cluster))
    db.close()
    return again


def _calls(n: int, month: int, prefix: str) -> list[tuple]:
    """`n` calls of tenant acme over `month` (3 or 4), for both customers and carriers."""
    out = []
    for i in range(n):
        day = 1 + i % 28
        out.append((f"{prefix}{i}", ("C1", "C2")[i % 2], ("K1", "K2")[i % 3 % 2],
                    ("441611234567", "61212345678")[i % 2],
                    f"2026-{month:02d}-{day:02d} {i % 24:02d}:{i % 60:02d}:00",
                    30 + i % 300, "NORMAL_CLEARING", "", ""))
    return out


def _adjust(seconds: int, calls: tuple[str, ...]):
    """A re-rate of `calls` (their duration set to `seconds`): new versions of them."""
    return req("adjust-duration", min_duration=1, new_duration=seconds, call_ids=calls,
               date_from=FIRST, date_to=LAST)


def _where(db: Database) -> dict[str, int]:
    """call id -> the shard holding it (through the Distributed table)."""
    return {c: int(s) for c, s in db.rows("SELECT call_id, any(_shard_num) FROM cdr_records "
                                          "GROUP BY call_id")}


def _on_two_shards(db: Database) -> int:
    return int(db.scalar("SELECT count() FROM (SELECT call_id FROM cdr_records GROUP BY "
                         "call_id HAVING uniqExact(_shard_num) > 1)"))


def _final_rows(db: Database) -> int:
    return int(db.scalar("SELECT count() FROM cdr_records FINAL"))


def _parts_per_partition(db: Database, table: str) -> set[int]:
    """How many active parts each partition of `table` has, over every node."""
    counts: set[int] = set()
    for node in cluster.nodes(db):
        with cluster.open_node(db, node, create=False) as conn:
            counts |= {int(n) for (n,) in conn.rows(
                "SELECT count() FROM system.parts WHERE active AND database = "
                "currentDatabase() AND table = {t:String} GROUP BY partition",
                {"t": cluster.local(db, table)})}
    return counts


@pytest.fixture
def grown(growing: LocalCluster, engine_dir: Path, tmp_path: Path):
    """Calls stored on two shards, then the third shard added and `init` run: the store
    as an operator has it just after growing the cluster."""
    db = _fresh(growing.dsn, engine_dir, growing.name)
    try:
        _load(db, tmp_path)
        _ingest(db, tmp_path, _calls(300, 3, "m") + _calls(300, 4, "a"))
        assert rebalance.placement(db) == []       # two shards: everything in place
        growing.add_shard(weight=2)
        db = _reopen(db)
        migrate(db)
        yield db
    finally:
        _drop(db)


def test_a_store_is_rebalanced_after_a_shard_is_added(grown: Database, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    db = grown
    # months copied in slices, as a large store's are (here: ~50 rows a slice)
    monkeypatch.setattr(rebalance, "SLICE_ROWS", 50)
    sliced: list[int] = []
    real = rebalance._slices
    monkeypatch.setattr(rebalance, "_slices", lambda *a: sliced.append(real(*a)) or sliced[-1])
    assert [s.weight for s in rebalance.shards(db)] == [1, 1, 2]
    before = money(db)
    calls = len(before)
    assert _final_rows(db) == calls == 605
    found = rebalance.placement(db)
    # the rows whose slot (hash % 4) now belongs to another shard than (hash % 2) named:
    # computed here from the hash alone, not with the module's SQL
    hashes = dict(db.rows("SELECT call_id, cityHash64(tenant_id, call_id) FROM cdr_records"))
    now_at = _where(db)
    belongs = {c: [1, 2, 3, 3][h % 4] for c, h in hashes.items()}
    assert all(now_at[c] == h % 2 + 1 for c, h in hashes.items())
    wrong = {c for c in hashes if belongs[c] != now_at[c]}
    assert 0 < len(wrong) < calls
    assert sum(m.rows for m in found if m.table == "cdr_records") == len(wrong)
    assert {(m.at, m.to) for m in found} <= {(1, 2), (1, 3), (2, 1), (2, 3)}

    # the hazard: a misplaced call adjusted now gets its new version on its new shard
    moved_call = min(wrong)
    recalc.run(db, _adjust(7, (moved_call,)), OP)
    assert _final_rows(db) == calls + 1          # shown (and billed) twice
    # new calls go where the Distributed engine sends them: the module agrees with it
    _ingest(db, tmp_path, _calls(40, 4, "new"))
    new_at = {c: s for c, s in _where(db).items() if c.startswith("new")}
    new_hash = dict(db.rows("SELECT call_id, cityHash64(tenant_id, call_id) FROM cdr_records "
                            "WHERE call_id LIKE 'new%'"))
    assert new_at == {c: [1, 2, 3, 3][h % 4] for c, h in new_hash.items()}
    misplaced_before = sum(m.rows for m in rebalance.placement(db) if m.table == "cdr_records")
    # the adjusted call's new version is where it belongs; its old one still is not
    assert misplaced_before == len(wrong)

    report = rebalance.rebalance(db)
    assert max(sliced) > 1
    assert report.months == [202603, 202604]
    assert sum(rows for t, _, _, rows in report.copied if t == "cdr_records") \
        == misplaced_before
    assert rebalance.placement(db) == []
    assert _on_two_shards(db) == 0
    assert _final_rows(db) == calls + 40          # once each again, the adjusted version won
    after = money(db)
    assert {c: v for c, v in after.items() if c != moved_call and not c.startswith("new")} \
        == {c: v for c, v in before.items() if c != moved_call}
    assert db.scalar("SELECT duration FROM cdr_records FINAL WHERE call_id = {c:String}",
                     {"c": moved_call}) == 7
    assert_copy_exact(db)
    assert summary.totals(db, "acme", FIRST, LAST) == summary.truth(db, "acme", FIRST, LAST)
    assert _parts_per_partition(db, "cdr_records") == {1}    # settled again

    # and a re-rate afterwards stays exact: every new version meets its old one
    some = tuple(sorted(wrong)[1:30])
    recalc.run(db, _adjust(9, some), OP)
    assert _final_rows(db) == calls + 40 and _on_two_shards(db) == 0
    assert summary.totals(db, "acme", FIRST, LAST) == summary.truth(db, "acme", FIRST, LAST)
    assert rebalance.rebalance(db).before == []     # nothing left to do


def _gone_pid() -> int:
    """A process id no process has now."""
    pid = 4_000_000
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid


class _Crash(Exception):
    """The run dies here."""


@pytest.mark.parametrize("step", ["copied", "deleted"])
def test_a_rebalance_that_dies_is_finished_by_the_next_run(grown: Database, step: str) -> None:
    db = grown
    before = money(db)
    misplaced = sum(m.rows for m in rebalance.placement(db) if m.table == "cdr_records")

    holders = []

    def die(at: str) -> None:
        # while it moves rows, no scheduled tiering run or backup may start
        holders.append({k: (leases.state(db, k).held, leases.state(db, k).holder)
                        for k in (leases.TIERING, leases.BACKUP)})
        if at == step:
            raise _Crash(at)

    with pytest.raises(_Crash):
        rebalance.rebalance(db, fault=die)
    assert holders[0] == {k: (True, "cluster rebalance") for k in (leases.TIERING, leases.BACKUP)}
    assert not leases.state(db, leases.TIERING).held     # released by the dead run too
    # nothing is lost at any point: every call is still there (some on two shards)
    assert set(money(db)) == set(before)
    again = rebalance.rebalance(db)
    if step == "copied":     # the first month was copied: the rerun copies none of it again
        assert not [c for c in again.copied if c[1] == 202603]
    assert rebalance.placement(db) == [] and _on_two_shards(db) == 0
    assert money(db) == before
    assert sum(m.rows for m in again.before if m.table == "cdr_records") <= misplaced
    assert_copy_exact(db)
    assert summary.totals(db, "acme", FIRST, LAST) == summary.truth(db, "acme", FIRST, LAST)


def test_what_must_not_run_beside_a_rebalance_is_refused_while_it_runs(
        grown: Database, tmp_path: Path) -> None:
    """Halfway through a real rebalance (a moved call on two shards), a re-rate, a tiering
    run, a backup, a restore and an ingest are each refused with the reason, and change
    nothing; a dry run (it writes nothing) still runs. After it, they run again."""
    db = grown
    before = money(db)
    some = tuple(sorted(before)[:5])
    (tmp_path / "late").mkdir()
    late = tmp_path / "late" / "late.csv"
    late.write_text("call_id,customer_code,carrier_code,dst_number,start_time,billsec,"
                    "duration\nlate-1,C1,K1,441611234567,2026-04-02 10:00:00,30,40\n")
    location = Location(LocalStore(tmp_path / "backups"), str(tmp_path / "backups"))
    attempts = {
        "recalc": lambda: recalc.run(db, _adjust(3, some), OP),
        "tier run": lambda: tier_jobs.run_tiering(db, LocalStore(tmp_path / "warm"), Policy()),
        "backup": lambda: backup_jobs.run(db, location, BackupConfig()),
        "restore": lambda: ops.restore_backup(db.config, location, "any"),
        "ingest": lambda: ingest_paths(db, [late], IngestOptions(tenant="acme"),
                                       tmp_path / "rejects.csv"),
    }
    # a daily report due on 2 April: its run waits for the rebalance, then runs
    key, _ = keys.create_key(db, "tenant:acme", "reports")
    report = sched.create(db, owner_key=key.key_id, principal="tenant:acme", name="daily",
                          cron="0 6 * * *", definition=sched.Definition(report="daily"))
    slot = dt.datetime(2026, 4, 2, 6, tzinfo=dt.timezone.utc)
    sched.save_state(db, dataclasses.replace(sched.state_of(db, report), slot=slot,
                                             next_run=slot))
    files = LocalStore(tmp_path / "files")
    told: list[tuple[str | None, str]] = []
    _, secret = keys.create_key(db, "tenant:acme", "portal")
    refused: dict[str, BaseException] = {}
    previews: list[ud.Job] = []
    waited: list[list] = []

    def meanwhile(step: str) -> None:
        if step != "copied" or refused:
            return
        assert _on_two_shards(db) > 0           # the window these refusals protect
        status = run_cli("cluster", "status", env=_env(db))
        assert "a rebalance is running: `cdrhouse cluster rebalance` is moving rows" \
            in status.stderr, status.stderr
        previews.append(recalc.run(db, dataclasses.replace(_adjust(3, some), dry_run=True),
                                   OP))
        waited.append(scheduler.run_due(db, files, slot))
        told.append(_answers(db, secret))
        [(due, state)] = sched.due(db, slot)       # still due: not claimed
        assert due.schedule_id == report.schedule_id
        # a tick that looked just before the rebalance began: its run fails, to retry
        waited.append(scheduler.run_one(db, files, due, state, slot))
        assert leases.state(db, leases.ALERTS).holder == rebalance.HOLDER
        for name, attempt in attempts.items():
            with pytest.raises(Exception) as caught:
                attempt()
            refused[name] = caught.value

    rebalance.rebalance(db, fault=meanwhile)
    assert {n: type(e) for n, e in refused.items()} == {
        "recalc": recalc.RecalcBusy, "tier run": ArchiveError, "backup": BackupError,
        "restore": ops.RestoreRefused, "ingest": IngestError}
    for name, exc in refused.items():
        assert "`cdrhouse cluster rebalance` is moving rows between shards (cluster " \
               "rebalance, since" in str(exc), name
    assert "late.csv: not ingested" in str(refused["ingest"])
    # each refused job is on record as failed, with the reason
    for kind in ("recalc", "tier-run", "backup-run"):
        job = ud.list_jobs(db, kind=kind, limit=1)[0]
        assert job.state == "failed" and "moving rows between shards" in job.error, kind
    assert previews and previews[0].state == "succeeded"
    # nothing changed: no new version, no new call, every call once
    assert money(db) == before and _on_two_shards(db) == 0
    assert summary.totals(db, "acme", FIRST, LAST) == summary.truth(db, "acme", FIRST, LAST)
    # the rebalance is over: the same re-rate and ingest run
    # a service serving meanwhile said so: a Warning on every answer, a banner on pages
    [(warning, page)] = told
    assert warning is not None and warning.startswith(
        '199 cdrhouse "The store\'s calls are being moved between shards (a cluster '
        'rebalance since 20') and warning.endswith(
        'UTC): until it finishes, a call may be shown or counted twice."')
    assert 'id="store-notice"' in page and "a call may be shown or counted twice" in page
    after_warning, after_page = _answers(db, secret)      # the rebalance is over
    assert after_warning is None and 'id="store-notice"' not in after_page
    assert waited[0] == []                      # nothing ran, nothing was claimed
    raced = waited[1]
    assert raced.state == "failed" and "moving rows between shards" in raced.error
    assert [j.job_id for j in ud.list_jobs(db, kind=sched.JOB_KIND)] == [raced.job_id]
    assert rebalance.running(db) is None and rebalance.refusal(db) is None
    [ran] = scheduler.run_due(db, files, slot + dt.timedelta(minutes=1))   # the retry
    assert ran.state == "succeeded" and ran.rows > 0, ran
    assert "a rebalance is running" not in run_cli("cluster", "status", env=_env(db)).stderr
    assert recalc.run(db, _adjust(3, some), OP).state == "succeeded"
    ingest_paths(db, [late], IngestOptions(tenant="acme"), tmp_path / "rejects.csv")
    assert "late-1" in money(db)
    assert summary.totals(db, "acme", FIRST, LAST) == summary.truth(db, "acme", FIRST, LAST)


def _answers(db: Database, secret: str) -> tuple[str | None, str]:
    """What a service started on the store now answers: the Warning header of an API
    answer, and the sign-in page."""
    app = create_app(ServiceConfig(store=db.config, pool_size=2, sweep_seconds=0))
    with TestClient(app) as client:
        fields = client.get("/v1/fields", headers={"Authorization": f"Bearer {secret}"})
        assert fields.status_code == 200, fields.text
        return fields.headers.get("warning"), client.get("/login").text


def test_the_exclusive_jobs_are_the_kinds_of_their_modules() -> None:
    assert set(rebalance.EXCLUSIVE_JOBS) == {recalc.KIND, tier_jobs.KIND_RUN,
                                             tier_jobs.KIND_RESTORE, ops.KIND_RUN,
                                             sched.JOB_KIND}


def _env(db: Database) -> dict[str, str]:
    """The CLI's environment for the store of `db`."""
    return {"CDRHOUSE_CLICKHOUSE": db.config.clickhouse, "CDRHOUSE_DATABASE": db.name,
            "CDRHOUSE_CLUSTER": db.config.cluster, "CDRHOUSE_DATA_DIR": str(db.config.data_dir)}


def test_one_month_at_a_time_and_the_command_line(grown: Database) -> None:
    db = grown
    env = _env(db)
    status = run_cli("cluster", "status", "--format", "json", env=env)
    assert status.returncode == 1, status.stderr         # rows to move: not in order
    assert "cdrhouse cluster rebalance" in status.stderr and '"belongs on shard"' in status.stdout
    plan = run_cli("cluster", "rebalance", "--dry-run", env=env)
    assert plan.returncode == 0 and "would move" in plan.stderr
    assert rebalance.placement(db) != []                   # a dry run changes nothing
    march = run_cli("cluster", "rebalance", "--month", "2026-03", env=env)
    assert march.returncode == 0, march.stderr
    assert {m.month for m in rebalance.placement(db)} == {202604}
    assert run_cli("cluster", "rebalance", "--month", "2026-13", env=env).returncode == 2
    rest = run_cli("cluster", "rebalance", env=env)
    assert rest.returncode == 0 and "every row is on its shard" in rest.stderr
    done = run_cli("cluster", "status", env=env)
    assert done.returncode == 0 and "every row is on its shard" in done.stderr
    assert_copy_exact(db)
    # the rebalance is in the audit trail, as the CLI's other changing commands
    assert db.scalar("SELECT count() FROM audit_log WHERE action = 'cluster rebalance'") >= 1


def test_a_rebalance_is_refused_where_it_cannot_run(embedded_db: Database, grown: Database,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    with pytest.raises(RebalanceRefused, match="one node"):
        rebalance.rebalance(embedded_db)
    ran = run_cli("cluster", "rebalance",
                  env={"CDRHOUSE_DATA_DIR": str(embedded_db.config.data_dir),
                       "CDRHOUSE_DATABASE": embedded_db.name})
    assert ran.returncode == 2 and "one node" in ran.stderr
    # a tiering run that left a month in its holding table: finish that first
    tiering = Tiering(grown, LocalStore(tmp_path / "warm"))
    tiering._ensure_hold()
    grown.command("INSERT INTO cdr_tiering_hold SELECT * FROM cdr_records LIMIT 1")
    with pytest.raises(RebalanceRefused, match="tier run"):
        rebalance.rebalance(grown)
    cluster.each_node(grown, "TRUNCATE TABLE cdr_tiering_hold_local{on_cluster}")
    # a scheduled tiering run, backup or alert evaluation at work (another `serve` holds
    # its lease), or another rebalance
    for kind in (leases.REBALANCE, leases.TIERING, leases.BACKUP, leases.ALERTS):
        lease = leases.acquire(grown, kind, 60.0, holder="serve on host-b")
        assert lease is not None
        with pytest.raises(RebalanceRefused, match=f"the {kind} lease is held "
                                                   r"\(serve on host-b\)"):
            rebalance.rebalance(grown)
        leases.release(grown, lease)
    assert not leases.state(grown, leases.TIERING).held   # the refused run let go of it
    # a re-rate at work (its job marked running by a live process): finish it first
    job = recalc.claim(grown, recalc.start(grown, _adjust(5, ("m1",)), OP))
    with pytest.raises(RebalanceRefused, match=f"recalc job {job.job_id} of tenant acme is "
                                               "running: rebalance when it has finished"):
        rebalance.rebalance(grown)
    assert not leases.state(grown, leases.REBALANCE).held
    ud.update_job(grown, job.job_id, result={**job.result, "pid": _gone_pid()})
    rebalance._refuse_busy(grown)        # its process is gone: it no longer blocks
    # a replicated cluster is refused rather than run untested
    topo = cluster.topology(grown)
    monkeypatch.setattr(grown, "_topology", type(topo)(topo.cluster, True))
    with pytest.raises(RebalanceRefused, match="replicated"):
        rebalance.placement(grown)

