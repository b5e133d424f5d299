"""GetImages benchmark: kvslite next to `ffmpeg -vf fps` and an in-process PyAV decode floor.

Default mode, against a real `python -m kvslite serve --min-sampling-interval-ms 1
--image-cache-mb 0` (no rendered-image cache, so every round renders; free loopback port,
temporary data dir; all traffic on 127.0.0.1):
  archive  5 min of 1280x720 25 fps H.264 (libx264 veryfast, 2-s closed GOPs, 2 B-frames, one
           slice per frame, ABR 3 Mbit/s capped by VBV; synthetic.render_frame content at 1/4
           size, noise added, upscaled 4x), one KVS-style MKV (a cluster per GOP, absolute ms
           timecodes), cached under --cache keyed by its parameters; ingested with one PutMedia.
  kvslite  boto3 GetImages (PRODUCER_TIMESTAMP, full-size JPEG, JPEGQuality 80, MaxResults 100,
           NextToken paging) over the whole archive every 3 s, 1 s and 10 s.
  (a)      `ffmpeg -i in.mkv -vf fps=1/N -q:v 4 out%04d.jpg` as users run it (round=near: not
           frame-accurate), plus fps=1/N:round=up once.
  (b)      decode floor, in process: open + demux the MKV, per GOP decode only the decode-order
           prefix up to its last needed frame, to_ndarray(rgb24) + simplejpeg quality 80; two
           ways, the faster one counts: GOP after GOP with one frame-threaded decoder each
           (thread_count = CPUs), or GOPs in parallel on CPUs threads, one thread per decoder.
Rounds interleave kvslite and baselines; each one's fastest run is reported. Every image is
checked ("ok"): the frame index drawn in it must be the last frame with pts <= its sample time.
Ratios are time ratios, kvslite s / baseline s. RSS: the server's VmHWM, reset per phase.
--memory: one hour of 1920x1080 (a 10-s encode's GOPs repeated with shifted timestamps, streamed
into PutMedia), GetImages every 1 s over the hour, the server's peak RSS (target < 400 MB).
--limit: GetImages at the physical limit, parts A-E (--parts), on two more cached archives of
--limit-seconds (120) of 1280x720 25 fps, libx264 preset medium with its own B-frame choices
(3 B-frames, B-pyramid normal, adaptive placement; 2-s closed GOPs) and the same with bframes=0:
  A  B-frame archive every 3 s and 1 s: kvslite (--image-cache-mb 0) vs the floor (b) above,
     which decodes each needed GOP's whole decode-order prefix; the older kvslite (--old-src, or
     `git archive --old-rev` (4849df1), run with PYTHONPATH) on the same data; images of old
     and new compared byte for byte; frames fed to the decoders counted from the slice headers;
     and the floor fed only what kvslite feeds (skip floor: disposable pictures left out).
  B  the bframes=0 archive every 3 s and 1 s: new vs old.
  C  a server with the default cache (64 MB): the same GetImages (every 1 s) twice, second
     time vs first (a new JPEGQuality per round, so each round's first request renders).
  D  --memory's hour of 1080p on a server with the default cache: WidthPixels=160 every 10 s,
     img/s and peak RSS, then full size on the same samples for the cost of scaling; samples
     1 s into each 2-s GOP and on keyframes (a new JPEGQuality per round).
  E  A's request every 1 s with the server pinned to core 0, then cores 0,1 (taskset -a -p).
Targets: A new/floor <= 0.6, B new/old <= 1.05, C second/first <= 0.05.

Rerun:  .venv/bin/python benchmarks/getimages.py [--repeat 2] [--out FILE] [--cache DIR]
        .venv/bin/python benchmarks/getimages.py --memory [--hours 1] [--out FILE]
        .venv/bin/python benchmarks/getimages.py --limit [--parts ABCDE] [--repeat 5]
                                                 [--old-src DIR | --old-rev REV] [--out FILE]
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import simplejpeg

from kvslite.media.mkv import Cluster, Frame, StreamHeader, Track, write_cluster, write_header
from kvslite.media.nal import AVC, length_size, picture_role
from kvslite.media.synthetic import read_frame_index, render_frame
from common import Server, encode_h264, split_gops

FPS, GOP, FRAME_MS = 25, 50, 40
BASE_MS = 1_700_000_010_000  # a multiple of 30 s, so ffmpeg's fps grids line up with samples
TARGETS = {3: (0.30, 1.3), 1: (0.65, 1.3), 10: (0.06, 1.5)}  # interval s: (max k/a, max k/b)


def x264_params(kbps: int) -> str:
    return (f"keyint={GOP}:min-keyint={GOP}:scenecut=0:open-gop=0:bframes=2:b-adapt=0"
            f":sliced-threads=0:bitrate={kbps}:vbv-maxrate={kbps}:vbv-bufsize={2 * kbps}")


def encode(w: int, h: int, seconds: int, params: str, preset: str = "veryfast"):
    """avcC + GOPs: lists of (pts ms from the first frame, keyframe, payload) in decode order."""
    rng = np.random.default_rng(1)

    def frames():
        for i in range(seconds * FPS):
            small = render_frame(i, w // 4, h // 4, FPS).astype(np.int16)
            small += rng.integers(-6, 7, small.shape[:2] + (1,), dtype=np.int16)
            frame = av.VideoFrame.from_ndarray(small.clip(0, 255).astype(np.uint8), "rgb24")
            yield frame.reformat(w, h, "yuv420p", interpolation="POINT")  # 4x4 pixel blocks

    avcc, packets = encode_h264(frames(), FPS, params, preset)
    return avcc, split_gops(packets)


def mkv_parts(avcc: bytes, w: int, h: int, gops, count: int):
    """Header, then `count` clusters (GOPs repeated with shifted timestamps), BASE_MS on."""
    track = Track(number=1, uid=1, track_type=1, codec_id="V_MPEG4/ISO/AVC", codec_private=avcc,
                  name="bench", width=w, height=h, default_duration_ns=1_000_000_000 // FPS)
    yield write_header(StreamHeader(timecode_scale_ns=1_000_000, tracks=[track]))
    for k in range(count):
        shift, gop = BASE_MS + k // len(gops) * len(gops) * GOP * FRAME_MS, gops[k % len(gops)]
        frames = [Frame(1, shift + pts, key, data) for pts, key, data in gop]
        yield write_cluster(Cluster(shift + gop[0][0], frames))[0]


def archive(cache: Path, w: int, h: int, seconds: int, params: str,
            preset: str = "veryfast") -> Path:
    key = hashlib.sha256(repr((w, h, FPS, GOP, seconds, params, BASE_MS, av.__version__, "v1")
                              + ((preset,) if preset != "veryfast" else ())
                              ).encode()).hexdigest()[:12]
    path = cache / f"getimages-{w}x{h}-{seconds}s-{key}.mkv"
    if not path.exists():
        t0, avcc, gops = time.perf_counter(), *encode(w, h, seconds, params, preset)
        cache.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".part"), "wb") as f:
            f.writelines(mkv_parts(avcc, w, h, gops, len(gops)))
        path.with_suffix(".part").rename(path)
        print(f"encoded {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def frame_index(jpeg: bytes, w: int, h: int) -> int:
    """Read back the 16-bit frame index render_frame draws as a 2x8 grid of blocks."""
    # decode at 1/4 scale (the grid of the small render); thumbnails at their own size
    sw, sh = (w // 4, h // 4) if w >= 640 else (w, h)
    return read_frame_index(
        simplejpeg.decode_jpeg(jpeg, fastdct=True, min_width=sw, min_height=sh))


def accuracy(jpegs, interval_ms: int, w: int, h: int, clip_frames: int = 1 << 16,
             offset_ms: int = 0) -> int:
    """How many images show the last frame with pts <= their sample time (offset_ms + k x
    interval_ms from BASE_MS)."""
    return sum(frame_index(j, w, h) == (offset_ms + k * interval_ms) // FRAME_MS % clip_frames
               for k, j in enumerate(jpegs) if j)


def ingest(server: Server, parts, stream: str = "bench") -> dict:
    """CreateStream + one raw-socket PutMedia of `parts`; PERSISTED / ERROR acks, MB/s, RSS."""
    server.client("kinesisvideo").create_stream(StreamName=stream, DataRetentionInHours=24)
    server.reset_peak()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=120)
    sock.sendall((f"POST /putMedia HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n"
                  f"x-amzn-stream-name: {stream}\r\nx-amzn-fragment-timecode-type: ABSOLUTE\r\n"
                  f"x-amzn-producer-start-timestamp: {BASE_MS / 1000:.3f}\r\n\r\n").encode())
    acks: Counter = Counter()

    def read() -> None:  # chunked response: one JSON ack per line
        f, pending = sock.makefile("rb"), b""
        try:
            while f.readline() not in (b"\r\n", b""):
                pass
            while size := int(f.readline().strip() or b"0", 16):
                *lines, pending = (pending + f.read(size)).split(b"\n")
                f.readline()
                acks.update(json.loads(line)["EventType"] for line in lines if line.strip())
        except (OSError, ValueError) as e:
            acks[repr(e)] += 1

    reader, t0, sent = threading.Thread(target=read, daemon=True), time.perf_counter(), 0
    reader.start()
    for data in parts:
        sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
        sent += len(data)
    sock.sendall(b"0\r\n\r\n")
    reader.join(300)
    sock.close()
    s = time.perf_counter() - t0
    result = {"bytes": sent, "seconds": round(s, 1), "mb_per_s": round(sent / s / 1e6, 1),
              "acks": dict(acks), "peak_rss_mb": server.mb()}
    print(f"ingested {result}", flush=True)
    return result


def kvslite_images(server: Server, start_ms: int, end_ms: int, interval_ms: int,
                   stream: str = "bench", quality: int = 80, width: int | None = None) -> dict:
    client = server.client("kinesis-video-archived-media")
    params = dict(StreamName=stream, ImageSelectorType="PRODUCER_TIMESTAMP",
                  StartTimestamp=start_ms / 1000, EndTimestamp=end_ms / 1000,
                  SamplingInterval=interval_ms, Format="JPEG",
                  FormatConfig={"JPEGQuality": str(quality)}, MaxResults=100)
    if width:
        params["WidthPixels"] = width
    server.reset_peak()
    images, page_s, cpu0, t0 = [], [], server.cpu_s(), time.perf_counter()
    while True:
        page = client.get_images(**params)
        page_s.append(time.perf_counter() - t0 - sum(page_s))
        images += page["Images"]
        if not page.get("NextToken"):
            break
        params["NextToken"] = page["NextToken"]
    wall = time.perf_counter() - t0
    jpegs = [base64.b64decode(i["ImageContent"]) if i.get("ImageContent") else None
             for i in images]
    return {"seconds": round(wall, 3), "images": len(images), "pages": len(page_s),
            "images_per_s": round(len(images) / wall, 1), "max_page_s": round(max(page_s), 2),
            "server_cpu_s": round(server.cpu_s() - cpu0, 2), "peak_rss_mb": server.mb(),
            "errors": dict(Counter(i["Error"] for i in images if i.get("Error"))),
            "jpeg_kb_avg": round(sum(len(j or b"") for j in jpegs) / len(jpegs) / 1e3, 1),
            "_jpegs": jpegs}


def ffmpeg(path: Path, interval_s: int, tmp: Path, round_up: bool) -> dict:
    out = tmp / f"ffmpeg-{interval_s}-{int(round_up)}"
    out.mkdir()
    vf = ("fps=1" if interval_s == 1 else f"fps=1/{interval_s}") + ":round=up" * round_up
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(path), "-vf", vf,
           "-q:v", "4", str(out / "out%04d.jpg")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, timeout=600)
    wall = time.perf_counter() - t0
    jpegs = [p.read_bytes() for p in sorted(out.iterdir())]
    shutil.rmtree(out)
    return {"seconds": round(wall, 2), "images": len(jpegs), "rc": proc.returncode,
            "cmd": " ".join(cmd[:-1] + ["TMP/out%04d.jpg"]), "_jpegs": jpegs,
            "stderr": proc.stderr.decode(errors="replace")[-500:]}


def demux(path: Path):
    """extradata (avcC) + the packets GOP by GOP in decode order (pts in absolute ms)."""
    gops: list[list[av.Packet]] = []
    with av.open(str(path)) as container:
        vs = container.streams.video[0]
        extradata = vs.codec_context.extradata
        for packet in container.demux(vs):
            if packet.size:
                if packet.is_keyframe:
                    gops.append([])
                gops[-1].append(packet)  # time_base is 1 ms: pts are absolute ms
    return extradata, gops


def wanted_frames(gops, start_ms: int, end_ms: int, interval_ms: int) -> dict:
    """GOP number -> {pts shown: sample time}."""
    starts, wanted = [g[0].pts for g in gops], {}
    for t in range(start_ms, end_ms + 1, interval_ms):
        g = bisect.bisect_right(starts, t) - 1
        wanted.setdefault(g, {})[max(p.pts for p in gops[g] if p.pts <= t)] = t
    return wanted


def decode_floor(path: Path, start_ms: int, end_ms: int, interval_ms: int,
                 gop_parallel: bool, skip_disposable: bool = False) -> dict:
    """Frame threads in one decoder, GOP after GOP; or GOPs in parallel, one thread each.
    skip_disposable: leave the disposable pictures nobody asked for out, as kvslite does."""
    t0 = time.perf_counter()
    extradata, gops = demux(path)
    demux_s, wanted = time.perf_counter() - t0, wanted_frames(gops, start_ms, end_ms, interval_ms)
    size = length_size(AVC, extradata)

    def render(g: int) -> dict:
        ctx, shown = av.CodecContext.create("h264", "r"), wanted[g]
        ctx.extradata, ctx.thread_count = extradata, 1 if gop_parallel else os.cpu_count()
        if not gop_parallel:
            ctx.thread_type = "FRAME"
        last = max(i for i, p in enumerate(gops[g]) if p.pts in shown)  # in decode order
        fed = [p for p in gops[g][:last + 1] if not skip_disposable or p.pts in shown
               or not picture_role(AVC, size, bytes(p)).disposable]
        frames = [f for p in fed for f in ctx.decode(p)] + ctx.decode(None)
        return {shown[f.pts]: simplejpeg.encode_jpeg(f.to_ndarray(format="rgb24"), quality=80,
                                                     colorspace="RGB", colorsubsampling="420")
                for f in frames if f.pts in shown}

    images: dict = {}
    with ThreadPoolExecutor(os.cpu_count() if gop_parallel else 1) as pool:
        for rendered in pool.map(render, wanted):
            images.update(rendered)
    return {"seconds": round(time.perf_counter() - t0, 3), "demux_s": round(demux_s, 3),
            "images": len(images),
            "_jpegs": [images.get(t) for t in range(start_ms, end_ms + 1, interval_ms)]}


def run_default(args, root: Path) -> dict:
    w, h, seconds = 1280, 720, args.seconds
    path = archive(Path(args.cache), w, h, seconds, x264_params(3000))
    start, end = BASE_MS, BASE_MS + seconds * 1000 - 1
    runs: dict = {n: {} for n in TARGETS}  # interval -> name -> [result per round]

    def measure(n: int, name: str, fn) -> None:
        r = fn()
        r["ok"] = accuracy(r.pop("_jpegs"), n * 1000, w, h)
        runs[n].setdefault(name, []).append(r)
        print(f"{name} every {n} s: {r}", flush=True)

    load0 = os.getloadavg()
    # no rendered-image cache: every round must render, not repeat the first one's images
    with Server(root, "--min-sampling-interval-ms", "1", "--image-cache-mb", "0") as server:
        with open(path, "rb") as f:
            up = ingest(server, iter(lambda: f.read(1 << 20), b""))
        for rep in range(args.repeat):
            for n in TARGETS:
                measure(n, "kvslite", lambda: kvslite_images(server, start, end, n * 1000))
                measure(n, "ffmpeg", lambda: ffmpeg(path, n, root, False))
                measure(n, "floor_frame_threads",
                        lambda: decode_floor(path, start, end, n * 1000, False))
                measure(n, "floor_gop_parallel",
                        lambda: decode_floor(path, start, end, n * 1000, True))
                if rep == 0:
                    measure(n, "ffmpeg_round_up", lambda: ffmpeg(path, n, root, True))
        rss = {"VmHWM_mb": server.mb(), "VmRSS_mb": server.mb("VmRSS")}
    rows = {}
    for n, by_name in runs.items():  # each one's fastest run: the least disturbed
        row = rows[n] = {name: {**min(rs, key=lambda r: r["seconds"]),
                                "all_seconds": [r["seconds"] for r in rs]}
                         for name, rs in by_name.items()}
        b = min(("floor_frame_threads", "floor_gop_parallel"), key=lambda x: row[x]["seconds"])
        row["floor"] = {**row[b], "variant": b}  # (b): the faster of the two floors
        row["targets"] = dict(zip(("kvslite_over_ffmpeg", "kvslite_over_floor"), TARGETS[n]))
        row["kvslite_over_ffmpeg"] = round(row["kvslite"]["seconds"] / row["ffmpeg"]["seconds"], 3)
        row["kvslite_over_floor"] = round(row["kvslite"]["seconds"] / row["floor"]["seconds"], 3)
    print(f"\nfastest of {args.repeat} round(s); ok = images showing the last frame <= the sample "
          "time; ffmpeg = fps=1/N (round=near: up to N/2 late),\nup = fps=1/N:round=up (1 round); "
          "k/a, k/b = kvslite s / ffmpeg s, / floor s (target); RSS = server VmHWM in that run")
    print("every images ok err | kvslite s img/s | ffmpeg s ok |  up s  ok | floor s  ok | "
          "   k/a (target)     k/b (target) | RSS MB")
    for n, row in rows.items():
        k, a, u, b = (row[x] for x in ("kvslite", "ffmpeg", "ffmpeg_round_up", "floor"))
        print(f"{n:>4}s {k['images']:>6} {k['ok']:>3} {sum(k['errors'].values()):>3} | "
              f"{k['seconds']:>9} {k['images_per_s']:>5} | {a['seconds']:>8} {a['ok']:>3} | "
              f"{u['seconds']:>5} {u['ok']:>3} | {b['seconds']:>7} {b['ok']:>3} | "
              f"{row['kvslite_over_ffmpeg']:>6} ({TARGETS[n][0]:.2f}) "
              f"{row['kvslite_over_floor']:>8} ({TARGETS[n][1]:.2f}) | {k['peak_rss_mb']:>6}")
    return {"archive": {"path": str(path), "bytes": path.stat().st_size, "width": w,
                        "height": h, "fps": FPS, "gop": GOP, "seconds": seconds,
                        "x264": x264_params(3000)},
            "ingest": up, "intervals": rows, "repeat": args.repeat,
            "loadavg_before_after": [load0, os.getloadavg()], "server_rss_after_runs": rss,
            "server_problems": server.problems[:50], "server_exit": server.proc.returncode}


def run_memory(args, root: Path) -> dict:
    w, h, t0 = 1920, 1080, time.perf_counter()
    avcc, gops = encode(w, h, 10, x264_params(4000))
    count = round(args.hours * 3600 * FPS / GOP)
    print(f"encoded 10 s of 1080p in {time.perf_counter() - t0:.0f} s", flush=True)
    with Server(root, "--min-sampling-interval-ms", "1") as server:
        up = ingest(server, mkv_parts(avcc, w, h, gops, count))
        r = kvslite_images(server, BASE_MS, BASE_MS + count * GOP * FRAME_MS - 1, 1000)
        r["ok"] = accuracy(r.pop("_jpegs"), 1000, w, h, len(gops) * GOP)
        rss = {"VmHWM_mb": server.mb(), "VmRSS_mb": server.mb("VmRSS")}
    print(f"GetImages every 1 s over {args.hours} h of 1080p: {r}\nserver peak RSS: ingest "
          f"{up['peak_rss_mb']} MB, GetImages {r['peak_rss_mb']} MB (target < 400)", flush=True)
    return {"archive": {"width": w, "height": h, "hours": args.hours, "fragments": count,
                        "x264": x264_params(4000)},
            "ingest": up, "getimages_1s": r, "server_rss_after_runs": rss,
            "server_problems": server.problems[:50], "server_exit": server.proc.returncode}


# -- --limit: GetImages at the physical limit -------------------------------------------------

LIMIT_KBPS = 3000
LIMIT_INTERVALS = (3, 1)  # A and B: SamplingInterval in s
LIMIT_TARGETS = {"A": 0.6, "B": 1.05, "C": 0.05}  # new/floor, new/old, second/first at most
FLOORS = (("floor_frame_threads", False, False), ("floor_gop_parallel", True, False),
          ("skip_frame_threads", False, True), ("skip_gop_parallel", True, True))


def limit_params(bframes: int | None = None) -> str:
    """x264 preset medium's own B-frame choices (3 B-frames, B-pyramid normal, adaptive
    placement) unless `bframes` is given; 2-s closed GOPs, one slice per frame, ~3 Mbit/s."""
    return (f"keyint={GOP}:min-keyint={GOP}:scenecut=0:open-gop=0:sliced-threads=0"
            f":bitrate={LIMIT_KBPS}:vbv-maxrate={LIMIT_KBPS}:vbv-bufsize={2 * LIMIT_KBPS}"
            + ("" if bframes is None else f":bframes={bframes}"))


def slice_kind(payload: bytes, size: int) -> tuple[str, bool]:
    """("I" | "P" | "B", is a reference) of the first slice in a length-prefixed H.264 frame."""
    at = 0
    while at + size < len(payload):
        length = int.from_bytes(payload[at:at + size], "big")
        nal, at = payload[at + size:at + size + length], at + size + length
        if nal and 1 <= nal[0] & 0x1F <= 5:
            bits, pos, values = "".join(f"{b:08b}" for b in nal[1:9]), 0, []
            for _ in range(2):  # ue(v) first_mb_in_slice, ue(v) slice_type
                zeros = bits.index("1", pos) - pos
                values.append(int(bits[pos + zeros:pos + 2 * zeros + 1], 2) - 1)
                pos += 2 * zeros + 1
            return ("PBI"[values[1] % 5] if values[1] % 5 < 3 else "?"), nal[0] >> 5 & 3 != 0
    return "?", True


def picture_mix(path: Path) -> dict:
    """Picture types in decode order: B-frames, how many are references (B-pyramid), runs of
    consecutive B-frames by length, and the disposable share (nal_ref_idc 0)."""
    extradata, gops = demux(path)
    size = length_size(AVC, extradata)
    kinds = [slice_kind(bytes(p), size) for g in gops for p in g]
    runs: Counter = Counter()
    run = 0
    for kind, _ in kinds + [("I", True)]:
        if kind == "B":
            run += 1
        elif run:
            runs[run], run = runs[run] + 1, 0
    return {"frames": len(kinds), "bytes": path.stat().st_size,
            **{k: sum(x == k for x, _ in kinds) for k in "IPB"},
            "b_reference": sum(k == "B" and ref for k, ref in kinds),
            "disposable": sum(not ref for _, ref in kinds),
            "b_runs": {str(k): v for k, v in sorted(runs.items())}}


def frames_fed(path: Path, start_ms: int, end_ms: int, interval_ms: int) -> dict:
    """Frames fed to decoders: each needed GOP's decode-order prefix up to its last wanted
    frame (today's floor, the older kvslite), and that without the disposable pictures
    nobody asked for (kvslite since 7d63917)."""
    extradata, gops = demux(path)
    size, prefix, skipped = length_size(AVC, extradata), 0, 0
    for g, shown in wanted_frames(gops, start_ms, end_ms, interval_ms).items():
        last = max(i for i, p in enumerate(gops[g]) if p.pts in shown)
        prefix += last + 1
        skipped += sum(p.pts not in shown and picture_role(AVC, size, bytes(p)).disposable
                       for p in gops[g][:last + 1])
    return {"full_prefix": prefix, "without_disposable": prefix - skipped}


def file_chunks(path: Path):
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(1 << 20), b"")


def subdir(root: Path, name: str) -> Path:
    (root / name).mkdir()
    return root / name


def old_source(args, root: Path) -> tuple[Path, str]:
    """The older kvslite's src/ (--old-src, else `git archive OLD_REV src` unpacked under
    root) and its commit."""
    repo = Path(__file__).resolve().parents[1]
    if args.old_src:
        src = Path(args.old_src).resolve()
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        return src, head.stdout.strip() or "unknown"
    out = subdir(root, "old-src")
    tar = subprocess.run(["git", "-C", str(repo), "archive", args.old_rev, "src"],
                         check=True, capture_output=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=tar, check=True, timeout=60)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", args.old_rev], check=True,
                            capture_output=True, text=True, timeout=30).stdout.strip()
    return out / "src", commit


def imported_from(src: Path) -> str:
    """Where `python -m kvslite` with PYTHONPATH=src gets kvslite from."""
    return subprocess.run([sys.executable, "-c", "import kvslite; print(kvslite.__file__)"],
                          env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip()


def cache_counts(server: Server, run) -> dict:
    """run(), plus the rendered-image cache's hits and misses meanwhile (/metrics)."""
    name = 'kvslite_image_cache_total{result="%s"}'
    before = server.metrics()
    r = run()
    after = server.metrics()
    r.update({f"cache_{x}": int(after.get(name % label, 0) - before.get(name % label, 0))
              for x, label in (("hits", "hit"), ("misses", "miss"))},
             cache_mb=round(after.get("kvslite_image_cache_bytes", 0) / 2 ** 20, 2))
    return r


