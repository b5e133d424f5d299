"""What the benchmarks share: a kvslite server process and camera-like H.264."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import av

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


def encode_h264(frames: Iterable[av.VideoFrame], fps: int, x264_params: str
                ) -> tuple[bytes, list[tuple[int, bool, bytes]]]:
    """avcC + (pts ms from the first frame, keyframe, payload) in decode order.

    Muxing to Matroska in memory and demuxing again yields avcC and length-prefixed NAL
    units, as a real producer sends; frame threading keeps one slice per frame (PyAV's
    slice-threading default would make x264 cut each frame into a slice per core).
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=fps,
                                options={"preset": "veryfast", "x264-params": x264_params})
        stream.codec_context.thread_type = "FRAME"
        for i, frame in enumerate(frames):
            if i == 0:
                stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(io.BytesIO(buf.getvalue())) as inp:
        video = inp.streams.video[0]
        avcc, ms = bytes(video.codec_context.extradata), float(video.time_base) * 1000
        packets = [(round(p.pts * ms), p.is_keyframe, bytes(p)) for p in inp.demux(video)
                   if p.size]
    first = min(pts for pts, _, _ in packets)
    return avcc, [(pts - first, key, payload) for pts, key, payload in packets]


def split_gops(packets: list[tuple[int, bool, bytes]]) -> list[list[tuple[int, bool, bytes]]]:
    """Packets in decode order, cut before each keyframe."""
    gops: list[list] = []
    for packet in packets:
        if packet[1] or not gops:
            gops.append([])
        gops[-1].append(packet)
    return gops
