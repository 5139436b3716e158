"""The schema as plain .sql files, applied in file-name order by engine.migrate."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_REBUILD = re.compile(r"^REBUILD TABLE (\w+) SETTINGS (.+)$", re.S)
_SETTING = re.compile(r"^(\w+)\s*=\s*(\w+)$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def statements(self) -> list[str]:
        """The file's statements: split on ';' at the end of a line, comments dropped."""
        lines = [ln for ln in self.sql.splitlines() if not ln.lstrip().startswith("--")]
        parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
        return [p.strip() for p in parts if p.strip()]


@dataclass(frozen=True)
class Rebuild:
    """`REBUILD TABLE t SETTINGS k = v, ...`: a schema step that is not ClickHouse SQL.

    ClickHouse fixes some storage settings when a table is created (`index_granularity`
    is "readonly for storage"), so changing them means a new table holding the same
    rows. The schema file says what the table should be; engine/relayout.py does the
    copy, the check and the swap (and nothing if the table already has the settings).
    Values are plain numbers or words, which is all such settings take.
    """

    table: str
    settings: dict[str, str]

    @property
    def sql(self) -> str:
        pairs = ", ".join(f"{k} = {v}" for k, v in self.settings.items())
        return f"REBUILD TABLE {self.table} SETTINGS {pairs}"


def parse_rebuild(statement: str) -> Rebuild | None:
    """The `Rebuild` a statement asks for, or None for ordinary SQL."""
    m = _REBUILD.match(statement.strip())
    if not m:
        return None
    settings = {}
    for pair in m.group(2).split(","):
        kv = _SETTING.match(pair.strip())
        if not kv:
            raise ValueError(f"REBUILD TABLE {m.group(1)}: cannot read the setting {pair.strip()!r}"
                             " (expected name = number or word)")
        settings[kv.group(1)] = kv.group(2)
    return Rebuild(m.group(1), settings)


def migrations() -> list[Migration]:
    """Every schema file shipped with cdrhouse, in order."""
    found = []
    for entry in resources.files(__name__).iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate schema versions in {versions}")
    return found
