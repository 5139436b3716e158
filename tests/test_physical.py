"""The physical design (sql/schema/005_physical.sql) changes speed, never results.

The number columns' text indexes must give exactly what a full scan gives,
also under FINAL when a newer version of a call changed its number (the index
of the old part still lists the old number), and the viewer's number search
must actually use them (checked with EXPLAIN, not with timings).
"""

from __future__ import annotations

import datetime as dt

import pytest

from cdrhouse.engine import generate
from cdrhouse.sql.limits import limits_for
from cdrhouse.sql.principal import Principal
from cdrhouse.sql.viewer import ViewRequest, compile_view

END = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
COLUMNS = ["start_time", "customer_id", "src_number", "dst_number", "billsec", "call_id"]


@pytest.fixture(scope="module")
def loaded(embedded_dsn, engine_dir, tmp_path_factory):
    """One generated store for the module (read-only for the tests)."""
    from conftest import _drop, _fresh
    db = _fresh(embedded_dsn, engine_dir)
    try:
        yield _load(db, tmp_path_factory.mktemp("physical"))
    finally:
        _drop(db)


def _load(db, tmp_path):
    generate.load(db, generate.GenSpec(rows=30_000, months=2, seed=11,
                                       tenants=("acme", "globex"), end=END), tmp_path)
    # a newer version of every 40th acme call with another destination, in its own
    # part: FINAL must show the new number only, whatever the old part's index says
    db.command("INSERT INTO cdr_records SELECT * REPLACE (version + 1 AS version, "
               "concat(dst_number, '7') AS dst_number) FROM cdr_records FINAL "
               "WHERE tenant_id = 'acme' AND cityHash64(call_id) % 40 = 0")
    return db


def _numbers(db):
    """Searches worth running: common and rare numbers, changed ones, both sides."""
    changed = db.rows("SELECT dst_number, substring(dst_number, 1, length(dst_number) - 1) "
                      "FROM cdr_records FINAL WHERE tenant_id = 'acme' AND version > 1 "
                      "ORDER BY call_id LIMIT 3")
    plain = db.rows("SELECT src_number, dst_number FROM cdr_records FINAL "
                    "WHERE tenant_id = 'acme' ORDER BY cityHash64(call_id) LIMIT 4")
    searches = []
    for new, old in changed:
        searches += [new, old]                      # the old number must no longer match
    for src, dst in plain:
        searches += [src, dst, dst[:5] + "*", "*" + dst[-4:], "*" + src[-3:] + "*",
                     f"{src},{dst}", f"{dst[:4]}*,!{dst}"]
    return searches


def _both(db, compiled, role):
    with_idx = db.rows(compiled.sql, compiled.parameters, limits_for(role))
    without = db.rows(compiled.sql, compiled.parameters,
                      {**limits_for(role), "use_skip_indexes": 0})
    return with_idx, without


@pytest.mark.parametrize("who", ["tenant", "customer", "admin"])
def test_number_search_same_with_and_without_indexes(loaded, who):
    db = loaded
    principal = {"tenant": Principal.operator("acme"),
                 "customer": Principal.customer("acme", 1),
                 "admin": Principal.admin()}[who]
    columns = COLUMNS if who != "customer" else [c for c in COLUMNS if c != "customer_id"]
    nonempty = 0
    for number in _numbers(db):
        for limit in (100, 1000):
            req = ViewRequest(columns=columns, range="all", number=number, limit=limit)
            with_idx, without = _both(db, compile_view(req, principal, END), principal.role)
            assert with_idx == without, number
            nonempty += bool(with_idx)
    assert nonempty > 10


