"""`kvslite demo`: a server, a stream with a minute of video in it, and images out of it.

It starts kvslite in this process on embedded defaults, creates the stream `kvslite-demo`
(or reuses it), encodes synthetic H.264 video with a clock and frame counter drawn in every
frame, uploads it with PutMedia through the Python producer (timestamps ending now), saves
the images GetImages returns every 3 s into a directory, prints the boto3 snippet that does
the same, and keeps serving until Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path

import click

from kvslite.server.config import Settings

STREAM = "kvslite-demo"
RETENTION_HOURS = 24
INTERVAL_MS = 3000
# 640x360 takes ~17 s per minute of video to render and encode on 2 cores; 320x240 ~7 s
# (about 5 s split over two threads), so the demo uses 320x240.
WIDTH, HEIGHT, FPS = 320, 240, 25
CREDENTIALS = ("any", "any")  # kvslite on loopback without credentials accepts any signature
REGION = "us-east-1"


def encode_demo_video(seconds: int, *, width: int = WIDTH, height: int = HEIGHT,
                      fps: int = FPS, workers: int | None = None):
    """Synthetic H.264 (1 s GOPs, B-frames), encoded in whole-second slices on a few threads
    and joined: x264 writes the same avcC for every slice, and each slice starts with a
    keyframe, so the result is one continuous video."""
    from kvslite.media import synthetic

    seconds = max(1, int(seconds))
    workers = max(1, min(workers or os.cpu_count() or 1, 4, math.ceil(seconds / 5)))
    cuts = [seconds * i // workers for i in range(workers + 1)]
    slices = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]

    def encode(span):
        a, b = span
        return synthetic.encode_video("h264", width=width, height=height, fps=fps,
                                      seconds=b - a, gop=fps, bframes=2, start_index=a * fps)

    if len(slices) == 1:
        return encode(slices[0])
    parts = _encode_in_threads(encode, slices)
    if any(p.codec_private != parts[0].codec_private for p in parts):
        return encode((0, seconds))  # not expected; stay correct anyway
    return _joined(parts, [a for a, _ in slices])


def _encode_in_threads(encode, slices: list[tuple[int, int]]) -> list:
    """[encode(s) for s in slices], one thread per slice; the first failure is re-raised.
    Daemon threads joined in short steps, so Ctrl-C is not held up by the encoders."""
    parts: list = [None] * len(slices)
    failures: list[BaseException] = []

    def encode_slice(i: int) -> None:
        try:
            parts[i] = encode(slices[i])
        except BaseException as e:  # noqa: BLE001 - re-raised below
            failures.append(e)

    threads = [threading.Thread(target=encode_slice, args=(i,), daemon=True,
                                name=f"kvslite-encode-{i}") for i in range(len(slices))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.1)
    if failures:
        raise failures[0]
    return parts


def _joined(parts: list, start_seconds: list[int]):
    """The slices as one video: each slice's timestamps shifted by the second it starts at."""
    packets = []
    for start, part in zip(start_seconds, parts):
        packets += [(pts + start * 1000, key, data) for pts, key, data in part.packets]
    return dataclasses.replace(parts[0], packets=packets, start_index=0, _decoded=None)


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so a busy port is reported before any work."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def snippet(endpoint: str, stream: str, start_ms: int, end_ms: int, interval_ms: int) -> str:
    """Copy-pasteable boto3 code for the GetImages call the demo made."""
    from kvslite.client.image_fetcher import format_time

    key, secret = CREDENTIALS
    return f'''import base64
import boto3

kvs = boto3.client("kinesisvideo", endpoint_url="{endpoint}", region_name="{REGION}",
                   aws_access_key_id="{key}", aws_secret_access_key="{secret}")
endpoint = kvs.get_data_endpoint(StreamName="{stream}", APIName="GET_IMAGES")["DataEndpoint"]
archive = boto3.client("kinesis-video-archived-media", endpoint_url=endpoint,
                       region_name="{REGION}", aws_access_key_id="{key}",
                       aws_secret_access_key="{secret}")
pages = archive.get_paginator("get_images").paginate(
    StreamName="{stream}", ImageSelectorType="PRODUCER_TIMESTAMP",
    StartTimestamp="{format_time(start_ms)}", EndTimestamp="{format_time(end_ms)}",
    SamplingInterval={interval_ms}, Format="JPEG", FormatConfig={{"JPEGQuality": "80"}})
for page in pages:
    for image in page["Images"]:
        jpeg = base64.b64decode(image.get("ImageContent") or "")
        print(image["TimeStamp"].isoformat(), image.get("Error") or f"{{len(jpeg)}} bytes")'''


