"""Signing in to the web viewer: sessions in a cookie, CSRF checks, sign-in limits.

A browser signs in with a user's name and password or with an API key; either
way it gets a **server-side session** (engine.users): the cookie holds only a
random secret (`HttpOnly`, `SameSite=Strict`, `Secure` when the page is served
over https, `Path=/`), the store keeps its hash, the principal and a CSRF
token. Nothing secret reaches JavaScript, web storage or a URL.

Every request re-checks what the session stands on — the user still active,
the API key not revoked, the account still there — so disabling a user or
revoking a key signs its browsers out on their next request.

State-changing requests (POST) must come from our own origin (`Origin`, or
`Referer` when a browser sends no Origin) **and** carry the session's CSRF
token (form field `csrf_token` or header `X-CSRF-Token`). The sign-in form,
which has no session yet, uses a double-submit token in a short-lived cookie.

Failed sign-ins are counted in the store (shared by every service process):
at most `NAME_LIMIT` failures per user name since its last success and
`CLIENT_LIMIT` per client address within `WINDOW`; past either, sign-in is
refused until the window moves on.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
from fastapi import Request
from starlette.responses import Response

from cdrhouse.api.auth import Caller
from cdrhouse.api.deps import service
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import keys
from cdrhouse.engine import users
from cdrhouse.engine.db import Database
from cdrhouse.engine.pool import PoolExhausted

COOKIE = "cdrhouse_session"
LOGIN_COOKIE = "cdrhouse_login"
LIFETIME = dt.timedelta(hours=12)
WINDOW = dt.timedelta(minutes=15)
NAME_LIMIT = 5
CLIENT_LIMIT = 30


class SignedOut(Exception):
    """No valid session: the page sends the browser to the sign-in form."""


class CSRFRefused(Exception):
    """A state-changing request that did not prove it comes from our page."""


class SignInRefused(Exception):
    """Sign-in failed; the message is safe to show on the form."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class WebCaller:
    """The signed-in browser: the API's `Caller` plus what the page shows and checks."""

    caller: Caller
    session: users.Session
    #: the user's name, or "API key <id>"
    who: str

    @property
    def csrf(self) -> str:
        return self.session.csrf_token


def _key_active(db: Database, key_id: str) -> bool:
    rows = db.rows("SELECT revoked_at IS NULL FROM api_keys FINAL WHERE key_id = {k:String}",
                   {"k": key_id})
    return bool(rows and rows[0][0])


def preference_id(session: users.Session) -> str:
    """Whose preferences and saved queries: the key's own, or `user:<id>` for a user."""
    return session.key_id or f"user:{session.user_id}"


def _resolve(db: Database, secret: str) -> WebCaller:
    session = users.find_session(db, secret)
    if session is None:
        raise SignedOut("the session has ended; sign in again")
    if session.user_id:
        user = users.get_user(db, session.user_id)
        if user is None or not user.active or user.principal != session.principal:
            users.end_session(db, session)
            raise SignedOut("the user was disabled or deleted")
        who = user.name
    else:
        if not _key_active(db, session.key_id):
            users.end_session(db, session)
            raise SignedOut("the API key was revoked")
        who = f"API key {session.key_id}"
    try:
        principal = acc.resolve_principal(db, session.principal)
    except acc.AccountError:
        users.end_session(db, session)
        raise SignedOut("the account no longer exists") from None
    return WebCaller(Caller(preference_id(session), principal, session.principal), session, who)


def _db_call(request: Request, fn):
    pool = service(request).pool

    def work():
        try:
            with pool.acquire() as db:
                return fn(db)
        except PoolExhausted:
            raise SignInRefused("the service is busy; try again in a moment", 503) from None
    return anyio.to_thread.run_sync(work)


async def current(request: Request) -> WebCaller:
    """The signed-in caller of this request, or SignedOut."""
    secret = request.cookies.get(COOKIE)
    if not secret:
        raise SignedOut("not signed in")
    web = await _db_call(request, lambda db: _resolve(db, secret))
    request.state.principal = web.caller.principal_text
    request.state.key_id = web.caller.key_id      # the audit trail's who (api/audit.py)
    request.state.user = web.who if web.session.user_id else ""
    return web


