"""Shared fixtures: one embedded engine per test process, one HTTP-served engine per session.

The embedded engine can hold one data directory per process, so every test
that uses it shares one path and is isolated by its own database, dropped at
the end. The `store` fixture runs a test on both interfaces of a real engine:
embedded (chdb://) and HTTP (a clickhouse-local served on 127.0.0.1) — and, in
the core suites (`CLUSTER_SUITES`), on a third configuration: a 2-shard local
cluster of embedded nodes (tests/chcluster.py), the store's schema sharded
across it (engine/cluster.py). One cluster per session, one database per test.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from chcluster import LocalCluster
from chserver import ClickHouseHTTPServer
from s3servers import MotoServer, RcloneS3Server

from cdrhouse.engine import cluster as cluster_mod
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engine")


@pytest.fixture(scope="session")
def embedded_dsn(engine_dir: Path) -> str:
    return f"chdb://{engine_dir / 'clickhouse'}"


@pytest.fixture(scope="session")
def http_server():
    server = ClickHouseHTTPServer().start()
    yield server
    server.stop()


#: test modules whose `store` tests also run on the 2-shard cluster (the core suites)
CLUSTER_SUITES = {"test_ingest", "test_viewer", "test_query", "test_guard", "test_summary_guard",
                  "test_daily_summary_rows", "test_rating", "test_recalc", "test_tiering",
                  "test_cluster", "test_versions"}


def pytest_generate_tests(metafunc):
    if "store" in metafunc.fixturenames:
        params = ["embedded", "http"]
        if metafunc.module.__name__.rsplit(".", 1)[-1] in CLUSTER_SUITES:
            params.append("cluster")
        metafunc.parametrize("store", params, indirect=True)


@pytest.fixture(scope="session")
def local_cluster():
    """Two shards, one embedded node each, on loopback, for the whole session."""
    cluster = LocalCluster(shards=2).start()
    yield cluster
    cluster.stop()


def _fresh(dsn: str, data_dir: Path, cluster: str | None = None) -> Database:
    name = f"t_{uuid.uuid4().hex[:12]}"
    db = Database(StoreConfig(data_dir=data_dir, clickhouse=dsn, database=name, cluster=cluster))
    migrate(db)
    return db


def _drop(db: Database) -> None:
    try:
        if db.config.cluster:
            cluster_mod.each_node(db, f"DROP DATABASE IF EXISTS `{db.name}`{{on_cluster}} SYNC")
        else:
            db.command(f"DROP DATABASE IF EXISTS `{db.name}` SYNC")
    finally:
        db.close()


def fresh_db(request, kind: str, embedded_dsn: str, engine_dir: Path) -> Database:
    """A fresh, migrated database on `kind`: embedded, http or cluster."""
    if kind == "embedded":
        return _fresh(embedded_dsn, engine_dir)
    if kind == "http":
        return _fresh(request.getfixturevalue("http_server").dsn, engine_dir)
    cluster = request.getfixturevalue("local_cluster")
    return _fresh(cluster.dsn, engine_dir, cluster.name)


@pytest.fixture
def embedded_db(embedded_dsn: str, engine_dir: Path):
    """A fresh, migrated database on the embedded engine."""
    db = _fresh(embedded_dsn, engine_dir)
    yield db
    _drop(db)


@pytest.fixture
def store(request, embedded_dsn: str, engine_dir: Path):
    """A fresh, migrated database on each interface of a real ClickHouse engine
    (and on the local cluster in CLUSTER_SUITES; see pytest_generate_tests)."""
    db = fresh_db(request, request.param, embedded_dsn, engine_dir)
    yield db
    _drop(db)


@pytest.fixture
def cluster_db(request, embedded_dsn: str, engine_dir: Path):
    """A fresh, migrated database sharded over the local cluster."""
    db = fresh_db(request, "cluster", embedded_dsn, engine_dir)
    yield db
    _drop(db)


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server on 127.0.0.1 for the whole session (tests use their own buckets)."""
    server = MotoServer().start()
    yield server.endpoint
    server.stop()


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory):
    """`rclone serve s3`, which checks credentials; bucket `archive` exists."""
    root = tmp_path_factory.mktemp("rclone") / "root"
    (root / "archive").mkdir(parents=True)
    server = RcloneS3Server(root).start()
    yield server
    server.stop()
