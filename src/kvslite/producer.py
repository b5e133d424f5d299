"""A Python Kinesis Video Streams producer: compressed video in, PutMedia out.

Use it against kvslite or real AWS (the protocol is the same):

    from kvslite.producer import Producer, VideoFormat

    producer = Producer("front-door", endpoint_url="http://127.0.0.1:4567")
    summary = producer.put(packets, VideoFormat("h264", codec_private=avcc))
    print(summary.fragments_persisted, summary.fragment_numbers)

`packets` is any iterable of `(pts_ms, keyframe, payload)` in decode order (or `Packet`s);
payloads are length-prefixed NAL units (with an avcC/hvcC `codec_private`) or Annex-B
(start codes; the avcC/hvcC record is then built from the SPS/PPS in the stream).
`put_source("clip.mp4", "front-door")` does the same for anything FFmpeg can demux.

How it works:

- Packets become KVS-style Matroska: one Cluster per GOP (a fragment), absolute cluster
  timecodes in epoch milliseconds (TimecodeScale 1 ms): producer start time + the packet's
  pts offset from the first keyframe.
- The MKV is streamed as the chunked body of `POST <DataEndpoint>/putMedia` (from
  GetDataEndpoint, APIName PUT_MEDIA), signed with SigV4 over the empty payload hash. The
  server answers 200 at once and then streams JSON acks (BUFFERING, RECEIVED, PERSISTED,
  ERROR, IDLE) while the body is still going up, so the body is sent and the acks are read
  concurrently (asyncio + h11). Demuxing runs in a thread so acks keep flowing.
- The upload ends when every fragment has its final ack (PERSISTED, or RECEIVED for a stream
  that keeps no data); an ERROR ack stops it and raises `AckError`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from urllib.parse import urlsplit

import h11

from kvslite import __version__
from kvslite.media import mkv

__all__ = [
    "DEFAULT_ENDPOINT_URL", "MAX_FRAGMENT_MS", "Ack", "AckError", "HttpError", "Packet",
    "Producer", "ProducerError", "PutSummary", "SourceError", "VideoFormat", "AnnexBConverter",
    "FragmentBuilder", "avcc_from_parameter_sets", "hvcc_from_parameter_sets", "split_annexb",
    "is_annexb", "split_length_prefixed", "parse_timestamp", "put_source", "open_source",
    "MediaSource", "media_chunks", "putmedia_headers",
]

DEFAULT_ENDPOINT_URL = "http://127.0.0.1:4567"
MAX_FRAGMENT_MS = 20_000  # KVS's maximum fragment duration (SimpleBlock offsets allow 32.767 s)
CODEC_IDS = {"h264": "V_MPEG4/ISO/AVC", "hevc": "V_MPEGH/ISO/HEVC"}
MEDIA_TYPES = {"h264": "video/h264", "hevc": "video/h265"}
_CODEC_ALIASES = {"h264": "h264", "avc": "h264", "avc1": "h264", "hevc": "hevc", "h265": "hevc",
                  "hvc1": "hevc", "hev1": "hevc"}
USER_AGENT = f"kvslite-producer/{__version__}"


# ----------------------------------------------------------------------------- errors

class ProducerError(Exception):
    """The upload failed. `summary` is what got through before it did (if anything)."""

    summary: "PutSummary | None" = None


class SourceError(ProducerError):
    """The media cannot be uploaded as it is (unsupported codec, bad timestamps, ...)."""


class HttpError(ProducerError):
    """A non-200 answer: an AWS JSON error (`code` from x-amzn-ErrorType, `message`)."""

    def __init__(self, status: int, code: str, message: str, operation: str = "PutMedia"):
        super().__init__(f"{operation} failed: HTTP {status} {code}: {message}")
        self.status, self.code, self.message, self.operation = status, code, message, operation


class AckError(ProducerError):
    """The server sent an ERROR ack (and closes the upload)."""

    def __init__(self, ack: "Ack"):
        where = f" for the fragment at timecode {ack.timecode}" if ack.timecode is not None else ""
        super().__init__(f"PutMedia ERROR ack: ErrorId {ack.error_id} "
                         f"({ack.error_code or 'no ErrorCode'}){where}")
        self.ack = ack
        self.error_id, self.error_code = ack.error_id, ack.error_code


# ----------------------------------------------------------------------------- NAL units

def is_annexb(data: bytes) -> bool:
    """True if `data` starts with an Annex-B start code (00 00 01 or 00 00 00 01)."""
    return data[:3] == b"\0\0\1" or data[:4] == b"\0\0\0\1"


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B byte stream, start codes and trailing zeros removed."""
    data = bytes(data)
    nals, start = [], data.find(b"\0\0\1")
    if start < 0:
        raise SourceError("no Annex-B start code found in an H.264/H.265 packet")
    start += 3
    while True:
        nxt = data.find(b"\0\0\1", start)
        nal = data[start:] if nxt < 0 else data[start:nxt]
        nal = nal.rstrip(b"\0")  # a zero before the next start code belongs to it
        if nal:
            nals.append(nal)
        if nxt < 0:
            return nals
        start = nxt + 3


def length_prefixed(nals: Iterable[bytes]) -> bytes:
    return b"".join(len(n).to_bytes(4, "big") + n for n in nals)


def split_length_prefixed(data: bytes, size: int = 4) -> list[bytes]:
    nals, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + size], "big")
        if pos + size + n > len(data):
            raise SourceError("a length-prefixed NAL unit overruns its packet")
        nals.append(bytes(data[pos + size:pos + size + n]))
        pos += size + n
    return nals


def _rbsp(nal: bytes, header_len: int) -> bytes:
    """The NAL payload with emulation-prevention bytes (00 00 03) removed."""
    out, zeros = bytearray(), 0
    for b in nal[header_len:]:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


