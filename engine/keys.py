"""API keys: each maps one secret to one principal. Only a hash of the secret is stored.

Secrets are 256 random bits, so a plain SHA-256 is enough to make the stored
hash useless to a thief (no dictionary to try); lookups compare hashes in
constant time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from cdrhouse.sql.errors import UserError
from cdrhouse.engine.db import Database
from cdrhouse.sql.principal import PrincipalRef

SECRET_PREFIX = "cdrh_"


class ApiKeyError(UserError):
    """A key request that cannot be honoured."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    principal: str
    name: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(db: Database, principal: str, name: str = "") -> tuple[ApiKey, str]:
    """A new key for `principal` (text form, validated); returns the key and its secret."""
    ref = PrincipalRef.parse(principal)
    key_id = secrets.token_hex(6)
    secret = f"{SECRET_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    now = dt.datetime.now(dt.timezone.utc)
    db.insert_rows("api_keys", [(key_id, _hash(secret), str(ref), name, now, None, time.time_ns())],
                   ["key_id", "secret_hash", "principal", "name", "created_at", "revoked_at",
                    "version"])
    return ApiKey(key_id, str(ref), name, now, None), secret


def list_keys(db: Database) -> list[ApiKey]:
    return [ApiKey(*row) for row in db.rows(
        "SELECT key_id, principal, name, created_at, revoked_at FROM api_keys FINAL "
        "ORDER BY created_at")]


def revoke_key(db: Database, key_id: str) -> ApiKey:
    rows = db.rows("SELECT key_id, secret_hash, principal, name, created_at, revoked_at "
                   "FROM api_keys FINAL WHERE key_id = {k:String}", {"k": key_id})
    if not rows:
        raise ApiKeyError(f"no API key with id {key_id!r}")
    kid, h, principal, name, created, revoked = rows[0]
    if revoked is not None:
        raise ApiKeyError(f"API key {key_id!r} was already revoked at {revoked:%Y-%m-%d %H:%M:%S} UTC")
    now = dt.datetime.now(dt.timezone.utc)
    db.insert_rows("api_keys", [(kid, h, principal, name, created, now, time.time_ns())],
                   ["key_id", "secret_hash", "principal", "name", "created_at", "revoked_at",
                    "version"])
    return ApiKey(kid, principal, name, created, now)


def authenticate(db: Database, secret: str) -> ApiKey | None:
    """The active key whose secret this is, or None."""
    if not secret.startswith(SECRET_PREFIX) or secret.count("_") < 2:
        return None
    key_id = secret[len(SECRET_PREFIX):].split("_", 1)[0]
    rows = db.rows("SELECT key_id, secret_hash, principal, name, created_at, revoked_at "
                   "FROM api_keys FINAL WHERE key_id = {k:String}", {"k": key_id})
    if not rows:
        return None
    kid, stored, principal, name, created, revoked = rows[0]
    if not hmac.compare_digest(stored, _hash(secret)) or revoked is not None:
        return None
    return ApiKey(kid, principal, name, created, revoked)
