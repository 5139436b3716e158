"""/v1/users: portal users (people who sign in to the web viewer), managed over the API.

An admin manages any user. A tenant operator manages the users of **its own
tenant's customers and carriers** — it cannot create another operator, an
admin, or a user of another tenant, and does not see them. Customers and
carriers manage no users. Users are found by name; a user outside the
caller's reach answers 404, the same as a missing one.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from cdrhouse.api.auth import Caller
from cdrhouse.api.deps import caller, jsonable, store
from cdrhouse.api.errors import Problem
from cdrhouse.engine import accounts as acc
from cdrhouse.engine import users
from cdrhouse.engine.db import Database
from cdrhouse.sql.principal import PrincipalError, PrincipalRef

router = APIRouter(prefix="/v1", tags=["users"])


class UserIn(BaseModel):
    name: str = Field(..., examples=["alice"])
    password: str = Field(..., description=f"At least {users.MIN_PASSWORD} characters.")
    principal: str = Field(..., examples=["tenant:acme/customer:C001"])

    model_config = {"extra": "forbid"}


class UserChange(BaseModel):
    disabled: bool | None = None
    password: str | None = None

    model_config = {"extra": "forbid"}


def user_json(u: users.User) -> dict[str, Any]:
    return {"name": u.name, "principal": u.principal, "disabled": u.disabled,
            "created_by": u.created_by, "created_at": jsonable(u.created_at)}


def _manageable(who: Caller, principal: str) -> bool:
    role = who.principal.role
    if role == "admin":
        return True
    if role != "tenant":
        return False
    try:
        ref = PrincipalRef.parse(principal)
    except PrincipalError:
        return False
    return ref.role in ("customer", "carrier") and ref.tenant == who.principal.tenant


def _require_operator(who: Caller) -> None:
    if who.principal.role not in ("admin", "tenant"):
        raise Problem("forbidden", "only operators manage portal users")


def _run(fn):
    def work(db: Database):
        try:
            return fn(db)
        except (users.UserAccountError, acc.AccountError, PrincipalError) as exc:
            raise Problem("invalid-request", str(exc)) from None
    return work


def _visible(db: Database, who: Caller, name: str) -> users.User:
    u = users.find_user(db, name)
    if u is None or not _manageable(who, u.principal):
        raise Problem("not-found", f"no user {name!r} you can manage")
    return u


@router.get("/users", summary="Portal users this key may manage")
async def list_users(request: Request, who: Caller = Depends(caller)) -> dict:
    _require_operator(who)
    found = await store(request, lambda db: users.list_users(db, who.principal.tenant))
    return {"users": [user_json(u) for u in found if _manageable(who, u.principal)]}


@router.post("/users", status_code=201, summary="Create a portal user")
async def create_user(request: Request, response: Response, data: UserIn,
                      who: Caller = Depends(caller)) -> dict:
    _require_operator(who)
    if not _manageable(who, data.principal):
        raise Problem("forbidden", f"principal: a tenant operator creates users for its own "
                                   f"tenant's customers and carriers only, not "
                                   f"{data.principal!r}")

    def work(db: Database) -> users.User:
        acc.resolve_principal(db, data.principal)   # the account must exist
        return users.add_user(db, data.name, data.password, data.principal,
                              created_by=who.principal_text)
    u = await store(request, _run(work))
    response.headers["Location"] = f"/v1/users/{u.name}"
    return user_json(u)


@router.patch("/users/{name}", summary="Disable, enable or set the password of a user")
async def change_user(request: Request, name: str, data: UserChange,
                      who: Caller = Depends(caller)) -> dict:
    _require_operator(who)

    def work(db: Database) -> users.User:
        u = _visible(db, who, name)
        if data.password is not None:
            u = users.set_password(db, u.name, data.password)
        if data.disabled is not None:
            u = users.set_disabled(db, u.name, data.disabled)
        return u
    return user_json(await store(request, _run(work)))


@router.delete("/users/{name}", status_code=204, summary="Delete a user (signs it out)")
async def delete_user(request: Request, name: str, who: Caller = Depends(caller)) -> Response:
    _require_operator(who)
    await store(request, _run(lambda db: users.delete_user(db, _visible(db, who, name).name)))
    return Response(status_code=204)