# -- CSRF ---------------------------------------------------------------------------

def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: Request) -> bool:
    """The request says it comes from a page of this site (Origin, else Referer)."""
    ours = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}".lower()
    origin = request.headers.get("origin")
    if origin:
        return origin.lower() == ours
    referer = request.headers.get("referer")
    return referer is not None and _origin_of(referer) == ours


def check_csrf(request: Request, expected: str, sent: str | None) -> None:
    if not same_origin(request):
        raise CSRFRefused("the request did not come from this site's page (Origin)")
    token = sent or request.headers.get("x-csrf-token") or ""
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise CSRFRefused("the form is out of date (CSRF token); reload the page and retry")


# -- cookies ------------------------------------------------------------------------

def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(request: Request, response: Response, secret: str) -> None:
    response.set_cookie(COOKIE, secret, max_age=int(LIFETIME.total_seconds()), path="/",
                        httponly=True, samesite="strict", secure=secure(request))


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                           secure=secure(request))


def login_token(request: Request) -> str:
    """The sign-in form's CSRF token (double submit: the same value goes in a cookie)."""
    return request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)


def set_login_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, path="/login", httponly=True,
                        samesite="strict", secure=secure(request))


# -- signing in ---------------------------------------------------------------------

def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _check_limits(db: Database, name: str, client: str) -> None:
    by_name, by_client, oldest = users.recent_failures(db, name, client, WINDOW)
    # API-key attempts carry no name: only the client count applies to them (a shared
    # "no name" count would let anyone lock every integrator out)
    if (name and by_name >= NAME_LIMIT) or by_client >= CLIENT_LIMIT:
        minutes = int(WINDOW.total_seconds() // 60)
        raise SignInRefused(f"too many failed sign-ins; wait up to {minutes} minutes and try "
                            "again (or ask your operator to reset your password)", 429)


def _sign_in(db: Database, name: str, password: str, api_key: str,
             client: str) -> tuple[users.Session, str]:
    attempt_name = "" if api_key else name
    _check_limits(db, attempt_name, client)
    if api_key:
        key = keys.authenticate(db, api_key.strip())
        if key is None:
            users.record_attempt(db, "", client, False)
            raise SignInRefused("that API key is not valid (unknown or revoked)")
        try:
            acc.resolve_principal(db, key.principal)
        except acc.AccountError:
            raise SignInRefused("the API key's account no longer exists", 403) from None
        return users.start_session(db, key.principal, LIFETIME, key_id=key.key_id)
    if not name or not password:
        raise SignInRefused("enter your user name and password (or an API key)", 400)
    user = users.verify_password(db, name, password)
    if user is None:
        users.record_attempt(db, attempt_name, client, False)
        raise SignInRefused("wrong user name or password")
    try:
        acc.resolve_principal(db, user.principal)
    except acc.AccountError:
        raise SignInRefused("your account no longer exists; ask your operator", 403) from None
    users.record_attempt(db, user.name, client, True)
    return users.start_session(db, user.principal, LIFETIME, user_id=user.user_id)


async def sign_in(request: Request, name: str, password: str, api_key: str) -> str:
    """Check the credentials and open a session; returns the cookie secret."""
    client = _client(request)
    request.state.user = name.strip()  # the audit trail records who tried (api/audit.py)
    try:
        session, secret = await _db_call(request, lambda db: _sign_in(db, name.strip(), password,
                                                                      api_key, client))
    except SignInRefused:
        request.state.audit_error = "sign-in-refused"
        raise
    request.state.principal = session.principal
    request.state.key_id = preference_id(session)
    return secret


async def sign_out(request: Request) -> None:
    secret = request.cookies.get(COOKIE)
    if not secret:
        return

    def work(db: Database) -> None:
        s = users.find_session(db, secret)
        if s is not None:
            users.end_session(db, s)
    await _db_call(request, work)
