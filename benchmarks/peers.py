"""The CDR workload on cdrhouse, DuckDB and PostgreSQL, side by side.

    python -m benchmarks.peers                       # 5M CDRs over 6 months, all three engines
    python -m benchmarks.peers --rows 1000000 --rounds 7
    python -m benchmarks.peers --smoke               # tiny, DuckDB + cdrhouse, a few seconds

One command, on a freshly generated dataset (engine/generate.py, three tenants):

1. cdrhouse: the generated Parquet is ingested through the real ingest path
   (W12), then merged (OPTIMIZE FINAL of the CDRs and the daily summary, timed
   apart). The loaded table is exported once (Parquet for DuckDB, CSV for
   PostgreSQL), so every engine holds exactly the same rows.
2. DuckDB: embedded, a native table created from that Parquet sorted like
   cdrhouse's table (tenant, customer, start_time, call_id).
3. PostgreSQL (Debian's, found under /usr/lib/postgresql): started here on
   127.0.0.1 with its own data directory, monthly range partitions, COPY,
   then the B-tree indexes a DBA would add, extended statistics and ANALYZE;
   stopped and removed at the end, also on failure or Ctrl-C.

Each query (W1–W11, scoped to one tenant as users run them) runs on cdrhouse
through its real code paths — guarded user SQL (engine.query.run_sql), viewer
pages and builder searches (engine.query.run_view), CSV downloads
(engine.export) — and as the equivalent hand-written SQL on the peers. Per
query: one warm-up per engine (whose results are compared across engines),
then interleaved rounds with the engine order rotating and parameter values
(window, customer, number) changing every round; every row is fetched by the
client. ClickHouse runs with the query condition cache off (sql/limits.py);
DuckDB and PostgreSQL have no result cache. Reported: median and min per
engine, ratios PostgreSQL/cdrhouse and DuckDB/cdrhouse, load times, sizes on
disk, cdrhouse's per-query floor (a trivial query through the same path) and
the machine. Results go to benchmarks/results/peers.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from cdrhouse.engine import export as ex
from cdrhouse.engine import generate
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.ingest import IngestOptions, ingest_paths
from cdrhouse.engine.migrate import migrate
from cdrhouse.engine.query import run_sql, run_view
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import ViewRequest

UTC = dt.timezone.utc
END = dt.datetime(2026, 11, 1, tzinfo=UTC)
TENANT = "acme"  # the biggest tenant (4/7 of the rows)
ENGINES = ("cdrhouse", "duckdb", "postgres")

#: the peers' table: every catalogue field (enums as text)
PEER_COLUMNS = (
    "call_id", "tenant_id", "start_time", "answer_time", "end_time", "duration", "billsec",
    "customer_id", "carrier_id", "direction", "disposition", "src_number", "dst_number",
    "dst_prefix", "country", "release_reason", "sip_code", "sip_reason", "pdd_ms", "src_ip",
    "dst_ip", "codec", "customer_rate", "customer_charge", "carrier_rate", "carrier_cost",
    "currency", "recording_url")

PG_TYPES = {
    "call_id": "text", "tenant_id": "text", "start_time": "timestamptz",
    "answer_time": "timestamptz", "end_time": "timestamptz", "duration": "integer",
    "billsec": "integer", "customer_id": "integer", "carrier_id": "integer",
    "direction": "text", "disposition": "text", "src_number": "text", "dst_number": "text",
    "dst_prefix": "text", "country": "text", "release_reason": "text", "sip_code": "integer",
    "sip_reason": "text", "pdd_ms": "integer", "src_ip": "text", "dst_ip": "text",
    "codec": "text", "customer_rate": "numeric(18,6)", "customer_charge": "numeric(18,6)",
    "carrier_rate": "numeric(18,6)", "carrier_cost": "numeric(18,6)", "currency": "text",
    "recording_url": "text"}

#: what the viewer pages show (12 columns each; the sort keys are among them)
CUSTOMER_PAGE = ("start_time", "answer_time", "end_time", "src_number", "dst_number",
                 "country", "duration", "billsec", "disposition", "customer_rate",
                 "customer_charge", "call_id")
TENANT_PAGE = ("start_time", "customer_id", "carrier_id", "src_number", "dst_number",
               "country", "duration", "billsec", "disposition", "customer_charge",
               "carrier_cost", "call_id")
EXPORT_COLUMNS = ("start_time", "src_number", "dst_number", "country", "duration", "billsec",
                  "disposition", "customer_rate", "customer_charge", "call_id")

#: W10: a query-builder tree of 6 rules in 2 groups (the billsec bound varies per round)
def builder_tree(billsec: int) -> dict:
    return {"condition": "AND", "rules": [
        {"field": "disposition", "operator": "equal", "value": "ANSWERED"},
        {"field": "billsec", "operator": "greater", "value": billsec},
        {"field": "country", "operator": "in", "value": ["GB", "DE", "FR"]},
        {"condition": "OR", "rules": [
            {"field": "dst_number", "operator": "begins_with", "value": "4420"},
            {"field": "codec", "operator": "equal", "value": "G729"},
            {"field": "customer_charge", "operator": "greater_or_equal", "value": "0.05"},
        ]},
    ]}


BUILDER_SQL = ("disposition = 'ANSWERED' AND billsec > :billsec AND country IN ('GB', 'DE', 'FR') "
               "AND (dst_number LIKE '4420%' OR codec = 'G729' OR customer_charge >= 0.05)")


# -- the workload --------------------------------------------------------------------

@dataclass
class Query:
    id: str
    what: str
    #: round → engine-neutral parameters
    params: Callable[[int], dict]
    #: the user SQL cdrhouse runs through its guard (W1–W4), else None
    user_sql: str | None = None
    #: the peers' SQL (`:name` parameters); {tenant} scope is added as :tenant
    peer_sql: str | None = None
    pg_sql: str | None = None          # when PostgreSQL needs other text than DuckDB
    kind: str = "sql"                  # sql | view | export
    rows_per_s: bool = False


def _ts(d: dt.datetime) -> str:
    return d.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


class Workload:
    """The queries and their per-round parameters, derived from the loaded data."""

    def __init__(self, customers: Sequence[int], samples: Sequence[tuple[str, str]],
                 start: dt.datetime, end: dt.datetime) -> None:
        self.customers = list(customers)
        self.samples = list(samples)
        self.start, self.end = start, end

    def day(self, i: int) -> dt.datetime:
        return self.end - dt.timedelta(days=i)

    def queries(self) -> list[Query]:
        W = []
        page = ", ".join(TENANT_PAGE)
        cpage = ", ".join(CUSTOMER_PAGE)

        def window(days: int) -> Callable[[int], dict]:
            return lambda i: {"lo": self.day(i) - dt.timedelta(days=days), "hi": self.day(i)}

        W.append(Query(
            "W1", "calls per day over the whole range",
            lambda i: {"lo": self.start + dt.timedelta(hours=i), "hi": self.end},
            user_sql=("SELECT toDate(start_time) AS day, count() AS calls FROM cdrs "
                      "WHERE start_time >= {lo:DateTime64(3, 'UTC')} AND start_time < {hi:DateTime64(3, 'UTC')} "
                      "GROUP BY day ORDER BY day"),
            peer_sql=("SELECT CAST(start_time AS DATE) AS day, count(*) AS calls FROM cdrs "
                      "WHERE tenant_id = :tenant AND start_time >= :lo AND start_time < :hi "
                      "GROUP BY day ORDER BY day")))
        W.append(Query(
            "W2", "charge and billsec per customer per day, one month", window(30),
            user_sql=("SELECT toDate(start_time) AS day, customer_id, sum(customer_charge) AS charge, "
                      "sum(billsec) AS billsec FROM cdrs "
                      "WHERE start_time >= {lo:DateTime64(3, 'UTC')} AND start_time < {hi:DateTime64(3, 'UTC')} "
                      "GROUP BY day, customer_id ORDER BY day, customer_id"),
            peer_sql=("SELECT CAST(start_time AS DATE) AS day, customer_id, sum(customer_charge) AS charge, "
                      "sum(billsec) AS billsec FROM cdrs "
                      "WHERE tenant_id = :tenant AND start_time >= :lo AND start_time < :hi "
                      "GROUP BY day, customer_id ORDER BY day, customer_id")))
        W.append(Query(
            "W3", "ASR and ACD per carrier per hour, one week", window(7),
            user_sql=("SELECT toStartOfHour(start_time) AS hour, carrier_id, count() AS calls, "
                      "countIf(billsec > 0) / count() AS asr, "
                      "if(countIf(billsec > 0) = 0, 0, sumIf(billsec, billsec > 0) / countIf(billsec > 0)) AS acd "
                      "FROM cdrs WHERE start_time >= {lo:DateTime64(3, 'UTC')} AND start_time < {hi:DateTime64(3, 'UTC')} "
                      "GROUP BY hour, carrier_id ORDER BY hour, carrier_id"),
            peer_sql=("SELECT date_trunc('hour', start_time) AS hour, carrier_id, count(*) AS calls, "
                      "CAST(count(*) FILTER (WHERE billsec > 0) AS DOUBLE PRECISION) / count(*) AS asr, "
                      "coalesce(CAST(sum(billsec) FILTER (WHERE billsec > 0) AS DOUBLE PRECISION) "
                      "/ nullif(count(*) FILTER (WHERE billsec > 0), 0), 0) AS acd "
                      "FROM cdrs WHERE tenant_id = :tenant AND start_time >= :lo AND start_time < :hi "
                      "GROUP BY hour, carrier_id ORDER BY hour, carrier_id")))
        W.append(Query(
            "W4", "top 10 destination prefixes by minutes, one month", window(30),
            user_sql=("SELECT dst_prefix, sum(billsec) / 60 AS minutes, count() AS calls FROM cdrs "
                      "WHERE start_time >= {lo:DateTime64(3, 'UTC')} AND start_time < {hi:DateTime64(3, 'UTC')} "
                      "GROUP BY dst_prefix ORDER BY minutes DESC, dst_prefix LIMIT 10"),
            peer_sql=("SELECT dst_prefix, CAST(sum(billsec) AS DOUBLE PRECISION) / 60 AS minutes, "
                      "count(*) AS calls FROM cdrs "
                      "WHERE tenant_id = :tenant AND start_time >= :lo AND start_time < :hi "
                      "GROUP BY dst_prefix ORDER BY minutes DESC, dst_prefix LIMIT 10")))
        # W1s, W2s, W4s: the dashboard questions over whole UTC days, which cdrhouse
        # answers from its daily summary (a SummingMergeTree kept by a materialized
        # view, the guarded logical table `daily_summary`); the peers answer the same
        # question from their CDR table, as before. Answers are compared as for all.
        def days(n: int) -> Callable[[int], dict]:
            def aligned(i: int) -> dict:
                hi = self.day(i).replace(hour=0, minute=0, second=0, microsecond=0)
                return {"lo": hi - dt.timedelta(days=n), "hi": hi}
            return aligned

        summary_range = ("WHERE day >= toDate({lo:DateTime64(3, 'UTC')}) "
                         "AND day < toDate({hi:DateTime64(3, 'UTC')}) ")
        whole = (self.end - self.start).days
        W.append(Query(
            "W1s", "W1 over whole days, from the daily summary", days(whole - 1),
            user_sql=("SELECT day, sum(calls) AS calls FROM daily_summary " + summary_range
                      + "GROUP BY day ORDER BY day"),
            peer_sql=W[0].peer_sql))
        W.append(Query(
            "W2s", "W2 over whole days, from the daily summary", days(30),
            user_sql=("SELECT day, customer_id, sum(customer_charge) AS charge, "
                      "sum(billsec) AS billsec FROM daily_summary " + summary_range
                      + "GROUP BY day, customer_id ORDER BY day, customer_id"),
            # the summary counts a missing charge as 0: a day of only unpriced calls
            # sums to 0 there and to NULL in a raw sum
            peer_sql=W[1].peer_sql.replace("sum(customer_charge)",
                                           "coalesce(sum(customer_charge), 0)")))
        W.append(Query(
            "W4s", "W4 over whole days, from the daily summary", days(30),
            user_sql=("SELECT dst_prefix, sum(billsec) / 60 AS minutes, sum(calls) AS calls "
                      "FROM daily_summary " + summary_range
                      + "GROUP BY dst_prefix ORDER BY minutes DESC, dst_prefix LIMIT 10"),
            peer_sql=W[3].peer_sql))
        cust = lambda i: self.customers[i % len(self.customers)]
        W.append(Query(
            "W5", "viewer page: 100 newest calls of one customer, last 7 days, 12 columns",
            lambda i: {"customer": cust(i), **window(7)(i)}, kind="view",
            peer_sql=(f"SELECT {cpage} FROM cdrs WHERE tenant_id = :tenant AND customer_id = :customer "
                      "AND start_time >= :lo AND start_time < :hi "
                      "ORDER BY start_time DESC, call_id DESC LIMIT 101")))
        W.append(Query(
            "W6", "next page of W5 (keyset)",
            lambda i: {"customer": cust(i), **window(7)(i)}, kind="view",
            peer_sql=(f"SELECT {cpage} FROM cdrs WHERE tenant_id = :tenant AND customer_id = :customer "
                      "AND start_time >= :lo AND start_time < :hi "
                      "AND (start_time < :k_time OR (start_time = :k_time AND call_id < :k_call)) "
                      "ORDER BY start_time DESC, call_id DESC LIMIT 101")))
        sample = lambda i: self.samples[i % len(self.samples)]
        W.append(Query(
            "W7", "number search, source or destination, exact, last 90 days, newest 100",
            lambda i: {"number": sample(i)[i % 2], **window(90)(i)}, kind="view",
            peer_sql=(f"SELECT {page} FROM cdrs WHERE tenant_id = :tenant "
                      "AND start_time >= :lo AND start_time < :hi "
                      "AND (src_number = :number OR dst_number = :number) "
                      "ORDER BY start_time DESC, call_id DESC LIMIT 101")))
        W.append(Query(
            "W8", "number search by prefix (4 digits, e.g. 4420*), last 7 days, newest 100",
            # the generator's GB numbers are 441…, so 4420 itself matches nothing: each
            # round takes the first 4 digits of a stored destination instead
            lambda i: {"number": sample(i)[1][:4], **window(7)(i)}, kind="view",
            peer_sql=(f"SELECT {page} FROM cdrs WHERE tenant_id = :tenant "
                      "AND start_time >= :lo AND start_time < :hi "
                      "AND (src_number LIKE :pattern OR dst_number LIKE :pattern) "
                      "ORDER BY start_time DESC, call_id DESC LIMIT 101")))
        W.append(Query(
            "W9", "number search by suffix (4 digits, e.g. *1234), last 30 days, newest 100",
            lambda i: {"number": "1234" if i == 0 else sample(i)[i % 2][-4:], **window(30)(i)},
            kind="view",
            peer_sql=(f"SELECT {page} FROM cdrs WHERE tenant_id = :tenant "
                      "AND start_time >= :lo AND start_time < :hi "
                      "AND (src_number LIKE :pattern OR dst_number LIKE :pattern) "
                      "ORDER BY start_time DESC, call_id DESC LIMIT 101")))
        W.append(Query(
            "W10", "query-builder tree, 6 rules in 2 groups, last 30 days, newest 100",
            lambda i: {"billsec": 30 + i, **window(30)(i)}, kind="view",
            peer_sql=(f"SELECT {page} FROM cdrs WHERE tenant_id = :tenant "
                      "AND start_time >= :lo AND start_time < :hi AND " + BUILDER_SQL +
                      " ORDER BY start_time DESC, call_id DESC LIMIT 101")))
        W.append(Query(
            "W11", "CSV export of one customer's month (rows/s)",
            lambda i: {"customer": self.customers[0], **window(30)(i)}, kind="export",
            rows_per_s=True,
            peer_sql=(f"SELECT {', '.join(EXPORT_COLUMNS)} FROM cdrs WHERE tenant_id = :tenant "
                      "AND customer_id = :customer AND start_time >= :lo AND start_time < :hi "
                      "ORDER BY start_time DESC, call_id DESC")))
        return W


# -- result comparison -----------------------------------------------------------------

def normalize(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (Decimal, float)) and not isinstance(value, bool):
        return float(value)
    return value


def same_rows(a: Sequence[Sequence[Any]], b: Sequence[Sequence[Any]]) -> bool:
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        if len(ra) != len(rb):
            return False
        for x, y in zip(ra, rb):
            x, y = normalize(x), normalize(y)
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-6):
                    return False
            elif x != y:
                return False
    return True


# -- engines ---------------------------------------------------------------------------

_PARAM = re.compile(r"(?<![:\w]):([a-z_]+)")


class CdrHouse:
    name = "cdrhouse"

    def __init__(self, db: Database, tenant: str) -> None:
        self.db = db
        self.tenant = tenant
        self.operator = Principal.operator(tenant)

    def _view(self, principal: Principal, p: dict, columns: Sequence[str], **kw: Any):
        req = ViewRequest(columns=list(columns), range="custom", date_from=_ts(p["lo"]),
                          date_to=_ts(p["hi"]), limit=100, **kw)
        return run_view(self.db, principal, req, now=END)

    def run(self, q: Query, p: dict) -> tuple[list, int]:
        if q.kind == "sql":
            res = run_sql(self.db, self.operator, q.user_sql,
                          {"lo": _ts(p["lo"]), "hi": _ts(p["hi"])})
            return res.rows, len(res.rows)
        if q.id in ("W5", "W6"):
            principal = Principal.customer(self.tenant, p["customer"])
            cursor = p.get("cursor") if q.id == "W6" else None
            res = self._view(principal, p, CUSTOMER_PAGE, cursor=cursor)
            return self._page(res), len(res.rows)
        if q.id == "W7":
            res = self._view(self.operator, p, TENANT_PAGE, number=p["number"])
        elif q.id == "W8":
            res = self._view(self.operator, p, TENANT_PAGE, number=p["number"] + "*")
        elif q.id == "W9":
            res = self._view(self.operator, p, TENANT_PAGE, number="*" + p["number"])
        elif q.id == "W10":
            res = self._view(self.operator, p, TENANT_PAGE, rules=builder_tree(p["billsec"]))
        elif q.id == "W11":
            return self._export(p)
        else:
            raise ValueError(q.id)
        return self._page(res), len(res.rows)

    @staticmethod
    def _page(res) -> list:
        return list(res.rows)

    def _export(self, p: dict) -> tuple[list, int]:
        principal = Principal.customer(self.tenant, p["customer"])
        req = ViewRequest(columns=list(EXPORT_COLUMNS), range="custom", date_from=_ts(p["lo"]),
                          date_to=_ts(p["hi"]), sort="-start_time")
        export = ex.view_export(principal, req, END)
        lines = 0
        for chunk in ex.stream_csv(self.db, principal, export.sql, export.parameters,
                                   "bench", columns=export.columns):
            lines += chunk.count(b"\n")
        return [(lines - 1,)], lines - 1

    def first_page_cursor(self, p: dict) -> tuple[str | None, tuple | None]:
        """W6's cursor (after W5's page) and the last row's (start_time, call_id)."""
        principal = Principal.customer(self.tenant, p["customer"])
        res = self._view(principal, p, CUSTOMER_PAGE)
        if not res.next_cursor:
            return None, None
        last = res.rows[-1]
        t = last[0] if last[0].tzinfo else last[0].replace(tzinfo=UTC)
        return res.next_cursor, (t, last[CUSTOMER_PAGE.index("call_id")])


