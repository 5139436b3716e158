"""Portal users, browser sessions and sign-in limits of the web viewer (storage only).

A portal user is a person with a name and a password, bound to one principal
(`tenant:acme/customer:C001`, …) exactly like an API key is. Passwords are
hashed with argon2id (argon2-cffi's defaults, which follow RFC 9106's
recommendations); the hash carries its own parameters, so they can be raised
later and old hashes still verify (`needs_rehash`).

Sessions and attempt counters are rows in ClickHouse, not process memory:
several service processes may share one store, and a browser's next request
may land on any of them. A session is found by the SHA-256 of the cookie's
secret (the table never holds a usable secret); it ends at `expires_at`, at
logout (`ended_at`), and — checked on every request by the web layer — when
its user is disabled or deleted or its API key revoked.

Names are case-insensitive for sign-in (stored lower-case), 1-64 characters.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import secrets
import time
import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from cdrhouse.engine.db import Database
from cdrhouse.sql.errors import UserError
from cdrhouse.sql.principal import PrincipalRef

NAME = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,63}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when a name is unknown, so that a miss costs as long as a hit.
    Made on first use, not at import: hashing costs ~0.3 s of CPU, which every
    `cdrhouse` process paid on start whether or not anyone signed in."""
    return _hasher.hash("cdrhouse-no-such-user")


