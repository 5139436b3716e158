"""Principals and their guards: who is asking, and the predicate that limits what they read.

A principal is one of:

- `admin` — the platform operator, all tenants;
- `tenant:T` — the operator of tenant T (the Global view of T);
- `tenant:T/customer:A` — a customer user of account A of tenant T;
- `tenant:T/carrier:A` — a carrier user of account A of tenant T.

In the text form A is the account *code*; the compiler works with the
resolved numeric `account_id` (resolution needs the database, so it happens
at the edge, in engine.accounts / the API). The guard is always a predicate
with **bound parameters**: tenant and account values never become SQL text.
"""

from __future__ import annotations

from cdrhouse.sql.errors import UserError

import re
from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "tenant", "customer", "carrier"]

_TENANT = r"[a-z0-9][a-z0-9_-]{0,62}"
_CODE = r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}"
_FORM = re.compile(rf"^tenant:(?P<tenant>{_TENANT})(?:/(?P<kind>customer|carrier):(?P<code>{_CODE}))?$")

#: Names of the bound parameters a guard uses; user SQL may not define these.
TENANT_PARAM = "__guard_tenant"
ACCOUNT_PARAM = "__guard_account"


class PrincipalError(UserError):
    """The principal text is not one of the accepted forms."""


class TenantNeeded(PrincipalError):
    """An admin acting on one tenant's data did not name the tenant."""


class NotPermitted(PrincipalError):
    """The principal may not act on the tenant asked for (or on any: not an operator)."""


@dataclass(frozen=True)
class PrincipalRef:
    """A principal as written (`tenant:acme/customer:C001`), before account resolution."""

    role: Role
    tenant: str | None = None
    account_code: str | None = None

    @classmethod
    def parse(cls, text: str) -> PrincipalRef:
        text = (text or "").strip()
        if text == "admin":
            return cls("admin")
        m = _FORM.match(text)
        if not m:
            raise PrincipalError(
                f"invalid principal {text!r}: use admin, tenant:T, tenant:T/customer:CODE "
                "or tenant:T/carrier:CODE")
        if m.group("kind"):
            return cls(m.group("kind"), m.group("tenant"), m.group("code"))  # type: ignore[arg-type]
        return cls("tenant", m.group("tenant"))

    def __str__(self) -> str:
        if self.role == "admin":
            return "admin"
        if self.role == "tenant":
            return f"tenant:{self.tenant}"
        return f"tenant:{self.tenant}/{self.role}:{self.account_code}"


@dataclass(frozen=True)
class Principal:
    """A resolved principal: what the compiler needs to guard a query."""

    role: Role
    tenant: str | None = None
    account_id: int | None = None
    #: for messages only
    label: str = ""

    def __post_init__(self) -> None:
        if self.role == "admin":
            if self.tenant is not None or self.account_id is not None:
                raise PrincipalError("admin is not scoped to a tenant or account")
        elif not self.tenant:
            raise PrincipalError(f"a {self.role} principal needs a tenant")
        if self.role in ("customer", "carrier") and not self.account_id:
            raise PrincipalError(f"a {self.role} principal needs an account id")
        if self.role == "tenant" and self.account_id is not None:
            raise PrincipalError("a tenant operator is not scoped to one account")

    @classmethod
    def admin(cls) -> Principal:
        return cls("admin", label="admin")

    @classmethod
    def operator(cls, tenant: str) -> Principal:
        return cls("tenant", tenant, label=f"tenant:{tenant}")

    @classmethod
    def customer(cls, tenant: str, account_id: int) -> Principal:
        return cls("customer", tenant, account_id, label=f"tenant:{tenant}/customer#{account_id}")

    @classmethod
    def carrier(cls, tenant: str, account_id: int) -> Principal:
        return cls("carrier", tenant, account_id, label=f"tenant:{tenant}/carrier#{account_id}")

    def __str__(self) -> str:
        return self.label or self.role

    def operator_tenant(self, asked: str | None = None) -> str:
        """The one tenant an operator's action (recalc, rate import, …) applies to.

        The single copy of the rule the CLI, the API and engine.recalc all use:
        an admin must name the tenant (`asked`); a tenant operator acts on its own
        tenant and may name it, but no other; customers and carriers do not
        operate. Raises TenantNeeded or NotPermitted (both PrincipalErrors), which
        the edges turn into their own 400/403 or exit code.
        """
        if self.role == "admin":
            if not asked:
                raise TenantNeeded("an admin names the tenant")
            return asked
        if self.role != "tenant":
            raise NotPermitted(f"{self}: only tenant operators and admins may do this")
        if asked and asked != self.tenant:
            raise NotPermitted(f"{self} cannot act on tenant {asked!r}")
        return self.tenant or ""

    def guard(self, account_columns: dict[str, str] | None = None) -> tuple[str | None, dict]:
        """The predicate (and its bound parameters) limiting rows to this principal.

        `account_columns` maps role → column holding that role's account id
        (default: customer_id / carrier_id). Fails closed: a role without a
        rule raises instead of returning no predicate.
        """
        cols = account_columns or {"customer": "customer_id", "carrier": "carrier_id"}
        if self.role == "admin":
            return None, {}
        params: dict = {TENANT_PARAM: self.tenant}
        pred = f"tenant_id = {{{TENANT_PARAM}:String}}"
        if self.role == "tenant":
            return pred, params
        if self.role in cols:
            params[ACCOUNT_PARAM] = self.account_id
            return f"{pred} AND {cols[self.role]} = {{{ACCOUNT_PARAM}:UInt32}}", params
        raise PrincipalError(f"no guard rule for role {self.role!r}")  # fail closed
