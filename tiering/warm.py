"""The store's record of archived tenant-months (the `warm_months` table), and the
manifests in the archive it mirrors."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from cdrhouse.engine.db import Database
from cdrhouse.tiering import layout
from cdrhouse.tiering.layout import Manifest
from cdrhouse.tiering.store import ArchiveError, ObjectStore

STATES = ("verified", "archived", "restored")


@dataclass(frozen=True)
class WarmMonth:
    tenant: str
    month: int
    state: str
    rows: int
    bytes: int
    files: int
    checksum: str
    manifest: str
    updated_at: dt.datetime


_SELECT = ("SELECT tenant_id, month, toString(state), rows, bytes, files, checksum, manifest, "
           "updated_at FROM warm_months FINAL")


def warm_months(db: Database, tenant: str | None = None,
                states: tuple[str, ...] = STATES) -> list[WarmMonth]:
    where = ["state IN {states:Array(String)}"]
    params: dict = {"states": list(states)}
    if tenant is not None:
        where.append("tenant_id = {tenant:String}")
        params["tenant"] = tenant
    sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY tenant_id, month"
    return [WarmMonth(t, int(m), s, int(r), int(b), int(f), c, k, u)
            for t, m, s, r, b, f, c, k, u in db.rows(sql, params)]


def warm_month(db: Database, tenant: str, month: int) -> WarmMonth | None:
    found = [w for w in warm_months(db, tenant) if w.month == month]
    return found[0] if found else None


def record(db: Database, manifest: Manifest, state: str) -> None:
    if state not in STATES:
        raise ValueError(f"state {state!r}")
    db.insert_rows("warm_months", [(
        manifest.tenant, manifest.month, state, manifest.rows, manifest.bytes,
        len(manifest.files), manifest.checksum,
        layout.manifest_key(manifest.tenant, manifest.month),
        dt.datetime.now(dt.UTC), time.time_ns())],
        ["tenant_id", "month", "state", "rows", "bytes", "files", "checksum", "manifest",
         "updated_at", "version"])


def read_manifest(store: ObjectStore, tenant: str, month: int) -> Manifest | None:
    raw = store.get_bytes(layout.manifest_key(tenant, month))
    if raw is None:
        return None
    try:
        return Manifest.from_json(raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"the manifest {layout.manifest_key(tenant, month)} in "
                           f"{store.location} is unreadable: {exc}") from exc


def all_manifests(store: ObjectStore) -> list[Manifest]:
    found = []
    for obj in store.list(layout.ROOT + "/"):
        if obj.key.endswith("/_manifest.json"):
            where = layout.parse_month_key(obj.key)
            if where:
                manifest = read_manifest(store, *where)
                if manifest:
                    found.append(manifest)
    return found


def write_index(store: ObjectStore) -> list[Manifest]:
    manifests = all_manifests(store)
    store.put_bytes(layout.INDEX_KEY, layout.index_json(manifests))
    return manifests
