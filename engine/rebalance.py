"""Every call back on the shard its key names after a shard was added (`cluster rebalance`).

Why: a sharded store keeps every version of a call on one shard (the sharding key is
`cityHash64(tenant_id, call_id)`, sql/schema/topology.py), so `FINAL` on each shard
sees all of a call's versions and re-rating stays exact. ClickHouse does not move
stored rows when the cluster gains a shard, and the new shard count sends a call
somewhere else: a new version of a call stored before (re-rating, adjust duration,
undo) could land on another shard than its old one, and `FINAL` would then show both,
so the call would be billed twice. This module puts every stored row where the
`Distributed` engine would put it now.

Where a row belongs (`shard_of`): ClickHouse gives the shards slots in their order in
`remote_servers`, `weight` slots each, and sends a row to the shard owning slot
`key % total weight`. `placement` counts the rows of every month that sit elsewhere,
read through the Distributed table (`_shard_num` says where a row is).

How a month moves, for each table whose placement matters (`CALL_TABLES`: the CDRs
and their time-ordered copy; the daily summary holds deltas read with `sum()`, exact
wherever they are):

1. **copy**: on each shard that should hold rows it lacks, they are read from the
   other shards into a staging table there and attached to the month's partition
   (`ATTACH PARTITION … FROM`: no materialized view fires, so the daily summary,
   which already counted these calls where they were, does not count them again),
   every version verbatim. Only rows the shard does not already hold are copied, so
   a rerun after a crash copies nothing twice; a large month goes in slices of the
   calls' hash, so that the identities this anti-join sends stay bounded;
2. **check**: no row of the month sits on a wrong shard without its copy on the right
   one; otherwise nothing is deleted and the run fails;
3. **delete**: each shard deletes the month's rows that belong elsewhere (a mutation,
   waited for);
4. **settle**: each shard merges the month back into one part (sql/schema/015_settled.sql
   says why a page needs that);
5. **summary**: the daily summary of the month is rebuilt from the calls, per tenant
   (engine/summary.py: deltas up to the truth). Why: a call re-rated between adding the
   shard and this run had both versions shown by `FINAL`, and the re-rate's own summary
   rebuild counted both; now that the versions meet again the summary is made exact.
   Then the run checks that no call is on two shards.

Between 1 and 3 a moved call is on two shards, and a read through the Distributed
table shows it twice; so rebalance with readers and writers stopped, as a step of
adding a shard (README, "Adding a shard"). Nothing is lost at any point: a row is
deleted only after its copy was checked; and a run that dies is finished by running
it again.

**What must not run meanwhile is refused, on both sides** (not left to the operator):
a re-rate would write versions and rebuild summaries from calls counted twice, a
tiering run would move a month the copy is filling, a backup would save a moved call
on two shards, a scheduled report or an alert evaluation would count it twice. The run
holds the `rebalance` lease, then the tiering, backup and alerts leases
(engine/leases.py: a service's scheduled tiering, backup or alert evaluation waits for
it), and only then looks for a live job of those kinds (`EXCLUSIVE_JOBS`) and refuses
if there is one; scheduled exports and reports are not started meanwhile
(api/scheduler.py `run_due`: they stay due). Each of them, once its job is marked running, asks `refusal` and fails if a
rebalance holds its lease; an ingest asks before each file. Marking first and looking
second on both sides means that of two that start together, at least one sees the
other. (An ingest writes no job, so a file begun before the rebalance started is
finished: its calls land where their key sends them, but a month's summary rebuild
racing it can miscount its days (engine/summary.py, "known limit") until `cdrhouse
recalc refresh-summaries` rebuilds them; hence "stop ingest first" in the README.)

**Retiring a shard** is the same run: give it weight 0 in `remote_servers` (the
Distributed engine then sends it nothing), and every call on it is misplaced, so it
moves off. Its daily-summary rows, deltas that count wherever they are, move too
(`_drain_summary`, first, before any month's summary is rebuilt): copied into a
staging table on the first shard that takes inserts, swapped out of the retiring
shard's summary (`EXCHANGE TABLES`, atomic), then moved partition by partition
(`MOVE PARTITION`, atomic) into that shard's summary; a run that dies between two of
those steps is finished by the next, without counting a delta twice. Then the shard
holds nothing of the store and can leave `remote_servers`. (Not the home node: it
also holds the small tables.)

Sharded clusters only: a replicated cluster cannot be exercised here (no Keeper-backed
cluster runs in the tests), so it is refused rather than run untested.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cdrhouse.engine import cluster, jobs, leases, relayout, summary
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database
from cdrhouse.sql.months import first_day, last_day
from cdrhouse.sql.schema.topology import SHARDED

#: the tables whose rows must be where their sharding key sends them (every version of
#: a call on one shard); both are partitioned by month of `start_time`
CALL_TABLES = ("cdr_records", "cdr_records_by_time")
#: a partition waits here during a tiering run (tiering/archive.py); it must be empty
HOLD = "cdr_tiering_hold"
#: the staging table a shard receives its rows in, beside its local tables
STAGE = "cdr_rebalance_stage"
#: the daily summary (deltas, exact wherever they are), and the prefix of the tables a
#: retiring shard's rows wait in on their way to another shard (`<prefix>_from_<N>` on
#: the receiving node, `<prefix>_left_<N>` on the retiring one: `_drain_summary`)
SUMMARY = "cdr_daily_summary"
SUMMARY_STAGE = "cdr_rebalance_summary"
#: a row's identity across shards: its sort key and version (ReplacingMergeTree keeps
#: one row per sort key, the highest version)
IDENTITY = "tenant_id, customer_id, start_time, call_id, version"
#: at most this many of a receiving node's rows of a month per slice: the identities the
#: copy's anti-join sends to the shards (~100 bytes each) stay within a few hundred MB
SLICE_ROWS = 2_000_000

#: the leases' holder name while a rebalance runs, and how long they outlive a dead one
HOLDER = "cluster rebalance"
LEASE_SECONDS = 60.0
#: the jobs a rebalance does not run beside, nor they beside it (module docstring): the
#: kinds of engine/recalc.py, tiering/jobs.py, backup/ops.py and the scheduled exports
#: and reports of engine/schedules.py (a test keeps them equal)
EXCLUSIVE_JOBS = ("recalc", "tier-run", "tier-restore", "backup-run", "export")

Fault = Callable[[str], None]
Progress = Callable[[str, int, int], None]


class RebalanceError(Exception):
    """A rebalance that could not finish; what it did so far is safe, and running it
    again completes it."""


class RebalanceRefused(RebalanceError):
    """The store cannot be rebalanced as it is (one node, replicated, a tiering run
    unfinished); nothing was changed."""


def _no_fault(step: str) -> None:
    """Production: every step simply continues (tests crash the run here)."""


def _no_progress(what: str, done: int, total: int) -> None:
    """No progress display."""


@dataclass(frozen=True)
class Shard:
    num: int
    weight: int


@dataclass(frozen=True)
class Misplaced:
    """`rows` rows of `table`'s month `month` on shard `at` that belong on shard `to`."""
    table: str
    month: int
    at: int
    to: int
    rows: int