def test_changed_number_is_found_only_in_its_new_version(loaded):
    db = loaded
    op = Principal.operator("acme")
    new, old = db.rows("SELECT dst_number, substring(dst_number, 1, length(dst_number) - 1) "
                       "FROM cdr_records FINAL WHERE tenant_id = 'acme' AND version > 1 "
                       "ORDER BY call_id LIMIT 1")[0]
    call = db.scalar("SELECT call_id FROM cdr_records FINAL WHERE tenant_id = 'acme' "
                     "AND dst_number = {n:String}", {"n": new})
    rows = db.rows(*_sql(compile_view(ViewRequest(columns=["call_id", "dst_number"], range="all",
                                                  number=new), op, END)), limits_for("tenant"))
    assert (call, new) in [r[:2] for r in rows]
    rows = db.rows(*_sql(compile_view(ViewRequest(columns=["call_id", "dst_number"], range="all",
                                                  number=old), op, END)), limits_for("tenant"))
    assert call not in [r[0] for r in rows]


def _sql(compiled):
    return compiled.sql, compiled.parameters


def test_user_sql_and_builder_same_with_and_without_indexes(loaded):
    db = loaded
    src, dst = db.rows("SELECT src_number, dst_number FROM cdr_records FINAL "
                       "WHERE tenant_id = 'acme' ORDER BY cityHash64(call_id) LIMIT 1")[0]
    op = Principal.operator("acme")
    rules = {"condition": "OR", "rules": [
        {"field": "dst_number", "operator": "equal", "value": dst},
        {"field": "src_number", "operator": "in", "value": [src, "0"]},
        {"field": "dst_number", "operator": "begins_with", "value": dst[:6]},
        {"field": "src_number", "operator": "ends_with", "value": src[-4:]}]}
    req = ViewRequest(columns=COLUMNS, range="all", rules=rules, limit=1000)
    with_idx, without = _both(db, compile_view(req, op, END), "tenant")
    assert with_idx == without and with_idx


def test_number_search_uses_the_text_indexes(loaded):
    db = loaded
    number = db.scalar("SELECT dst_number FROM cdr_records FINAL WHERE tenant_id = 'acme' LIMIT 1")
    c = compile_view(ViewRequest(columns=COLUMNS, range="all", number=number),
                     Principal.operator("acme"), END)
    plan = "\n".join(r[0] for r in db.rows("EXPLAIN indexes = 1 " + c.sql, c.parameters))
    assert "idx_src_number" in plan and "idx_dst_number" in plan


def test_indexes_are_built_for_existing_parts(loaded):
    db = loaded
    sizes = dict(db.rows("SELECT name, data_compressed_bytes FROM system.data_skipping_indices "
                         "WHERE database = currentDatabase() AND table = 'cdr_records'"))
    assert sizes.get("idx_src_number", 0) > 0 and sizes.get("idx_dst_number", 0) > 0


# -- a customer's page read in sort-key order, in small blocks (sql.viewer.page_settings) ---

@pytest.mark.parametrize("sort", ["-start_time", "start_time"])
@pytest.mark.parametrize("account", [1, 2, 3])
@pytest.mark.parametrize("as_operator", [False, True], ids=["customer", "operator-narrowed"])
def test_small_blocks_give_the_same_pages(loaded, account, sort, as_operator):
    """Five pages of a customer (its own, or an operator's narrowed to it), walked by
    cursor, with and without the compiler's small blocks: the same rows, also where a
    call's newer version sits in another part."""
    db = loaded
    who = Principal.operator("acme") if as_operator else Principal.customer("acme", account)
    narrow = ({"field": "customer_id", "operator": "equal", "value": account},) if as_operator else ()
    rules = [None, {"condition": "AND", "rules": [
        {"field": "billsec", "operator": "greater", "value": 20}]}]
    for rule in rules:
        cursor, pages = None, 0
        while pages < 5:
            req = ViewRequest(columns=["start_time", "billsec", "dst_number", "call_id"],
                              range="all", sort=sort, limit=100, rules=rule, cursor=cursor,
                              account_rules=narrow)
            c = compile_view(req, who, END)
            assert c.settings["max_block_size"] == 1024 and c.settings["max_threads"] == 1
            small = db.rows(c.sql, c.parameters, {**c.settings, **limits_for(who.role)})
            default = db.rows(c.sql, c.parameters, {**limits_for(who.role),
                                                    "max_block_size": 65409, "max_threads": 2})
            assert small == default and small
            page = c.page(small)
            pages += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert pages >= 2          # more than one page walked (the rows span blocks)