class Rounds:
    """Every run by key, its images checked against the frame index drawn in them ("ok") and
    their digests kept; `fastest(key)` is the least disturbed run."""

    def __init__(self) -> None:
        self.runs: dict[str, list[dict]] = {}

    def add(self, key: str, r: dict, check) -> dict:
        jpegs = r.pop("_jpegs")
        r["ok"] = check(jpegs)
        r["_digests"] = [hashlib.sha256(j).digest() if j else None for j in jpegs]
        self.runs.setdefault(key, []).append(r)
        print(f"{key}: { {k: v for k, v in r.items() if not k.startswith('_')} }", flush=True)
        return r

    def fastest(self, key: str) -> dict:
        best = min(self.runs[key], key=lambda r: r["seconds"])
        return {**{k: v for k, v in best.items() if not k.startswith("_")},
                "all_seconds": [r["seconds"] for r in self.runs[key]]}

    def identical(self, a: str, b: str) -> list[int]:
        """Per round, the samples that got the same bytes under `a` as under `b`."""
        return [sum(x is not None and x == y for x, y in zip(ra["_digests"], rb["_digests"]))
                for ra, rb in zip(self.runs[a], self.runs[b])]


def limit_old_new(args, root: Path, archives: dict, parts: set, rounds: Rounds) -> dict:
    """A, B and E on servers without the rendered-image cache: the current kvslite and (A,
    B) the older one, each holding the same archives."""
    w, h, start, end = 1280, 720, BASE_MS, BASE_MS + args.limit_seconds * 1000 - 1
    flags, info = ("--min-sampling-interval-ms", "1"), {}
    servers: dict[str, Server] = {}
    with contextlib.ExitStack() as stack:
        servers["new"] = stack.enter_context(
            Server(subdir(root, "new"), *flags, "--image-cache-mb", "0"))
        if parts & {"A", "B"}:
            src, commit = old_source(args, root)
            info["old_kvslite"] = {"src": str(src), "commit": commit,
                                   "imports": imported_from(src)}
            print(f"older kvslite: {info['old_kvslite']}", flush=True)
            # the older server has no rendered-image cache (nor --image-cache-mb)
            servers["old"] = stack.enter_context(
                Server(subdir(root, "old"), *flags, env={"PYTHONPATH": str(src)}))
        info["ingest"] = {f"{name}/{stream}": ingest(server, file_chunks(path), stream)
                          for name, server in servers.items() for stream, path in archives.items()}
        streams = [s for s, part in (("bframes", "A"), ("camera", "B")) if part in parts]
        all_cpus = ",".join(map(str, sorted(os.sched_getaffinity(servers["new"].proc.pid))))
        for rep in range(args.repeat):
            order = list(servers)[::-1 if rep % 2 else 1]  # alternate who goes first
            for stream in streams:
                for n in LIMIT_INTERVALS:
                    def check(jpegs, n=n):
                        return accuracy(jpegs, n * 1000, w, h)
                    for name in order:
                        rounds.add(f"{stream}/{n}s/{name}",
                                   kvslite_images(servers[name], start, end, n * 1000, stream),
                                   check)
                    for variant, parallel, skip in FLOORS:
                        if stream == "bframes":
                            rounds.add(f"bframes/{n}s/{variant}",
                                       decode_floor(archives[stream], start, end, n * 1000,
                                                    parallel, skip), check)
            if "E" in parts:
                for cpus in ("0", "0,1")[::-1 if rep % 2 else 1]:
                    servers["new"].pin(cpus)
                    rounds.add(f"cores/{cpus}",
                               kvslite_images(servers["new"], start, end, 1000, "bframes"),
                               lambda jpegs: accuracy(jpegs, 1000, w, h))
                servers["new"].pin(all_cpus)
    info["server_problems"] = {name: s.problems[:20] for name, s in servers.items()}
    info["server_exit"] = {name: s.proc.returncode for name, s in servers.items()}
    return info