def _ensure_stream(endpoint: str) -> str:
    import boto3
    from botocore.exceptions import ClientError

    kvs = boto3.client("kinesisvideo", endpoint_url=endpoint, region_name=REGION,
                       aws_access_key_id=CREDENTIALS[0], aws_secret_access_key=CREDENTIALS[1])
    try:
        info = kvs.describe_stream(StreamName=STREAM)["StreamInfo"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
        kvs.create_stream(StreamName=STREAM, DataRetentionInHours=RETENTION_HOURS,
                          MediaType="video/h264")
        return f"stream {STREAM}: created (retention {RETENTION_HOURS} h)"
    if not info.get("DataRetentionInHours"):
        kvs.update_data_retention(StreamName=STREAM, CurrentVersion=info["Version"],
                                  Operation="INCREASE_DATA_RETENTION",
                                  DataRetentionChangeInHours=RETENTION_HOURS)
        return f"stream {STREAM}: exists, retention raised to {RETENTION_HOURS} h"
    return f"stream {STREAM}: exists, reusing it"


def _demo(endpoint: str, video, out_dir: Path, stop: threading.Event) -> None:
    """Create the stream, ingest, fetch images, print the snippet (runs while serving).
    Once `stop` is set (Ctrl-C) it returns at the next step without saying more."""
    from kvslite.client.image_fetcher import format_time

    click.echo(_ensure_stream(endpoint))
    start_ms = round(time.time() * 1000) - video.duration_ms  # the last frame ends now
    end_ms = start_ms + video.duration_ms - 1                  # the last ms the video covers
    put = _upload(endpoint, video, start_ms, stop)
    if stop.is_set():
        return
    click.echo(f"PutMedia: {put.fragments_persisted} fragments persisted, "
               f"{put.bytes_sent / 1e6:.2f} MB in {put.elapsed_s:.1f} s, producer time "
               f"{format_time(start_ms)} .. {format_time(start_ms + video.duration_ms)}")
    click.echo(f"GetImages every {INTERVAL_MS // 1000} s -> {out_dir}/")
    summary = _fetch_demo_images(endpoint, start_ms, end_ms, out_dir)
    if stop.is_set():
        return
    _echo_images_summary(summary)
    _echo_how_to_repeat(endpoint, start_ms, end_ms, out_dir)


def _upload(endpoint: str, video, start_ms: int, stop: threading.Event):
    """PutMedia the video through the Python producer, its first frame at start_ms."""
    from kvslite.client.producer import Producer, VideoFormat

    producer = Producer(STREAM, endpoint_url=endpoint, region=REGION, credentials=CREDENTIALS)
    fmt = VideoFormat("h264", codec_private=video.codec_private, width=video.width,
                      height=video.height, frame_rate=video.fps, name="kvslite demo clock")
    return producer.put(video.packets, fmt, start_timestamp=start_ms, stop=stop)


def _fetch_demo_images(endpoint: str, start_ms: int, end_ms: int, out_dir: Path):
    from kvslite.client.image_fetcher import archived_media_client, fetch_images

    client = archived_media_client(STREAM, endpoint_url=endpoint, region=REGION)
    return fetch_images(client, STREAM, start_ms, end_ms, out_dir, interval_ms=INTERVAL_MS,
                        image_format="jpeg", quality=80, progress=sys.stderr.isatty())


def _echo_images_summary(summary) -> None:
    from kvslite.client.image_fetcher import format_time

    names = sorted(p.name for p in summary.paths)
    span = f" ({names[0]} .. {names[-1]})" if names else ""
    click.echo(f"GetImages: {summary.line()}{span}")
    for kind, first, last, count in summary.error_runs():
        click.echo(f"  {kind}: {count} sample(s) from {format_time(first)} to "
                   f"{format_time(last)}")


def _echo_how_to_repeat(endpoint: str, start_ms: int, end_ms: int, out_dir: Path) -> None:
    """The same GetImages call as boto3 code and as a `kvslite images` command."""
    from kvslite.client.image_fetcher import format_time

    bar = "-" * 78
    click.echo(f"\nThe boto3 code that fetched them (paste it into python3):\n{bar}")
    click.echo(snippet(endpoint, STREAM, start_ms, end_ms, INTERVAL_MS))
    click.echo(f"{bar}\nor from the shell: kvslite images {STREAM} --start "
               f"{format_time(start_ms)} --end {format_time(end_ms)} "
               f"--every {INTERVAL_MS // 1000}s --out {out_dir} --endpoint-url {endpoint}\n")


def run(*, port: int = Settings.port, data_dir: Path = Settings.data_dir,
        out_dir: Path = Path("./demo-images"), seconds: int = 60,
        host: str = Settings.host) -> int:
    """The whole demo; returns the exit code (0 after Ctrl-C once serving)."""
    from kvslite.server.main import DataDirInUse, configure_logging, running

    configure_logging("warning")
    settings = Settings(host=host, port=port, data_dir=Path(data_dir))
    sock = _listen(settings)
    if sock is None:
        return 2
    try:
        with running(settings) as server:
            click.echo(f"kvslite demo: server at {settings.endpoint_url}, "
                       f"data in {settings.data_dir.resolve()}")
            video = _encode_and_report(seconds)
            outcome = _serve_during_demo(server, sock, settings.endpoint_url, video,
                                         Path(out_dir))
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        return 130
    except DataDirInUse as e:
        click.echo(f"error: {e}", err=True)
        return 2
    finally:
        sock.close()
    return _exit_code(outcome)


def _listen(settings: Settings) -> socket.socket | None:
    """The listening socket, or None after saying why the settings or the port won't do."""
    try:
        settings.check()
    except ValueError as e:
        click.echo(f"error: {e}", err=True)
        return None
    host, port = settings.host, settings.port
    try:
        return bind(host, port)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            click.echo(f"error: port {port} on {host} is already in use (another kvslite?); "
                       f"stop it or pick another port with --port", err=True)
        else:
            click.echo(f"error: cannot listen on {host}:{port}: {e.strerror or e}", err=True)
        return None


def _encode_and_report(seconds: int):
    click.echo(f"encoding {seconds} s of synthetic H.264 video ({WIDTH}x{HEIGHT}, {FPS} fps, "
               f"a clock in every frame)...")
    t0 = time.monotonic()
    video = encode_demo_video(seconds)
    click.echo(f"encoded {len(video.packets)} frames in {time.monotonic() - t0:.1f} s")
    return video


@dataclasses.dataclass
class _Outcome:
    """How the demo thread ended: `done`, failed with `error`, or neither (stopped first)."""
    done: bool = False
    error: BaseException | None = None


def _serve_during_demo(server, sock: socket.socket, endpoint: str, video,
                       out_dir: Path) -> _Outcome:
    """Serve on `sock` until Ctrl-C (or a failed demo), running the demo on a worker thread
    once the server is up."""
    from kvslite.server.main import UvicornServer

    stop = threading.Event()  # set on Ctrl-C: ends an upload or fetch at its next step
    uv = UvicornServer(server, on_exit=stop.set)
    outcome = _Outcome()
    worker = threading.Thread(target=_demo_once_serving, name="kvslite-demo", daemon=True,
                              args=(uv, endpoint, video, out_dir, stop, outcome))
    worker.start()
    try:
        uv.run(sockets=[sock])
    finally:
        stop.set()
        worker.join(timeout=10)
    return outcome


def _demo_once_serving(uv, endpoint: str, video, out_dir: Path, stop: threading.Event,
                       outcome: _Outcome) -> None:
    """The worker thread: wait for the server, run the demo, record how it ended. A failure
    stops the server, so `run` can report it."""
    while not uv.started:
        if uv.should_exit:
            return
        time.sleep(0.02)
    try:
        _demo(endpoint, video, out_dir, stop)
    except BaseException as e:  # noqa: BLE001 - reported, then the server stops
        if not stop.is_set():
            outcome.error = e
            uv.should_exit = True
        return
    if not stop.is_set():
        outcome.done = True
        click.echo(f"kvslite is serving at {endpoint} - try the snippet above; "
                   f"Ctrl-C to stop")


def _exit_code(outcome: _Outcome) -> int:
    """Say how the demo ended once the server has stopped, as an exit code."""
    if outcome.error is not None:
        e = outcome.error
        click.echo(f"error: demo failed: {type(e).__name__}: {e}", err=True)
        return 1
    if not outcome.done:
        click.echo("stopped before the demo finished", err=True)
        return 130
    click.echo("kvslite stopped")
    return 0
