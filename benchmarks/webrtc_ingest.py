"""WebRTC ingestion benchmark: server CPU per recorded WebRTC stream, next to PutMedia of the
same H.264, and how many 2 Mbit/s WebRTC masters one node records without loss.

One `kvslite serve` (SQLite + files) and one coturn on 127.0.0.1 (tests/coturn_server.py);
masters are aiortc peers in this process, relayed through coturn as in the tests. Each
master connects to its channel's signaling WebSocket, calls JoinStorageSession, answers
the storage session's offer and replays pre-encoded media paced in real time, without
re-encoding: H.264 1280x720 25 fps, CBR 2 Mbit/s, an IDR every second, no B-frames
(encoded once with libx264, sent as Annex-B access units with SPS/PPS before each IDR)
and Opus 48 kHz mono 20 ms frames of a tone (encoded once). aiortc's sender packetizes
`av.Packet`s as they are.

  cpu       Server CPU seconds (user + system, /proc) per stream-second with --cpu-streams
            streams for --seconds each, three ways in the same run: WebRTC video + Opus
            (recorded as H.264 + AAC: Opus is decoded and AAC encoded), WebRTC video only,
            and the baseline: PutMedia of the same H.264 (AVCC, one 1-s fragment per
            second, paced like cameras) by as many producers. The CPU window runs from
            when every master is connected to its last frame sent (PutMedia: the whole
            upload). audio transcode = (video + Opus) - (video only).
  capacity  N = 1, 2, 4, 8, ... (up to --max-streams) masters at once with video + Opus
            for --seconds; per step: video frames stored / sent (the last frame of each
            stream stays in the receiver's jitter buffer, so sent counts all but it), whether
            every stored frame is byte-identical to the one sent, fragments per stream,
            the masters' worst pacing lag (the client saturates: its single event loop
            falls behind), and CPU use of server, client (this process) and coturn as cores.
            It stops after the first step with a lost or altered frame.

Rerun:  .venv/bin/python benchmarks/webrtc_ingest.py [--seconds 10] [--cpu-streams 2]
            [--max-streams 8] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import fractions
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from common import (
    FPS,
    H,
    Server,
    W,
    encode_h264,
    mkv_header,
    paced_cameras,
    process_cpu_s,
    split_gops,
)
from websockets.asyncio.client import connect

from kvslite.media.synthetic import render_frame

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from coturn_server import TurnServer

X264_WEBRTC = ("nal-hrd=cbr:bitrate=2000:vbv-maxrate=2000:vbv-bufsize=2000:keyint=25"
               ":min-keyint=25:scenecut=0:bframes=0")  # what a WebRTC camera sends
VIDEO_CLOCK, AUDIO_CLOCK = fractions.Fraction(1, 90_000), fractions.Fraction(1, 48_000)
OPUS_FRAME = 960  # 20 ms at 48 kHz


# -- media, encoded once ----------------------------------------------------------------------

def encode_video(seconds: int) -> tuple[bytes, list, list[bytes], list[bytes]]:
    """avcC, the GOPs as PutMedia sends them, the same frames as Annex-B access units (what
    the masters send) and as the AVCC frames they must be stored as."""
    rng = np.random.default_rng(1)

    def frames():
        for i in range(seconds * FPS):
            noise = rng.integers(-8, 9, (H // 4, W // 4, 1), dtype=np.int16)  # sensor noise
            img = (render_frame(i, W, H, FPS) + noise.repeat(4, 0).repeat(4, 1))
            yield av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8),
                                             format="rgb24").reformat(format="yuv420p")

    avcc, packets = encode_h264(frames(), FPS, X264_WEBRTC)
    nals = avcc_parameter_sets(avcc)
    annexb_sets = b"".join(b"\0\0\0\1" + nal for nal in nals)
    avcc_sets = b"".join(len(nal).to_bytes(4, "big") + nal for nal in nals)
    units = [(annexb_sets if key else b"") + avcc_to_annexb(payload)
             for _, key, payload in packets]
    stored = [(avcc_sets if key else b"") + payload for _, key, payload in packets]
    return avcc, split_gops(packets), units, stored


def avcc_parameter_sets(avcc: bytes) -> list[bytes]:
    """SPS and PPS NAL units from an AVCDecoderConfigurationRecord."""
    nals, at = [], 5
    for count_mask in (0x1F, 0xFF):  # SPS count (low 5 bits), then PPS count
        count, at = avcc[at] & count_mask, at + 1
        for _ in range(count):
            size = int.from_bytes(avcc[at:at + 2], "big")
            nals.append(avcc[at + 2:at + 2 + size])
            at += 2 + size
    return nals


def avcc_to_annexb(payload: bytes) -> bytes:
    out, at = [], 0
    while at < len(payload):
        size = int.from_bytes(payload[at:at + 4], "big")
        out.append(b"\0\0\0\1" + payload[at + 4:at + 4 + size])
        at += 4 + size
    return b"".join(out)


def encode_opus(seconds: int) -> list[bytes]:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format = 48000, "mono", "s16"
    codec.bit_rate = 32000
    packets: list[bytes] = []
    for k in range(seconds * 50 + 5):
        t = (np.arange(OPUS_FRAME) + k * OPUS_FRAME) / 48000
        frame = av.AudioFrame.from_ndarray(
            (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1),
            format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, k * OPUS_FRAME
        packets += [bytes(p) for p in codec.encode(frame)]
    return packets


# -- masters -----------------------------------------------------------------------------------

class Replay(MediaStreamTrack):
    """Pre-encoded packets, paced in real time from `go`; `lag` is the worst lateness."""

    def __init__(self, kind: str, packets: list[bytes], rate: float, ticks: int,
                 go: asyncio.Event):
        super().__init__()
        self.kind, self.packets, self.rate, self.ticks, self.go = kind, packets, rate, ticks, go
        self.sent, self.started, self.lag = 0, 0.0, 0.0

    async def recv(self) -> av.Packet:
        await self.go.wait()
        if self.sent == 0:
            self.started = time.monotonic()
        if self.sent >= len(self.packets):
            self.stop()
            raise asyncio.CancelledError
        due = self.started + self.sent / self.rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        self.lag = max(self.lag, time.monotonic() - due)
        packet = av.Packet(self.packets[self.sent])
        packet.pts = self.sent * self.ticks
        packet.time_base = VIDEO_CLOCK if self.kind == "video" else AUDIO_CLOCK
        self.sent += 1
        return packet


class Master:
    def __init__(self, bench: Bench, channel_arn: str, units: list[bytes],
                 opus: list[bytes] | None, go: asyncio.Event):
        self.bench, self.channel_arn, self.go = bench, channel_arn, go
        self.video = Replay("video", units, FPS, 90_000 // FPS, go)
        self.audio = Replay("audio", opus, 50, OPUS_FRAME, go) if opus else None
        self.connected = asyncio.Event()
        self.pc = RTCPeerConnection(RTCConfiguration(
            iceServers=bench.ice_servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY))
        self.pc.on("connectionstatechange", lambda: self.connected.set()
                   if self.pc.connectionState == "connected" else None)

    async def connect(self, socket) -> None:
        """JoinStorageSession, answer the storage session's offer, wait until connected."""
        await asyncio.to_thread(self.bench.storage.join_storage_session,
                                channelArn=self.channel_arn)
        message = json.loads(await asyncio.wait_for(socket.recv(), 30))
        offer = json.loads(base64.b64decode(message["messagePayload"]))
        await self.pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        for transceiver in self.pc.getTransceivers():
            track = self.video if transceiver.kind == "video" else self.audio
            if track is not None:
                transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendonly" if track is not None else "inactive"
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer = {"type": "answer", "sdp": self.pc.localDescription.sdp}
        await socket.send(json.dumps({  # no recipient: for the storage session
            "action": "SDP_ANSWER",
            "messagePayload": base64.b64encode(json.dumps(answer).encode()).decode()}))
        await asyncio.wait_for(self.connected.wait(), 30)

    async def stream(self, ready: asyncio.Queue) -> None:
        url = (f"ws://127.0.0.1:{self.bench.server.port}/?X-Amz-ChannelARN="
               f"{quote(self.channel_arn, safe='')}")
        async with connect(url) as socket:
            await self.connect(socket)
            await ready.put(self)
            while self.video.sent < len(self.video.packets):
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # the last packets' way through the relay
        await self.pc.close()


