"""/metrics across `serve --workers` (api/workermetrics.py): one valid exposition with
every live worker's samples, each under its instance; stale and withdrawn workers out."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cdrhouse.api import workermetrics
from cdrhouse.api.scaleout import with_instance_label


def _exposition(instance: str, requests: int) -> bytes:
    registry = CollectorRegistry()
    c = Counter("cdrhouse_http_requests_total", "HTTP requests", ["route"], registry=registry)
    c.labels("/v1/cdrs").inc(requests)
    h = Histogram("cdrhouse_http_request_seconds", "latency", ["route"], registry=registry,
                  buckets=(.1, 1))
    h.labels("/v1/cdrs").observe(0.5)
    return with_instance_label(generate_latest(registry), instance)


def _samples(text: bytes) -> dict[tuple[str, str], float]:
    """(sample name, instance) -> value, for the request counter."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name == "cdrhouse_http_requests_total":
                out[(s.name, s.labels["instance"])] = s.value
    return out


def test_a_scrape_answers_every_live_worker(tmp_path: Path) -> None:
    workermetrics.publish(tmp_path, "api:1", _exposition("api:1", 3))
    workermetrics.publish(tmp_path, "api:2", _exposition("api:2", 5))
    workermetrics.publish(tmp_path, "api:3", _exposition("api:3", 7))
    old = time.time() - 60                        # api:3 stopped publishing a minute ago
    os.utime(tmp_path / "api_3.prom", (old, old))
    # api:1 answers with its numbers of this moment (4), not its published ones (3)
    text = workermetrics.gather(tmp_path, "api:1", _exposition("api:1", 4), max_age=15)
    assert _samples(text) == {("cdrhouse_http_requests_total", "api:1"): 4.0,
                              ("cdrhouse_http_requests_total", "api:2"): 5.0}
    types = [line for line in text.decode().splitlines() if line.startswith("# TYPE")]
    assert types and len(types) == len(set(types))  # each family once, samples of both
    assert text.decode().count('le="+Inf"') == 2  # both workers' histograms, whole
    # a worker that stops takes its numbers out at once
    workermetrics.withdraw(tmp_path, "api:2")
    text = workermetrics.gather(tmp_path, "api:1", _exposition("api:1", 4), max_age=15)
    assert set(_samples(text)) == {("cdrhouse_http_requests_total", "api:1")}
    workermetrics.withdraw(tmp_path, "api:2")     # twice is fine


def test_an_instance_name_is_a_file_name(tmp_path: Path) -> None:
    workermetrics.publish(tmp_path, "../host/x:12", _exposition("../host/x:12", 1))
    assert [p.name for p in tmp_path.iterdir()] == [".._host_x_12.prom"]
    text = workermetrics.gather(tmp_path, "api:9", _exposition("api:9", 2), max_age=15)
    assert set(_samples(text)) == {("cdrhouse_http_requests_total", "../host/x:12"),
                                   ("cdrhouse_http_requests_total", "api:9")}


def test_a_missing_directory_fails_no_scrape(tmp_path: Path) -> None:
    """The parent removes the directory as the run ends; a worker still answering must
    not fail its scrape or its publishing loop."""
    gone = tmp_path / "gone"
    workermetrics.publish(gone, "api:1", _exposition("api:1", 1))
    text = workermetrics.gather(gone, "api:1", _exposition("api:1", 2), max_age=15)
    assert set(_samples(text)) == {("cdrhouse_http_requests_total", "api:1")}
