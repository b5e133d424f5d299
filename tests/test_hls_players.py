"""HLS sessions played by players kvslite did not write: Debian's ffmpeg and GStreamer's
playbin (hlsdemux) and playbin3 (hlsdemux2), fMP4 and TS, ON_DEMAND.

GStreamer renders to a fakesink with sync=true, so frames come out at the pace of their
timestamps: a session whose media starts late on its own timeline waits before it plays.
Every frame the player decodes is timestamped as it is reported; the server's access log
counts the playlist and segment requests (a player refetching the playlist in a loop
would show there).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time

import pytest
from engines import need
from kvs_media import put_mkv

from kvslite.media import synthetic

pytestmark = pytest.mark.slow  # each cell plays seconds of video in real time

need(bool(shutil.which("gst-launch-1.0")) and bool(shutil.which("ffmpeg")),
     "GStreamer's gst-launch-1.0 and Debian's ffmpeg")

PLAYERS = ["ffmpeg", "playbin", "playbin3"]
CONTAINERS = ["FRAGMENTED_MP4", "MPEG_TS"]
FPS = 25
START_MS = (int(time.time()) - 3 * 3600) * 1000
FIRST_FRAME_S = 3.0  # a player starts showing a session within this (not a minute)


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers("--access-log")


@pytest.fixture(scope="module")
def clip():
    """2 s of 1-s GOPs with B-frames: decode times run ahead of presentation."""
    return synthetic.encode_video("h264", seconds=2, gop=FPS, bframes=2, width=160,
                                  height=120)


class Player:
    """A player process, each decoded frame's arrival time taken from its output."""

    def __init__(self, kind: str, url: str):
        if kind == "ffmpeg":  # one framemd5 line per decoded frame, flushed as it comes
            command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", url,
                       "-map", "0:v:0", "-f", "framemd5", "-flush_packets", "1", "-"]
            self.frame_line = re.compile(r"^0,")
        else:  # fakesink reports each buffer it renders: "last-message = chain ..."
            command = ["gst-launch-1.0", "-e", "-v", kind, f"uri={url}",
                       "video-sink=fakesink sync=true silent=false", "audio-sink=fakesink"]
            self.frame_line = re.compile(r"last-message = chain")
        self.started = time.monotonic()
        self.frames: list[float] = []  # monotonic time each frame was reported
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if self.frame_line.search(line):
                self.frames.append(time.monotonic())
            elif len(self.output) < 200:
                self.output.append(line)

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = self.stop()
        self.reader.join(5)
        return code

    def stop(self) -> int:
        """End it as a user would (Ctrl-C): GStreamer (-e) and FFmpeg flush the decoder."""
        self.process.send_signal(2)
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self.reader.join(5)

    def log(self) -> str:
        return "".join(self.output[-40:])


def requests(server) -> dict[str, int]:
    """HLS requests so far in the server's access log, by page name."""
    counts: dict[str, int] = {}
    for name in re.findall(r" GET /hls/v1/(\S+) ", server.output()):
        counts[name] = counts.get(name, 0) + 1
    return counts


def since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] > before.get(k, 0)}


def segment_requests(counts: dict[str, int]) -> int:
    return counts.get("getMP4MediaFragment.mp4", 0) + counts.get("getTSFragment.ts", 0)


@pytest.mark.parametrize("player", PLAYERS)
@pytest.mark.parametrize("container", CONTAINERS)
def test_on_demand(server, clip, container, player):
    stream = f"od-{container}-{player}".lower()
    server.client("kinesisvideo").create_stream(StreamName=stream, DataRetentionInHours=24)
    put_mkv(server.port, stream, synthetic.to_mkv(clip, START_MS))
    url = server.client("kinesis-video-archived-media").get_hls_streaming_session_url(
        StreamName=stream, PlaybackMode="ON_DEMAND", ContainerFormat=container,
        HLSFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {
            "StartTimestamp": START_MS / 1000, "EndTimestamp": (START_MS + 1999) / 1000}},
    )["HLSStreamingSessionURL"]
    before = requests(server)
    played = Player(player, url)
    assert played.wait(timeout=20) == 0, played.log()
    assert len(played.frames) == len(clip.packets) == 2 * FPS, played.log()
    assert played.frames[0] - played.started < FIRST_FRAME_S
    if player != "ffmpeg":  # sync=true: real time, 2 s of video in about 2 s
        assert 1.6 < played.frames[-1] - played.frames[0] < 3.0
    counts = since(before, requests(server))
    assert counts["getHLSMediaPlaylist.m3u8"] == 1, counts  # a VOD playlist: read once
    assert segment_requests(counts) == 2, counts
