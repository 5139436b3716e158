"""The store's data version (engine/versions.py): every kind of write moves it, reads do not.

Run on the embedded engine, over HTTP and on the 2-shard cluster (CLUSTER_SUITES):
the version reads `system.parts` of every node there, and a write landing on
either shard must move it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cdrhouse.engine import accounts as acc
from cdrhouse.engine import cluster
from cdrhouse.engine.db import Database
from cdrhouse.engine.versions import data_version
from test_viewer import cdr, insert  # tests/ is on sys.path (conftest.py's folder)


def rows(n: int, month: int, tenant: str = "acme", version: int = 1) -> list[dict]:
    out = []
    for i in range(n):
        r = cdr(f"{tenant}-{month}-{i}", datetime(2026, month, 3, tzinfo=UTC) + timedelta(minutes=i),
                tenant=tenant, billsec=10 + i)
        r["version"] = version
        out.append(r)
    return out


def test_every_write_moves_the_version_and_reads_do_not(store: Database) -> None:
    seen = [data_version(store)]

    def moved(what: str) -> None:
        v = data_version(store)
        assert v not in seen, f"{what} did not change the data version"
        seen.append(v)

    assert data_version(store) == seen[-1], "a read changed the version"
    insert(store, rows(20, 3))                       # ingest (a new part per shard)
    moved("insert")
    store.query("SELECT count() FROM cdr_records FINAL")
    assert data_version(store) == seen[-1], "a read changed the version"
    insert(store, rows(1, 3, version=2))             # re-rate / undo: a new version of a call
    moved("a new row version")
    insert(store, rows(5, 4, tenant="globex"))       # another tenant (store-wide version)
    moved("another tenant's insert")
    acc.add_account(store, "acme", "C9", "customer")  # account codes and names on pages
    moved("an account")
    table = cluster.local(store, "cdr_records")
    cluster.each_node(store, f"ALTER TABLE {table}{{on_cluster}} UPDATE billsec = billsec + 1 "
                             "WHERE tenant_id = 'acme' SETTINGS mutations_sync = 2")
    moved("a mutation")
    cluster.each_node(store, f"ALTER TABLE {table}{{on_cluster}} DROP PARTITION 202603")
    moved("a dropped partition (tiering)")
    insert(store, rows(20, 3))                       # restore: the same rows back
    moved("a restore of the same rows")
    assert data_version(store) == seen[-1]
