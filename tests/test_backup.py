"""Backups and restores of the store (issue 20) with ClickHouse's own BACKUP/RESTORE.

Everything is real: the embedded engine (and its HTTP interface), `rclone serve s3`
(which checks credentials) and directories. A restore into a fresh data directory
runs in a separate process — the CLI, as an operator runs it — because the embedded
engine holds one data directory per process; the restored store is then read by
another process, and served.

Equality is checked independently of the backup code: every table of both stores
is read sorted (`ORDER BY ALL`, FINAL where the engine merges rows) and hashed in
Python (`DUMP` below), not with the fingerprints the backup module records.

Kept quick on purpose (the suite has a time budget): the stores are small (what is
proven does not depend on their size), one store's chains of backups (in a directory
and on S3) are made once per module and damaged only in copies, ClickHouse's ASYNC operations are polled often
(`ops.POLL_SECONDS`), and CLI commands whose process is not the point run through the
same entry point in this process or several in one process (tests/cli_inproc.py); the
restore into a fresh data directory, the kill and the crash stay real processes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import pytest

from bytime import assert_copy_exact
from ports import free_port
from cdrhouse.backup import catalog, jobs, ops
from cdrhouse.backup.catalog import BackupRecord, VerifyRecord
from cdrhouse.backup.location import (BackupConfig, BackupError, Location, default_url,
                                      open_location)
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import generate, keys, ledger, userdata
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.tiering.store import ArchiveConfig, ArchiveError, LocalStore, S3Store

END = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=1)

#: An independent dump of a database: per table, the row count and a SHA-256 of its
#: rows sorted, as text. Run in this process and, as source, in a subprocess.
DUMP = r'''
import hashlib

def dump(client, database):
    out = {}
    for name, engine in client.query(
            "SELECT name, engine FROM system.tables WHERE database = {d:String} "
            "AND engine LIKE '%MergeTree'", parameters={"d": database}).result_rows:
        final = "" if engine == "MergeTree" else " FINAL"
        raw = client.raw_query(f"SELECT * FROM `{database}`.`{name}`{final} ORDER BY ALL",
                               fmt="TabSeparated")
        out[name] = [raw.count(b"\n"), hashlib.sha256(raw).hexdigest()]
    return out
'''
_ns: dict = {}
exec(DUMP, _ns)
dump = _ns["dump"]


#: written by the backup machinery itself after its own snapshot, so they differ
#: from the backup by construction (checked separately)
BOOKKEEPING = {"jobs", "backups"}

#: the generated calls' tenants: one, as what is backed up and restored does not depend
#: on how many there are (and each is one more file through the ingest path)
TENANTS = ("acme",)


def cdrhouse(env: dict, *args: str, timeout: float = 300,
             crash_at: str | None = None) -> subprocess.CompletedProcess:
    """The CLI in a subprocess; `crash_at`: through tests/crashing_cli.py, dying after that
    backup step (the installed CLI has no way to arm a crash)."""
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("CDRHOUSE_", "AWS_"))}
    entry = ["-m", "cdrhouse.api.cli"] if crash_at is None else [
        str(Path(__file__).with_name("crashing_cli.py")), f"backup:{crash_at}"]
    return subprocess.run([sys.executable, *entry, *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**inherited, "COLUMNS": "200", **env})


def cdrhouse_batch(env: dict, *commands: list[str],
                   timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Several CLI commands, one after another, in one new process (through the entry
    point, tests/cli_inproc.py): each one's exit code, stdout and stderr as `cdrhouse()`
    gives them. An argument "{i}" is the stdout (stripped) of the i-th command before
    it, e.g. the id a `backup run` printed."""
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("CDRHOUSE_", "AWS_"))}
    code = ("import json, sys\n"
            "sys.path.insert(0, sys.argv[2])\n"
            "from cli_inproc import run_cli\n"
            "done = []\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    done.append(run_cli(*[a.format(*[d.stdout.strip() for d in done]) "
            "for a in args], clean=False))\n"
            "print(json.dumps([[d.returncode, d.stdout, d.stderr] for d in done]))\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(commands),
                           str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**inherited, "COLUMNS": "200", **env})
    assert proc.returncode == 0, proc.stderr
    return [subprocess.CompletedProcess(args, rc, out, err) for args, (rc, out, err) in
            zip(commands, json.loads(proc.stdout.strip().splitlines()[-1]))]


#: the next process to open a restored store (argv: its data directory, a job id, a file
#: for the result, then `cdrhouse` arguments): reads it — the dump, the backups its
#: bookkeeping lists, the job's state — into the file, then runs the CLI (`serve`) on it
READ_THEN_CLI = DUMP + r'''
import json, sys
from pathlib import Path
from cdrhouse.engine.db import Database, StoreConfig
data, job_id, result = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
db = Database(StoreConfig(data_dir=data), create=False)
listed = sorted(r[0] for r in db.client.query(
    "SELECT backup_id FROM cdrhouse.backups FINAL").result_rows)
state = db.client.query("SELECT state FROM cdrhouse.jobs FINAL WHERE job_id = {j:String}",
                        parameters={"j": job_id}).result_rows[0][0]
read = [dump(db.client, "cdrhouse"), listed, state]
db.close()
result.write_text(json.dumps(read))
from cdrhouse.api.cli import main
main(["--data-dir", str(data), *sys.argv[4:]])
'''


def add_traffic(db: Database, tmp: Path, seed: int, rows: int = 150) -> None:
    """New calls through the real ingest path, and a payment (balances refreshed)."""
    work = tmp / f"gen-{seed}"
    work.mkdir(exist_ok=True)
    spec = generate.GenSpec(rows=rows, months=2, seed=seed, end=END, tenants=TENANTS,
                            customers_per_tenant=3, carriers_per_tenant=2)
    generate.load(db, spec, work)
    account = acc.find(db, "acme", "customer", generate.account_code("customer", 1))
    assert account is not None
    ledger.add_entry(db, account, "payment", Decimal(seed) + Decimal("0.25"), note=f"seed {seed}")


def populate(db: Database, tmp: Path) -> str:
    """CDRs, accounts, rate cards, a payment, balances and an API key (its secret)."""
    add_traffic(db, tmp, seed=11, rows=400)
    generate.load_rate_cards(db, generate.GenSpec(tenants=TENANTS, customers_per_tenant=3,
                                                  carriers_per_tenant=2))
    ledger.refresh(db, "acme")
    _, secret = keys.create_key(db, "admin", "restore drill")
    return secret


@pytest.fixture
def populated(embedded_db: Database, tmp_path: Path) -> tuple[Database, str]:
    """A store with CDRs, accounts, rate cards, a payment, balances and an API key."""
    return embedded_db, populate(embedded_db, tmp_path)