class UserAccountError(UserError):
    """A user request that cannot be honoured; the message says why."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _version(current: int = 0) -> int:
    return max(time.time_ns(), current + 1)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- users -----------------------------------------------------------------------------

@dataclass(frozen=True)
class User:
    user_id: str
    name: str
    password_hash: str
    principal: str
    tenant_id: str
    created_by: str
    created_at: dt.datetime
    disabled: bool
    deleted: bool
    version: int

    @property
    def active(self) -> bool:
        return not (self.disabled or self.deleted)


_U_COLS = ["user_id", "name", "password_hash", "principal", "tenant_id", "created_by",
           "created_at", "disabled", "deleted", "version"]
_U_SELECT = ("SELECT user_id, name, password_hash, principal, tenant_id, created_by, created_at, "
             "disabled, deleted, version FROM web_users FINAL")


def _user(row: tuple) -> User:
    uid, name, h, principal, tenant, by, created, disabled, deleted, version = row
    return User(uid, name, h, principal, tenant, by, created, bool(disabled), bool(deleted),
                int(version))


def _write_user(db: Database, u: User) -> None:
    db.insert_rows("web_users", [(u.user_id, u.name, u.password_hash, u.principal, u.tenant_id,
                                  u.created_by, u.created_at, u.disabled, u.deleted,
                                  u.version)], _U_COLS)


def check_name(name: str) -> str:
    text = (name or "").strip().lower()
    if not NAME.match(text):
        raise UserAccountError(
            f"invalid user name {name!r}: 1-64 letters, digits or ._@+-, starting with a "
            "letter or digit")
    return text


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise UserAccountError(f"password: use at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserAccountError(f"password: at most {MAX_PASSWORD} characters")
    return password


def find_user(db: Database, name: str) -> User | None:
    """The user called `name` (deleted users are gone), or None."""
    rows = db.rows(_U_SELECT + " WHERE name = {n:String} AND NOT deleted "
                   "ORDER BY created_at DESC LIMIT 1", {"n": (name or "").strip().lower()})
    return _user(rows[0]) if rows else None


def get_user(db: Database, user_id: str) -> User | None:
    rows = db.rows(_U_SELECT + " WHERE user_id = {u:String}", {"u": user_id})
    return _user(rows[0]) if rows else None


def list_users(db: Database, tenant: str | None = None) -> list[User]:
    where, params = "NOT deleted", {}
    if tenant is not None:
        where += " AND tenant_id = {t:String}"
        params["t"] = tenant
    return [_user(r) for r in db.rows(_U_SELECT + f" WHERE {where} ORDER BY name", params)]


def add_user(db: Database, name: str, password: str, principal: str,
             created_by: str = "cli") -> User:
    """Create a user; the principal must be valid text (its account is checked by the caller)."""
    name = check_name(name)
    check_password(password)
    ref = PrincipalRef.parse(principal)
    if find_user(db, name) is not None:
        raise UserAccountError(f"a user called {name!r} already exists")
    u = User(secrets.token_hex(8), name, _hasher.hash(password), str(ref), ref.tenant or "",
             created_by, _now(), False, False, _version())
    _write_user(db, u)
    return u


def _existing(db: Database, name: str) -> User:
    u = find_user(db, name)
    if u is None:
        raise UserAccountError(f"no user called {name!r}")
    return u


def set_password(db: Database, name: str, password: str) -> User:
    u = _existing(db, name)
    check_password(password)
    new = _replace(u, password_hash=_hasher.hash(password))
    _write_user(db, new)
    return new


def set_disabled(db: Database, name: str, disabled: bool) -> User:
    u = _existing(db, name)
    new = _replace(u, disabled=disabled)
    _write_user(db, new)
    if disabled:
        end_sessions(db, user_id=u.user_id)
    return new


def delete_user(db: Database, name: str) -> User:
    u = _existing(db, name)
    new = _replace(u, deleted=True)
    _write_user(db, new)
    end_sessions(db, user_id=u.user_id)
    return new


def _replace(u: User, **changes) -> User:
    data = {**u.__dict__, **changes, "version": _version(u.version)}
    return User(**data)


def verify_password(db: Database, name: str, password: str) -> User | None:
    """The active user if `password` is theirs, else None (unknown, wrong, disabled)."""
    try:
        u = find_user(db, check_name(name))
    except UserAccountError:
        u = None
    try:
        _hasher.verify(u.password_hash if u else _dummy_hash(), password or "")
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if u is None or not u.active:
        return None
    if _hasher.check_needs_rehash(u.password_hash):
        _write_user(db, _replace(u, password_hash=_hasher.hash(password)))
    return u


# -- sessions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Session:
    session_hash: str
    user_id: str
    key_id: str
    principal: str
    csrf_token: str
    created_at: dt.datetime
    expires_at: dt.datetime
    ended_at: dt.datetime | None
    version: int

    def live(self, now: dt.datetime | None = None) -> bool:
        now = now or _now()
        expires = self.expires_at if self.expires_at.tzinfo else \
            self.expires_at.replace(tzinfo=dt.timezone.utc)
        return self.ended_at is None and expires > now


_S_COLS = ["session_hash", "user_id", "key_id", "principal", "csrf_token", "created_at",
           "expires_at", "ended_at", "version"]
_S_SELECT = ("SELECT session_hash, user_id, key_id, principal, csrf_token, created_at, "
             "expires_at, ended_at, version FROM web_sessions FINAL")


def _session(row: tuple) -> Session:
    return Session(*row[:-1], int(row[-1]))


def _write_session(db: Database, s: Session) -> None:
    db.insert_rows("web_sessions", [tuple(getattr(s, c) for c in _S_COLS)], _S_COLS)


def start_session(db: Database, principal: str, lifetime: dt.timedelta, *, user_id: str = "",
                  key_id: str = "") -> tuple[Session, str]:
    """A new session; returns it and the secret for the cookie (shown only now)."""
    if bool(user_id) == bool(key_id):
        raise ValueError("a session belongs to exactly one user or one API key")
    secret = secrets.token_urlsafe(32)
    now = _now()
    s = Session(_sha(secret), user_id, key_id, principal, secrets.token_urlsafe(32), now,
                now + lifetime, None, _version())
    _write_session(db, s)
    return s, secret


def find_session(db: Database, secret: str) -> Session | None:
    """The live session whose cookie secret this is, or None."""
    if not secret or len(secret) > 200:
        return None
    rows = db.rows(_S_SELECT + " WHERE session_hash = {h:String}", {"h": _sha(secret)})
    if not rows:
        return None
    s = _session(rows[0])
    return s if s.live() else None


def end_session(db: Database, s: Session) -> None:
    _write_session(db, Session(**{**s.__dict__, "ended_at": _now(), "version": _version(s.version)}))


def end_sessions(db: Database, *, user_id: str = "", key_id: str = "") -> int:
    """End every live session of a user or of a key; how many were ended."""
    if bool(user_id) == bool(key_id):
        raise ValueError("name exactly one user or one API key")
    col, value = ("user_id", user_id) if user_id else ("key_id", key_id)
    rows = db.rows(_S_SELECT + f" WHERE {col} = {{v:String}} AND ended_at IS NULL "
                   "AND expires_at > now64(3)", {"v": value})
    for row in rows:
        end_session(db, _session(row))
    return len(rows)


# -- sign-in attempts -------------------------------------------------------------------

def record_attempt(db: Database, name: str, client: str, ok: bool) -> None:
    db.insert_rows("web_login_attempts", [(_now(), (name or "").strip().lower()[:200],
                                           client[:100], ok)], ["at", "name", "client", "ok"])


def recent_failures(db: Database, name: str, client: str,
                    window: dt.timedelta) -> tuple[int, int, dt.datetime | None]:
    """Failures in the window: for this name since its last success, and from this client.

    Returns (name failures, client failures, oldest failure counted) — the
    oldest tells the caller when the window frees up again.
    """
    since = _now() - window
    row = db.rows(
        "SELECT countIf(name = {n:String} AND NOT ok AND at > greatest({s:DateTime64(3, 'UTC')}, "
        "  (SELECT max(at) FROM web_login_attempts WHERE name = {n:String} AND ok))), "
        "countIf(client = {c:String} AND NOT ok), "
        "minIf(at, NOT ok) "
        "FROM web_login_attempts WHERE at > {s:DateTime64(3, 'UTC')} "
        "AND (name = {n:String} OR client = {c:String})",
        {"n": (name or "").strip().lower()[:200], "c": client[:100],
         "s": since.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]})[0]
    by_name, by_client, oldest = row
    return int(by_name), int(by_client), oldest if by_name or by_client else None
