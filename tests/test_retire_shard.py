"""Retiring a shard: given weight 0 in `remote_servers`, `cluster rebalance` moves its calls
and its daily-summary deltas off it (engine/rebalance.py), and it can leave the cluster.

On a real cluster of three embedded nodes (tests/chcluster.py: `set_weight`,
`remove_last_shard`), with re-rated calls so that every shard holds versions and
summary deltas; the move of the deltas is crashed at each step, once with the weight
given back before the next run. Apart from tests/test_rebalance.py so that the two
files' clusters run on different test workers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bytime import assert_copy_exact
from chcluster import LocalCluster
from cli_inproc import run_cli
from conftest import _drop, _fresh
from test_rebalance import FIRST, LAST, _adjust, _calls, _Crash, _reopen
from test_recalc import OP, _ingest, _load, money

from cdrhouse.engine import rebalance, recalc, summary
from cdrhouse.engine.db import Database


@pytest.fixture
def shrinking(engine_dir: Path, tmp_path: Path):
    """Three shards with calls, adjusted calls (several versions, summary deltas on every
    shard) and the time-ordered copy; the test retires the third."""
    c = LocalCluster(shards=3, name="cdrhouse_shrinking").start()
    db = _fresh(c.dsn, engine_dir, c.name)
    try:
        _load(db, tmp_path)
        _ingest(db, tmp_path, _calls(300, 3, "m") + _calls(300, 4, "a"))
        recalc.run(db, _adjust(8, tuple(f"m{i}" for i in range(0, 300, 7))), OP)
        yield c, db
    finally:
        try:   # on a client of its own: the test's were closed as the nodes restarted
            _drop(_reopen(db))
        finally:
            c.stop()


def _summary_exact(db: Database) -> bool:
    return summary.totals(db, "acme", FIRST, LAST) == summary.truth(db, "acme", FIRST, LAST)


def _on_shard(db: Database, shard: int) -> list[int]:
    return [int(db.scalar(f"SELECT count() FROM {t} WHERE _shard_num = {shard}"))
            for t in ("cdr_records", "cdr_records_by_time", "cdr_daily_summary")]


@pytest.mark.parametrize(("crash_at", "change_of_mind"), [
    (None, False), ("summary staged", False), ("summary cleared", False),
    # the run dies with the deltas in the stage, and the operator gives the shard its
    # weight back: the next run still moves them in (the stage says where they came from)
    ("summary cleared", True)])
def test_a_shard_of_weight_0_is_emptied_and_leaves_the_cluster(shrinking, crash_at: str | None,
                                                              change_of_mind: bool) -> None:
    c, db = shrinking
    before = money(db)
    assert _summary_exact(db) and all(_on_shard(db, 3))     # shard 3 holds some of all
    c.set_weight(2, 0)
    db = _reopen(db)
    env = {"CDRHOUSE_CLICKHOUSE": db.config.clickhouse, "CDRHOUSE_DATABASE": db.name,
           "CDRHOUSE_CLUSTER": db.config.cluster, "CDRHOUSE_DATA_DIR": str(db.config.data_dir)}
    status = run_cli("cluster", "status", env=env)
    assert status.returncode == 1 and "weight 0 still hold daily-summary rows" in status.stderr
    summary_rows = _on_shard(db, 3)[2]
    calls_there = _on_shard(db, 3)[0]
    assert {m.to for m in rebalance.placement(db)} <= {1, 2}
    assert sum(m.rows for m in rebalance.placement(db)
               if m.table == "cdr_records" and m.at == 3) == calls_there

    if crash_at:
        def die(at: str) -> None:
            if at == crash_at:
                raise _Crash(at)
        with pytest.raises(_Crash):
            rebalance.rebalance(db, fault=die)
        assert set(money(db)) == set(before)    # every call still there
    if change_of_mind:
        c.set_weight(2, 1)
        db = _reopen(db)
        rebalance.rebalance(db)
        assert money(db) == before and _summary_exact(db)
        assert not db.scalar("SELECT count() FROM clusterAllReplicas({c:String}, system.tables) "
                             "WHERE database = {d:String} AND startsWith(name, {p:String})",
                             {"c": c.name, "d": db.name, "p": rebalance.SUMMARY_STAGE})
        return
    report = rebalance.rebalance(db)
    if not crash_at:
        assert report.summary_rows_moved == summary_rows
    assert _on_shard(db, 3) == [0, 0, 0]
    assert money(db) == before and _summary_exact(db)   # no delta lost or counted twice
    assert_copy_exact(db)
    assert not db.scalar("SELECT count() FROM clusterAllReplicas({c:String}, system.tables) "
                         "WHERE database = {d:String} AND startsWith(name, {p:String})",
                         {"c": c.name, "d": db.name, "p": rebalance.SUMMARY_STAGE})
    assert run_cli("cluster", "status", env=env).returncode == 0

    # it holds nothing of the store now: it leaves, and nothing is missing
    c.remove_last_shard()
    db = _reopen(db)
    assert [s.num for s in rebalance.shards(db)] == [1, 2]
    assert money(db) == before and _summary_exact(db)
    assert_copy_exact(db)
    db.close()
