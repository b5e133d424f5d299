"""One PutMedia upload: MKV bytes in, archived fragments and acknowledgements out.

`IngestSession.feed` takes body chunks as they arrive and returns the acks
they cause. It is synchronous (it fsyncs and commits). The HTTP layer splits it:
`take` parses a chunk on the event loop (bounded work) and only when that completes
something to archive does `finish` run on a worker thread; the acks stream back while
the upload continues.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable

from kvslite.server.archive.fragment_events import EventConfigs, events_in
from kvslite.server.archive.fragments import Archive, fragment_duration_ms
from kvslite.server import metrics
from kvslite.server.api_errors import MediaUnavailable, OutOfSpace
from kvslite.media import error_ids as ids
from kvslite.media import mkv
from kvslite.media.error_ids import ERROR_NAMES
from kvslite.media.limits import (
    MAX_FRAGMENT_BYTES,
    MAX_FRAGMENT_FRAMES,
    MAX_FRAGMENT_MS,
    MAX_FUTURE_MS,
    MAX_TRACKS,
    video_track,
)
from kvslite.server.store.metadata import Lease, LeaseLost, Stream, StreamNotActive

log = logging.getLogger("kvslite.ingest")

MAX_TRACK_NUMBER = 255  # the frame index keeps track numbers in one byte; KVS uses 1-3
MAX_TIMECODE_SCALE_NS = 1_000_000_000  # coarser than 1 s per tick is not video
# Elements take() parses before leaving the rest to a worker thread: a camera's body
# chunk holds a few blocks; hostile input of tiny elements must not hold the event loop
# (~5 us an element: about 1 ms at most)
PARSE_STEPS_BEFORE_HANDOFF = 200

# MkvError reasons that have their own PutMedia ErrorId; anything else is INVALID_MKV_DATA.
_MKV_ERROR_IDS = {"too_large": ids.MAX_FRAGMENT_SIZE_REACHED,
                  "unknown_track": ids.TRACK_NUMBER_MISMATCH,
                  "too_many_frames": ids.FRAGMENT_METADATA_LIMIT_REACHED}


class IngestError(Exception):
    """Bad input: answered with an ERROR ack, after which the upload is closed."""

    def __init__(self, error_id: int, message: str, timecode: int | None = None):
        super().__init__(message)
        self.error_id = error_id
        self.timecode = timecode
        self.acks: list[dict] = []  # for fragments completed before the bad input


class IngestSession:
    def __init__(self, archive: Archive, stream: Stream, *, timecode_type: str,
                 producer_start_ms: int | None, lease: Lease | None = None,
                 fragment_deadline_ms: int, now=time.time,
                 event_configs: EventConfigs | None = None,
                 on_deliveries: Callable[[], None] = lambda: None):
        self.archive = archive
        self.event_configs = event_configs  # what tagged fragments' events lead to
        self.on_deliveries = on_deliveries  # a fragment put work in the outbox
        self.pending_events: dict[str, dict] = {}  # from Tags before the next cluster
        self.stream = stream
        self.lease = lease  # this upload's slot on the stream: writes are fenced by it
        self.absolute = timecode_type == "ABSOLUTE"
        self.producer_start_ms = producer_start_ms or 0
        self.now = now
        self.reader = mkv.MkvReader(max_cluster_size=MAX_FRAGMENT_BYTES,
                                    max_cluster_frames=MAX_FRAGMENT_FRAMES)
        self.header: mkv.StreamHeader | None = None
        self.header_id: int | None = None
        self.last_timecode: int | None = None
        # (input offset, arrival ms) of recent chunks: a cluster's server timestamp is
        # when the chunk holding its first byte arrived
        self.arrivals: list[tuple[int, int]] = []
        self.received = 0
        self.persisted = 0
        self.duplicates = 0
        self.lease_renewed: float | None = None  # monotonic: a fragment's commit renewed it
        # progress: when the header or a fragment last completed, and bytes received then
        self.progress_ms = int(now() * 1000)
        self.received_at_progress = 0
        self.fragment_deadline_ms = fragment_deadline_ms
        # what take() read for finish() to handle: events, bad input, when it arrived
        self._taken: list = []
        self._bad_input: mkv.MkvError | None = None
        self._taken_ms = 0

    @property
    def keeps_data(self) -> bool:
        return self.stream.data_retention_hours > 0

    def feed(self, chunk: bytes, arrived_ms: int | None = None) -> list[dict]:
        """Consume body bytes that arrived at `arrived_ms` (default: now); return the acks
        they complete. Raises IngestError."""
        self.take(chunk, arrived_ms)
        return self.finish()

    def take(self, chunk: bytes, arrived_ms: int | None = None) -> bool:
        """Read body bytes as far as a bounded amount of parsing goes, without blocking;
        True if `finish()` has work (events to archive, bad input, bytes still unread).

        Most body chunks of a camera's stream end inside a cluster: parsed here, on the
        event loop, they cost no hand-off to a worker thread (issue 22)."""
        if arrived_ms is None:
            arrived_ms = int(self.now() * 1000)
        if chunk:
            self.arrivals.append((self.received, arrived_ms))
            self.received += len(chunk)
        self._taken_ms = arrived_ms
        self._taken, self._bad_input = self._read(
            lambda: self.reader.feed(chunk, max_steps=PARSE_STEPS_BEFORE_HANDOFF))
        return bool(self._taken) or self._bad_input is not None or self.reader.unread

    def finish(self) -> list[dict]:
        """Read what `take` left, archive what it completed; return the acks. Blocking
        (it fsyncs and commits). Raises IngestError."""
        events, bad_input = self._taken, self._bad_input
        self._taken, self._bad_input = [], None
        if bad_input is None and self.reader.unread:
            more, bad_input = self._read(lambda: self.reader.feed(b""))
            events = events + more
        return self._handle_all(events, bad_input, self._taken_ms)

    def close(self) -> list[dict]:
        """The body ended: finish a trailing cluster, or fail on a truncated one."""
        return self._handle_all(*self._read(self.reader.close), int(self.now() * 1000))

    @staticmethod
    def _read(read) -> tuple[list, mkv.MkvError | None]:
        """The events `read` yields, and the bad input it stopped at (with the events
        completed before it)."""
        try:
            return read(), None
        except mkv.MkvError as e:
            return e.events, e

    def _handle_all(self, events: list, bad_input: mkv.MkvError | None,
                    arrived_ms: int) -> list[dict]:
        """Handle the events; fragments completed before bad bytes still count."""
        acks: list[dict] = []
        try:
            for event in events:
                acks += self._handle(event, arrived_ms)
            if bad_input is not None:
                raise IngestError(_MKV_ERROR_IDS.get(bad_input.reason, ids.INVALID_MKV_DATA),
                                  f"invalid MKV: {bad_input}")
        except IngestError as error:
            error.acks = acks + error.acks
            raise
        return acks

    def check_progress(self, now_ms: int | None = None) -> None:
        """A producer must complete a fragment within the deadline of the last one once it
        sends its bytes: a trickle (one byte every few seconds) cannot hold the
        stream's one PutMedia slot forever. Raises IngestError."""
        now_ms = int(self.now() * 1000) if now_ms is None else now_ms
        if self.received > self.received_at_progress and \
                now_ms - self.progress_ms > self.fragment_deadline_ms:
            raise IngestError(ids.STREAM_READ_ERROR, f"no fragment completed in "
                              f"{self.fragment_deadline_ms / 1000:g} s while data kept "
                              f"arriving: the upload is too slow")

    def _handle(self, event, arrived_ms: int) -> list[dict]:
        if isinstance(event, (mkv.StreamHeader, mkv.Cluster)):
            self.progress_ms, self.received_at_progress = arrived_ms, self.received
        if isinstance(event, mkv.StreamHeader):
            self._accept_header(event)
            return []
        if isinstance(event, mkv.Cluster):
            return self._accept_cluster(event, self._arrival_of(event.offset, arrived_ms))
        if isinstance(event, mkv.Tags):  # event tags apply to the cluster that follows
            self.pending_events.update(events_in(event.tags))
        return []  # other Tags (fragment metadata, END_OF_FRAGMENT) need no action

    def _arrival_of(self, offset: int, default_ms: int) -> int:
        """When the chunk holding input byte `offset` arrived; forgets older chunks."""
        starts = [start for start, _ in self.arrivals]
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0:
            return default_ms
        del self.arrivals[:i]
        return self.arrivals[0][1]

    def _accept_header(self, header: mkv.StreamHeader) -> None:
        if not header.tracks:
            raise IngestError(ids.INVALID_MKV_DATA, "the MKV header has no tracks")
        if len(header.tracks) > MAX_TRACKS:
            raise IngestError(ids.TOO_MANY_TRACKS,
                              f"{len(header.tracks)} tracks; at most {MAX_TRACKS}")
        numbers = [t.number for t in header.tracks]
        if max(numbers) > MAX_TRACK_NUMBER:
            raise IngestError(ids.INVALID_MKV_DATA, f"track number {max(numbers)} is out of range "
                              f"(1-{MAX_TRACK_NUMBER})")
        if not 1 <= header.timecode_scale_ns <= MAX_TIMECODE_SCALE_NS:
            raise IngestError(ids.INVALID_MKV_DATA,
                              f"TimecodeScale {header.timecode_scale_ns} ns is out of "
                              f"range (1 ns to 1 s)")
        self.header = header
        try:
            self.header_id = (self.archive.save_header(self.stream, header)
                              if self.keeps_data else 0)
        except OutOfSpace as e:
            raise IngestError(ids.ARCHIVAL_ERROR,
                              f"the archive is out of disk space: {e}") from None
        self.last_timecode = None  # a new segment starts its own timeline

    def _to_ms(self, timecode: int) -> int:
        assert self.header is not None  # clusters are read only once the header is
        ms = timecode * self.header.timecode_scale_ns // 1_000_000
        return ms if self.absolute else self.producer_start_ms + ms

    def _accept_cluster(self, cluster: mkv.Cluster, server_ms: int) -> list[dict]:
        header, header_id = self.header, self.header_id
        if header is None or header_id is None:
            raise IngestError(ids.INVALID_MKV_DATA, "a Cluster arrived before the EBML header and Tracks",
                              cluster.timecode)
        if not cluster.frames:
            return []
        self._check(cluster, header)
        self.last_timecode = cluster.timecode
        producer_ms = self._to_ms(cluster.timecode)
        events, self.pending_events = self.pending_events, {}
        if not self.keeps_data:
            return [_ack("RECEIVED", cluster.timecode)]  # retention 0: RECEIVED is final
        deliveries = self.event_configs.deliveries_for(self.stream, events) \
            if events and self.event_configs is not None else []
        video = video_track(header.tracks)
        frames = [f for f in cluster.frames if video is None or f.track_number == video.number]
        default_ms = (video.default_duration_ns // 1_000_000
                      if video and video.default_duration_ns else 0)
        try:
            fragment, created = self.archive.persist(
                self.stream, header_id, cluster, producer_ms=producer_ms,
                server_ms=server_ms,
                duration_ms=fragment_duration_ms(frames or cluster.frames, producer_ms,
                                                 self._to_ms, default_ms),
                to_ms=self._to_ms, fence=self.lease, deliveries=deliveries)
        except StreamNotActive:
            raise IngestError(ids.STREAM_NOT_ACTIVE, f"stream {self.stream.name} was deleted",
                              cluster.timecode) from None
        except LeaseLost:
            metrics.LEASES_LOST.inc()
            raise IngestError(ids.STREAM_READ_ERROR,
                              "this upload lost its lease on the stream before the "
                              "fragment was committed (the lease expired, or another "
                              "upload holds it)", cluster.timecode) from None
        except OutOfSpace as e:
            raise IngestError(ids.ARCHIVAL_ERROR, f"the archive is out of disk space: {e}",
                              cluster.timecode) from None
        except MediaUnavailable as e:  # S3 down: archiving failed, not kvslite itself
            raise IngestError(ids.ARCHIVAL_ERROR, f"the media store is unavailable: {e.detail}",
                              cluster.timecode) from None
        if self.lease is not None:
            self.lease_renewed = time.monotonic()
        if created:
            self.persisted += 1
            if deliveries:
                self.on_deliveries()
            metrics.FRAGMENTS.inc()
            metrics.INGESTED_BYTES.inc(fragment.size)
            metrics.PERSIST_SECONDS.observe(max(0, self.now() * 1000 - server_ms) / 1000)
        else:  # a reconnecting producer resends what was not acked in time
            self.duplicates += 1
        return [_ack("RECEIVED", cluster.timecode, fragment.number),
                _ack("PERSISTED", cluster.timecode, fragment.number)]

    def _check(self, cluster: mkv.Cluster, header: mkv.StreamHeader) -> None:
        timecode = cluster.timecode
        if self.last_timecode is not None and timecode < self.last_timecode:
            raise IngestError(ids.FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
                              f"cluster timecode {timecode} is before the previous "
                              f"one ({self.last_timecode})", timecode)
        known = {t.number for t in header.tracks}
        stray = {f.track_number for f in cluster.frames} - known
        if stray:
            raise IngestError(ids.TRACK_NUMBER_MISMATCH,
                              f"frames for track(s) {sorted(stray)} not in the header",
                              timecode)
        video = video_track(header.tracks)
        if video is not None:
            first = next((f for f in cluster.frames if f.track_number == video.number), None)
            if first is None:
                raise IngestError(ids.FRAMES_MISSING_FOR_TRACK,
                                  "a fragment has no frames for the video track",
                                  timecode)
            if not first.keyframe:
                raise IngestError(ids.INVALID_MKV_DATA,
                                  "a fragment must start with a keyframe", timecode)
        start_ms = self._to_ms(timecode)
        times = [self._to_ms(f.timecode) for f in cluster.frames]
        if max(times) - start_ms > MAX_FRAGMENT_MS:
            raise IngestError(ids.MAX_FRAGMENT_DURATION_REACHED,
                              f"fragment spans {max(times) - start_ms} ms; at most "
                              f"{MAX_FRAGMENT_MS}", timecode)
        if start_ms - min(times) > MAX_FRAGMENT_MS:  # frames long before their cluster
            raise IngestError(ids.INVALID_MKV_DATA,
                              f"a frame is {start_ms - min(times)} ms before its "
                              f"cluster's timecode", timecode)
        if start_ms > self.now() * 1000 + MAX_FUTURE_MS:
            raise IngestError(ids.INVALID_PRODUCER_TIMESTAMP,
                              f"producer timestamp {start_ms / 1000:.3f} is in the "
                              "future", timecode)


def _ack(event_type: str, timecode: int, number: str | None = None) -> dict:
    ack = {"EventType": event_type, "FragmentTimecode": timecode}
    if number is not None:
        ack["FragmentNumber"] = number
    return ack


def error_ack(error: IngestError) -> dict:
    ack: dict[str, str | int] = {"EventType": "ERROR"}
    if error.timecode is not None:
        ack["FragmentTimecode"] = error.timecode
    ack["ErrorId"] = error.error_id
    ack["ErrorCode"] = ERROR_NAMES.get(error.error_id, ERROR_NAMES[ids.INTERNAL_ERROR])
    return ack
