"""Hot → warm tiering against a real engine and real S3-compatible servers on loopback.

Every test archives data generated for the six months before today (so, with
three full months kept hot, the oldest three or four months are eligible), then
checks the hot table, the archive as stored, and what independent readers
(pyarrow, DuckDB) make of it, against totals taken before tiering.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import time
import uuid
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
from bytime import assert_copy_exact
from s3servers import s3_client

from cdrhouse.engine import cluster, generate
from cdrhouse.engine.db import Database
from cdrhouse.engine.migrate import migrate
from cdrhouse.tiering import layout, warm
from cdrhouse.tiering.archive import HOLD, STEPS, Tiering
from cdrhouse.tiering.lock import TierLocked, run_lock
from cdrhouse.tiering.policy import (Policy, add_months, first_hot_month, is_eligible, month_of,
                            parse_month)
from cdrhouse.tiering.store import ArchiveError, LocalStore, S3Store

TODAY = dt.datetime.now(dt.UTC).date()
#: the data covers six months from the first day of the month six months ago …
_FIRST = add_months(month_of(TODAY), -6)
END = dt.datetime(_FIRST // 100, _FIRST % 100, 1, tzinfo=dt.UTC) + dt.timedelta(
    days=round(30.44 * 6))
#: … so with three full months kept hot, its first three months move
ARCHIVED = [add_months(_FIRST, i) for i in range(3)]
OLDEST, MIDDLE, NEWEST = ARCHIVED[0], ARCHIVED[1], ARCHIVED[-1]
HOT = add_months(first_hot_month(TODAY, 3), 1)  # a month inside the hot window


class Crash(Exception):
    """Stands for the process dying at a step."""


_TEMPLATES: dict[tuple[str, int, int], str] = {}
#: CDRs per test: ~40-150 per tenant and archived month, enough for several parts and
#: row groups at small part sizes. One size for the module (and test_tier_cli, which
#: uses it too), so each engine builds one template: building one costs seconds.
ROWS = 1500


def load(db: Database, tmp: Path, rows: int = ROWS, seed: int = 7,
         without: tuple[int, ...] = ()) -> None:
    """Generated CDRs through the real ingest path — once per engine and size, into a
    template database; each test then copies the template into its own database (leaving
    out the CDRs of the months `without`, through the same insert, so the daily
    summaries agree with what is there)."""
    key = (db.config.dsn, rows, seed)
    if key not in _TEMPLATES:
        template = Database(dataclasses.replace(db.config, database=f"tpl_{uuid.uuid4().hex[:8]}"))
        migrate(template)
        generate.load(template, generate.GenSpec(rows=rows, months=6, seed=seed, end=END), tmp)
        _TEMPLATES[key] = template.name
        template.close()
    db.command(f"INSERT INTO accounts SELECT * FROM `{_TEMPLATES[key]}`.accounts")
    where = f" WHERE toYYYYMM(start_time) NOT IN {tuple(without) + (0,)}" if without else ""
    db.command(f"INSERT INTO cdr_records SELECT * FROM `{_TEMPLATES[key]}`.cdr_records{where}")


def totals(db: Database, months: list[int] | None = None) -> list[tuple]:
    """Per tenant and UTC day: calls, billsec, charge — what billing looks at."""
    where = f"WHERE toYYYYMM(start_time) IN ({','.join(map(str, months))})" if months else ""
    return [(t, str(d), int(n), int(b), Decimal(c)) for t, d, n, b, c in db.rows(
        "SELECT tenant_id, toDate(start_time) AS d, count(), sum(billsec), "
        f"toString(sum(ifNull(customer_charge, 0))) FROM cdr_records FINAL {where} "
        "GROUP BY tenant_id, d ORDER BY tenant_id, d")]


def hot_month_set(db: Database) -> set[int]:
    return {int(m) for (m,) in db.rows("SELECT DISTINCT toYYYYMM(start_time) FROM cdr_records")}


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    name = f"arch-{uuid.uuid4().hex[:10]}"
    s3_client(moto_endpoint).create_bucket(Bucket=name)
    return name


def s3_store(request, server: str, prefix: str = "cdrhouse", **options) -> S3Store:
    """An S3Store of its own on `server`: "s3" is moto (accepts any signature, any
    If-None-Match), "rclone" is `rclone serve s3` (checks credentials and signatures,
    ignores If-None-Match, gives a multipart object a plain MD5 ETag)."""
    if server == "s3":
        return S3Store(request.getfixturevalue("bucket"), prefix,
                       endpoint=request.getfixturevalue("moto_endpoint"), access_key="test",
                       secret_key="test", **options)
    rclone = request.getfixturevalue("rclone_s3")
    return S3Store("archive", f"{prefix}-{uuid.uuid4().hex[:8]}".lstrip("-"),
                   endpoint=rclone.endpoint, access_key=rclone.access_key,
                   secret_key=rclone.secret_key, **options)


@pytest.fixture(params=["local", "s3", "rclone"])
def archive(request, tmp_path: Path):
    """The kinds of object store: a directory, and S3 over HTTP on moto and on rclone."""
    if request.param == "local":
        return LocalStore(tmp_path / "warm")
    return s3_store(request, request.param)


def independent_totals(archive, tmp_path: Path) -> list[tuple]:
    """Read the archive with pyarrow's dataset API (Hive partitioning), not with us."""
    if isinstance(archive, LocalStore):
        fs, root = pafs.LocalFileSystem(), str(archive.root / layout.ROOT)
    else:
        creds = archive._session.get_credentials().get_frozen_credentials()
        fs = pafs.S3FileSystem(endpoint_override=archive.endpoint, scheme="http",
                               access_key=creds.access_key, secret_key=creds.secret_key,
                               region="us-east-1")
        root = f"{archive.bucket}/{archive.prefix}/{layout.ROOT}"
    table = pads.dataset(root, filesystem=fs, format="parquet", partitioning="hive").to_table(
        columns=["tenant", "start_time", "billsec", "customer_charge"])
    con = duckdb.connect()
    con.register("t", table)
    return [(t, str(d), int(n), int(b), Decimal(str(c))) for t, d, n, b, c in con.execute(
        "SELECT tenant, CAST(start_time AT TIME ZONE 'UTC' AS DATE) AS d, count(*), "
        "sum(billsec), sum(coalesce(customer_charge, 0)) FROM t GROUP BY ALL ORDER BY ALL"
    ).fetchall()]