class Bench:
    def __init__(self, server: Server, coturn: TurnServer, units: list[bytes],
                 expected: list[bytes], opus: list[bytes]):
        self.server, self.coturn, self.units, self.opus = server, coturn, units, opus
        self.expected = expected  # units as AVCC, the way the stream must hold them
        self.kvs = server.client("kinesisvideo")
        self.storage = server.client("kinesis-video-webrtc-storage")
        self.archived = server.client("kinesis-video-archived-media")
        self.ice_servers: list[RTCIceServer] = []
        self.runs = 0

    def channels(self, count: int) -> list[tuple[str, str]]:
        """`count` fresh (stream name, channel ARN) pairs with media storage enabled."""
        self.runs += 1
        pairs = []
        for i in range(count):
            name = f"webrtc-{self.runs}-{i}"
            stream = self.kvs.create_stream(StreamName=name, DataRetentionInHours=1)
            channel = self.kvs.create_signaling_channel(ChannelName=name)["ChannelARN"]
            self.kvs.update_media_storage_configuration(
                ChannelARN=channel, MediaStorageConfiguration={
                    "StreamARN": stream["StreamARN"], "Status": "ENABLED"})
            pairs.append((name, channel))
        if not self.ice_servers:
            answer = self.server.client("kinesis-video-signaling").get_ice_server_config(
                ChannelARN=pairs[0][1], ClientId="bench")
            self.ice_servers = [RTCIceServer(urls=s["Uris"], username=s["Username"],
                                             credential=s["Password"])
                                for s in answer["IceServerList"]]
        return pairs

    def run(self, count: int, audio: bool) -> dict:
        pairs = self.channels(count)
        result = asyncio.run(self._run([arn for _, arn in pairs], audio))
        self._wait_sessions_ended()
        result.update(self.check([name for name, _ in pairs]))
        return result

    async def _run(self, arns: list[str], audio: bool) -> dict:
        go, ready = asyncio.Event(), asyncio.Queue()
        masters = [Master(self, arn, self.units, self.opus if audio else None, go)
                   for arn in arns]
        tasks = [asyncio.ensure_future(m.stream(ready)) for m in masters]
        for _ in masters:  # a failed master fails the run
            done, _pending = await asyncio.wait([asyncio.ensure_future(ready.get()), *tasks],
                                                return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task in tasks and task.exception():
                    raise task.exception()
        cpu = [self.server.cpu_s(), process_cpu_s(os.getpid()), self.coturn_cpu()]
        t0 = time.monotonic()
        go.set()
        while any(m.video.sent < len(m.video.packets) for m in masters):
            await asyncio.sleep(0.05)
        wall = time.monotonic() - t0
        used = [self.server.cpu_s() - cpu[0], process_cpu_s(os.getpid()) - cpu[1],
                self.coturn_cpu() - cpu[2]]
        await asyncio.gather(*tasks)
        stream_s = len(masters) * len(self.units) / FPS
        return {"streams": len(masters), "audio": audio, "wall_s": round(wall, 2),
                "server_cpu_s": round(used[0], 2),
                "server_cpu_per_stream_s": round(used[0] / stream_s, 4),
                "cores": {"server": round(used[0] / wall, 2), "client": round(used[1] / wall, 2),
                          "coturn": round(used[2] / wall, 2)},
                "max_send_lag_ms": round(max(m.video.lag for m in masters) * 1000, 1)}

    def coturn_cpu(self) -> float:
        return process_cpu_s(self.coturn.proc.pid)

    def _wait_sessions_ended(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.server.metrics().get("kvslite_storage_sessions", 0) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError("storage sessions did not end")
            time.sleep(0.2)

    def check(self, names: list[str]) -> dict:
        """Every stream's stored H.264 against what its master sent."""
        sent = self.expected[:-1]  # the last frame stays in the receiver's jitter buffer
        stored_total, identical, fragments = 0, True, []
        for name in names:
            listed = self.archived.list_fragments(StreamName=name)["Fragments"]
            fragments.append(len(listed))
            stored = []
            if listed:
                listed.sort(key=lambda f: f["ProducerTimestamp"])
                media = self.archived.get_media_for_fragment_list(
                    StreamName=name, Fragments=[f["FragmentNumber"] for f in listed]
                )["Payload"].read()
                with av.open(io.BytesIO(media)) as container:
                    stored = [bytes(p) for p in container.demux(container.streams.video[0])
                              if p.size]
            stored_total += len(stored)
            identical = identical and stored == sent[:len(stored)]
        return {"frames_sent": len(sent) * len(names), "frames_stored": stored_total,
                "byte_identical": identical, "fragments_per_stream": sorted(set(fragments))}


# -- the three CPU runs and the capacity steps ----------------------------------------------

def putmedia_baseline(server: Server, avcc: bytes, gops, streams: int, seconds: int) -> dict:
    kvs = server.client("kinesisvideo")
    names = [f"putmedia-{i}" for i in range(streams)]
    for name in names:
        kvs.create_stream(StreamName=name, DataRetentionInHours=1, MediaType="video/h264")
    cpu0, t0 = server.cpu_s(), time.monotonic()
    result = paced_cameras(server.port, names, mkv_header(avcc), gops, seconds)
    used = server.cpu_s() - cpu0
    return {"streams": streams, "wall_s": round(time.monotonic() - t0, 2),
            "server_cpu_s": round(used, 2),
            "server_cpu_per_stream_s": round(used / (streams * seconds), 4),
            "fragments_persisted": result["fragments_persisted"],
            "fragments_sent": result["fragments_sent"], "errors": result["errors"]}


def capacity(bench: Bench, max_streams: int) -> list[dict]:
    steps, count = [], 1
    while count <= max_streams:
        step = bench.run(count, audio=True)
        steps.append(step)
        print(f"capacity {count}: {json.dumps(step)}", flush=True)
        if step["frames_stored"] < step["frames_sent"] or not step["byte_identical"]:
            break
        count *= 2
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="media per stream and run")
    parser.add_argument("--cpu-streams", type=int, default=2)
    parser.add_argument("--max-streams", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(),
                                                      "kvslite-webrtc-ingest.json"))
    args = parser.parse_args()
    started = time.monotonic()
    avcc, gops, units, expected = encode_video(args.seconds)
    opus = encode_opus(args.seconds)
    rate = sum(map(len, units)) * 8 / args.seconds / 1e6
    print(f"encoded {len(units)} frames ({rate:.2f} Mbit/s) and {len(opus)} Opus packets "
          f"in {time.monotonic() - started:.0f} s", flush=True)
    root = Path(tempfile.mkdtemp(prefix="kvslite-bench-webrtc-"))
    coturn = TurnServer(root).start()
    try:
        with Server(root, "--log-level", "warning", *coturn.kvslite_args()) as server:
            bench = Bench(server, coturn, units, expected, opus)
            cpu = {"webrtc_video_opus": bench.run(args.cpu_streams, audio=True),
                   "webrtc_video": bench.run(args.cpu_streams, audio=False),
                   "putmedia": putmedia_baseline(server, avcc, gops, args.cpu_streams,
                                                 args.seconds)}
            for label, r in cpu.items():
                print(f"cpu {label}: {json.dumps(r)}", flush=True)
            steps = capacity(bench, args.max_streams)
    finally:
        coturn.stop()
        shutil.rmtree(root, ignore_errors=True)
    base = cpu["putmedia"]["server_cpu_per_stream_s"]
    result = {"args": vars(args), "video": {"width": W, "height": H, "fps": FPS,
                                            "mbit_per_s": round(rate, 2), "x264": X264_WEBRTC},
              "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()},
              "cpu": cpu, "capacity": steps,
              "ratios_to_putmedia": {k: round(r["server_cpu_per_stream_s"] / base, 2)
                                     for k, r in cpu.items()},
              "audio_transcode_cpu_per_stream_s": round(
                  cpu["webrtc_video_opus"]["server_cpu_per_stream_s"]
                  - cpu["webrtc_video"]["server_cpu_per_stream_s"], 4),
              "server_log_warnings": server.problems[:50],
              "total_runtime_s": round(time.monotonic() - started, 1)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nJSON: {args.out}\nRerun: .venv/bin/python benchmarks/webrtc_ingest.py "
          f"--seconds {args.seconds} --cpu-streams {args.cpu_streams} "
          f"--max-streams {args.max_streams}")


