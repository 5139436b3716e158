"""docker-compose.scaleout.yml: two API instances behind nginx, checked for structure
(no docker engine here), like tests/test_compose.py checks the other compose files."""

from __future__ import annotations

import re
import tomllib

from test_compose import CONDITIONS, ROOT, SERVICE_KEYS, TOP_LEVEL, load


def test_two_api_instances_behind_a_proxy() -> None:
    doc = load("docker-compose.scaleout.yml")
    assert not {k for k in doc if not k.startswith("x-")} - TOP_LEVEL
    services = doc["services"]
    declared = set(doc.get("volumes") or {})
    for name, svc in services.items():
        assert set(svc) <= SERVICE_KEYS, (name, set(svc) - SERVICE_KEYS)
        assert "image" in svc or "build" in svc, name
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            assert cond["condition"] in CONDITIONS
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], (name, dep)
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0]
            assert (ROOT / source).exists() if source.startswith(".") else source in declared
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    apis = {n: s for n, s in services.items() if n.startswith("api-")}
    assert len(apis) == 2
    names = {s["environment"]["CDRHOUSE_INSTANCE_NAME"] for s in apis.values()}
    assert names == set(apis)                       # each instance names itself
    proxy_ip = services["proxy"]["networks"]["cdr"]["ipv4_address"]
    for svc in apis.values():
        env = svc["environment"]
        assert env["CDRHOUSE_CLICKHOUSE"].startswith("http"), "a server DSN, not embedded"
        command = " ".join(svc["command"])
        assert "cdrhouse serve" in command and "cdrhouse init" not in command
        assert f"--forwarded-allow-ips {proxy_ip}" in command    # the proxy, no one else
        assert svc["depends_on"]["cdrhouse-init"]["condition"] == "service_completed_successfully"
    assert services["cdrhouse-init"]["command"] == ["cdrhouse", "init"]
    # the proxy is the only way in, and it balances over exactly these instances
    assert [n for n, s in services.items() if s.get("ports")] == ["proxy"]
    conf = (ROOT / "deploy/scaleout/nginx.conf").read_text()
    assert sorted(re.findall(r"server (api-\d+):8000", conf)) == sorted(apis)
    assert "proxy_pass http://cdrhouse;" in conf
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in conf
    assert conf.count("{") == conf.count("}")


def test_the_image_copies_every_package_folder() -> None:
    """pip installs from the folders the Dockerfile copies: a missing one breaks the image."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"].values()
    copied = set(re.findall(r"^COPY (\S+) \1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert set(dirs) <= copied, set(dirs) - copied