@pytest.fixture(scope="module", autouse=True)
def _short_polls():
    """These stores are small: ClickHouse's ASYNC BACKUP/RESTORE ends in milliseconds,
    so the waits look at system.backups more often than the product's default."""
    saved, ops.POLL_SECONDS = ops.POLL_SECONDS, 0.02
    yield
    ops.POLL_SECONDS = saved


def rclone_location(server, prefix: str) -> Location:
    store = S3Store("archive", prefix, endpoint=server.endpoint,
                    access_key=server.access_key, secret_key=server.secret_key)
    return Location(store, f"s3://archive/{prefix}")


class Chain(NamedTuple):
    """The module's populated store and a full + two incrementals of it in `loc`."""
    db: Database
    loc: Location
    env: dict       # the environment naming `loc` for the CLI
    secret: str     # an API key made before the backups
    backups: list[BackupRecord]  # full, inc1, inc2
    earlier: list[str]  # every backup of the store (either location) made before inc2


@pytest.fixture(scope="module")
def _chains(embedded_dsn: str, engine_dir: Path, tmp_path_factory,
            rclone_s3) -> dict[str, Chain]:
    """One populated store, backed up in turns to a directory and to the credential-
    checking S3 server: a full backup and two incrementals each, with new calls and
    payments in between. Made once for the module: the restore drill restores both
    chains, the verify tests damage copies of the directory's (`chain_on_disk`), and
    none of them writes to the store but its bookkeeping."""
    from cdrhouse.engine.migrate import migrate
    tmp = tmp_path_factory.mktemp("chain")
    root = tmp / "backups"
    prefix = f"bk-{uuid.uuid4().hex[:8]}"
    where = {
        "directory": (Location(LocalStore(root), str(root)), {"CDRHOUSE_BACKUP": str(root)}),
        "s3": (rclone_location(rclone_s3, prefix), {
            "CDRHOUSE_BACKUP": f"s3://archive/{prefix}",
            "CDRHOUSE_S3_ENDPOINT": rclone_s3.endpoint,
            "AWS_ACCESS_KEY_ID": rclone_s3.access_key,
            "AWS_SECRET_ACCESS_KEY": rclone_s3.secret_key})}
    db = Database(StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn,
                              database=f"t_{uuid.uuid4().hex[:10]}"))
    try:
        migrate(db)
        secret = populate(db, tmp)
        made: dict[str, list[BackupRecord]] = {w: [] for w in where}
        order: list[str] = []
        for seed in (None, 12, 13):
            if seed is not None:
                add_traffic(db, tmp, seed=seed)
            for w, (loc, _) in where.items():
                made[w].append(jobs.run(db, loc, BackupConfig()).record)
                order.append(made[w][-1].backup_id)
        chains = {w: Chain(db, loc, env, secret, made[w],
                           order[:order.index(made[w][-1].backup_id)])
                  for w, (loc, env) in where.items()}
        # the incrementals took unchanged partitions' figures from their bases (the
        # verify tests corrupt them: verify must still find it)
        _, inc1, inc2 = chains["directory"].backups
        assert inc1.partitions_reused > 0 and inc2.partitions_reused > 0
        assert ops.verify_backup(db, chains["directory"].loc, inc2.backup_id).result.ok
        yield chains
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{db.name}` SYNC")
        db.close()


def _get(url: str, secret: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {secret}"}
                                 if secret else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# -- the restore drill ------------------------------------------------------------------

@pytest.mark.parametrize("where", ["s3", "directory"])
def test_full_and_two_incrementals_restore_into_a_fresh_data_dir_and_serve(
        _chains: dict[str, Chain], where: str, tmp_path: Path) -> None:
    """The module's chain at each kind of location, restored by the CLI into a fresh
    data directory, read by another process, and served."""
    db, loc, env, secret, (full, inc1, inc2), earlier = _chains[where]
    assert (full.kind, inc1.kind, inc2.kind) == ("full", "incremental", "incremental")
    assert (full.base_id, inc1.base_id, inc2.base_id) == (None, full.backup_id, inc1.backup_id)
    assert {inc1.full_id, inc2.full_id} == {full.backup_id}
    # incrementals store only what is new (ClickHouse's base_backup at work; how much
    # smaller depends on merges, measured in benchmarks/backup_bench.py)
    assert full.size_bytes >= full.total_bytes
    assert inc1.size_bytes < inc1.total_bytes and inc2.size_bytes < inc2.total_bytes
    assert inc2.rows > inc1.rows > full.rows

    source = dump(db.client, db.name)
    assert source["ledger"][0] == 3 and source["balances"][0] > 0 and source["api_keys"][0] == 1
    new = tmp_path / "restored"
    restored = cdrhouse(env, "backup", "restore", inc2.backup_id, "--data-dir", str(new))
    assert restored.returncode == 0, restored.stderr
    assert f"chain {inc2.backup_id} <- {inc1.backup_id} <- {full.backup_id}" in restored.stderr

    # another process opens the restored store, reads it (READ_THEN_CLI), then serves it
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    read = tmp_path / "read.json"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("CDRHOUSE_", "AWS_"))}
    proc = subprocess.Popen(
        [sys.executable, "-c", READ_THEN_CLI, str(new), inc2.job_id, str(read),
         "serve", "--port", str(port), "--tier-schedule", "off", "--backup-schedule", "off"],
        stdout=log, stderr=subprocess.STDOUT, env=inherited)
    try:
        # a bound on start-up, not a speed check: generous for a machine shared by many
        deadline = time.monotonic() + 180
        while True:
            try:
                if _get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.1)
        after, listed, state = json.loads(read.read_text())
        for table in set(source) - BOOKKEEPING:
            assert after[table] == source[table], table
        assert set(after) == set(source)
        # the bookkeeping is the store's as it was when inc2 was taken (the earlier
        # backups recorded, inc2's job running), brought up to date by the restore
        assert {full.backup_id, inc1.backup_id} <= set(earlier)
        assert listed == sorted([*earlier, inc2.backup_id])
        assert state == "succeeded"

        # the service runs on the restored store, and the old API key still works
        status, body = _get(f"http://127.0.0.1:{port}/v1/balances?tenant=acme", secret)
        assert status == 200, body
        want = ledger.balances(db, "acme")
        assert sorted(Decimal(b["balance"]) for b in body["balances"]) == \
            sorted(b.balance for b in want)
        assert _get(f"http://127.0.0.1:{port}/v1/balances?tenant=acme", "wrong")[0] == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _verify_and_restore_over_s3(db: Database, loc: Location, made: list[BackupRecord],
                                server, tmp: Path) -> None:
    """A chain `made` (oldest first) of `db` on the credential-checking S3 server:
    verified, its base named without credentials, restored into a new database of the
    same server equal to `db`."""
    inc, base = made[-1], made[-2]
    assert inc.base_id == base.backup_id
    assert ops.verify_backup(db, loc, inc.backup_id).result.ok

    # credentials stay out of what ClickHouse records: the base is named by the collection
    meta = (server.root / "archive" / loc.store.prefix / inc.backup_id / ".backup").read_text()
    assert server.secret_key not in meta
    assert f"<base_backup>S3(cdrhouse_backups, '{base.backup_id}')</base_backup>" in meta

    target = StoreConfig(data_dir=tmp, clickhouse=db.config.dsn,
                         database=f"r_{uuid.uuid4().hex[:10]}")
    source = dump(db.client, db.name)
    try:
        report = ops.restore_backup(target, loc, inc.backup_id)
        assert report.chain == [b.backup_id for b in reversed(made)]
        assert report.set_aside is None
        after = dump(db.client, target.database)
        for table in set(source) - BOOKKEEPING:
            assert after[table] == source[table], table
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{target.database}` SYNC")


