"""The benchmarks' kvslite: `python -m kvslite serve` on a free loopback port, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config

PROBLEM_WORDS = ("WARN", "ERROR", "Trace", "Exception")


class Server:
    """Use as a context manager; afterwards `problems` holds the log's warnings and errors."""

    def __init__(self, root: Path, *args: str):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log_path, self.problems = root / "server.log", []
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvslite", "serve", "--port", str(self.port), "--data-dir",
             str(root / "data"), *args],
            stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "Server":
        for _ in range(400):  # up to ~20 s
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("kvslite did not start: " + self.log_path.read_text())

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.problems = [line for line in self.log_path.read_text(errors="replace").splitlines()
                         if any(word in line for word in PROBLEM_WORDS)]

    def client(self, service: str):
        return boto3.client(service, endpoint_url=f"http://127.0.0.1:{self.port}",
                            region_name="us-east-1", aws_access_key_id="x",
                            aws_secret_access_key="x",
                            config=Config(read_timeout=300, retries={"max_attempts": 1}))

    def mb(self, field: str = "VmHWM") -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text().split(field + ":")[1]
        return round(int(status.split()[0]) / 1024, 1)

    def reset_peak(self) -> None:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
