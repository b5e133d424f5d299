"""Live H.264 (and AAC) access units in, the MKV stream PutMedia's ingest expects out.

A WebRTC receiver hands over one Annex-B access unit at a time with its RTP timestamp
(90 kHz, rebased to 0 at the first frame). `LiveMkv` turns that into what a KVS producer
would upload: an EBML header + Segment + Info + Tracks, then one Cluster per fragment.

- Video is kept as sent: every NAL unit (SPS, PPS, SEI and AUD included) is stored byte
  for byte; only the Annex-B start codes become 4-byte lengths (AVCC). CodecPrivate is the
  avcC record of the stream's SPS/PPS, width and height come from the SPS.
- A fragment is an IDR access unit and the frames up to the next IDR; its Cluster is
  emitted when that next IDR arrives (or on `flush()`). Frames before the first IDR cannot
  be decoded and are dropped (counted in `dropped_frames`).
- Timecodes (ms, TimecodeScale 1 ms) are absolute: `start_ms` (when the first frame
  arrived) + the RTP offset from the first frame, rounded half up from the unwrapped
  tick count, never summed from deltas, so frame n of a 30 fps stream is at exactly
  round(n * 1000 / 30) ms. 32-bit RTP wrap-around is unwrapped.
- Fragments stay within AWS's bounds: `open_fragment_ms` tells the caller how long the
  open fragment has run without an IDR, so it can ask for a keyframe (RTCP PLI) in time.
  A frame that would take the fragment past MAX_FRAGMENT_MS (or its size or frame count
  limits) ends it instead; the frames after it, up to the next IDR, reference pictures
  in a fragment already sent and are dropped (counted).
- A new SPS/PPS (say, a new resolution) at an IDR starts a new EBML header: the ingest
  reads a new header mid-upload as a new segment.
- Audio (AAC, see opus_aac) goes on track 2; frames are held until the Cluster that
  covers their time is cut. An audio frame that arrives after its Cluster was sent goes
  into the next one, ahead of that Cluster's timecode (up to LATE_AUDIO_MS; older audio,
  say from while video was missing, is dropped and counted in `dropped_audio`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import h264
from .limits import MAX_FRAGMENT_BYTES, MAX_FRAGMENT_FRAMES, MAX_FRAGMENT_MS, VIDEO_TRACK_TYPE
from .mkv import Cluster, Frame, StreamHeader, Track, write_cluster, write_header

VIDEO_CLOCK_HZ = 90_000
AUDIO_TRACK_TYPE = 2
VIDEO_TRACK, AUDIO_TRACK = 1, 2
MAX_PENDING_AUDIO = 2_000  # ~40 s of AAC at 48 kHz: audio while no video cut comes
LATE_AUDIO_MS = 1_000  # audio older than its Cluster by more is dropped, not stored


@dataclass(frozen=True)
class AudioConfig:
    """The AAC track: AudioSpecificConfig, sample rate (the timestamps' clock), channels."""
    audio_specific_config: bytes
    sample_rate: int = 48_000
    channels: int = 2


class RtpClock:
    """RTP timestamps (32-bit, wrapping) -> ticks since the first one. Each timestamp is
    taken as the nearest one to the previous (half the 32-bit range either way), so a
    wrap or a slightly older timestamp (reordering) both come out right; timestamps
    already unwrapped (aiortc rebases them to 0 and unwraps) come out unchanged."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.last = 0  # ticks since the first timestamp

    def ticks(self, timestamp: int) -> int:
        if self.first is None:
            self.first = timestamp
            return 0
        delta = (timestamp - self.first - self.last) % (1 << 32)
        if delta >= 1 << 31:
            delta -= 1 << 32
        self.last += delta
        return self.last


@dataclass
class _Fragment:
    timecode: int
    frames: list[Frame] = field(default_factory=list)
    size: int = 0


class LiveMkv:
    def __init__(self, start_ms: int, *, audio: AudioConfig | None = None,
                 title: str = "kvslite WebRTC ingestion"):
        self.start_ms = start_ms  # epoch ms of video RTP offset 0
        self.audio_start_ms = start_ms  # epoch ms of audio timestamp 0 (may be set apart)
        self.audio = audio
        self.title = title
        self.video_clock = RtpClock()
        self.parameter_sets: tuple[tuple[bytes, ...], tuple[bytes, ...]] | None = None
        self.open: _Fragment | None = None
        self.last_video_ms: int | None = None
        self.pending_audio: list[Frame] = []
        self.headers = self.fragments = 0  # emitted so far
        self.dropped_frames = 0  # video that could not start or continue a fragment
        self.dropped_audio = 0  # before the first fragment, or past MAX_PENDING_AUDIO

    # -- input ------------------------------------------------------------------------

    def add_video(self, access_unit: bytes, rtp_timestamp: int) -> bytes:
        """One Annex-B access unit; returns the MKV bytes it completes (often b"")."""
        timecode = self._video_ms(rtp_timestamp)
        nals = h264.split_annexb(access_unit)
        types = {h264.nal_type(n) for n in nals}
        payload = h264.to_avcc(nals)
        if h264.IDR in types:
            return self._start_fragment(nals, payload, timecode)
        if self.open is None:
            self.dropped_frames += 1
            return b""
        if self._would_overflow(timecode, len(payload)):
            out = self._cut(timecode)  # too long without an IDR: end it, await the next
            self.dropped_frames += 1
            return out
        self._append(Frame(VIDEO_TRACK, timecode, False, payload))
        return b""

    def add_audio(self, frame: bytes, timestamp: int) -> None:
        """One AAC frame, `timestamp` in samples since `audio_start_ms` (unwrapped, and
        negative for the encoder's priming frame: as OpusToAac gives them)."""
        if self.audio is None:
            raise ValueError("this stream has no audio track")
        rate = self.audio.sample_rate
        timecode = self.audio_start_ms + (2000 * timestamp + rate) // (2 * rate)
        if self.fragments == 0 and self.open is None or len(self.pending_audio) >= \
                MAX_PENDING_AUDIO:
            self.dropped_audio += 1
            return
        self.pending_audio.append(Frame(AUDIO_TRACK, timecode, True, frame))

    def flush(self) -> bytes:
        """The end of the media: the open fragment's Cluster, if any."""
        return self._cut()

    @property
    def open_fragment_ms(self) -> int:
        """How long the open fragment has run (its last video frame after its IDR), 0 if
        none is open: past a couple of seconds, the sender should be asked for an IDR."""
        if self.open is None or self.last_video_ms is None:
            return 0
        return self.last_video_ms - self.open.timecode

    # -- fragments --------------------------------------------------------------------

    def _video_ms(self, rtp_timestamp: int) -> int:
        ticks = self.video_clock.ticks(rtp_timestamp)
        return self.start_ms + (2000 * ticks + VIDEO_CLOCK_HZ) // (2 * VIDEO_CLOCK_HZ)

    def _start_fragment(self, nals: list[bytes], payload: bytes, timecode: int) -> bytes:
        out = self._cut(timecode)
        sps = tuple(n for n in nals if h264.nal_type(n) == h264.SPS)
        pps = tuple(n for n in nals if h264.nal_type(n) == h264.PPS)
        if sps and pps and (sps, pps) != self.parameter_sets:
            out += self._header(list(sps), list(pps))
        elif self.parameter_sets is None:  # an IDR whose SPS/PPS were never seen
            self.dropped_frames += 1
            return out
        self.open = _Fragment(timecode)
        self._append(Frame(VIDEO_TRACK, timecode, True, payload))
        return out

    def _would_overflow(self, timecode: int, size: int) -> bool:
        assert self.open is not None
        return (timecode - self.open.timecode > MAX_FRAGMENT_MS
                or self.open.size + size > MAX_FRAGMENT_BYTES - 64 * 1024
                or len(self.open.frames) + len(self.pending_audio) + 1 >= MAX_FRAGMENT_FRAMES)

    def _append(self, frame: Frame) -> None:
        assert self.open is not None
        self.open.frames.append(frame)
        self.open.size += len(frame.payload) + 16
        self.last_video_ms = frame.timecode

    def _cut(self, next_ms: int | None = None) -> bytes:
        """The open fragment's Cluster, with the audio before `next_ms` (where the next
        fragment starts; None: the media ended) that fits the fragment's time bound."""
        fragment, self.open = self.open, None
        if fragment is None:
            return b""
        end = fragment.timecode + MAX_FRAGMENT_MS + 1
        end = end if next_ms is None else min(end, next_ms)
        audio = [f for f in self.pending_audio if f.timecode < end]
        self.pending_audio = [f for f in self.pending_audio if f.timecode >= end]
        if next_ms is None:
            self.dropped_audio += len(self.pending_audio)
            self.pending_audio = []
        kept = [f for f in audio if f.timecode >= fragment.timecode - LATE_AUDIO_MS]
        self.dropped_audio += len(audio) - len(kept)
        # in time order; audio that came late for the previous Cluster leads this one
        frames = sorted(fragment.frames + kept, key=lambda f: (f.timecode, f.track_number))
        data, _ = write_cluster(Cluster(fragment.timecode, frames))
        self.fragments += 1
        return data

    def _header(self, sps: list[bytes], pps: list[bytes]) -> bytes:
        info = h264.parse_sps(sps[0])
        self.parameter_sets = (tuple(sps), tuple(pps))
        tracks = [Track(VIDEO_TRACK, VIDEO_TRACK, VIDEO_TRACK_TYPE, "V_MPEG4/ISO/AVC",
                        codec_private=h264.avc_decoder_config(sps, pps),
                        width=info.width, height=info.height)]
        if self.audio is not None:
            tracks.append(Track(AUDIO_TRACK, AUDIO_TRACK, AUDIO_TRACK_TYPE, "A_AAC",
                                codec_private=self.audio.audio_specific_config,
                                sampling_frequency=float(self.audio.sample_rate),
                                channels=self.audio.channels))
        self.headers += 1
        return write_header(StreamHeader(1_000_000, tracks, title=self.title))
