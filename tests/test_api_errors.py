"""Error translation at the HTTP level: user errors are 4xx with their text, nothing else leaks.

`deps.translate` maps only `UserError`s (messages written to be shown); an internal
error — `ArchiveSourceError` ("internal error: …", a RuntimeError), or a plain
`ValueError` from a bug — must reach the client as a 500 with a fixed text. Before
the fix any ValueError became a 400 showing its message.

The endpoints under /_test are added to a real app by this test: they run their
work exactly as the viewer endpoints do (`Service.run` in a worker thread, the
exception through `translate`), so the whole path — the pool, the principal's
slot, the exception handlers and the problem body — is the production one; only
the failure is chosen by the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import Depends, Request
from fastapi.testclient import TestClient

from cdrhouse.api import deps
from cdrhouse.api.app import create_app
from cdrhouse.api.auth import Caller
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import keys
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql.archive import with_archive
from cdrhouse.sql.errors import UserError
from cdrhouse.sql.viewer import ViewerError

SECRET_TEXT = "/srv/cdrhouse/warm/acme/2026-01 tenant_id = 'acme'"


def _archive_invariant(db: Database) -> None:
    # the real internal error: an archive splice asked of SQL that reads the hot table in
    # a form the splice does not know (without FINAL); it fails closed
    with_archive("SELECT 1 FROM cdr_records", ("SELECT 2",))


def _plain_value_error(db: Database) -> None:
    int(f"not a number: {SECRET_TEXT}")


def _user_error(db: Database) -> None:
    raise ViewerError("unknown column 'nope'; choose from the fields list")


def _user_error_base(db: Database) -> None:
    raise UserError("from must be before to")


FAILURES: dict[str, Callable[[Database], None]] = {
    "archive": _archive_invariant, "value": _plain_value_error,
    "viewer": _user_error, "user": _user_error_base,
}


@pytest.fixture(scope="module")
def client(embedded_dsn: str, engine_dir: Path):
    name = f"t_{uuid.uuid4().hex[:12]}"
    store = StoreConfig(data_dir=engine_dir, clickhouse=embedded_dsn, database=name)
    db = Database(store)
    migrate(db)
    secret = keys.create_key(db, "tenant:acme")[1]
    db.close()
    app = create_app(ServiceConfig(store=store, pool_size=1))

    @app.get("/_test/fail/{kind}")
    async def fail(kind: str, request: Request, who: Caller = Depends(deps.caller)) -> dict:
        def work(db: Database, qid: str) -> dict:
            try:
                FAILURES[kind](db)
            except Exception as exc:  # noqa: BLE001 - as run_view does
                raise deps.translate(exc) from None
            return {}
        return await deps.service(request).run(request, who, work)

    # raise_server_exceptions=False: the client sees what a real client would (the 500)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {secret}"
        yield c
    db = Database(store)
    db.command(f"DROP DATABASE `{name}`")
    db.close()


@pytest.mark.parametrize("kind", ["archive", "value"])
def test_internal_errors_are_a_500_without_detail(client: TestClient, kind: str) -> None:
    r = client.get(f"/_test/fail/{kind}")
    assert r.status_code == 500, r.text
    body = r.json()
    assert body["type"] == "/problems/internal"
    assert body["detail"] == "the server failed to handle the request; it was logged"
    for leak in ("internal error", "hot CDR read", "not a number", "/srv/", "tenant_id"):
        assert leak not in r.text


@pytest.mark.parametrize("kind, text", [
    ("viewer", "unknown column 'nope'; choose from the fields list"),
    ("user", "from must be before to"),
])
def test_user_errors_are_a_400_with_their_text(client: TestClient, kind: str, text: str) -> None:
    r = client.get(f"/_test/fail/{kind}")
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "/problems/invalid-request"
    assert r.json()["detail"] == text


def test_a_real_viewer_error_is_a_400_naming_the_problem(client: TestClient) -> None:
    r = client.get("/v1/cdrs", params={"sort": "no_such_field"})
    assert r.status_code == 400, r.text
    assert "no_such_field" in r.json()["detail"]


def test_the_service_still_answers_after_an_internal_error(client: TestClient) -> None:
    # the failed work returned its client and its slot (pool of one, so a leak would hang)
    for _ in range(3):
        assert client.get("/_test/fail/value").status_code == 500
    assert client.get("/v1/cdrs").status_code == 200
