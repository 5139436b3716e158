"""The compose files and the Dockerfile, checked for structure (no docker engine here).

What `docker compose config` would reject or what would break the cluster at start:
unknown top-level keys, services without an image or build, dependencies on services
that do not exist, named volumes not declared; and what the cluster needs: 2 shards x 2
replicas of ClickHouse 26.9 whose macros and remote_servers agree, 3 Keeper nodes with
distinct ids in one raft configuration, cdrhouse pointed at a node of the cluster it
names, built from the Dockerfile (non-root, health check, dependencies at build time).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
TOP_LEVEL = {"services", "volumes", "networks", "configs", "secrets", "name", "version"}
SERVICE_KEYS = {"image", "build", "command", "entrypoint", "environment", "volumes", "ports",
                "depends_on", "healthcheck", "ulimits", "hostname", "working_dir", "restart",
                "profiles", "networks", "user", "expose"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.cluster.yml"])
def test_compose_structure(name: str) -> None:
    doc = load(name)
    extra = {k for k in doc if not k.startswith("x-")} - TOP_LEVEL
    assert not extra, f"unknown top-level keys {extra}"
    services = doc["services"]
    declared = set(doc.get("volumes") or {})
    for sname, svc in services.items():
        assert set(svc) <= SERVICE_KEYS, (sname, set(svc) - SERVICE_KEYS)
        assert "image" in svc or "build" in svc, sname
        deps = svc.get("depends_on") or {}
        for dep, cond in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            assert dep in services, (sname, dep)
            assert cond.get("condition", "service_started") in CONDITIONS
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], (sname, dep)
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, (sname, source)
            else:
                assert (ROOT / source).exists(), (sname, source)
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{sname} publishes {port} beyond loopback"
    cdrhouse = services["cdrhouse"]
    assert cdrhouse["build"] == "." and "command" not in cdrhouse  # the image's CMD


def _xml(path: str) -> ET.Element:
    return ET.parse(ROOT / path).getroot()


def test_cluster_topology_agrees() -> None:
    doc = load("docker-compose.cluster.yml")
    services = doc["services"]
    servers = {n: s for n, s in services.items() if "clickhouse-server" in s.get("image", "")}
    keepers = {n: s for n, s in services.items() if "clickhouse-keeper" in s.get("image", "")}
    assert len(servers) == 4 and len(keepers) == 3
    assert {s["image"] for s in [*servers.values(), *keepers.values()]} == {
        "clickhouse/clickhouse-server:26.9", "clickhouse/clickhouse-keeper:26.9"}

    config = _xml("deploy/cluster/clickhouse.xml")
    cluster = config.find("remote_servers")[0]
    shards = [[(r.findtext("host"), r.findtext("port")) for r in shard.findall("replica")]
              for shard in cluster.findall("shard")]
    assert len(shards) == 2 and all(len(s) == 2 for s in shards)
    assert all(s.findtext("internal_replication") == "true" for s in cluster.findall("shard"))
    # every replica named in remote_servers is a service whose macros say the same shard
    for shard_no, replicas in enumerate(shards, 1):
        for host, port in replicas:
            env = servers[host]["environment"]
            assert servers[host]["hostname"] == host and port == "9000"
            assert int(env["CH_SHARD"]) == shard_no and env["CH_REPLICA"] == host
    assert len({s["environment"]["CH_REPLICA"] for s in servers.values()}) == 4
    assert config.find("macros/shard").get("from_env") == "CH_SHARD"
    assert [n.findtext("host") for n in config.findall("zookeeper/node")] == sorted(keepers)
    assert config.find("distributed_ddl/path") is not None

    keeper = _xml("deploy/cluster/keeper.xml")
    raft = [(s.findtext("id"), s.findtext("hostname"))
            for s in keeper.findall("keeper_server/raft_configuration/server")]
    assert sorted(h for _, h in raft) == sorted(keepers)
    assert {keepers[h]["environment"]["KEEPER_SERVER_ID"] for _, h in raft} == {i for i, _ in raft}

    env = services["cdrhouse"]["environment"]
    assert env["CDRHOUSE_CLUSTER"] == cluster.tag
    host = re.match(r"https?://[^@]+@([^:/]+)", env["CDRHOUSE_CLICKHOUSE"]).group(1)
    assert host in servers and env["CDRHOUSE_REPLICATED"] == "true"
    assert set(services["cdrhouse"]["depends_on"]) >= set(servers)


def test_dockerfile_is_slim_non_root_and_checks_health() -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f.startswith("python:3.11-slim") for f in froms)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*CMD", text, re.M | re.S) and "/healthz" in text
    # dependencies at build time: pip runs in RUN, never in the start command
    assert re.search(r"^RUN .*pip install", text, re.M | re.S)
    cmd = re.search(r"^CMD (.*)$", text, re.M).group(1)
    assert "pip" not in cmd and "cdrhouse init" in cmd and "cdrhouse serve" in cmd
