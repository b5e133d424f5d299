"""What the benchmarks share: a kvslite server process, camera-like H.264 cut into KVS
fragments, a raw-socket PutMedia that timestamps its acks, and two ingest scenarios (one
stream unpaced, many streams paced like cameras)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import av
import boto3
import numpy as np
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from kvslite.media.mkv import (Cluster, Frame, StreamHeader, Track, write_cluster, write_header,
                               write_tags)
from kvslite.media.synthetic import render_frame

PROBLEM_WORDS = ("WARN", "ERROR", "Trace", "Exception")


class Server:
    """Use as a context manager; afterwards `problems` holds the log's warnings and errors.
    `env` adds environment variables (PYTHONPATH=... runs another kvslite checkout)."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log_path, self.problems = root / "server.log", []
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvslite", "serve", "--port", str(self.port), "--data-dir",
             str(root / "data"), *args],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

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
        return process_cpu_s(self.proc.pid)

    def pin(self, cpus: str) -> None:
        """Run every thread of the server, and those it starts later, on `cpus` ("0", "0,1")."""
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(self.proc.pid)], check=True,
                       capture_output=True, timeout=10)

    def metrics(self) -> dict[str, float]:
        """GET /metrics as {'name{labels}': value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            lines = r.read().decode().splitlines()
        return {name: float(value) for name, value in
                (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def encode_h264(frames: Iterable[av.VideoFrame], fps: int, x264_params: str,
                preset: str = "veryfast") -> tuple[bytes, list[tuple[int, bool, bytes]]]:
    """avcC + (pts ms from the first frame, keyframe, payload) in decode order.

    Muxing to Matroska in memory and demuxing again yields avcC and length-prefixed NAL
    units, as a real producer sends; frame threading keeps one slice per frame (PyAV's
    slice-threading default would make x264 cut each frame into a slice per core).
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=fps,
                                options={"preset": preset, "x264-params": x264_params})
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


# -- Camera-like video as a KVS producer sends it -------------------------------------------

W, H, FPS, GOP_S = 1280, 720, 25, 10
X264 = ("nal-hrd=cbr:bitrate=2000:vbv-maxrate=2000:vbv-bufsize=2000:keyint=25:min-keyint=25"
        ":scenecut=0:open-gop=0:bframes=2:b-adapt=0")
EOF_TAGS = write_tags([("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")])