# -- newest-first pages read recent slices first (sql.viewer.time_slices) ------------------

def _full_page(db, request, principal):
    """The page as the unsliced query gives it."""
    compiled = compile_view(request, principal, END)
    return compiled.page(db.rows(compiled.sql, compiled.parameters, limits_for(principal.role)))


SLICE_CASES = [
    dict(range="last_30_days"),
    dict(range="all", limit=7),
    dict(range="last_7_days", number="4*", connected_only=True),
    dict(range="last_30_days", number="*12"),
    dict(range="last_30_days", number="*55*,!1*"),
    dict(range="this_month", tz="Europe/Berlin", limit=1000),
    dict(range="custom", date_from="2026-09-01", date_to="2026-10-31T12:00:00", limit=3),
    dict(range="last_30_days", rules={"condition": "AND", "rules": [
        {"field": "disposition", "operator": "equal", "value": "ANSWERED"},
        {"condition": "OR", "rules": [
            {"field": "billsec", "operator": "greater", "value": 60},
            {"field": "codec", "operator": "equal", "value": "G729"}]}]}),
    dict(range="last_7_days", rules={"condition": "AND", "rules": [
        {"field": "billsec", "operator": "greater", "value": 100000}]}),
    dict(range="last_30_days", number="99999999*"),                 # nothing matches
]


def _principal(db, who: str) -> Principal:
    """tenant acme's operator, its busiest carrier, or the admin."""
    carrier = db.scalar("SELECT carrier_id FROM cdr_records WHERE tenant_id = 'acme' "
                        "GROUP BY carrier_id ORDER BY count() DESC LIMIT 1")
    return {"tenant": Principal.operator("acme"), "carrier": Principal.carrier("acme", carrier),
            "admin": Principal.admin()}[who]


def _walk_equal_to_the_whole_range(db, principal, request, pages):
    """Walk up to `pages` pages with the keyset cursor through `run_view`, each equal
    (rows and next cursor) to the page of the unsliced query over cdr_records; the
    requests walked and the last page's rows."""
    from cdrhouse.engine.query import run_view
    cursor, walked, rows = None, [], []
    while len(walked) < pages:
        req = ViewRequest(**{**request.__dict__, "cursor": cursor})
        got = run_view(db, principal, req, now=END)
        want = _full_page(db, req, principal)
        assert got.rows == want.rows
        assert got.next_cursor == want.next_cursor
        walked.append(req)
        rows = got.rows
        if not got.next_cursor:
            break
        cursor = got.next_cursor
    return walked, rows


@pytest.mark.parametrize("case", range(len(SLICE_CASES)))
@pytest.mark.parametrize("who", ["tenant", "carrier", "admin"])
def test_sliced_pages_equal_the_whole_range(loaded, who, case):
    from cdrhouse.sql.viewer import time_slices
    db = loaded
    principal = _principal(db, who)
    request = ViewRequest(**{"limit": 50, **SLICE_CASES[case]})
    _walk_equal_to_the_whole_range(db, principal, request, pages=3)
    if case == 0:
        bounds = time_slices(request, principal, END)
        assert bounds and bounds == sorted(bounds, reverse=True)
        sliced = compile_view(request, principal, END, newer_than=bounds[0])
        # the dataset has a full page in the last day: the slice is what answered
        assert len(db.rows(sliced.sql, sliced.parameters, limits_for(principal.role))) == 51


