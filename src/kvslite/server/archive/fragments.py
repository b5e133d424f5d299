"""Fragments: how a cluster is archived, indexed and read back.

A fragment is stored as one Matroska Cluster blob (written by
`kvslite.media.mkv.write_cluster`: each block as the producer sent it, only the cluster
framing normalised) plus a row of metadata whose `frames`
column indexes every frame: track, keyframe flag, timestamp offset and the
byte range of its payload inside the blob. Readers slice payloads straight
out of the blob and never parse a cluster again.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from kvslite.server.api_errors import RESOURCE_NOT_FOUND, ApiError
from kvslite.server.archive.leases import LEASE_TTL_MS
from kvslite.media import mkv, remux
from kvslite.media.limits import MAX_FRAGMENT_SPAN_MS, video_track
from kvslite.media.nal import REFERENCE, PictureRole, length_size, picture_role
from kvslite.server.store.blobs import BlobStore, new_fragment_key
from kvslite.server.store.metadata import (Clock, Fragment, Lease, MetadataStore, Stream,
                                    StreamNotActive)

log = logging.getLogger("kvslite.archive")

# track, keyframe, pts offset from fragment start (ms), payload offset, payload size
_FRAME = struct.Struct("<BBiII")
CLOCK_SKEW_WARNING_MS = 1000  # a step back this large in server time is logged


class FragmentGone(ApiError):
    """A fragment whose media was deleted (retention, DeleteStream) after its row was read:
    readers answer as if it had never been there."""

    def __init__(self, fragment: Fragment):
        super().__init__(RESOURCE_NOT_FOUND, f"Fragment {fragment.number} has been deleted")
        self.fragment = fragment


@dataclass(frozen=True)
class FrameEntry:
    track: int
    keyframe: bool
    offset_ms: int  # presentation time relative to the fragment's start
    payload_offset: int
    size: int
    role: PictureRole = REFERENCE  # whether later pictures need this one (media/nal.py)


# The flags byte: bit 0 keyframe, bit 1 disposable, bits 2-4 the H.265 temporal id. Index
# rows written before the picture role was recorded have bit 1 clear: a reference.
_DISPOSABLE, _TID_SHIFT = 2, 2


def pack_frames(entries: list[FrameEntry]) -> bytes:
    return b"".join(_FRAME.pack(e.track, _flags(e), e.offset_ms, e.payload_offset, e.size)
                    for e in entries)


def _flags(e: FrameEntry) -> int:
    return (int(e.keyframe) | (_DISPOSABLE if e.role.disposable else 0)
            | (max(0, min(7, e.role.temporal_id)) << _TID_SHIFT))


def unpack_frames(data: bytes) -> list[FrameEntry]:
    return [FrameEntry(track, bool(flags & 1), offset, start, size,
                       PictureRole(bool(flags & _DISPOSABLE), flags >> _TID_SHIFT)
                       if flags > 1 else REFERENCE)
            for track, flags, offset, start, size in _FRAME.iter_unpack(data)]


def decode_lead_ms(fragment: Fragment) -> int:
    """How long before the fragment's start its first frame is decoded: the B-frame
    reordering delay (see remux.decode_times), less any room its frames leave."""
    by_track: dict[int, list[int]] = {}
    for entry in unpack_frames(fragment.frames):
        by_track.setdefault(entry.track, []).append(entry.offset_ms)
    return max([0] + [remux.reorder_delay(pts) - min(pts) for pts in by_track.values()])


def fragment_duration_ms(frames: list[mkv.Frame], start_ms: int, to_ms, default_ms: int) -> int:
    """Span from the fragment start to the end of its last-shown frame.

    The last frame is shown for the typical frame interval of the fragment (or the
    track's DefaultDuration), so back-to-back fragments tile time without gaps.
    """
    times = sorted({to_ms(f.timecode) for f in frames})
    if len(times) > 1:
        frame_ms = max(1, round((times[-1] - times[0]) / (len(times) - 1)))
    else:
        frame_ms = max(1, default_ms)
    return min(MAX_FRAGMENT_SPAN_MS, max(1, times[-1] - start_ms + frame_ms))


class Archive:
    """Persist and read fragments: blobs in the blob store, index in the metadata store.

    The operations layer reads the archive only through these methods; which columns
    and files hold what stays inside the stores.
    """

    def __init__(self, store: MetadataStore, blobs: BlobStore):
        self.store = store
        self.blobs = blobs
        self._headers: dict[int, bytes] = {}  # headers never change once saved
        self._skew_warned_at = float("-inf")  # at most one clock-skew warning a minute
        # stream ARN -> (lease epoch, server_ms) of the last fragment this node stored
        self._previous_server_ms: dict[str, tuple[int, int]] = {}

    # -- writing ------------------------------------------------------------------------

    def save_header(self, stream: Stream, header: mkv.StreamHeader) -> int:
        """Keep the header elements exactly as the producer sent them."""
        return self.store.save_header(stream.arn, mkv.header_bytes(header))

    def persist(self, stream: Stream, header_id: int, cluster: mkv.Cluster, *,
                producer_ms: int, server_ms: int, duration_ms: int, to_ms,
                fence: Lease | None = None,
                deliveries: Sequence[tuple[str, str]] = ()) -> tuple[Fragment, bool]:
        """Write the cluster durably, then commit its index row: PERSISTED after this.

        Returns the fragment and whether it is new: a true resend (same producer time,
        same bytes) returns the fragment already stored, and its blob is removed again
        (found by add_fragment in the commit, not by a lookup of its own before: resends
        are rare, and every fragment would pay that round trip).
        Raises StreamNotActive (deleted meanwhile) or LeaseLost (fenced off); either way
        nothing is left behind. A `fence` still held is renewed by the commit."""
        data, offsets = mkv.write_cluster(cluster)
        digest = hashlib.sha256(data).digest()
        server_ms = self._never_before_previous(stream, server_ms, fence)
        roles = self._picture_roles(header_id, cluster, data, offsets)
        entries = [
            FrameEntry(f.track_number, f.keyframe, to_ms(f.timecode) - producer_ms, offset,
                       f.payload_size, role)
            for f, offset, role in zip(cluster.frames, offsets, roles)
        ]
        key = new_fragment_key(stream, producer_ms)
        try:
            self.blobs.put(key, data)
        except FileNotFoundError:  # the sweeper removed a deleted stream's folder meanwhile
            self.blobs.delete(key, prune=True)
            raise StreamNotActive(stream.arn) from None
        try:
            fragment, created = self.store.add_fragment(
                fence=fence, renew_fence_ms=LEASE_TTL_MS, arn=stream.arn, producer_ms=producer_ms, server_ms=server_ms,
                duration_ms=duration_ms, size=len(data), header_id=header_id, blob_key=key,
                frames=pack_frames(entries), digest=digest, deliveries=list(deliveries))
        except BaseException:
            # the row never came (a crash here leaves an orphan for the collector); a
            # deleted stream must not keep the folder this write made again
            self.blobs.delete(key, prune=True)
            raise
        if not created:
            self.blobs.delete(key)  # a resend: its original is stored already
        elif fence is not None:
            self._previous_server_ms[stream.arn] = (fence.epoch, fragment.server_ms)
        return fragment, created

    def _picture_roles(self, header_id: int, cluster: mkv.Cluster, data: bytes,
                       offsets: list[int]) -> list[PictureRole]:
        """Each frame's picture role, from its first slice header (video track only)."""
        video = video_track(self.tracks(header_id))
        size = length_size(video.codec_id, video.codec_private) if video else None
        if size is None:
            return [REFERENCE] * len(cluster.frames)
        view = memoryview(data)  # slices without copying each payload
        return [picture_role(video.codec_id, size, view[o:o + f.payload_size])
                if f.track_number == video.number else REFERENCE
                for f, o in zip(cluster.frames, offsets)]

    def _never_before_previous(self, stream: Stream, server_ms: int,
                               fence: Lease | None) -> int:
        """`server_ms`, or the stream's previous fragment's if that is later.

        Server timestamps come from the clock of the node that took the fragment. In a
        cluster whose nodes' clocks differ, a producer that fails over to a node running
        behind would otherwise go back in time; held here, a stream's server timestamps
        never decrease. The stream's one PutMedia lease orders its writers, so the
        previous fragment is the one just before this. A large step means the nodes'
        clocks need synchronising (NTP). While this node holds the same lease, nobody else
        has written the stream: its last fragment's time is remembered, not read back."""
        epoch, previous_ms = self._previous_server_ms.get(stream.arn, (None, None))
        if fence is None or epoch != fence.epoch:
            previous = self.store.latest_fragment(stream.arn)
            previous_ms = None if previous is None else previous.server_ms
        if previous_ms is None or server_ms >= previous_ms:
            return server_ms
        behind = previous_ms - server_ms
        now = time.monotonic()
        if behind > CLOCK_SKEW_WARNING_MS and now - self._skew_warned_at > 60:
            self._skew_warned_at = now
            log.warning("this node's clock is %d ms behind the node that stored %s's "
                        "previous fragment: its server timestamps are held at that "
                        "fragment's; synchronise the nodes' clocks (NTP)", behind, stream.name)
        return previous_ms

    # -- reading media ------------------------------------------------------------------

    def header(self, header_id: int) -> bytes:
        """The stream header (EBML + Segment start + Info + Tracks) a fragment belongs to."""
        if header_id not in self._headers:
            self._headers[header_id] = self.store.get_header(header_id)
        return self._headers[header_id]

    def tracks(self, header_id: int) -> list[mkv.Track]:
        return _parse_tracks(self.header(header_id))

    def cluster_bytes(self, fragment: Fragment, length: int | None = None) -> bytes:
        """The stored cluster, or its first `length` bytes. Raises FragmentGone if retention
        or DeleteStream removed it since its row was read."""
        try:
            return self.blobs.get(fragment.blob_key, 0, length)
        except FileNotFoundError:
            raise FragmentGone(fragment) from None

    def check_ready(self, timeout_s: float) -> None:
        """Raise unless the metadata store answers within about `timeout_s`: every
        request needs it. The media store is checked on its own (check_media)."""
        self.store.ping(timeout_s)

    def check_media(self) -> None:
        """Raise unless the media store answers (MediaUnavailable when S3 is down)."""
        self.blobs.check()

    # -- finding fragments ----------------------------------------------------------------

    def secret(self, name: str, create: Callable[[], bytes] | None = None) -> bytes:
        """A server secret shared by every node (token and notification signing keys)."""
        return self.store.secret(name, create)

    def fragments(self, stream_arn: str, *, after_seq: int = 0, limit: int,
             clock: Clock | None = None, start_ms: int = 0, end_ms: int = 0) -> list[Fragment]:
        """Fragments in number order after `after_seq`; with a clock, only those starting
        in [start_ms, end_ms] on it."""
        return self.store.list_fragments(stream_arn, clock=clock, start_ms=start_ms,
                                         end_ms=end_ms, after_seq=after_seq, limit=limit)

    def new_fragments_seen(self, stream_arn: str) -> int:
        """A mark for wait_for_new_fragments; take it before reading the index."""
        return self.store.new_fragments.seen(stream_arn)

    async def wait_for_new_fragments(self, stream_arn: str, seen: int, timeout: float) -> bool:
        """Until a fragment of the stream is committed after `seen` was taken, on any node
        (True), or `timeout` seconds pass (False)."""
        return await self.store.new_fragments.wait(stream_arn, seen, timeout)

    def by_numbers(self, stream_arn: str, numbers: list[str]) -> dict[str, Fragment]:
        return self.store.fragments_by_number(stream_arn, numbers)

    def by_number(self, stream_arn: str, number: str) -> Fragment | None:
        return self.by_numbers(stream_arn, [number]).get(number)

    def latest(self, stream_arn: str) -> Fragment | None:
        return self.store.latest_fragment(stream_arn)

    def at(self, stream_arn: str, clock: Clock, ms: int) -> Fragment | None:
        """The fragment whose span holds `ms` on the clock, else the first starting after."""
        return self.store.fragment_at(stream_arn, clock, ms, MAX_FRAGMENT_SPAN_MS)

    def overlapping(self, stream_arn: str, clock: Clock, start_ms: int, end_ms: int
                    ) -> list[Fragment]:
        """Fragments whose span [start, start + duration) meets [start_ms, end_ms], by start."""
        return self.store.fragments_overlapping(stream_arn, clock, start_ms, end_ms,
                                                MAX_FRAGMENT_SPAN_MS)

    def starting(self, stream_arn: str, clock: Clock, start_ms: int, end_ms: int, *,
                 after: tuple[int, int] | None = None, descending: bool = False,
                 limit: int) -> list[Fragment]:
        """A page of the fragments starting in [start_ms, end_ms], by (start, seq), past
        `after`; on the producer clock fragments with one start count once, the newest
        (AWS). Index lookups only: the work is bounded by `limit`."""
        return self.store.fragments_starting(stream_arn, clock, start_ms, end_ms, after=after,
                                             descending=descending, limit=limit,
                                             newest_only=clock is Clock.PRODUCER)

    def count_starting(self, stream_arn: str, clock: Clock, start_ms: int, end_ms: int) -> int:
        return self.store.count_starting(stream_arn, clock, start_ms, end_ms,
                                         newest_only=clock is Clock.PRODUCER)

    def count_discontinuities(self, stream_arn: str, clock: Clock, start_ms: int, end_ms: int,
                              gap_ms: int | None) -> int:
        return self.store.count_discontinuities(stream_arn, clock, start_ms, end_ms,
                                                newest_only=clock is Clock.PRODUCER,
                                                gap_ms=gap_ms)


@lru_cache(maxsize=256)
def _parse_tracks(header: bytes) -> list[mkv.Track]:
    """Headers never change once stored: parse each once (ingest refused any without
    Tracks, so every stored one has them)."""
    return remux.parse_header(header).tracks
