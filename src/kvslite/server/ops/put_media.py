"""PutMedia: a long-lived chunked POST of MKV, answered by a stream of JSON acks.

Full duplex: the 200 and its headers go out as soon as the body starts, then
each ack is written the moment the fragment it reports is complete, while the
producer is still sending. Raw ASGI, because the response must be written
while the request body is still being read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from kvslite.server import metrics
from kvslite.server.archive import Lease
from kvslite.server.archive.control_plane import ControlPlane
from kvslite.server.archive.fragment_events import EventConfigs
from kvslite.server.archive.fragments import Archive
from kvslite.server.archive.ingest import IngestError, IngestSession, error_ack
from kvslite.server.archive.leases import PUT_MEDIA, RENEW_EVERY_S, Leases
from kvslite.server.api_errors import CONNECTION_LIMIT_EXCEEDED, ApiError, invalid
from kvslite.media import error_ids as ids

log = logging.getLogger("kvslite.putmedia")

IDLE_ACK_EVERY_S = 3.0  # acks keep the connection alive while no data flows
IDLE_CLOSE_AFTER_S = 30.0  # AWS closes a PutMedia that sends nothing for this long
MAX_CONNECTION_S = 45 * 60  # AWS's maximum PutMedia connection duration


class PutMedia:
    def __init__(self, control: ControlPlane, archive: Archive, leases: Leases, *,
                 fragment_deadline_s: float,
                 event_configs: EventConfigs | None = None,
                 on_deliveries: Callable[[], None] = lambda: None):
        self.control = control
        self.archive = archive
        self.event_configs, self.on_deliveries = event_configs, on_deliveries
        self.fragment_deadline_ms = int(fragment_deadline_s * 1000)
        self.leases = leases  # AWS: one PutMedia per stream; the newest is refused

    async def __call__(self, request: Request) -> "_Upload":
        headers = request.headers
        stream = await run_in_threadpool(self.control.resolve,
                                         headers.get("x-amzn-stream-name"),
                                         headers.get("x-amzn-stream-arn"))
        timecode_type = headers.get("x-amzn-fragment-timecode-type")
        if timecode_type not in ("ABSOLUTE", "RELATIVE"):
            raise invalid("x-amzn-fragment-timecode-type must be ABSOLUTE or RELATIVE")
        start_ms = _producer_start_ms(headers.get("x-amzn-producer-start-timestamp"))
        if timecode_type == "RELATIVE" and start_ms is None:
            raise invalid("x-amzn-producer-start-timestamp is required with RELATIVE timecodes")
        lease = await run_in_threadpool(self.leases.acquire, PUT_MEDIA, stream)
        if lease is None:
            raise ApiError(CONNECTION_LIMIT_EXCEEDED,
                           f"Stream {stream.name} already has an open PutMedia connection")
        session = IngestSession(self.archive, stream, timecode_type=timecode_type,
                                producer_start_ms=start_ms, lease=lease,
                                fragment_deadline_ms=self.fragment_deadline_ms,
                                event_configs=self.event_configs,
                                on_deliveries=self.on_deliveries)
        return _Upload(self.leases, lease, session)


def _producer_start_ms(value: str | None) -> int | None:
    """Epoch seconds with a fraction; the producer SDK writes '1700000000.5' for 5 ms."""
    if value is None:
        return None
    seconds, _, millis = value.strip().partition(".")
    if not (seconds.isascii() and seconds.isdigit()) or len(seconds) > 11 or (
            millis and not (millis.isascii() and millis.isdigit() and len(millis) <= 9)):
        raise invalid(f"x-amzn-producer-start-timestamp is not epoch seconds: {value[:40]!r}")
    if millis and len(millis) <= 3:
        return int(seconds) * 1000 + int(millis)  # integer milliseconds, as the SDK means
    return round(float(value) * 1000)


class _Upload:
    """The ASGI response of one PutMedia: reads the body, writes acks."""

    def __init__(self, leases: Leases, lease: Lease, session: IngestSession):
        self.leases = leases
        self.lease = lease  # the upload's slot on the stream (the session fences with it)
        self.session = session
        self.headers: dict[str, str] = {}
        self.renewed = time.monotonic()

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self._run(receive, send)
        finally:  # shielded: a client that hangs up cancels us, the slot must still go
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(self.leases.release, self.lease)
        # the response ends only now, so a producer reconnecting at once finds the slot free
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _keep_lease(self) -> None:
        """Renew the upload's slot on the stream while it lives. Each fragment's commit
        renews it too: an upload sending fragments at least every RENEW_EVERY_S needs
        no renewal of its own (hundreds of cameras would otherwise add a write each)."""
        self.renewed = max(self.renewed, self.session.lease_renewed or 0.0)
        if time.monotonic() - self.renewed < RENEW_EVERY_S:
            return
        if not await run_in_threadpool(self.leases.renew, self.lease):
            metrics.LEASES_LOST.inc()
            reason = await run_in_threadpool(self.leases.why_lost, self.lease,
                                             time.monotonic() - self.renewed)
            raise IngestError(ids.STREAM_READ_ERROR, reason)
        self.renewed = time.monotonic()

    async def _run(self, receive, send) -> None:
        # Asking for the body before answering makes the server send `100 Continue`
        # (curl's producers wait for it); sleep(0) lets that request start first.
        next_message = _receive_stamped(receive)
        await asyncio.sleep(0)
        headers = [(b"content-type", b"application/json")]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def ack(*messages: dict) -> None:
            """One write (one HTTP chunk) per ack: the producer SDK's parser takes a
            callback's first ack for its fragment and drops a second one in the same read."""
            for message in messages:
                line = json.dumps(message, separators=(",", ":")) + "\n"
                await send({"type": "http.response.body", "body": line.encode(),
                            "more_body": True})

        started = last_data = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({next_message}, timeout=IDLE_ACK_EVERY_S)
                await self._keep_lease()
                self.session.check_progress()
                now = time.monotonic()
                if now - started > MAX_CONNECTION_S:
                    raise IngestError(ids.MAX_CONNECTION_DURATION_REACHED,
                                      "the connection reached its maximum duration")
                if not done:
                    if now - last_data > IDLE_CLOSE_AFTER_S:
                        log.info("closing PutMedia after %.0f s without data", now - last_data)
                        break
                    await ack({"EventType": "IDLE"})
                    continue
                message, arrived_ms = next_message.result()
                if message["type"] == "http.disconnect":
                    break
                last_data = now
                more = message.get("more_body", False)
                if more:  # keep receiving (and stamping arrivals) while this chunk persists
                    next_message = _receive_stamped(receive)
                # parsed here; a worker thread only for what blocks (archiving a fragment)
                if self.session.take(message.get("body", b""), arrived_ms):
                    metrics.PUT_MEDIA_HANDOFFS.inc()
                    if acks := await run_in_threadpool(self.session.finish):
                        await ack(*acks)
                if not more:
                    if acks := await run_in_threadpool(self.session.close):
                        await ack(*acks)
                    break
        except IngestError as error:
            log.warning("PutMedia to %s: %s", self.session.stream.name, error)
            await ack(*error.acks, error_ack(error))
        except Exception:
            log.exception("PutMedia to %s failed", self.session.stream.name)
            await ack(error_ack(IngestError(ids.INTERNAL_ERROR, "internal error")))
        finally:
            if not next_message.done():
                next_message.cancel()
        log.info("PutMedia to %s ended: %d fragments persisted, %d duplicates",
                 self.session.stream.name, self.session.persisted, self.session.duplicates)


def _receive_stamped(receive) -> asyncio.Task[tuple[dict, int]]:
    """receive() as a task whose result is (message, when it arrived in epoch ms): the
    server timestamp of a fragment is when its bytes came in, not when a worker got to
    them."""
    async def stamped() -> tuple[dict, int]:
        message = await receive()
        return message, int(time.time() * 1000)

    return asyncio.ensure_future(stamped())