def test_time_slices_only_where_they_help():
    from cdrhouse.sql.viewer import time_slices
    op, cust = Principal.operator("acme"), Principal.customer("acme", 1)
    page = ViewRequest(range="last_30_days")
    assert len(time_slices(page, op, END)) == 2
    assert time_slices(page, cust, END) == []                  # read in sort-key order
    assert time_slices(ViewRequest(range="last_30_days", for_download=True, limit=None),
                       op, END) == []
    assert time_slices(ViewRequest(range="last_30_days", sort="start_time"), op, END) == []
    assert time_slices(ViewRequest(range="last_30_days", sort="-billsec"), op, END) == []
    assert time_slices(ViewRequest(range="last_30_days", number="4420123"), op, END) == []
    assert time_slices(ViewRequest(range="last_30_days", number="4420*"), op, END) == []
    assert time_slices(ViewRequest(range="last_30_days", number="*1234,!1*"), op, END) == []
    assert len(time_slices(ViewRequest(range="last_30_days", number="!4420123"), op, END)) == 2
    assert len(time_slices(ViewRequest(range="last_7_days"), op, END)) == 1    # 8 days > 7
    assert time_slices(ViewRequest(range="today"), op, END) == []
    # invalid requests are left to compile_view to report
    assert time_slices(ViewRequest(range="last_30_days", cursor="not-a-cursor!"), op, END) == []
    assert time_slices(ViewRequest(range="bogus"), op, END) == []


def test_slice_only_narrows_and_keeps_the_guard_first():
    op = Principal.carrier("acme", 3)
    since = END - dt.timedelta(days=1)
    plain = compile_view(ViewRequest(range="last_30_days"), op, END)
    sliced = compile_view(ViewRequest(range="last_30_days"), op, END, newer_than=since)
    where = sliced.sql.split("WHERE ", 1)[1]
    assert where.startswith("(tenant_id = {__guard_tenant:String} AND carrier_id = ")
    assert "start_time >= {slice_from:DateTime64(3, 'UTC')}" in where
    assert sliced.parameters == {**plain.parameters, "slice_from": "2026-10-31 00:00:00.000"}
    assert sliced.applied_range == plain.applied_range
    with pytest.raises(ValueError, match="timezone-aware"):
        compile_view(ViewRequest(range="last_30_days"), op, END, newer_than=since.replace(tzinfo=None))
    with pytest.raises(ValueError, match="timezone-aware"):
        compile_view(ViewRequest(range="last_30_days"), op, END,
                     newer_than="2026-10-31'; DROP TABLE x")  # type: ignore[arg-type]


def test_forged_cursor_with_sliced_pages_stays_in_the_tenant(loaded):
    """A cursor is user input: whatever time it carries, slices only narrow the guarded rows."""
    from cdrhouse.engine.query import run_view
    from cdrhouse.sql.viewer import encode_cursor
    db = loaded
    op = Principal.operator("globex")
    for when in ("2099-01-01 00:00:00.000", "2026-10-31 12:00:00.000", "1971-01-01 00:00:00.000"):
        cursor = encode_cursor(["-start_time", "-call_id"], [when, "zzzz"])
        got = run_view(db, op, ViewRequest(range="all", cursor=cursor, limit=20,
                                           columns=["call_id", "src_ip"]), now=END)
        want = _full_page(db, ViewRequest(range="all", cursor=cursor, limit=20,
                                          columns=["call_id", "src_ip"]), op)
        assert got.rows == want.rows
        ids = [r[0] for r in got.rows]
        if ids:
            tenants = {t for (t,) in db.rows(
                "SELECT DISTINCT tenant_id FROM cdr_records WHERE call_id IN {ids:Array(String)}",
                {"ids": ids})}
            assert tenants == {"globex"}


# -- ingest leaves the text indexes to merges (engine/ingest.py) ---------------------------

def _index_bytes(db) -> list[int]:
    return [int(b) for (b,) in db.rows(
        "SELECT secondary_indices_compressed_bytes FROM system.parts "
        "WHERE database = currentDatabase() AND table = 'cdr_records' AND active ORDER BY name")]