def limit_cache(args, root: Path, path: Path, rounds: Rounds) -> dict:
    """C: the same GetImages twice on a server with the default rendered-image cache."""
    w, h, end = 1280, 720, BASE_MS + args.limit_seconds * 1000 - 1
    with Server(subdir(root, "cache"), "--min-sampling-interval-ms", "1") as server:
        up = ingest(server, file_chunks(path), "bframes")
        for rep in range(args.repeat):
            quality = 80 - rep  # new cache keys each round, so its first request renders
            for which in ("first", "second"):
                rounds.add(f"cache/{which}", cache_counts(server, lambda: kvslite_images(
                    server, BASE_MS, end, 1000, "bframes", quality)),
                    lambda jpegs: accuracy(jpegs, 1000, w, h))
    return {"ingest": up, "server_problems": server.problems[:20],
            "server_exit": server.proc.returncode}


def limit_thumbnails(args, root: Path, rounds: Rounds) -> dict:
    """D: --memory's hour of 1080p, 160-px thumbnails every 10 s with the default cache, and
    full-size images of the same samples; samples 1 s into each 2-s GOP and on keyframes."""
    w, h, t0 = 1920, 1080, time.perf_counter()
    avcc, gops = encode(w, h, 10, x264_params(4000))
    encode_s, count = round(time.perf_counter() - t0, 1), round(args.hours * 3600 * FPS / GOP)
    print(f"encoded 10 s of 1080p in {encode_s} s", flush=True)
    end, clip, info = BASE_MS + count * GOP * FRAME_MS - 1, len(gops) * GOP, {}
    with Server(subdir(root, "thumbs"), "--min-sampling-interval-ms", "1") as server:
        info["ingest"] = ingest(server, mkv_parts(avcc, w, h, gops, count))
        for rep in range(args.repeat):
            quality = 80 - rep  # new cache keys each round: every run renders
            for offset, where in ((1000, "mid_gop"), (0, "keyframes")):
                for width in (160, None)[::-1 if rep % 2 else 1]:
                    size = (160, round(h * 160 / w)) if width else (w, h)
                    r = rounds.add(f"thumbs/{where}/{width or 'full'}", cache_counts(
                        server, lambda: kvslite_images(server, BASE_MS + offset, end, 10_000,
                                                       quality=quality, width=width)),
                        lambda jpegs: accuracy(jpegs, 10_000, *size, clip, offset))
                    if "first_thumbnails" not in info:  # nothing but thumbnails cached yet
                        info["first_thumbnails"] = {k: r[k] for k in (
                            "seconds", "images", "images_per_s", "peak_rss_mb", "cache_mb",
                            "jpeg_kb_avg", "ok")}
        info["server_rss_after_runs"] = {"VmHWM_mb": server.mb(), "VmRSS_mb": server.mb("VmRSS")}
        info["cache_mb_after_runs"] = round(
            server.metrics().get("kvslite_image_cache_bytes", 0) / 2 ** 20, 1)
    info.update(encode_s=encode_s, fragments=count, x264=x264_params(4000),
                server_problems=server.problems[:20], server_exit=server.proc.returncode)
    return info