# -- the policy -------------------------------------------------------------------------

@pytest.mark.parametrize("today, keep, first_hot, eligible, not_eligible", [
    (dt.date(2026, 11, 22), 3, 202608, 202607, 202608),
    (dt.date(2026, 11, 1), 3, 202608, 202607, 202608),
    (dt.date(2026, 11, 30), 1, 202610, 202609, 202610),
    (dt.date(2026, 2, 15), 3, 202511, 202510, 202511),
    (dt.date(2026, 1, 1), 12, 202501, 202412, 202501),
])
def test_policy_keeps_full_months_hot(today, keep, first_hot, eligible, not_eligible) -> None:
    assert first_hot_month(today, keep) == first_hot
    assert is_eligible(eligible, today, keep)
    assert not is_eligible(not_eligible, today, keep)


@pytest.mark.parametrize("month, n, expected", [(202601, -1, 202512), (202612, 1, 202701),
                                                (202606, -18, 202412), (202606, 0, 202606)])
def test_add_months(month, n, expected) -> None:
    assert add_months(month, n) == expected


@pytest.mark.parametrize("text, expected", [("202607", 202607), ("2026-07", 202607),
                                            ("202613", None), ("2026", None), ("july", None)])
def test_parse_month(text, expected) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="YYYYMM"):
            parse_month(text)
    else:
        assert parse_month(text) == expected


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Policy(keep_months=0)


# -- object stores ----------------------------------------------------------------------

def test_object_store_contract(archive, tmp_path: Path) -> None:
    assert archive.get_bytes("a/x.json") is None and archive.head("a/x.json") is None
    archive.put_bytes("a/x.json", b'{"v": 1}')
    assert archive.get_bytes("a/x.json") == b'{"v": 1}'
    assert archive.head("a/x.json").size == 8
    assert archive.put_if_absent("a/lock", b"one") is True
    assert archive.put_if_absent("a/lock", b"two") is False
    assert archive.get_bytes("a/lock") == b"one"
    archive.copy("a/x.json", "b/y.json")
    assert [o.key for o in archive.list("")] == ["a/lock", "a/x.json", "b/y.json"]
    assert [o.key for o in archive.list("b/")] == ["b/y.json"]
    assert b"".join(archive.open("b/y.json")) == b'{"v": 1}'
    archive.delete("a/x.json")
    archive.delete("a/missing")  # deleting what is not there is fine
    assert [o.key for o in archive.list("a/")] == ["a/lock"]


@pytest.mark.parametrize("server", ["s3", "rclone"])
def test_large_files_go_up_in_parts(request, server: str, tmp_path: Path) -> None:
    """Parts are never under S3's 5 MiB minimum (AWS refuses EntityTooSmall; neither test
    server does, so the size is checked from the ETag where the server keeps one), and
    nothing relies on the ETag's form: moto gives AWS's md5-of-parts "-" parts, rclone
    the plain MD5 of the object."""
    store = s3_store(request, server, "p", multipart_threshold=1 << 20)
    big = tmp_path / "big.bin"
    payload = bytes(range(256)) * (12 * 4096)  # 12 MiB
    big.write_bytes(payload)
    store.put_file("big.bin", big)
    info = store.head("big.bin")
    assert info.size == len(payload)
    # parts of max(5 MiB, threshold): 5 + 5 + 2 MiB
    parts = [payload[i:i + (5 << 20)] for i in range(0, len(payload), 5 << 20)]
    multipart = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert info.etag in (f"{multipart}-{len(parts)}", hashlib.md5(payload).hexdigest())
    if server == "s3":
        assert info.etag == f"{multipart}-3"
    assert b"".join(store.open("big.bin")) == payload


def test_local_store_keeps_keys_inside_its_directory(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "warm")
    with pytest.raises(ArchiveError, match="leaves the archive directory"):
        store.put_bytes("../escape.txt", b"x")
    assert not (tmp_path / "escape.txt").exists()