class DuckDB:
    name = "duckdb"

    def __init__(self, path: Path, tenant: str) -> None:
        import duckdb
        self.path = path
        self.con = duckdb.connect(str(path))
        self.con.execute("SET TimeZone = 'UTC'")
        self.tenant = tenant
        self.tmp = path.parent

    def load(self, parquet: Path) -> float:
        t0 = time.perf_counter()
        self.con.execute(
            "CREATE TABLE cdrs AS SELECT * FROM read_parquet(?) "
            "ORDER BY tenant_id, customer_id, start_time, call_id", [str(parquet)])
        self.con.execute("CHECKPOINT")
        return time.perf_counter() - t0

    def size(self) -> int:
        return self.path.stat().st_size

    def run(self, q: Query, p: dict) -> tuple[list, int]:
        sql, args = _bind(q.peer_sql, p, self.tenant, "$")
        if q.kind == "export":
            out = self.tmp / "duck-export.csv"
            n = self.con.execute(f"COPY ({sql}) TO '{out}' (FORMAT csv, HEADER)", args).fetchone()[0]
            return [(n,)], n
        rows = self.con.execute(sql, args).fetchall()
        shown = _shown(q, rows)
        return shown, len(shown)

    def close(self) -> None:
        self.con.close()


class Postgres:
    name = "postgres"

    def __init__(self, dsn: str, tenant: str) -> None:
        import psycopg
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.tenant = tenant

    def load(self, csv_path: Path, months: Sequence[dt.date]) -> dict:
        cols = ", ".join(f"{c} {PG_TYPES[c]}" for c in PEER_COLUMNS)
        cur = self.conn.cursor()
        cur.execute(f"CREATE TABLE cdrs ({cols}) PARTITION BY RANGE (start_time)")
        for m in months:
            nxt = (m.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
            cur.execute(f"CREATE TABLE cdrs_{m:%Y%m} PARTITION OF cdrs "
                        f"FOR VALUES FROM ('{m}') TO ('{nxt}')")
        t0 = time.perf_counter()
        with open(csv_path, "rb") as fh, cur.copy(
                "COPY cdrs FROM STDIN WITH (FORMAT csv, NULL '\\N')") as copy:
            while data := fh.read(1 << 20):
                copy.write(data)
        copy_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cur.execute("CREATE INDEX ON cdrs (tenant_id, customer_id, start_time)")
        cur.execute("CREATE INDEX ON cdrs (src_number)")
        cur.execute("CREATE INDEX ON cdrs (dst_number text_pattern_ops)")
        index_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cur.execute("CREATE STATISTICS cdrs_accounts (dependencies, ndistinct) "
                    "ON tenant_id, customer_id, carrier_id FROM cdrs")
        cur.execute("CREATE STATISTICS cdrs_dest (dependencies, ndistinct) "
                    "ON country, dst_prefix FROM cdrs")
        cur.execute("VACUUM (ANALYZE)")
        cur.execute("CHECKPOINT")
        analyze_s = time.perf_counter() - t0
        return {"copy_s": copy_s, "index_s": index_s, "analyze_s": analyze_s}

    def sizes(self) -> dict:
        cur = self.conn.cursor()
        cur.execute("SELECT sum(pg_table_size(inhrelid)), sum(pg_indexes_size(inhrelid)) "
                    "FROM pg_inherits WHERE inhparent = 'cdrs'::regclass")
        table, indexes = cur.fetchone()
        return {"table_bytes": int(table), "index_bytes": int(indexes)}

    def run(self, q: Query, p: dict) -> tuple[list, int]:
        sql, args = _bind(q.pg_sql or q.peer_sql, p, self.tenant, "%")
        cur = self.conn.cursor()
        if q.kind == "export":
            n = 0
            with cur.copy(f"COPY ({_literal(self.conn, sql, args)}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
                for data in copy:
                    n += bytes(data).count(b"\n")
            return [(n - 1,)], n - 1
        cur.execute(sql, args)
        rows = cur.fetchall()
        shown = _shown(q, rows)
        return shown, len(shown)

    def close(self) -> None:
        self.conn.close()


def _literal(conn, sql: str, args: dict) -> str:
    """`sql` with its parameters inlined (COPY takes no bound parameters)."""
    import psycopg
    return psycopg.ClientCursor(conn).mogrify(sql, args)


def _shown(q: Query, rows: list) -> list:
    """A page's rows as the viewer shows them: LIMIT 101 fetched, 100 shown."""
    return rows[:100] if q.kind == "view" else rows


def _bind(sql: str, p: dict, tenant: str, style: str) -> tuple[str, dict]:
    args = {"tenant": tenant}
    for k, v in p.items():
        if k == "cursor":
            continue
        args[k] = v
    used = set(_PARAM.findall(sql))
    args = {k: v for k, v in args.items() if k in used}
    if style == "$":
        return _PARAM.sub(lambda m: "$" + m.group(1), sql), args
    return _PARAM.sub(lambda m: f"%({m.group(1)})s", sql.replace("%", "%%")), args


# -- the run ---------------------------------------------------------------------------

def measure(engines: Sequence[Any], queries: Sequence[Query], rounds: int,
            log: Callable[[str], None]) -> dict:
    out: dict[str, dict] = {}
    cdr = next(e for e in engines if e.name == "cdrhouse")
    for q in queries:
        params = [q.params(i) for i in range(rounds + 1)]
        for i, p in enumerate(params):
            if q.id == "W6":
                cursor, last = cdr.first_page_cursor(p)
                p["cursor"] = cursor
                p["k_time"], p["k_call"] = last if last else (p["hi"], "")
            if q.id == "W8":
                p["pattern"] = p["number"] + "%"
            if q.id == "W9":
                p["pattern"] = "%" + p["number"]
        # warm-up with round 0's parameters; its results are compared across engines
        results = {e.name: e.run(q, params[0]) for e in engines}
        base = results["cdrhouse"]
        agree = {name: same_rows(base[0], r[0]) for name, r in results.items() if name != "cdrhouse"}
        samples: dict[str, list[float]] = {e.name: [] for e in engines}
        counts: dict[str, list[int]] = {e.name: [] for e in engines}
        for r in range(1, rounds + 1):
            k = r % len(engines)
            for e in list(engines[k:]) + list(engines[:k]):
                t0 = time.perf_counter()
                _rows, n = e.run(q, params[r])
                samples[e.name].append(time.perf_counter() - t0)
                counts[e.name].append(n)
        entry = {"what": q.what, "rows_round0": {n: r[1] for n, r in results.items()},
                 "agree_with_cdrhouse": agree, "engines": {}}
        for name, s in samples.items():
            med = statistics.median(s)
            stats = {"median_ms": round(med * 1e3, 2), "min_ms": round(min(s) * 1e3, 2),
                     "rows_median": statistics.median(counts[name])}
            if q.rows_per_s:
                stats["rows_per_s"] = round(statistics.median(counts[name]) / med)
            entry["engines"][name] = stats
        c = entry["engines"]["cdrhouse"]["median_ms"]
        for name in ("postgres", "duckdb"):
            if name in entry["engines"] and c > 0:
                entry[f"{name}_over_cdrhouse"] = round(entry["engines"][name]["median_ms"] / c, 2)
        out[q.id] = entry
        log(f"{q.id}: " + ", ".join(f"{n} {v['median_ms']} ms" for n, v in entry["engines"].items())
            + f"  agree={agree}")
    return out


def floor_ms(db: Database, rounds: int, customer: int) -> dict:
    """cdrhouse's per-query floor, through the same paths as the workload.

    - a constant through the driver (no table): the engine + driver round trip;
    - a constant through the guard (run_sql): plus compile and limits;
    - a viewer page over a 1 ms window (run_view as a customer): the least a
      page that touches cdr_records costs (index analysis, FINAL, one granule
      of 12 columns read), whatever it returns.
    """
    op = Principal.operator(TENANT)
    cust = Principal.customer(TENANT, customer)
    out: dict[str, list[float]] = {"driver_select_constant_ms": [],
                                   "guarded_select_constant_ms": [], "viewer_page_1ms_window_ms": []}
    t = END - dt.timedelta(days=3)
    for i in range(rounds * 3):
        t0 = time.perf_counter()
        db.rows("SELECT {x:UInt32}", {"x": i})
        out["driver_select_constant_ms"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_sql(db, op, "SELECT {x:UInt32} AS x", {"x": i})
        out["guarded_select_constant_ms"].append(time.perf_counter() - t0)
        lo = t - dt.timedelta(minutes=7 * i)
        req = ViewRequest(columns=list(CUSTOMER_PAGE), range="custom", date_from=_ts(lo),
                          date_to=_ts(lo + dt.timedelta(milliseconds=1)))
        t0 = time.perf_counter()
        run_view(db, cust, req, now=END)
        out["viewer_page_1ms_window_ms"].append(time.perf_counter() - t0)
    return {k: round(statistics.median(v) * 1e3, 2) for k, v in out.items()}


def cdrhouse_sizes(db: Database) -> dict:
    rows = db.rows(
        "SELECT table, sum(bytes_on_disk), sum(rows) FROM system.parts "
        "WHERE database = currentDatabase() AND active GROUP BY table")
    tables = {t: {"bytes": int(b), "rows": int(r)} for t, b, r in rows}
    proj = db.rows(
        "SELECT name, sum(bytes_on_disk) FROM system.projection_parts "
        "WHERE database = currentDatabase() AND table = 'cdr_records' AND active GROUP BY name")
    idx = db.rows(
        "SELECT name, type_full, data_compressed_bytes FROM system.data_skipping_indices "
        "WHERE database = currentDatabase() AND table = 'cdr_records'")
    return {"tables": tables,
            "projections": {n: int(b) for n, b in proj},
            "skip_indexes": {n: {"type": t, "bytes": int(b)} for n, t, b in idx}}


def load_cdrhouse(db: Database, spec: generate.GenSpec, work: Path, log) -> dict:
    migrate(db)
    generate.ensure_accounts(db, spec)
    src = work / "source"
    src.mkdir()
    paths = {}
    t0 = time.perf_counter()
    for tenant in spec.tenants:
        paths[tenant] = src / f"{tenant}.parquet"
        generate.write_parquet(db, spec, tenant, paths[tenant])
    gen_s = time.perf_counter() - t0
    log(f"generated {spec.rows:,} rows in {gen_s:.1f} s")
    t0 = time.perf_counter()
    for tenant in spec.tenants:
        ingest_paths(db, [paths[tenant]], IngestOptions(tenant=tenant), work / "rejects.csv")
    ingest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    db.command("OPTIMIZE TABLE cdr_records FINAL")
    # and the daily summary: what schema 015's six-hour rule does to an idle store (its
    # reads, W1s/W2s/W4s, otherwise depend on how far background merges got)
    db.command("OPTIMIZE TABLE cdr_daily_summary FINAL")
    optimize_s = time.perf_counter() - t0
    source_bytes = sum(p.stat().st_size for p in paths.values())
    stored = db.scalar("SELECT count() FROM cdr_records")
    log(f"cdrhouse: ingested {stored:,} rows in {ingest_s:.1f} s, merged in {optimize_s:.1f} s")
    return {"ingest_s": round(ingest_s, 2), "optimize_s": round(optimize_s, 2),
            "rows": int(stored), "rows_per_s": round(stored / ingest_s),
            "source_parquet_bytes": source_bytes}


def export_for_peers(db: Database, work: Path, csv_too: bool) -> tuple[Path, Path | None]:
    cols = ", ".join(f"CAST({c} AS String) AS {c}" if c in ("direction", "disposition") else c
                     for c in PEER_COLUMNS)
    sql = (f"SELECT {cols} FROM cdr_records FINAL "
           "ORDER BY tenant_id, customer_id, start_time, call_id")
    # ClickHouse writes the files itself (streaming them through the driver is slow)
    parquet = work / "peers.parquet"
    db.command(f"INSERT INTO FUNCTION file({{path:String}}, 'Parquet') {sql}", {"path": str(parquet)},
               {"output_format_parquet_compression_method": "zstd"})
    csv_path = None
    if csv_too:
        csv_path = work / "peers.csv"
        db.command(f"INSERT INTO FUNCTION file({{path:String}}, 'CSV') {sql}", {"path": str(csv_path)})
    return parquet, csv_path


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        meminfo = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        cpuinfo = meminfo = []
    for line in cpuinfo:
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    for line in meminfo:
        if line.startswith("MemTotal"):
            info["mem_gib"] = round(int(line.split()[1]) / 1024 ** 2, 1)
            break
    with contextlib.suppress(ImportError):  # the smoke run needs no DuckDB version
        import duckdb
        info["duckdb"] = duckdb.__version__
    return info


def run(rows: int, months: int, rounds: int, engines: Sequence[str], seed: int = 7,
        log: Callable[[str], None] = print) -> dict:
    """Generate, load every engine, run the workload; returns the results (see main)."""
    spec = generate.GenSpec(rows=rows, months=months, seed=seed, end=END)
    result: dict[str, Any] = {"date": dt.datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                              "rows": rows, "months": months, "rounds": rounds, "tenant": TENANT,
                              "engines": list(engines), "machine": machine(), "load": {},
                              "sizes": {}}
    result["machine"]["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="cdrhouse-peers-") as tmp:
        work = Path(tmp)
        db = Database(StoreConfig(data_dir=work / "cdrhouse"))
        pg_server = None
        peers: list[Any] = []
        try:
            result["machine"]["clickhouse"] = db.scalar("SELECT version()")
            result["load"]["cdrhouse"] = load_cdrhouse(db, spec, work, log)
            result["sizes"]["cdrhouse"] = cdrhouse_sizes(db)
            parquet, csv_path = export_for_peers(db, work, "postgres" in engines)
            if "duckdb" in engines:
                duck = DuckDB(work / "duck.db", TENANT)
                peers.append(duck)
                s = duck.load(parquet)
                result["load"]["duckdb"] = {"load_s": round(s, 2), "rows_per_s": round(rows / s)}
                result["sizes"]["duckdb"] = {"file_bytes": duck.size()}
                log(f"duckdb: loaded in {s:.1f} s")
            if "postgres" in engines:
                from benchmarks.pg import PostgresServer
                pg_server = PostgresServer().start()
                result["machine"]["postgres"] = pg_server.version
                months_present = [dt.date(y, m, 1) for (y, m) in db.rows(
                    "SELECT DISTINCT toYear(start_time), toMonth(start_time) FROM cdr_records "
                    "ORDER BY 1, 2")]
                pg = Postgres(pg_server.dsn, TENANT)
                peers.append(pg)
                t = pg.load(csv_path, months_present)
                result["load"]["postgres"] = {
                    **{k: round(v, 2) for k, v in t.items()},
                    "copy_rows_per_s": round(rows / t["copy_s"])}
                result["sizes"]["postgres"] = pg.sizes()
                log(f"postgres: COPY {t['copy_s']:.1f} s, indexes {t['index_s']:.1f} s, "
                    f"analyze {t['analyze_s']:.1f} s")
            customers = [int(c) for (c,) in db.rows(
                "SELECT customer_id FROM cdr_records WHERE tenant_id = {t:String} "
                "GROUP BY customer_id ORDER BY count() DESC LIMIT 3", {"t": TENANT})]
            # numbers of random calls 20-30 days back: inside every round's window
            samples = db.rows(
                "SELECT src_number, dst_number FROM cdr_records FINAL WHERE tenant_id = {t:String} "
                "AND start_time >= {lo:DateTime64(3, 'UTC')} AND start_time < {hi:DateTime64(3, 'UTC')} "
                "ORDER BY cityHash64(call_id) LIMIT 64",
                {"t": TENANT, "lo": _ts(END - dt.timedelta(days=30)),
                 "hi": _ts(END - dt.timedelta(days=20))})
            start = db.scalar("SELECT min(start_time) FROM cdr_records")
            workload = Workload(customers, samples, start.replace(tzinfo=UTC)
                                if start.tzinfo is None else start, END)
            cdr = CdrHouse(db, TENANT)
            result["floor"] = floor_ms(db, rounds, customers[0])
            result["queries"] = measure([cdr, *peers], workload.queries(), rounds, log)
        finally:
            for p in peers:
                p.close()
            if pg_server is not None:
                pg_server.stop()
            db.close()
    # the 1/5/15-minute load: above the core count, something else shared the machine
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def table(result: dict) -> str:
    """The Markdown table of medians and ratios."""
    engines = result["engines"]
    head = ["id", "what"] + [f"{e} ms" for e in engines]
    if "postgres" in engines:
        head.append("PG / cdrhouse")
    if "duckdb" in engines:
        head.append("DuckDB / cdrhouse")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for qid, q in result["queries"].items():
        cells = [qid, q["what"]]
        for e in engines:
            v = q["engines"][e]
            cell = f"{v['median_ms']:.1f}"
            if "rows_per_s" in v:
                cell += f" ({v['rows_per_s'] / 1e6:.2f}M rows/s)"
            cells.append(cell)
        if "postgres" in engines:
            cells.append(f"{q.get('postgres_over_cdrhouse', 0):.1f}×")
        if "duckdb" in engines:
            cells.append(f"{q.get('duckdb_over_cdrhouse', 0):.1f}×")
        lines.append("| " + " | ".join(cells) + " |")
    ld = result["load"]
    w12 = [f"cdrhouse ingest {ld['cdrhouse']['rows_per_s']:,} rows/s"]
    if "duckdb" in ld:
        w12.append(f"DuckDB {ld['duckdb']['rows_per_s']:,} rows/s")
    if "postgres" in ld:
        w12.append(f"PostgreSQL COPY {ld['postgres']['copy_rows_per_s']:,} rows/s")
    lines.append(f"| W12 | load from Parquet (rows/s) | {'; '.join(w12)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--months", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help="comma-separated subset of cdrhouse,duckdb,postgres (cdrhouse is required)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny dataset, two rounds, DuckDB and cdrhouse only (the test suite runs this)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/peers.json"))
    args = ap.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if args.smoke:
        args.rows, args.rounds, engines = min(args.rows, 20_000), 2, ["cdrhouse", "duckdb"]
    if "cdrhouse" not in engines or any(e not in ENGINES for e in engines):
        ap.error(f"--engines: choose from {', '.join(ENGINES)}, including cdrhouse")
    engines = [e for e in ENGINES if e in engines]

    def on_term(signum, frame):  # stop PostgreSQL and remove temp dirs on SIGTERM too
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    log = lambda m: print(m, file=sys.stderr, flush=True)
    result = run(args.rows, args.months, args.rounds, engines, log=log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
