"""The tiering job: archive eligible monthly partitions, verified, then drop them.

For each eligible month, for each tenant with rows in it:

    export    ClickHouse writes the tenant's rows (deduplicated, FINAL) as zstd
              Parquet, sorted by (customer_id, start_time, call_id), straight into
              the store under `_staging/<run>/…` (split into parts of bounded size)
    verify    ClickHouse reads the staged files back *from the store* and computes
              their row count and checksum; they must equal the source's
    publish   the staged files are copied to fresh part numbers under
              `cdrs/tenant=T/month=M/`, then the manifest is written (the commit
              point for readers), then older parts of the month and the staging
              files are deleted, and `warm_months` says `verified`

When every tenant with rows in the month is verified and the hot rows still
match the manifests, the partition is moved (atomically) to a holding table,
checked once more against the manifests — a row that arrived after the export
is put back into the hot table, not lost — and dropped; `warm_months` says
`archived`.

Then the run merges each hot month other than the current one that holds an unmerged
part and was not written for `Policy.settle_idle_hours` into one part (`settle_idle`;
sql/schema/015_settled.sql says why), and a restore merges the month it restored.

Crash safety comes from the order: nothing is deleted before its replacement is
verified and committed, every step is repeatable, and a rerun starts by
finishing what a dead run left (a partition in the holding table, verified
months whose hot rows are gone, staging files). New parts never overwrite the
parts a manifest points at, so a crash halfway through a re-archive (late rows
for an archived month) loses nothing either.

`fault` is called with the name of each step just after it completes; tests use
it to crash the job at every step and prove that a rerun converges. Nothing
outside a test can make it crash: the default is `default_fault`, a no-op, which
only test code replaces in its own process (tests/crashing_cli.py runs the CLI
with a hook that kills it); no environment variable or option reaches it.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from cdrhouse.engine import cluster, relayout, summary
from cdrhouse.engine.db import Database
from cdrhouse.sql.schema import migrations
from cdrhouse.sql.schema.topology import SHARD_PATH, distributed_ddl
from cdrhouse.tiering import layout, verify, warm
from cdrhouse.tiering.layout import FileEntry, Manifest
from cdrhouse.tiering.lock import run_lock
from cdrhouse.sql.months import first_day, last_day
from cdrhouse.tiering.policy import Policy, first_hot_month, is_eligible, month_of
from cdrhouse.tiering.store import ArchiveError, ObjectStore, sql_string
from cdrhouse.tiering.verify import Fingerprint

HOT = "cdr_records"
#: the time-ordered copy of the hot table (sql/schema/016_by_time.sql): a month leaves
#: it when it leaves the hot table; rows written back to the hot table reach it again
#: through its materialized view
BY_TIME = "cdr_records_by_time"
#: where a partition waits between leaving the hot table and being dropped
HOLD = "cdr_tiering_hold"
#: the source of rows the drop puts back into the hot table (engine/summary.py)
RETURNED_SOURCE = "maint:returned"
STEPS = ("exported", "verified", "published", "manifest", "recorded", "moved", "dropped")

Fault = Callable[[str], None]
Progress = Callable[[str, int, int], None]


def _no_fault(step: str) -> None:
    """Production: every step simply continues."""


#: what a `Tiering` without an explicit `fault` calls after each step. Only tests assign
#: it, in their own process (tests/crashing_cli.py); production code never does.
default_fault: Fault = _no_fault


@dataclass
class TenantMonth:
    tenant: str
    month: int
    rows: int
    bytes: int = 0


@dataclass
class MonthPlan:
    month: int
    eligible: bool
    rows: int
    bytes_on_disk: int
    tenants: list[TenantMonth]
    reason: str = ""


@dataclass
class RunReport:
    run_id: str
    dry_run: bool
    plan: list[MonthPlan] = field(default_factory=list)
    archived: list[Manifest] = field(default_factory=list)
    unchanged: list[tuple[str, int]] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    #: hot months merged into one part (settle_idle)
    merged: list[int] = field(default_factory=list)
    returned_rows: int = 0
    skipped: list[str] = field(default_factory=list)
    #: the job that recorded this run, when it ran as one (tiering/jobs.py)
    job_id: str = ""

    @property
    def rows(self) -> int:
        return sum(m.rows for m in self.archived)

    @property
    def bytes(self) -> int:
        return sum(m.bytes for m in self.archived)


def _month_where(alias: str = "") -> str:
    p = f"{alias}." if alias else ""
    return f"{p}tenant_id = {{tenant:String}} AND toYYYYMM({p}start_time) = {{month:UInt32}}"


def hot_months(db: Database, table: str = HOT) -> dict[int, dict[str, int]]:
    """month → tenant → rows in the hot table (physical rows, before deduplication)."""
    found: dict[int, dict[str, int]] = {}
    for month, tenant, rows in db.rows(
            f"SELECT toYYYYMM(start_time) AS m, tenant_id, count() FROM {table} "
            "GROUP BY m, tenant_id ORDER BY m, tenant_id"):
        found.setdefault(int(month), {})[tenant] = int(rows)
    return found


def partition_bytes(db: Database, table: str = HOT) -> dict[int, int]:
    """month → bytes on disk (of every shard's local table on a cluster)."""
    return {int(p): int(b) for p, b in db.rows(
        f"SELECT partition, sum(bytes_on_disk) FROM {cluster.parts_table(db)} WHERE active "
        "AND database = {db:String} AND table = {t:String} GROUP BY partition",
        {"t": cluster.local(db, table), "db": db.name})}


def plan(db: Database, policy: Policy, today: dt.date, months: list[int] | None = None,
         tenants: list[str] | None = None) -> list[MonthPlan]:
    """What a run would move: every hot month, eligible or not, with its size."""
    hot = hot_months(db)
    sizes = partition_bytes(db)
    keep_from = first_hot_month(today, policy.keep_months)
    plans = []
    for month in sorted(set(hot) | set(months or [])):
        if months and month not in months:
            continue
        per_tenant = hot.get(month, {})
        chosen = [TenantMonth(t, m, r) for t, r in per_tenant.items() for m in [month]
                  if not tenants or t in tenants]
        total = sum(per_tenant.values())
        for tm in chosen:
            tm.bytes = int(sizes.get(month, 0) * tm.rows / total) if total else 0
        eligible = is_eligible(month, today, policy.keep_months)
        reason = "" if eligible else (
            f"stays hot: the policy keeps {policy.keep_months} full months, "
            f"{layout.month_label(keep_from)} and later")
        if not per_tenant:
            reason = reason or "no hot rows"
        plans.append(MonthPlan(month, eligible, sum(t.rows for t in chosen),
                               sizes.get(month, 0), chosen, reason))
    return plans


class Tiering:
    """One store and one archive; `run` and `restore` are the operations."""

    def __init__(self, db: Database, store: ObjectStore, policy: Policy | None = None, *,
                 fault: Fault | None = None, progress: Progress | None = None) -> None:
        self.db = db
        self.store = store
        self.policy = policy or Policy()
        self.fault = fault or default_fault
        self.progress = progress or (lambda what, done, total: None)
        self._columns: list[tuple[str, str]] | None = None

    # -- helpers ------------------------------------------------------------------
    @property
    def columns(self) -> list[tuple[str, str]]:
        if self._columns is None:
            self._columns = verify.hot_columns(self.db, HOT)
        return self._columns

    def _col_list(self, columns: list[tuple[str, str]] | None = None) -> str:
        return ", ".join(f"`{n}`" for n, _ in (columns or self.columns))

    def _hot_source(self, table: str = HOT) -> str:
        return (f"(SELECT {self._col_list()} FROM {table} FINAL WHERE {_month_where()})")

    def _archive_source(self, manifest: Manifest) -> str:
        return self.store.clickhouse_source(self.db, manifest.keys)

    def _merged_source(self, manifest: Manifest) -> str:
        """Hot rows plus the archived ones, one row per call (highest version wins):
        what a month holds when late rows arrived after it was archived."""
        cols = self._col_list()
        archived = {n for n, _ in manifest.columns}
        arch_cols = ", ".join(f"`{n}`" if n in archived else
                              f"defaultValueOfTypeName({sql_string(t)}) AS `{n}`" for n, t in self.columns)
        return (f"(SELECT {cols} FROM (SELECT {cols} FROM {HOT} FINAL WHERE {_month_where()} "
                f"UNION ALL SELECT {arch_cols} FROM {self._archive_source(manifest)}) "
                "ORDER BY version DESC LIMIT 1 BY customer_id, start_time, call_id)")

    def _fp(self, source: str, tenant: str, month: int) -> Fingerprint:
        return verify.fingerprint(self.db, source, self.columns,
                                  {"tenant": tenant, "month": month})

    def _params(self, tenant: str, month: int) -> dict:
        return {"tenant": tenant, "month": month}

    # -- the run ------------------------------------------------------------------
    def run(self, *, today: dt.date | None = None, months: list[int] | None = None,
            tenants: list[str] | None = None, dry_run: bool = False) -> RunReport:
        today = today or dt.datetime.now(dt.UTC).date()
        report = RunReport(uuid.uuid4().hex[:12], dry_run)
        if dry_run:
            report.plan = plan(self.db, self.policy, today, months, tenants)
            return report
        check = getattr(self.store, "check", None)
        if check:
            check()
        with run_lock(self.store) as held:
            self.recover()
            report.plan = plan(self.db, self.policy, today, months, tenants)
            todo = [p for p in report.plan if p.eligible and p.tenants]
            total = sum(len(p.tenants) for p in todo) + len(todo)
            done = 0
            for month_plan in todo:
                # what the partition held before any tenant of it was read; see drop_month
                before = None if tenants else self._partition_sig(HOT, month_plan.month)
                for tm in month_plan.tenants:
                    self.progress(f"{tm.tenant} {layout.month_label(tm.month)}", done, total)
                    manifest = self.archive_tenant_month(tm.tenant, tm.month, report.run_id)
                    if manifest is None:
                        report.unchanged.append((tm.tenant, tm.month))
                    else:
                        report.archived.append(manifest)
                    done += 1
                self.progress(f"drop {layout.month_label(month_plan.month)}", done, total)
                held.ensure(f"dropping month {month_plan.month} from the hot store")
                why_not = self.drop_month(month_plan.month, report, before)
                if why_not:
                    report.skipped.append(why_not)
                else:
                    report.dropped.append(month_plan.month)
                done += 1
            report.merged = self.settle_idle(today)
            self.progress("done", total, total)
            warm.write_index(self.store)
        return report

    def settle_idle(self, today: dt.date) -> list[int]:
        """Merge into one part each hot month, the current one excepted, that holds an
        unmerged part and had no write for `policy.settle_idle_hours`; the months merged.

        Why: every read uses FINAL, which merges an unmerged month on every read and
        costs nothing on a month that is one merged part (015_settled.sql). ClickHouse
        merges an idle month of several parts by itself, never a month that is *one*
        unmerged part: what a backfill leaves when one insert wrote the month. Not on a
        replicated cluster, whose replicas merge as usual (as in 015)."""
        topo = cluster.topology(self.db)
        if topo.replicated:
            return []
        per_node = ", getMacro('shard'), getMacro('replica')" if topo.cluster else ""
        months = sorted({int(p) for (p,) in self.db.rows(
            f"SELECT partition FROM {cluster.parts_table(self.db)} WHERE active "
            "AND database = {db:String} AND table = {t:String} "
            f"GROUP BY partition{per_node} HAVING min(level) = 0 "
            "AND max(modification_time) <= now() - toIntervalHour({h:UInt32})",
            {"db": self.db.name, "t": cluster.local(self.db, HOT),
             "h": self.policy.settle_idle_hours})} - {month_of(today)})
        for month in months:
            self.progress(f"merge {layout.month_label(month)}", 0, 0)
            self._settle(month)
        return months

    def archive_tenant_month(self, tenant: str, month: int, run_id: str) -> Manifest | None:
        """Archive one tenant's rows of one month; None if the archive already holds
        exactly them (a rerun, or a month restored and now tiered again)."""
        params = self._params(tenant, month)
        previous = warm.read_manifest(self.store, tenant, month)
        state = warm.warm_month(self.db, tenant, month)
        merge = previous is not None and state is not None and state.state == "archived"
        source = self._merged_source(previous) if merge else self._hot_source()
        ranges, expected = self._plan_parts(source, params)
        if previous and (previous.rows, previous.checksum) == (expected.rows, expected.checksum) \
                and self._files_present(previous):
            if state is None or state.state != "verified":
                warm.record(self.db, previous, "verified")
            return None
        if expected.rows == 0:
            return None

        # export, into staging
        staged = [layout.staging_key(run_id, tenant, month, n) for n in range(len(ranges))]
        self.store.prepare_write(staged)
        for key, where in zip(staged, ranges):
            self.db.command(
                f"INSERT INTO FUNCTION {self.store.clickhouse_source(self.db, [key])} "
                f"SELECT {self._export_list()} FROM {source} WHERE {where} "
                "ORDER BY customer_id, start_time, call_id",
                params, settings=self._export_settings())
        self.fault("exported")

        # verify what the store holds, read back by ClickHouse
        got = verify.per_file(self.db, self.store.clickhouse_source(self.db, staged),
                              self.columns)
        total = verify.combine(list(got.values()))
        if (total.rows, total.checksum) != (expected.rows, expected.checksum):
            for key in staged:
                self.store.delete(key)
            raise ArchiveError(
                f"verification failed for tenant {tenant} month {month}: the source has "
                f"{expected}, the archive files read back have {total}; nothing was "
                "dropped, the staged files were removed")
        self.fault("verified")

        # publish under fresh part numbers, then commit with the manifest
        first = self._next_part_number(tenant, month)
        entries = []
        for i, key in enumerate(staged):
            final = layout.part_key(tenant, month, first + i)
            self.store.copy(key, final)
            info = self.store.head(final)
            staged_info = self.store.head(key)
            if info is None or staged_info is None or info.size != staged_info.size:
                raise ArchiveError(f"copying {key} to {final} in {self.store.location} "
                                   "did not produce the same object; rerun the job")
            fp = got[key.rsplit("/", 1)[1]]
            entries.append(FileEntry(final, fp.rows, info.size, fp.checksum))
        self.fault("published")
        manifest = Manifest(
            tenant=tenant, month=month, rows=total.rows, bytes=sum(e.bytes for e in entries),
            checksum=total.checksum, files=tuple(entries), columns=tuple(self.columns),
            schema_version=migrations()[-1].version, run_id=run_id,
            archived_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        self.store.put_bytes(layout.manifest_key(tenant, month), manifest.to_json())
        self.fault("manifest")
        keep = set(manifest.keys) | {layout.manifest_key(tenant, month)}
        for obj in self.store.list(layout.month_prefix(tenant, month)):
            if obj.key not in keep:
                self.store.delete(obj.key)
        for key in staged:
            self.store.delete(key)
        # a merge re-archived rows whose partition is already gone: still archived
        warm.record(self.db, manifest, "verified")
        self.fault("recorded")
        return manifest

    def _export_list(self) -> str:
        """The columns as written to Parquet: enums as their names (UTF-8 strings), so
        any reader gets 'ANSWERED', not a number or untyped bytes."""
        return ", ".join(f"toString(`{n}`) AS `{n}`" if t.startswith("Enum") else f"`{n}`"
                         for n, t in self.columns)

    def _export_settings(self) -> dict:
        return {"output_format_parquet_compression_method": "zstd",
                "output_format_parquet_row_group_size": self.policy.row_group_rows,
                "s3_truncate_on_insert": 1, "engine_file_truncate_on_insert": 1,
                "output_format_parquet_write_page_index": 1,
                # bloom filters on every column cost ~14 % of the file (measured);
                # sorted row groups with min/max statistics already prune by
                # customer and time
                "output_format_parquet_write_bloom_filter": 0}

    def _plan_parts(self, source: str, params: dict) -> tuple[list[str], Fingerprint]:
        """One pass over the source: its fingerprint, and its split into parts of at
        most `max_part_rows` rows along the sort order, by (customer, day) — each part
        a contiguous range, so readers can skip whole files by customer."""
        units = self.db.rows(
            f"SELECT customer_id, toDate(start_time) AS d, count(), "
            f"toString(sum({verify.row_hash(self.columns)})) FROM {source} "
            "GROUP BY customer_id, d ORDER BY customer_id, d", params)
        total = verify.combine([Fingerprint(int(n), c) for _, _, n, c in units])
        ranges, start, rows = [], None, 0
        for i, (customer, day, n, _) in enumerate(units):
            if start is None:
                start = (customer, day)
            rows += int(n)
            last = i == len(units) - 1
            if last or rows + int(units[i + 1][2]) > self.policy.max_part_rows:
                ranges.append(f"(customer_id, toDate(start_time)) BETWEEN "
                              f"({int(start[0])}, toDate('{start[1]}')) AND "
                              f"({int(customer)}, toDate('{day}'))")
                start, rows = None, 0
        return ranges or ["1"], total

    def _next_part_number(self, tenant: str, month: int) -> int:
        numbers = [int(m.group(1)) for obj in self.store.list(layout.month_prefix(tenant, month))
                   if (m := re.search(r"/part-(\d+)\.parquet$", obj.key))]
        return max(numbers) + 1 if numbers else 0

    def _files_present(self, manifest: Manifest) -> bool:
        for entry in manifest.files:
            info = self.store.head(entry.key)
            if info is None or info.size != entry.bytes:
                return False
        return True

    # -- dropping a month ---------------------------------------------------------
    def _partition_sig(self, table: str, month: int) -> tuple[int, int, int]:
        """(rows, highest block number, highest data version) of a partition: an insert
        raises the block number, a mutation the data version, so an unchanged
        signature means nothing was written to the partition in between."""
        # on a cluster, per node (block numbers are each node's own), folded into one value
        per_node = self.db.rows(
            "SELECT getMacro('shard') AS s, getMacro('replica') AS r, sum(rows), "
            f"max(max_block_number), max(data_version) FROM {cluster.parts_table(self.db)} "
            "WHERE active AND database = {db:String} AND table = {t:String} "
            "AND partition = {p:String} GROUP BY s, r ORDER BY s, r"
            if cluster.topology(self.db).cluster else
            "SELECT '', '', sum(rows), max(max_block_number), max(data_version) "
            "FROM system.parts WHERE active AND database = {db:String} AND table = {t:String} "
            "AND partition = {p:String}",
            {"t": cluster.local(self.db, table), "p": str(month), "db": self.db.name})
        rows = sum(int(r[2] or 0) for r in per_node)
        if len(per_node) == 1:
            return rows, int(per_node[0][3] or 0), int(per_node[0][4] or 0)
        blocks = repr([(r[0], r[1], int(r[3] or 0)) for r in per_node])
        versions = repr([(r[0], r[1], int(r[4] or 0)) for r in per_node])
        return rows, zlib.crc32(blocks.encode()), zlib.crc32(versions.encode())

    def drop_month(self, month: int, report: RunReport | None = None,
                   before: tuple[int, int, int] | None = None) -> str:
        """Drop the month's hot partition if every tenant in it is archived; returns
        why not, or '' when dropped.

        `before` is the partition's signature from before this run read any of its
        tenants. If it has not changed, and the moved partition has exactly its rows,
        nothing was written since the archive was made from it, and the check of
        the held rows against the manifests (a full pass) can be skipped."""
        tenants = hot_months(self.db).get(month, {})
        manifests = {}
        for tenant in tenants:
            manifest = warm.read_manifest(self.store, tenant, month)
            state = warm.warm_month(self.db, tenant, month)
            if manifest is None or state is None or state.state != "verified":
                return (f"month {month} kept hot: tenant {tenant} is not archived yet "
                        "(run without --tenant to archive every tenant)")
            # rows that changed or arrived since the export are caught after the move,
            # in the holding table, and go back to the hot table (_finish_drop)
            manifests[tenant] = manifest
        if not tenants:
            return ""
        unchanged = before is not None and self._partition_sig(HOT, month) == before
        self._ensure_hold()
        self._move_to_hold(month)
        self.fault("moved")
        trusted = unchanged and self._partition_sig(HOLD, month)[0] == before[0]
        returned = self._finish_drop(month, manifests, trusted)
        if report is not None:
            report.returned_rows += returned
        self.fault("dropped")
        return ""

    def _ensure_hold(self) -> None:
        """The holding table has exactly the hot table's structure (a precondition of
        MOVE PARTITION); it is recreated when empty, so schema changes carry over."""
        if self.db.table_exists(HOLD):
            if int(self.db.scalar(f"SELECT count() FROM {HOLD}")):
                return
            if cluster.topology(self.db).cluster:
                self._drop_cluster_hold()
            else:
                self.db.command(f"DROP TABLE {HOLD} SYNC")
        if not cluster.topology(self.db).cluster:
            self.db.command(f"CREATE TABLE {HOLD} AS {HOT}")
            return
        # on a cluster: a local holding table beside each shard's local hot table
        # (MOVE PARTITION works between local tables), a Distributed one in front
        topo = cluster.topology(self.db)
        engine = ""
        if topo.replicated:
            # its own Keeper path: CREATE … AS would copy the hot table's engine arguments
            # (macros possibly expanded to the hot table's path); MOVE PARTITION needs the
            # same partition and sort keys, given here from the hot table's
            pk, sk = self.db.rows(
                "SELECT partition_key, sorting_key FROM system.tables WHERE database = "
                "{db:String} AND name = {t:String}",
                {"db": self.db.name, "t": cluster.local(self.db, HOT)})[0]
            engine = (f" ENGINE = ReplicatedReplacingMergeTree('{SHARD_PATH}', '{{replica}}', "
                      f"version) PARTITION BY {pk} ORDER BY ({sk})")
        cluster.each_node(self.db, f"CREATE TABLE IF NOT EXISTS {cluster.local(self.db, HOLD)}"
                                   f"{{on_cluster}} AS {cluster.local(self.db, HOT)}{engine}")
        cluster.each_node(self.db, distributed_ddl(HOLD, topo, self.db.name))

    def _drop_cluster_hold(self) -> None:
        for name in (HOLD, cluster.local(self.db, HOLD)):
            cluster.each_node(self.db, f"DROP TABLE IF EXISTS {name}{{on_cluster}} SYNC")

    def _move_to_hold(self, month: int) -> None:
        """The month's partition from the hot table to the holding table: one atomic
        move on one node; on a cluster one per shard (each shard's local tables), so a
        shard failing halfway leaves the month partly held, which `recover` completes."""
        if not cluster.topology(self.db).cluster:
            self.db.command(f"ALTER TABLE {HOT} MOVE PARTITION {month} TO TABLE {HOLD}")
            return
        cluster.each_node(self.db, f"ALTER TABLE {cluster.local(self.db, HOT)}{{on_cluster}} "
                                   f"MOVE PARTITION {month} TO TABLE "
                                   f"{cluster.local(self.db, HOLD)}")

    def _finish_drop(self, month: int, manifests: dict[str, Manifest],
                     trusted: bool = False) -> int:
        """Check the held partition against the manifests (unless `trusted`: see
        drop_month), return any row the archive lacks to the hot table, drop the
        partition, record `archived`."""
        returned = 0
        self._drop_by_time(month)
        held = hot_months(self.db, HOLD).get(month, {})
        for tenant in held:
            if trusted and tenant in manifests:
                continue
            manifest = manifests.get(tenant) or warm.read_manifest(self.store, tenant, month)
            if manifest is None:  # a tenant never archived: all of it goes back
                missing = f"SELECT {self._col_list()} FROM {HOLD} WHERE {_month_where()}"
            else:
                missing = self._unarchived_sql(HOLD, manifest)
                if not self._unarchived_rows(HOLD, manifest):
                    continue
            # rows that arrived after the export: back to the hot table, not lost
            params = self._params(tenant, month)
            count = int(self.db.scalar(f"SELECT count() FROM ({missing})", params))
            if count:
                # already counted in the daily summary when they were ingested: a
                # 'maint:' source keeps the summary's view from counting them again
                self.db.command(f"INSERT INTO {HOT} ({self._col_list()}) SELECT * REPLACE "
                                f"('{RETURNED_SOURCE}' AS source) FROM ({missing})", params)
                returned += count
        cluster.each_node(self.db, f"ALTER TABLE {cluster.local(self.db, HOLD)}{{on_cluster}} "
                                   f"DROP PARTITION {month}")
        for tenant, manifest in manifests.items():
            warm.record(self.db, manifest, "archived")
        for tenant in held:
            if tenant not in manifests:
                manifest = warm.read_manifest(self.store, tenant, month)
                if manifest:
                    warm.record(self.db, manifest, "archived")
        return returned

    def _drop_by_time(self, month: int) -> None:
        """The month leaves the time-ordered copy too (016_by_time.sql), once it has left
        the hot table. Before the rows that go back are returned (they reach the copy
        again through its view); and whatever the hot table got for the month since the
        move (a late write, after the copy's partition was dropped or before) is copied
        again, so the copy never lacks a hot row. A rerun after a crash does the same:
        the same rows."""
        cluster.each_node(self.db, f"ALTER TABLE {cluster.local(self.db, BY_TIME)}{{on_cluster}} "
                                   f"DROP PARTITION {int(month)}")
        self.db.command(f"INSERT INTO {BY_TIME} SETTINGS distributed_foreground_insert = 1 "
                        f"SELECT * FROM {HOT} WHERE toYYYYMM(start_time) = {{month:UInt32}}",
                        {"month": int(month)})

    def _unarchived_sql(self, table: str, manifest: Manifest) -> str:
        """The rows of `table` (deduplicated) that the archive does not hold, in this
        version or a newer one."""
        return (f"SELECT {self._col_list()} FROM {table} FINAL WHERE {_month_where()} AND "
                "(customer_id, start_time, call_id, version) NOT IN (SELECT customer_id, "
                f"start_time, call_id, version FROM {self._archive_source(manifest)})")

    def _unarchived_rows(self, table: str, manifest: Manifest) -> bool:
        """Does `table` hold a row of the tenant-month the archive lacks? Fast path:
        equal fingerprints; otherwise an anti-join against the archived keys."""
        params = self._params(manifest.tenant, manifest.month)
        fp = self._fp(self._hot_source(table), manifest.tenant, manifest.month)
        if (fp.rows, fp.checksum) == (manifest.rows, manifest.checksum):
            return False
        return int(self.db.scalar(f"SELECT count() FROM ({self._unarchived_sql(table, manifest)})",
                                  params)) > 0

    def recover(self) -> None:
        """Finish what a dead run left: a partition in the holding table, verified
        months whose hot rows are already gone, staging files."""
        if self.db.table_exists(HOLD):
            for month in sorted(hot_months(self.db, HOLD)):
                if cluster.topology(self.db).cluster:
                    # a run that died between the shards' moves: the month was fully
                    # archived (drop_month checked), so finish moving it on every shard
                    # (rows newer than the archive go back to the hot table below)
                    self._move_to_hold(month)
                self._finish_drop(month, {})
        hot = hot_months(self.db)
        for w in warm.warm_months(self.db, states=("verified",)):
            if not hot.get(w.month, {}).get(w.tenant):
                manifest = warm.read_manifest(self.store, w.tenant, w.month)
                if manifest:
                    warm.record(self.db, manifest, "archived")
        for obj in self.store.list(layout.staging_prefix()):
            self.store.delete(obj.key)

    # -- restore -------------------------------------------------------------------
    def restore(self, month: int, tenants: list[str] | None = None) -> list[tuple[str, int, str]]:
        """Put archived months back into the hot table, verified. Idempotent: a month
        already hot is left as it is. Returns (tenant, rows, what happened)."""
        with run_lock(self.store, "tier restore"):
            self.recover()
            if tenants:
                chosen = tenants
            else:
                chosen = sorted({m.tenant for m in warm.all_manifests(self.store)
                                 if m.month == month})
            if not chosen:
                raise ArchiveError(f"nothing archived for month {month} in {self.store.location}")
            done = []
            for i, tenant in enumerate(chosen):
                self.progress(f"restore {tenant} {layout.month_label(month)}", i, len(chosen))
                done.append(self._restore_one(tenant, month))
            if any(what == "restored" for _, _, what in done):
                self.progress(f"merge {layout.month_label(month)}", len(chosen), len(chosen))
                self._settle(month)
            self.progress("done", len(chosen), len(chosen))
            return done

    def _settle(self, month: int) -> None:
        """Merge a hot month into one part on each node (sql/schema/015_settled.sql says
        why), for `settle_idle` and a restore: a month restored into an empty partition
        is one unmerged part, which ClickHouse never merges on its own, so every FINAL
        read of it would merge it again. A node where it is one merged part already
        skips it. Not on a replicated cluster, whose replicas merge as usual (as in 015)."""
        if cluster.topology(self.db).replicated:
            return
        for table in (HOT, BY_TIME):        # the copy got the same writes
            relayout.settle_month(self.db, table, month)

    def _restore_one(self, tenant: str, month: int) -> tuple[str, int, str]:
        manifest = warm.read_manifest(self.store, tenant, month)
        if manifest is None:
            raise ArchiveError(f"tenant {tenant} has no archive for month {month} in "
                               f"{self.store.location}")
        if not self._files_present(manifest):
            raise ArchiveError(f"the archive of tenant {tenant} month {month} is incomplete "
                               f"in {self.store.location} (a file named by its manifest is "
                               "missing or has the wrong size); nothing was restored")
        params = self._params(tenant, month)
        state = warm.warm_month(self.db, tenant, month)
        if self._covered(manifest, params):
            if state is None or state.state == "archived":
                warm.record(self.db, manifest, "restored")
            return tenant, manifest.rows, "already hot"
        names = {n for n, _ in manifest.columns}
        cols = ", ".join(f"`{n}`" for n, _ in self.columns if n in names)
        self.db.command(f"INSERT INTO {HOT} ({cols}) SELECT {cols} FROM "
                        f"{self._archive_source(manifest)}",
                        settings={"optimize_on_insert": 0})
        if not self._covered(manifest, params):
            raise ArchiveError(f"restore of tenant {tenant} month {month} could not be "
                               "verified: the hot table does not hold every archived row; "
                               "rerun the restore")
        # the summary kept the month while it was archived, and the restored rows were
        # just counted again: rebuild its days from the (now complete) hot table
        summary.rebuild_range(self.db, tenant, first_day(month), last_day(month))
        warm.record(self.db, manifest, "restored")
        return tenant, manifest.rows, "restored"

    def _covered(self, manifest: Manifest, params: dict) -> bool:
        """Does the hot table hold every archived row (or a newer version of it)?"""
        fp = self._fp(self._hot_source(), manifest.tenant, manifest.month)
        if (fp.rows, fp.checksum) == (manifest.rows, manifest.checksum):
            return True
        if fp.rows < manifest.rows:
            return False
        missing = int(self.db.scalar(
            f"SELECT count() FROM {self._archive_source(manifest)} AS a LEFT ANTI JOIN "
            f"(SELECT customer_id, start_time, call_id, version FROM {HOT} FINAL WHERE "
            f"{_month_where()}) AS h ON a.customer_id = h.customer_id AND "
            "a.start_time = h.start_time AND a.call_id = h.call_id AND h.version >= a.version",
            params))
        return missing == 0