@pytest.fixture
def http_db(http_server, engine_dir: Path):
    """A fresh, migrated database on the engine's HTTP interface (the session's server)."""
    from cdrhouse.engine.migrate import migrate
    db = Database(StoreConfig(data_dir=engine_dir, clickhouse=http_server.dsn,
                              database=f"t_{uuid.uuid4().hex[:10]}"))
    try:
        migrate(db)
        yield db
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{db.name}` SYNC")
        db.close()


def test_backup_and_restore_on_a_server_database_over_s3(http_db: Database, rclone_s3,
                                                         tmp_path: Path) -> None:
    """The HTTP interface: full + incremental to the credential-checking server, verify,
    then a restore into a new database of the same server. (The embedded engine's
    case is the next test, on the module's chain.)"""
    store = http_db
    add_traffic(store, tmp_path, seed=21, rows=150)
    loc = rclone_location(rclone_s3, f"srv-{uuid.uuid4().hex[:8]}")
    full = ops.run_backup(store, loc, BackupConfig()).record
    add_traffic(store, tmp_path, seed=22, rows=80)
    inc = ops.run_backup(store, loc, BackupConfig()).record
    _verify_and_restore_over_s3(store, loc, [full, inc], rclone_s3, tmp_path)


def test_a_chain_of_the_embedded_engine_on_s3_verifies_and_restores_into_a_new_database(
        _chains: dict[str, Chain], rclone_s3, tmp_path: Path) -> None:
    """The embedded engine's case of the test above, on the module's chain on the
    credential-checking server (made by the embedded engine, new calls between)."""
    chain = _chains["s3"]
    _verify_and_restore_over_s3(chain.db, chain.loc, chain.backups, rclone_s3, tmp_path)


def test_wrong_credentials_are_named_and_nothing_is_catalogued(embedded_db: Database,
                                                               rclone_s3) -> None:
    store = S3Store("archive", "badcreds", endpoint=rclone_s3.endpoint, access_key="cdrhouse",
                    secret_key="not-the-secret")
    loc = Location(store, "s3://archive/badcreds")
    with pytest.raises(ArchiveError, match="S3 rejected the credentials"):
        jobs.run(embedded_db, loc, BackupConfig())
    failed = userdata.list_jobs(embedded_db, kind=jobs.KIND_RUN)
    assert failed[0].state == "failed" and "rejected the credentials" in failed[0].error
    assert not (rclone_s3.root / "archive" / "badcreds").exists()


def test_writes_during_a_backup_are_flagged_and_merges_are_not(embedded_db: Database,
                                                               tmp_path: Path) -> None:
    """A table written to while BACKUP runs has no single right fingerprint: its changed
    partitions are named and not compared; a merge (new parts, same rows) is not a change."""
    add_traffic(embedded_db, tmp_path, seed=31, rows=200)
    add_traffic(embedded_db, tmp_path, seed=32, rows=100)  # a second part per month
    loc = Location(LocalStore(tmp_path / "b"), str(tmp_path / "b"))
    done: list[str] = []

    def meanwhile(what: str, _done: int, _total: int) -> None:
        # the backup step begins: after the first fingerprints, before they are taken
        # again (that BACKUP is not yet running here changes nothing for what is checked)
        if what == "backup" and not done:
            embedded_db.command("OPTIMIZE TABLE cdr_records FINAL")
            acc.add_account(embedded_db, "acme", "LATE", "customer")
            done.append(what)

    # a bandwidth cap (in the BACKUP statement) that does not slow this small store down
    rec = ops.run_backup(embedded_db, loc, BackupConfig(max_bandwidth=20_000_000),
                         progress=meanwhile).record
    assert done, "the backup finished before it could be written to"
    assert not rec.tables["accounts"].exact and rec.tables["accounts"].changed == ["all"]
    assert rec.tables["cdr_records"].exact and not rec.tables["cdr_records"].changed
    assert ops.verify_backup(embedded_db, loc, rec.backup_id).result.ok


def _touch_partition(db: Database, partition: str) -> None:
    """One new call in `partition` of cdr_records (a copy of one of its rows, new id)."""
    db.command("INSERT INTO cdr_records SELECT * REPLACE (concat(call_id, '-new') AS call_id) "
               f"FROM cdr_records WHERE _partition_id = '{partition}' LIMIT 1")


def test_an_incremental_reads_only_the_partitions_whose_parts_changed(embedded_db: Database,
                                                                       tmp_path: Path) -> None:
    """Fingerprints are proportional to change: an incremental takes the figures of a
    partition whose active parts are the base's from the base's manifest and reads the
    rest; a merge (new part names) is read again; a manifest without part sets (older
    cdrhouse) makes the next run read everything. Verify reads every restored row, so
    a wrong reused figure would fail it."""
    add_traffic(embedded_db, tmp_path, seed=41, rows=300)
    loc = Location(LocalStore(tmp_path / "b"), str(tmp_path / "b"))
    first = ops.run_backup(embedded_db, loc, BackupConfig())
    assert first.fingerprinted and all(v is None for v in first.fingerprinted.values())
    months = sorted(first.record.tables["cdr_records"].partitions)
    assert len(months) >= 2, months
    assert first.record.tables["cdr_records"].parts.keys() == set(months)
    touched = months[0]
    _touch_partition(embedded_db, touched)

    inc = ops.run_backup(embedded_db, loc, BackupConfig())
    assert inc.record.kind == "incremental"
    assert inc.fingerprinted["cdr_records"] == [touched]
    assert inc.fingerprinted["accounts"] == []   # not written since: nothing read
    assert inc.record.partitions_reused >= len(months)  # the other months, accounts, ...
    before = first.record.tables["cdr_records"].partitions
    after = inc.record.tables["cdr_records"].partitions
    assert after[touched][0] == before[touched][0] + 1
    assert all(after[m] == before[m] for m in months[1:])
    assert ops.verify_backup(embedded_db, loc, inc.record.backup_id).result.ok

    # a merge makes new part names: that partition is read again, its figures the same
    embedded_db.command(f"OPTIMIZE TABLE cdr_records PARTITION ID '{touched}' FINAL")
    merged = ops.run_backup(embedded_db, loc, BackupConfig())
    assert merged.fingerprinted["cdr_records"] == [touched]
    assert merged.record.tables["cdr_records"].partitions == after
    assert ops.verify_backup(embedded_db, loc, merged.record.backup_id).result.ok

    # a manifest written before part sets were recorded: everything is read
    raw = json.loads(loc.store.get_bytes(catalog.manifest_key(merged.record.backup_id)))
    for table in raw["tables"].values():
        table.pop("parts")
    loc.store.put_bytes(catalog.manifest_key(merged.record.backup_id), json.dumps(raw).encode())
    _touch_partition(embedded_db, months[-1])
    old = ops.run_backup(embedded_db, loc, BackupConfig())
    assert old.record.base_id == merged.record.backup_id
    assert old.fingerprinted["cdr_records"] is None and old.record.partitions_reused == 0
    assert ops.verify_backup(embedded_db, loc, old.record.backup_id).result.ok
    # and the same store read without reuse gives the same figures as with it
    again = ops.run_backup(embedded_db, loc, BackupConfig(), reuse_fingerprints=False)
    reused = ops.run_backup(embedded_db, loc, BackupConfig())
    assert reused.fingerprinted["cdr_records"] == []
    for table in set(again.record.tables) - BOOKKEEPING:
        assert reused.record.tables[table].partitions == again.record.tables[table].partitions


def test_a_table_created_again_is_read_again_though_its_part_names_repeat(
        embedded_db: Database, tmp_path: Path) -> None:
    """A table dropped and created again starts its block numbers over: its new part
    has the old one's name. The part's checksum hash tells them apart, so the
    incremental reads it instead of reusing the old figure (which verify would reject)."""
    db = embedded_db
    ddl = "CREATE TABLE scratch (k UInt32, v String) ENGINE = MergeTree ORDER BY k"
    db.command(ddl)
    db.command("INSERT INTO scratch VALUES (1, 'before')")
    loc = Location(LocalStore(tmp_path / "b"), str(tmp_path / "b"))
    first = ops.run_backup(db, loc, BackupConfig()).record
    db.command("DROP TABLE scratch SYNC")
    db.command(ddl)
    db.command("INSERT INTO scratch VALUES (2, 'after!')")
    names = lambda rec: {p.split(":")[0] for p in rec.tables["scratch"].parts["all"]}  # noqa: E731
    inc = ops.run_backup(db, loc, BackupConfig())
    assert names(inc.record) == names(first)  # the same part name, other rows
    assert inc.fingerprinted["scratch"] == ["all"]
    assert inc.record.tables["scratch"].partitions != first.tables["scratch"].partitions
    assert ops.verify_backup(db, loc, inc.record.backup_id).result.ok


# -- verify finds what is wrong ------------------------------------------------------------

def _stored_in(loc: LocalStore, backup_id: str) -> set[str]:
    """Files whose data this backup holds under their own name (a file equal to another
    one of the backup names it as its `data_file` and is stored once, under that name)."""
    root = ET.fromstring((loc.root / backup_id / ".backup").read_bytes())
    return {n.findtext("name") for n in root.iter("file")
            if (n.findtext("use_base") or "") != "true" and int(n.findtext("size") or 0)
            and (n.findtext("data_file") or n.findtext("name")) == n.findtext("name")}


def _used_from_base(loc: LocalStore, backup_id: str) -> set[str]:
    root = ET.fromstring((loc.root / backup_id / ".backup").read_bytes())
    return {n.findtext("name") for n in root.iter("file") if n.findtext("use_base") == "true"}


@pytest.fixture
def chain_on_disk(_chains: dict[str, Chain]) -> Chain:
    """The module's chain in a directory (see `_chains`), put back as it was after each
    test (same absolute path: a directory backup names its base by path)."""
    chain = _chains["directory"]
    loc = chain.loc
    root = loc.store.root
    saved = root.with_name("backups.saved")
    shutil.copytree(root, saved)
    yield chain
    shutil.rmtree(root)
    saved.rename(root)


def test_a_corrupted_incremental_fails_verification_and_is_not_built_on(chain_on_disk) -> None:
    db, loc, _, _, (full, inc1, inc2), _ = chain_on_disk
    store = loc.store
    assert isinstance(store, LocalStore)
    # a data file that inc1 stores and inc2 takes from it
    shared = sorted(f for f in _stored_in(store, inc1.backup_id)
                    & _used_from_base(store, inc2.backup_id)
                    if f.startswith("data/") and f.endswith(".bin"))
    assert shared
    victim = max((store.root / inc1.backup_id / f for f in shared), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 16):
        data[i] ^= 0x5A
    victim.write_bytes(bytes(data))  # same size: only reading the rows can tell

    report = ops.verify_backup(db, loc, inc2.backup_id)
    assert not report.result.ok
    assert any("table " in p for p in report.result.problems), report.result.problems
    listing = ops.listing(loc, db)
    assert listing.state(inc2.backup_id) == "verify_failed"
    assert listing.last_good().backup_id == inc1.backup_id  # the metric's "last good"
    row = catalog.mirrored(db)[inc2.backup_id]
    assert row["state"] == "verify_failed" and "table " in row["error"]
    # the next run does not build on a chain that failed verification
    nxt = ops.run_backup(db, loc, BackupConfig()).record
    assert nxt.kind == "full" and nxt.base_id is None


@pytest.mark.parametrize("damage, message", [
    ("files", "its ClickHouse metadata (.backup) is missing"),
    ("manifest", "missing from the catalogue: the chain is broken"),
    ("truncated", "file(s) of the wrong size"),
    ("one file", "file(s) missing, e.g. data/"),
])
def test_a_missing_or_incomplete_incremental_is_named_by_verify(chain_on_disk, damage: str,
                                                                message: str) -> None:
    db, loc, _, _, (full, inc1, inc2), _ = chain_on_disk
    store = loc.store
    assert isinstance(store, LocalStore)
    data_files = sorted(f for f in _stored_in(store, inc1.backup_id) if f.endswith(".bin"))
    if damage == "files":
        shutil.rmtree(store.root / inc1.backup_id)
    elif damage == "manifest":
        store.delete(catalog.manifest_key(inc1.backup_id))
    elif damage == "truncated":
        path = store.root / inc1.backup_id / data_files[0]
        path.write_bytes(path.read_bytes()[:-7])
    else:
        (store.root / inc1.backup_id / data_files[0]).unlink()
    report = ops.verify_backup(db, loc, inc2.backup_id)
    assert not report.result.ok
    text = "; ".join(report.result.problems)
    assert message in text and inc1.backup_id in text, text
    # and a restore refuses before touching anything
    with pytest.raises(BackupError, match=message.split("(")[0].strip()[:20]):
        ops.restore_backup(StoreConfig(data_dir=Path("/nonexistent"), clickhouse="http://x:1",
                                       database="never"), loc, inc2.backup_id)


@pytest.mark.parametrize("unreadable_for", [1, 2], ids=["one attempt", "every attempt"])
def test_a_restore_that_fails_once_is_run_again(chain_on_disk, caplog, unreadable_for: int
                                                ) -> None:
    """A RESTORE that fails (here: its .backup made unreadable, same size, so the file
    checks pass) is run once more; a verify reports a failure only if both attempts fail."""
    db, loc, _, _, (*_, inc2), _ = chain_on_disk
    meta = loc.store.root / inc2.backup_id / ".backup"
    good = meta.read_bytes()
    attempts = []

    def progress(what: str, _done: int, _total: int) -> None:
        if what == "restore":          # just before each RESTORE
            attempts.append(1)
            meta.write_bytes(good if len(attempts) > unreadable_for
                             else bytes(0x5A ^ b for b in good))

    report = ops.verify_backup(db, loc, inc2.backup_id, progress=progress)
    meta.write_bytes(good)
    assert len(attempts) == 2
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "cdrhouse.backup"] \
        == [f"restoring {inc2.backup_id} failed, trying once more"]
    if unreadable_for == 1:
        assert report.result.ok, report.result.problems
        assert ops.listing(loc, db).state(inc2.backup_id) == "verified"
    else:
        assert not report.result.ok
        assert [p.split(":")[0] for p in report.result.problems] == [
            f"restoring {inc2.backup_id} failed"]
        assert ops.listing(loc, db).state(inc2.backup_id) == "verify_failed"


def test_verify_of_an_unknown_backup_names_the_latest(chain_on_disk) -> None:
    db, loc, _, _, (*_, inc2), _ = chain_on_disk
    with pytest.raises(BackupError, match=f"no backup 'nope'.*{inc2.backup_id}"):
        ops.verify_backup(db, loc, "nope")


# -- restores over a live store --------------------------------------------------------------

def test_restore_over_a_live_database_needs_force_and_keeps_it(populated, tmp_path: Path) -> None:
    db, _ = populated
    loc = Location(LocalStore(tmp_path / "backups"), str(tmp_path / "backups"))
    rec = ops.run_backup(db, loc, BackupConfig()).record
    before = dump(db.client, db.name)
    account = acc.find(db, "acme", "customer", generate.account_code("customer", 1))
    ledger.add_entry(db, account, "payment", "999", note="after the backup")
    changed = dump(db.client, db.name)
    with pytest.raises(ops.RestoreRefused, match="needs --force"):
        ops.restore_backup(db.config, loc, rec.backup_id)
    assert dump(db.client, db.name) == changed  # refused: untouched
    report = ops.restore_backup(db.config, loc, rec.backup_id, force=True)
    try:
        assert report.set_aside and report.set_aside.startswith(f"{db.name}_before_restore_")
        fresh = Database(db.config)
        try:
            restored = dump(fresh.client, db.name)
            for table in set(before) - BOOKKEEPING:
                assert restored[table] == before[table], table
            kept = dump(fresh.client, report.set_aside)
            assert kept["ledger"] == changed["ledger"]  # the replaced store is kept, whole
        finally:
            fresh.close()
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{report.set_aside}` SYNC")