@dataclass
class Report:
    #: what was misplaced when the run started (empty: nothing to do)
    before: list[Misplaced] = field(default_factory=list)
    #: (table, month, shard, rows copied there)
    copied: list[tuple[str, int, int, int]] = field(default_factory=list)
    months: list[int] = field(default_factory=list)
    #: daily-summary rows moved off shards of weight 0 (retiring them)
    summary_rows_moved: int = 0

    @property
    def moved(self) -> int:
        """Rows of the calls table moved (each version counts; the copy's rows not)."""
        return sum(m.rows for m in self.before if m.table == CALL_TABLES[0])


def shard_of(shards: list[Shard], key: str) -> str:
    """SQL for the shard number the Distributed engine sends a row with sharding key
    `key` to: slot `key % total weight`, slots given to the shards in order, `weight`
    each (a shard of weight 0 gets none). Pure: the tests check it against where
    ClickHouse puts rows. (`modulo`, not `%`: clickhouse-connect formats a query
    without placeholders with Python's `%` when it is given parameters.)"""
    owners = [s for s in shards if s.weight > 0]
    if not owners:
        raise RebalanceRefused("no shard of the cluster has a weight above 0")
    if len(owners) == 1:
        return str(owners[0].num)
    total = sum(s.weight for s in owners)
    if all(s.weight == 1 for s in owners) and [s.num for s in owners] == list(
            range(owners[0].num, owners[0].num + len(owners))):
        return f"(modulo({key}, {total}) + {owners[0].num})"
    slot = f"modulo({key}, {total})"
    branches, upto = [], 0
    for s in owners[:-1]:
        upto += s.weight
        branches.append(f"{slot} < {upto}, {s.num}")
    return f"multiIf({', '.join(branches)}, {owners[-1].num})"