def test_wrong_credentials_missing_bucket_and_no_server_are_named(rclone_s3) -> None:
    good = S3Store("archive", "p", endpoint=rclone_s3.endpoint,
                   access_key=rclone_s3.access_key, secret_key=rclone_s3.secret_key)
    good.check()
    good.put_bytes("k", b"v")
    wrong = S3Store("archive", "p", endpoint=rclone_s3.endpoint,
                    access_key=rclone_s3.access_key, secret_key="not-the-secret")
    with pytest.raises(ArchiveError, match="rejected the credentials.*AWS_SECRET_ACCESS_KEY"):
        wrong.check()
    with pytest.raises(ArchiveError, match="rejected the credentials"):
        wrong.put_bytes("k", b"overwritten?")
    assert good.get_bytes("k") == b"v"
    missing = S3Store("no-such-bucket", "p", endpoint=rclone_s3.endpoint,
                      access_key=rclone_s3.access_key, secret_key=rclone_s3.secret_key)
    with pytest.raises(ArchiveError, match="bucket 'no-such-bucket' does not exist"):
        missing.check()
    # a refused port: no retries, so the message comes at once instead of after
    # botocore's backoffs (the default retries a refused connection for ~15 s)
    nobody = S3Store("archive", "p", endpoint="http://127.0.0.1:9", access_key="a",
                     secret_key="b", retries=0, connect_timeout=1)
    assert nobody.client.meta.config.retries["total_max_attempts"] == 1
    assert nobody.client.meta.config.connect_timeout == 1
    with pytest.raises(ArchiveError, match="cannot reach the S3 endpoint http://127.0.0.1:9"):
        nobody.check()


def test_a_run_with_wrong_credentials_changes_nothing(embedded_db: Database, rclone_s3,
                                                      tmp_path: Path) -> None:
    load(embedded_db, tmp_path)
    before = totals(embedded_db)
    wrong = S3Store("archive", "w", endpoint=rclone_s3.endpoint,
                    access_key=rclone_s3.access_key, secret_key="nope")
    with pytest.raises(ArchiveError, match="rejected the credentials"):
        Tiering(embedded_db, wrong).run(today=TODAY)
    assert totals(embedded_db) == before
    assert warm.warm_months(embedded_db) == []


def test_the_job_runs_against_a_server_that_checks_credentials(embedded_db: Database, rclone_s3,
                                                                tmp_path: Path) -> None:
    load(embedded_db, tmp_path)
    before = totals(embedded_db, ARCHIVED)
    store = S3Store("archive", f"run-{uuid.uuid4().hex[:6]}", endpoint=rclone_s3.endpoint,
                    access_key=rclone_s3.access_key, secret_key=rclone_s3.secret_key)
    report = Tiering(embedded_db, store).run(today=TODAY)
    assert report.dropped == ARCHIVED
    assert sum(r[2] for r in before) == report.rows
    assert not hot_month_set(embedded_db) & set(ARCHIVED)


# -- the job ------------------------------------------------------------------------------

def test_archive_verify_drop_and_read_back_independently(store: Database, archive,
                                                         tmp_path: Path) -> None:
    load(store, tmp_path)
    before_all = totals(store)
    before = totals(store, ARCHIVED)
    tier = Tiering(store, archive, Policy(max_part_rows=100))

    dry = tier.run(today=TODAY, dry_run=True)
    assert [p.month for p in dry.plan if p.eligible] == ARCHIVED
    assert sum(p.rows for p in dry.plan if p.eligible) == sum(r[2] for r in before)
    assert hot_month_set(store) >= set(ARCHIVED)  # a dry run moves nothing
    assert archive.list("") == []

    report = tier.run(today=TODAY)
    assert report.dropped == ARCHIVED
    assert report.rows == sum(r[2] for r in before)
    assert not hot_month_set(store) & set(ARCHIVED)
    assert_copy_exact(store)            # the months left the time-ordered copy too
    assert totals(store) == [r for r in before_all if r not in before]  # hot months untouched

    # the archive as stored: Hive keys, bounded parts, manifests, the index
    keys = [o.key for o in archive.list("")]
    assert layout.INDEX_KEY in keys
    assert not [k for k in keys if k.startswith(layout.STAGING) or k == layout.LOCK_KEY]
    index = json.loads(archive.get_bytes(layout.INDEX_KEY))
    assert {(m["tenant"], m["month"]) for m in index["months"]} == {
        (t, m) for t in ("acme", "globex", "initech") for m in ARCHIVED}
    acme = warm.read_manifest(archive, "acme", MIDDLE)
    assert len(acme.files) > 1 and all(f.rows <= 100 for f in acme.files)
    assert all(k.startswith(f"cdrs/tenant=acme/month={MIDDLE}/part-") for k in acme.keys)
    enum = "Enum8('outbound' = 1, 'inbound' = 2, 'internal' = 3)"
    assert acme.compression == "zstd" and ("direction", enum) in acme.columns
    assert [w.state for w in warm.warm_months(store)] == ["archived"] * 9

    # an independent reader gets the same per-tenant, per-day totals
    assert independent_totals(archive, tmp_path) == before

    # a rerun finds nothing to do and changes nothing
    again = tier.run(today=TODAY)
    assert again.archived == [] and again.dropped == []
    assert independent_totals(archive, tmp_path) == before

    # restore is verified and idempotent
    restored = tier.restore(MIDDLE)
    assert {t for t, _, what in restored if what == "restored"} == {"acme", "globex", "initech"}
    assert tier.restore(MIDDLE)[0][2] == "already hot"
    assert totals(store, [MIDDLE]) == [r for r in before if r[1].startswith(layout.month_label(MIDDLE))]
    assert warm.warm_month(store, "acme", MIDDLE).state == "restored"
    assert_copy_exact(store)
    # … and tiering it again reuses the archive instead of writing it twice
    parts_before = [o.key for o in archive.list(f"cdrs/tenant=acme/month={MIDDLE}/")]
    third = tier.run(today=TODAY)
    assert third.archived == [] and third.dropped == [MIDDLE]
    assert [o.key for o in archive.list(f"cdrs/tenant=acme/month={MIDDLE}/")] == parts_before
    assert independent_totals(archive, tmp_path) == before


