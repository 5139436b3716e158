"""Shared fixtures: one embedded engine per test process, one HTTP-served engine per session.

The embedded engine can hold one data directory per process, so every test
that uses it shares one path and is isolated by its own database, dropped at
the end. The `store` fixture runs a test on both interfaces of a real engine:
embedded (chdb://) and HTTP (a clickhouse-local served on 127.0.0.1).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from chserver import ClickHouseHTTPServer
from s3servers import MotoServer, RcloneS3Server

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


def _fresh(dsn: str, data_dir: Path) -> Database:
    name = f"t_{uuid.uuid4().hex[:12]}"
    db = Database(StoreConfig(data_dir=data_dir, clickhouse=dsn, database=name))
    migrate(db)
    return db


def _drop(db: Database) -> None:
    try:
        db.command(f"DROP DATABASE IF EXISTS `{db.name}` SYNC")
    finally:
        db.close()


@pytest.fixture
def embedded_db(embedded_dsn: str, engine_dir: Path):
    """A fresh, migrated database on the embedded engine."""
    db = _fresh(embedded_dsn, engine_dir)
    yield db
    _drop(db)


@pytest.fixture(params=["embedded", "http"])
def store(request, embedded_dsn: str, engine_dir: Path):
    """A fresh, migrated database on each interface of a real ClickHouse engine."""
    if request.param == "embedded":
        db = _fresh(embedded_dsn, engine_dir)
    else:
        server = request.getfixturevalue("http_server")
        db = _fresh(server.dsn, engine_dir)
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
