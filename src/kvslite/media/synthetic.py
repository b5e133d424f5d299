"""Synthetic test/demo video: frames whose index can be read back from the picture.

Each picture shows a 7-segment clock (mm:ss.ff) and frame counter, a 2x8 grid of large
black/white blocks spelling the frame index in binary, and a bar that sweeps across the
picture once per second, so decoded frame n is easy to tell from n-1 and n+1.

Encoding uses PyAV (libx264 / libx265) with fixed closed GOPs and B-frames; the result is
remuxed through FFmpeg's Matroska muxer in memory so that CodecPrivate is avcC/hvcC and the
payloads are length-prefixed NAL units, exactly as they travel in KVS MKV.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import av
import numpy as np

from .limits import VIDEO_TRACK_TYPE
from .decode import video_decoder
from .mkv import Cluster, Frame, StreamHeader, Track, write_cluster, write_header, write_tags

CODECS = {  # codec name -> (encoder, decoder, Matroska CodecID)
    "h264": ("libx264", "h264", "V_MPEG4/ISO/AVC"),
    "h265": ("libx265", "hevc", "V_MPEGH/ISO/HEVC"),
}
CODECS["hevc"] = CODECS["h265"]

#            a  b  c  d  e  f  g    (segments: a top, b top-right, c bottom-right, d bottom,
_DIGITS = ["1111110", "0110000", "1101101", "1111001", "0110011",   # e bottom-left, f top-left,
           "1011011", "1011111", "1110000", "1111111", "1111011"]   # g middle)


def _draw_char(img: np.ndarray, ch: str, x: int, y: int, w: int, h: int, color) -> None:
    t = max(1, min(w, h) // 6)  # stroke thickness
    cx = x + w // 2 - t // 2
    if ch == ":":
        img[y + h // 4: y + h // 4 + t, cx:cx + t] = color
        img[y + 3 * h // 4 - t: y + 3 * h // 4, cx:cx + t] = color
        return
    if ch == ".":
        img[y + h - t: y + h, cx:cx + t] = color
        return
    if not ch.isdigit():
        return
    m = h // 2
    boxes = [(y, y + t, x, x + w), (y, y + m + t // 2 + 1, x + w - t, x + w),
             (y + m - t // 2, y + h, x + w - t, x + w), (y + h - t, y + h, x, x + w),
             (y + m - t // 2, y + h, x, x + t), (y, y + m + t // 2 + 1, x, x + t),
             (y + m - t // 2, y + m - t // 2 + t, x, x + w)]
    for on, (y0, y1, x0, x1) in zip(_DIGITS[int(ch)], boxes):
        if on == "1":
            img[y0:y1, x0:x1] = color


def _draw_text(img: np.ndarray, text: str, x: int, y: int, h: int, w: int, color) -> None:
    cell = w // len(text)
    for i, ch in enumerate(text):
        _draw_char(img, ch, x + i * cell + cell // 8, y, cell - cell // 4, h, color)


INDEX_TOP, INDEX_BOTTOM = 0.4, 0.75  # the band of the frame index's blocks (of the height)


def render_frame(index: int, width: int = 320, height: int = 240, fps: int = 25) -> np.ndarray:
    """The source picture (H x W x 3 uint8 RGB) of frame `index`."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = 40 + 50 * xx // max(width, 1)
    img[..., 1] = 40 + 50 * yy // max(height, 1)
    img[..., 2] = 90
    # Clock and frame counter (top 40%).
    secs, ff = divmod(index, fps)
    band = int(height * INDEX_TOP)
    line_h = band // 2 - 4
    _draw_text(img, f"{secs // 60 % 100:02d}:{secs % 60:02d}.{ff % 100:02d}", 2, 2, line_h,
               width - 4, (255, 255, 0))
    _draw_text(img, f"{index % 10**6:06d}", 2 + width // 8, band // 2 + 2, line_h,
               width - 4 - width // 4, (255, 255, 255))
    # Frame index in binary, 16 big blocks (next 35%; read_frame_index reads them back).
    y0, y1 = band, int(height * INDEX_BOTTOM)
    for bit in range(16):
        r, c = divmod(bit, 8)
        by0 = y0 + (y1 - y0) * r // 2
        by1 = y0 + (y1 - y0) * (r + 1) // 2
        bx0, bx1 = width * c // 8, width * (c + 1) // 8
        img[by0:by1, bx0:bx1] = 235 if (index >> (15 - bit)) & 1 else 16
    # Bar sweeping the width once per second (bottom 25%).
    bar_w = max(2, width // 10)
    x = (index % fps) * (width - bar_w) // max(fps - 1, 1)
    img[y1:, :] = (60, 60, 60)
    img[y1:, x:x + bar_w] = (255, 80 + (index * 37) % 176, 40)
    return img


def read_frame_index(picture: np.ndarray) -> int:
    """The frame index render_frame drew into a decoded picture (any size, RGB or gray):
    each of its 16 blocks read by the mean of the pixels around its centre, which lossy
    coding leaves far from the middle grey."""
    height, width = picture.shape[:2]
    y0, y1 = int(height * INDEX_TOP), int(height * INDEX_BOTTOM)
    index = 0
    for bit in range(16):
        row, col = divmod(bit, 8)
        y, x = y0 + (y1 - y0) * (2 * row + 1) // 4, width * (2 * col + 1) // 16
        centre = picture[max(0, y - 2):y + 3, max(0, x - 2):x + 3]
        index = index << 1 | int(centre.mean() > 128)
    return index


@dataclass
class EncodedVideo:
    codec: str                 # "h264" | "h265"
    codec_id: str              # Matroska CodecID
    codec_private: bytes = field(repr=False)  # avcC / hvcC
    width: int
    height: int
    fps: int
    gop: int
    start_index: int
    # (pts_ms, keyframe, payload) in decode order, pts relative to the first frame
    packets: list[tuple[int, bool, bytes]] = field(repr=False)
    _decoded: list | None = field(default=None, repr=False, compare=False)

    def pts_ms(self, i: int) -> int:
        """PTS in ms (relative to the first frame) of presentation-order frame i."""
        return _pts_ms(i, self.fps)

    @property
    def duration_ms(self) -> int:
        return self.pts_ms(len(self.packets))

    def frames_rgb(self) -> list[tuple[int, np.ndarray]]:
        """Reference decode: (pts_ms, RGB array) in presentation order (cached)."""
        if self._decoded is None:
            self._decoded = decode_packets(self.codec, self.codec_private, self.packets)
        return self._decoded


def _pts_ms(i: int, fps: int) -> int:
    return (2000 * i + fps) // (2 * fps)  # i * 1000 / fps rounded half up, as FFmpeg does


def decode_packets(codec: str, codec_private: bytes | None,
                   packets: list[tuple[int, bool, bytes]]) -> list[tuple[int, np.ndarray]]:
    """Decode (pts, keyframe, payload) packets in decode order; returns (pts, RGB) in
    presentation order."""
    ctx = video_decoder(CODECS[codec][1])
    if codec_private:
        ctx.extradata = codec_private
    out: list[tuple[int, np.ndarray]] = []
    for pts, _, payload in [*packets, (None, False, None)]:
        pkt = None  # None flushes the decoder
        if payload is not None:
            pkt = av.Packet(payload)
            pkt.pts = pts
        for frame in ctx.decode(pkt):
            if frame.pts is not None:  # the packets' timestamps come out on their frames
                out.append((frame.pts, frame.to_ndarray(format="rgb24")))
    out.sort(key=lambda x: x[0])
    return out


def encode_video(codec: str = "h264", *, width: int = 320, height: int = 240, fps: int = 25,
                 seconds: float = 4.0, gop: int = 25, bframes: int = 2,
                 start_index: int = 0) -> EncodedVideo:
    """Encode round(seconds * fps) synthetic frames (indices start_index, start_index+1, ...)
    with keyframes exactly every `gop` frames (closed GOPs) and `bframes` B-frames."""
    encoder, _, codec_id = CODECS[codec]
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ValueError("width and height must be even and at least 16 (yuv420p)")
    params = (f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0:bframes={bframes}"
              f":b-adapt=0")
    if encoder == "libx265":
        options = {"x265-params": params + ":log-level=error:info=0:frame-threads=1:pools=2"}
    else:
        options = {"x264-params": params}
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:  # the muxer sets the global-header flag
        stream = out.add_stream(encoder, rate=fps, options={"preset": "veryfast", **options})
        if not isinstance(stream, av.VideoStream):
            raise TypeError(f"{encoder} is no video encoder")
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = bframes
        # frame threading: one slice per frame on any machine (slice threading, PyAV's
        # default, makes the encoder cut each frame into a slice per core)
        stream.codec_context.thread_type = "FRAME"
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(render_frame(start_index + i, width, height, fps),
                                               format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(io.BytesIO(buf.getvalue()), "r") as inp:
        vs = inp.streams.video[0]
        codec_private = bytes(vs.codec_context.extradata or b"")
        raw = [(p.pts, p.is_keyframe, bytes(p)) for p in inp.demux(vs)
               if p.size and p.pts is not None]
    if codec_private[:1] != b"\x01":
        raise RuntimeError(f"expected avcC/hvcC extradata, got {codec_private[:8].hex()}")
    # Normalize to frame numbers (the muxer may shift timestamps to keep DTS >= 0), then ms.
    first = min(p for p, _, _ in raw)
    packets = [(_pts_ms(round((p - first) * fps / 1000), fps), k, d) for p, k, d in raw]
    return EncodedVideo(codec="h265" if codec == "hevc" else codec, codec_id=codec_id,
                        codec_private=codec_private, width=width, height=height, fps=fps, gop=gop,
                        start_index=start_index, packets=packets)


def stream_header(video: EncodedVideo) -> StreamHeader:
    track = Track(number=1, uid=1, track_type=VIDEO_TRACK_TYPE, codec_id=video.codec_id,
                  codec_private=video.codec_private, name="kvslite synthetic",
                  width=video.width, height=video.height, sampling_frequency=None, channels=None,
                  default_duration_ns=round(1e9 / video.fps))
    return StreamHeader(timecode_scale_ns=1_000_000, tracks=[track], muxing_app="kvslite",
                        writing_app="kvslite.media.synthetic")


def clusters(video: EncodedVideo, start_timecode_ms: int, *,
             cluster_per_gop: bool = True) -> list[Cluster]:
    """The video as Clusters with absolute ms timecodes; one per GOP, or a single one."""
    out: list[Cluster] = []
    for pts, key, payload in video.packets:
        if not out or (key and cluster_per_gop):
            out.append(Cluster(timecode=start_timecode_ms + pts, frames=[]))
        out[-1].frames.append(Frame(1, start_timecode_ms + pts, key, payload))
    return out


def to_mkv(video: EncodedVideo, start_timecode_ms: int, *, cluster_per_gop: bool = True,
           unknown_size_clusters: bool = False, end_of_fragment: bool = False) -> bytes:
    """A KVS-style MKV: header + clusters (absolute timecodes start_timecode_ms + pts).
    Optionally with unknown-size clusters and a closing AWS_KINESISVIDEO_END_OF_FRAGMENT Tags,
    like the KVS producer SDK sends."""
    parts = [write_header(stream_header(video))]
    for c in clusters(video, start_timecode_ms, cluster_per_gop=cluster_per_gop):
        parts.append(write_cluster(c, unknown_size=unknown_size_clusters)[0])
    if end_of_fragment:
        parts.append(write_tags([("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")]))
    return b"".join(parts)