def test_search_is_exact_on_parts_ingested_without_their_index(store, tmp_path):
    """Ingest writes parts without the number indexes; merges build them. A search over
    a mix of merged (indexed) and fresh (unindexed) parts returns what a scan returns."""
    db = store
    spec = generate.GenSpec(rows=4_000, months=2, seed=5, tenants=("acme",), end=END)
    generate.load(db, spec, tmp_path)
    assert _index_bytes(db) and all(b == 0 for b in _index_bytes(db))   # none built on insert
    db.command("OPTIMIZE TABLE cdr_records FINAL")
    assert all(b > 0 for b in _index_bytes(db))                          # the merge built them
    db.command("SYSTEM STOP MERGES cdr_records")
    try:
        generate.load(db, generate.GenSpec(rows=2_000, months=2, seed=6, tenants=("acme",),
                                           end=END), tmp_path)
        sizes = _index_bytes(db)
        assert any(b == 0 for b in sizes) and any(b > 0 for b in sizes)  # a mixed store
        op = Principal.operator("acme")
        nonempty = 0
        for number in _numbers(db):
            req = ViewRequest(columns=COLUMNS, range="all", number=number, limit=1000)
            with_idx, without = _both(db, compile_view(req, op, END), "tenant")
            assert with_idx == without, number
            nonempty += bool(with_idx)
        assert nonempty > 10
    finally:
        db.command("SYSTEM START MERGES cdr_records")


# -- pages across customers read the time-ordered copy (016_by_time.sql) --------------------

OP, CUST = Principal.operator("acme"), Principal.customer("acme", 1)
NARROW_TENANT = ({"field": "tenant_id", "operator": "equal", "value": "acme"},)
NARROW_CUSTOMER = ({"field": "customer_id", "operator": "equal", "value": 1},)


def _rule(field, op="equal", value="1"):
    return {"condition": "AND", "rules": [{"field": field, "operator": op, "value": value}]}


@pytest.mark.parametrize("principal, request_kw, expected", [
    (OP, {}, True),                                              # a tenant's newest calls
    (OP, {"sort": "start_time"}, True),                          # oldest first: in order too
    (Principal.carrier("acme", 3), {}, True),
    (Principal.admin(), {"account_rules": NARROW_TENANT}, True),
    (OP, {"rules": _rule("billsec", "greater", 30)}, True),
    (OP, {"number": "!4420123"}, True),                          # an exclusion narrows little
    (OP, {"connected_only": True}, True),
    (CUST, {}, False),                                          # in order in cdr_records
    (OP, {"account_rules": NARROW_CUSTOMER}, False),
    (Principal.admin(), {}, False),                              # several tenants
    (OP, {"for_download": True, "limit": None}, False),
    (OP, {"sort": "-billsec"}, False),
    (OP, {"number": "4420123"}, False),                         # the text indexes find it
    (OP, {"rules": _rule("dst_number")}, False),
    (OP, {"rules": {"condition": "OR", "rules": [
        {"field": "billsec", "operator": "greater", "value": 1}, _rule("customer_id")]}}, False),
    (OP, {"cursor": "not-a-cursor!"}, True),                    # compile_view reports it
    (OP, {"sort": "no_such_field"}, False),
])
def test_which_pages_read_the_time_ordered_copy(principal, request_kw, expected):
    from cdrhouse.sql.viewer import BY_TIME, reads_by_time
    request = ViewRequest(range="last_30_days", **request_kw)
    assert reads_by_time(request, principal) is expected
    if expected and "cursor" not in request_kw:
        compiled = compile_view(request, principal, END, by_time=True)
        assert f"FROM {BY_TIME} FINAL" in compiled.sql
        filtered = bool({"rules", "number", "connected_only"} & set(request_kw))
        # unfiltered, the read stops near the page: one thread, one granule a block;
        # a filtered page's whole range may be walked: bigger blocks, default threads
        assert compiled.settings["max_block_size"] == (8192 if filtered else 1024)
        assert ("max_threads" in compiled.settings) is not filtered
        sliced = compile_view(request, principal, END, by_time=True,
                              newer_than=END - dt.timedelta(days=1))
        assert f"FROM {BY_TIME} FINAL" in sliced.sql and "slice_from" in sliced.sql
        assert sliced.settings["max_block_size"] == 1024 and sliced.settings["max_threads"] == 1
    if not expected and "sort" not in request_kw:
        assert "FROM cdr_records FINAL" in compile_view(request, principal, END, by_time=True).sql


