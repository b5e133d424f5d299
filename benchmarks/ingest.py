"""PutMedia ingest benchmark: how fast kvslite makes fragments durable, next to the disk's floor.

What it measures (all traffic on 127.0.0.1, against a real `python -m kvslite serve`
subprocess with a temporary data dir):

  floor  The durability floor on the same filesystem, single-threaded: per fragment, write
         the cluster bytes to a new file + one fsync, then one SQLite row committed in WAL
         mode with synchronous=FULL (PERSISTED = blob fsync + committed row).
  A      One stream, unpaced: ~--mb MB of 1-s fragments sent back to back on one PutMedia
         connection. Throughput = body bytes / (first byte sent -> last PERSISTED ack).
  B      --streams concurrent streams, each paced like a camera (one 1-s fragment per second,
         starts staggered over one second) for --seconds.

Video: camera-like H.264 from libx264 (1280x720, 25 fps, 1-s closed GOPs, 2 B-frames,
CBR 2 Mbit/s, preset veryfast), 10 s encoded once, then reused with shifted absolute
timecodes. Each fragment is an unknown-size Cluster (as the KVS producer SDK sends it)
followed by an AWS_KINESISVIDEO_END_OF_FRAGMENT Tags element, so the server completes it on
its own last bytes; ack latency = PERSISTED ack received - sendall() of the fragment's last
byte returned. In A that includes queueing behind earlier fragments (the client runs ahead).
MB = 10^6 bytes.

Rerun:  .venv/bin/python benchmarks/ingest.py [--seconds 20] [--streams 20] [--mb 200]
                                              [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import av
import boto3
import numpy as np

from kvslite.media.mkv import (Cluster, Frame, StreamHeader, Track, write_cluster, write_header,
                               write_tags)
from kvslite.media.synthetic import render_frame
from common import Server, encode_h264, split_gops

W, H, FPS, GOP_S = 1280, 720, 25, 10
X264 = ("nal-hrd=cbr:bitrate=2000:vbv-maxrate=2000:vbv-bufsize=2000:keyint=25:min-keyint=25"
        ":scenecut=0:open-gop=0:bframes=2:b-adapt=0")
EOF_TAGS = write_tags([("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")])


def encode_gops() -> tuple[bytes, list[list[tuple[int, bool, bytes]]]]:
    """avcC + GOP_S one-second GOPs of (pts offset ms, keyframe, payload) in decode order."""
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
    frames = [Frame(1, timecode + off, key, payload) for off, key, payload in gop]
    return write_cluster(Cluster(timecode, frames), unknown_size=True)[0] + EOF_TAGS


def chunk(data: bytes) -> bytes:  # one HTTP/1.1 chunk
    return b"%x\r\n" % len(data) + data + b"\r\n"


class Upload:
    """A raw-socket PutMedia; a reader thread timestamps each PERSISTED ack as it arrives."""

    def __init__(self, port: int, stream: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = (f"POST /putMedia HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ntransfer-encoding: chunked"
                f"\r\nx-amzn-stream-name: {stream}\r\nx-amzn-fragment-timecode-type: ABSOLUTE\r\n"
                f"x-amzn-producer-start-timestamp: {time.time():.3f}\r\n"
                "x-amzn-fragment-acknowledgment-required: 1\r\n\r\n")
        self.sock.sendall(head.encode())
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


def pct(values, q):
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def floor_baseline(root: Path, frags: list[bytes], limit_s: float) -> dict:
    root.mkdir()
    db = sqlite3.connect(root / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE f (id INTEGER PRIMARY KEY, name TEXT, size INT, meta BLOB)")
    lat, total, t0 = [], 0, time.perf_counter()
    for k, data in enumerate(frags):
        t = time.perf_counter()
        with open(root / f"{k}.mkv", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO f (name, size, meta) VALUES (?, ?, ?)",
                   (f"{k}.mkv", len(data), b"\0" * 350))  # kvslite's frame index: 25 x 14 B
        db.execute("COMMIT")
        lat.append(time.perf_counter() - t)
        total += len(data)
        if t - t0 > limit_s:
            break
    elapsed = time.perf_counter() - t0
    db.close()
    return {"fragments": len(lat), "bytes": total, "seconds": round(elapsed, 2),
            "mb_per_s": round(total / elapsed / 1e6, 2), "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99)}


def scenario_a(port: int, header: bytes, gops, n: int, limit_s: float) -> dict:
    base = int(time.time() * 1000) - (n + 10) * 1000  # all in the past, 1 s apart
    frags = [(base + k * 1000, chunk(fragment(gops[k % len(gops)], base + k * 1000)))
             for k in range(n)]  # built before timing
    up, sent_at = Upload(port, "bench-a"), {}
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
            "ack_max_ms": pct(lat, 100), "errors": up.errors}


def scenario_b(port: int, header: bytes, gops, streams: int, seconds: int) -> dict:
    base = int(time.time() * 1000)
    frags = [chunk(fragment(gops[k % len(gops)], base + k * 1000)) for k in range(seconds)]
    results: list[dict] = [{} for _ in range(streams)]
    t0 = time.perf_counter() + 0.5

    def camera(i: int) -> None:
        r = results[i]
        r.update(sent={}, lat=[], errors=[], lag=0.0, bytes=0)
        try:
            up = Upload(port, f"bench-b-{i}")
            up.sock.sendall(chunk(header))
            r["bytes"] = len(header)
            for k, data in enumerate(frags):  # fragment k is complete 1 s after it starts
                due = t0 + i / streams + k + 1
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

    threads = [threading.Thread(target=camera, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    lat = [x for r in results for x in r.get("lat", [])]
    total = sum(r.get("bytes", 0) for r in results)
    first = min((r["first"] for r in results if "first" in r), default=t0)
    elapsed = max(r.get("last", t0) for r in results) - first  # first fragment -> last ack
    return {"streams": streams, "seconds": seconds,
            "fragments_sent": sum(len(r.get("sent", {})) for r in results),
            "fragments_persisted": len(lat), "bytes": total, "wall_s": round(elapsed, 2),
            "mb_per_s": round(total / elapsed / 1e6, 2) if elapsed > 0 else 0,
            "ack_p50_ms": pct(lat, 50), "ack_p99_ms": pct(lat, 99), "ack_max_ms": pct(lat, 100),
            "max_send_lag_ms": round(max(r.get("lag", 0) for r in results) * 1000, 1),
            "errors": [e for r in results for e in r.get("errors", [])]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=20, help="scenario B duration")
    ap.add_argument("--streams", type=int, default=20, help="scenario B concurrent streams")
    ap.add_argument("--mb", type=float, default=200, help="scenario A upload size (MB)")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "kvslite-ingest.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    avcc, gops = encode_gops()
    header = mkv_header(avcc)
    frag_size = sum(len(fragment(g, 0)) for g in gops) / len(gops)
    n_a = max(1, int(args.mb * 1e6 / frag_size))
    print(f"encoded {len(gops)} GOPs, {frag_size / 1e3:.0f} kB/fragment "
          f"({frag_size * 8 / 1e6:.2f} Mbit/s); scenario A: {n_a} fragments", flush=True)
    root = Path(tempfile.mkdtemp(prefix="kvslite-bench-"))  # floor and server: same filesystem
    try:
        floor = floor_baseline(root / "floor", [fragment(gops[k % len(gops)], k * 1000)
                                                for k in range(n_a)], limit_s=120)
        with Server(root, "--log-level", "warning") as server:
            kvs = boto3.client("kinesisvideo", endpoint_url=f"http://127.0.0.1:{server.port}",
                               region_name="us-east-1", aws_access_key_id="x",
                               aws_secret_access_key="x")
            for name in ["bench-a"] + [f"bench-b-{i}" for i in range(args.streams)]:
                kvs.create_stream(StreamName=name, DataRetentionInHours=24, MediaType="video/h264")
            cpu0 = server.cpu_s()
            a = scenario_a(server.port, header, gops, n_a, limit_s=300)
            cpu1 = server.cpu_s()
            b = scenario_b(server.port, header, gops, args.streams, args.seconds)
            a["server_cpu_s"] = round(cpu1 - cpu0, 1)
            b["server_cpu_s"] = round(server.cpu_s() - cpu1, 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "processor": platform.processor()},
        "video": {"width": W, "height": H, "fps": FPS, "fragment_bytes_avg": round(frag_size),
                  "x264_params": X264},
        "floor": floor, "A_one_stream_unpaced": a, "B_concurrent_paced": b,
        "A_ratio_to_floor": round(a["mb_per_s"] / floor["mb_per_s"], 3),
        "server_exit_code": server.proc.returncode, "server_log_warnings": server.problems[:50],
        "total_runtime_s": round(time.perf_counter() - started, 1),
    }
    print(f"\n{'':28}{'MB/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'frags':>7}{'errors':>7}")
    print(f"{'floor (fsync+SQLite FULL)':28}{floor['mb_per_s']:>8}{floor['p50_ms']:>9}"
          f"{floor['p99_ms']:>9}{'':>9}{floor['fragments']:>7}{'':>7}")
    for label, r in (("A: 1 stream, unpaced", a), (f"B: {args.streams} streams, paced", b)):
        print(f"{label:28}{r['mb_per_s']:>8}{r['ack_p50_ms']!s:>9}{r['ack_p99_ms']!s:>9}"
              f"{r['ack_max_ms']!s:>9}{r['fragments_persisted']:>7}{len(r['errors']):>7}")
    print(f"\nA / floor = {result['A_ratio_to_floor']}   B max send lag {b['max_send_lag_ms']} ms"
          f"   server log warnings: {len(server.problems)}   runtime {result['total_runtime_s']} s")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