def test_the_time_ordered_copy_is_left_out_and_rebuilt_by_a_restore(
        populated, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The copy of the CDRs sorted by time (016_by_time.sql) holds nothing cdr_records does
    not: a backup leaves it out (smaller), records its definition, and a restore rebuilds
    it before the store goes live; a backup made with it inside restores as it was."""
    db, _ = populated
    source = dump(db.client, db.name)
    assert source["cdr_records_by_time"][0] > 0
    lean_at = Location(LocalStore(tmp_path / "lean"), str(tmp_path / "lean"))
    lean = ops.run_backup(db, lean_at, BackupConfig()).record
    assert "cdr_records_by_time" not in lean.tables and "cdr_records" in lean.tables
    source_table, ddl = lean.rebuilt[""]["cdr_records_by_time"]
    assert source_table == "cdr_records" and ddl.startswith(
        f"CREATE TABLE {db.name}.cdr_records_by_time ")
    # none of its files, data or metadata (its materialized view's definition is kept)
    assert not [o.key for o in lean_at.store.list(lean.backup_id + "/")
                if re.search(r"/cdr_records_by_time(/|\.sql$)", o.key)]
    assert [o.key for o in lean_at.store.list(lean.backup_id + "/")
            if re.search(r"/cdr_records/", o.key)]
    with monkeypatch.context() as m:      # as every backup was made before
        m.setattr(ops, "REBUILT", {})
        whole_at = Location(LocalStore(tmp_path / "whole"), str(tmp_path / "whole"))
        whole = ops.run_backup(db, whole_at, BackupConfig()).record
    assert whole.rebuilt == {} and "cdr_records_by_time" in whole.tables
    assert lean.size_bytes < whole.size_bytes
    assert ops.verify_backup(db, lean_at, lean.backup_id).result.ok

    for loc, rec in ((lean_at, lean), (whole_at, whole)):
        target = dataclasses.replace(db.config, database=f"r_{uuid.uuid4().hex[:10]}")
        try:
            ops.restore_backup(target, loc, rec.backup_id)
            restored = Database(target)
            try:
                after = dump(restored.client, target.database)
                assert_copy_exact(restored)
                # the copy's parts are merged, as a page needs them (015_settled.sql)
                assert restored.scalar(
                    "SELECT max(c) FROM (SELECT count() AS c FROM system.parts WHERE active "
                    "AND database = currentDatabase() AND table = 'cdr_records_by_time' "
                    "GROUP BY partition)") == 1
            finally:
                restored.close()
            for table in set(source) - BOOKKEEPING:
                assert after[table] == source[table], (rec.backup_id, table)
        finally:
            db.command(f"DROP DATABASE IF EXISTS `{target.database}` SYNC")

    # a manifest whose recorded definition no longer creates the table fails verify
    broken = dataclasses.replace(lean, rebuilt={"": {"cdr_records_by_time": [
        "cdr_records", ddl.replace("ReplacingMergeTree(version)", "NoSuchEngine(version)")]}})
    catalog.write(lean_at, broken)
    result = ops.verify_backup(db, lean_at, lean.backup_id).result
    assert not result.ok
    assert any("cannot be created again" in p and "NoSuchEngine" in p
               for p in result.problems), result.problems
    # and a restore of it fails before anything goes live, naming the table
    target = dataclasses.replace(db.config, database=f"r_{uuid.uuid4().hex[:10]}")
    try:
        with pytest.raises(BackupError, match="rebuilding cdr_records_by_time failed.*NoSuchEngine"):
            ops.restore_backup(target, lean_at, lean.backup_id)
        assert ops.live_tables(db, target.database) == 0
        assert ops.live_tables(db, f"{target.database}_restoring") == 0
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{target.database}` SYNC")


# -- crashes ------------------------------------------------------------------------------------

#: a process that makes a store with calls in a data directory of its own (argv: the
#: directory, the rows), then runs `cdrhouse ARGS…` (the rest of argv) through the
#: entry point: the store and the CLI share the process, as the engine allows one
#: data directory per process
OWN_STORE_THEN_CLI = r'''
import sys
from pathlib import Path
from cdrhouse.engine import generate
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
data = Path(sys.argv[1])
work = data.parent / "gen"
work.mkdir(parents=True)
db = Database(StoreConfig(data_dir=data))
migrate(db)
generate.load(db, generate.GenSpec(rows=int(sys.argv[2]), months=2, seed=5,
                                   tenants=("acme",)), work)
db.close()
from cdrhouse.api.cli import main
main(sys.argv[3:])
'''


def test_killed_backups_are_never_listed_and_the_next_run_completes(tmp_path: Path) -> None:
    """Killed twice — `kill -9` while ClickHouse writes the backup, then the process
    ending after BACKUP finished but before the manifest — then a normal run. The
    first process makes its store before it backs it up; the commands after the two
    deaths run through the CLI's entry point in one process (`cdrhouse_batch`)."""
    data = tmp_path / "data"
    backups = tmp_path / "backups"
    env = {"CDRHOUSE_DATA_DIR": str(data), "CDRHOUSE_BACKUP": str(backups)}
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CDRHOUSE_")}
    # throttled so that it is still writing when killed (the backup is ~1 MB: 20 s)
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", OWN_STORE_THEN_CLI, str(data), "1000",
                                 "backup", "run", "--max-bandwidth", "50000"],
                                env={**inherited, **env}, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not any(p.is_file() for p in backups.glob("2*/data/**/*")):
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, "the backup never started writing"
        time.sleep(0.05)
    proc.kill()  # SIGKILL: the embedded engine dies with the process
    proc.wait()
    first = [p.name for p in backups.glob("2*")]
    assert len(first) == 1 and not (backups / first[0] / ".backup").exists()  # half-way

    ended = cdrhouse(env, "backup", "run", crash_at="backed-up")
    assert ended.returncode == 70, ended.stderr
    second = [p.name for p in backups.glob("2*") if p.name not in first]
    assert len(second) == 1 and (backups / second[0] / ".backup").exists()  # ClickHouse done

    # then the rerun (the variable that once armed the hook does nothing now, issue
    # 13.7), and what it left: listed, verified, the jobs
    listed, status, rerun, listed_after, verified, jobs_out = cdrhouse_batch(
        {**env, "CDRHOUSE_BACKUP_FAULT": "backed-up"},
        ["backup", "list", "--format", "json"], ["backup", "status"], ["backup", "run"],
        ["backup", "list", "--format", "json"], ["backup", "verify", "{2}"],
        ["jobs", "--kind", "backup-run", "--format", "json"])
    assert listed.returncode == 0 and listed.stdout.strip() == "", listed.stdout
    assert status.returncode == 1 and "no good backup" in status.stderr
    assert "running" in status.stderr  # the dead run's job, as it was left

    assert rerun.returncode == 0, rerun.stderr
    for half in first + second:
        assert f"removed the files of {half}, a backup that never finished" in rerun.stderr
        assert not (backups / half).exists()
    new_id = rerun.stdout.strip()
    assert "full backup" in rerun.stderr  # nothing unfinished was taken as a base
    assert listed_after.returncode == 0, listed_after.stderr
    rows = [json.loads(line) for line in listed_after.stdout.splitlines()]
    assert [(r["id"], r["state"]) for r in rows] == [(new_id, "completed")]
    assert verified.returncode == 0, verified.stderr
    states = sorted(json.loads(line)["state"] for line in jobs_out.stdout.splitlines())
    assert states == ["failed", "failed", "succeeded"], jobs_out.stdout  # the dead runs closed


