"""Object stores for the warm archive: a local directory or S3-compatible storage.

The tiering job needs a handful of object operations (put, get, head, list,
copy, delete, a put that only succeeds if the key is absent — for the run lock)
and one more thing: a way for *ClickHouse* to read and write the same objects,
because ClickHouse writes the Parquet files and reads them back to verify them.
`clickhouse_source` returns that table-function expression (`file(...)` for a
directory, `s3(<named collection>, ...)` for S3). Credentials never appear in
query text: for S3 they live in a named collection created once per store.

Errors are `ArchiveError`s whose message says what to fix (missing bucket,
wrong credentials, no permission, unreachable endpoint); transient S3 errors
are retried with exponential backoff by botocore's "standard" retry mode
(`S3Store(retries=…, connect_timeout=…)`: the defaults ride out a flaky
network; a caller that wants a dead endpoint reported at once — a health check,
a test — passes retries=0 and a short connect_timeout).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:  # pragma: no cover
    from cdrhouse.engine.db import Database


class ArchiveError(Exception):
    """A problem with the archive the operator can act on; the message says how."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str = ""


#: How long a presigned URL handed to a client stays valid (seconds). Short: the
#: URL is a bearer token for the object, and a client follows it at once.
DEFAULT_PRESIGN_EXPIRY = 15 * 60
#: SigV4's ceiling for a presigned URL (seven days).
MAX_PRESIGN_EXPIRY = 7 * 24 * 3600
#: botocore "standard" retry mode: retries of a failed request after the first try
#: (botocore's `retries={"max_attempts": …}`), with exponential backoff between them —
#: a refused connection is retried too, so by default an unreachable endpoint is
#: reported only after the backoffs (~15 s).
DEFAULT_S3_RETRIES = 5
#: seconds to wait for a TCP connection to the S3 endpoint, per attempt
DEFAULT_S3_CONNECT_TIMEOUT = 5.0


def check_presign_expiry(seconds: int, where: str = "--presign-expiry") -> int:
    """`seconds` if SigV4 allows it as an expiry, else ArchiveError naming `where`."""
    if not 1 <= int(seconds) <= MAX_PRESIGN_EXPIRY:
        raise ArchiveError(f"{where}={seconds}: a presigned URL lives from 1 second to "
                           f"{MAX_PRESIGN_EXPIRY} seconds (7 days, the SigV4 limit)")
    return int(seconds)


@dataclass(frozen=True)
class ArchiveConfig:
    """Where the archive lives: `CDRHOUSE_ARCHIVE` (a directory, `file://…` or
    `s3://bucket/prefix`), `CDRHOUSE_S3_ENDPOINT` for S3-compatible servers, the
    region (`CDRHOUSE_S3_REGION`, else `AWS_REGION` / `AWS_DEFAULT_REGION`: SigV4
    signs it into every request and presigned URL), how long presigned URLs live
    (`CDRHOUSE_PRESIGN_EXPIRY`, seconds), and the usual AWS credential variables
    (read by boto3)."""

    url: str | None = None
    s3_endpoint: str | None = None
    region: str | None = None
    presign_expiry: int = DEFAULT_PRESIGN_EXPIRY

    @classmethod
    def from_env(cls, url: str | None = None, s3_endpoint: str | None = None,
                 region: str | None = None,
                 presign_expiry: int | None = None) -> ArchiveConfig:
        env = os.environ
        if presign_expiry is None:
            text = env.get("CDRHOUSE_PRESIGN_EXPIRY") or str(DEFAULT_PRESIGN_EXPIRY)
            try:
                presign_expiry = int(text)
            except ValueError:
                raise ArchiveError(f"CDRHOUSE_PRESIGN_EXPIRY={text!r}: give seconds, "
                                   "e.g. 900") from None
        return cls(url=url or env.get("CDRHOUSE_ARCHIVE") or None,
                   s3_endpoint=s3_endpoint or env.get("CDRHOUSE_S3_ENDPOINT") or None,
                   region=(region or env.get("CDRHOUSE_S3_REGION") or env.get("AWS_REGION")
                           or env.get("AWS_DEFAULT_REGION") or None),
                   presign_expiry=check_presign_expiry(
                       presign_expiry, "presign expiry (--presign-expiry, CDRHOUSE_PRESIGN_EXPIRY)"))