def test_parquet_is_sorted_zstd_with_enums_as_strings(embedded_db: Database, tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    load(embedded_db, tmp_path)
    archive = LocalStore(tmp_path / "warm")
    Tiering(embedded_db, archive, Policy(row_group_rows=50)).run(today=TODAY, tenants=["acme"])
    manifest = warm.read_manifest(archive, "acme", NEWEST)
    meta = pq.ParquetFile(archive.root / manifest.keys[0])
    assert meta.metadata.num_row_groups > 1
    assert meta.metadata.row_group(0).column(0).compression == "ZSTD"
    table = meta.read()
    assert str(table.schema.field("direction").type) == "string"
    assert set(table.column("disposition").to_pylist()) <= {
        "ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION"}
    order = list(zip(table.column("customer_id").to_pylist(), table.column("start_time").to_pylist(),
                     strict=True))
    assert order == sorted(order)


def test_tenant_filter_archives_but_drops_only_when_every_tenant_is_in(
        embedded_db: Database, tmp_path: Path) -> None:
    load(embedded_db, tmp_path)
    tier = Tiering(embedded_db, LocalStore(tmp_path / "warm"))
    report = tier.run(today=TODAY, months=[NEWEST], tenants=["acme"])
    assert [(m.tenant, m.month) for m in report.archived] == [("acme", NEWEST)]
    assert report.dropped == [] and "tenant globex is not archived yet" in report.skipped[0]
    assert NEWEST in hot_month_set(embedded_db)
    report = tier.run(today=TODAY, months=[NEWEST])
    assert report.unchanged == [("acme", NEWEST)] and report.dropped == [NEWEST]


def test_a_month_inside_the_window_is_never_moved(embedded_db: Database, tmp_path: Path) -> None:
    load(embedded_db, tmp_path)
    tier = Tiering(embedded_db, LocalStore(tmp_path / "warm"))
    report = tier.run(today=TODAY, months=[HOT])
    assert report.archived == [] and report.dropped == []
    assert "keeps 3 full months" in report.plan[0].reason
    assert HOT in hot_month_set(embedded_db)


def test_late_rows_for_an_archived_month_are_archived_again_without_loss(
        embedded_db: Database, tmp_path: Path) -> None:
    load(embedded_db, tmp_path)
    archive = LocalStore(tmp_path / "warm")
    tier = Tiering(embedded_db, archive)
    before = totals(embedded_db, ARCHIVED)
    tier.run(today=TODAY)
    first = warm.read_manifest(archive, "acme", MIDDLE)
    # a late CDR for June arrives after June was archived
    embedded_db.command(
        "INSERT INTO cdr_records SELECT * REPLACE ('late-1' AS call_id, 99 AS billsec, "
        "1 AS version) FROM file({p:String}, 'Parquet') LIMIT 1",
        {"p": str(archive.root / first.keys[0])})
    tier.run(today=TODAY)
    second = warm.read_manifest(archive, "acme", MIDDLE)
    assert second.rows == first.rows + 1
    assert set(second.keys).isdisjoint(first.keys)  # new part numbers, old parts gone
    assert [o.key for o in archive.list(f"cdrs/tenant=acme/month={MIDDLE}/")] == sorted(
        second.keys + [f"cdrs/tenant=acme/month={MIDDLE}/_manifest.json"])
    assert MIDDLE not in hot_month_set(embedded_db)
    after = independent_totals(archive, tmp_path)
    june = [r for r in after if r[0] == "acme" and r[1].startswith(layout.month_label(MIDDLE))]
    assert sum(r[2] for r in june) == sum(r[2] for r in before if r[0] == "acme"
                                          and r[1].startswith(layout.month_label(MIDDLE))) + 1


#: every step on a directory archive; on S3 the steps whose store operations differ
CRASHES = [("local", step) for step in STEPS] + [
    (server, step) for server in ("s3", "rclone")
    for step in ("exported", "published", "manifest", "moved")]


@pytest.mark.parametrize("kind, step", CRASHES)
def test_a_crash_at_any_step_converges_on_rerun(request, embedded_db: Database, tmp_path: Path,
                                                kind: str, step: str) -> None:
    """Two eligible months, not three: the crash comes at the first time the job
    reaches `step`, in the oldest month, and the rerun must both finish what the crash
    left and then take the next month through the same steps (the holding table is
    made again for it); a third month would only repeat the second."""
    if kind == "local":
        archive = LocalStore(tmp_path / "warm")
    else:
        archive = s3_store(request, kind)
    store = embedded_db
    load(store, tmp_path, without=(NEWEST,))
    archived = [OLDEST, MIDDLE]
    before = totals(store, archived)
    assert before and hot_month_set(store) >= set(archived) and NEWEST not in hot_month_set(store)
    hot_before = totals(store)
    crashed = []

    def fault(at: str) -> None:
        if at == step and not crashed:
            crashed.append(at)
            raise Crash(at)

    with pytest.raises(Crash):
        Tiering(store, archive, Policy(max_part_rows=300), fault=fault).run(today=TODAY)
    assert crashed == [step]
    # whatever the crash left, no row is lost from the union of hot and archive
    report = Tiering(store, archive, Policy(max_part_rows=300)).run(today=TODAY)
    assert MIDDLE in report.dropped and sorted(set(report.dropped) | set(archived)) == archived
    assert not hot_month_set(store) & set(archived)
    assert totals(store) == [r for r in hot_before if r not in before]
    assert independent_totals(archive, tmp_path) == before  # none lost, none twice
    assert [(w.tenant, w.month, w.state) for w in warm.warm_months(store)] == [
        (t, m, "archived") for t in ("acme", "globex", "initech") for m in archived]
    assert not archive.list(layout.STAGING) and archive.get_bytes(layout.LOCK_KEY) is None
    assert not int(store.scalar(f"SELECT count() FROM {HOLD}") or 0)


def test_rows_that_reach_the_partition_after_the_check_are_returned_not_dropped(
        embedded_db: Database, tmp_path: Path) -> None:
    load(embedded_db, tmp_path)
    archive = LocalStore(tmp_path / "warm")

    def fault(at: str) -> None:
        if at == "moved":
            # a late row that was in the partition when it moved, but not in the archive
            embedded_db.command(
                f"INSERT INTO {HOLD} SELECT * REPLACE ('late-2' AS call_id) FROM {HOLD} "
                f"WHERE tenant_id = 'acme' AND toYYYYMM(start_time) = {OLDEST} LIMIT 1")
            raise Crash(at)

    with pytest.raises(Crash):
        Tiering(embedded_db, archive, fault=fault).run(today=TODAY, months=[OLDEST])
    rows = warm.read_manifest(archive, "acme", OLDEST).rows
    Tiering(embedded_db, archive).recover()  # what a rerun does first: the row goes back
    assert embedded_db.rows("SELECT call_id, toYYYYMM(start_time) FROM cdr_records "
                            "WHERE call_id = 'late-2'") == [("late-2", OLDEST)]
    report = Tiering(embedded_db, archive).run(today=TODAY, months=[OLDEST])
    assert report.dropped == [OLDEST]
    assert embedded_db.rows("SELECT count() FROM cdr_records WHERE call_id = 'late-2'") == [(0,)]
    assert warm.read_manifest(archive, "acme", OLDEST).rows == rows + 1


def test_a_corrupt_archive_file_fails_verification_and_keeps_the_month(
        embedded_db: Database, tmp_path: Path) -> None:
    load(embedded_db, tmp_path)
    archive = LocalStore(tmp_path / "warm")

    def fault(at: str) -> None:
        if at == "exported":  # the store loses a row between upload and read-back
            for obj in archive.list(layout.STAGING):
                path = archive.root / obj.key
                embedded_db.command(
                    "INSERT INTO FUNCTION file({o:String}, 'Parquet') SELECT * FROM "
                    "file({p:String}, 'Parquet') LIMIT 1 OFFSET 1",
                    {"o": str(path) + ".x", "p": str(path)},
                    settings={"engine_file_truncate_on_insert": 1})
                Path(str(path) + ".x").replace(path)
                break

    with pytest.raises(ArchiveError, match="verification failed.*nothing was dropped"):
        Tiering(embedded_db, archive, fault=fault).run(today=TODAY, months=[OLDEST])
    assert OLDEST in hot_month_set(embedded_db)
    assert warm.warm_months(embedded_db) == []
    assert not archive.list(layout.STAGING)


@pytest.mark.parametrize("server", ["s3", "rclone"])
def test_two_runs_cannot_hold_the_archive_at_once(request, server: str) -> None:
    """Also on a server that ignores If-None-Match (rclone): the lock must not be taken
    by overwriting a live holder's object."""
    store = s3_store(request, server, "")
    with run_lock(store), pytest.raises(
            TierLocked, match="a tiering run is already in progress in this process"):
        with run_lock(store):
            pytest.fail("a second run took the lock")
    # another process (alive, on another host) holds it
    store.put_bytes(layout.LOCK_KEY, json.dumps({
        "token": "x", "host": "elsewhere", "pid": 1, "what": "tier run",
        "started_at": "2026-11-22T00:00:00+00:00",
        "expires_at": "2999-01-01T00:00:00+00:00"}).encode())
    with pytest.raises(TierLocked, match="host elsewhere"), run_lock(store):
        pytest.fail("took a lock a live process holds")
    # … and a dead holder's lock is taken over
    store.put_bytes(layout.LOCK_KEY, json.dumps({
        "token": "x", "host": "elsewhere", "pid": 1, "what": "tier run",
        "started_at": "2026-11-20T00:00:00+00:00",
        "expires_at": "2026-11-21T00:00:00+00:00"}).encode())
    with run_lock(store):
        taken = json.loads(store.get_bytes(layout.LOCK_KEY))
    assert taken["host"] != "elsewhere"
    assert store.get_bytes(layout.LOCK_KEY) is None


def _lock_of(store) -> dict:
    """The lock object, read while the heartbeat may be rewriting it: rclone answers a
    GET that races a PUT of the same key with a 500 (which botocore then fails to
    parse), so a read is retried a few times; a run does the same by beating again."""
    for attempt in range(10):
        try:
            return json.loads(store.get_bytes(layout.LOCK_KEY))
        except Exception:  # noqa: BLE001 - see above
            if attempt == 9:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _next_beat(store, seen: dict) -> dict:
    """The lock once the heartbeat has renewed it after `seen` (right after a beat, so
    the next one is a whole interval away)."""
    deadline = time.monotonic() + 15
    while (now := _lock_of(store))["expires_at"] == seen["expires_at"]:
        assert time.monotonic() < deadline, "the lock was never renewed"
        time.sleep(0.02)
    return now


def test_the_lock_is_renewed_while_held_and_left_alone_once_lost(archive) -> None:
    """A run keeps the archive however long it takes by renewing a short lock; a dead
    holder on another host therefore blocks for minutes (DEFAULT_TTL), not hours. A lock
    taken over meanwhile (after an expiry) is the other run's: never rewritten or deleted."""
    from cdrhouse.tiering.lock import DEFAULT_TTL
    assert DEFAULT_TTL <= dt.timedelta(minutes=10)
    beat = dict(ttl=dt.timedelta(seconds=30), renew_every=dt.timedelta(seconds=0.5))
    with run_lock(archive, **beat) as held:
        first = _lock_of(archive)
        renewed = _next_beat(archive, first)
        assert renewed["token"] == held.token and renewed["started_at"] == first["started_at"]
        assert renewed["expires_at"] > first["expires_at"]
    assert archive.get_bytes(layout.LOCK_KEY) is None
    other = {"token": "other", "host": "elsewhere", "pid": 1, "what": "tier run",
             "started_at": "2026-11-29T00:00:00+00:00", "expires_at": "2999-01-01T00:00:00+00:00"}
    with run_lock(archive, **beat):
        _next_beat(archive, _lock_of(archive))       # taken over between two beats
        archive.put_bytes(layout.LOCK_KEY, json.dumps(other).encode())
        time.sleep(1.5)                              # the next beats see it is not theirs
        assert _lock_of(archive) == other
    assert _lock_of(archive) == other
    archive.delete(layout.LOCK_KEY)


def test_a_run_that_lost_its_lock_stops_before_dropping(embedded_db: Database,
                                                        tmp_path: Path) -> None:
    """A run stopped longer than its lock lasts (a paused VM) finds the lock taken over by
    another run when it wakes: it must not drop the month the other run now owns."""
    load(embedded_db, tmp_path)
    archive = LocalStore(tmp_path / "warm")
    before = embedded_db.rows(f"SELECT count() FROM cdr_records WHERE toYYYYMM(start_time) "
                              f"= {OLDEST}")
    other = {"token": "other", "host": "elsewhere", "pid": 1, "what": "tier run",
             "started_at": "2026-11-29T00:00:00+00:00", "expires_at": "2999-01-01T00:00:00+00:00"}

    def progress(what: str, done: int, total: int) -> None:
        if what.startswith("drop "):            # meanwhile, another run took it over
            archive.put_bytes(layout.LOCK_KEY, json.dumps(other).encode())

    with pytest.raises(TierLocked, match=rf"this tier run lost the lock .* stopped before "
                                         rf"dropping month {OLDEST} from the hot store"):
        Tiering(embedded_db, archive, progress=progress).run(today=TODAY, months=[OLDEST])
    assert embedded_db.rows(f"SELECT count() FROM cdr_records WHERE toYYYYMM(start_time) "
                            f"= {OLDEST}") == before             # nothing dropped
    assert _lock_of(archive) == other                              # and its lock left alone
    archive.delete(layout.LOCK_KEY)
    assert Tiering(embedded_db, archive).run(today=TODAY, months=[OLDEST]).dropped == [OLDEST]


def test_restore_of_a_month_never_archived_is_refused(embedded_db: Database,
                                                      tmp_path: Path) -> None:
    tier = Tiering(embedded_db, LocalStore(tmp_path / "warm"))
    with pytest.raises(ArchiveError, match="nothing archived for month 202401"):
        tier.restore(202401)
    with pytest.raises(ArchiveError, match="tenant acme has no archive for month 202401"):
        tier.restore(202401, ["acme"])


def test_restore_refuses_an_incomplete_archive(embedded_db: Database, tmp_path: Path) -> None:
    load(embedded_db, tmp_path)
    archive = LocalStore(tmp_path / "warm")
    tier = Tiering(embedded_db, archive)
    tier.run(today=TODAY, months=[MIDDLE])
    manifest = warm.read_manifest(archive, "globex", MIDDLE)
    archive.delete(manifest.keys[0])
    with pytest.raises(ArchiveError, match="incomplete.*nothing was restored"):
        tier.restore(MIDDLE, ["globex"])
    assert not embedded_db.rows("SELECT 1 FROM cdr_records WHERE tenant_id = 'globex' AND "
                                f"toYYYYMM(start_time) = {MIDDLE} LIMIT 1")


def test_the_checksum_sees_nulls_duplicates_and_every_column(embedded_db: Database) -> None:
    from cdrhouse.tiering.verify import fingerprint, hot_columns
    columns = hot_columns(embedded_db)
    source = "(SELECT * FROM cdr_records)"

    def insert(call_id: str, answer: str | None, charge: str | None) -> None:
        embedded_db.command(
            "INSERT INTO cdr_records (tenant_id, call_id, start_time, answer_time, end_time, "
            "customer_charge, version) VALUES ('acme', {c:String}, '2026-01-01 00:00:00', "
            "{a:Nullable(DateTime64(3, 'UTC'))}, '2026-01-01 00:01:00', "
            "{ch:Nullable(Decimal(18, 6))}, 1)", {"c": call_id, "a": answer, "ch": charge})

    insert("a", None, None)  # a row of NULLs still counts
    one = fingerprint(embedded_db, source, columns)
    assert one.rows == 1 and one.checksum != "0"
    insert("a", None, None)  # the same row twice is not the same table
    two = fingerprint(embedded_db, source, columns)
    assert two.rows == 2 and two.checksum not in ("0", one.checksum)
    seen = {two.checksum}
    for answer, charge in [("2026-01-01 00:00:05", None), (None, "0"), (None, "0.000001")]:
        embedded_db.command("TRUNCATE TABLE cdr_records")
        insert("a", None, None)
        insert("a", answer, charge)  # NULL vs a zero value vs a value: all different
        fp = fingerprint(embedded_db, source, columns)
        assert fp.checksum not in seen
        seen.add(fp.checksum)


def test_a_row_written_during_the_run_is_never_dropped_with_the_partition(
        embedded_db: Database, tmp_path: Path) -> None:
    load(embedded_db, tmp_path)
    archive = LocalStore(tmp_path / "warm")
    wrote = []

    def fault(at: str) -> None:
        if at == "recorded":
            wrote.append(at)
        if at == "recorded" and len(wrote) == 3:  # after the last export, before the drop
            embedded_db.command(
                "INSERT INTO cdr_records SELECT * REPLACE ('during-run' AS call_id) FROM "
                f"cdr_records WHERE tenant_id = 'initech' AND toYYYYMM(start_time) = {OLDEST} "
                "LIMIT 1")

    report = Tiering(embedded_db, archive, fault=fault).run(today=TODAY, months=[OLDEST])
    assert report.dropped == [OLDEST] and report.returned_rows == 1
    assert embedded_db.rows("SELECT call_id FROM cdr_records WHERE call_id = 'during-run'") == [
        ("during-run",)]
    assert_copy_exact(embedded_db)      # the returned row is in the time-ordered copy too
    again = Tiering(embedded_db, archive).run(today=TODAY, months=[OLDEST])
    assert again.dropped == [OLDEST]
    assert not embedded_db.rows("SELECT 1 FROM cdr_records WHERE call_id = 'during-run'")
    table = pads.dataset(str(archive.root / layout.ROOT), format="parquet",
                         partitioning="hive").to_table(filter=pads.field("call_id") == "during-run")
    assert table.num_rows == 1


def test_a_row_written_after_the_move_stays_in_the_time_ordered_copy(
        embedded_db: Database, tmp_path: Path) -> None:
    """A call written to the month once its partition has left the hot table (and before
    the month leaves the time-ordered copy) stays hot, and in the copy."""
    load(embedded_db, tmp_path)

    def fault(at: str) -> None:
        if at == "moved":
            embedded_db.command(
                "INSERT INTO cdr_records SELECT * REPLACE ('after-move' AS call_id) FROM "
                f"{HOLD} WHERE tenant_id = 'initech' AND toYYYYMM(start_time) = {OLDEST} LIMIT 1")

    report = Tiering(embedded_db, LocalStore(tmp_path / "warm"), fault=fault).run(
        today=TODAY, months=[OLDEST])
    assert report.dropped == [OLDEST]
    for table in ("cdr_records", "cdr_records_by_time"):
        assert embedded_db.rows(f"SELECT call_id FROM {table} WHERE toYYYYMM(start_time) = "
                                f"{OLDEST}") == [("after-move",)]
    assert_copy_exact(embedded_db)


def test_daily_summaries_stay_exact_through_archive_and_restore(embedded_db: Database,
                                                                tmp_path: Path) -> None:
    from cdrhouse.engine import summary
    load(embedded_db, tmp_path)
    first = dt.date(OLDEST // 100, OLDEST % 100, 1)
    last = dt.date(TODAY.year, TODAY.month, 1)
    before = {t: summary.totals(embedded_db, t, first, last) for t in ("acme", "globex")}
    assert before["acme"]
    archive = LocalStore(tmp_path / "warm")
    Tiering(embedded_db, archive).run(today=TODAY)
    # archived months leave the hot table but stay in the summaries (balances need them)
    assert {t: summary.totals(embedded_db, t, first, last) for t in before} == before
    Tiering(embedded_db, archive).restore(MIDDLE)
    assert {t: summary.totals(embedded_db, t, first, last) for t in before} == before
    Tiering(embedded_db, archive).restore(MIDDLE)  # again: already hot, still exact
    assert {t: summary.totals(embedded_db, t, first, last) for t in before} == before


def test_a_restored_month_is_one_merged_part(embedded_db: Database, tmp_path: Path) -> None:
    """One tenant restored into an emptied month is one insert, i.e. one unmerged part,
    which ClickHouse never merges on its own and FINAL would merge on every read
    (sql/schema/015_settled.sql): the restore merges it, and the rows are the same."""
    load(embedded_db, tmp_path)
    before = [r for r in totals(embedded_db, [MIDDLE]) if r[0] == "acme"]
    tier = Tiering(embedded_db, LocalStore(tmp_path / "warm"))
    tier.run(today=TODAY)
    assert MIDDLE not in hot_month_set(embedded_db)
    assert tier.restore(MIDDLE, ["acme"])[0][2] == "restored"
    levels = [lv for (lv,) in embedded_db.rows(
        "SELECT level FROM system.parts WHERE active AND database = currentDatabase() "
        "AND table = 'cdr_records' AND partition_id = {p:String}", {"p": str(MIDDLE)})]
    assert len(levels) == 1 and levels[0] > 0
    assert totals(embedded_db, [MIDDLE]) == before


def test_the_run_merges_idle_months_that_are_one_unmerged_part(store: Database,
                                                                tmp_path: Path) -> None:
    """A backfill that wrote a month with one insert leaves it one unmerged part, which
    ClickHouse never merges on its own (015_settled.sql): the run merges such a month
    once it is idle for `settle_idle_hours`, leaves the current month to ClickHouse, and
    changes no row. (On the cluster the same happens on each node's table.)"""
    load(store, tmp_path)
    table = cluster.local(store, "cdr_records")
    # every month written by one insert, as a backfill does, and never merged
    cluster.each_node(store, f"CREATE TABLE IF NOT EXISTS backfill{{on_cluster}} AS {table}")
    cluster.each_node(store, f"INSERT INTO backfill SELECT * FROM {table} "
                             "SETTINGS optimize_on_insert = 0")   # as engine/ingest.py
    cluster.each_node(store, f"EXCHANGE TABLES backfill AND {table}")
    cluster.each_node(store, "DROP TABLE backfill SYNC")
    current = month_of(TODAY)
    store.command("INSERT INTO cdr_records SELECT * REPLACE (concat(call_id, '-now') AS call_id, "
                  "now64(3) AS start_time) FROM cdr_records FINAL LIMIT 3",
                  settings={"optimize_on_insert": 0, "distributed_foreground_insert": 1})

    def unmerged() -> set[int]:
        return {int(p) for (p,) in store.rows(
            f"SELECT partition FROM {cluster.parts_table(store)} WHERE active AND "
            "database = {db:String} AND table = {t:String} AND level = 0",
            {"db": store.name, "t": table})}

    assert HOT in unmerged() and current in unmerged()
    tier = Tiering(store, LocalStore(tmp_path / "warm"))          # six idle hours: none
    assert tier.run(today=TODAY).merged == []
    before = totals(store)
    report = Tiering(store, LocalStore(tmp_path / "warm"),
                     Policy(settle_idle_hours=0)).run(today=TODAY)
    assert HOT in report.merged and current not in report.merged
    assert unmerged() == {current}
    assert totals(store) == before


@pytest.mark.parametrize("code, message", [
    ("AccessDenied", "no permission to write s3://bkt/p/k.json.*grant the archive's credentials"),
    ("InvalidAccessKeyId", "rejected the credentials \\(InvalidAccessKeyId\\)"),
    ("NoSuchBucket", "bucket 'bkt' does not exist at http://127.0.0.1:1"),
    ("SlowDown", "S3 error SlowDown while trying to write s3://bkt/p/k.json"),
])
def test_s3_errors_are_worded_for_the_operator(code: str, message: str) -> None:
    """The wording of errors no loopback server here produces (e.g. a policy denial)."""
    from botocore.exceptions import ClientError
    store = S3Store("bkt", "p", endpoint="http://127.0.0.1:1", access_key="a", secret_key="b")
    error = ClientError({"Error": {"Code": code, "Message": "x"}}, "PutObject")
    with pytest.raises(ArchiveError, match=message):
        raise store._fail(error, "write", "k.json")
