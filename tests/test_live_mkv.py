"""Live H.264 access units (as a WebRTC receiver depayloads them) into PutMedia's MKV.

Real media: libx264 encodes synthetic frames that carry their own index; their packets
become Annex-B access units with SPS/PPS in-band before each IDR, the way a browser
sends them and aiortc's depayloader hands them over; kvslite's own MKV reader (the one
its ingest uses) and FFmpeg read what LiveMkv makes of them.
"""

from __future__ import annotations

import base64
import io

import av
import numpy as np
import pytest
from kvs_media import mkv_events, persisted_numbers, put_mkv
from PIL import Image

from kvslite.media import h264, mkv, synthetic
from kvslite.media.limits import MAX_FRAGMENT_MS
from kvslite.media.live_mkv import LiveMkv
from kvslite.media.opus_aac import OpusToAac

START_MS = 1_700_000_000_000
FPS, GOP, SECONDS = 30, 10, 2


@pytest.fixture(scope="module")
def video():
    """2 s at 30 fps, an IDR every 10 frames, no B-frames (WebRTC sends none)."""
    return synthetic.encode_video(fps=FPS, gop=GOP, seconds=SECONDS, bframes=0,
                                  width=160, height=96)


def parameter_sets(avcc_record: bytes) -> tuple[bytes, bytes]:
    """The first SPS and PPS of an avcC record."""
    sps_len = int.from_bytes(avcc_record[6:8], "big")
    sps = avcc_record[8:8 + sps_len]
    at = 8 + sps_len + 1
    pps = avcc_record[at + 2:at + 2 + int.from_bytes(avcc_record[at:at + 2], "big")]
    return sps, pps


