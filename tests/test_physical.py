"""The physical design (sql/schema/005_physical.sql) changes speed, never results.

The number columns' text indexes must give exactly what a full scan gives,
also under FINAL when a newer version of a call changed its number (the index
of the old part still lists the old number), and the viewer's number search
must actually use them (checked with EXPLAIN, not with timings).
"""

from __future__ import annotations

import datetime as dt

import pytest

from engine import generate
from engine.ingest import IngestOptions, Ingestor
from sql.limits import limits_for
from sql.principal import Principal
from sql.viewer import ViewRequest, compile_view

END = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
COLUMNS = ["start_time", "customer_id", "src_number", "dst_number", "billsec", "call_id"]


@pytest.fixture
def loaded(embedded_db, tmp_path):
    db = embedded_db
    spec = generate.GenSpec(rows=30_000, months=2, seed=11, tenants=("acme", "globex"), end=END)
    generate.ensure_accounts(db, spec)
    for tenant in spec.tenants:
        path = tmp_path / f"{tenant}.parquet"
        generate.write_parquet(db, spec, tenant, path)
        ingestor = Ingestor(db, IngestOptions(tenant=tenant), tmp_path / "rejects.csv")
        try:
            ingestor.ingest(path)
        finally:
            ingestor.close()
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
