"""Where backups live and how ClickHouse reaches them.

A backup location is an S3 prefix or a directory (`CDRHOUSE_BACKUP`); by default
the sibling `backups` of the warm archive (`<data-dir>/backups` beside
`<data-dir>/warm`, `s3://bucket/backups` beside `s3://bucket/warm`). Our own
objects (the catalogue, the run lock) go through the archive's object stores
(tiering/store.py); ClickHouse writes and reads the backup files itself:

- S3: `S3(cdrhouse_backups, '<id>')`. The named collection holds the location's
  URL and credentials, so no query text (or query log) carries a secret. Its name
  is fixed on purpose: an incremental backup records its base as the text
  `S3(cdrhouse_backups, '<base id>')`, and a restore opens the base by that text.
  With a fixed name that points at the *current* location, a chain of backups
  restores after the bucket moved or the keys were rotated.
- A directory: `File('<absolute path>/<id>')` (the embedded engine allows it, see
  `engine.db.EMBEDDED_OPTIONS`; a ClickHouse server needs `backups.allowed_path`).
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from cdrhouse.engine.db import Database
from cdrhouse.tiering.store import (ArchiveConfig, ArchiveError, LocalStore, ObjectStore,
                                    S3Store, sql_string)

COLLECTION = "cdrhouse_backups"
DEFAULT_FULL_EVERY_DAYS = 7
DEFAULT_KEEP_FULLS = 2

#: one definition of the named collection at a time in this process
_collection_lock = threading.Lock()


class BackupError(Exception):
    """A backup problem the operator can act on; the message says what and where."""


@dataclass(frozen=True)
class BackupConfig:
    """Where backups go and the policy: a full backup every `full_every_days`
    (incrementals in between), keep the newest `keep_fulls` fulls and their
    incrementals. `max_bandwidth` (bytes/s, 0 = unlimited) spares the store's disk."""

    url: str | None = None
    s3_endpoint: str | None = None
    region: str | None = None
    full_every_days: int = DEFAULT_FULL_EVERY_DAYS
    keep_fulls: int = DEFAULT_KEEP_FULLS
    max_bandwidth: int = 0

    @classmethod
    def from_env(cls, url: str | None = None, s3_endpoint: str | None = None,
                 **policy: int) -> BackupConfig:
        for name, var in (("full_every_days", "CDRHOUSE_BACKUP_FULL_EVERY_DAYS"),
                          ("keep_fulls", "CDRHOUSE_BACKUP_KEEP_FULLS")):
            if name not in policy and os.environ.get(var):
                try:
                    policy[name] = int(os.environ[var])
                except ValueError:
                    raise BackupError(f"{var}={os.environ[var]!r}: give a whole number "
                                      "of days / backups") from None
        return cls(url=url or os.environ.get("CDRHOUSE_BACKUP") or None,
                   s3_endpoint=(s3_endpoint or os.environ.get("CDRHOUSE_BACKUP_S3_ENDPOINT")
                                or os.environ.get("CDRHOUSE_S3_ENDPOINT") or None),
                   region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
                   **policy)


def default_url(archive: ArchiveConfig, data_dir: Path) -> str:
    """The sibling `backups` of the archive location."""
    url = archive.url
    if not url:
        return str((Path(data_dir) / "backups").resolve())
    parts = urlsplit(url)
    if parts.scheme == "s3":
        parent = PurePosixPath("/" + parts.path.strip("/")).parent
        prefix = str(parent / "backups").strip("/")
        return f"s3://{parts.netloc}/{prefix}"
    path = Path(parts.path if parts.scheme == "file" else url)
    return str(path.resolve().parent / "backups")


class Location:
    """A backup location: our objects through `store`, ClickHouse's through `target`."""

    def __init__(self, store: ObjectStore, url: str) -> None:
        self.store = store
        self.url = url
        self.location = store.location
        self.is_s3 = isinstance(store, S3Store)

    # -- ClickHouse's view -----------------------------------------------------------

    def target(self, db: Database, backup_id: str) -> str:
        """The BACKUP/RESTORE destination expression for one backup."""
        if self.is_s3:
            self._define_collection(db)
            return f"S3({COLLECTION}, {sql_string(backup_id)})"
        assert isinstance(self.store, LocalStore)
        return f"File({sql_string(str(self.store.root / backup_id))})"

    def _define_collection(self, db: Database) -> None:
        store = self.store
        assert isinstance(store, S3Store)
        fields = store.collection_fields(store.root_url())
        with _collection_lock:
            db.command(f"DROP NAMED COLLECTION IF EXISTS {COLLECTION}")
            db.command(f"CREATE NAMED COLLECTION {COLLECTION} AS {', '.join(fields)}")

    # -- our objects ------------------------------------------------------------------

    def check(self) -> None:
        """Fail now, with the store's clear message, if the location is unusable."""
        if self.is_s3:
            self.store.check()  # type: ignore[attr-defined]
        else:
            assert isinstance(self.store, LocalStore)
            try:
                self.store.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackupError(f"cannot create the backup directory "
                                  f"{self.store.root}: {exc}") from None

    def top_level(self) -> set[str]:
        """Names directly under the location (backup directories and `_catalog`)."""
        if isinstance(self.store, LocalStore):
            root = self.store.root
            return {p.name for p in root.iterdir()} if root.exists() else set()
        store = self.store
        assert isinstance(store, S3Store)
        prefix = store._full("")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        names: set[str] = set()
        paginator = store.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=store.bucket, Prefix=prefix, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    names.add(common["Prefix"][len(prefix):].rstrip("/"))
                for obj in page.get("Contents", []):
                    names.add(obj["Key"][len(prefix):])
        except Exception as exc:  # botocore errors, worded by the store
            raise store._fail(exc, "list") from exc
        return names

    def delete_tree(self, name: str) -> None:
        """Delete everything under `name/` (ClickHouse's files include dot files)."""
        if isinstance(self.store, LocalStore):
            shutil.rmtree(self.store.root / name, ignore_errors=True)
            return
        for obj in self.store.list(name.rstrip("/") + "/"):
            self.store.delete(obj.key)


def open_location(config: BackupConfig, archive: ArchiveConfig, data_dir: Path) -> Location:
    """The location `config` names, by default beside the archive."""
    url = config.url or default_url(archive, data_dir)
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise BackupError(f"backup location {url!r}: name a bucket, e.g. s3://bucket/backups")
        if len(parts.netloc) < 3:
            raise BackupError(f"backup location {url!r}: S3 bucket names have at least 3 "
                              "characters")
        return Location(S3Store(parts.netloc, parts.path, endpoint=config.s3_endpoint,
                                region=config.region), url)
    if parts.scheme == "file":
        return Location(LocalStore(Path(parts.path)), url)
    if parts.scheme:
        raise BackupError(f"backup location {url!r}: use a directory, file://… or s3://…")
    return Location(LocalStore(Path(url)), url)


__all__ = ["ArchiveError", "BackupConfig", "BackupError", "Location", "default_url",
           "open_location"]