def ratio(a: dict, b: dict) -> float:
    return round(a["seconds"] / b["seconds"], 3)


def run_limit(args, root: Path) -> dict:
    parts, cache, rounds = set(args.parts.upper()), Path(args.cache), Rounds()
    result: dict = {"parts": "".join(sorted(parts)), "repeat": args.repeat, "phase_s": {},
                    "archives": {}, "loadavg_before": os.getloadavg()}
    w, h, s = 1280, 720, args.limit_seconds
    start, end = BASE_MS, BASE_MS + s * 1000 - 1
    archives: dict[str, Path] = {}
    t0 = time.perf_counter()
    if parts & set("ACE"):
        archives["bframes"] = archive(cache, w, h, s, limit_params(), "medium")
    if "B" in parts:
        archives["camera"] = archive(cache, w, h, s, limit_params(0), "medium")
    for name, path in archives.items():
        result["archives"][name] = {"path": str(path), "width": w, "height": h, "fps": FPS,
                                    "gop": GOP, "seconds": s, "preset": "medium",
                                    "x264": limit_params(0 if name == "camera" else None),
                                    **picture_mix(path)}
        print(f"{name}: {result['archives'][name]}", flush=True)
    result["phase_s"]["archives"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    if parts & set("ABE"):
        result["old_new"] = limit_old_new(args, root, {k: v for k, v in archives.items()
                                                       if k != "bframes" or parts & set("AE")},
                                          parts, rounds)
        result["phase_s"]["A_B_E"] = round(time.perf_counter() - t0, 1)
    if "A" in parts:
        result["A"] = {}
        for n in LIMIT_INTERVALS:
            key = f"bframes/{n}s/"
            row = {x: rounds.fastest(key + x) for x in ("new", "old", *(f[0] for f in FLOORS))}
            for name, variants in (("floor", FLOORS[:2]), ("skip_floor", FLOORS[2:])):
                b = min((v[0] for v in variants), key=lambda x: row[x]["seconds"])
                row[name] = {**row[b], "variant": b}  # the faster way
            row.update(new_over_floor=ratio(row["new"], row["floor"]),
                       old_over_floor=ratio(row["old"], row["floor"]),
                       skip_floor_over_floor=ratio(row["skip_floor"], row["floor"]),
                       new_over_skip_floor=ratio(row["new"], row["skip_floor"]),
                       new_over_old=ratio(row["new"], row["old"]), target=LIMIT_TARGETS["A"],
                       identical_per_round=rounds.identical(key + "new", key + "old"),
                       frames_fed=frames_fed(archives["bframes"], start, end, n * 1000))
            result["A"][f"{n}s"] = row
    if "B" in parts:
        result["B"] = {}
        for n in LIMIT_INTERVALS:
            key = f"camera/{n}s/"
            row = {x: rounds.fastest(key + x) for x in ("new", "old")}
            row.update(new_over_old=ratio(row["new"], row["old"]), target=LIMIT_TARGETS["B"],
                       identical_per_round=rounds.identical(key + "new", key + "old"))
            result["B"][f"{n}s"] = row
    if "E" in parts:
        one, two = rounds.fastest("cores/0"), rounds.fastest("cores/0,1")
        result["E"] = {"request": "B-frame archive every 1 s, full-size JPEG q80, no cache",
                       "1_core": one, "2_cores": two, "speedup": ratio(one, two)}

    if "C" in parts:
        t0 = time.perf_counter()
        result["C"] = limit_cache(args, root, archives["bframes"], rounds)
        first, second = rounds.fastest("cache/first"), rounds.fastest("cache/second")
        result["C"].update(first=first, second=second, second_over_first=ratio(second, first),
                           target=LIMIT_TARGETS["C"],
                           identical_per_round=rounds.identical("cache/first", "cache/second"))
        result["phase_s"]["C"] = round(time.perf_counter() - t0, 1)

    if "D" in parts:
        t0 = time.perf_counter()
        result["D"] = limit_thumbnails(args, root, rounds)
        for where in ("mid_gop", "keyframes"):
            row = result["D"][where] = {x: rounds.fastest(f"thumbs/{where}/{x}")
                                        for x in ("160", "full")}
            for x in ("160", "full"):
                r = row[x]
                r["ms_per_image"] = round(r["seconds"] / r["images"] * 1000, 1)
                r["server_cpu_ms_per_image"] = round(r["server_cpu_s"] / r["images"] * 1000, 1)
            row["thumbnail_over_full"] = ratio(row["160"], row["full"])
        result["phase_s"]["D"] = round(time.perf_counter() - t0, 1)
    result["loadavg_after"] = os.getloadavg()
    print_limit(result)
    return result


def print_limit(r: dict) -> None:
    print(f"\nfastest of {r['repeat']} interleaved round(s); ok = images showing the last frame "
          "<= the sample time; new = this kvslite, old = the older one; no cache unless said")
    if "A" in r:
        print("A  B-frame content (x264 medium), kvslite vs the full-prefix floor "
              f"(target new/floor <= {LIMIT_TARGETS['A']})\n"
              "skip floor = the floor fed what kvslite feeds (disposable pictures left out)\n"
              "every images ok(new/old/floor/skip) |  new s  old s floor s  skip s | new/floor "
              "old/floor skip/floor new/old | same bytes new=old | frames decoded floor -> new")
        for n, row in r["A"].items():
            k, o, b, sk = row["new"], row["old"], row["floor"], row["skip_floor"]
            fed = row["frames_fed"]
            ok = f"{k['ok']}/{o['ok']}/{b['ok']}/{sk['ok']}"
            print(f"{n:>5} {k['images']:>6} {ok:>19}    | "
                  f"{k['seconds']:>6} {o['seconds']:>6} {b['seconds']:>7} {sk['seconds']:>7} | "
                  f"{row['new_over_floor']:>9} {row['old_over_floor']:>9} "
                  f"{row['skip_floor_over_floor']:>10} {row['new_over_old']:>7} | "
                  f"{min(row['identical_per_round'])} of {k['images']} every round | "
                  f"{fed['full_prefix']} -> {fed['without_disposable']}")
    if "B" in r:
        print(f"B  camera-like, no B-frames: new vs old (target new/old <= {LIMIT_TARGETS['B']})\n"
              "every images ok(new/old) |  new s  old s | new/old | same bytes new=old")
        for n, row in r["B"].items():
            k, o = row["new"], row["old"]
            ok = f"{k['ok']}/{o['ok']}"
            print(f"{n:>5} {k['images']:>6} {ok:>12}    | {k['seconds']:>6} "
                  f"{o['seconds']:>6} | {row['new_over_old']:>7} | "
                  f"{min(row['identical_per_round'])} of {k['images']} every round")
    if "C" in r:
        c, f, s = r["C"], r["C"]["first"], r["C"]["second"]
        print(f"C  the same GetImages twice, cache 64 MB (target second/first <= "
              f"{LIMIT_TARGETS['C']}): {f['images']} images, first {f['seconds']} s "
              f"({f['cache_misses']} misses), second {s['seconds']} s ({s['cache_hits']} hits), "
              f"ratio {c['second_over_first']}, same bytes {min(c['identical_per_round'])}, "
              f"ok {f['ok']}/{s['ok']}")
    if "D" in r:
        d, t = r["D"], r["D"]["first_thumbnails"]
        print(f"D  160-px thumbnails of 1080p every 10 s over {d['fragments'] * 2 / 3600:g} h, "
              f"cache 64 MB: {t['images_per_s']} img/s (first run), server peak RSS "
              f"{t['peak_rss_mb']} MB, cache {t['cache_mb']} MB; after full-size runs too: RSS "
              f"{d['server_rss_after_runs']['VmHWM_mb']} MB, cache {d['cache_mb_after_runs']} MB")
        print("samples    |  160 px: s img/s ms/img cpu ms/img ok | full: s img/s ms/img "
              "cpu ms/img ok | 160/full")
        for where in ("mid_gop", "keyframes"):
            a, b = d[where]["160"], d[where]["full"]
            print(f"{where:<10} | {a['seconds']:>8} {a['images_per_s']:>5} {a['ms_per_image']:>6} "
                  f"{a['server_cpu_ms_per_image']:>10} {a['ok']:>3} | {b['seconds']:>7} "
                  f"{b['images_per_s']:>5} {b['ms_per_image']:>6} "
                  f"{b['server_cpu_ms_per_image']:>10} {b['ok']:>3} | "
                  f"{d[where]['thumbnail_over_full']}")
    if "E" in r:
        e = r["E"]
        print(f"E  {e['request']}: 1 core {e['1_core']['seconds']} s "
              f"({e['1_core']['images_per_s']} img/s), 2 cores {e['2_cores']['seconds']} s "
              f"({e['2_cores']['images_per_s']} img/s), speed-up {e['speedup']}")
    print(f"phases (s): {r['phase_s']}")


def machine() -> dict:
    ff = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=10)
    cpu = [x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name")]
    return {"cpu_count": os.cpu_count(), "cpu": cpu[0] if cpu else platform.processor(),
            "python": platform.python_version(), "platform": platform.platform(),
            "pyav": av.__version__, "ffmpeg": ff.stdout.split("\n")[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--memory", action="store_true", help="one-hour 1080p peak-RSS mode")
    ap.add_argument("--limit", action="store_true",
                    help="GetImages at the physical limit: parts A-E (see the docstring)")
    ap.add_argument("--parts", default="ABCDE", help="--limit: which parts to run")
    ap.add_argument("--limit-seconds", type=int, default=120,
                    help="--limit: A-C, E archive length")
    ap.add_argument("--old-src", default=None,
                    help="--limit: the older kvslite's src/ (e.g. a git worktree's)")
    ap.add_argument("--old-rev", default="4849df1",
                    help="--limit without --old-src: git archive this revision's src/")
    ap.add_argument("--hours", type=float, default=1.0, help="--memory, --limit D: archive length")
    ap.add_argument("--seconds", type=int, default=300, help="default mode: archive length")
    ap.add_argument("--repeat", type=int, default=2, help="rounds; the fastest run is reported")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "kvslite-bench-cache"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    started, root = time.perf_counter(), Path(tempfile.mkdtemp(prefix="kvslite-getimages-"))
    try:
        result = (run_memory if args.memory else run_limit if args.limit else run_default)(
            args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result.update(machine=machine(), total_runtime_s=round(time.perf_counter() - started, 1))
    mode = "-memory" if args.memory else "-limit" if args.limit else ""
    out = args.out or os.path.join(tempfile.gettempdir(), f"kvslite-getimages{mode}.json")
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    problems = result.get("server_problems", [])
    print(f"server log problems: {len(problems)}   runtime "
          f"{result['total_runtime_s']} s   wrote {out}")


if __name__ == "__main__":
    main()
