"""A throwaway PostgreSQL server for the tests, from Debian's postgresql package.

`server()` starts one cluster per test session, on first use, in a temporary directory:
initdb with trust authentication, then pg_ctl start, listening on 127.0.0.1 on a free
port and on a unix socket in that directory, with fsync and synchronous_commit off (the
tests need no crash safety from it). It is stopped (pg_ctl stop -m immediate) and its
directory removed at the end of the session. PostgreSQL refuses to run as root: as root
(CI), initdb and pg_ctl run as the `postgres` user the package creates, which owns the
directory. `fresh_database()` makes a new, empty database on it and returns its URL.

Where the package is not installed, whatever needs the server is skipped, with the reason.
scripts/test installs the package, so CI runs it all.

Fixture: `postgres_url` (session scope), the URL of the server's `postgres` database;
conftest.py imports it.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from engines import need

INITDB_GLOB = "/usr/lib/postgresql/*/bin/initdb"
SHM, SHM_NEEDED = "/dev/shm", 2 << 30
OWNER = "owner.pid"
MISSING = ("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): install "
           "Debian's postgresql package, as scripts/test does")


def _bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory."""
    found = sorted(glob.glob(INITDB_GLOB),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _scratch() -> str | None:
    """Where the cluster lives: in memory (/dev/shm) when there is room, as creating a
    database there takes milliseconds instead of a fraction of a second on disk; else
    the default temporary directory."""
    try:
        room = shutil.disk_usage(SHM)
    except OSError:
        return None
    return SHM if room.free >= SHM_NEEDED and os.access(SHM, os.W_OK | os.X_OK) else None


def _sweep(scratch: str | None) -> None:
    """Stop and remove the clusters that sessions killed before their cleanup left behind
    (each directory names its session's process in OWNER)."""
    for root in Path(scratch or tempfile.gettempdir()).glob("kvslite-pg-*"):
        try:
            os.kill(int((root / OWNER).read_text()), 0)
            continue  # its session is still running
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue  # not ours to judge
        try:
            pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
            if b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
        except (OSError, ValueError, IndexError):
            pass
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; `start()`, then `stop()`."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="kvslite-pg-", dir=_scratch()))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self.port = 0
        self.user: str | None = None  # the system user it runs as, when not ourselves
        self.running = False
        self.owner = os.getpid()  # a forked child's exit must not stop it
        (self.root / OWNER).write_text(str(self.owner))

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
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
            self.port = _free_port()
            options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                       f"-c unix_socket_directories={self.sockets} -c fsync=off "
                       f"-c synchronous_commit=off -c full_page_writes=off "
                       f"-c max_connections=400 -c shared_buffers=64MB "
                       f"-c max_wal_size=128MB -c min_wal_size=32MB")
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                          "-w", "-t", "60", "start")
                break
            except RuntimeError as e:
                if attempt == 4 or "already in use" not in str(e):
                    raise
        self.running = True
        return self

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if os.getpid() != self.owner:
            return
        if self.running:
            self.running = False
            try:
                self._run("pg_ctl", "-D", str(self.data), "stop", "-m", "immediate", "-w")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


_server: PostgresServer | None = None
_lock = threading.Lock()


def server() -> PostgresServer:
    """The session's server, started on first use; skips the calling test where
    PostgreSQL is not installed."""
    global _server
    with _lock:
        if _server is None:
            bin_dir = _bin_dir()
            if bin_dir is None:
                need(False, MISSING)
            _sweep(_scratch())
            started = PostgresServer(bin_dir)
            try:
                started.start()
            except BaseException:
                started.stop()
                raise
            _server = started
            atexit.register(stop)
        return _server


def stop() -> None:
    global _server
    with _lock:
        if _server is not None:
            _server.stop()
            _server = None


def fresh_database(url: str | None = None) -> str:
    """Create an empty database (kvs_<uuid>) on the server at `url` (default: the
    session's) and return its URL."""
    import psycopg

    base = url or server().url
    name = f"kvs_{uuid.uuid4().hex}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of the session's PostgreSQL server (its `postgres` database)."""
    yield server().url
    stop()
