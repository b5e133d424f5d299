"""GetMedia (`kinesis-video-media`): the archive as a live MKV stream.

It streams fragments in fragment-number order from the start selector, then
keeps following new fragments as they are persisted, woken by the archive when
one is committed on any node (not by polling), and ends once none has arrived
for FOLLOW_IDLE_S (consumers resume with the continuation token).
Each fragment goes out as AWS lays it out: EBML header and Tracks, a Tags
element with the fragment number and timestamps, the cluster, and a Tags
element with MILLIS_BEHIND_NOW and the CONTINUATION_TOKEN.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from kvslite.server import metrics
from kvslite.server.archive import Clock, Fragment, Lease, Stream, seq_of
from kvslite.server.archive.control_plane import ControlPlane
from kvslite.server.archive.fragments import Archive, FragmentGone
from kvslite.server.archive.leases import GET_MEDIA, LIMITS, RENEW_EVERY_S, Leases
from kvslite.server.api_errors import CONNECTION_LIMIT_EXCEEDED, ApiError, invalid, not_found
from kvslite.server.ops import requests as rq
from kvslite.server.ops.fragment_media import MEDIA_TYPE, fragment_mkv

FOLLOW_IDLE_S = 10.0
RECHECK_S = 1.0  # re-read the index this often even without a wake-up (a lost notification)
BATCH = 16


class GetMedia:
    def __init__(self, control: ControlPlane, archive: Archive, leases: Leases):
        self.control = control
        self.archive = archive
        self.leases = leases  # AWS: at most 3 GetMedia per stream; more are refused

    def operations(self) -> dict:
        return {"GetMedia": self.get_media}

    def get_media(self, request: rq.GetMediaInput) -> StreamingResponse:
        stream = self.control.resolve(request.stream_name, request.stream_arn)
        after_seq = self._start_after(stream, request.start_selector)
        lease = self.leases.acquire(GET_MEDIA, stream)  # checked and taken in one step
        if lease is None:
            raise ApiError(CONNECTION_LIMIT_EXCEEDED,
                           f"Stream {stream.name} already has {LIMITS[GET_MEDIA]} GetMedia "
                           f"connections")
        return StreamingResponse(self._follow(stream, after_seq, lease), media_type=MEDIA_TYPE)

    def _start_after(self, stream: Stream, selector: rq.StartSelector) -> int:
        """The seq after which streaming starts."""
        kind = selector.start_selector_type
        if kind == "EARLIEST":
            return 0
        if kind == "NOW":
            latest = self.archive.latest(stream.arn)
            return latest.seq if latest else 0
        if kind in ("FRAGMENT_NUMBER", "CONTINUATION_TOKEN"):
            if kind == "FRAGMENT_NUMBER":
                member, number = "AfterFragmentNumber", selector.after_fragment_number
            else:
                member, number = "ContinuationToken", selector.continuation_token
            if not number:
                raise invalid(f"StartSelector.{member} is required for {kind}")
            seq = seq_of(number)
            if seq is None or self.archive.by_number(stream.arn, number) is None:
                raise not_found(f"Fragment {number} was not found in stream {stream.name}")
            return seq
        timestamp = selector.start_timestamp
        if timestamp is None:
            raise invalid(f"StartSelector.StartTimestamp is required for {kind}")
        fragment = self.archive.at(stream.arn, Clock(kind), round(timestamp * 1000))
        if fragment is not None:
            return fragment.seq - 1
        latest = self.archive.latest(stream.arn)  # nothing that late yet: follow live
        return latest.seq if latest else 0

    async def _follow(self, stream: Stream, after_seq: int, lease: Lease
                      ) -> AsyncIterator[bytes]:
        try:
            idle_since = renewed = time.monotonic()
            while time.monotonic() - idle_since < FOLLOW_IDLE_S:
                if time.monotonic() - renewed >= RENEW_EVERY_S:
                    if not await run_in_threadpool(self.leases.renew, lease):
                        metrics.LEASES_LOST.inc()
                        return  # the slot expired (this node stalled): end the stream
                    renewed = time.monotonic()
                seen = self.archive.new_fragments_seen(stream.arn)  # before reading
                batch = await run_in_threadpool(self.archive.fragments, stream.arn,
                                                after_seq=after_seq, limit=BATCH)
                if not batch:
                    await self.archive.wait_for_new_fragments(stream.arn, seen, RECHECK_S)
                    continue
                for fragment in batch:
                    chunk = await run_in_threadpool(self._chunk, fragment)
                    if chunk is not None:
                        yield chunk
                    after_seq = fragment.seq
                idle_since = time.monotonic()
        finally:  # shielded: a client that hangs up cancels us, the slot must still go
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(self.leases.release, lease)

    def _chunk(self, fragment: Fragment) -> bytes | None:
        """The fragment as AWS sends it, or None if retention removed it meanwhile."""
        behind_ms = max(0, int(time.time() * 1000) - fragment.server_ms)
        try:
            return fragment_mkv(self.archive, fragment, [
                ("AWS_KINESISVIDEO_MILLIS_BEHIND_NOW", str(behind_ms)),
                ("AWS_KINESISVIDEO_CONTINUATION_TOKEN", fragment.number)])
        except FragmentGone:
            return None
