"""The peer workload W1–W11 on one node and on a 2-shard cluster, and a paper model of more.

    python -m benchmarks.cluster_bench                  # 1M CDRs, 7 rounds
    python -m benchmarks.cluster_bench --rows 300000 --rounds 5

Both sides are the embedded ClickHouse 26.9 served over HTTP on loopback, on the same
machine: one node (tests/chserver.py) and two shard nodes (tests/chcluster.py) whose
Distributed tables cdrhouse uses (CDRHOUSE_CLUSTER). The same generated data goes
through the real ingest path into both (W12 timed), is merged, and every query runs
through cdrhouse's real code paths (benchmarks/peers.py's workload), interleaved, the
two results compared. The two shards share this machine's cores, so this measures the
cost of fanning out, not a speed-up.

The model (`model`) predicts W1–W4 and ingest on 4 and 8 shards on *separate*
machines from what was measured: t(N) = fixed + work / N + fan_out * N, where `work`
is the one-node time above its floor (divided evenly: the sharding key spreads a
tenant's calls uniformly), `fixed` the one-node floor, and `fan_out` the cluster's
extra cost per shard of a trivial query that reaches every shard. Results go to
benchmarks/results/cluster.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.peers import (END, TENANT, CdrHouse, Workload, _ts, floor_ms, machine,
                              measure)
from cdrhouse.engine import cluster, generate
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.ingest import IngestOptions, ingest_paths
from cdrhouse.engine.migrate import migrate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from chcluster import LocalCluster  # noqa: E402  (the test suite's server fixtures)
from chserver import ClickHouseHTTPServer  # noqa: E402


class ClusterEngine(CdrHouse):
    name = "cluster"


def load(db: Database, spec: generate.GenSpec, paths: dict[str, Path], work: Path) -> dict:
    migrate(db)
    generate.ensure_accounts(db, spec)
    t0 = time.perf_counter()
    for tenant in spec.tenants:
        ingest_paths(db, [paths[tenant]], IngestOptions(tenant=tenant), work / "rejects.csv")
    ingest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cluster.each_node(db, f"OPTIMIZE TABLE {cluster.local(db, 'cdr_records')}{{on_cluster}} FINAL")
    optimize_s = time.perf_counter() - t0
    stored = int(db.scalar("SELECT count() FROM cdr_records"))
    return {"ingest_s": round(ingest_s, 2), "optimize_s": round(optimize_s, 2),
            "rows": stored, "rows_per_s": round(stored / ingest_s)}


def fan_out_ms(db: Database, rounds: int) -> float:
    """A trivial query that reaches every shard (count of an empty range)."""
    out = []
    for i in range(rounds * 3):
        t0 = time.perf_counter()
        db.rows("SELECT count() FROM cdr_records WHERE tenant_id = {t:String} AND "
                "start_time < toDateTime64('2000-01-01', 3, 'UTC') + {i:UInt32}",
                {"t": TENANT, "i": i})
        out.append(time.perf_counter() - t0)
    return round(statistics.median(out) * 1e3, 2)


def model(result: dict, shards: tuple[int, ...] = (4, 8)) -> dict:
    """Paper model (module docstring) for W1–W4 and ingest on separate machines."""
    fixed = result["floor"]["single"]["guarded_select_constant_ms"]
    per_shard = max(0.0, (result["fan_out_ms"]["cluster"] - result["fan_out_ms"]["single"]) / 2)
    out: dict[str, Any] = {"fixed_ms": fixed, "fan_out_ms_per_shard": round(per_shard, 2)}
    for qid in ("W1", "W2", "W3", "W4"):
        t1 = result["queries"][qid]["engines"]["cdrhouse"]["median_ms"]
        work = max(0.0, t1 - fixed)
        out[qid] = {"measured_1": t1,
                    "measured_2_same_machine": result["queries"][qid]["engines"]["cluster"]["median_ms"],
                    **{f"model_{n}": round(fixed + work / n + per_shard * n, 1) for n in shards}}
    rate = result["load"]["single"]["rows_per_s"]
    # ingest: the coordinator converts and deduplicates (one node's work, measured as the
    # single node's rate), the shards write in parallel; the write share of a single node's
    # ingest is not separated here, so the model bounds it: at most N x, at least 1 x
    out["ingest_rows_per_s"] = {"measured_1": rate,
                                "measured_2_same_machine": result["load"]["cluster"]["rows_per_s"],
                                **{f"model_{n}_upper": rate * n for n in shards},
                                "note": "the coordinator's conversion and dedup lookup do not "
                                        "scale with shards; run several ingest processes "
                                        "against different nodes to scale it"}
    return out


def run(rows: int, months: int, rounds: int, seed: int = 7,
        log: Callable[[str], None] = print) -> dict:
    spec = generate.GenSpec(rows=rows, months=months, seed=seed, end=END)
    result: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                              "rows": rows, "months": months, "rounds": rounds,
                              "machine": machine(), "load": {}, "floor": {}, "fan_out_ms": {}}
    # the 1/5/15-minute load: above the core count, something else shared the machine
    result["machine"]["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="cdrhouse-clbench-") as tmp:
        work = Path(tmp)
        single_srv = ClickHouseHTTPServer(work / "single").start()
        nodes = LocalCluster(shards=2, workdir=work / "cluster").start()
        dbs: dict[str, Database] = {}
        try:
            dbs["single"] = Database(StoreConfig(data_dir=work, clickhouse=single_srv.dsn,
                                                 database="bench"))
            dbs["cluster"] = Database(StoreConfig(data_dir=work, clickhouse=nodes.dsn,
                                                  database="bench", cluster=nodes.name))
            src = work / "source"
            src.mkdir()
            migrate(dbs["single"])
            generate.ensure_accounts(dbs["single"], spec)
            paths = {}
            for tenant in spec.tenants:
                paths[tenant] = src / f"{tenant}.parquet"
                generate.write_parquet(dbs["single"], spec, tenant, paths[tenant])
            for name, db in dbs.items():
                result["load"][name] = load(db, spec, paths, work)
                log(f"{name}: {result['load'][name]}")
            result["rows_per_shard"] = [int(r[0][0]) for r in (
                _node_rows(dbs["cluster"]))]
            db = dbs["single"]
            customers = [int(c) for (c,) in db.rows(
                "SELECT customer_id FROM cdr_records WHERE tenant_id = {t:String} "
                "GROUP BY customer_id ORDER BY count() DESC LIMIT 3", {"t": TENANT})]
            samples = db.rows(
                "SELECT src_number, dst_number FROM cdr_records FINAL WHERE tenant_id = {t:String} "
                "AND start_time >= {lo:DateTime64(3, 'UTC')} AND start_time < {hi:DateTime64(3, 'UTC')} "
                "ORDER BY cityHash64(call_id) LIMIT 64",
                {"t": TENANT, "lo": _ts(END - dt.timedelta(days=30)),
                 "hi": _ts(END - dt.timedelta(days=20))})
            start = db.scalar("SELECT min(start_time) FROM cdr_records")
            workload = Workload(customers, samples, start.replace(tzinfo=dt.UTC)
                                if start.tzinfo is None else start, END)
            for name, d in dbs.items():
                result["floor"][name] = floor_ms(d, rounds, customers[0])
                result["fan_out_ms"][name] = fan_out_ms(d, rounds)
            engines = [CdrHouse(dbs["single"], TENANT), ClusterEngine(dbs["cluster"], TENANT)]
            result["queries"] = measure(engines, workload.queries(), rounds, log)
            for entry in result["queries"].values():
                e = entry["engines"]
                entry["cluster_over_single"] = round(
                    e["cluster"]["median_ms"] / e["cdrhouse"]["median_ms"], 2)
            result["model"] = model(result)
        finally:
            for d in dbs.values():
                d.close()
            nodes.stop()
            single_srv.stop()
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _node_rows(db: Database) -> list[list[tuple]]:
    out = []
    for node in cluster.nodes(db):
        with cluster.open_node(db, node, create=False) as conn:
            out.append(conn.rows("SELECT count() FROM cdr_records_local"))
    return out


def table(result: dict) -> str:
    lines = ["| query | 1 node ms | 2 shards (same machine) ms | ratio | agree |",
             "|---|---:|---:|---:|---|"]
    for qid, e in result["queries"].items():
        lines.append(f"| {qid} {e['what']} | {e['engines']['cdrhouse']['median_ms']} | "
                     f"{e['engines']['cluster']['median_ms']} | {e['cluster_over_single']} | "
                     f"{e['agree_with_cdrhouse']['cluster']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--months", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cluster.json"))
    args = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    result = run(args.rows, args.months, args.rounds, log=log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(table(result))
    print(json.dumps(result["model"], indent=2))


if __name__ == "__main__":
    main()