class ObjectStore(Protocol):
    """What the tiering job needs from a store. Keys are '/'-separated, relative."""

    #: for messages: where this store is (a path or s3://bucket/prefix)
    location: str

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_if_absent(self, key: str, data: bytes) -> bool: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes | None: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str) -> list[ObjectInfo]: ...
    def copy(self, src: str, dst: str) -> None: ...
    def delete(self, key: str) -> None: ...
    def open(self, key: str) -> Iterator[bytes]: ...
    def presign(self, key: str, expires: int | None = None) -> str | None: ...
    def prepare_write(self, keys: list[str]) -> None: ...
    def clickhouse_source(self, db: Database, keys: list[str]) -> str: ...


def sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _glob_of(keys: list[str]) -> str:
    """One ClickHouse path glob naming exactly `keys` (which share a directory)."""
    if not keys:
        raise ValueError("no keys")
    if len(keys) == 1:
        return keys[0]
    heads = {k.rsplit("/", 1)[0] for k in keys}
    if len(heads) != 1:
        raise ValueError("keys must share a directory")
    names = ",".join(k.rsplit("/", 1)[1] for k in keys)
    for ch in "{}*?,":
        if any(ch in k.rsplit("/", 1)[1] for k in keys):
            raise ValueError(f"file names may not contain {ch!r}")
    return f"{heads.pop()}/{{{names}}}"


# -- a local directory -------------------------------------------------------------