# -- policy, retention, configuration ----------------------------------------------------------

def _rec(backup_id: str, kind: str, base: str | None, full: str, days_ago: float) -> BackupRecord:
    when = (dt.datetime(2026, 11, 20, tzinfo=dt.UTC) - dt.timedelta(days=days_ago)).isoformat()
    return BackupRecord(backup_id, kind, base, full, "cdrhouse", when, when, 1.0, 10, 1, 10, {},
                        8, "26.9", "0.1.0")


NOW = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
F1 = _rec("f1", "full", None, "f1", 3)
I1 = _rec("i1", "incremental", "f1", "f1", 2)
I2 = _rec("i2", "incremental", "i1", "f1", 1)
OLD = _rec("f0", "full", None, "f0", 9)


@pytest.mark.parametrize("records, failed, force, every, base, reason", [
    ([], set(), False, 7, None, "no backup yet"),
    ([F1], set(), False, 7, "f1", "incremental on f1"),
    ([F1, I1, I2], set(), False, 7, "i2", "incremental on i2"),
    ([F1, I1, I2], set(), True, 7, None, "full backup requested"),
    ([F1, I1], set(), False, 3, None, "is 3 day(s) old (a full one every 3)"),
    ([OLD], set(), False, 7, None, "is 9 day(s) old"),
    ([F1, I1, I2], {"i1"}, False, 7, None, "i1 of the current chain failed verification"),
    ([OLD, F1], {"f0"}, False, 7, "f1", "incremental on f1"),  # an old chain's failure
    ([I1], set(), False, 7, None, "the full backup f1 of the last chain is gone"),
])
def test_when_a_backup_is_full(records, failed, force, every, base, reason) -> None:
    verifies = {b: VerifyRecord(b, False, "", 0.0, ["x"]) for b in failed}
    got, why = ops.plan_kind(records, verifies, BackupConfig(full_every_days=every), NOW, force)
    assert (got.backup_id if got else None) == base
    assert reason in why


