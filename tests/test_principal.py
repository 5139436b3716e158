"""The operator rule: which tenant a principal may act on (one copy, Principal.operator_tenant)."""

from __future__ import annotations

import pytest

from cdrhouse.sql.principal import NotPermitted, Principal, TenantNeeded

ADMIN, ACME = Principal.admin(), Principal.operator("acme")
CUSTOMER, CARRIER = Principal.customer("acme", 1), Principal.carrier("acme", 2)


@pytest.mark.parametrize("who, asked, expected", [
    (ADMIN, "acme", "acme"),
    (ADMIN, "globex", "globex"),
    (ADMIN, None, TenantNeeded),
    (ADMIN, "", TenantNeeded),
    (ACME, None, "acme"),
    (ACME, "acme", "acme"),
    (ACME, "globex", NotPermitted),
    (ACME, "ACME", NotPermitted),
    (ACME, "acme ", NotPermitted),
    (CUSTOMER, None, NotPermitted),
    (CUSTOMER, "acme", NotPermitted),
    (CARRIER, "acme", NotPermitted),
])
def test_operator_tenant(who: Principal, asked: str | None, expected) -> None:
    if isinstance(expected, str):
        assert who.operator_tenant(asked) == expected
    else:
        with pytest.raises(expected):
            who.operator_tenant(asked)