class _Bits:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise SourceError("truncated parameter set")
            v = (v << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise SourceError("malformed Exp-Golomb code in a parameter set")
        return (1 << zeros) - 1 + self.u(zeros)


def h264_nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F


def hevc_nal_type(nal: bytes) -> int:
    return (nal[0] >> 1) & 0x3F


def avcc_from_parameter_sets(sps: list[bytes], pps: list[bytes]) -> bytes:
    """An AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1), 4-byte NAL lengths."""
    if not sps or not pps:
        raise SourceError("H.264 stream without SPS/PPS: cannot build the avcC codec private data")
    first = sps[0]
    if len(first) < 4:
        raise SourceError("truncated H.264 SPS")
    profile = first[1]
    out = bytearray([1, profile, first[2], first[3], 0xFC | 3, 0xE0 | len(sps)])
    for s in sps:
        out += len(s).to_bytes(2, "big") + s
    out.append(len(pps))
    for p in pps:
        out += len(p).to_bytes(2, "big") + p
    if profile in (100, 110, 122, 144):  # High profiles carry chroma format and bit depths
        bits = _Bits(_rbsp(first, 1)[3:])
        bits.ue()  # seq_parameter_set_id
        chroma = bits.ue()
        if chroma == 3:
            bits.u(1)  # separate_colour_plane_flag
        depth_luma, depth_chroma = bits.ue(), bits.ue()
        out += bytes([0xFC | (chroma & 3), 0xF8 | (depth_luma & 7), 0xF8 | (depth_chroma & 7), 0])
    return bytes(out)


def _hevc_sps_info(sps: bytes) -> dict:
    """The fields of an H.265 SPS that the hvcC record repeats."""
    bits = _Bits(_rbsp(sps, 2))
    bits.u(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = bits.u(3)
    info = {"temporal_id_nested": bits.u(1), "sub_layers": max_sub_layers_minus1 + 1,
            "ptl": bytes(_rbsp(sps, 2)[1:13])}  # general profile_tier_level: 12 bytes, aligned
    bits.u(96)
    present = [(bits.u(1), bits.u(1)) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1:
        bits.u(2 * (8 - max_sub_layers_minus1))
    for profile_present, level_present in present:
        bits.u(88 if profile_present else 0)
        bits.u(8 if level_present else 0)
    bits.ue()  # sps_seq_parameter_set_id
    info["chroma"] = bits.ue()
    if info["chroma"] == 3:
        bits.u(1)
    bits.ue(), bits.ue()  # pic width, height
    if bits.u(1):  # conformance window
        for _ in range(4):
            bits.ue()
    info["depth_luma"], info["depth_chroma"] = bits.ue(), bits.ue()
    if len(info["ptl"]) != 12:
        raise SourceError("truncated H.265 SPS")
    return info


def hvcc_from_parameter_sets(vps: list[bytes], sps: list[bytes], pps: list[bytes]) -> bytes:
    """An HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1), 4-byte NAL lengths."""
    if not vps or not sps or not pps:
        raise SourceError("H.265 stream without VPS/SPS/PPS: cannot build the hvcC codec "
                          "private data")
    info = _hevc_sps_info(sps[0])
    out = bytearray([1]) + info["ptl"]  # version; profile space/tier/idc, flags, level
    out += bytes([0xF0, 0x00, 0xFC, 0xFC | (info["chroma"] & 3), 0xF8 | (info["depth_luma"] & 7),
                  0xF8 | (info["depth_chroma"] & 7), 0, 0])  # ...; avgFrameRate 0
    out.append(((info["sub_layers"] & 7) << 3) | (info["temporal_id_nested"] << 2) | 3)
    arrays = [(32, vps), (33, sps), (34, pps)]
    out.append(len(arrays))
    for nal_type, nals in arrays:
        out.append(nal_type)  # array_completeness 0: the stream may repeat them in-band
        out += len(nals).to_bytes(2, "big")
        for n in nals:
            out += len(n).to_bytes(2, "big") + n
    return bytes(out)


class AnnexBConverter:
    """Annex-B packets -> 4-byte length-prefixed packets, collecting the parameter sets
    (SPS/PPS, and VPS for H.265) for the avcC/hvcC record. All NAL units are kept."""

    _TYPES = {"h264": {7: "sps", 8: "pps"}, "hevc": {32: "vps", 33: "sps", 34: "pps"}}

    def __init__(self, codec: str, extradata: bytes | None = None):
        self.codec = normalize_codec(codec)
        self.params: dict[str, list[bytes]] = {"vps": [], "sps": [], "pps": []}
        if extradata and is_annexb(extradata):
            self._collect(split_annexb(extradata))

    def _collect(self, nals: list[bytes]) -> None:
        nal_type = h264_nal_type if self.codec == "h264" else hevc_nal_type
        for nal in nals:
            kind = self._TYPES[self.codec].get(nal_type(nal))
            if kind and nal not in self.params[kind] and len(self.params[kind]) < 32:
                self.params[kind].append(nal)

    def convert(self, packet: bytes) -> bytes:
        nals = split_annexb(packet)
        self._collect(nals)
        return length_prefixed(nals)

    def codec_private(self) -> bytes:
        p = self.params
        if self.codec == "h264":
            return avcc_from_parameter_sets(p["sps"], p["pps"])
        return hvcc_from_parameter_sets(p["vps"], p["sps"], p["pps"])


def normalize_codec(codec: str) -> str:
    name = _CODEC_ALIASES.get(codec.lower())
    if name is None:
        raise SourceError(f"unsupported video codec {codec!r}: KVS producers send H.264 or H.265")
    return name


# ----------------------------------------------------------------------------- packets -> MKV

@dataclass
class Packet:
    pts_ms: int      # presentation time in ms (any origin; see Producer.put)
    keyframe: bool
    payload: bytes   # one access unit


@dataclass
class VideoFormat:
    codec: str = "h264"               # "h264" or "hevc" (aliases: avc, h265)
    codec_private: bytes | None = None  # avcC/hvcC; None or Annex-B: built from the stream
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None   # written as the track's DefaultDuration when known
    name: str | None = None           # track name


@dataclass
class _Chunk:
    """A piece of the PutMedia body: the MKV header or one cluster (fragment)."""

    data: bytes
    timecode: int | None = None   # cluster timecode (epoch ms); None for the header
    frames: int = 0
    media_end_ms: int = 0          # latest frame pts offset from the first keyframe (pacing)


class FragmentBuilder:
    """Packets in decode order -> the MKV header, then one Cluster per GOP.

    Cluster timecodes are absolute epoch ms: `start_ms + (pts - first keyframe pts)`, or the
    pts itself with `absolute_pts`. A cluster's timecode is the earliest pts of its GOP (the
    keyframe's, for closed GOPs); frames keep their own pts. Packets before the first
    keyframe cannot be decoded and are dropped (counted in `dropped`).
    """

    def __init__(self, video: VideoFormat, start_ms: int | None, *, absolute_pts: bool = False,
                 max_fragment_ms: int = MAX_FRAGMENT_MS, track_number: int = 1):
        self.video = video
        self.codec = normalize_codec(video.codec)
        self.start_ms = start_ms
        self.absolute_pts = absolute_pts
        self.max_fragment_ms = min(max_fragment_ms, 32767)
        self.track = track_number
        private = video.codec_private
        self.converter = None if private and private[:1] == b"\x01" else \
            AnnexBConverter(self.codec, private)
        self.codec_private = None if self.converter else bytes(private)
        self.base_pts: int | None = None
        self.frames: list[mkv.Frame] = []
        self.gop_span = (0, 0)  # earliest and latest frame timecode of the GOP being built
        self.last_timecode: int | None = None
        self.header_written = False
        self.dropped = 0

    def _header(self) -> bytes:
        v = self.video
        track = mkv.Track(number=self.track, uid=self.track, track_type=1,
                          codec_id=CODEC_IDS[self.codec], codec_private=self.codec_private,
                          name=v.name, width=v.width, height=v.height,
                          default_duration_ns=round(1e9 / v.frame_rate) if v.frame_rate else None)
        return mkv.write_header(mkv.StreamHeader(timecode_scale_ns=1_000_000, tracks=[track],
                                                 writing_app=USER_AGENT))

    def add(self, pts_ms: int, keyframe: bool, payload: bytes) -> list[_Chunk]:
        if pts_ms is None:
            raise SourceError("a packet has no presentation timestamp")
        pts_ms = int(pts_ms)
        out: list[_Chunk] = []
        if keyframe and self.frames:
            out.append(self._cluster())
        if not self.frames and not keyframe:
            self.dropped += 1  # nothing to decode it from
            return out
        if self.converter:
            payload = self.converter.convert(payload)
        elif is_annexb(payload) and not _plausible_length_prefixed(payload):
            raise SourceError("an Annex-B packet with an avcC/hvcC codec private: pass "
                              "codec_private=None (or Annex-B) to convert the stream")
        if self.base_pts is None:
            self.base_pts = pts_ms
            if self.start_ms is None:
                self.start_ms = 0 if self.absolute_pts else round(time.time() * 1000)
        if not self.header_written:
            if self.converter:
                self.codec_private = self.converter.codec_private()
            out.insert(0, _Chunk(self._header()))
            self.header_written = True
        timecode = pts_ms if self.absolute_pts else self.start_ms + pts_ms - self.base_pts
        if timecode < 0:
            raise SourceError(f"frame at pts {pts_ms} ms falls before the epoch")
        if self.frames:  # fail early rather than buffer an endless GOP
            self._check_span(min(self.gop_span[0], timecode), max(self.gop_span[1], timecode))
            self.gop_span = (min(self.gop_span[0], timecode), max(self.gop_span[1], timecode))
        else:
            self.gop_span = (timecode, timecode)
        self.frames.append(mkv.Frame(self.track, timecode, bool(keyframe), bytes(payload)))
        return out

    def _check_span(self, start: int, end: int) -> None:
        if end - start > self.max_fragment_ms:
            raise SourceError(
                f"a GOP longer than {self.max_fragment_ms} ms, the longest a KVS fragment may "
                f"be (from producer time {format_timestamp(start)}): re-encode with keyframes "
                f"at most {self.max_fragment_ms // 1000} s apart (e.g. ffmpeg -g)")

    def finish(self) -> list[_Chunk]:
        return [self._cluster()] if self.frames else []

    def _cluster(self) -> _Chunk:
        frames, self.frames = self.frames, []
        start, end = self.gop_span
        self._check_span(start, end)
        if self.last_timecode is not None and start < self.last_timecode:
            raise SourceError(f"timestamps go backwards: a GOP starts at {start} ms, before the "
                              f"previous one at {self.last_timecode} ms")
        self.last_timecode = start
        data, _ = mkv.write_cluster(mkv.Cluster(start, frames))
        base = self.start_ms if not self.absolute_pts else self.base_pts
        return _Chunk(data, start, len(frames), end - (base or 0))


def _plausible_length_prefixed(payload: bytes) -> bool:
    try:
        split_length_prefixed(payload)
        return True
    except SourceError:
        return False


def _packet_fields(p) -> tuple[int, bool, bytes]:
    if isinstance(p, Packet):
        return p.pts_ms, p.keyframe, p.payload
    pts_ms, keyframe, payload = p
    return pts_ms, keyframe, payload


def media_chunks(packets: Iterable, video: VideoFormat, *, start_ms: int | None = None,
                 absolute_pts: bool = False, max_fragment_ms: int = MAX_FRAGMENT_MS,
                 stop: threading.Event | None = None) -> Iterator[_Chunk]:
    """The PutMedia body for `packets`, as header and cluster chunks."""
    builder = FragmentBuilder(video, start_ms, absolute_pts=absolute_pts,
                              max_fragment_ms=max_fragment_ms)
    it = iter(packets)
    try:
        for p in it:
            if stop is not None and stop.is_set():
                break
            yield from builder.add(*_packet_fields(p))
        yield from builder.finish()
        if builder.last_timecode is None and not (stop is not None and stop.is_set()):
            raise SourceError("the video has no keyframe: nothing to upload"
                              + (f" ({builder.dropped} packets dropped)" if builder.dropped else ""))
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


# ----------------------------------------------------------------------------- acks and summary

@dataclass
class Ack:
    event_type: str                   # BUFFERING | RECEIVED | PERSISTED | ERROR | IDLE
    timecode: int | None = None       # FragmentTimecode: the cluster timecode
    fragment_number: str | None = None
    error_id: int | None = None
    error_code: str | None = None
    lag_ms: float | None = None       # cluster sent -> this ack (RECEIVED/PERSISTED)
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, obj: dict) -> "Ack":
        number = obj.get("FragmentNumber")
        code = obj.get("ErrorCode")
        return cls(event_type=str(obj.get("EventType", "")),
                   timecode=_int_or_none(obj.get("FragmentTimecode")),
                   fragment_number=str(number) if number is not None else None,
                   error_id=_int_or_none(obj.get("ErrorId")),
                   error_code=str(code) if code is not None else None, raw=obj)


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class AckParser:
    """Response body bytes -> Acks. Accepts one JSON object per line, or objects back to back."""

    def __init__(self):
        self.buf = ""
        self._bytes = bytearray()
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[Ack]:
        self._bytes += data
        try:
            self.buf += self._bytes.decode("utf-8")
            self._bytes.clear()
        except UnicodeDecodeError:
            return []  # a multi-byte character split across reads: wait for the rest
        acks = []
        while True:
            text = self.buf.lstrip()
            if not text:
                self.buf = ""
                return acks
            try:
                obj, end = self._decoder.raw_decode(text)
            except json.JSONDecodeError:
                if "\n" in text:  # a complete but malformed line: skip it
                    self.buf = text.split("\n", 1)[1]
                    continue
                self.buf = text
                return acks
            self.buf = text[end:]
            if isinstance(obj, dict):
                acks.append(Ack.from_json(obj))


@dataclass
class PutSummary:
    stream: str
    fragments_sent: int = 0
    fragments_received: int = 0
    fragments_persisted: int = 0
    fragment_numbers: list[str] = field(default_factory=list)     # in ack order
    fragment_timecodes: list[int] = field(default_factory=list)   # of those numbers
    frames_sent: int = 0
    bytes_sent: int = 0
    ack_latency_ms: list[float] = field(default_factory=list)     # cluster sent -> final ack
    elapsed_s: float = 0.0
    data_retained: bool | None = None  # False: the stream keeps no data (RECEIVED is final)
    first_timecode: int | None = None
    last_timecode: int | None = None

    @property
    def fragments_acked(self) -> int:
        return self.fragments_received if self.data_retained is False else self.fragments_persisted

    @property
    def mean_ack_latency_ms(self) -> float | None:
        lat = self.ack_latency_ms
        return sum(lat) / len(lat) if lat else None

    @property
    def max_ack_latency_ms(self) -> float | None:
        return max(self.ack_latency_ms) if self.ack_latency_ms else None

    def line(self) -> str:
        what = ("received (the stream keeps no data)" if self.data_retained is False
                else "persisted")
        text = (f"{self.stream}: {self.fragments_acked} fragments {what}, {self.frames_sent} frames,"
                f" {self.bytes_sent / 1e6:.2f} MB in {self.elapsed_s:.2f} s")
        if self.ack_latency_ms:
            text += (f", ack lag avg {self.mean_ack_latency_ms:.0f} ms, "
                     f"max {self.max_ack_latency_ms:.0f} ms")
        if self.first_timecode is not None:
            text += (f", producer time {format_timestamp(self.first_timecode)} .. "
                     f"{format_timestamp(self.last_timecode)}")
        return text


def format_timestamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def parse_timestamp(text: str) -> int:
    """ISO 8601 (a missing zone means UTC) or epoch seconds (fractions allowed) -> epoch ms."""
    text = text.strip()
    try:
        return round(float(text) * 1000)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time or epoch seconds: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return round(when.timestamp() * 1000)


# ----------------------------------------------------------------------------- the upload

class _Prefetch:
    """Runs a blocking iterator in a thread, handing items to the event loop (bounded)."""

    _END = object()

    def __init__(self, iterable: Iterable, maxsize: int = 16):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.slots = threading.Semaphore(maxsize)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(iterable,), daemon=True,
                                       name="kvslite-producer-source")
        self.thread.start()

    def _push(self, item) -> bool:
        while not self.slots.acquire(timeout=0.2):
            if self.stop.is_set():
                return False
        if self.stop.is_set():
            return False
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is gone
            return False
        return True

    def _run(self, iterable: Iterable) -> None:
        it = None
        try:
            it = iter(iterable)
            for item in it:
                if not self._push(("item", item)):
                    return
            self._push(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the loop and re-raised there
            self._push(("error", e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass

    async def get(self):
        kind, value = await self.queue.get()
        self.slots.release()
        if kind == "error":
            raise value
        return self._END if kind == "end" else value

    def close(self) -> None:
        self.stop.set()


class _PutMediaUpload:
    """One PutMedia request: the chunked body goes up while the acks come down."""

    def __init__(self, url: str, headers: list[tuple[str, str]], summary: PutSummary, *,
                 realtime: bool = False, data_retained: bool | None = None,
                 connect_timeout: float = 10.0, ack_timeout: float = 30.0,
                 on_ack: Callable[[Ack, PutSummary], None] | None = None,
                 on_sent: Callable[[int, PutSummary], None] | None = None,
                 stop: threading.Event | None = None):
        self.url = url
        self.stop = stop
        self.headers = headers
        self.summary = summary
        self.realtime = realtime
        self.final_event = "RECEIVED" if data_retained is False else "PERSISTED"
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.on_ack = on_ack
        self.on_sent = on_sent
        self.sent_at: dict[int, float] = {}   # cluster timecode -> when it was written
        self.outstanding: set[int] = set()    # timecodes without their final ack
        self.received: set[int] = set()
        self.body_done = False
        self.all_acked = asyncio.Event()
        self.last_progress = time.monotonic()
        self.source_error: BaseException | None = None

    async def run(self, chunks: _Prefetch) -> None:
        parts = urlsplit(self.url)
        https = parts.scheme == "https"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProducerError(f"not an http(s) URL: {self.url!r}")
        port = parts.port or (443 if https else 80)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                parts.hostname, port, ssl=ssl.create_default_context() if https else None,
                limit=1 << 20), self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise ProducerError(f"cannot connect to {parts.netloc}: {e or 'timed out'}") from None
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        writer.write(self.conn.send(h11.Request(method="POST", target=target,
                                                headers=self.headers)))
        self.started = time.monotonic()
        receive = asyncio.create_task(self._receive())
        send = asyncio.create_task(self._send(chunks))
        try:
            await self._supervise(send, receive)
        finally:
            chunks.close()
            for task in (send, receive):
                task.cancel()
            await asyncio.gather(send, receive, return_exceptions=True)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2)
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                pass
        if self.source_error is not None:
            raise self.source_error

    async def _supervise(self, send: asyncio.Task, receive: asyncio.Task) -> None:
        done, _ = await asyncio.wait({send, receive}, return_when=asyncio.FIRST_COMPLETED)
        if receive in done:
            receive.result()  # raises HttpError / AckError / connection errors
            if not send.done():
                raise ProducerError("the server ended the PutMedia response before the upload "
                                    "finished")
        error = send.exception()
        if error is not None:
            if isinstance(error, (OSError, h11.LocalProtocolError)):
                # The server may have answered (404, 403, ...) and closed: prefer its reason.
                try:
                    await asyncio.wait_for(asyncio.shield(receive), 5)
                except ProducerError:
                    raise
                except Exception:  # noqa: BLE001
                    pass
                raise ProducerError(f"connection lost while sending: {error!r}") from error
            raise error
        # The body is complete: wait for the final ack of every fragment.
        while not self.all_acked.is_set():
            if receive.done():
                receive.result()
                self._response_ended()
                return
            waiter = asyncio.create_task(self.all_acked.wait())
            await asyncio.wait({receive, waiter}, timeout=1.0,
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if time.monotonic() - self.last_progress > self.ack_timeout and \
                    not self.all_acked.is_set() and not receive.done():
                raise ProducerError(f"no acknowledgement for {self.ack_timeout:.0f} s; "
                                    f"{len(self.outstanding)} fragment(s) not "
                                    f"{self.final_event.lower()}")
        # Everything is acknowledged; let the server end the response cleanly.
        try:
            await asyncio.wait_for(asyncio.shield(receive), 2)
        except (asyncio.TimeoutError, ProducerError):
            pass

    def _response_ended(self) -> None:
        """The server ended the response after the body: accept it if nothing is missing."""
        if not self.outstanding:
            return
        if self.final_event == "PERSISTED" and self.outstanding <= self.received and \
                self.summary.fragments_persisted == 0:
            self.summary.data_retained = False  # RECEIVED was final: retention 0
            return
        raise ProducerError(f"the server ended the PutMedia response with "
                            f"{len(self.outstanding)} fragment(s) not "
                            f"{self.final_event.lower()}")

    async def _send(self, chunks: _Prefetch) -> None:
        t0 = None
        while True:
            try:
                chunk = await chunks.get()
            except Exception as e:  # noqa: BLE001 - the source failed: end the body cleanly
                if not isinstance(e, ProducerError):
                    wrapped = SourceError(f"reading the video failed: {e!r}")
                    wrapped.__cause__ = e
                    e = wrapped
                self.source_error = e
                break
            if chunk is _Prefetch._END:
                break
            if self.realtime and chunk.timecode is not None:
                # send each GOP once its last frame "happened", as a live camera would
                if t0 is None:
                    t0 = time.monotonic()
                while not self._stopping():
                    delay = t0 + chunk.media_end_ms / 1000 - time.monotonic()
                    if delay <= 0:
                        break
                    await asyncio.sleep(min(delay, 0.1))
            if self._stopping() and chunk.timecode is not None:
                break  # asked to stop: end the body after the fragments already sent
            data = self.conn.send(h11.Data(data=chunk.data))
            if chunk.timecode is not None:
                tc = chunk.timecode
                self.sent_at[tc] = time.monotonic()
                self.outstanding.add(tc)
                self.all_acked.clear()
                s = self.summary
                s.fragments_sent += 1
                s.frames_sent += chunk.frames
                s.first_timecode = tc if s.first_timecode is None else s.first_timecode
                s.last_timecode = tc
            self.writer.write(data)
            self.summary.bytes_sent += len(chunk.data)
            await self.writer.drain()
            self.last_progress = time.monotonic()
            if self.on_sent is not None and chunk.timecode is not None:
                self.on_sent(len(chunk.data), self.summary)
        self.writer.write(self.conn.send(h11.EndOfMessage()))
        await self.writer.drain()
        self.body_done = True
        self.last_progress = time.monotonic()
        if not self.outstanding:
            self.all_acked.set()

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    async def _read_more(self) -> None:
        try:
            data = await self.reader.read(65536)
        except (OSError, ssl.SSLError) as e:
            raise ProducerError(f"connection lost while reading acks: {e!r}") from None
        try:
            self.conn.receive_data(data)
        except h11.RemoteProtocolError as e:
            raise ProducerError(f"bad HTTP response from the server: {e}") from None

    async def _next_event(self):
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                raise ProducerError(f"the server closed the connection or sent bad HTTP: "
                                    f"{e}") from None
            if event is not h11.NEED_DATA:
                return event
            await self._read_more()

    async def _receive(self) -> None:
        while True:
            event = await self._next_event()
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue
            if isinstance(event, h11.ConnectionClosed):
                raise ProducerError("the server closed the connection without a response")
            break
        response: h11.Response = event
        if response.status_code != 200:
            await self._raise_http_error(response)
        parser = AckParser()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                for ack in parser.feed(bytes(event.data)):
                    self._handle_ack(ack)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.ConnectionClosed):
                return

    async def _raise_http_error(self, response: h11.Response) -> None:
        body = bytearray()
        try:
            while True:
                event = await asyncio.wait_for(self._next_event(), 5)
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > 1 << 16:
                        break
                else:
                    break
        except (ProducerError, asyncio.TimeoutError):
            pass
        raise http_error(response.status_code, dict((k.decode().lower(), v.decode("latin-1"))
                                                    for k, v in response.headers), bytes(body))

    def _handle_ack(self, ack: Ack) -> None:
        s, now = self.summary, time.monotonic()
        if ack.event_type != "IDLE":
            self.last_progress = now
        if ack.event_type == "ERROR":
            raise AckError(ack)
        tc = ack.timecode
        if ack.event_type in ("RECEIVED", "PERSISTED") and tc in self.sent_at:
            ack.lag_ms = (now - self.sent_at[tc]) * 1000
        if ack.event_type == "RECEIVED":
            s.fragments_received += 1
            self.received.add(tc)
        elif ack.event_type == "PERSISTED":
            s.fragments_persisted += 1
            s.data_retained = True
            if ack.fragment_number is not None:
                s.fragment_numbers.append(ack.fragment_number)
                s.fragment_timecodes.append(tc)
        if ack.event_type == self.final_event and tc in self.outstanding:
            self.outstanding.discard(tc)
            if ack.lag_ms is not None:
                s.ack_latency_ms.append(ack.lag_ms)
            if self.final_event == "RECEIVED" and ack.fragment_number is not None:
                s.fragment_numbers.append(ack.fragment_number)
                s.fragment_timecodes.append(tc)
            if self.body_done and not self.outstanding:
                self.all_acked.set()
        if self.on_ack is not None:
            self.on_ack(ack, s)


def http_error(status: int, headers: dict[str, str], body: bytes,
               operation: str = "PutMedia") -> HttpError:
    """An AWS JSON error response as an HttpError (code from x-amzn-ErrorType or the body)."""
    code = headers.get("x-amzn-errortype") or headers.get("x-amz-errortype") or ""
    message = ""
    try:
        obj = json.loads(body or b"{}")
        if isinstance(obj, dict):
            message = str(obj.get("message") or obj.get("Message") or "")
            code = code or str(obj.get("__type") or obj.get("code") or "")
    except ValueError:
        message = body.decode("utf-8", "replace")[:500]
    code = code.split(":", 1)[0].rsplit("#", 1)[-1] or f"HTTP{status}"
    return HttpError(status, code, message or "(no message)", operation)


def putmedia_headers(url: str, *, stream_name: str | None = None, stream_arn: str | None = None,
                     producer_start_ms: int, credentials=None, region: str = "us-east-1",
                     user_agent: str = USER_AGENT) -> list[tuple[str, str]]:
    """The PutMedia request headers, SigV4-signed when `credentials` are given.

    The payload hash is that of the empty string: the body streams and is not signed,
    exactly as the KVS producer SDK does.
    """
    if (stream_name is None) == (stream_arn is None):
        raise ValueError("give exactly one of stream_name and stream_arn")
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    seconds, millis = divmod(int(producer_start_ms), 1000)
    headers = {"host": netloc, "user-agent": user_agent,
               "x-amzn-fragment-acknowledgment-required": "1",
               "x-amzn-fragment-timecode-type": "ABSOLUTE",
               "x-amzn-producer-start-timestamp": f"{seconds}.{millis:03d}",
               "transfer-encoding": "chunked"}
    if stream_arn is not None:
        headers["x-amzn-stream-arn"] = stream_arn
    else:
        headers["x-amzn-stream-name"] = stream_name
    if credentials is not None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="POST", url=url, headers=dict(headers), data=b"")
        frozen = credentials.get_frozen_credentials() \
            if hasattr(credentials, "get_frozen_credentials") else credentials
        SigV4Auth(frozen, "kinesisvideo", region).add_auth(request)
        for name, value in request.headers.items():
            headers[name.lower()] = value
    return list(headers.items())


# ----------------------------------------------------------------------------- the producer

class Producer:
    """Uploads video to one stream with PutMedia.

    `endpoint_url` is the control-plane URL (kvslite, or https://kinesisvideo.<region>.
    amazonaws.com for AWS); None means $KVSLITE_ENDPOINT_URL or http://127.0.0.1:4567.
    `credentials`: a botocore Credentials object, a (key, secret[, token]) tuple, or None
    for the usual AWS chain (environment, ~/.aws, ...); with no credentials anywhere the
    requests go unsigned. The data endpoint comes from GetDataEndpoint (APIName
    PUT_MEDIA) unless `data_endpoint` is given.
    """

    def __init__(self, stream_name: str | None = None, *, stream_arn: str | None = None,
                 endpoint_url: str | None = None, region: str | None = None, credentials=None,
                 data_endpoint: str | None = None, connect_timeout: float = 10.0,
                 ack_timeout: float = 30.0, user_agent: str = USER_AGENT):
        if stream_name is None and stream_arn is None:
            raise ValueError("give a stream_name or a stream_arn")
        if stream_name is not None and stream_name.startswith("arn:") and stream_arn is None:
            stream_name, stream_arn = None, stream_name
        self.stream_name, self.stream_arn = stream_name, stream_arn
        self.endpoint_url = (endpoint_url or os.environ.get("KVSLITE_ENDPOINT_URL")
                             or DEFAULT_ENDPOINT_URL)
        self._data_endpoint = data_endpoint
        self.connect_timeout, self.ack_timeout = connect_timeout, ack_timeout
        self.user_agent = user_agent
        self.credentials, self.region = _credentials_and_region(credentials, region)
        self._client = None
        self._retention: int | None = None

    @property
    def stream(self) -> str:
        return self.stream_name or self.stream_arn

    def _stream_params(self) -> dict:
        return {"StreamName": self.stream_name} if self.stream_name else \
            {"StreamARN": self.stream_arn}

    @property
    def client(self):
        """A boto3 `kinesisvideo` (control plane) client for this producer."""
        if self._client is None:
            import boto3
            from botocore import UNSIGNED
            from botocore.config import Config

            creds = self.credentials
            kwargs = {} if creds is None else {
                "aws_access_key_id": creds.access_key, "aws_secret_access_key": creds.secret_key,
                "aws_session_token": creds.token}
            config = Config(retries={"max_attempts": 3},
                            **({"signature_version": UNSIGNED} if creds is None else {}))
            self._client = boto3.client("kinesisvideo", endpoint_url=self.endpoint_url,
                                        region_name=self.region, config=config, **kwargs)
        return self._client

    def _call(self, operation: str, **params):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(**params)
        except ClientError as e:
            err = e.response.get("Error", {})
            raise HttpError(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0),
                            err.get("Code", "Unknown"), err.get("Message", str(e)),
                            e.operation_name) from None
        except BotoCoreError as e:
            raise ProducerError(f"{operation}: {e}") from None

    def describe(self) -> dict:
        """DescribeStream's StreamInfo (raises HttpError ResourceNotFoundException)."""
        info = self._call("describe_stream", **self._stream_params())["StreamInfo"]
        self._retention = info.get("DataRetentionInHours")
        return info

    def ensure_stream(self, *, create: bool = False, retention_hours: int = 24,
                      media_type: str = "video/h264", wait_s: float = 60.0) -> dict:
        """DescribeStream; with `create`, CreateStream when it is missing and wait for ACTIVE.
        Returns StreamInfo."""
        try:
            info = self.describe()
        except HttpError as e:
            if e.code != "ResourceNotFoundException" or not create:
                raise
            if self.stream_name is None:
                raise ProducerError("--create needs a stream name, not an ARN") from None
            try:
                self._call("create_stream", StreamName=self.stream_name,
                           DataRetentionInHours=retention_hours, MediaType=media_type)
            except HttpError as e2:
                if e2.code != "ResourceInUseException":
                    raise
            info = self.describe()
        deadline = time.monotonic() + wait_s
        while info.get("Status") in ("CREATING", "UPDATING") and time.monotonic() < deadline:
            time.sleep(1)
            info = self.describe()
        if info.get("Status") not in (None, "ACTIVE"):
            raise ProducerError(f"stream {self.stream} is {info.get('Status')}, not ACTIVE")
        return info

    def data_endpoint(self) -> str:
        if self._data_endpoint is None:
            self._data_endpoint = self._call("get_data_endpoint", APIName="PUT_MEDIA",
                                             **self._stream_params())["DataEndpoint"]
        return self._data_endpoint

    def put(self, packets: Iterable, video: VideoFormat | None = None, **kwargs) -> PutSummary:
        """Upload `packets` (see put_async) and wait for their acks. Blocking."""
        return asyncio.run(self.put_async(packets, video, **kwargs))

    async def put_async(self, packets: Iterable, video: VideoFormat | None = None, *,
                        start_timestamp: int | float | str | datetime | None = None,
                        absolute_pts: bool = False, realtime: bool = False,
                        max_fragment_ms: int = MAX_FRAGMENT_MS,
                        on_ack: Callable[[Ack, PutSummary], None] | None = None,
                        on_sent: Callable[[int, PutSummary], None] | None = None,
                        stop: threading.Event | None = None) -> PutSummary:
        """Upload `packets`: an iterable (it may block, e.g. a live source; it runs in a
        thread) of `(pts_ms, keyframe, payload)` tuples or `Packet`s in decode order.

        Producer timestamps: `start_timestamp` (epoch ms, a datetime, or an ISO 8601 /
        epoch-seconds string; default now) + the pts offset from the first keyframe; with
        `absolute_pts` the pts values already are epoch ms. `realtime` paces the upload at
        the media's own rate. Setting `stop` ends the upload cleanly at the next packet.
        Raises AckError, HttpError, SourceError or ProducerError (with `.summary`).
        """
        video = video or VideoFormat()
        start_ms = _to_epoch_ms(start_timestamp)
        summary = PutSummary(stream=self.stream)
        t0 = time.monotonic()
        try:
            if self._retention is None and self._data_endpoint is None:
                try:  # learn the retention: with 0, RECEIVED is the final ack
                    await asyncio.to_thread(self.describe)
                except HttpError:
                    pass  # GetDataEndpoint or PutMedia will say what is wrong
            if self._retention is not None:
                summary.data_retained = self._retention > 0
            url = (await asyncio.to_thread(self.data_endpoint)).rstrip("/") + "/putMedia"
            headers = putmedia_headers(
                url, stream_name=self.stream_name, stream_arn=self.stream_arn,
                producer_start_ms=start_ms if start_ms is not None else round(time.time() * 1000),
                credentials=self.credentials, region=self.region, user_agent=self.user_agent)
            chunks = _Prefetch(media_chunks(packets, video, start_ms=start_ms,
                                            absolute_pts=absolute_pts,
                                            max_fragment_ms=max_fragment_ms, stop=stop))
            upload = _PutMediaUpload(url, headers, summary, realtime=realtime,
                                     data_retained=summary.data_retained,
                                     connect_timeout=self.connect_timeout,
                                     ack_timeout=self.ack_timeout, on_ack=on_ack, on_sent=on_sent,
                                     stop=stop)
            try:
                await upload.run(chunks)
            finally:
                chunks.close()
        except ProducerError as e:
            summary.elapsed_s = time.monotonic() - t0
            e.summary = summary
            raise
        summary.elapsed_s = time.monotonic() - t0
        return summary

    def put_source(self, source: str, **kwargs) -> PutSummary:
        """Upload a file or live URL (see put_source())."""
        return _put_source(self, source, **kwargs)