def test_retention_keeps_n_fulls_and_their_incrementals(embedded_db: Database,
                                                       tmp_path: Path) -> None:
    loc = Location(LocalStore(tmp_path / "b"), str(tmp_path / "b"))
    config = BackupConfig(keep_fulls=2)
    made = []
    for full in (True, False, True, False, True):
        made.append(ops.run_backup(embedded_db, loc, config, full=full))
    ids = [r.record.backup_id for r in made]
    assert made[-1].pruned == ids[:2]  # the first chain: its full and its incremental
    assert [r.backup_id for r in catalog.read_all(loc)[0]] == ids[2:]
    assert sorted(p.name for p in loc.store.root.iterdir()) == sorted(ids[2:] + ["_catalog"])
    assert {b: r["state"] for b, r in catalog.mirrored(embedded_db).items()} == {
        ids[0]: "deleted", ids[1]: "deleted", ids[2]: "completed", ids[3]: "completed",
        ids[4]: "completed"}


@pytest.mark.parametrize("archive, expected", [
    (None, "{data}/backups"),
    ("s3://bucket/warm", "s3://bucket/backups"),
    ("s3://bucket/prod/warm", "s3://bucket/prod/backups"),
    ("s3://bucket", "s3://bucket/backups"),
    ("/srv/cdr/warm", "/srv/cdr/backups"),
    ("file:///srv/cdr/warm", "/srv/cdr/backups"),
])
def test_the_default_location_is_beside_the_archive(archive, expected, tmp_path: Path) -> None:
    got = default_url(ArchiveConfig(url=archive), tmp_path)
    assert got == expected.format(data=tmp_path.resolve())


