"""The store's data version: what conditional requests (ETag / If-None-Match) are keyed by.

The version is derived from ClickHouse itself, not kept by us: a hash of the set
of *active parts* of the tables a viewer page reads (`cdr_records`, `accounts`),
on every node of a cluster. Every way data changes in a MergeTree table changes
that set — an INSERT (ingest, re-rate, undo, restore, rate imports re-pricing)
commits a new part, a mutation rewrites parts under new names, `DROP/DETACH/MOVE
PARTITION` (tiering) removes parts — so no write path can forget to bump it, and
it lives in the store, shared by every service process. Background merges also
change it (the rows are the same, the parts are new): that costs a spurious cache
miss, never a stale answer.

Why not a `data_versions` table bumped by each writer: exact only if every write
path remembers to bump it (ingest, recalc, undo, resume, tiering, restore, backup
restore, a DBA's INSERT…), and a forgotten one would serve stale pages. The cost
of this one is one `system.parts` read (a few hundred bytes of metadata, no data)
and that it is store-wide, not per tenant: another tenant's ingest also
invalidates a tenant's cached pages.

Order matters for exactness: read the version *before* running the query it
labels. A write landing in between then gives new rows under the old version
(the next request re-runs: wasteful, not wrong); the other order could label old
rows with the new version and serve them as fresh forever.
"""

from __future__ import annotations

from cdrhouse.engine import cluster
from cdrhouse.engine.db import Database

#: the tables whose rows a viewer page shows (CDRs; account codes and names)
VERSIONED_TABLES: tuple[str, ...] = ("cdr_records", "accounts")


def data_version(db: Database) -> str:
    """An opaque text that changes whenever the rows of VERSIONED_TABLES may have changed."""
    names = sorted({t for name in VERSIONED_TABLES for t in (name, cluster.local(db, name))})
    row = db.rows(
        f"SELECT count(), groupBitXor(cityHash64(hostName(), table, name)), sum(rows), "
        f"max(modification_time) FROM {cluster.parts_table(db)} "
        "WHERE active AND database = {d:String} AND table IN {t:Array(String)}",
        {"d": db.name, "t": names})[0]
    return f"{row[0]}-{row[1]:x}-{row[2]}-{row[3]:%Y%m%d%H%M%S}"
