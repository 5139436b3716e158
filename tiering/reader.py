"""Reading the archive back: which archived months a query's range touches, and the
SELECT that reads each of them (for sql/archive.py to splice into a guarded query).

Only months in state `archived` are read: a `verified` or `restored` month is
still (or again) in the hot table, so reading its files too would count its
calls twice. Each SELECT names exactly the files its manifest lists (never a
glob over the directory, which could hold a half-finished re-archive) and casts
every column back to the hot table's type, so the union with the hot table is
column-for-column the same relation.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field

from cdrhouse.engine.db import Database
from cdrhouse.sql import catalogue
from cdrhouse.tiering import layout, warm
from cdrhouse.tiering.layout import Manifest
from cdrhouse.sql.months import utc_bounds
from cdrhouse.tiering.store import ObjectStore, sql_string


@dataclass(frozen=True)
class WarmSources:
    """The archived months a query reads, and the SELECT for each."""

    months: tuple[tuple[str, int], ...] = ()
    selects: tuple[str, ...] = field(default=())

    def labels(self) -> list[str]:
        return sorted({layout.month_label(m) for _, m in self.months})


def overlaps(month: int, start: dt.datetime | None, end: dt.datetime | None) -> bool:
    lo, hi = utc_bounds(month)
    return (end is None or lo < end) and (start is None or hi > start)


class WarmReader:
    """Turns archived months into SELECTs; caches manifests (keyed by their checksum,
    so a re-archived month is read afresh)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._manifests: dict[tuple[str, int, str], Manifest] = {}
        self._lock = threading.Lock()

    def _manifest(self, w: warm.WarmMonth) -> Manifest | None:
        key = (w.tenant, w.month, w.checksum)
        with self._lock:
            if key in self._manifests:
                return self._manifests[key]
        manifest = warm.read_manifest(self.store, w.tenant, w.month)
        if manifest is not None and manifest.checksum == w.checksum:
            with self._lock:
                self._manifests[key] = manifest
        return manifest

    def select(self, db: Database, manifest: Manifest) -> str:
        """The archive's rows of one tenant-month as the hot table's fields and types."""
        stored = dict(manifest.columns)
        exprs = []
        for f in catalogue.FIELDS:
            if f.name in stored:
                exprs.append(f"CAST(`{f.name}` AS {f.ch_type}) AS `{f.name}`")
            else:  # archived before the field existed
                exprs.append(f"defaultValueOfTypeName({sql_string(f.ch_type)}) AS `{f.name}`")
        return f"SELECT {', '.join(exprs)} FROM {self.store.clickhouse_source(db, manifest.keys)}"

    def sources(self, db: Database, tenant: str | None, start: dt.datetime | None = None,
                end: dt.datetime | None = None) -> WarmSources:
        """The archived months of `tenant` (every tenant: None) overlapping [start, end)."""
        months, selects = [], []
        for w in warm.warm_months(db, tenant, states=("archived",)):
            if not overlaps(w.month, start, end):
                continue
            manifest = self._manifest(w)
            if manifest is None or not manifest.files:
                continue
            months.append((w.tenant, w.month))
            selects.append(self.select(db, manifest))
        return WarmSources(tuple(months), tuple(selects))

    def month(self, db: Database, tenant: str, month: int) -> tuple[warm.WarmMonth, Manifest] | None:
        """One archived tenant-month and its manifest (None if it is not archived)."""
        for w in warm.warm_months(db, tenant, states=("archived",)):
            if w.month == month:
                manifest = self._manifest(w)
                return (w, manifest) if manifest else None
        return None
