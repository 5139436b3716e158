"""Two real `cdrhouse serve` processes on one store (the engine's HTTP interface):
what one instance does, the other sees — sessions, failed-login counts, revocations —
scheduled work runs once per fire time, and a recalc job whose instance is killed
half-way is finished by the other, with the same outcome as a clean run."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from ports import free_port
from test_recalc import MARCH, _load, balances, snapshot

from cdrhouse.engine import keys, leases, recalc, summary, users
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database, StoreConfig
from cdrhouse.engine.migrate import migrate
from cdrhouse.sql.principal import Principal

HERE = Path(__file__).parent
PASSWORD = "correct horse battery"
#: the tiering schedule: every 6 s, so that fire times come by during the module
TIER_EVERY = 6


class Instance:
    def __init__(self, name: str, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.name, self.proc, self.port, self.log = name, proc, port, log
        self.base = f"http://127.0.0.1:{port}"

    def client(self, client_ip: str | None = None, **kw) -> httpx.Client:
        headers = {"X-Forwarded-For": client_ip} if client_ip else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30, **kw)


def _start(name: str, dsn: str, database: str, data: Path, tmp: Path, *,
           marker: Path | None = None, workers: int = 1, sweep: float = 1) -> Instance:
    port = free_port()
    log = tmp / f"{name}.log"
    env = {**os.environ, "CDRHOUSE_DATA_DIR": str(data), "CDRHOUSE_CLICKHOUSE": dsn,
           "CDRHOUSE_DATABASE": database}
    args = ["serve", "--port", str(port), "--pool", "2", "--instance-name", name,
            "--tier-schedule", f"*/{TIER_EVERY} * * * * *", "--keep-months", "60",
            "--backup-schedule", "off", "--sweep-seconds", str(sweep),
            "--auth-cache-seconds", "1",
            "--forwarded-allow-ips", "127.0.0.1", "--workers", str(workers)]
    cmd = ([sys.executable, str(HERE / "pausing_serve.py"), str(marker), *args] if marker
           else [sys.executable, "-m", "cdrhouse.api.cli", *args])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"))
    return Instance(name, proc, port, log)


def _wait_ready(inst: Instance) -> None:
    for _ in range(1200):
        with contextlib.suppress(httpx.TransportError):  # not listening yet: poll again
            if httpx.get(f"{inst.base}/readyz", timeout=1).status_code == 200:
                return
        if inst.proc.poll() is not None:
            raise AssertionError(inst.log.read_text())
        time.sleep(0.1)
    raise AssertionError(f"{inst.name} did not start: {inst.log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def pair(http_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scaleout")
    data = tmp / "data"
    data.mkdir()
    name = f"t_{uuid.uuid4().hex[:12]}"
    db = Database(StoreConfig(data_dir=data, clickhouse=http_server.dsn, database=name))
    migrate(db)
    _load(db, tmp)
    users.add_user(db, "ops", PASSWORD, "tenant:acme")
    secrets = {"operator": keys.create_key(db, "tenant:acme", "ops")[1],
               "admin": keys.create_key(db, "admin", "root")[1]}
    marker = tmp / "paused.job"
    # a, which the recalc test kills, does not sweep: the survivor's sweeps are the point,
    # a's would add a third to the store's background load (a sweep a second per process),
    # and a SIGKILL landing mid-sweep would leave b waiting out the sweeper lease (30 s)
    a = _start("api-a", http_server.dsn, name, data, tmp, marker=marker, sweep=0)
    # b is two worker processes (`--workers 2`, uvicorn's): three instances in all
    b = _start("api-b", http_server.dsn, name, data, tmp, workers=2)
    try:
        _wait_ready(a)
        _wait_ready(b)
        yield {"a": a, "b": b, "db": db, "secrets": secrets, "marker": marker, "tmp": tmp,
               "dsn": http_server.dsn}
    finally:
        for inst in (a, b):
            if inst.proc.poll() is None:
                inst.proc.terminate()
                try:
                    inst.proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    inst.proc.kill()
                    inst.proc.wait()
        db.command(f"DROP DATABASE IF EXISTS `{name}` SYNC")
        db.close()


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _sign_in(inst: Instance, name: str, password: str, client_ip: str) -> httpx.Response:
    with inst.client(client_ip) as c:
        page = c.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        return c.post("/login", data={"name": name, "password": password, "api_key": "",
                                      "csrf_token": token, "next": "/"},
                      headers={"Origin": inst.base}, follow_redirects=False)


def test_a_session_from_one_instance_works_on_the_other(pair) -> None:
    a, b = pair["a"], pair["b"]
    r = _sign_in(a, "ops", PASSWORD, "198.51.100.1")
    assert r.status_code == 303
    cookie = r.cookies["cdrhouse_session"]
    with b.client(cookies={"cdrhouse_session": cookie}) as c:
        page = c.get("/?range=all", follow_redirects=False)
        assert page.status_code == 200 and "ops" in page.text
        # and the /v1 API on the other instance accepts it too
        assert c.get("/v1/cdrs?range=all").status_code == 200
    with b.client() as c:   # without it: sent to sign in
        assert c.get("/?range=all", follow_redirects=False).status_code == 303


def test_failed_sign_ins_are_counted_across_instances(pair) -> None:
    a, b = pair["a"], pair["b"]
    users.add_user(pair["db"], "victim", PASSWORD, "tenant:acme")
    # NAME_LIMIT (5) wrong passwords, spread over both instances and client addresses
    codes = [_sign_in(inst, "victim", "wrong password", f"198.51.100.{10 + i}").status_code
             for i, inst in enumerate([a, b, a, b, a])]
    assert codes == [401] * 5
    # now even the right password is refused, on either instance
    assert _sign_in(b, "victim", PASSWORD, "198.51.100.30").status_code == 429
    assert _sign_in(a, "victim", PASSWORD, "198.51.100.31").status_code == 429


def test_failed_api_keys_are_counted_across_instances(pair) -> None:
    a, b = pair["a"], pair["b"]
    attacker, good = "203.0.113.50", pair["secrets"]["operator"]
    codes = []
    for i in range(10):                 # the limit: 10 per minute per client
        with (a if i % 2 else b).client(attacker) as c:
            codes.append(c.get("/v1/fields", headers=_bearer(f"nope-{i}")).status_code)
    assert codes == [401] * 10
    for inst in (a, b):                 # past the limit on both, even with a good key
        with inst.client(attacker) as c:
            r = c.get("/v1/fields", headers=_bearer(good))
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    with b.client("203.0.113.51") as c:  # another client is not affected
        assert c.get("/v1/fields", headers=_bearer(good)).status_code == 200


def test_a_revoked_key_and_a_disabled_user_are_refused_by_both(pair) -> None:
    a, b, db = pair["a"], pair["b"], pair["db"]
    key, secret = keys.create_key(db, "tenant:acme", "short-lived")
    for inst in (a, b):
        with inst.client("198.51.100.60") as c:
            assert c.get("/v1/fields", headers=_bearer(secret)).status_code == 200
    keys.revoke_key(db, key.key_id)          # what `cdrhouse keys revoke` does
    time.sleep(1.5)                          # the documented time: --auth-cache-seconds 1
    for inst in (a, b):
        with inst.client("198.51.100.61") as c:
            assert c.get("/v1/fields", headers=_bearer(secret)).status_code == 401
    # a user disabled through one instance's API is signed out on the other at once
    users.add_user(db, "temp", PASSWORD, "tenant:acme")
    cookie = _sign_in(b, "temp", PASSWORD, "198.51.100.62").cookies["cdrhouse_session"]
    with a.client() as c:
        r = c.patch("/v1/users/temp", json={"disabled": True},
                    headers=_bearer(pair["secrets"]["admin"]))
        assert r.status_code == 200, r.text
    with b.client(cookies={"cdrhouse_session": cookie}) as c:
        assert c.get("/?range=all", follow_redirects=False).status_code == 303


def test_each_tiering_fire_time_runs_on_one_instance(pair) -> None:
    a, b, db = pair["a"], pair["b"], pair["db"]
    deadline = time.monotonic() + 4 * TIER_EVERY
    while time.monotonic() < deadline:         # wait for two scheduled runs to finish
        runs = [j for j in ud.list_jobs(db, kind="tier-run", limit=1000)
                if (j.params or {}).get("trigger") == "schedule"]
        if sum(j.state == "succeeded" for j in runs) >= 2:
            break
        time.sleep(0.5)
    runs = [j for j in ud.list_jobs(db, kind="tier-run", limit=1000)
            if (j.params or {}).get("trigger") == "schedule"]
    assert sum(j.state == "succeeded" for j in runs) >= 2, [(j.state, j.error) for j in runs]
    # one run per fire time (each run's job names the fire time it ran for)
    fire_times = [j.params["due"] for j in runs]
    assert len(fire_times) == len(set(fire_times)), sorted(fire_times)
    assert all(dt.datetime.fromisoformat(f).second % TIER_EVERY == 0 for f in fire_times)
    # both instances fired each time: the one that did not run said why
    logs = a.log.read_text() + b.log.read_text()
    assert "tiering: another instance holds the lease" in logs or \
        "was done by another instance" in logs
    st = leases.state(db, leases.TIERING)
    assert st.done_for > dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10 * TIER_EVERY)


def test_readyz_and_metrics_speak_for_their_instance(pair) -> None:
    a, b, db = pair["a"], pair["b"], pair["db"]
    # --workers 2: two processes, each an instance of its own (name:pid), both beating
    for _ in range(600):     # a worker may still be starting on a loaded machine
        live = db.rows("SELECT instance_id, pid FROM service_instances FINAL WHERE "
                       "beat_at > now64(3) - INTERVAL 15 SECOND ORDER BY instance_id")
        if len(live) >= 3:
            break
        time.sleep(0.2)
    assert [i for i, _ in live][0] == "api-a" and len(live) == 3, b.log.read_text()[-3000:]
    workers = [(i, pid) for i, pid in live if i.startswith("api-b:")]
    assert len(workers) == 2 and {i for i, _ in workers} == {f"api-b:{p}" for _, p in workers}
    assert b.proc.pid not in {p for _, p in workers}          # the workers, not the parent
    for inst in (a, b):
        for _ in range(100):    # refreshed at each beat: 3 once all have beaten
            ready = httpx.get(f"{inst.base}/readyz").json()
            if ready["instances"] >= 2 and ready["leases"]:
                break
            time.sleep(0.2)
        me = ready["instance"]
        assert (me == "api-a") if inst is a else (me in {i for i, _ in workers})
        assert ready["instances"] in (2, 3)
        kinds = {lease["kind"]: lease for lease in ready["leases"]}
        assert "tiering" in kinds and kinds["tiering"]["last_done_for"]
        with httpx.Client(base_url=inst.base) as c:    # one connection: one worker
            ready = c.get("/readyz").json()
            metrics = c.get("/metrics").text
        assert f'cdrhouse_http_requests_total{{instance="{ready["instance"]}",' in metrics
        seen = set(re.findall(r'instance="([^"]+)"', metrics))
        if inst is a:
            assert seen == {"api-a"}
            continue
        # --workers: whichever worker answers, the scrape has every worker's own numbers
        # (api/workermetrics.py), each under its instance, and the store's numbers once
        assert seen == {i for i, _ in workers}, metrics[-2000:]
        for worker, _ in workers:
            assert f'process_start_time_seconds{{instance="{worker}"}}' in metrics
        store_wide = re.findall(r'^cdrhouse_backup_\w+\{instance="([^"]+)"', metrics, re.M)
        assert set(store_wide) <= {ready["instance"]}
        families = re.findall(r"^# TYPE (\S+)", metrics, re.M)
        assert len(families) == len(set(families))           # one family, many instances


def _clean_run(dsn: str, tmp: Path) -> Database:
    """The same data and the same recalc, in one process with no interruption."""
    clean_dir = tmp / "clean"
    clean_dir.mkdir()
    db = Database(StoreConfig(data_dir=clean_dir, clickhouse=dsn,
                              database=f"t_{uuid.uuid4().hex[:12]}"))
    migrate(db)
    _load(db, clean_dir)
    req = recalc.RecalcRequest("acme", "rerate", date_from=MARCH[0], date_to=MARCH[1])
    job = recalc.run(db, req, Principal.operator("acme"))
    assert job.state == "succeeded"
    return db


def test_a_recalc_whose_instance_is_killed_is_finished_by_the_other(pair) -> None:
    a, b, db, marker = pair["a"], pair["b"], pair["db"], pair["marker"]
    with a.client() as c:
        r = c.post("/v1/recalc", json={"op": "rerate", "from": MARCH[0].isoformat(),
                                       "to": MARCH[1].isoformat()},
                   headers=_bearer(pair["secrets"]["operator"]))
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
    for _ in range(600):                     # a is stuck after writing the new versions
        if marker.exists():
            break
        time.sleep(0.1)
    assert marker.read_text() == job_id
    assert ud.get_job(db, job_id).result["phase"] == "summaries"
    a.proc.send_signal(signal.SIGKILL)       # no cleanup, no mark_stopped
    a.proc.wait()
    for _ in range(600):                     # b's sweeper notices and resumes it
        job = ud.get_job(db, job_id)
        if job.state in ud.FINISHED:
            break
        time.sleep(0.1)
    assert job.state == "succeeded", (job.state, job.error)
    assert job.result["instance"].startswith("api-b:")
    assert "resuming recalc job" in b.log.read_text()
    clean = _clean_run(pair["dsn"], pair["tmp"])
    try:
        assert job.result["calls_changed"] == 2
        assert snapshot(db) == snapshot(clean)
        assert balances(db) == balances(clean)
        first, last = dt.date(2026, 1, 1), dt.date(2026, 12, 31)
        assert summary.totals(db, "acme", first, last) == summary.totals(clean, "acme",
                                                                        first, last)
        # nothing doubled: one version row per call in the recalc's own record
        assert db.scalar("SELECT count() FROM recalc_rows WHERE job_id = {j:String} AND "
                         "side = 'new'", {"j": job_id}) == clean.scalar(
            "SELECT count() FROM recalc_rows WHERE side = 'new'")
    finally:
        clean.command(f"DROP DATABASE IF EXISTS `{clean.name}` SYNC")
        clean.close()


def test_workers_are_refused_on_the_embedded_engine(tmp_path: Path) -> None:
    env = {**os.environ, "CDRHOUSE_DATA_DIR": str(tmp_path)}
    env.pop("CDRHOUSE_CLICKHOUSE", None)
    r = subprocess.run([sys.executable, "-m", "cdrhouse.api.cli", "serve", "--workers", "2"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "--workers 2 needs a ClickHouse server" in r.stderr
    assert "opened by one process at a time" in r.stderr
    assert not (tmp_path / "clickhouse").exists()      # nothing was opened or created


@pytest.mark.parametrize("pool, per_tenant, per_principal, live, expected", [
    # (tenant cap, key cap) on each instance
    (4, None, 4, 1, (3, 4)),
    (4, None, 4, 2, (3, 2)),       # the default tenant cap guards this pool: not divided
    (4, None, 4, 3, (3, 2)),       # ceil(4 / 3): at most 6 of a key's queries over all
    (4, None, 4, 8, (3, 1)),       # never below one
    (4, 4, 4, 2, (2, 2)),          # a configured tenant cap is for the whole service
    (8, 6, 4, 4, (2, 1)),
])
def test_each_instance_takes_its_share_of_the_caps(pool, per_tenant, per_principal, live,
                                                   expected) -> None:
    from cdrhouse.api.admission import FairQueue
    from cdrhouse.api.service import Service, ServiceConfig, tenant_cap

    config = ServiceConfig(store=StoreConfig(data_dir=Path("/nonexistent")), pool_size=pool,
                           per_tenant=per_tenant, per_principal=per_principal)
    queue = FairQueue(pool, tenant_cap(config), per_principal)
    svc = Service(config, pool=None, limiter=None, warm=None, admission=queue)  # no store needed
    svc.share_caps(live)
    assert (queue.per_tenant, queue.per_principal) == expected and svc.instances == live
    svc.share_caps(1)                 # the others went away: the whole caps again
    assert (queue.per_tenant, queue.per_principal) == (tenant_cap(config), per_principal)