def shards(db: Database) -> list[Shard]:
    """The cluster's shards in `remote_servers` order, with their weights."""
    rows = db.rows("SELECT shard_num, any(shard_weight) FROM system.clusters WHERE cluster = "
                   "{c:String} GROUP BY shard_num ORDER BY shard_num",
                   {"c": cluster.topology(db).cluster})
    return [Shard(int(n), int(w)) for n, w in rows]


def _check_cluster(db: Database) -> None:
    topo = cluster.topology(db)
    if not topo.cluster:
        raise RebalanceRefused("the store is on one node (no --cluster): there is nothing "
                               "to rebalance")
    if topo.replicated:
        raise RebalanceRefused(
            f"cluster {topo.cluster} is replicated: rebalancing is only verified on sharded "
            "clusters; re-place a month with `cdrhouse tier run --month M` and `cdrhouse "
            "tier restore --month M` (README, \"Adding a shard\")")


def placement(db: Database, months: list[int] | None = None) -> list[Misplaced]:
    """The rows not on the shard their key names, per table, month and shard pair."""
    _check_cluster(db)
    out = []
    where = " AND toYYYYMM(start_time) IN {months:Array(UInt32)}" if months else ""
    for table in _moved(db):
        for month, at, to, rows in db.rows(
                f"SELECT toYYYYMM(start_time) AS m, _shard_num AS at, {table.target} "
                f"AS to, count() FROM {table.name} WHERE at != to{where} GROUP BY m, at, to "
                "ORDER BY m, at, to", {"months": months} if months else None):
            out.append(Misplaced(table.name, int(month), int(at), int(to), int(rows)))
    return out


@dataclass(frozen=True)
class _Moved:
    """One of `CALL_TABLES` as a run moves it: its name, its local table on each node,
    and the SQL of the shard its rows belong on (read from the cluster once per run)."""
    name: str
    local: str
    target: str


def _moved(db: Database) -> list[_Moved]:
    weights = shards(db)
    return [_Moved(t, cluster.local(db, t), shard_of(weights, SHARDED[t])) for t in CALL_TABLES]


def _missing_sql(table: _Moved, shard: int, select: str) -> str:
    """Rows of `table`'s month (parameter `month`) on other shards that belong on
    `shard` and that `shard` does not hold yet, read on `shard`'s node (the subquery
    reads its local table: GLOBAL, so that it is read there, not on each shard). Only
    the calls of one slice (parameters `slices`, `slice`: the call's hash modulo
    `slices`), so that the set of identities the subquery sends to the shards stays
    bounded however large the month (`SLICE_ROWS`)."""
    in_slice = (f"modulo({SHARDED[table.name]}, {{slices:UInt32}}) = {{slice:UInt32}} "
                "AND toYYYYMM(start_time) = {month:UInt32}")
    return (f"SELECT {select} FROM {table.name} WHERE {in_slice} "
            f"AND _shard_num != {shard} AND {table.target} = {shard} "
            f"AND ({IDENTITY}) GLOBAL NOT IN (SELECT {IDENTITY} "
            f"FROM {table.local} WHERE {in_slice})")


