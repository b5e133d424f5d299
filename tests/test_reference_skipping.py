"""GetImages leaves disposable pictures out of its decodes (media/nal.py): every image must
be exactly the full decode's, pixel for pixel, for H.264 and H.265, with and without
B-frames and B-pyramids, for every frame position in the GOP."""

from __future__ import annotations

import base64

import av
import numpy as np
import pytest
from kvs_media import put_mkv

from kvslite.server.archive.fragments import FrameEntry, pack_frames, unpack_frames
from kvslite.server.archive.sampling import needed_frames
from kvslite.media import nal, synthetic
from kvslite.media.decode import decode_wanted
from kvslite.media.images import encode_image

CASES = [("h264", 0), ("h264", 3), ("h265", 0), ("h265", 3)]  # 3 B-frames: a B-pyramid


@pytest.fixture(scope="module", params=CASES, ids=[f"{c}-b{b}" for c, b in CASES])
def video(request):
    codec, bframes = request.param
    return synthetic.encode_video(codec, seconds=1.2, gop=30, bframes=bframes, width=160,
                                  height=120)


def entries(video) -> list[FrameEntry]:
    """The frame index kvslite keeps, payload offsets standing for packet positions."""
    size = nal.length_size(video.codec_id, video.codec_private)
    return [FrameEntry(1, key, pts, i, len(payload),
                       nal.picture_role(video.codec_id, size, payload))
            for i, (pts, key, payload) in enumerate(video.packets)]


def pixels(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray()  # yuv420p planes, as decoded


def decode(video, frames: list[FrameEntry], wanted: set[int]) -> dict[int, np.ndarray]:
    packets = [(e.offset_ms, video.packets[e.payload_offset][2]) for e in frames]
    return {pts: pixels(f) for pts, f in
            decode_wanted(video.codec_id, video.codec_private, packets, wanted).items()}


def test_roles_are_read_from_the_slices(video):
    index = entries(video)
    disposable = [e for e in index if e.role.disposable]
    bframes = any(a.offset_ms > b.offset_ms for a, b in zip(index, index[1:]))
    assert bool(disposable) == bframes  # B-frames bring disposable pictures; P-only none
    assert not any(e.keyframe for e in disposable)
    assert unpack_frames(pack_frames(index)) == index  # the index keeps them


def test_every_frame_position_is_bit_identical(video):
    index = entries(video)
    gop = [e for e in index if e.payload_offset < 30]  # the first GOP, in decode order
    for target in sorted(e.offset_ms for e in gop):
        last = max(i for i, e in enumerate(index) if e.offset_ms == target)
        prefix = index[: last + 1]
        kept = needed_frames(prefix, {target})
        full = decode(video, prefix, {target})
        assert decode(video, kept, {target}).keys() == full.keys() == {target}
        assert np.array_equal(decode(video, kept, {target})[target], full[target]), target


def test_several_wanted_frames_at_once_are_bit_identical(video):
    index = entries(video)
    wanted = {e.offset_ms for e in index[::4]} | {index[-1].offset_ms}
    kept = needed_frames(index, wanted)
    if any(e.role.disposable for e in index):
        assert len(kept) < len(index)  # something was left out
    full = decode(video, index, wanted)
    skipped = decode(video, kept, wanted)
    assert full.keys() == skipped.keys() == wanted
    assert all(np.array_equal(full[t], skipped[t]) for t in wanted)


@pytest.mark.slow
def test_get_images_png_equals_the_full_decode(video, module_servers):
    server = module_servers("--min-sampling-interval-ms", "40")
    name = f"skip-{video.codec}-{len(video.packets)}-{id(video)}"
    server.client("kinesisvideo").create_stream(StreamName=name, DataRetentionInHours=1)
    start_ms = 1_700_000_000_000
    put_mkv(server.port, name, synthetic.to_mkv(video, start_ms))
    page = server.client("kinesis-video-archived-media").get_images(
        StreamName=name, ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=start_ms / 1000,
        EndTimestamp=(start_ms + 1160) / 1000, SamplingInterval=40, Format="PNG")
    images = page["Images"]
    assert len(images) == 30 and all(i.get("ImageContent") for i in images)
    packets = [(pts, payload) for pts, _, payload in video.packets]
    full = decode_wanted(video.codec_id, video.codec_private, packets,
                         {pts for pts, _ in packets})  # every frame, nothing left out
    for image in images:
        pts = round(image["TimeStamp"].timestamp() * 1000) - start_ms
        assert base64.b64decode(image["ImageContent"]) == encode_image(full[pts], "PNG"), pts


def nal_unit(header: bytes) -> bytes:
    body = header + b"\x88\x84"
    return len(body).to_bytes(4, "big") + body


@pytest.mark.slow
def test_a_frame_is_disposable_only_if_every_slice_is():
    non_ref, ref = nal_unit(b"\x01"), nal_unit(b"\x21")  # H.264 slices, nal_ref_idc 0 / 1
    sei = nal_unit(b"\x06")
    assert nal.picture_role(nal.AVC, 4, sei + non_ref + non_ref).disposable
    assert not nal.picture_role(nal.AVC, 4, non_ref + ref).disposable  # two fields, one kept
    assert nal.picture_role(nal.AVC, 4, sei) == nal.REFERENCE  # no slice: taken as reference
    trail_n, trail_r = nal_unit(b"\x00\x03"), nal_unit(b"\x02\x01")  # H.265, TemporalId 2 / 0
    assert nal.picture_role(nal.HEVC, 4, trail_n) == nal.PictureRole(True, 2)
    assert not nal.picture_role(nal.HEVC, 4, trail_n + trail_r).disposable
    assert not nal.skippable(nal.PictureRole(True, 1), 2)  # a higher layer may use it
    assert nal.skippable(nal.PictureRole(True, 2), 2)