@pytest.mark.parametrize("url, message", [
    ("s3://", "name a bucket"),
    ("s3://ab/x", "at least 3 characters"),
    ("ftp://host/x", "use a directory, file://… or s3://…"),
])
def test_bad_locations_are_refused_clearly(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match=message):
        open_location(BackupConfig(url=url), ArchiveConfig(), tmp_path)


def test_cli_errors(embedded_db: Database, embedded_dsn: str, tmp_path: Path) -> None:
    """Through the CLI's entry point in this process (the exit code it ends with; that
    it reaches the shell the crash test's real processes show). `serve` is given a data
    directory this process cannot open: a bad schedule let through fails there, it
    does not serve."""
    from cli_inproc import run_cli
    env = {"CDRHOUSE_DATA_DIR": str(tmp_path / "data"), "CDRHOUSE_BACKUP": str(tmp_path / "b")}

    def cli(extra: dict, *args: str):
        return run_cli(*args, env={**env, **extra})

    # a new store (this process's engine, a fresh database)
    store = {"CDRHOUSE_CLICKHOUSE": embedded_dsn, "CDRHOUSE_DATABASE": embedded_db.name}
    unknown = cli(store, "backup", "verify", "20260101T000000Z-0000")
    assert unknown.returncode == 1 and "no backup '20260101T000000Z-0000'" in unknown.stderr
    bad = cli({"CDRHOUSE_BACKUP_SCHEDULE": "daily"}, "serve")
    assert bad.returncode == 2 and "backup schedule 'daily' is not a crontab" in bad.stderr
    refused = cli({"CDRHOUSE_BACKUP": "ftp://host/x"}, "backup", "list")
    assert refused.returncode == 1 and "use a directory, file://… or s3://…" in refused.stderr


# -- inside the service ------------------------------------------------------------------------

def test_serve_schedules_backup_then_verify_shows_jobs_to_admins_and_the_age_metric(
        embedded_dsn: str, engine_dir: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from cdrhouse.api.app import create_app
    from cdrhouse.api.service import ServiceConfig

    config = StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn,
                         database=f"t_{uuid.uuid4().hex[:10]}")
    db = Database(config)
    from cdrhouse.engine.migrate import migrate
    migrate(db)
    acc.add_account(db, "acme", "C1", "customer")
    admin = keys.create_key(db, "admin")[1]
    operator = keys.create_key(db, "tenant:acme")[1]
    app = create_app(ServiceConfig(store=config, pool_size=2,
                                   backup=BackupConfig(url=str(tmp_path / "b")),
                                   backup_cron="0 1 1 1 *"))
    try:
        with TestClient(app) as client:
            def age() -> float:
                text = client.get("/metrics").text
                # every sample carries this instance's label (api/scaleout.py)
                line = next(x for x in text.splitlines()
                            if x.startswith("cdrhouse_backup_last_good_age_seconds{instance="))
                return float(line.split()[1])

            assert age() == float("inf")  # never backed up: an alert fires
            job = app.state.backup_scheduler.get_job("backup")
            assert job.next_run_time.hour == 1 and job.next_run_time.month == 1
            job.func(*job.args)  # what the scheduler does at 01:00 on 1 January
            assert 0 <= age() < 600
            seen = client.get("/v1/jobs", headers={"Authorization": f"Bearer {admin}"}).json()
            kinds = {j["kind"]: j for j in seen["jobs"]}
            assert kinds["backup-run"]["state"] == "succeeded"
            assert kinds["backup-run"]["params"]["trigger"] == "schedule"
            assert kinds["backup-verify"]["state"] == "succeeded"
            assert kinds["backup-verify"]["result"]["ok"] is True
            other = client.get("/v1/jobs", headers={"Authorization": f"Bearer {operator}"}).json()
            assert not [j for j in other["jobs"] if j["kind"].startswith("backup")]
        assert not app.state.backup_scheduler.running
    finally:
        db.command(f"DROP DATABASE IF EXISTS `{db.name}` SYNC")
        db.close()


def test_the_catalogue_reads_newer_manifests_and_names_a_broken_one(tmp_path: Path) -> None:
    loc = Location(LocalStore(tmp_path / "b"), str(tmp_path / "b"))
    rec = _rec("20261101T010000Z-00aa", "full", None, "20261101T010000Z-00aa", 1)
    newer = json.loads(rec.to_json())
    newer["written_by_a_future_version"] = {"x": 1}
    loc.store.put_bytes(catalog.manifest_key(rec.backup_id), json.dumps(newer).encode())
    assert [r.backup_id for r in catalog.read_all(loc)[0]] == [rec.backup_id]
    loc.store.put_bytes(catalog.manifest_key("20261102T010000Z-00bb"), b"{not json")
    with pytest.raises(BackupError, match=r"_catalog/20261102T010000Z-00bb.json .* is "
                                          r"unreadable .* move it aside"):
        catalog.read_all(loc)


# -- a sharded cluster ---------------------------------------------------------------------------

