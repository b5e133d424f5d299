"""Silent sockets against a server with few open files: how soon does ListStreams answer?

For plain HTTP and for HTTPS (a self-signed certificate from openssl), starts `kvslite serve`
under RLIMIT_NOFILE = --nofile with its default limits (or --header-timeout-s), opens
--sockets TCP connections 3 ms apart that never send a byte (no request head, no
ClientHello), then calls ListStreams (boto3, 2 s timeouts, retried every 0.1 s while
refused or timed out) until one answers. Reports, from the first silent socket: when
ListStreams first answered, how many silent sockets the server closed within 1 s of opening
(refused past the cap), and when it had closed them all. Run another checkout with
PYTHONPATH=/that/checkout/src.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_certificate(root: Path) -> tuple[Path, Path]:
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def start_server(root: Path, port: int, nofile: int, args: list[str]) -> subprocess.Popen:
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log = open(root / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "kvslite", "serve", "--port", str(port),
                             "--data-dir", str(root / "data"), *args],
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            time.sleep(0.3)  # the probe's connection is gone
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("kvslite did not start: " + (root / "server.log").read_text())


class Closures:
    """When the server closed each silent socket (seen as readable: EOF or reset)."""

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.at: dict[int, float] = {}

    def watch(self, index: int, sock: socket.socket) -> None:
        self.selector.register(sock, selectors.EVENT_READ, index)

    def poll(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            self.at[key.data] = time.monotonic()
            self.selector.unregister(key.fileobj)


def first_answer(kvs, since: float, give_up_s: float, closures: Closures):
    """(seconds from `since` to the first ListStreams answered, attempts)."""
    attempts = 0
    while time.monotonic() < since + give_up_s:
        attempts += 1
        try:
            kvs.list_streams()
            return time.monotonic() - since, attempts
        except (BotoCoreError, ClientError):  # refused (503) or closed at the cap: retry
            closures.poll(0.1)
    return None, attempts


def run(scheme: str, sockets: int, nofile: int, extra: list[str], give_up_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root, port = Path(tmp), free_port()
        verify: str | bool = False
        args = list(extra)
        if scheme == "https":
            cert, key = make_certificate(root)
            args += ["--tls-cert", str(cert), "--tls-key", str(key)]
            verify = str(cert)
        proc = start_server(root, port, nofile, args)
        kvs = boto3.client("kinesisvideo", endpoint_url=f"{scheme}://127.0.0.1:{port}",
                           region_name="us-east-1", aws_access_key_id="x",
                           aws_secret_access_key="x", verify=verify,
                           config=Config(connect_timeout=2, read_timeout=2,
                                         retries={"max_attempts": 1}))
        closures, opened, silent = Closures(), [], []
        try:
            for i in range(sockets):
                silent.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                opened.append(time.monotonic())
                closures.watch(i, silent[-1])
                closures.poll(0.003)
            answered, attempts = first_answer(kvs, opened[0], give_up_s, closures)
            until = time.monotonic() + give_up_s
            while len(closures.at) < sockets and time.monotonic() < until:
                closures.poll(until - time.monotonic())
        finally:
            closures.selector.close()
            for sock in silent:
                sock.close()
            kvs.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        log = (root / "server.log").read_text(errors="replace")
    closed_at = closures.at
    refused = sum(1 for i, t in closed_at.items() if t - opened[i] < 1.0)
    return {"scheme": scheme, "sockets": sockets, "nofile": nofile,
            "list_streams_answered_s": None if answered is None else round(answered, 2),
            "attempts": attempts, "refused_within_1s": refused,
            "all_closed_s": round(max(closed_at.values()) - opened[0], 2)
            if len(closed_at) == sockets else None,
            "too_many_open_files_logged": "Too many open files" in log}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=300)
    parser.add_argument("--nofile", type=int, default=256)
    parser.add_argument("--header-timeout-s", type=float, default=None)
    parser.add_argument("--give-up-s", type=float, default=90.0)
    parser.add_argument("--out", type=Path,
                        default=Path(tempfile.gettempdir()) / "kvslite-silent-sockets.json")
    options = parser.parse_args()
    extra = [] if options.header_timeout_s is None else \
        ["--header-timeout-s", str(options.header_timeout_s)]
    results = [run(scheme, options.sockets, options.nofile, extra, options.give_up_s)
               for scheme in ("http", "https")]
    print("| scheme | silent sockets | nofile | ListStreams answered s | refused in 1 s "
          "| all closed s | EMFILE logged |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['scheme']} | {r['sockets']} | {r['nofile']} | "
              f"{r['list_streams_answered_s']} | {r['refused_within_1s']} | "
              f"{r['all_closed_s']} | {r['too_many_open_files_logged']} |")
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(),
               "machine": platform.machine()}
    options.out.write_text(json.dumps({"results": results, "machine": machine}, indent=2))
    print(f"written to {options.out}")


if __name__ == "__main__":
    main()
