"""The tests' throwaway PostgreSQL server: cluster_engines.py's PostgresServer
(Debian's postgresql package, fsync off, in /dev/shm when there is room, run as the
`postgres` user when we are root), one per test session.

`server()` starts it on first use and it is stopped (pg_ctl stop -m immediate) and its
directory removed at the end of the session; first it stops and removes the servers that
killed sessions left behind. `fresh_database()` makes a new, empty database on it and
returns its URL.

Where the package is not installed, whatever needs the server is skipped, with the reason
(a failure on CI: tests/engines.py). scripts/test installs the package, so CI runs it all.

Fixture: `postgres_url` (session scope), the URL of the server's `postgres` database;
conftest.py imports it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from cluster_engines import (
    PG_OWNER,
    PG_PREFIX,
    PostgresServer,
    create_database,
    memory_scratch,
    postgres_bin_dir,
)
from engines import need


def _sweep(scratch: str | None) -> None:
    """Stop and remove the clusters that sessions killed before their cleanup left behind
    (each directory names its session's process in PG_OWNER)."""
    for root in Path(scratch or tempfile.gettempdir()).glob(f"{PG_PREFIX}*"):
        try:
            os.kill(int((root / PG_OWNER).read_text()), 0)
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


_server: PostgresServer | None = None
_lock = threading.Lock()


def server() -> PostgresServer:
    """The session's server, started on first use; skips the calling test where
    PostgreSQL is not installed."""
    global _server
    with _lock:
        if _server is None:
            bin_dir = postgres_bin_dir()
            if bin_dir is None:
                need(False, "PostgreSQL (Debian's postgresql package)")
            _sweep(memory_scratch())
            started = PostgresServer(bin_dir=bin_dir)
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
    return create_database(url or server().url, f"kvs_{uuid.uuid4().hex}")


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of the session's PostgreSQL server (its `postgres` database)."""
    yield server().url
    stop()
