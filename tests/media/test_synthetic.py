"""Tests for kvslite.media.synthetic: GOP structure, B-frames, recoverable frame identity."""

import numpy as np
import pytest

from kvslite.media.mkv import MkvReader
from kvslite.media.synthetic import (EncodedVideo, clusters, decode_packets, encode_video,
                                     render_frame, stream_header, to_mkv)


def frame_index(video: EncodedVideo, pts_ms: int) -> int:
    """The source frame index (as drawn in the picture) of the frame with this PTS."""
    return video.start_index + round(pts_ms * video.fps / 1000)


def frame_at(video: EncodedVideo, t_ms: float) -> int | None:
    """Presentation-order number of the frame on screen at t_ms (the last one with
    pts <= t_ms), or None before the first frame or from duration_ms on."""
    if t_ms < 0 or t_ms >= video.duration_ms:
        return None
    i = int(t_ms * video.fps // 1000) + 1
    while video.pts_ms(i) > t_ms:
        i -= 1
    return i


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(params=["h264_video", "h265_video"])
def video(request):
    return request.getfixturevalue(request.param)


def test_keyframes_exactly_every_gop(video):
    frame_ms = 1000 // video.fps
    keys = [(i, pts) for i, (pts, key, _) in enumerate(video.packets) if key]
    assert len(video.packets) == 50
    assert keys == [(n, n * frame_ms) for n in range(0, 50, video.gop)]
    # Closed GOPs: every frame of GOP k has a pts within GOP k.
    for i, (pts, _, _) in enumerate(video.packets):
        assert pts // (video.gop * frame_ms) == i // video.gop


def test_b_frames_and_timestamps(video):
    pts = [p for p, _, _ in video.packets]
    assert pts != sorted(pts), "no reordering: B-frames missing"
    assert sorted(pts) == [round(i * 1000 / video.fps) for i in range(len(pts))]
    assert video.duration_ms == 2000


def test_codec_private_and_length_prefixed_payloads(video):
    assert video.codec_private[0] == 1  # avcC/hvcC configurationVersion, not an Annex-B start code
    assert video.codec_id == {"h264": "V_MPEG4/ISO/AVC", "h265": "V_MPEGH/ISO/HEVC"}[video.codec]
    for _, _, payload in video.packets:
        pos = 0
        while pos < len(payload):  # 4-byte big-endian NAL lengths tile the payload exactly
            pos += 4 + int.from_bytes(payload[pos:pos + 4], "big")
        assert pos == len(payload)


def test_reference_decode_identifies_every_frame(video):
    frames = video.frames_rgb()
    assert [p for p, _ in frames] == [video.pts_ms(i) for i in range(50)]
    assert frames[0][1].shape == (video.height, video.width, 3)
    for pts, img in frames:
        n = frame_index(video, pts)
        own = psnr(img, render_frame(n, video.width, video.height, video.fps))
        assert own > 22, (n, own)
        for other in (n - 1, n + 1):
            near = psnr(img, render_frame(other, video.width, video.height, video.fps))
            assert own - near > 5, (n, other, own, near)
    # Decoded neighbours differ clearly from each other too.
    for (_, a), (_, b) in zip(frames, frames[1:]):
        assert psnr(a, b) < 22


def test_start_index_and_320x240():
    video = encode_video("h264", width=320, height=240, fps=10, seconds=1.0, gop=5, bframes=1,
                         start_index=1234)
    assert [k for _, k, _ in video.packets] == [True, False, False, False, False] * 2
    frames = video.frames_rgb()
    assert frame_index(video, frames[0][0]) == 1234
    own = psnr(frames[3][1], render_frame(1237, 320, 240, 10))
    assert own > 25
    assert own - psnr(frames[3][1], render_frame(1236, 320, 240, 10)) > 5


def test_decode_packets_matches_frames_rgb(h264_video):
    again = decode_packets("h264", h264_video.codec_private, h264_video.packets[:10])
    assert [p for p, _ in again] == [h264_video.pts_ms(i) for i in range(10)]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(again, h264_video.frames_rgb()))


@pytest.mark.parametrize("per_gop", [True, False])
def test_to_mkv_structure(video, per_gop):
    t0 = 1_700_000_000_000
    body = to_mkv(video, t0, cluster_per_gop=per_gop)
    reader = MkvReader()
    events = reader.feed(body) + reader.close()
    assert events[0] == stream_header(video)
    got = events[1:]
    assert got == clusters(video, t0, cluster_per_gop=per_gop)
    assert len(got) == (len(video.packets) // video.gop if per_gop else 1)
    for c in got:
        assert c.frames[0].keyframe
        assert c.timecode == c.frames[0].timecode == min(f.timecode for f in c.frames)
    frames = [f for c in got for f in c.frames]
    assert [(f.timecode - t0, f.keyframe, f.payload) for f in frames] == video.packets


@pytest.mark.parametrize("fps", [16, 30])
def test_odd_frame_rates_and_frame_at(fps):
    video = encode_video("h264", width=64, height=48, fps=fps, seconds=1.0, gop=fps // 2)
    assert sorted(p for p, _, _ in video.packets) == [video.pts_ms(i) for i in range(fps)]
    assert [p for p, _ in video.frames_rgb()] == [video.pts_ms(i) for i in range(fps)]
    assert [frame_at(video, video.pts_ms(i)) for i in range(fps)] == list(range(fps))
    assert [frame_at(video, video.pts_ms(i) - 0.5) for i in range(1, fps)] == \
        list(range(fps - 1))
    assert frame_at(video, -1) is None and frame_at(video, video.duration_ms) is None
    with pytest.raises(ValueError):
        encode_video("h264", width=63, height=48)
