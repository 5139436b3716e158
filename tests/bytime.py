"""The time-ordered copy of the CDRs (sql/schema/016_by_time.sql) holds exactly the hot
table's calls: what the viewer reads there is what cdr_records holds."""

from __future__ import annotations

from cdrhouse.engine.db import Database

_MONTHS = ("SELECT m, count(), sum(h) FROM (SELECT toYYYYMM(start_time) AS m, "
           "cityHash64(tuple(*)) AS h FROM {t} FINAL) GROUP BY m ORDER BY m")


def assert_copy_exact(db: Database) -> None:
    """Per month: the same number of calls, every column of every call equal (after
    FINAL, so every version reached both tables and the same one wins)."""
    hot = db.rows(_MONTHS.format(t="cdr_records"))
    copy = db.rows(_MONTHS.format(t="cdr_records_by_time"))
    assert copy == hot, f"the time-ordered copy differs from cdr_records: {copy} vs {hot}"
