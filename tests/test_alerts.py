"""Anomaly alerts against a real engine, on both interfaces (embedded and HTTP).

One generated store per interface (module-scoped: small, fixed end time), with the
labelled anomalies of engine/anomalies.py injected at T0 = END - 3h. Evaluations
take `now` as a parameter and read only calls before it, so "clean" instants
(before T0) and "anomalous" ones (after T0) are replayed on the same store. Each
test starts with empty alert tables.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import _drop, fresh_db
from fastapi.testclient import TestClient

from cdrhouse.api.app import create_app
from cdrhouse.api.service import ServiceConfig
from cdrhouse.engine import alerts as al
from cdrhouse.engine import anomalies, generate, keys
from cdrhouse.engine import accounts as acc
from cdrhouse.sql import alerts as rules
from cdrhouse.sql.principal import Principal

END = dt.datetime(2026, 6, 30, 18, 0, tzinfo=dt.timezone.utc)
T0 = END - dt.timedelta(hours=3)
SPEC = generate.GenSpec(rows=60_000, months=4, seed=11, end=END)
PERIOD = dt.timedelta(minutes=5)
#: instants with clean data only (the anomalies start at T0)
CLEAN = [T0 - dt.timedelta(minutes=5), T0 - dt.timedelta(days=2, hours=3),
         T0 - dt.timedelta(days=9, hours=11)]


@pytest.fixture(scope="module", params=["embedded", "http"])
def loaded(request, embedded_dsn, engine_dir, tmp_path_factory):
    db = fresh_db(request, request.param, embedded_dsn, engine_dir)
    work = tmp_path_factory.mktemp("alerts")
    generate.load(db, SPEC, work)
    injected = anomalies.inject(db, SPEC, anomalies.catalogue(T0), work)
    yield db, {a.name: a for a in injected}
    _drop(db)


@pytest.fixture
def env(loaded):
    db, injected = loaded
    _reset(db)
    return db, injected


def opened_by(db, at: dt.datetime, only: tuple[str, ...] | None = None) -> list[al.Alert]:
    return [a for tenant in SPEC.tenants
            for a in al.evaluate_tenant(db, tenant, at, only=only).opened]


# -- pure: settings and SQL builders ------------------------------------------------

@pytest.mark.parametrize("key, values, message", [
    ("nope", {}, "detector: 'nope' is not one of traffic_spike"),
    ("traffic_spike", {"kk": 1}, "traffic_spike.kk: unknown setting"),
    ("traffic_spike", {"k": "abc"}, "traffic_spike.k: 'abc' is not a number"),
    ("traffic_spike", {"k": -1}, "traffic_spike.k: -1 is outside 0..100"),
    ("traffic_spike", {"weeks": 2.5}, "traffic_spike.weeks: 2.5 must be a whole number"),
    ("traffic_spike", {"min_calls": float("nan")}, "traffic_spike.min_calls: nan is outside"),
    ("spend_jump", {"enabled": 2}, "spend_jump.enabled: 2 is outside 0..1"),
    ("spend_jump", {"window_minutes": "1; DROP TABLE alerts"}, "is not a number"),
    ("balance_runway", {"runway_hours": True}, "is not a number"),
])
def test_bad_settings_are_refused_by_name(key: str, values: dict, message: str) -> None:
    with pytest.raises(rules.AlertSettingsError, match=None) as exc:
        rules.validate_settings(key, values)
    assert message in str(exc.value)


def test_builders_bind_the_tenant_and_never_inline_it() -> None:
    hostile = "acme' OR 1=1 --"
    for d in rules.DETECTORS:
        sql, params = rules.build(d.key, hostile, d.defaults())
        assert hostile not in sql and params == {"tenant": hostile}
        assert "{tenant:String}" in sql and "{now:DateTime64(3, 'UTC')}" in sql
    # a detector row: key, description, builder, defaults with bounds and a meaning
    assert {d.key for d in rules.DETECTORS} == {
        "traffic_spike", "asr_acd_carrier", "asr_acd_destination", "short_call_surge",
        "new_expensive_destination", "spend_jump", "balance_runway"}
    for d in rules.DETECTORS:
        assert d.description and d.settings["enabled"].default == 1
        assert all(s.low <= s.default <= s.high and s.doc for s in d.settings.values())


def test_settings_layers_defaults_config_then_tenant() -> None:
    config = al.AlertConfig.parse({"*": {"traffic_spike": {"k": 7}},
                                   "acme": {"traffic_spike": {"min_calls": 50}}})
    eff = rules.effective("traffic_spike", *config.for_tenant("acme", "traffic_spike"),
                          {"min_calls": 60})
    assert (eff["k"], eff["min_calls"], eff["ratio"]) == (7.0, 60, 3.0)
    assert rules.effective("traffic_spike", *config.for_tenant("globex", "traffic_spike"))[
        "min_calls"] == 30
    for bad, message in [([], "expected an object"), ({"Bad Tenant!": {}}, "invalid tenant id"),
                         ({"*": {"traffic_spike": {"k": 1000}}}, "traffic_spike.k")]:
        with pytest.raises(al.AlertError) as exc:
            al.AlertConfig.parse(bad)
        assert message in str(exc.value)


@pytest.mark.parametrize("text, seconds", [("300", 300), ("5m", 300), ("1h", 3600),
                                           ("off", None), ("OFF", None)])
def test_parse_every(text: str, seconds: int | None) -> None:
    assert al.parse_every(text) == seconds


@pytest.mark.parametrize("text", ["5x", "1s", "2d", "abc", "100000"])
def test_parse_every_refuses(text: str) -> None:
    with pytest.raises(al.AlertError, match="alert interval"):
        al.parse_every(text)


# -- detectors on the engine ---------------------------------------------------------

NAMES = [a.name for a in anomalies.catalogue(T0)]


@pytest.mark.parametrize("name", NAMES)
def test_each_detector_raises_on_its_anomaly_within_two_periods(env, name: str) -> None:
    db, injected = env
    anomaly = injected[name]
    assert not [a for a in opened_by(db, T0 - PERIOD, anomaly.targets) if anomaly.about(a)]
    found = opened_by(db, T0 + 2 * PERIOD, anomaly.targets)
    mine = [a for a in found if anomaly.found_by(a)]
    assert len(mine) == 1, [a.summary for a in found]
    alert = mine[0]
    assert alert.state == "open" and alert.opened_at == T0 + 2 * PERIOD
    # anything else it found is explained by an injected anomaly (e.g. the spend of a spike)
    assert all(any(x.matches(a) for x in injected.values()) for a in found), \
        [a.summary for a in found]
    # the evidence is the numbers behind it, and they say why it fired
    ev = alert.evidence
    checks = {
        "traffic_spike": lambda: ev["calls"] > ev["calls_limit"] and ev["prefix"] == "5355",
        "asr_acd_carrier": lambda: ev["asr"] < ev["asr_baseline"] / 2 and ev["carrier"] == "K002",
        "short_call_surge": lambda: ev["short_share"] > 0.5 > ev["short_share_baseline"],
        "spend_jump": lambda: ev["spend"] > ev["spend_limit"] and ev["customer"] == "C002",
        "new_expensive_destination": lambda: ev["prefix"] == "88216"
        and ev["max_rate_per_min"] == 2.5,
        "balance_runway": lambda: 0 < ev["hours_left"] < 24,
    }
    assert checks[alert.detector](), ev


def test_clean_data_raises_nothing(env) -> None:
    db, _ = env
    for at in CLEAN:
        assert opened_by(db, at) == [], at


def test_an_alert_is_one_alert_while_it_holds_and_resolves_when_it_clears(env) -> None:
    db, injected = env
    spike = injected["premium_spike"]
    only = ("traffic_spike",)
    first = al.evaluate_tenant(db, spike.tenant, T0 + 2 * PERIOD, only=only)
    second = al.evaluate_tenant(db, spike.tenant, T0 + 4 * PERIOD, only=only)
    assert [a.subject for a in first.opened] == ["customer:3/prefix:5355"]
    assert second.opened == [] and [a.alert_id for a in second.updated] == [first.opened[0].alert_id]
    held = al.get_alert(db, Principal.admin(), first.opened[0].alert_id)
    assert held.state == "open" and held.evaluations == 2
    assert held.evidence["calls"] > first.opened[0].evidence["calls"]  # fresh evidence
    assert held.last_seen_at == T0 + 4 * PERIOD and held.opened_at == T0 + 2 * PERIOD
    # the anomaly lasted an hour; an hour after its end the window no longer holds it
    done = al.evaluate_tenant(db, spike.tenant, T0 + dt.timedelta(hours=2, minutes=5), only=only)
    assert [a.alert_id for a in done.resolved] == [held.alert_id]
    assert done.opened == []
    after = al.evaluate_tenant(db, spike.tenant, T0 + dt.timedelta(hours=2, minutes=10), only=only)
    assert after.opened == after.resolved == []
    stored = al.list_alerts(db, Principal.operator(spike.tenant), state="all")
    assert [(a.alert_id, a.state) for a in stored] == [(held.alert_id, "resolved")]
    assert stored[0].resolved_at == T0 + dt.timedelta(hours=2, minutes=5)


def test_acknowledge(env) -> None:
    db, injected = env
    spike = injected["asr_collapse"]
    only = ("asr_acd_carrier",)
    alert = al.evaluate_tenant(db, spike.tenant, T0 + PERIOD * 2, only=only).opened[0]
    op = Principal.operator(spike.tenant)
    with pytest.raises(al.AlertForbidden):
        al.acknowledge(db, Principal.carrier(spike.tenant, spike.carrier_id), alert.alert_id)
    with pytest.raises(al.AlertNotFound):  # another tenant's operator: as if it did not exist
        al.acknowledge(db, Principal.operator("globex"), alert.alert_id)
    acked = al.acknowledge(db, op, alert.alert_id, by="tenant:acme")
    assert acked.state == "acknowledged" and acked.acked_by == "tenant:acme"
    # acknowledged, it is still the one alert while the condition holds…
    again = al.evaluate_tenant(db, spike.tenant, T0 + PERIOD * 4, only=only)
    assert again.opened == [] and again.updated[0].state == "acknowledged"
    assert al.list_alerts(db, op, state="open") == []
    # …and resolves when it clears; a resolved alert cannot be acknowledged
    al.evaluate_tenant(db, spike.tenant, T0 + dt.timedelta(hours=2, minutes=5), only=only)
    assert al.get_alert(db, op, alert.alert_id).state == "resolved"
    with pytest.raises(al.AlertError, match="already resolved"):
        al.acknowledge(db, op, alert.alert_id)


def test_a_failing_detector_keeps_its_alerts_and_the_others_run(env) -> None:
    db, injected = env
    spike = injected["premium_spike"]
    al.evaluate_tenant(db, spike.tenant, T0 + PERIOD * 2)
    before = {a.alert_id for a in al.active_alerts(db, spike.tenant)}
    # a stored setting the SQL cannot run with: simulate by a broken table for one detector
    db.command("RENAME TABLE ledger TO ledger_away")
    try:
        report = al.evaluate_tenant(db, spike.tenant, T0 + PERIOD * 3)
    finally:
        db.command("RENAME TABLE ledger_away TO ledger")
    assert set(report.errors) == {"balance_runway"}
    assert {a.alert_id for a in al.active_alerts(db, spike.tenant)} == before
    status = {s["detector"]: s for s in al.status(db, spike.tenant)}
    assert status["balance_runway"]["error"] and not status["traffic_spike"]["error"]


def test_thresholds_change_what_fires(env) -> None:
    db, injected = env
    spike = injected["premium_spike"]
    only = ("traffic_spike",)
    al.set_overrides(db, spike.tenant, {"traffic_spike": {"min_calls": 100000}}, by="test")
    assert al.evaluate_tenant(db, spike.tenant, T0 + PERIOD * 2, only=only).opened == []
    al.set_overrides(db, spike.tenant, {"traffic_spike": {"enabled": 0, "min_calls": 30}})
    assert al.evaluate_tenant(db, spike.tenant, T0 + PERIOD * 2, only=only).seconds == {}
    al.set_overrides(db, spike.tenant, {"traffic_spike": {"enabled": 1}})
    assert al.settings_for(db, spike.tenant)["traffic_spike"]["min_calls"] == 30
    assert len(al.evaluate_tenant(db, spike.tenant, T0 + PERIOD * 2, only=only).opened) == 1
    with pytest.raises(rules.AlertSettingsError, match="spend_jump.k: -5 is outside"):
        al.set_overrides(db, spike.tenant, {"traffic_spike": {"k": 1}, "spend_jump": {"k": -5}})
    with pytest.raises(rules.AlertSettingsError):  # all or nothing: the good half is not stored
        al.set_overrides(db, spike.tenant, {"spend_jump": {"k": 9}, "traffic_spike": {"x": 1}})
    assert "k" not in al.stored_overrides(db, spike.tenant).get("spend_jump", {})


# -- who sees what: engine rule, HTTP API, CLI ---------------------------------------

KEYS = {"op": "tenant:acme", "gop": "tenant:globex", "admin": "admin",
        "c3": "tenant:acme/customer:C003", "gc3": "tenant:globex/customer:C003",
        "c1": "tenant:acme/customer:C001", "k2": "tenant:acme/carrier:K002",
        "gk1": "tenant:globex/carrier:K001"}


#: database name -> the API tests' evaluation is in the alert tables
_EVALUATED: dict[str, bool] = {}


def _reset(db) -> None:
    _EVALUATED[db.name] = False
    for table in ("alerts", "alert_thresholds", "alert_evaluations"):
        db.command(f"TRUNCATE TABLE {table}")


@pytest.fixture(scope="module")
def service_clients(loaded):
    db, injected = loaded
    secrets = {who: keys.create_key(db, p)[1] for who, p in KEYS.items()}
    clients = {}
    with TestClient(create_app(ServiceConfig(store=db.config, pool_size=2,
                                             auth_failures_per_minute=1000))) as on, \
            TestClient(create_app(ServiceConfig(store=db.config, pool_size=2,
                                                auth_failures_per_minute=1000,
                                                alerts_for_accounts=False))) as off:
        clients["on"], clients["off"] = on, off
        yield clients, secrets, db, injected


@pytest.fixture
def api(service_clients):
    """The services, with the alerts of one evaluation at T0 + 2 periods (all anomalies on).
    API tests only add to them (an acknowledgement, thresholds), so they share them."""
    db = service_clients[2]
    if not _EVALUATED.get(db.name):  # once per store, unless a test reset the tables since
        _reset(db)
        al.evaluate_all(db, T0 + 2 * PERIOD)
        _EVALUATED[db.name] = True
    return service_clients


def call(api, who: str, method: str, path: str, app: str = "on", **kw):
    clients, secrets, *_ = api
    return clients[app].request(method, path, headers={"Authorization": f"Bearer {secrets[who]}"},
                                **kw)


def seen(api, who: str, query: str = "", app: str = "on") -> set[tuple[str, str]]:
    r = call(api, who, "GET", "/v1/alerts" + query, app)
    assert r.status_code == 200, r.text
    return {(a["tenant"], a["detector"] + " " + a["subject"]) for a in r.json()["alerts"]}


def test_api_each_principal_sees_its_own(api) -> None:
    db = api[2]
    everything = seen(api, "admin")
    acme = {x for x in everything if x[0] == "acme"}
    assert acme and len(everything) > len(acme)
    assert seen(api, "op") == acme
    assert seen(api, "gop") == {x for x in everything if x[0] == "globex"}
    assert seen(api, "admin", "?tenant=globex") == seen(api, "gop")
    c3 = acc.find(db, "acme", "customer", "C003").account_id
    assert seen(api, "c3") == {x for x in acme if f"customer:{c3}" in x[1]} != set()
    assert seen(api, "c1") == set()  # nothing about C001 of acme
    k2 = acc.find(db, "acme", "carrier", "K002").account_id
    assert seen(api, "k2") == {("acme", f"asr_acd_carrier carrier:{k2}")}
    # the same code (and the same numeric id) in another tenant sees nothing of acme's
    assert all(t == "globex" for t, _ in seen(api, "gc3"))
    assert all(t == "globex" for t, _ in seen(api, "gk1")) and seen(api, "gk1")
    # configurable: accounts see nothing when the service says so; operators unchanged
    assert seen(api, "c3", app="off") == set() and seen(api, "k2", app="off") == set()
    assert seen(api, "op", app="off") == acme


@pytest.mark.parametrize("who, query, status, message", [
    ("op", "?tenant=globex", 403, "cannot read alerts of tenant"),
    ("c3", "?tenant=globex", 403, "cannot read alerts of tenant"),
    ("op", "?state=' OR 1=1 --", 400, "state:"),
    ("op", "?detector=x') OR ('1'='1", 400, "detector:"),
    ("op", "?limit=0", 400, ""),
    ("op", "?tenant_id=globex", 400, ""),
])
def test_api_hostile_list_queries(api, who: str, query: str, status: int, message: str) -> None:
    r = call(api, who, "GET", "/v1/alerts" + query)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_api_ids_of_others_are_not_found(api) -> None:
    admin = call(api, "admin", "GET", "/v1/alerts").json()["alerts"]
    globex_id = next(a["id"] for a in admin if a["tenant"] == "globex")
    acme = [a for a in admin if a["tenant"] == "acme"]
    carrier_alert = next(a for a in acme if a["detector"] == "asr_acd_carrier")
    for who, alert_id in [("op", globex_id), ("c3", carrier_alert["id"]), ("c1", acme[0]["id"]),
                          ("gop", acme[0]["id"]), ("op", "' OR '1'='1"), ("op", "%27--")]:
        for method, path in [("GET", f"/v1/alerts/{alert_id}"),
                             ("POST", f"/v1/alerts/{alert_id}/ack")]:
            r = call(api, who, method, path)
            assert r.status_code == 404, (who, method, r.text)
    # visible but not an operator: forbidden, and nothing changed
    r = call(api, "k2", "POST", f"/v1/alerts/{carrier_alert['id']}/ack")
    assert r.status_code == 403 and "operators" in r.json()["detail"]
    assert call(api, "k2", "GET", f"/v1/alerts/{carrier_alert['id']}").json()["state"] == "open"


def test_api_ack_and_read(api) -> None:
    alert = next(a for a in call(api, "op", "GET", "/v1/alerts").json()["alerts"]
                 if a["detector"] == "spend_jump")
    r = call(api, "op", "POST", f"/v1/alerts/{alert['id']}/ack")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "acknowledged" and r.json()["acked_by"] == "tenant:acme"
    one = call(api, "op", "GET", f"/v1/alerts/{alert['id']}").json()
    assert one["state"] == "acknowledged" and one["evidence"]["spend"] > 0
    assert alert["id"] not in {a["id"] for a in call(api, "op", "GET", "/v1/alerts?state=open")
                               .json()["alerts"]}
    assert alert["id"] in {a["id"] for a in call(api, "op", "GET",
                                                  "/v1/alerts?state=acknowledged").json()["alerts"]}


def test_api_thresholds(api) -> None:
    r = call(api, "op", "GET", "/v1/alerts/thresholds")
    assert r.status_code == 200
    ts = {d["detector"]: d for d in r.json()["detectors"]}
    assert ts["traffic_spike"]["settings"]["min_calls"] == 30 and ts["traffic_spike"]["help"]["k"]
    r = call(api, "op", "PUT", "/v1/alerts/thresholds", json={"short_call_surge": {"min_short": 40}})
    assert r.status_code == 200, r.text
    assert r.json()["overridden"]["short_call_surge"] == {"min_short": 40}
    got = call(api, "op", "GET", "/v1/alerts/thresholds").json()["detectors"]
    assert next(d for d in got if d["detector"] == "short_call_surge")["settings"]["min_short"] == 40
    # globex is untouched; bad bodies and other principals are refused, nothing stored
    g = call(api, "gop", "GET", "/v1/alerts/thresholds").json()["detectors"]
    assert next(d for d in g if d["detector"] == "short_call_surge")["settings"]["min_short"] == 20
    for who, query, body, status, message in [
            ("op", "", {"short_call_surge": {"min_short": -1}}, 400, "short_call_surge.min_short"),
            ("op", "", {"nope": {}}, 400, "detector: 'nope'"),
            ("op", "?tenant=globex", {"spend_jump": {"k": 9}}, 403, "cannot act on tenant"),
            ("c3", "", {"spend_jump": {"k": 9}}, 403, "only tenant operators"),
            ("admin", "", {"spend_jump": {"k": 9}}, 400, "admin names the tenant")]:
        r = call(api, who, "PUT", "/v1/alerts/thresholds" + query, json=body)
        assert r.status_code == status, r.text
        assert message in r.json()["detail"]
    assert al.stored_overrides(api[2], "globex") == {}
    r = call(api, "admin", "PUT", "/v1/alerts/thresholds?tenant=globex", json={"spend_jump": {"k": 9}})
    assert r.status_code == 200 and al.stored_overrides(api[2], "globex") == {"spend_jump": {"k": 9.0}}


def test_metrics_per_tenant_and_detector(api) -> None:
    clients = api[0]
    text = clients["on"].get("/metrics").text
    # every sample also names this instance first (api/scaleout.py): compare without it
    lines = [re.sub(r'\{instance="[^"]*",', "{", ln) for ln in text.splitlines()
             if ln.startswith("cdrhouse_alerts_")]
    assert 'cdrhouse_alerts_open{detector="asr_acd_carrier",tenant="acme"} 1.0' in lines
    for tenant in SPEC.tenants:
        for d in rules.DETECTORS:
            assert any(ln.startswith("cdrhouse_alerts_last_evaluation_timestamp_seconds{"
                                     f'detector="{d.key}",tenant="{tenant}"}}') for ln in lines)
    stamp = next(float(ln.split()[-1]) for ln in lines
                 if ln.startswith("cdrhouse_alerts_last_evaluation_timestamp_seconds"))
    assert stamp > 1.7e9


def test_cli_alerts(api) -> None:
    db = api[2]
    env = {**os.environ, "CDRHOUSE_CLICKHOUSE": db.config.clickhouse,
           "CDRHOUSE_DATABASE": db.name, "COLUMNS": "250"}

    if db.config.embedded:
        # this test process holds the embedded store: the CLI (a real process: its exit code
        # is the point) says so, exit code 3
        out = subprocess.run([sys.executable, "-m", "cdrhouse.api.cli", "alerts", "list",
                              "--as", "admin"], capture_output=True, text=True, env=env,
                             timeout=120)
        assert out.returncode == 3 and "is in use by process" in out.stderr, out.stderr
        return

    # over HTTP: the same entry point in this process (typer's runner), no interpreter start-up
    from typer.testing import CliRunner

    from cdrhouse.api.cli import app as cli_app

    def cli(*args: str):
        return CliRunner().invoke(cli_app, ["alerts", *args], env=env)

    out = cli("list", "--as", "tenant:acme/carrier:K002", "--format", "json")
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["detector"] for r in rows] == ["asr_acd_carrier"]
    ev = cli("evaluate", "--tenant", "acme", "--at", (T0 + 3 * PERIOD).isoformat())
    assert ev.exit_code == 0, ev.output
    assert "updated" in ev.stdout and "asr_acd_carrier" in ev.stdout


def test_scheduled_tick_and_service_schedule(loaded) -> None:
    db, _ = loaded
    db.command("TRUNCATE TABLE alert_evaluations")

    class Once:
        def __enter__(self):
            return db

        def __exit__(self, *exc):
            return False

    al.tick(lambda: Once())  # now = the real clock: the generated store ended in the past
    assert {s["tenant"] for s in al.status(db)} == set(SPEC.tenants)
    app = create_app(ServiceConfig(store=db.config, pool_size=2, alert_every=600))
    with TestClient(app):
        job = app.state.alert_scheduler.get_job("alerts")
        assert job is not None and job.trigger.interval.total_seconds() == 600
    assert app.state.alert_scheduler is not None


def test_one_evaluation_per_period_across_instances(loaded, monkeypatch) -> None:
    """The scheduled run is leased with its fire time: two services (instances) on one
    store firing for the same period evaluate once; the next period evaluates again."""
    import datetime as dt
    from cdrhouse.engine import leases

    db, _ = loaded
    runs = []
    monkeypatch.setattr(al, "evaluate_all", lambda db_, now, config: runs.append(1) or [])
    apps = [create_app(ServiceConfig(store=db.config, pool_size=2, alert_every=600))
            for _ in range(2)]
    with TestClient(apps[0]), TestClient(apps[1]):
        jobs = [a.state.alert_scheduler.get_job("alerts") for a in apps]
        due = leases.last_fire_time(jobs[0].trigger)
        assert due == leases.last_fire_time(jobs[1].trigger)  # one name for the period
        assert (due - al.EPOCH).total_seconds() % 600 == 0
        for job in jobs:
            job.func()
        assert len(runs) == 1
        # a period later (the trigger as seen then), one more evaluation
        later = due + dt.timedelta(seconds=600)
        monkeypatch.setattr(leases, "last_fire_time",
                            lambda trigger, now=None, lookback=None: later)
        for job in jobs:
            job.func()
        assert len(runs) == 2


def test_every_detector_runs_on_a_sharded_cluster(cluster_db) -> None:
    """The detector SQL is valid over Distributed tables (its IN subquery goes GLOBAL);
    one generated tenant with an injected spike, evaluated as on one node."""
    import tempfile

    spec = generate.GenSpec(rows=4000, months=2, seed=5, end=END, tenants=("acme",))
    with tempfile.TemporaryDirectory() as tmp:
        generate.load(cluster_db, spec, Path(tmp))
        spike = [a for a in anomalies.catalogue(T0, spec.tenants) if a.name == "premium_spike"]
        anomalies.inject(cluster_db, spec, spike, Path(tmp))
    report = al.evaluate_tenant(cluster_db, "acme", T0 + 2 * PERIOD)
    assert report.errors == {} and len(report.seconds) == len(rules.DETECTORS)
    assert "traffic_spike" in {a.detector for a in report.opened}
