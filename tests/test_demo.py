"""`kvslite demo`: serve, ingest a clock video, fetch images every 3 s, keep serving."""

from __future__ import annotations

import contextlib
import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from conftest import free_port
from kvslite.client.image_fetcher import file_name, parse_time

pytestmark = pytest.mark.slow  # the demo encodes and ingests video

SERVING = "kvslite is serving at"


def read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@pytest.fixture
def demo(tmp_path):
    port = free_port()
    env = {**os.environ}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                 "KVSLITE_ENDPOINT_URL"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvslite", "demo", "--port", str(port), "--data-dir",
         str(tmp_path / "data"), "--out", str(tmp_path / "images"), "--seconds", "10"],
        stdout=subprocess.PIPE, stderr=open(tmp_path / "stderr.txt", "w"), text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=read_lines, args=(proc.stdout, lines), daemon=True).start()
    output: list[str] = []
    deadline = time.monotonic() + 60
    while not any(SERVING in line for line in output):
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail("no serving line within 60 s:\n" + "".join(output)
                        + (tmp_path / "stderr.txt").read_text())
        output.append(line)
    yield proc, port, "".join(output), tmp_path
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_demo_serves_images_and_stops_on_ctrl_c(demo):
    proc, port, output, tmp_path = demo
    endpoint = f"http://127.0.0.1:{port}"
    assert f"{SERVING} {endpoint}" in output

    # 10 s of video: samples at 0, 3, 6 and 9 s, all with media
    names = sorted(os.listdir(tmp_path / "images"))
    assert len(names) == 9999 // 3000 + 1 == 4, output
    times = [parse_time(name.removesuffix(".jpg")) for name in names]
    assert [t - times[0] for t in times] == [0, 3000, 6000, 9000]
    assert names == [file_name(t) for t in times]
    assert "4 image(s) written" in output and "0 NO_MEDIA, 0 MEDIA_ERROR" in output

    # the printed snippet is the real thing: paste it and get the same 4 images
    snippet = output.split("import base64\n", 1)[1].split("\n---", 1)[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec("import base64\n" + snippet, {})
    rows = printed.getvalue().splitlines()
    assert len(rows) == 4 and all(row.endswith(" bytes") for row in rows), rows
    sizes = [(tmp_path / "images" / name).stat().st_size for name in names]
    assert [int(row.split()[1]) for row in rows] == sizes  # the very same JPEGs
    assert f'endpoint_url="{endpoint}"' in snippet and 'StreamName="kvslite-demo"' in snippet

    # so is the printed shell command
    command = output.split("or from the shell: kvslite ", 1)[1].splitlines()[0].split()
    command[command.index("--out") + 1] = str(tmp_path / "again")
    again = subprocess.run([sys.executable, "-m", "kvslite", *command, "-q"],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 0, again.stderr
    assert sorted(os.listdir(tmp_path / "again")) == names

    # still serving: boto3 works against it
    kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="any",
              aws_secret_access_key="any")
    kvs = boto3.client("kinesisvideo", **kw)
    assert [s["StreamName"] for s in kvs.list_streams()["StreamInfoList"]] == ["kvslite-demo"]
    assert kvs.describe_stream(StreamName="kvslite-demo")["StreamInfo"]["DataRetentionInHours"] \
        == 24
    archive = boto3.client("kinesis-video-archived-media", **kw)
    page = archive.get_images(StreamName="kvslite-demo", ImageSelectorType="PRODUCER_TIMESTAMP",
                              StartTimestamp=times[1] / 1000, EndTimestamp=times[1] / 1000,
                              Format="JPEG")
    [image] = page["Images"]
    assert "Error" not in image and image["ImageContent"]

    # the port is taken now: a second demo says so and exits 2
    busy = subprocess.run([sys.executable, "-m", "kvslite", "demo", "--port", str(port),
                           "--data-dir", str(tmp_path / "data2"), "--seconds", "1"],
                          capture_output=True, text=True, timeout=30)
    assert busy.returncode == 2
    assert f"port {port}" in busy.stderr and "already in use" in busy.stderr

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()


def test_demo_raises_the_descriptor_limit_as_serve_does(tmp_path):
    """The connection cap derives from the open-file limit: the demo's server raises a low
    soft limit before it builds, as `kvslite serve` does."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if min(soft, 256) >= expected:
        pytest.skip("the hard open-file limit leaves nothing to raise")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvslite", "demo", "--port", str(free_port()), "--data-dir",
         str(tmp_path / "data"), "--out", str(tmp_path / "images"), "--seconds", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
    watchdog = threading.Timer(60, proc.kill)  # a hung demo fails the test, never hangs it
    watchdog.start()
    try:
        first = proc.stdout.readline()  # printed once the server is built and started
        assert first.startswith("kvslite demo: server at"), first
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
    open_files = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert open_files.split()[3] == str(expected), open_files


def test_demo_video_is_one_continuous_clock():
    """Encoded in slices on two threads and joined: one keyframe per second, every frame
    once, and each picture is the clock at its own time, across the seam too."""
    import numpy as np

    from kvslite.cli.demo import encode_demo_video
    from kvslite.media import synthetic

    video = encode_demo_video(10, workers=2)
    assert len(video.packets) == 250 and video.duration_ms == 10_000
    assert sorted(pts for pts, _, _ in video.packets) == [40 * i for i in range(250)]
    assert sorted(pts for pts, key, _ in video.packets if key) == [1000 * s for s in range(10)]
    decoded = video.frames_rgb()
    assert [pts for pts, _ in decoded] == [40 * i for i in range(250)]
    for i in (0, 124, 125, 126, 249):  # the seam is between frames 124 and 125
        expected = synthetic.render_frame(i, video.width, video.height, video.fps)
        mse = np.mean((decoded[i][1].astype(float) - expected.astype(float)) ** 2)
        assert 10 * np.log10(255**2 / mse) > 25, i
