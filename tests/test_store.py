"""The store itself: migrator, catalogue vs. table, accounts, the locked-directory message."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cdrhouse.engine import accounts as acc
from cdrhouse.engine.db import Database, StoreError
from cdrhouse.engine.migrate import applied_versions, is_current, migrate, pending
from cdrhouse.sql import catalogue
from cdrhouse.sql.schema import Migration, migrations


def test_migrator_applies_every_file_once_and_records_it(store: Database) -> None:
    recorded = applied_versions(store)
    assert sorted(recorded) == [m.version for m in migrations()]
    assert all(recorded[m.version] == m.checksum for m in migrations())
    again = migrate(store)
    assert again.applied == []
    assert is_current(store)
    assert store.scalar("SELECT count() FROM schema_migrations FINAL") == len(migrations())


def test_migrator_refuses_an_applied_file_that_changed(store: Database, monkeypatch) -> None:
    first = migrations()[0]
    edited = Migration(first.version, first.name, first.sql + "\n-- edited\n")
    monkeypatch.setattr("cdrhouse.engine.migrate.migrations", lambda: [edited, *migrations()[1:]])
    with pytest.raises(StoreError, match=f"{first.version:03d}_{first.name}.sql changed"):
        pending(store)


def test_a_failing_file_keeps_the_record_of_the_files_before_it(store: Database,
                                                               monkeypatch) -> None:
    """Files are recorded together at the end of a run; a run stopped by an error
    still records the files it finished, so the next run starts at the failed one."""
    extra = [Migration(90, "fine", "CREATE TABLE IF NOT EXISTS t90 (x UInt8) ENGINE = Memory;\n"),
             Migration(91, "broken", "CREATE TABLE IF NOT EXISTS t91 (x NoSuchType) ENGINE = Memory;\n"),
             Migration(92, "later", "CREATE TABLE IF NOT EXISTS t92 (x UInt8) ENGINE = Memory;\n")]
    shipped = migrations()
    monkeypatch.setattr("cdrhouse.engine.migrate.migrations", lambda: [*shipped, *extra])
    with pytest.raises(Exception, match="NoSuchType"):
        migrate(store)
    assert [m.name for m in pending(store)] == ["broken", "later"]
    assert store.table_exists("t90") and not store.table_exists("t92")
    fixed = Migration(91, "broken", "CREATE TABLE IF NOT EXISTS t91 (x UInt8) ENGINE = Memory;\n")
    monkeypatch.setattr("cdrhouse.engine.migrate.migrations", lambda: [*shipped, extra[0], fixed,
                                                                      extra[2]])
    assert migrate(store).applied == ["091_broken", "092_later"]
    assert is_current(store)


def test_migration_statements_split_on_semicolons() -> None:
    m = Migration(1, "x", "-- comment; with semicolon\nCREATE TABLE a (x UInt8) ENGINE = Memory;\n"
                          "CREATE TABLE b (s String DEFAULT ';') ENGINE = Memory;\n")
    assert m.statements == ["CREATE TABLE a (x UInt8) ENGINE = Memory",
                            "CREATE TABLE b (s String DEFAULT ';') ENGINE = Memory"]


def test_catalogue_matches_the_cdr_table(store: Database) -> None:
    cols = dict(store.rows(
        "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
        "AND table = 'cdr_records'"))
    for f in catalogue.FIELDS:
        assert f.name in cols, f.name
        assert cols[f.name].replace(" ", "") == f.ch_type.replace(" ", ""), f.name


def test_cdr_table_is_partitioned_by_month_and_deduplicating(store: Database) -> None:
    engine, partition, sorting = store.rows(
        "SELECT engine_full, partition_key, sorting_key FROM system.tables "
        "WHERE database = currentDatabase() AND name = 'cdr_records'")[0]
    assert engine.startswith("ReplacingMergeTree(version)")
    assert partition == "toYYYYMM(start_time)"
    assert sorting.startswith("tenant_id, customer_id, start_time")


def test_accounts_get_ids_per_tenant_and_refuse_duplicates(store: Database) -> None:
    a = acc.add_account(store, "acme", "C1", "customer", "One")
    b = acc.add_account(store, "acme", "K1", "carrier", "Carrier", "EUR")
    c = acc.add_account(store, "other", "C1", "customer")
    assert (a.account_id, b.account_id, c.account_id) == (1, 2, 1)
    with pytest.raises(acc.AccountError, match="customer 'C1' already exists in tenant 'acme'"):
        acc.add_account(store, "acme", "C1", "customer")
    assert [x.code for x in acc.list_accounts(store, "acme")] == ["C1", "K1"]
    assert acc.list_accounts(store, "acme", "carrier")[0].currency == "EUR"


@pytest.mark.parametrize("tenant, code, kind, currency, message", [
    ("Acme", "C1", "customer", "USD", "invalid tenant id 'Acme'"),
    ("acme", "", "customer", "USD", "invalid account code ''"),
    ("acme", "C 1", "customer", "USD", "invalid account code 'C 1'"),
    ("acme", "C1", "reseller", "USD", "invalid account kind 'reseller'"),
    ("acme", "C1", "customer", "usd", "invalid currency 'usd'"),
])
def test_account_validation(embedded_db: Database, tenant, code, kind, currency, message) -> None:
    with pytest.raises(acc.AccountError, match=message):
        acc.add_account(embedded_db, tenant, code, kind, currency=currency)
    assert acc.list_accounts(embedded_db) == []


def test_a_held_data_directory_is_reported_plainly(tmp_path: Path) -> None:
    """A second process opening a directory held by the first gets a plain message."""
    data = tmp_path / "clickhouse"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time, clickhouse_connect
        c = clickhouse_connect.get_client(dsn="chdb://{data}")
        print("ready", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        probe = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            from pathlib import Path
            from cdrhouse.engine.db import Database, StoreConfig, StoreLocked
            try:
                Database(StoreConfig(data_dir=Path("{tmp_path}")))
            except StoreLocked as exc:
                print("LOCKED:", exc)
        """)], capture_output=True, text=True, timeout=120)
        assert f"LOCKED: The data directory {data} is in use by process {holder.pid}" in probe.stdout
        assert "stop that process" in probe.stdout
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)