def encode_camera_gops() -> tuple[bytes, list[list[tuple[int, bool, bytes]]]]:
    """avcC + GOP_S one-second GOPs of (pts offset ms, keyframe, payload) in decode order:
    1280x720, 25 fps, 2 B-frames, CBR 2 Mbit/s, with sensor-like noise."""
    rng = np.random.default_rng(1)

    def frames():
        for i in range(GOP_S * FPS):
            noise = rng.integers(-8, 9, (H // 4, W // 4, 1), dtype=np.int16)  # sensor noise
            noise = noise.repeat(4, 0).repeat(4, 1)
            img = (render_frame(i, W, H, FPS) + noise).clip(0, 255).astype(np.uint8)
            yield av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")

    avcc, packets = encode_h264(frames(), FPS, X264)
    return avcc, [[(pts - gop[0][0], key, payload) for pts, key, payload in gop]
                  for gop in split_gops(packets)]


def mkv_header(avcc: bytes) -> bytes:
    track = Track(number=1, uid=1, track_type=1, codec_id="V_MPEG4/ISO/AVC", codec_private=avcc,
                  name="bench", width=W, height=H, default_duration_ns=1_000_000_000 // FPS)
    return write_header(StreamHeader(timecode_scale_ns=1_000_000, tracks=[track]))


def fragment(gop, timecode: int) -> bytes:
    """An unknown-size Cluster closed by END_OF_FRAGMENT tags, as the producer SDK sends it."""
    frames = [Frame(1, timecode + off, key, payload) for off, key, payload in gop]
    return write_cluster(Cluster(timecode, frames), unknown_size=True)[0] + EOF_TAGS


def chunk(data: bytes) -> bytes:  # one HTTP/1.1 chunk
    return b"%x\r\n" % len(data) + data + b"\r\n"


def pct(values, q):
    """The q-th percentile of `values` (seconds) in ms, or None for no values."""
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


# -- PutMedia ---------------------------------------------------------------------------------

class Upload:
    """A raw-socket PutMedia; a reader thread timestamps each PERSISTED ack as it arrives.
    With `key` = (access key id, secret) the request is SigV4-signed over the empty payload,
    as the producer SDK signs it."""

    def __init__(self, port: int, stream: str, key: tuple[str, str] | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        headers = {"host": f"127.0.0.1:{port}", "transfer-encoding": "chunked",
                   "x-amzn-stream-name": stream, "x-amzn-fragment-timecode-type": "ABSOLUTE",
                   "x-amzn-producer-start-timestamp": f"{time.time():.3f}",
                   "x-amzn-fragment-acknowledgment-required": "1"}
        if key is not None:
            headers = signed_put_media(f"http://127.0.0.1:{port}/putMedia", headers, key)
        head = "POST /putMedia HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n"
                                                         for k, v in headers.items())
        self.sock.sendall(head.encode() + b"\r\n")
        self.persisted: dict[int, float] = {}  # FragmentTimecode -> perf_counter at receipt
        self.errors: list[dict] = []
        self.cond, self.closed = threading.Condition(), False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        f = self.sock.makefile("rb")
        try:
            if int(f.readline().split()[1]) != 200:
                self.errors.append({"EventType": "HTTP", "body": f.read(4096).decode("replace")})
                return
            while f.readline() not in (b"\r\n", b""):
                pass
            pending = b""
            while size := int(f.readline().strip() or b"0", 16):
                pending += f.read(size)
                f.readline()
                *lines, pending = pending.split(b"\n")
                now = time.perf_counter()
                with self.cond:
                    for ack in (json.loads(line) for line in lines if line.strip()):
                        if ack["EventType"] == "PERSISTED":
                            self.persisted[ack["FragmentTimecode"]] = now
                        elif ack["EventType"] == "ERROR":
                            self.errors.append(ack)
                    self.cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def wait_persisted(self, count: int, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: len(self.persisted) >= count or self.errors or self.closed,
                               timeout)

    def finish(self) -> None:
        try:
            self.sock.sendall(b"0\r\n\r\n")
            self.reader.join(10)
        except OSError:
            pass
        self.sock.close()


def signed_put_media(url: str, headers: dict[str, str], key: tuple[str, str]) -> dict[str, str]:
    """`headers` plus botocore's SigV4 (service kinesisvideo, the empty payload)."""
    request = AWSRequest(method="POST", url=url, headers=headers, data=b"")
    SigV4Auth(Credentials(*key), "kinesisvideo", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def upload_unpaced(port: int, stream: str, header: bytes, gops, n: int, limit_s: float,
                   key: tuple[str, str] | None = None) -> dict:
    """n 1-s fragments (timecodes in the past, 1 s apart) back to back on one PutMedia.
    Throughput = body bytes / (first byte sent -> last PERSISTED ack); ack latency includes
    queueing behind earlier fragments, since the client runs ahead."""
    base = int(time.time() * 1000) - (n + 10) * 1000
    frags = [(base + k * 1000, chunk(fragment(gops[k % len(gops)], base + k * 1000)))
             for k in range(n)]  # built before timing
    up, sent_at = Upload(port, stream, key), {}
    t0 = time.perf_counter()
    up.sock.sendall(chunk(header))
    for tc, data in frags:
        if up.errors or up.closed or time.perf_counter() - t0 > limit_s:
            break
        up.sock.sendall(data)
        sent_at[tc] = time.perf_counter()
    up.wait_persisted(len(sent_at), timeout=120)
    up.finish()
    done = [tc for tc in sent_at if tc in up.persisted]
    total = len(header) + sum(len(d) for tc, d in frags if tc in sent_at)
    elapsed = max(up.persisted.values(), default=t0) - t0
    lat = [up.persisted[tc] - sent_at[tc] for tc in done]
    return {"fragments_sent": len(sent_at), "fragments_persisted": len(done), "bytes": total,
            "seconds": round(elapsed, 2),
            "mb_per_s": round(total / elapsed / 1e6, 2) if elapsed > 0 else 0,
            "ack_p50_ms": pct(lat, 50), "ack_p99_ms": pct(lat, 99),
            "ack_max_ms": pct(lat, 100), "errors": up.errors,
            "first_timecode_ms": base, "end_timecode_ms": base + len(sent_at) * 1000}


def paced_cameras(port: int, streams: list[str], header: bytes, gops, seconds: int,
                  key: tuple[str, str] | None = None) -> dict:
    """One PutMedia per stream, each paced like a camera (one 1-s fragment per second, starts
    staggered over one second) for `seconds`; ack latency from a fragment's last byte sent."""
    base = int(time.time() * 1000)
    frags = [chunk(fragment(gops[k % len(gops)], base + k * 1000)) for k in range(seconds)]
    results: list[dict] = [{} for _ in streams]
    t0 = time.perf_counter() + 0.5

    def camera(i: int) -> None:
        r = results[i]
        r.update(sent={}, lat=[], errors=[], lag=0.0, bytes=0)
        try:
            up = Upload(port, streams[i], key)
            up.sock.sendall(chunk(header))
            r["bytes"] = len(header)
            for k, data in enumerate(frags):  # fragment k is complete 1 s after it starts
                due = t0 + i / len(streams) + k + 1
                time.sleep(max(0.0, due - time.perf_counter()))
                if up.errors or up.closed:
                    break
                r["lag"] = max(r["lag"], time.perf_counter() - due)
                r.setdefault("first", time.perf_counter())
                up.sock.sendall(data)
                r["sent"][base + k * 1000] = time.perf_counter()
                r["bytes"] += len(data)
            up.wait_persisted(len(r["sent"]), timeout=60)
            up.finish()
            r["lat"] = [up.persisted[tc] - t for tc, t in r["sent"].items() if tc in up.persisted]
            r["last"] = max(up.persisted.values(), default=t0)
            r["errors"] = up.errors
        except OSError as e:
            r["errors"].append({"EventType": "SOCKET", "error": repr(e)})

    threads = [threading.Thread(target=camera, args=(i,), daemon=True)
               for i in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    lat = [x for r in results for x in r.get("lat", [])]
    total = sum(r.get("bytes", 0) for r in results)
    first = min((r["first"] for r in results if "first" in r), default=t0)
    elapsed = max(r.get("last", t0) for r in results) - first  # first fragment -> last ack
    return {"streams": len(streams), "seconds": seconds,
            "fragments_sent": sum(len(r.get("sent", {})) for r in results),
            "fragments_persisted": len(lat), "bytes": total, "wall_s": round(elapsed, 2),
            "mb_per_s": round(total / elapsed / 1e6, 2) if elapsed > 0 else 0,
            "ack_p50_ms": pct(lat, 50), "ack_p99_ms": pct(lat, 99), "ack_max_ms": pct(lat, 100),
            "max_send_lag_ms": round(max(r.get("lag", 0) for r in results) * 1000, 1),
            "errors": [e for r in results for e in r.get("errors", [])]}