def test_page_slices_for_the_time_ordered_copy():
    """Read in time order, an unfiltered page needs no slice; a filtered one tries its
    last day first (the same slices as cdr_records' pages, the first of them only)."""
    from cdrhouse.sql.viewer import page_slices, time_slices
    plain = ViewRequest(range="last_30_days")
    rules = ViewRequest(range="last_30_days", rules=_rule("billsec", "greater", 30))
    connected = ViewRequest(range="last_30_days", connected_only=True)
    assert len(time_slices(plain, OP, END)) == 2
    assert page_slices(plain, OP, END, by_time=False) == time_slices(plain, OP, END)
    assert page_slices(plain, OP, END, by_time=True) == []
    for filtered in (rules, connected):
        assert page_slices(filtered, OP, END, by_time=True) == time_slices(filtered, OP, END)[:1]
        assert len(page_slices(filtered, OP, END, by_time=True)) == 1
    assert page_slices(ViewRequest(range="today", connected_only=True), OP, END, True) == []


BY_TIME_CASES = [
    dict(range="all"),
    dict(range="all", sort="start_time"),
    dict(range="last_30_days", limit=7, columns=["start_time", "billsec", "call_id"]),
    dict(range="all", connected_only=True, number="!1*", tz="Europe/Berlin"),
    dict(range="custom", date_from="2026-09-03", date_to="2026-10-17T12:00:00", limit=3),
    dict(range="all", rules={"condition": "AND", "rules": [
        {"field": "disposition", "operator": "equal", "value": "ANSWERED"},
        {"condition": "OR", "rules": [
            {"field": "billsec", "operator": "greater", "value": 60},
            {"field": "codec", "operator": "equal", "value": "G729"}]}]}),
    dict(range="all", rules={"condition": "AND", "rules": [
        {"field": "billsec", "operator": "greater", "value": 100000}]}),   # nothing matches
]


@pytest.mark.parametrize("case", range(len(BY_TIME_CASES)))
@pytest.mark.parametrize("who", ["tenant", "carrier", "admin"])
def test_pages_from_the_time_ordered_copy_equal_cdr_records(loaded, who, case):
    """Pages walked by cursor, read from the copy as `run_view` does, and from
    cdr_records as compiled before the copy existed: the same rows and cursors, also
    where a call's newer version (another number) sits in another part."""
    from cdrhouse.sql.viewer import reads_by_time
    db = loaded
    principal = _principal(db, who)
    kw = {"limit": 50, **BY_TIME_CASES[case]}
    if who == "admin":
        kw["account_rules"] = NARROW_TENANT
    walked, rows = _walk_equal_to_the_whole_range(db, principal, ViewRequest(**kw), pages=4)
    assert all(reads_by_time(req, principal) for req in walked)
    if case == 0:
        assert len(walked) == 4             # walked past the first page
        assert rows                         # and rows to compare


def test_the_copy_has_the_hot_tables_columns_and_rows(loaded):
    """Its view copies `SELECT *`: a migration changing cdr_records' columns must change
    the copy's alike (names, types and order), or inserts would fail or shift."""
    from bytime import assert_copy_exact
    cols = ("SELECT name, type FROM system.columns WHERE database = currentDatabase() "
            "AND table = {t:String} ORDER BY position")
    hot = loaded.rows(cols, {"t": "cdr_records"})
    assert hot and loaded.rows(cols, {"t": "cdr_records_by_time"}) == hot
    assert_copy_exact(loaded)
    sorting = loaded.scalar("SELECT sorting_key FROM system.tables WHERE database = "
                            "currentDatabase() AND name = 'cdr_records_by_time'")
    assert sorting == "tenant_id, start_time, call_id, customer_id"