def test_a_sharded_cluster_is_backed_up_node_by_node_and_restored_on_every_node(
        cluster_db: Database, rclone_s3, tmp_path: Path) -> None:
    """On the 2-shard cluster of embedded nodes: a full and an incremental backup to the
    credential-checking S3 server, each one BACKUP per node; verify; a restore into a new
    database on every node equals the source node by node; a file missing from one
    node's part is named by verify, with the node."""
    from cdrhouse.engine import cluster
    add_traffic(cluster_db, tmp_path, seed=31, rows=200)
    loc = rclone_location(rclone_s3, f"cl-{uuid.uuid4().hex[:8]}")
    full = ops.run_backup(cluster_db, loc, BackupConfig()).record
    nodes = cluster.nodes(cluster_db)
    keys_ = [f"shard{n.shard}-replica{n.replica}" for n in nodes]
    assert full.nodes == keys_ == ["shard1-replica1", "shard2-replica1"]
    # each node's part holds that node's rows (both shards have some)
    for node, key in zip(nodes, keys_):
        with cluster.open_node(cluster_db, node, create=False) as conn:
            here = conn.scalar("SELECT count() FROM cdr_records_local FINAL")
        assert here > 0 and full.tables[f"{key}/cdr_records_local"].rows == here
    assert "shard1-replica1/accounts" in full.tables  # the small tables: the home node's
    add_traffic(cluster_db, tmp_path, seed=32, rows=80)
    inc = ops.run_backup(cluster_db, loc, BackupConfig()).record
    assert (inc.kind, inc.base_id) == ("incremental", full.backup_id)
    assert ops.verify_backup(cluster_db, loc, inc.backup_id).result.ok

    target = StoreConfig(data_dir=tmp_path, clickhouse=cluster_db.config.dsn,
                         database=f"r_{uuid.uuid4().hex[:10]}", cluster=cluster_db.config.cluster)
    before = {}
    for node in nodes:
        with cluster.open_node(cluster_db, node, create=False) as conn:
            before[node.shard] = dump(conn.client, cluster_db.name)
    try:
        report = ops.restore_backup(target, loc, inc.backup_id)
        assert report.chain == [inc.backup_id, full.backup_id]
        for node in nodes:
            with cluster.open_node(cluster_db, node, create=False) as conn:
                after = dump(conn.client, target.database)
            for table in set(before[node.shard]) - BOOKKEEPING:
                assert after[table] == before[node.shard][table], (node.shard, table)
        # the restored store answers through its Distributed tables, over both shards
        restored = Database(target)
        try:
            assert restored.scalar("SELECT count() FROM cdr_records FINAL") == \
                cluster_db.scalar("SELECT count() FROM cdr_records FINAL")
        finally:
            restored.close()
    finally:
        for node in nodes:
            with cluster.open_node(cluster_db, node, create=False) as conn:
                conn.command(f"DROP DATABASE IF EXISTS `{target.database}` SYNC")

    # one data file of shard 2's part of the incremental goes missing
    part = rclone_s3.root / "archive" / loc.store.prefix / inc.backup_id / "shard2-replica1"
    meta = ET.fromstring((part / ".backup").read_bytes())
    stored = sorted(n.findtext("name") for n in meta.iter("file")
                    if (n.findtext("use_base") or "") != "true" and int(n.findtext("size") or 0)
                    and (n.findtext("name") or "").endswith(".bin"))
    assert stored
    loc.store.delete(f"{inc.backup_id}/shard2-replica1/{stored[0]}")  # through S3: rclone caches listings
    result = ops.verify_backup(cluster_db, loc, inc.backup_id).result
    assert not result.ok
    assert any(f"{inc.backup_id} (shard2-replica1): 1 file(s) missing" in p
               for p in result.problems), result.problems


def test_an_operation_that_lost_the_lock_commits_nothing(embedded_db: Database,
                                                        tmp_path: Path) -> None:
    """A backup run stopped longer than its lock lasts finds the lock taken over when it
    wakes: it writes no manifest (so no listing shows it and nothing builds on it), and
    its next prune deletes nothing."""
    loc = Location(LocalStore(tmp_path / "b"), str(tmp_path / "b"))
    other = {"token": "other", "host": "elsewhere", "pid": 1, "what": "backup prune",
             "started_at": "2026-11-29T00:00:00+00:00", "expires_at": "2999-01-01T00:00:00+00:00"}

    def progress(step: str, done: int, total: int) -> None:
        if step == "write manifest":           # meanwhile, another operation took it over
            loc.store.put_bytes(catalog.LOCK_KEY, json.dumps(other).encode())

    with pytest.raises(ops.BackupLocked, match="this backup run lost the lock .* stopped "
                                               "before writing the manifest of "):
        ops.run_backup(embedded_db, loc, BackupConfig(), progress=progress)
    assert catalog.read_all(loc)[0] == []
    assert json.loads(loc.store.get_bytes(catalog.LOCK_KEY)) == other
    loc.store.delete(catalog.LOCK_KEY)
    first = ops.run_backup(embedded_db, loc, BackupConfig(), full=True).record
    assert [r.backup_id for r in catalog.read_all(loc)[0]] == [first.backup_id]


def test_one_backup_operation_per_location(embedded_db: Database, tmp_path: Path) -> None:
    """The location's lock (tiering/lock.py's renewed lock object): another operation is
    refused with who holds it and when its lock expires; a holder on another host whose
    lock expired (it stopped renewing: it died) is taken over; a lock written before
    locks were renewed (no expiry) is honoured for its old 12 hours."""
    loc = Location(LocalStore(tmp_path / "b"), str(tmp_path / "b"))
    with ops.location_lock(loc, "backup prune"), pytest.raises(
            ops.BackupLocked, match="a backup operation is already in progress in this process"):
        ops.run_backup(embedded_db, loc, BackupConfig())
    now = dt.datetime.now(dt.UTC)
    live = {"token": "x", "host": "elsewhere", "pid": 1, "what": "backup prune",
            "started_at": now.isoformat(),
            "expires_at": (now + dt.timedelta(minutes=5)).isoformat()}
    legacy = {"token": "x", "host": "elsewhere", "pid": 1, "what": "backup run",
              "started_at": (now - dt.timedelta(hours=1)).isoformat()}
    for holder in (live, legacy):
        loc.store.put_bytes(catalog.LOCK_KEY, json.dumps(holder).encode())
        with pytest.raises(ops.BackupLocked, match=r"backup (prune|run) holds .*host elsewhere"
                                                   r".*lock expires at 20"):
            ops.run_backup(embedded_db, loc, BackupConfig())
    assert catalog.read_all(loc)[0] == []                   # nothing was written meanwhile
    dead = {**live, "expires_at": (now - dt.timedelta(seconds=1)).isoformat()}
    loc.store.put_bytes(catalog.LOCK_KEY, json.dumps(dead).encode())
    rec = ops.run_backup(embedded_db, loc, BackupConfig()).record
    assert ops.verify_backup(embedded_db, loc, rec.backup_id).result.ok
    assert loc.store.get_bytes(catalog.LOCK_KEY) is None
    # a restore is one of them: a prune elsewhere must not delete the chain it reads
    target = StoreConfig(data_dir=tmp_path / "restored", clickhouse=embedded_db.config.dsn,
                         database=f"r_{uuid.uuid4().hex[:10]}")
    with ops.location_lock(loc, "backup prune"), pytest.raises(
            ops.BackupLocked, match="a backup operation is already in progress in this process"):
        ops.restore_backup(target, loc, rec.backup_id)
    loc.store.put_bytes(catalog.LOCK_KEY, json.dumps(live).encode())
    with pytest.raises(ops.BackupLocked, match=r"backup prune holds .*host elsewhere"):
        ops.restore_backup(target, loc, rec.backup_id)
    assert not embedded_db.rows("SELECT name FROM system.databases WHERE name = {d:String}",
                                {"d": target.database})      # nothing was restored