def _slices(node_db: Database, local: str, month: int) -> int:
    """How many slices the receiving node's month is read in: one per `SLICE_ROWS` of
    its rows (any count covers every call; it only bounds the anti-join's set)."""
    rows = int(node_db.scalar(f"SELECT count() FROM {local} WHERE toYYYYMM(start_time) = "
                              "{m:UInt32}", {"m": month}) or 0)
    return max(1, -(-rows // SLICE_ROWS))


def _lacking(node_db: Database, table: _Moved, shard: int, params: dict) -> int:
    """How many rows of one slice `shard` lacks (`_missing_sql`)."""
    return int(node_db.scalar(f"SELECT count() FROM ({_missing_sql(table, shard, '1')})",
                              params))


def _missing(node_db: Database, table: _Moved, month: int, shard: int) -> int:
    """How many rows `shard` lacks, over all slices."""
    slices = _slices(node_db, table.local, month)
    return sum(_lacking(node_db, table, shard, {"month": month, "slices": slices, "slice": j})
               for j in range(slices))


def _copy(node_db: Database, table: _Moved, month: int, shard: int) -> int:
    """Step 1 for one table, month and receiving shard: the rows it lacks, attached,
    slice by slice (each attach is whole: a crash between two leaves whole slices)."""
    slices = _slices(node_db, table.local, month)
    copied = 0
    for j in range(slices):
        params = {"month": month, "slices": slices, "slice": j}
        rows = _lacking(node_db, table, shard, params)
        if not rows:
            continue
        node_db.command(f"DROP TABLE IF EXISTS {STAGE} SYNC")
        node_db.command(f"CREATE TABLE {STAGE} AS {table.local}")
        try:
            node_db.command(f"INSERT INTO {STAGE} {_missing_sql(table, shard, '*')}",
                            params, settings={"optimize_on_insert": 0})
            node_db.command(f"ALTER TABLE {table.local} ATTACH PARTITION {int(month)} "
                            f"FROM {STAGE}")
        finally:
            node_db.command(f"DROP TABLE IF EXISTS {STAGE} SYNC")
        copied += rows
    return copied


def rebalance(db: Database, months: list[int] | None = None, *,
              progress: Progress = _no_progress, fault: Fault = _no_fault) -> Report:
    """Move every misplaced row of `months` (default: every month) to its shard (module
    docstring); returns what was misplaced and what was copied where.

    It holds the rebalance, tiering, backup and alerts leases while it runs
    (engine/leases.py), so that a `cdrhouse serve` does not start its scheduled tiering
    run (which moves partitions), backup (which would save a moved call on two shards)
    or alert evaluation meanwhile; if one of them, or a re-rate or a scheduled export,
    is running, the rebalance is refused (module docstring)."""
    _check_cluster(db)
    if db.table_exists(HOLD) and int(db.scalar(f"SELECT count() FROM {HOLD}") or 0):
        raise RebalanceRefused(f"a tiering run left a month in {HOLD}: finish it first "
                               "(`cdrhouse tier run`), then rebalance")

    def connect() -> Database:
        return Database(db.config, create=False)

    def under(kinds: tuple[str, ...]) -> Report:
        if not kinds:
            _refuse_busy(db)
            return _move(db, months, progress, fault)
        ran, report = leases.run_leased(connect, kinds[0], LEASE_SECONDS,
                                        lambda: under(kinds[1:]), holder=HOLDER)
        if not ran:
            holder = leases.state(db, kinds[0]).holder
            raise RebalanceRefused(f"the {kinds[0]} lease is held ({holder}): "
                                   "rebalance when it has finished")
        return report

    return under((leases.REBALANCE, leases.TIERING, leases.BACKUP, leases.ALERTS))


def running(db: Database) -> leases.LeaseState | None:
    """The lease of the rebalance moving rows now (its holder, since when), or None.
    Only a cluster can be rebalanced, so on one node this reads nothing."""
    if not db.config.cluster:
        return None
    lease = leases.state(db, leases.REBALANCE)
    return lease if lease.held else None


def describe(lease: leases.LeaseState) -> str:
    """A running rebalance, in words."""
    return (f"`cdrhouse cluster rebalance` is moving rows between shards ({lease.holder}, "
            f"since {lease.claimed_at:%Y-%m-%d %H:%M:%S} UTC)")


def refusal(db: Database) -> str | None:
    """Why a write that must not run beside a rebalance is refused now, or None. Callers
    ask once their own job is marked running (module docstring: "refused, on both
    sides")."""
    lease = running(db)
    return None if lease is None else f"{describe(lease)}; run this when it has finished"


def _refuse_busy(db: Database) -> None:
    """Refuse while a job of `EXCLUSIVE_JOBS` is running (its process alive): it was
    marked running before our leases were taken, so it may not have seen them."""
    busy = [j for kind in EXCLUSIVE_JOBS
            for j in ud.list_jobs(db, kind=kind, state="running", limit=1000)
            if jobs.is_alive(j.result, db)]
    if busy:
        named = ", ".join(f"{j.kind} job {j.job_id}" + (f" of tenant {j.tenant_id}"
                                                         if j.tenant_id else "")
                          for j in busy)
        raise RebalanceRefused(f"{named} is running: rebalance when it has finished "
                               "(`cdrhouse jobs`)")


def _move(db: Database, months: list[int] | None, progress: Progress,
          fault: Fault) -> Report:
    """The steps of the module docstring, under the leases."""
    nodes = {n.shard: n for n in cluster.nodes(db)}
    # first: the months' summary rebuilds below must see every delta that counts (a
    # stage a dead run left would otherwise be compensated for, then moved in again)
    summary_rows_moved = _drain_summary(db, nodes, progress, fault)
    report = Report(before=placement(db, months), summary_rows_moved=summary_rows_moved)
    report.months = sorted({m.month for m in report.before})
    tables = _moved(db)
    for i, month in enumerate(report.months):
        progress(f"month {month}: copy", i, len(report.months))
        for table in tables:
            receivers = sorted({m.to for m in report.before
                                if m.table == table.name and m.month == month})
            for shard in receivers:
                with cluster.open_node(db, nodes[shard], create=False) as node_db:
                    copied = _copy(node_db, table, month, shard)
                if copied:
                    report.copied.append((table.name, month, shard, copied))
        fault("copied")
        for table in tables:
            for shard, node in nodes.items():
                with cluster.open_node(db, node, create=False) as node_db:
                    left = _missing(node_db, table, month, shard)
                if left:
                    raise RebalanceError(
                        f"rebalance of {table.name} month {month}: {left} rows for shard "
                        f"{shard} are not there after the copy; nothing was deleted, run it "
                        "again")
        progress(f"month {month}: delete", i, len(report.months))
        for table in tables:
            for shard, node in nodes.items():
                with cluster.open_node(db, node, create=False) as node_db:
                    node_db.command(
                        f"ALTER TABLE {table.local} DELETE WHERE toYYYYMM(start_time) = "
                        f"{{month:UInt32}} AND {table.target} != {shard}",
                        {"month": month}, settings={"mutations_sync": 2})
        fault("deleted")
        for table in tables:
            relayout.settle_month(db, table.name, month)
        progress(f"month {month}: summary", i, len(report.months))
        for tenant in _tenants(db, month):
            summary.rebuild_range(db, tenant, first_day(month), last_day(month))
    left = placement(db, report.months) if report.months else []
    twice = _on_two_shards(db, report.months)
    if left or twice:
        raise RebalanceError(f"rebalance did not converge: {sum(m.rows for m in left)} rows "
                             f"still misplaced, {twice} calls on two shards; run it again")
    progress("done", len(report.months), len(report.months))
    return report


def _drain_summary(db: Database, nodes: dict[int, cluster.Node], progress: Progress,
                   fault: Fault = _no_fault) -> int:
    """Move the daily-summary rows off every shard of weight 0 onto the first shard with
    a weight (module docstring, "Retiring a shard"); returns how many rows moved.

    For a retiring shard N, with O the receiving node:

    1. N's rows are copied, verbatim, into `<SUMMARY_STAGE>_from_N` on O, and their
       sums compared with N's;
    2. on N an empty table `<SUMMARY_STAGE>_left_N` is created and swapped with N's
       summary (`EXCHANGE TABLES`, atomic): N's summary is now empty, and its old rows
       sit in `_left_N`, which nothing reads;
    3. the stage's partitions are moved into O's summary (`MOVE PARTITION`, atomic
       each) and the stage dropped; 4. `_left_N` is dropped.

    Whether step 2 happened is then a fact on N itself: `_left_N` exists and holds
    rows. So a run first settles what a dead run left (`_settle_summary_stages`): a
    stage whose shard did not swap yet is dropped (the rows are still in N's summary),
    a stage whose shard swapped is moved in. No delta is lost or counted twice, whatever
    was written or re-weighted in between."""
    weights = {s.num: s.weight for s in shards(db)}
    local = cluster.local(db, SUMMARY)
    _settle_summary_stages(db, nodes, local)
    owners = [n for n, w in weights.items() if w > 0]
    if not owners:
        return 0
    sums = "tuple(" + ", ".join(f"sum({c})" for c in summary.SUMS) + ")"
    moved = 0
    with cluster.open_node(db, nodes[owners[0]], create=False) as receiver:
        for shard in (n for n, w in weights.items() if w == 0):
            stage, left = f"{SUMMARY_STAGE}_from_{shard}", f"{SUMMARY_STAGE}_left_{shard}"
            with cluster.open_node(db, nodes[shard], create=False) as gone:
                waiting, total = gone.rows(f"SELECT count(), {sums} FROM {local}")[0]
                if not waiting:
                    continue
                progress(f"summary of shard {shard}", 0, 0)
                receiver.command(f"CREATE TABLE {stage} AS {local}")
                receiver.command(f"INSERT INTO {stage} SELECT * FROM {SUMMARY} "
                                 f"WHERE _shard_num = {shard}",
                                 settings={"optimize_on_insert": 0})   # rows verbatim
                staged = receiver.rows(f"SELECT {sums} FROM {stage}")[0][0]
                if staged != total:       # (sums: merges there may combine rows meanwhile)
                    receiver.command(f"DROP TABLE {stage} SYNC")
                    raise RebalanceError(f"copying the daily summary of shard {shard} "
                                         "gave other sums; nothing was moved, run it again")
                fault("summary staged")
                gone.command(f"CREATE TABLE {left} AS {local}")
                gone.command(f"EXCHANGE TABLES {local} AND {left}")
                fault("summary cleared")
                _move_stage(receiver, stage, local)
                gone.command(f"DROP TABLE {left} SYNC")
            moved += int(waiting)
    return moved


def _settle_summary_stages(db: Database, nodes: dict[int, cluster.Node], local: str) -> None:
    """Finish or undo what a dead `_drain_summary` left, by the facts on each node."""
    swapped: dict[int, bool] = {}
    for shard, node in nodes.items():
        with cluster.open_node(db, node, create=False) as here:
            left = f"{SUMMARY_STAGE}_left_{shard}"
            if here.table_exists(left):
                swapped[shard] = int(here.scalar(f"SELECT count() FROM {left}")) > 0
    for node in nodes.values():
        with cluster.open_node(db, node, create=False) as here:
            for (stage,) in here.rows(
                    "SELECT name FROM system.tables WHERE database = currentDatabase() "
                    "AND startsWith(name, {p:String})", {"p": f"{SUMMARY_STAGE}_from_"}):
                source = int(stage.rsplit("_", 1)[1])
                # a shard no longer in the cluster is read by no one: its stage holds
                # the only copy of its rows that still counts
                if swapped.get(source) or source not in nodes:
                    _move_stage(here, stage, local)
                else:
                    here.command(f"DROP TABLE {stage} SYNC")
    for shard in swapped:              # its rows are in a stage moved in, or still here
        with cluster.open_node(db, nodes[shard], create=False) as here:
            here.command(f"DROP TABLE {SUMMARY_STAGE}_left_{shard} SYNC")


def _move_stage(node_db: Database, stage: str, local: str) -> None:
    """Every partition of `stage` into `local` on the same node (atomic per partition),
    then the empty stage dropped."""
    for (partition,) in node_db.rows(f"SELECT DISTINCT _partition_id FROM {stage}"):
        node_db.command(f"ALTER TABLE {stage} MOVE PARTITION ID {{p:String}} TO TABLE "
                        f"{local}", {"p": partition})
    node_db.command(f"DROP TABLE {stage} SYNC")


def _tenants(db: Database, month: int) -> list[str]:
    """The tenants with calls or summary rows in `month`."""
    return [t for (t,) in db.rows(
        "SELECT DISTINCT tenant_id FROM (SELECT tenant_id FROM cdr_records WHERE "
        "toYYYYMM(start_time) = {m:UInt32} UNION ALL SELECT tenant_id FROM cdr_daily_summary "
        "WHERE toYYYYMM(day) = {m:UInt32}) ORDER BY tenant_id", {"m": month})]


def _on_two_shards(db: Database, months: list[int]) -> int:
    """Calls of `months` stored on more than one shard (0 after a rebalance)."""
    if not months:
        return 0
    return sum(int(db.scalar(
        f"SELECT count() FROM (SELECT tenant_id, call_id FROM {table} WHERE "
        "toYYYYMM(start_time) IN {months:Array(UInt32)} GROUP BY tenant_id, call_id "
        "HAVING uniqExact(_shard_num) > 1)", {"months": months})) for table in CALL_TABLES)


__all__ = ["CALL_TABLES", "Misplaced", "RebalanceError", "RebalanceRefused", "Report", "Shard",
           "placement", "rebalance", "shard_of", "shards"]