def nal_units(avcc_payload: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(avcc_payload):
        size = int.from_bytes(avcc_payload[at:at + 4], "big")
        out.append(avcc_payload[at + 4:at + 4 + size])
        at += 4 + size
    return out


def access_units(video) -> list[tuple[bytes, int, list[bytes]]]:
    """(Annex-B access unit, 90 kHz RTP timestamp, its NAL units) per frame."""
    sps, pps = parameter_sets(video.codec_private)
    out = []
    for i, (_pts, key, payload) in enumerate(video.packets):
        nals = ([sps, pps] if key else []) + nal_units(payload)
        out.append((b"".join(b"\x00\x00\x00\x01" + n for n in nals), i * 90_000 // FPS, nals))
    return out


def run(units, live: LiveMkv) -> bytes:
    out = b"".join(live.add_video(au, ts) for au, ts, _ in units)
    return out + live.flush()


def frame_ms(i: int) -> int:
    return START_MS + (2000 * i + FPS) // (2 * FPS)  # i * 1000 / 30 rounded half up


def test_fragments_are_cut_at_every_idr_with_exact_frames_and_times(video):
    units = access_units(video)
    events = mkv_events(run(units, LiveMkv(START_MS)))
    header, clusters = events[0], events[1:]
    assert isinstance(header, mkv.StreamHeader) and len(clusters) == SECONDS * FPS // GOP
    [track] = header.tracks
    assert (track.codec_id, track.width, track.height) == ("V_MPEG4/ISO/AVC", 160, 96)
    sps, pps = parameter_sets(video.codec_private)
    assert track.codec_private == h264.avc_decoder_config([sps], [pps])
    assert header.timecode_scale_ns == 1_000_000
    for n, cluster in enumerate(clusters):
        first = n * GOP
        assert cluster.timecode == frame_ms(first)
        assert [f.timecode for f in cluster.frames] == [frame_ms(i)
                                                       for i in range(first, first + GOP)]
        assert [f.keyframe for f in cluster.frames] == [True] + [False] * (GOP - 1)
        # every NAL unit byte for byte, SPS/PPS in-band included; start codes -> lengths
        assert [f.payload for f in cluster.frames] == \
            [h264.to_avcc(nals) for _, _, nals in units[first:first + GOP]]


def test_ffmpeg_decodes_every_frame_in_order(video):
    data = run(access_units(video), LiveMkv(START_MS))
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        pictures = [(round(frame.pts * float(frame.time_base) * 1000),
                     frame.to_ndarray(format="rgb24")) for frame in container.decode(stream)]
    assert [ms for ms, _ in pictures] == [frame_ms(i) for i in range(SECONDS * FPS)]
    assert [synthetic.read_frame_index(rgb) for _, rgb in pictures] == list(range(SECONDS * FPS))
    reference = video.frames_rgb()
    assert all(np.array_equal(rgb, ref) for (_, rgb), (_, ref) in zip(pictures, reference))


def test_frames_before_the_first_idr_are_dropped_and_counted(video):
    units = access_units(video)[3:]  # joined mid-GOP: 7 frames no decoder can use
    live = LiveMkv(START_MS)
    out = b""
    for au, ts, _ in units[:GOP - 3]:
        out += live.add_video(au, ts)
        assert live.open_fragment_ms == 0
    assert out == b"" and live.dropped_frames == GOP - 3
    events = mkv_events(out + run(units[GOP - 3:], live))
    clusters = [e for e in events if isinstance(e, mkv.Cluster)]
    assert len(clusters) == SECONDS * FPS // GOP - 1
    # time counts from the first frame received (index 3), dropped or not
    assert clusters[0].timecode == START_MS + (GOP - 3) * 100 // 3
    assert clusters[0].frames[0].keyframe


def test_rtp_timestamps_wrap_around(video):
    units = access_units(video)
    base = (1 << 32) - 25 * 3000  # wraps at frame 25
    wrapped = [(au, (base + ts) % (1 << 32), nals) for au, ts, nals in units]
    clusters = [e for e in mkv_events(run(wrapped, LiveMkv(START_MS)))
                if isinstance(e, mkv.Cluster)]
    frames = [f for c in clusters for f in c.frames]
    # offsets from the first timestamp stay exact across the wrap
    assert [f.timecode for f in frames] == [frame_ms(i) for i in range(SECONDS * FPS)]
    assert [c.timecode for c in clusters] == [frame_ms(i) for i in range(0, SECONDS * FPS, GOP)]


def test_open_fragment_time_and_the_hard_bound_without_idr(video):
    units = access_units(video)
    live = LiveMkv(START_MS)
    idr, *rest = units[:GOP]
    out = live.add_video(idr[0], 0)  # the header
    out += live.add_video(rest[0][0], 90 * 1500)
    assert live.open_fragment_ms == 1500  # the caller asks for a keyframe (PLI) now
    out += live.add_video(rest[1][0], 90 * MAX_FRAGMENT_MS)
    assert live.open_fragment_ms == MAX_FRAGMENT_MS
    # one more frame would make the fragment too long: it ends, and the frames after it
    # (they refer to pictures already sent) are dropped until the next IDR
    out += live.add_video(rest[2][0], 90 * (MAX_FRAGMENT_MS + 40))
    out += live.add_video(rest[3][0], 90 * (MAX_FRAGMENT_MS + 80))
    assert live.open_fragment_ms == 0 and live.dropped_frames == 2
    [cluster] = [e for e in mkv_events(out) if isinstance(e, mkv.Cluster)]
    assert [f.timecode - START_MS for f in cluster.frames] == [0, 1500, MAX_FRAGMENT_MS]
    assert live.flush() == b""


def test_new_parameter_sets_start_a_new_header():
    small = synthetic.encode_video(fps=FPS, gop=GOP, seconds=GOP / FPS, bframes=0,
                                   width=160, height=96)
    large = synthetic.encode_video(fps=FPS, gop=GOP, seconds=GOP / FPS, bframes=0,
                                   width=320, height=192)
    units = access_units(small) + [(au, ts + GOP * 3000, n) for au, ts, n in access_units(large)]
    events = mkv_events(run(units, LiveMkv(START_MS)))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["StreamHeader", "Cluster", "StreamHeader", "Cluster"]
    assert [(e.tracks[0].width, e.tracks[0].height) for e in events[::2]] == [(160, 96),
                                                                              (320, 192)]
    assert events[3].timecode == frame_ms(GOP)


def test_sps_fields():
    for width, height in ((160, 96), (174, 100), (1280, 720)):
        video = synthetic.encode_video(fps=FPS, gop=2, seconds=1 / FPS, bframes=0,
                                       width=width, height=height)
        info = h264.parse_sps(parameter_sets(video.codec_private)[0])
        assert (info.width, info.height) == (width, height)


TONE_HZ = 1000


def opus_packets(seconds: float) -> list[bytes]:
    """A 1 kHz stereo sine encoded by libopus in 20 ms packets (960 samples each)."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48_000, "stereo", "s16"
    encoder.bit_rate = 64_000
    t = np.arange(int(seconds * 48_000)) / 48_000
    tone = (0.5 * np.sin(2 * np.pi * TONE_HZ * t) * 32767).astype(np.int16)
    packets = []
    for at in range(0, len(tone), 960):
        pcm = np.repeat(tone[at:at + 960], 2)[None, :]  # interleaved L R
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48_000, at
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    return [bytes(p) for p in packets]


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * 48_000 / len(samples))


def decode_aac(config: bytes, frames: list[tuple[bytes, int]]) -> tuple[list[int], np.ndarray]:
    """(pts of each decoded frame, the left channel's samples) of AAC frames."""
    decoder = av.CodecContext.create("aac", "r")
    decoder.extradata = config
    pts, pcm = [], []
    for payload, ts in frames:
        packet = av.Packet(payload)
        packet.pts = ts
        for frame in decoder.decode(packet):
            pts.append(frame.pts)
            pcm.append(frame.to_ndarray()[0])
    return pts, np.concatenate(pcm)


def test_opus_becomes_aac_that_keeps_the_tone_and_its_times():
    packets = opus_packets(2.0)  # 100 packets
    lost = range(40, 45)  # 100 ms lost on the way: filled with silence
    transcoder = OpusToAac()
    frames = [f for i, p in enumerate(packets) if i not in lost
              for f in transcoder.push(p, i * 960)]
    frames += transcoder.flush()
    assert transcoder.audio_specific_config[:2] == bytes([0x11, 0x90])  # AAC-LC 48 kHz 2 ch
    assert (transcoder.silence_samples, transcoder.dropped_packets) == (5 * 960, 0)
    # one AAC frame per 1024 samples, the priming one first, no gap where packets were lost
    sent = len(packets) * 960
    assert [ts for _, ts in frames] == list(range(-1024, sent, 1024))
    pts, left = decode_aac(transcoder.audio_specific_config, frames)
    assert pts == [ts for _, ts in frames]
    assert abs(peak_hz(left[4800:4800 + 16384]) - TONE_HZ) < 5
    assert abs(peak_hz(left[60_000:60_000 + 16384]) - TONE_HZ) < 5  # after the loss


def test_a_long_gap_starts_a_new_aac_run_at_the_new_time():
    packets = opus_packets(1.0)
    transcoder = OpusToAac(max_gap_s=1.0)
    first = [f for i, p in enumerate(packets[:10]) for f in transcoder.push(p, i * 960)]
    resumed_at = 10 * 960 + 48_000 * 3  # 3 s of nothing
    second = [f for i, p in enumerate(packets[10:20])
              for f in transcoder.push(p, resumed_at + i * 960)]
    assert transcoder.push(packets[20], resumed_at) == []  # older than what was sent
    second += transcoder.flush()
    assert transcoder.silence_samples == 0 and transcoder.dropped_packets == 1
    # the first run ends (its last frame padded); the new one primes 1024 before its start
    assert [ts for _, ts in first + second] == list(range(-1024, 9600, 1024)) + \
        list(range(resumed_at - 1024, resumed_at + 9600, 1024))


def test_video_and_aac_audio_in_one_stream(video):
    transcoder = OpusToAac()
    live = LiveMkv(START_MS, audio=transcoder.config)
    out = b""
    units = access_units(video)
    packets = opus_packets(SECONDS)
    for i, (au, ts, _) in enumerate(units):  # 30 fps video, 50 audio packets/s, by time
        for n in range(i * 50 // FPS, (i + 1) * 50 // FPS):
            for payload, at in transcoder.push(packets[n], n * 960):
                live.add_audio(payload, at)
        out += live.add_video(au, ts)
    for payload, at in transcoder.flush():
        live.add_audio(payload, at)
    out += live.flush()
    events = mkv_events(out)
    header, clusters = events[0], events[1:]
    assert [(t.codec_id, t.codec_private) for t in header.tracks] == [
        ("V_MPEG4/ISO/AVC", h264.avc_decoder_config(*map(list, zip(parameter_sets(
            video.codec_private))))),
        ("A_AAC", transcoder.audio_specific_config)]
    assert len(clusters) == SECONDS * FPS // GOP
    # audio frames go with the fragment whose time they fall in: before the next IDR
    for n, cluster in enumerate(clusters):
        audio = [f.timecode for f in cluster.frames if f.track_number == 2]
        end = frame_ms((n + 1) * GOP) if n + 1 < len(clusters) else float("inf")
        assert audio and all(cluster.timecode - 1000 <= t < end for t in audio)
        # audio that came after its Cluster was cut (the encoder holds a frame back)
        # leads the next one; the video starts at its IDR all the same
        assert next(f.keyframe for f in cluster.frames if f.track_number == 1)
    audio_ms = [f.timecode - START_MS for c in clusters for f in c.frames
                if f.track_number == 2]
    assert audio_ms == [(2000 * ts + 48_000) // 96_000 for ts in
                        range(-1024, SECONDS * 48_000, 1024)]
    assert live.dropped_audio == 0
    with av.open(io.BytesIO(out)) as container:
        left = np.concatenate([f.to_ndarray()[0] for f in
                               container.decode(container.streams.audio[0])])
    assert abs(peak_hz(left[4800:4800 + 16384]) - TONE_HZ) < 5


@pytest.mark.slow
def test_putmedia_archives_it_and_getimages_finds_each_frame(video, start_server):
    """What LiveMkv makes goes through kvslite's real ingest (PutMedia) like a producer's
    upload: a fragment per IDR, and the picture at each frame's time is that frame."""
    transcoder = OpusToAac()
    live = LiveMkv(START_MS, audio=transcoder.config)
    out = b"".join(live.add_video(au, ts) for au, ts, _ in access_units(video))
    for n, packet in enumerate(opus_packets(SECONDS)):
        for payload, at in transcoder.push(packet, n * 960):
            live.add_audio(payload, at)
    for payload, at in transcoder.flush():
        live.add_audio(payload, at)
    out += live.flush()
    server = start_server("--min-sampling-interval-ms", "1")
    server.client("kinesisvideo").create_stream(StreamName="live", DataRetentionInHours=1)
    assert len(persisted_numbers(put_mkv(server.port, "live", out))) == SECONDS * FPS // GOP
    archived = server.client("kinesis-video-archived-media")
    fragments = archived.list_fragments(StreamName="live")["Fragments"]
    assert sorted(round(f["ProducerTimestamp"].timestamp() * 1000) for f in fragments) == \
        [frame_ms(i) for i in range(0, SECONDS * FPS, GOP)]
    for i in (0, 1, 9, 10, 31, 59):
        image = archived.get_images(
            StreamName="live", ImageSelectorType="PRODUCER_TIMESTAMP", Format="PNG",
            StartTimestamp=frame_ms(i) / 1000, EndTimestamp=(frame_ms(i) + 1) / 1000,
            SamplingInterval=1)["Images"][0]
        assert round(image["TimeStamp"].timestamp() * 1000) == frame_ms(i)
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(image["ImageContent"]))))
        assert synthetic.read_frame_index(picture[..., :3]) == i
