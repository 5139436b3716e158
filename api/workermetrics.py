"""`/metrics` of `cdrhouse serve --workers N`: every worker's numbers in each scrape.

Why: the workers share one port, so a scrape reaches whichever worker accepts it, and
each worker's registry counts only its own requests; Prometheus would see a different
1/N of the traffic at every scrape. prometheus_client's multiprocess mode solves that
with a process-global value class chosen by an environment variable at import time,
which clashes with our per-app registries and the `instance` label every sample carries.

So each worker publishes its own exposition (already labelled with its instance name)
as a file in a directory the parent made for this run, every `every` seconds and at each
scrape; a scrape answers its own numbers, fresh, and those of the other workers' files
that are recent (a worker that died stops counting after `3 × every`). Families are
merged by name, so the answer is one valid exposition whose samples differ by `instance`.
A worker's numbers in another worker's answer are at most `every` seconds old.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

SUFFIX = ".prom"

log = logging.getLogger("cdrhouse.metrics")


def _file(directory: Path, instance: str) -> Path:
    return directory / (re.sub(r"[^A-Za-z0-9_.-]", "_", instance) + SUFFIX)


def publish(directory: Path, instance: str, exposition: bytes) -> None:
    """Write this worker's exposition where the others read it (atomically). Never
    fails a scrape: the directory is gone only while the run is ending."""
    path = _file(directory, instance)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(exposition)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not publish this worker's metrics to %s: %s", directory, exc)


def withdraw(directory: Path, instance: str) -> None:
    """This worker is stopping: its numbers leave the others' answers at once."""
    _file(directory, instance).unlink(missing_ok=True)


class _Families:
    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return self.families


def gather(directory: Path, instance: str, own: bytes, max_age: float) -> bytes:
    """This worker's exposition `own` merged with the other workers' recent ones."""
    texts = [own.decode()]
    mine, now = _file(directory, instance), time.time()
    for path in sorted(directory.glob("*" + SUFFIX)):
        try:
            if path == mine or now - path.stat().st_mtime > max_age:
                continue
            texts.append(path.read_text())
        except OSError:          # removed by its worker meanwhile
            continue
    merged: dict[str, object] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name in merged:
                merged[family.name].samples.extend(family.samples)  # type: ignore[attr-defined]
            else:
                merged[family.name] = family
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(merged.values())))
    return generate_latest(registry)
