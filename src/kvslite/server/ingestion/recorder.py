"""The master's media into its stream, through the same `IngestSession` PutMedia uses:
the same durability (a fragment is acknowledged once durable), limits, leases,
retention, images and notifications.

The storage peer hands over H.264 access units (Annex-B, 90 kHz pts) and decoded Opus
frames; `LiveMkv` (media/live_mkv.py) makes a PutMedia-like MKV byte stream of them
(AVCC, codec private data from SPS/PPS, a cluster per IDR) and `OpusToAac`
(media/opus_aac.py) the AAC track. Timestamps: the producer start is the arrival of the
first frame; each track's pts run from the arrival of its own first frame (audio and video
RTP clocks are unrelated, so arrival is what lines them up).

Ingest fsyncs, so the bytes go to it from one writer task, in order, in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging

import av

from kvslite.media.live_mkv import LiveMkv
from kvslite.media.opus_aac import OpusToAac
from kvslite.server import metrics
from kvslite.server.archive.ingest import IngestError, IngestSession

log = logging.getLogger("kvslite.ingestion")

MAX_QUEUED_CHUNKS = 1000  # MKV chunks waiting for the archive; past it the archive is too slow


class Recorder:
    def __init__(self, ingest: IngestSession):
        self.ingest = ingest
        self.mkv = LiveMkv()
        self.aac = OpusToAac()
        self.start_s: float | None = None  # arrival of the session's first frame
        self.track_offset_ms: dict[str, int] = {}  # a track's pts 0, in ms after start
        self.queue: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue()
        self.fragments = 0
        self.error: str | None = None  # why the archive refused the media, if it did
        self.writer = asyncio.ensure_future(self._write())

    @property
    def producer_start_ms(self) -> int | None:
        return None if self.start_s is None else int(self.start_s * 1000)

    async def video(self, access_unit: bytes, pts_90k: int, arrived_s: float) -> None:
        ms = self._timestamp_ms("video", pts_90k * 1000 // 90_000, arrived_s)
        self._put(self.mkv.video(access_unit, ms), arrived_s)

    async def audio(self, frame: av.AudioFrame, arrived_s: float) -> None:
        for aac, pts_ms in self.aac.encode(frame):
            ms = self._timestamp_ms("audio", pts_ms, arrived_s)
            self._put(self.mkv.audio(aac, ms), arrived_s)

    async def close(self) -> None:
        """Finish the last fragment and wait until the archive has everything."""
        if self.start_s is not None and self.error is None:
            self._put(self.mkv.flush(), None)
        self.queue.put_nowait(None)
        await self.writer

    def _timestamp_ms(self, kind: str, pts_ms: int, arrived_s: float) -> int:
        if self.start_s is None:
            self.start_s = arrived_s
            self.ingest.producer_start_ms = self.producer_start_ms
        if kind not in self.track_offset_ms:
            self.track_offset_ms[kind] = int((arrived_s - self.start_s) * 1000) - pts_ms
        return self.track_offset_ms[kind] + pts_ms

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