class LocalStore:
    """The embedded default: `<data-dir>/warm`. Writes go to a temporary name and
    are renamed into place, so a reader never sees a half-written object."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise ArchiveError(f"archive key {key!r} leaves the archive directory")
        return path

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return True

    def put_file(self, key: str, path: Path) -> None:
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dst)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            return ObjectInfo(key, self._path(key).stat().st_size)
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.exists():
            return []
        found = []
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(ObjectInfo(key, path.stat().st_size))
        return found

    def copy(self, src: str, dst: str) -> None:
        """A hard link when possible (staging and the archive share a file system, and
        objects are never modified in place), else a byte copy; atomic either way."""
        source, target = self._path(src), self._path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # tidy empty directories up to the root, so a listing shows no husks
        parent = path.parent
        while parent != self.root and parent.exists() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def open(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        if not path.exists():
            raise ArchiveError(f"archive object {key} is missing from {self.location}")
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                yield chunk

    def presign(self, key: str, expires: int | None = None) -> str | None:
        """None: a directory has no URL of its own (the API streams the file)."""
        return None

    def prepare_write(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).parent.mkdir(parents=True, exist_ok=True)

    def clickhouse_source(self, db: Database, keys: list[str]) -> str:
        return f"file({sql_string(str(self.root / _glob_of(keys)))}, 'Parquet')"


# -- S3-compatible storage -----------------------------------------------------------

_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
               "ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed"}


class S3Store:
    """AWS S3, MinIO or any S3-compatible server, through boto3.

    Every request, and every presigned URL, is signed with Signature Version 4
    for the configured region. boto3 would otherwise presign with SigV2
    (`?AWSAccessKeyId=…&Signature=…`) for a custom endpoint or us-east-1, which
    AWS regions opened since 2014, MinIO, rclone and most S3-compatible servers
    refuse (`UnsupportedAlgorithm`).

    `retries` and `connect_timeout` go to botocore's client config (see
    DEFAULT_S3_RETRIES): lower them where a dead endpoint should fail fast.
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None,
                 region: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, multipart_threshold: int = 64 << 20,
                 presign_expiry: int = DEFAULT_PRESIGN_EXPIRY,
                 retries: int = DEFAULT_S3_RETRIES,
                 connect_timeout: float = DEFAULT_S3_CONNECT_TIMEOUT) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.region = region or "us-east-1"
        self.presign_expiry = check_presign_expiry(presign_expiry, "presign expiry")
        self.location = f"s3://{bucket}/{self.prefix}".rstrip("/")
        if self.endpoint:
            self.location += f" at {self.endpoint}"
        session = boto3.session.Session(aws_access_key_id=access_key,
                                        aws_secret_access_key=secret_key,
                                        region_name=self.region)
        self._session = session
        self.client = session.client(
            "s3", endpoint_url=self.endpoint,
            config=Config(signature_version="s3v4", region_name=self.region,
                          retries={"max_attempts": retries, "mode": "standard"},
                          connect_timeout=connect_timeout, read_timeout=120,
                          s3={"addressing_style": "path"} if self.endpoint else None))
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                       multipart_chunksize=max(5 << 20, multipart_threshold))

    # keys
    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _fail(self, exc: Exception, action: str, key: str = "") -> ArchiveError:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )
        where = f"s3://{self.bucket}/{self._full(key)}" if key else f"s3://{self.bucket}"
        if isinstance(exc, NoCredentialsError):
            return ArchiveError("no S3 credentials: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY (or an AWS profile)")
        if isinstance(exc, EndpointConnectionError):
            return ArchiveError(f"cannot reach the S3 endpoint {self.endpoint or 'of AWS'}: "
                                "check CDRHOUSE_S3_ENDPOINT and that the server is up")
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                return ArchiveError(f"the archive bucket {self.bucket!r} does not exist"
                                    f"{' at ' + self.endpoint if self.endpoint else ''}: "
                                    "create it, or fix CDRHOUSE_ARCHIVE")
            if code in _AUTH_CODES:
                return ArchiveError(f"S3 rejected the credentials ({code}) for {where}: check "
                                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
            if code in ("AccessDenied", "403", "Forbidden"):
                return ArchiveError(f"no permission to {action} {where} (AccessDenied): "
                                    "grant the archive's credentials access to the bucket")
            return ArchiveError(f"S3 error {code or 'unknown'} while trying to {action} "
                                f"{where}: {exc}")
        return ArchiveError(f"S3 failure while trying to {action} {where}: {exc}")

    def _call(self, action: str, key: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return fn(*args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, action, key) from exc

    def check(self) -> None:
        """Fail now, with a clear message, if the bucket is missing or the
        credentials are wrong (rather than halfway through a run)."""
        self._call("list", "", self.client.list_objects_v2, Bucket=self.bucket,
                   Prefix=self._full(""), MaxKeys=1)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("write", key, self.client.put_object, Bucket=self.bucket,
                   Key=self._full(key), Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` only if it is absent: `If-None-Match: *` (AWS, MinIO), after a
        HEAD — some S3-compatible servers (rclone's among them) ignore the condition
        and overwrite, which would hand the run lock to every comer. The lock reads
        its object back as well (tiering/lock.py) for the race a HEAD leaves."""
        from botocore.exceptions import ClientError
        if self.head(key) is not None:
            return False
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data,
                                   IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed",
                                                                "ConditionalRequestConflict"):
                return False
            raise self._fail(exc, "write", key) from exc

    def put_file(self, key: str, path: Path) -> None:
        """Multipart above the threshold (boto3's managed transfer), retried."""
        from boto3.exceptions import S3UploadFailedError
        try:
            self._call("write", key, self.client.upload_file, str(path), self.bucket,
                       self._full(key), Config=self.transfer)
        except S3UploadFailedError as exc:
            raise ArchiveError(f"upload of {key} to {self.location} failed: {exc}") from exc

    def get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail(exc, "read", key) from exc

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._fail(exc, "read", key) from exc
        return ObjectInfo(key, int(meta["ContentLength"]), meta.get("ETag", "").strip('"'))

    def list(self, prefix: str) -> list[ObjectInfo]:
        found = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list", prefix, lambda: list(paginator.paginate(
            Bucket=self.bucket, Prefix=self._full(prefix))))
        for page in pages:
            for obj in page.get("Contents", []):
                found.append(ObjectInfo(self._rel(obj["Key"]), int(obj["Size"]),
                                        obj.get("ETag", "").strip('"')))
        return sorted(found, key=lambda o: o.key)

    def copy(self, src: str, dst: str) -> None:
        self._call("copy", src, self.client.copy, {"Bucket": self.bucket, "Key": self._full(src)},
                   self.bucket, self._full(dst), Config=self.transfer)

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket,
                   Key=self._full(key))

    def open(self, key: str) -> Iterator[bytes]:
        body = self._call("read", key, self.client.get_object, Bucket=self.bucket,
                          Key=self._full(key))["Body"]
        try:
            yield from body.iter_chunks(1 << 20)
        finally:
            body.close()

    def presign(self, key: str, expires: int | None = None) -> str | None:
        """A SigV4 GET URL for `key`, valid `expires` seconds (default: the store's
        presign_expiry). Anyone holding it can read the object until then."""
        return self.presign_object(self.bucket, self._full(key), expires)

    def presign_object(self, bucket: str, key: str, expires: int | None = None) -> str:
        """A SigV4 GET URL for any object these credentials may read (full key, no
        prefix): for recordings kept in another bucket of the same account."""
        seconds = self.presign_expiry if expires is None else check_presign_expiry(
            expires, "presign expiry")
        return self._call("presign", key, self.client.generate_presigned_url, "get_object",
                          Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds)

    def prepare_write(self, keys: list[str]) -> None:
        return None

    # ClickHouse's view of the same objects
    def _url(self, key: str) -> str:
        if self.endpoint:
            return f"{self.endpoint}/{self.bucket}/{self._full(key)}"
        return f"https://{self.bucket}.s3.{self.region}.amazonaws.com/{self._full(key)}"

    def collection_fields(self, url: str) -> list[str]:
        """The fields of a ClickHouse named collection reaching `url` with this store's
        credentials (the archive's collection and the backups' share them)."""
        creds = self._session.get_credentials()
        frozen = creds.get_frozen_credentials() if creds else None
        fields = [f"url = {sql_string(url)}"]
        if frozen:
            fields += [f"access_key_id = {sql_string(frozen.access_key)}",
                       f"secret_access_key = {sql_string(frozen.secret_key)}"]
            if frozen.token:
                fields.append(f"session_token = {sql_string(frozen.token)}")
        else:
            fields.append("no_sign_request = 1")
        return fields

    def root_url(self) -> str:
        """The URL of the store's prefix, ending in '/'."""
        return self._url("").rstrip("/") + "/"

    def collection(self, db: Database) -> str:
        """A named collection holding this store's URL and credentials, so that
        query text (and query logs) never carry secrets."""
        fields = self.collection_fields(self._url(""))
        # the name changes with any of the values, so IF NOT EXISTS never keeps stale ones
        name = "cdrhouse_s3_" + hashlib.sha256("|".join(fields).encode()).hexdigest()[:16]
        db.command(f"CREATE NAMED COLLECTION IF NOT EXISTS {name} AS {', '.join(fields)}")
        return name

    def clickhouse_source(self, db: Database, keys: list[str]) -> str:
        name = self.collection(db)
        path = _glob_of(keys)  # relative to the collection's url, which holds the prefix
        return f"s3({name}, filename = {sql_string(path)}, format = 'Parquet')"


def open_archive(config: ArchiveConfig, data_dir: Path) -> ObjectStore:
    """The store `config` names; by default the directory `<data-dir>/warm`."""
    url = config.url
    if not url:
        return LocalStore(Path(data_dir) / "warm")
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ArchiveError(f"CDRHOUSE_ARCHIVE={url!r}: name a bucket, e.g. s3://bucket/prefix")
        store = S3Store(parts.netloc, parts.path, endpoint=config.s3_endpoint,
                        region=config.region, presign_expiry=config.presign_expiry)
        return store
    if parts.scheme == "file":
        return LocalStore(Path(parts.path))
    if parts.scheme:
        raise ArchiveError(f"CDRHOUSE_ARCHIVE={url!r}: use a directory, file://… or s3://…")
    return LocalStore(Path(url))

