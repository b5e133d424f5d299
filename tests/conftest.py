"""Shared fixtures: a real `kvslite serve` process on a free port, driven over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from coturn_server import coturn  # noqa: F401 - one TURN server for the whole session
from postgres_server import postgres_url  # noqa: F401 - the PostgreSQL server fixture
from prometheus_client.parser import text_string_to_metric_families
from seaweed_server import seaweed  # noqa: F401 - one SeaweedFS for the whole session

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def metric(server, name: str, **labels: str) -> float:
    """The sample `name` with exactly these labels on a server's (or node's) /metrics; 0.0
    while none with these labels has been written. A name /metrics does not list at all
    fails the test (a renamed metric must not read as zero)."""
    with urllib.request.urlopen(f"{server.endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    families = [f for f in text_string_to_metric_families(text)
                if name == f.name or name.startswith(f.name + "_")]
    assert families, f"/metrics has no {name}"
    return next((sample.value for family in families for sample in family.samples
                 if sample.name == name and sample.labels == labels), 0.0)


def refusal(call, *args, **kwargs) -> tuple[str, int, str]:
    """How a boto3 call that must fail was refused: (error code, HTTP status, message)."""
    with pytest.raises(ClientError) as refused:
        call(*args, **kwargs)
    response = refused.value.response
    return (response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"],
            response["Error"]["Message"])


class ServerProcess:
    """`python -m kvslite serve` in a subprocess; restartable on the same data dir."""

    def __init__(self, data_dir: Path, *extra_args: str, env: dict | None = None,
                 preexec_fn=None):
        self.data_dir = data_dir
        self.preexec_fn = preexec_fn  # run in the child before kvslite starts (e.g. rlimits)
        self.extra_args = list(extra_args)
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        for attempt in range(3):
            self.log = open(self.log_path, "ab")
            logged = self.log_path.stat().st_size  # this start's lines come after
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvslite", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), *self.extra_args],
                stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                preexec_fn=self.preexec_fn,
            )
            if self._listening(logged):
                return self
            if b"address already in use" not in self._since(logged) or attempt == 2:
                raise RuntimeError(f"kvslite exited early:\n{self.output()}")
            # another test's server took the port between free_port() and the bind
            self.log.close()
            self.port = free_port()
        raise AssertionError("unreachable")

    def _listening(self, logged: int) -> bool:
        """True once this process (not another that took the same free port) listens."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if b"kvslite listening on" in self._since(logged):
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    return True
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"kvslite did not start:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _since(self, offset: int) -> bytes:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        self.log.close()
        return code

    def client(self, service: str, *, key: str = "AKIDEXAMPLE", secret: str = "secret",
               validate: bool = True, **config):
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=Config(parameter_validation=validate, retries={"max_attempts": 1},
                          **config),
        )


# A real PostgreSQL or SeaweedFS takes seconds to start: the tests on one are slow, whether
# they ask for its fixture or are the engine's case of a contract suite (its parameter).
ENGINE_FIXTURES = {"postgres_url", "seaweed"}
ENGINE_PARAMS = {"postgresql", "s3"}


def pytest_collection_modifyitems(items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = {v for v in callspec.params.values() if isinstance(v, str)} if callspec else set()
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())) or ENGINE_PARAMS & params:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def start_server(tmp_path):
    """Factory: start_server(*args) -> a running ServerProcess; all stopped at teardown."""
    started: list[ServerProcess] = []

    def start(*args: str, data_dir: Path | None = None, env: dict | None = None):
        server = ServerProcess(data_dir or tmp_path / f"data{len(started)}", *args, env=env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory):
    """Factory: module_servers(*args) -> a server that lives as long as the test module."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        server = ServerProcess(tmp_path_factory.mktemp("kvs") / "data", *args).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class InProcessServer:
    """The whole server, wired as `kvslite serve` wires it (SQLite and files), answering in
    this process through Starlette's TestClient: for what the server answers, where a real
    socket, a second process or uvicorn is not the point."""

    def __init__(self, client):
        self.client = client

    def raw(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        """(status, lower-cased headers, body), like a raw HTTP request."""
        response = self.client.request(method, path, content=body, headers=headers or {})
        return response.status_code, dict(response.headers), response.content


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    from starlette.testclient import TestClient

    from kvslite.server.config import Settings
    from kvslite.server.main import running

    settings = Settings(data_dir=tmp_path_factory.mktemp("kvs") / "data")
    with running(settings) as server:  # no lifespan: kvslite's app has none
        yield InProcessServer(TestClient(server.app, raise_server_exceptions=False))


# ./scripts/test installs Debian's chromium; the browser tests drive it with Playwright
CHROMIUM = os.environ.get("KVSLITE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic", "--autoplay-policy=no-user-gesture-required"]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for a module's browser tests."""
    import playwright.sync_api as playwright_api

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def certificate(tmp_path):
    """(cert, key) paths: self-signed for 127.0.0.1, as CN and as an IP subjectAltName."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="session")
def h264():
    """The standard test video: 4 s of 320x240 H.264 at 25 fps, 1 s GOPs with B-frames."""
    from kvslite.media import synthetic

    return synthetic.encode_video("h264", seconds=4, gop=25, bframes=2)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for a whole test module (tests must use distinct stream names)."""
    server = ServerProcess(tmp_path_factory.mktemp("kvs") / "data").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kvs(shared_server):
    return shared_server.client("kinesisvideo")
