"""Per-role limits for user SQL, as ClickHouse settings, and plain words for their errors.

Every user query runs with `settings=limits_for(principal.role)`. The guard
(sql/guard.py) decides *what* a query may read; these settings bound *how
much*: time, rows and bytes read, result size and memory. Operators (admin,
tenant) get looser limits than customer and carrier users, who reach the
store through the API and share it with everyone else.

- `readonly=1`: the session cannot write or change settings, whatever slips
  through (the guard refuses SETTINGS clauses anyway).
- `result_overflow_mode='throw'`: a result over `max_result_rows` or
  `max_result_bytes` is an error the user sees, never a silently truncated answer.
  ClickHouse counts a *constant* column once per block, not once per row, so
  `SELECT range(1000) FROM cdrs` would slip under `max_result_bytes`: user SQL
  therefore runs with its columns materialized (engine.query.run_sql), and
  `range()` is capped (`function_range_max_elements_in_block`).
- `max_bytes_in_join` (with the default `join_overflow_mode='throw'`): a join
  whose right side outgrows it fails at once with a message, instead of
  building a huge hash table until the time or memory limit stops it.
- `use_query_condition_cache=0`: that cache is shared by every query on the
  server and keyed on predicates; user-shaped predicates have poisoned it in
  released ClickHouse versions (wrong results for *later* queries, e.g.
  ClickHouse issues #104781, #111363), so user SQL neither reads nor writes it.

`explain_limit_error` turns ClickHouse's limit errors into a message naming
the limit and how to narrow the query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_MIB = 1024 ** 2
_GIB = 1024 ** 3

#: role → ClickHouse settings. Customer and carrier share the tightest set.
_OPERATOR_LIMITS: dict[str, Any] = {
    "max_execution_time": 300,
    "max_rows_to_read": 20_000_000_000,
    "max_bytes_to_read": 2_000 * _GIB,
    "max_result_rows": 1_000_000,
    "max_result_bytes": 1 * _GIB,
    "max_memory_usage": 16 * _GIB,
    "max_bytes_in_join": 8 * _GIB,
}
_TENANT_LIMITS: dict[str, Any] = {
    "max_execution_time": 120,
    "max_rows_to_read": 5_000_000_000,
    "max_bytes_to_read": 500 * _GIB,
    "max_result_rows": 500_000,
    "max_result_bytes": 256 * _MIB,
    "max_memory_usage": 8 * _GIB,
    "max_bytes_in_join": 2 * _GIB,
}
_ACCOUNT_LIMITS: dict[str, Any] = {
    "max_execution_time": 30,
    "max_rows_to_read": 500_000_000,
    "max_bytes_to_read": 50 * _GIB,
    "max_result_rows": 100_000,
    "max_result_bytes": 64 * _MIB,
    "max_memory_usage": 2 * _GIB,
    # a join's hash table: a self-join over a key's whole history (the hostile query
    # of issue 12.6) stops when its right side passes this, long before it has run
    # for max_execution_time holding a client other tenants wait for
    "max_bytes_in_join": 256 * 1024 ** 2,
}
ROLE_LIMITS: dict[str, dict[str, Any]] = {
    "admin": _OPERATOR_LIMITS,
    "tenant": _TENANT_LIMITS,
    "customer": _ACCOUNT_LIMITS,
    "carrier": _ACCOUNT_LIMITS,
}
#: Settings every role gets and no override may change.
FIXED: dict[str, Any] = {
    "readonly": 1,
    "result_overflow_mode": "throw",
    "use_query_condition_cache": 0,
    # range() is the one array generator with its own engine cap (default 500M
    # elements per block); a CDR query never needs more than this
    "function_range_max_elements_in_block": 10_000_000,
    # FINAL need not merge across partitions: a call's copies share start_time,
    # hence its month, hence its partition (measured: viewer page 37 -> 26 ms on 5M rows)
    "do_not_merge_across_partitions_select_final": 1,
    # The number columns' text indexes (sql/schema/005_physical.sql) serve exact
    # numbers; evaluating LIKE/startsWith/endsWith by scanning their dictionaries
    # made prefix and suffix searches slower (measured: 19 -> 29 ms and 31 -> 62 ms
    # on 1M CDRs), as a short prefix or suffix matches calls in every part.
    "use_text_index_like_evaluation_by_dictionary_scan": 0,
    # (Not set: merge_tree_min_rows_for_concurrent_read = 16384, which lets two
    # threads share reads under ~163k rows. Alone it made a builder page 30 %
    # faster, but under the API load test it cost 8-31 % of the throughput:
    # benchmarks/README.md, "Physical design".)
}


#: Reads that include archived months (Parquet on S3 or disk) are slower per row and
#: cost object-store requests: tighter time and read limits, whatever the role.
WARM_LIMITS: dict[str, dict[str, Any]] = {
    "admin": {"max_execution_time": 120, "max_rows_to_read": 2_000_000_000,
              "max_bytes_to_read": 200 * _GIB},
    "tenant": {"max_execution_time": 60, "max_rows_to_read": 500_000_000,
               "max_bytes_to_read": 50 * _GIB},
    "customer": {"max_execution_time": 20, "max_rows_to_read": 100_000_000,
                 "max_bytes_to_read": 10 * _GIB},
    "carrier": {"max_execution_time": 20, "max_rows_to_read": 100_000_000,
                "max_bytes_to_read": 10 * _GIB},
}


def limits_for(role: str, warm: bool = False, **overrides: int) -> dict[str, Any]:
    """The ClickHouse settings a query of `role` runs with.

    `overrides` replace numeric limits (tests use tiny ones; a service may
    tighten them); the fixed settings cannot be overridden, and an unknown role
    or limit name is an error rather than a query without limits.
    """
    if role not in ROLE_LIMITS:
        raise ValueError(f"no query limits for role {role!r}")
    settings: dict[str, Any] = dict(ROLE_LIMITS[role])
    if warm:
        settings.update(WARM_LIMITS[role])
    for name, value in overrides.items():
        if name not in settings:
            raise ValueError(f"{name!r} is not a per-role limit; choose one of "
                             f"{', '.join(sorted(settings))}")
        settings[name] = int(value)
    settings.update(FIXED)
    if warm:
        # Reading the archive's files takes table functions (s3(), file()), which
        # ClickHouse refuses under readonly=1. readonly=2 still refuses every write
        # and DDL; the only extra it allows, changing settings, is closed by the
        # guard, which refuses SETTINGS clauses and anything but one SELECT.
        settings["readonly"] = 2
    return settings


# -- error messages ----------------------------------------------------------------------

_NARROW_READ = ("narrow the query: use a shorter time range (WHERE start_time >= …), "
                "filter on more columns, select fewer columns, or aggregate")

#: ClickHouse error code → (name, the setting behind it, what it means, what to do).
#: Messages name the limit in words and its value, never the setting (an internal name).
LIMIT_ERRORS: dict[int, tuple[str, str, str, str]] = {
    159: ("TIMEOUT_EXCEEDED", "max_execution_time", "the query ran longer than allowed",
          _NARROW_READ),
    158: ("TOO_MANY_ROWS", "max_rows_to_read", "the query would read more rows than allowed",
          _NARROW_READ),
    307: ("TOO_MANY_BYTES", "max_bytes_to_read", "the query would read more data than allowed",
          "narrow the query: select fewer columns, use a shorter time range, or aggregate"),
    396: ("TOO_MANY_ROWS_OR_BYTES", "max_result_rows",
          "the result has more rows than allowed",
          "add LIMIT, aggregate (GROUP BY), or use a shorter time range"),
    241: ("MEMORY_LIMIT_EXCEEDED", "max_memory_usage", "the query needed more memory than allowed",
          "aggregate on fewer keys, use a shorter time range, or avoid large "
          "groupArray/DISTINCT/JOINs"),
    191: ("SET_SIZE_LIMIT_EXCEEDED", "max_bytes_in_join",
          "the JOIN's right side is larger than allowed",
          "join a smaller set: filter or aggregate the right side first (a subquery with "
          "WHERE and GROUP BY), or put the smaller table on the right"),
    394: ("QUERY_WAS_CANCELLED", "max_execution_time", "the query was cancelled",
          "run it again with a shorter time range or fewer columns; it may have hit a time limit"),
}
#: TOO_MANY_ROWS_OR_BYTES about bytes (ClickHouse: "Limit for result exceeded, max bytes: …")
_RESULT_BYTES = ("max_result_bytes", "the result is larger than allowed",
                 "select fewer or smaller values (large arrays or long strings), add LIMIT, "
                 "or aggregate")
_UNITS = {"max_execution_time": "seconds", "max_rows_to_read": "rows read",
          "max_bytes_to_read": "read", "max_result_rows": "rows",
          "max_result_bytes": "", "max_memory_usage": "of memory"}
#: every setting a user query runs with may be named in engine errors; none may be shown
SETTING_NAMES: frozenset[str] = frozenset(
    {name for limits in (*ROLE_LIMITS.values(), *WARM_LIMITS.values(), FIXED) for name in limits}
    | {"log_comment", "readonly"})
_BY_NAME = {name: code for code, (name, *_rest) in LIMIT_ERRORS.items()}
_CODE = re.compile(r"\bcode:?\s*(\d+)", re.IGNORECASE)
_NAME = re.compile(r"\(([A-Z_]+)\)")


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code in an exception from clickhouse-connect or chdb."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    text = str(exc)
    m = _CODE.search(text)
    if m:
        return int(m.group(1))
    for name in _NAME.findall(text):
        if name in _BY_NAME:
            return _BY_NAME[name]
    return None


def _amount(setting: str, value: int) -> str:
    unit = _UNITS.get(setting, "")
    if setting in ("max_bytes_to_read", "max_result_bytes", "max_memory_usage"):
        for size, name in ((_GIB, "GiB"), (_MIB, "MiB"), (1024, "KiB")):
            if value >= size and value % size == 0:
                return f"{value // size:,} {name}" + (f" {unit}" if unit else "")
        return f"{value:,} bytes" + (f" {unit}" if unit else "")
    return f"{value:,} {unit}"


def explain_limit_error(exc: BaseException, limits: Mapping[str, Any] | None = None) -> str | None:
    """A message naming the limit `exc` hit (in words) and how to narrow the query, or None.

    None means `exc` is not a limit error: report it some other way. Pass the
    `limits` the query ran with to state the value too.
    """
    code = error_code(exc)
    if code not in LIMIT_ERRORS:
        return None
    name, setting, what, hint = LIMIT_ERRORS[code]
    if code == 396 and "max bytes" in str(exc).lower():
        setting, what, hint = _RESULT_BYTES
    value = limits.get(setting) if limits else None
    bound = f"at most {_amount(setting, value)}; " if isinstance(value, int) and value else ""
    return f"{what} ({bound}ClickHouse {name}); {hint}."
