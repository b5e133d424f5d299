"""The master's media into its stream, through the same `IngestSession` PutMedia uses:
the same durability (a fragment is acknowledged once durable), limits, leases,
retention, images and notifications.

The storage peer hands over H.264 access units (Annex-B) and Opus packets, each with its
RTP timestamp from its track's first frame; `LiveMkv` (media/live_mkv.py) makes a
PutMedia-like MKV byte stream of them (AVCC, codec private data from SPS/PPS, a cluster
per IDR) and `OpusToAac` (media/opus_aac.py) the AAC track. Timestamps are absolute:
each track's RTP time 0 is when its first frame arrived (audio and video RTP clocks are
unrelated, so arrival is what lines them up); the server timestamp is as for PutMedia.

Ingest fsyncs, so the bytes go to it from one writer task, in order, in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging

from kvslite.media.live_mkv import LiveMkv
from kvslite.media.opus_aac import SAMPLE_RATE, OpusToAac
from kvslite.server import metrics
from kvslite.server.archive.ingest import IngestError, IngestSession

log = logging.getLogger("kvslite.ingestion")

MAX_QUEUED_CHUNKS = 1000  # MKV chunks waiting for the archive; past it the archive is too slow
VIDEO_CLOCK_HZ = 90_000


class Recorder:
    def __init__(self, ingest: IngestSession):
        self.ingest = ingest  # ABSOLUTE timecodes: LiveMkv writes epoch milliseconds
        self.aac = OpusToAac()
        self.mkv: LiveMkv | None = None  # made at the first video frame (its arrival is t0)
        self.audio_zero_ms: int | None = None  # epoch ms of Opus RTP time 0
        self.queue: asyncio.Queue[tuple[bytes, int | None] | None] = asyncio.Queue()
        self.fragments = 0
        self.error: str | None = None  # why the archive refused the media, if it did
        self.writer = asyncio.ensure_future(self._write())

    async def video(self, access_unit: bytes, rtp_time: int, arrived_s: float) -> None:
        if self.mkv is None:
            zero_ms = int(arrived_s * 1000) - rtp_time * 1000 // VIDEO_CLOCK_HZ
            self.mkv = LiveMkv(zero_ms, audio=self.aac.config)
            if self.audio_zero_ms is not None:
                self.mkv.audio_start_ms = self.audio_zero_ms
        self._put(self.mkv.add_video(access_unit, rtp_time), arrived_s)

    async def audio(self, opus: bytes, rtp_time: int, arrived_s: float) -> None:
        if self.audio_zero_ms is None:
            self.audio_zero_ms = int(arrived_s * 1000) - rtp_time * 1000 // SAMPLE_RATE
            if self.mkv is not None:
                self.mkv.audio_start_ms = self.audio_zero_ms
        for aac, samples in self.aac.push(opus, rtp_time):  # samples since Opus time 0
            if self.mkv is not None:  # else no fragment to hold it yet (LiveMkv drops it)
                self.mkv.add_audio(aac, samples)

    async def close(self) -> None:
        """Finish the last fragment and wait until the archive has everything."""
        if self.mkv is not None and self.error is None:
            self._put(self.mkv.flush(), None)
        self.queue.put_nowait(None)
        await self.writer

    def _put(self, data: bytes, arrived_s: float | None) -> None:
        if not data or self.error is not None:
            return
        if self.queue.qsize() >= MAX_QUEUED_CHUNKS:
            self.error = "the archive is not keeping up with the master's media"
            return
        self.queue.put_nowait((data, None if arrived_s is None else int(arrived_s * 1000)))

    async def _write(self) -> None:
        while (item := await self.queue.get()) is not None:
            if self.error is None:
                await self._feed(lambda: self.ingest.feed(*item))
        if self.error is None:
            await self._feed(self.ingest.close)

    async def _feed(self, step) -> None:
        try:
            acks = await asyncio.to_thread(step)
        except IngestError as error:
            acks, self.error = error.acks, str(error)
            log.warning("storage session into %s: %s", self.ingest.stream.name, error)
        except Exception:  # a bug must end the session, not leave it silently recording nothing
            acks, self.error = [], "internal error"
            log.exception("storage session into %s failed", self.ingest.stream.name)
        for ack in acks:
            if ack.get("EventType") == "PERSISTED":
                self.fragments += 1
                metrics.STORAGE_FRAGMENTS.inc()
            log.debug("storage session into %s: %s", self.ingest.stream.name, ack)
