"""A throwaway PostgreSQL server for the peer benchmark: own data directory, 127.0.0.1, a free port.

    with PostgresServer() as pg:
        conn = psycopg.connect(pg.dsn)

Debian's PostgreSQL (`apt-get install postgresql-15`) is found under
/usr/lib/postgresql/<version>/bin. initdb and postgres refuse to run as root:
as root, the server runs as the `postgres` user in a directory that user owns.
The server is stopped and its directory removed on exit, also on an error or
Ctrl-C (the caller turns SIGTERM into an exception: see peers.main).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from tests.ports import free_port

#: Settings a DBA would give a 2-core, 24 GB analytics box (the rest are defaults).
#: jit is off: it adds tens of milliseconds to short queries and little to these.
SETTINGS = {
    "shared_buffers": "4GB",
    "effective_cache_size": "16GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "max_parallel_workers_per_gather": "2",
    "random_page_cost": "1.1",
    "jit": "off",
    "timezone": "UTC",
    "default_statistics_target": "200",
}


def find_bin(version: str = "15") -> Path:
    for v in (version, "*"):
        found = sorted(glob.glob(f"/usr/lib/postgresql/{v}/bin/pg_ctl"))
        if found:
            return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    if which:
        return Path(which).parent
    raise RuntimeError("PostgreSQL is not installed (pg_ctl not found): "
                       "apt-get install postgresql-15, or leave postgres out with --engines")


class PostgresServer:
    def __init__(self, version: str = "15") -> None:
        self.bin = find_bin(version)
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="cdrhouse-pg-"))
        self.data = self.base / "data"
        self.user = "postgres" if os.geteuid() == 0 else None
        self.started = False

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def version(self) -> str:
        out = subprocess.run([str(self.bin / "postgres"), "--version"], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=True)

    def start(self) -> PostgresServer:
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        os.chmod(self.base, 0o700)
        try:
            # C collation: byte order, so a plain B-tree also serves LIKE 'prefix%'
            self._run(self.bin / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                      "--locale=C", "--encoding=UTF8")
            with open(self.data / "postgresql.conf", "a") as fh:
                for k, v in SETTINGS.items():
                    fh.write(f"{k} = '{v}'\n")
            self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.base / "server.log", "-w",
                      "-o", f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1",
                      "start")
        except subprocess.CalledProcessError as exc:
            self.stop()
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr or exc.stdout}") from None
        self.started = True
        return self

    def size_of_data_dir(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.data):
            for f in files:
                with contextlib.suppress(OSError):  # a file PostgreSQL removed meanwhile
                    total += os.path.getsize(os.path.join(root, f))
        return total

    def stop(self) -> None:
        try:
            # a server that is already gone is what stop wants: carry on removing its files
            with contextlib.suppress(subprocess.CalledProcessError):
                if (self.data / "postmaster.pid").exists():
                    self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        finally:
            self.started = False
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