def table(result: dict) -> str:
    title = f"CPU, {result['args']['cpu_streams']} streams"
    lines = [f"{title:<24}{'server CPU s / stream-s':>24}{'x PutMedia':>12}"]
    for label, r in result["cpu"].items():
        lines.append(f"{label:<24}{r['server_cpu_per_stream_s']:>24}"
                     f"{result['ratios_to_putmedia'][label]:>12}")
    lines.append(f"audio transcode (Opus -> AAC): "
                 f"{result['audio_transcode_cpu_per_stream_s']} CPU s / stream-s\n")
    lines.append(f"{'masters':>7}{'frames stored/sent':>20}{'identical':>10}{'frags':>7}"
                 f"{'lag ms':>8}{'server':>8}{'client':>8}{'coturn':>8}  (cores)")
    for s in result["capacity"]:
        lines.append(f"{s['streams']:>7}{str(s['frames_stored']) + '/' + str(s['frames_sent']):>20}"
                     f"{s['byte_identical']!s:>10}{','.join(map(str, s['fragments_per_stream'])):>7}"
                     f"{s['max_send_lag_ms']:>8}{s['cores']['server']:>8}"
                     f"{s['cores']['client']:>8}{s['cores']['coturn']:>8}")
    lines.append(f"server log warnings: {len(result['server_log_warnings'])}   "
                 f"runtime {result['total_runtime_s']} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