def _credentials_and_region(credentials, region: str | None):
    from botocore.credentials import Credentials

    if isinstance(credentials, (tuple, list)):
        credentials = Credentials(*credentials)
    if credentials is None or region is None:
        import boto3

        session = boto3.Session()
        if credentials is None:
            credentials = session.get_credentials()
        region = region or session.region_name
    return credentials, region or "us-east-1"


def _to_epoch_ms(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return round(value.timestamp() * 1000)
    if isinstance(value, str):
        return parse_timestamp(value)
    return int(value)


# ----------------------------------------------------------------------------- sources (PyAV)

@dataclass
class MediaSource:
    """A demuxed video stream: its format, its duration if known, and its packets."""

    video: VideoFormat
    duration_ms: int | None
    packets: Iterator[tuple[int, bool, bytes]]
    description: str = ""
    skipped_streams: int = 0


def open_source(source: str, *, timeout: float = 15.0, options: dict | None = None) -> MediaSource:
    """Open a file or URL with FFmpeg (PyAV) and return its first video stream, unchanged
    (no re-encoding). Audio and other streams are skipped."""
    import av

    opts = dict(options or {})
    if source.startswith(("rtsp://", "rtsps://")):
        opts.setdefault("rtsp_transport", "tcp")
    try:
        container = av.open(source, options=opts, timeout=timeout)
    except (OSError, av.FFmpegError) as e:
        raise SourceError(f"cannot open {source}: {e}") from None
    try:
        if not container.streams.video:
            raise SourceError(f"{source} has no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        codec = normalize_codec(ctx.name or "")
        rate = stream.average_rate or stream.guessed_rate
        video = VideoFormat(codec=codec, codec_private=bytes(ctx.extradata or b"") or None,
                            width=ctx.width or None, height=ctx.height or None,
                            frame_rate=float(rate) if rate else None)
        duration_ms = None
        if stream.duration and stream.time_base:
            duration_ms = math.ceil(stream.duration * stream.time_base * 1000)
        elif container.duration:
            duration_ms = math.ceil(container.duration / 1000)
        elif os.path.isfile(source):  # no duration in the headers: read the timestamps once
            duration_ms = _scan_duration_ms(source, opts, timeout)
    except BaseException:
        container.close()
        raise
    return MediaSource(video, duration_ms, _demux(container, stream, video),
                       f"{codec} {video.width}x{video.height}",
                       len(container.streams) - 1)


def _scan_duration_ms(source: str, options: dict, timeout: float) -> int | None:
    import av

    try:
        with av.open(source, options=options, timeout=timeout) as container:
            stream = container.streams.video[0]
            tb = stream.time_base or Fraction(1, 1000)
            times = [p.pts for p in container.demux(stream) if p.size and p.pts is not None]
    except (OSError, av.FFmpegError):
        return None
    if not times:
        return None
    rate = stream.average_rate or stream.guessed_rate
    return math.ceil((max(times) - min(times)) * tb * 1000 + (1000 / rate if rate else 0))


def _demux(container, stream, video: VideoFormat) -> Iterator[tuple[int, bool, bytes]]:
    import av

    tb = stream.time_base or Fraction(1, 1000)
    frame_ms = 1000 / video.frame_rate if video.frame_rate else 40.0
    n = 0
    try:
        for pkt in container.demux(stream):
            if not pkt.size:
                continue
            ts = pkt.pts if pkt.pts is not None else pkt.dts
            pts_ms = round(ts * tb * 1000) if ts is not None else round(n * frame_ms)
            n += 1
            yield pts_ms, bool(pkt.is_keyframe), bytes(pkt)
    except av.FFmpegError as e:
        raise SourceError(f"reading the source failed: {e}") from None
    finally:
        container.close()


def _put_source(producer: Producer, source: str, *, create: bool = False,
                retention_hours: int = 24, realtime: bool = False,
                start_timestamp=None, source_options: dict | None = None,
                on_source: Callable[[MediaSource], None] | None = None, **kwargs) -> PutSummary:
    media = open_source(source, options=source_options)
    try:
        if create:
            producer.ensure_stream(create=True, retention_hours=retention_hours,
                                   media_type=MEDIA_TYPES[media.video.codec])
        start_ms = _to_epoch_ms(start_timestamp)
        if start_ms is None:
            start_ms = round(time.time() * 1000)
            if not realtime and media.duration_ms:
                # A file sent faster than real time: stamp it as if it had just been
                # recorded, so that no fragment carries a time in the future.
                start_ms -= media.duration_ms
        if on_source is not None:
            on_source(media)
        return producer.put(media.packets, media.video, start_timestamp=start_ms,
                            realtime=realtime, **kwargs)
    finally:
        try:
            media.packets.close()  # if the upload never started it; else its thread did
        except ValueError:
            pass  # still running in an abandoned source thread; it stops at the next packet


def put_source(source: str, stream: str, *, endpoint_url: str | None = None,
               region: str | None = None, credentials=None, create: bool = False,
               retention_hours: int = 24, realtime: bool = False, start_timestamp=None,
               **kwargs) -> PutSummary:
    """Upload a video file or live URL (anything FFmpeg demuxes: mp4, mkv, ts, rtsp://,
    http://...) to `stream` (a name or an ARN), remuxing its first video stream (H.264 or
    H.265) without re-encoding; audio is skipped.

    `start_timestamp` (epoch ms, datetime, ISO 8601 / epoch seconds string) is the producer
    time of the first keyframe. Default: now with `realtime` or for live sources; for a file
    sent faster than real time, now minus its duration (it "ends now"). `create` creates a
    missing stream with `retention_hours`. Other keyword arguments go to Producer.put_async.
    """
    producer = Producer(stream, endpoint_url=endpoint_url, region=region, credentials=credentials)
    return producer.put_source(source, create=create, retention_hours=retention_hours,
                               realtime=realtime, start_timestamp=start_timestamp, **kwargs)