def _cli(data_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cdrhouse.api.cli", "--data-dir", str(data_dir),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _only_the_plain_lock_message(proc: subprocess.Popen, holder: int | None = None) -> int:
    """Exit 0, or exit 3 with cdrhouse's one message; never the engine's own text."""
    out, err = proc.communicate(timeout=300)
    for raw in ("Code: 76", "DB::Exception", "Cannot lock file", "BAD_ARGUMENTS",
                "EmbeddedServer", "Traceback"):
        assert raw not in out + err, (proc.returncode, err)
    if proc.returncode == 3:
        assert err.startswith("error: The data directory "), err
        assert "is in use by process " + (str(holder) if holder else "") in err, err
    else:
        assert proc.returncode == 0, err
    return proc.returncode


def test_the_cli_reports_a_held_directory_in_one_plain_message(tmp_path: Path) -> None:
    # (issue 12.12: the engine printed "Code: 76. DB::Exception: Cannot lock file" first)
    data = tmp_path / "clickhouse"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, clickhouse_connect
        c = clickhouse_connect.get_client(dsn="chdb://{data}")
        print("ready", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert _only_the_plain_lock_message(_cli(tmp_path, "accounts", "list"), holder.pid) == 3
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)
    # and once the holder is gone the same command works
    assert _only_the_plain_lock_message(_cli(tmp_path, "accounts", "list")) == 0


def test_concurrent_commands_either_run_or_get_the_plain_message(tmp_path: Path) -> None:
    # Commands racing for one directory: a loser used to get the engine's bare
    # "Error initializing EmbeddedServer: . (BAD_ARGUMENTS)" when the winner let go
    # between its failure and the lock check. Every one must run or be told plainly.
    assert _only_the_plain_lock_message(_cli(tmp_path, "init")) == 0
    procs = [_cli(tmp_path, "accounts", "list") for _ in range(6)]
    codes = [_only_the_plain_lock_message(p) for p in procs]
    assert 0 in codes
