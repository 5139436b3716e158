"""The command line as a user runs it: exit codes, stdout vs stderr.

Commands run in-process through the script's entry point (tests/cli_inproc.py); the
installed script itself runs as a process where that is the point (version, help, the
exit code a shell sees, a store held by another process)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_inproc import Ran, run_cli


def run(data_dir: Path, *args: str, check: bool = False) -> Ran:
    """`cdrhouse ARGS` on the embedded store in `data_dir`, in this process (cli_inproc)."""
    proc = run_cli(*args, env={"CDRHOUSE_DATA_DIR": str(data_dir)})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def run_process(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`cdrhouse ARGS` as the installed script, in a process of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDRHOUSE_")}
    script = Path(sys.executable).with_name("cdrhouse")
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "cdrhouse.api.cli"]
    return subprocess.run([*entry, *args], capture_output=True, text=True, timeout=300,
                          env={**env, "CDRHOUSE_DATA_DIR": str(data_dir), "COLUMNS": "200"})


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("cli")
    proc = run(data, "demo", "--rows", "3000", "--months", "2", "--seed", "1", check=True)
    assert "the store now holds 3,000 CDRs" in proc.stderr
    return data


def test_version_and_help(tmp_path: Path) -> None:
    version = run_process(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.startswith("cdrhouse ")
    helptext = run_process(tmp_path, "--help").stdout
    for cmd in ("init", "ingest", "accounts", "demo", "sql", "fields"):
        assert cmd in helptext
    assert "--data-dir" in helptext
    assert "--source-tz" in run(tmp_path, "ingest", "--help", check=True).stdout
    # the shell sees the exit code of a usage error and of a refused query
    assert run_process(tmp_path, "nosuchcommand").returncode == 2
    refused = run_process(tmp_path, "sql", "DROP TABLE cdrs")
    assert refused.returncode == 2 and "only SELECT" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_each_command_module_registers_what_the_table_says() -> None:
    # COMMANDS (api/cli.py) names each command's module so that only it is imported;
    # a command added to a module but not to the table would be missing from `cdrhouse`
    import typer

    from cdrhouse.api import cli
    for module in set(cli.COMMANDS.values()):
        names = set(cli.commands_of(module))
        assert names == {n for n, m in cli.COMMANDS.items() if m == module}, module
    helptext = run_cli("--help").stdout
    assert [n for n in cli.COMMANDS if f" {n} " in helptext] == list(cli.COMMANDS)
    assert isinstance(cli.app, typer.Typer)


def test_every_command_shows_its_help() -> None:
    # (`cdrhouse serve --help` crashed on "s3://bucket[/prefix]", read as rich markup)
    from cdrhouse.api import cli

    def paths(name: str, command) -> list[list[str]]:
        subs = getattr(command, "commands", {})
        return [[name]] + [[name, *p] for sub, c in subs.items() for p in paths(sub, c)]

    every = [p for name in cli.COMMANDS
             for p in paths(name, cli.commands_of(cli.COMMANDS[name])[name])]
    assert ["serve"] in every and ["recalc", "undo"] in every and ["audit", "retention"] in every
    for path in every:
        shown = run_cli(*path, "--help")
        assert shown.returncode == 0, (path, shown.stderr)
        assert f"Usage: cdrhouse {' '.join(path)} " in shown.stdout, path
    assert "s3://bucket[/prefix]" in run_cli("serve", "--help").stdout


def test_version_loads_no_command_module() -> None:
    # `cdrhouse --version` (and help, and each command) import only what they need:
    # not the web service, the engine or another command's module
    probe = ("import sys\n"
             "from cdrhouse.api.cli import main\n"
             "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.startswith(('cdrhouse.api.cli_', "
             "'cdrhouse.engine', 'fastapi', 'clickhouse_connect', 'pyarrow', 'argon2'))))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["cdrhouse " + proc.stdout.split()[1], "[]"]


def test_init_is_idempotent(tmp_path: Path) -> None:
    first = run(tmp_path, "init", check=True)
    assert "applied schema 001_core" in first.stderr
    second = run(tmp_path, "init", check=True)
    assert "schema is current" in second.stderr
    assert (tmp_path / "clickhouse").is_dir()


def test_demo_then_sql_as_admin(demo_dir: Path) -> None:
    out = run(demo_dir, "sql", "SELECT tenant_id, count() AS n FROM cdrs GROUP BY tenant_id "
                               "ORDER BY tenant_id", "--as", "admin", "--format", "json", check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["tenant_id"] for r in rows] == ["acme", "globex", "initech"]
    assert sum(r["n"] for r in rows) == 3000
    csv_out = run(demo_dir, "sql", "SELECT count() AS n FROM cdrs", "--format", "csv", check=True)
    assert csv_out.stdout.splitlines() == ["n", "3000"]


def test_sql_refuses_physical_tables_and_writes(demo_dir: Path) -> None:
    proc = run(demo_dir, "sql", "SELECT * FROM cdr_records")
    assert proc.returncode == 2 and "unknown table" in proc.stderr
    proc = run(demo_dir, "sql", "DROP TABLE cdrs")
    assert proc.returncode == 2 and "only SELECT" in proc.stderr


def test_accounts_add_and_list(tmp_path: Path) -> None:
    added = run(tmp_path, "accounts", "add", "--tenant", "acme", "--code", "C9",
                "--kind", "customer", "--name", "Nine", check=True)
    assert added.stdout.strip() == "1"
    dup = run(tmp_path, "accounts", "add", "--tenant", "acme", "--code", "C9", "--kind", "customer")
    assert dup.returncode == 2 and "already exists" in dup.stderr
    listed = run(tmp_path, "accounts", "list", "--format", "csv", check=True)
    assert listed.stdout.splitlines()[1] == "acme,1,C9,customer,Nine,USD"


_HDR = "call_id,start_time,duration,sip_reason\n"
_GOOD = "".join(f"g{i},2026-03-01 10:00:0{i},{i},ok\n" for i in range(1, 4))


def _cut_zstd() -> bytes:
    import random

    import zstandard
    body = _HDR + "".join(f"z{i},2026-03-01 10:00:00,{i},{random.Random(i).getrandbits(64)}\n"
                          for i in range(40_000))
    return zstandard.ZstdCompressor().compress(body.encode())[:60_000]


@pytest.mark.parametrize("name, content, line, words", [
    ("bare-cr.csv", (_HDR + "g0,2026-03-01 10:00:00,5,bad\rreason\n" + _GOOD).encode(), 2,
     "carriage return"),
    ("runaway.csv", (_HDR + _GOOD + "big,2026-03-01 10:00:00,5," + "x" * 3_000_000 + "\n"
                     + "g9,2026-03-01 10:00:09,9,ok\n").encode(), 5, "longer than 1,048,576"),
    ("cut.csv.zst", _cut_zstd(), None, "zstd data ends early"),
], ids=["bare-cr", "runaway", "cut-zstd"])
def test_damaged_input_is_one_error_naming_file_and_line(tmp_path: Path, name: str,
                                                         content: bytes, line: int | None,
                                                         words: str) -> None:
    # (issue 12.9: these gave stack traces, or stored a truncated row)
    path = tmp_path / name
    path.write_bytes(content)
    rejects = tmp_path / "rej.csv"
    proc = run(tmp_path, "ingest", str(path), "--tenant", "acme", "--rejects", str(rejects))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "pyarrow" not in proc.stderr
    damaged = [ln for ln in proc.stderr.splitlines() if ln.strip().startswith(f"{path}: line ")]
    assert len(damaged) == 1 and words in damaged[0], proc.stderr
    at = int(damaged[0].split(": line ")[1].split(":")[0])
    assert line is None or at == line
    with open(rejects, newline="") as fh:
        assert [int(r["line"]) for r in csv.DictReader(fh)] == [at]
    accepted = int(re.search(r"accepted ([\d,]+), duplicate", proc.stderr).group(1)
                   .replace(",", ""))
    assert accepted == (at - 2 if line is None else len(_GOOD.splitlines()) + (name == "runaway.csv"))


def test_ingest_reports_counts_rejects_and_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "calls.csv"
    good.write_text("call_id,start_time,duration\nx1,2026-03-01 10:00:00,5\nx2,garbage,5\n")
    rejects = tmp_path / "rej.csv"
    proc = run(tmp_path, "ingest", str(good), "--tenant", "acme", "--rejects", str(rejects))
    assert proc.returncode == 0, proc.stderr
    assert "detected format csv" in proc.stderr
    assert "read 2, accepted 1, duplicate 0, rejected 1" in proc.stderr
    assert str(rejects) in proc.stderr and "garbage" in rejects.read_text()
    again = run(tmp_path, "ingest", str(good), "--tenant", "acme", "--rejects", str(rejects))
    assert again.returncode == 0 and "accepted 0, duplicate 1, rejected 1" in again.stderr
    allbad = tmp_path / "bad.csv"
    allbad.write_text("call_id,start_time,duration\ny1,garbage,5\n")
    proc = run(tmp_path, "ingest", str(allbad), "--tenant", "acme")
    assert proc.returncode == 1 and "nothing usable was read" in proc.stderr
    notcdr = tmp_path / "notes.txt"
    notcdr.write_text("hello\n")
    proc = run(tmp_path, "ingest", str(notcdr), "--tenant", "acme")
    assert proc.returncode == 2 and "not a CDR file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_held_store_gives_a_plain_message(tmp_path: Path) -> None:
    run(tmp_path, "init", check=True)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, clickhouse_connect;"
                               f"c = clickhouse_connect.get_client(dsn='chdb://{tmp_path / 'clickhouse'}');"
                               "print('ready', flush=True); sys.stdin.readline()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        proc = run(tmp_path, "accounts", "list")
        assert proc.returncode == 3
        assert f"The data directory {tmp_path / 'clickhouse'} is in use by process {holder.pid}" \
            in proc.stderr.replace("\n", " ").replace("  ", " ") or "is in use by process" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)


def test_sql_and_search_are_guarded_per_principal(demo_dir: Path) -> None:
    mine = run(demo_dir, "sql", "SELECT DISTINCT customer_id FROM cdrs", "--as",
               "tenant:acme/customer:C002", "--format", "csv", check=True)
    assert mine.stdout.split() == ["customer_id", "2"]
    hidden = run(demo_dir, "sql", "SELECT sum(carrier_cost) FROM cdrs", "--as",
                 "tenant:acme/customer:C002")
    assert hidden.returncode == 2 and "carrier_cost" in hidden.stderr
    tenant = run(demo_dir, "sql", "SELECT count() AS n FROM cdrs", "--as", "tenant:globex",
                 "--format", "csv", check=True)
    admin = run(demo_dir, "sql", "SELECT count() AS n FROM cdrs WHERE tenant_id = {t:String}",
                "--param", "t=globex", "--format", "csv", check=True)
    assert tenant.stdout == admin.stdout
    unknown = run(demo_dir, "sql", "SELECT 1", "--as", "tenant:acme/customer:NOPE")
    assert unknown.returncode == 2 and "no customer 'NOPE' in tenant 'acme'" in unknown.stderr
    page1 = run(demo_dir, "search", "--as", "tenant:acme/carrier:K001", "--preset", "all",
                "--limit", "5", "--columns", "call_id,carrier_cost", "--format", "json", check=True)
    rows = [json.loads(line) for line in page1.stdout.splitlines()]
    assert len(rows) == 5 and set(rows[0]) == {"call_id", "carrier_cost", "start_time"}
    cursor = page1.stderr.split("--cursor ")[1].split()[0]
    page2 = run(demo_dir, "search", "--as", "tenant:acme/carrier:K001", "--preset", "all",
                "--limit", "5", "--columns", "call_id,carrier_cost", "--format", "json",
                "--cursor", cursor, check=True)
    rows2 = [json.loads(line) for line in page2.stdout.splitlines()]
    assert not {r["call_id"] for r in rows} & {r["call_id"] for r in rows2}
    assert rows2[0]["start_time"] <= rows[-1]["start_time"]
    bad = run(demo_dir, "search", "--as", "tenant:acme/carrier:K001", "--columns", "customer_charge")
    assert bad.returncode == 2 and "customer_charge" in bad.stderr


def test_init_upgrades_an_older_store_and_shows_the_rebuild(tmp_path: Path, monkeypatch) -> None:
    """A store made before schema 014 (8192-row granules, CDRs in it): `cdrhouse init`
    rebuilds cdr_records, says so partition by partition, and keeps every row."""
    import datetime as dt

    from cdrhouse.engine import generate, migrate as mig, relayout
    from cdrhouse.engine.db import Database, StoreConfig
    from cdrhouse.sql.schema import migrations
    with monkeypatch.context() as m:
        m.setattr(mig, "migrations", lambda: [x for x in migrations() if x.version < 14])
        db = Database(StoreConfig(data_dir=tmp_path))
        mig.migrate(db)
        generate.load(db, generate.GenSpec(rows=2_000, months=2, seed=2, end=dt.datetime(
            2026, 11, 1, tzinfo=dt.timezone.utc)), tmp_path)
        before = db.rows("SELECT count(), sum(cityHash64(tuple(*))) FROM cdr_records")
        assert relayout.table_settings(db, "cdr_records")["index_granularity"] == "8192"
        db.close()
    out = run(tmp_path, "init", check=True)
    assert re.search(r"rebuild of cdr_records: partition 2026\d\d copied \(1 of [23]\)", out.stderr)
    assert "rebuilt cdr_records" in out.stderr
    assert "applied schema 014_granules" in out.stderr
    db = Database(StoreConfig(data_dir=tmp_path))
    try:
        assert relayout.table_settings(db, "cdr_records")["index_granularity"] == "1024"
        assert db.rows("SELECT count(), sum(cityHash64(tuple(*))) FROM cdr_records") == before
    finally:
        db.close()
    assert "rebuild" not in run(tmp_path, "init", check=True).stderr
