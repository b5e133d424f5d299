"""Failover: what a reconnecting upload resends, and which failures are worth a reconnect.

A PutMedia connection can die under a live producer (a node killed, a load balancer that
moves the next connection elsewhere, a stalled network). Like the AWS producer SDK, the
producer then opens a new connection and resends the header and every fragment not yet
acknowledged, before going on with the source; the server recognises a resent fragment
(same producer timestamp, same bytes) and acknowledges it again without storing it twice.
"""

from __future__ import annotations

import random
from collections import deque

from kvslite.media.error_ids import NOT_ABOUT_THE_MEDIA

from .errors import AckError, HttpError, ProducerError, SourceError
from .clusters import BodyChunk
from .readahead import ReadAhead

# Reconnects in a row without a fragment acknowledged in between; then the upload fails.
# Enough to ride out a node's death: its PutMedia lease expires within 15 s, and until
# then another node refuses the stream with ConnectionLimitExceededException.
MAX_RETRIES = 8
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.5, 8.0

# HTTP errors another connection may not get: a busy or restarting server, a PutMedia
# slot still held by a dead connection (its lease expires).
_RETRYABLE_CODES = {"ConnectionLimitExceededException", "ClientLimitExceededException"}


def retryable(error: ProducerError) -> bool:
    """Whether a new connection may succeed where this one failed."""
    if isinstance(error, SourceError):
        return False
    if isinstance(error, HttpError):
        return error.status >= 500 or error.code in _RETRYABLE_CODES
    if isinstance(error, AckError):
        return error.error_id in NOT_ABOUT_THE_MEDIA
    return True  # connection refused or lost, no acknowledgement in time, a cut response


def backoff_s(retry: int) -> float:
    """The wait before reconnect number `retry` (1, 2, ...): doubling, capped, jittered so
    that producers cut off together do not all come back at the same instant."""
    base = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (retry - 1))
    return base * random.uniform(0.75, 1.0)


class FragmentFeed:
    """The body chunks of one upload, across its connections.

    Keeps the header and every cluster sent but not yet acknowledged; `restart()` queues
    them to go first on the next connection. Memory is bounded by what the server has not
    acknowledged, which the ack timeout and the retry limit bound in turn.
    """

    def __init__(self, source: ReadAhead):
        self.source = source
        self.header: BodyChunk | None = None
        self.unacked: dict[int, BodyChunk] = {}  # cluster timecode -> chunk, in send order
        self.replay: deque[BodyChunk] = deque()
        self.pace_start: float | None = None  # realtime pacing: when the first cluster went
        self.ended = False  # the source has no more chunks

    async def next(self) -> tuple[BodyChunk, bool] | None:
        """The next chunk to send and whether it is a resend; None at the source's end.
        Raises what the source raised."""
        if self.replay:
            return self.replay.popleft(), True
        if self.ended:
            return None
        chunk = await self.source.get()
        if chunk is None:
            self.ended = True
            return None
        if chunk.timecode is None:
            self.header = chunk
        else:
            self.unacked[chunk.timecode] = chunk
        return chunk, False

    def acked(self, timecode: int) -> None:
        """The fragment at `timecode` has its final ack: never resend it."""
        self.unacked.pop(timecode, None)

    def restart(self) -> None:
        """A new connection: the header and every unacknowledged cluster go first."""
        header = [self.header] if self.header is not None else []
        self.replay = deque(header + list(self.unacked.values()))

    def close(self) -> None:
        self.source.close()
