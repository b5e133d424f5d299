"""Opus (as WebRTC sends it) -> AAC-LC (as KVS stores audio), with PyAV.

`OpusToAac.push` takes one Opus packet and its RTP timestamp (48 kHz samples) and returns
the AAC frames that completes: (payload, timestamp in samples), the timestamp on the same
clock as the Opus packets' (0 = the first packet), and ready for `LiveMkv.add_audio`.
The AAC encoder's priming frame comes out 1024 samples before the first Opus sample, so
decoded audio lands at the time it was sent.

Timing is kept by counting samples, not from the decoder: a gap in the timestamps (lost
packets, a muted sender that stops sending) up to `max_gap_s` is filled with silence, so
the AAC track stays continuous; a longer gap ends the AAC stream (padded, flushed) and a
new one starts at the new timestamp. A packet older than the audio already sent is
dropped. At most one AAC frame (1024 samples) plus one Opus packet is buffered.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from .live_mkv import AudioConfig, RtpClock

SAMPLE_RATE = 48_000  # Opus in WebRTC always runs a 48 kHz RTP clock
AAC_FRAME = 1024  # samples per AAC-LC frame


class OpusToAac:
    def __init__(self, channels: int = 2, bit_rate: int = 96_000, max_gap_s: float = 1.0):
        self.channels = channels
        self.layout = "stereo" if channels == 2 else "mono"
        self.bit_rate = bit_rate
        self.max_gap = int(max_gap_s * SAMPLE_RATE)
        self.clock = RtpClock()
        self.decoder = av.CodecContext.create("opus", "r")
        self.decoder.sample_rate, self.decoder.layout = SAMPLE_RATE, self.layout
        self.encoder = self._new_encoder()
        self.config = AudioConfig(bytes(self.encoder.extradata or b""), SAMPLE_RATE, channels)
        self.fifo = av.AudioFifo()
        self.fifo_ts = 0  # timestamp of the first sample in the FIFO
        self.next_ts: int | None = None  # where the next decoded sample belongs
        self.dropped_packets = 0  # older than what was sent, or not decodable
        self.silence_samples = 0  # filled into gaps

    @property
    def audio_specific_config(self) -> bytes:
        return self.config.audio_specific_config

    def push(self, packet: bytes, rtp_timestamp: int) -> list[tuple[bytes, int]]:
        ts = self.clock.ticks(rtp_timestamp)
        if self.next_ts is None:
            self.fifo_ts = self.next_ts = ts
        if ts < self.next_ts:
            self.dropped_packets += 1
            return []
        try:
            frames = self.decoder.decode(av.Packet(packet))
        except (av.FFmpegError, ValueError):
            self.dropped_packets += 1
            return []
        out: list[tuple[bytes, int]] = []
        gap = ts - self.next_ts
        if gap > self.max_gap:
            out += self._restart(ts)
        elif gap:
            self._write(self._silence(gap))
            self.silence_samples += gap
        for frame in frames:
            self._write(frame)
        return out + self._encode_full_frames()

    def flush(self) -> list[tuple[bytes, int]]:
        """The end: the last samples (padded with silence to a frame) and the encoder's tail."""
        out = self._drain()
        self.next_ts = None
        return out

    def _restart(self, ts: int) -> list[tuple[bytes, int]]:
        out = self._drain()
        self.encoder = self._new_encoder()
        self.fifo_ts = self.next_ts = ts
        return out

    def _drain(self) -> list[tuple[bytes, int]]:
        if self.fifo.samples % AAC_FRAME:
            self._write(self._silence(AAC_FRAME - self.fifo.samples % AAC_FRAME),
                        counts=False)
        out = self._encode_full_frames()
        return out + _timed(self.encoder.encode(None))

    def _write(self, frame: av.AudioFrame, counts: bool = True) -> None:
        frame.pts = None  # the FIFO's position is the time: see fifo_ts
        self.fifo.write(frame)
        if counts and self.next_ts is not None:
            self.next_ts += frame.samples

    def _encode_full_frames(self) -> list[tuple[bytes, int]]:
        out = []
        while self.fifo.samples >= AAC_FRAME:
            frame = self.fifo.read(AAC_FRAME)
            assert frame is not None  # the FIFO holds that many
            frame.pts, frame.time_base = self.fifo_ts, Fraction(1, SAMPLE_RATE)
            self.fifo_ts += AAC_FRAME
            out += _timed(self.encoder.encode(frame))
        return out

    def _silence(self, samples: int) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(np.zeros((self.channels, samples), np.float32),
                                           format="fltp", layout=self.layout)
        frame.sample_rate = SAMPLE_RATE
        return frame

    def _new_encoder(self) -> av.AudioCodecContext:
        encoder = av.CodecContext.create("aac", "w")
        encoder.sample_rate, encoder.layout, encoder.format = SAMPLE_RATE, self.layout, "fltp"
        encoder.bit_rate = self.bit_rate
        encoder.time_base = Fraction(1, SAMPLE_RATE)
        encoder.open()
        return encoder


def _timed(packets: list[av.Packet]) -> list[tuple[bytes, int]]:
    """AAC frames with their timestamps (the encoder sets one on each)."""
    return [(bytes(p), p.pts) for p in packets if p.pts is not None]
